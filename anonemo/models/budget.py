"""The emotion budget: the adversarial weight set round by round so that validation emotion stays
within ``max_loss`` points of the reference (docs/algorithm.md, "The emotion budget")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anonemo.errors import ConfigError
from anonemo.evaluation import accuracy
from anonemo.metrics import ROUND_BUDGET_CEILING, ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL, ROUND_BUDGET_SLACK

# The controller's constants (docs/algorithm.md says why these): the smoothed signal moves half way
# to each round's value; a slack of STEP_POINTS doubles beta, an overspend of as much halves it;
# beta grows by at most MAX_GROWTH and falls by at most half per round, within BETA_RANGE.
REFERENCE_EPOCHS = 5  # the initialisation's last epochs whose readings make the reference
# The initialisation goes on until its smoothed validation emotion rose by no more than RISE_POINTS
# over the reference's epochs: the reference is then what training without the adversary reaches.
RISE_POINTS = 0.5
SMOOTHING = 0.5
STEP_POINTS = 2.0
MAX_GROWTH = 2**0.5
BETA_RANGE = (0.01, 2.0)
# A round that raised beta and started a collapse (the training side overspent by more than
# STEP_POINTS) caps beta at this fraction of its beta for good.
CEILING_FACTOR = 0.7


def expected_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean probability (%) the classifier gives the true class: accuracy's expectation under its
    own softmax, which moves in small steps where accuracy on a few faces jumps by whole faces."""
    probabilities = logits.float().softmax(dim=1)
    return 100 * probabilities.gather(1, labels.to(logits.device).view(-1, 1)).mean().item()


SIDES = ("train", "val")


def emotion_reading(side: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """What the budget reads of the emotion head on a side (%): accuracy on the training side, where
    thousands of faces make it precise and adversarial steps lower the head's confidence long before
    its answers; the expected accuracy on the validation side, where a few faces make accuracy jump."""
    return accuracy(logits.argmax(1), labels) if side == "train" else expected_accuracy(logits, labels)


@dataclass
class EmotionBudget:
    """Dual ascent on the adversarial weight under two constraints, one per side of the fold:
    ``smoothed emotion >= reference - max_loss``.

    A side's emotion is :func:`emotion_reading`. Its reference is the
    initialisation's: the mean of the readings after its last ``REFERENCE_EPOCHS`` epochs
    (``readings``, the last of them round 0's), where the initialisation ends once its smoothed
    validation emotion stops rising (:meth:`plateaued`). After every round each side's reading is smoothed
    over rounds, the slack is that of the tighter side, and beta is multiplied by
    ``2 ** (slack / STEP_POINTS)``, between 1/2 and ``MAX_GROWTH``: up while there is emotion to
    spend, down faster than up when there is not. The validation side says what the budget is
    about, emotion on faces the model did not learn from; the training side, thousands of faces
    where validation may hold a handful, sees a collapse first. A round whose β the budget had
    raised and that starts a collapse, the training side overspent by more than ``STEP_POINTS``,
    also caps β at ``CEILING_FACTOR`` times its β from then on (``ceiling``), so that β does not
    climb back to where emotion collapsed; the rounds that recover from it do not lower the cap
    again, nor does the first round, whose shock is the adversary's start, not its weight.
    """

    max_loss: float
    readings: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    reference: dict[str, float] = field(default_factory=dict)
    smoothed: dict[str, float] = field(default_factory=dict)
    ceiling: float = BETA_RANGE[1]
    collapsed: bool = False  # the training side, after the last round
    last_beta: float | None = None  # the β of the last round (none before round 1)

    def __post_init__(self) -> None:
        if not 0 <= self.max_loss <= 100:
            raise ConfigError(f"model.max_emotion_loss={self.max_loss} must be between 0 and 100 accuracy points, or "
                              "null for a fixed model.beta.")

    def read(self, emotion: dict[str, float]) -> None:
        """One of the initialisation's readings (emotion by side), after one of its epochs."""
        for side in SIDES:
            self.readings[side].append(emotion[side])

    def plateaued(self) -> bool:
        """Whether the initialisation's validation emotion, smoothed over its readings, rose by no
        more than ``RISE_POINTS`` above its best over the last ``REFERENCE_EPOCHS`` readings: the
        readings that would make the reference are those of a plateau."""
        smoothed = best = self.readings["val"][0]
        since_best = 0
        for reading in self.readings["val"][1:]:
            smoothed += SMOOTHING * (reading - smoothed)
            if smoothed > best + RISE_POINTS:
                best, since_best = smoothed, 0
            else:
                since_best += 1
        return since_best >= REFERENCE_EPOCHS - 1

    def step(self, round_: int, beta: float, emotion: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The next round's beta after round ``round_`` (which used ``beta``) read ``emotion`` (by
        side), and what the round logs of the constraint."""
        if round_ == 0:
            self.reference = {side: sum(values[-REFERENCE_EPOCHS:]) / len(values[-REFERENCE_EPOCHS:])
                              for side, values in self.readings.items()}
            self.smoothed = dict(self.reference)
        else:
            for side in SIDES:
                self.smoothed[side] += SMOOTHING * (emotion[side] - self.smoothed[side])
        slacks = {side: self.smoothed[side] - (self.reference[side] - self.max_loss) for side in SIDES}
        slack = min(slacks.values())
        if round_ > 0:
            collapsing = slacks["train"] < -STEP_POINTS
            raised = self.last_beta is not None and beta > self.last_beta
            if collapsing and not self.collapsed and raised:
                self.ceiling = max(min(self.ceiling, beta * CEILING_FACTOR), BETA_RANGE[0])
            self.collapsed, self.last_beta = collapsing, beta
            factor = min(max(2 ** (slack / STEP_POINTS), 0.5), MAX_GROWTH)
            beta = min(max(beta * factor, BETA_RANGE[0]), self.ceiling)
        logged = {ROUND_BUDGET_SLACK: slack, ROUND_BUDGET_CEILING: self.ceiling}
        for side in SIDES:
            logged |= {f"{ROUND_BUDGET_REFERENCE}/{side}": self.reference[side],
                       f"{ROUND_BUDGET_SIGNAL}/{side}": self.smoothed[side], f"{ROUND_BUDGET_SLACK}/{side}": slacks[side]}
        return beta, logged

    def state_dict(self) -> dict:
        return {"readings": self.readings, "reference": self.reference, "smoothed": self.smoothed,
                "ceiling": self.ceiling, "collapsed": self.collapsed, "last_beta": self.last_beta}

    def load_state_dict(self, state: dict) -> None:
        self.readings, self.reference, self.smoothed = state["readings"], state["reference"], state["smoothed"]
        self.ceiling, self.collapsed, self.last_beta = state["ceiling"], state["collapsed"], state["last_beta"]
