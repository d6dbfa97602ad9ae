"""How the weight β of a method's privacy term is set, round by round: a fixed β, the emotion
guard, or the emotion budget (docs/algorithm.md, "The weight"). Every controller works with every
privacy term (:mod:`anonemo.models.privacy`); the Hybrid module asks its controller for the
current round's β in each step and steps it at each round's end.

=====================================  ==========================================================
model config                           controller
=====================================  ==========================================================
``max_emotion_loss: null``,            :class:`FixedWeight`: ``beta`` throughout
``emotion_guard: 0``
``max_emotion_loss: null``,            :class:`EmotionGuard`: ``beta``, halved while the emotion
``emotion_guard: G``                   head's training accuracy is G points under its start
``max_emotion_loss: E``                :class:`EmotionBudget`: from ``beta``, set each round so
                                       that validation emotion stays within E points of the
                                       initialisation's (the guard is not used)
=====================================  ==========================================================
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from anonemo.errors import ConfigError
from anonemo.evaluation import accuracy
from anonemo.metrics import ROUND_BUDGET_CEILING, ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL, ROUND_BUDGET_SLACK

log = logging.getLogger(__name__)

# The budget's constants (docs/algorithm.md says why these): the smoothed signal moves half way
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


class Weight(ABC):
    """A controller of β. ``beta`` is the current round's (the first round's at the start); the
    Hybrid module calls :meth:`after_round` after the initialisation (round 0) and after every
    round t, with the emotion head's readings (:func:`emotion_reading`, by side), and keeps the
    controller in its checkpoints (:meth:`state_dict`)."""

    beta: float
    # Whether the initialisation runs until its validation emotion plateaus, read after each of its
    # last epochs (read_initialisation): the budget's reference is that plateau.
    reads_initialisation = False
    # Whether the controller promises something of the model after each round (a budget): the model
    # then ends with the last round that kept the promise (kept_its_promise).
    constrained = False

    @abstractmethod
    def after_round(self, round_: int, emotion: dict[str, float]) -> dict[str, float]:
        """Set ``beta`` for the round after ``round_``, from ``emotion`` read after it; returns what the
        round logs of the controller."""

    def read_initialisation(self, emotion: dict[str, float]) -> bool:
        """One reading after an initialisation epoch; whether the initialisation may end here."""
        raise NotImplementedError(f"{type(self).__name__} does not read the initialisation")

    @property
    def kept_its_promise(self) -> bool:
        """Whether the model after the last round is one this controller promised (a budget: within it)."""
        return True

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]


@dataclass
class FixedWeight(Weight):
    beta: float

    def after_round(self, round_: int, emotion: dict[str, float]) -> dict[str, float]:
        return {}

    def __str__(self) -> str:
        return f"beta={self.beta:g}"


def guarded_beta(beta: float, ceiling: float, emotion_acc: float, floor: float) -> float:
    """The emotion guard's step: the adversarial weight for the next round. Halved when the emotion
    head's training-side accuracy (%) fell below ``floor``, else grown by a quarter, up to
    ``ceiling`` (model.beta): the adversary backs off while emotion is being lost, not for good."""
    return beta / 2 if emotion_acc < floor else min(ceiling, beta * 1.25)


@dataclass
class EmotionGuard(Weight):
    """``beta`` (``model.beta``) until the emotion head's training-side accuracy falls more than
    ``points`` under its value after the initialisation; then :func:`guarded_beta` each round. Until
    that happens, training is exactly that of a fixed ``beta``."""

    ceiling: float
    points: float
    beta: float = field(init=False)
    initial_emotion: float | None = None  # the emotion head's training accuracy after initialisation

    def __post_init__(self) -> None:
        self.beta = self.ceiling

    def after_round(self, round_: int, emotion: dict[str, float]) -> dict[str, float]:
        if round_ == 0:
            self.initial_emotion = emotion["train"]
            return {}
        # At a large beta the adversary can take emotion with identity (docs/history.md, "The emotion guard").
        floor = self.initial_emotion - self.points
        beta = guarded_beta(self.beta, self.ceiling, emotion["train"], floor)
        if beta < self.beta:
            log.info("round %d: emotion head %.1f%% on the training side, under its floor of %.1f%% "
                     "(model.emotion_guard=%g): beta %.3g -> %.3g", round_, emotion["train"], floor, self.points,
                     self.beta, beta)
        self.beta = beta
        return {}

    def state_dict(self) -> dict:
        return {"beta": self.beta, "initial_emotion": self.initial_emotion}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.initial_emotion = state["beta"], state["initial_emotion"]

    def __str__(self) -> str:
        return f"beta={self.ceiling:g}, emotion guard {self.points:g} points"


def check_weight(beta: float, emotion_guard: float, max_emotion_loss: float | None) -> None:
    """Raise :class:`ConfigError` for a weight option out of its range."""
    if beta < 0:
        raise ConfigError(f"model.beta={beta} must be non-negative (the paper uses beta=1).")
    if not 0 <= emotion_guard <= 100:
        raise ConfigError(f"model.emotion_guard={emotion_guard} must be between 0 (off) and 100 accuracy points.")
    if max_emotion_loss is not None and not 0 <= max_emotion_loss <= 100:
        raise ConfigError(f"model.max_emotion_loss={max_emotion_loss} must be between 0 and 100 accuracy points, or "
                          "null for a fixed model.beta.")


def weight_controller(beta: float, emotion_guard: float, max_emotion_loss: float | None) -> Weight:
    """The controller the model config names (this module's table)."""
    check_weight(beta, emotion_guard, max_emotion_loss)
    if max_emotion_loss is not None:
        return EmotionBudget(max_emotion_loss, beta=beta, unused_guard=emotion_guard)
    return EmotionGuard(beta, emotion_guard) if emotion_guard else FixedWeight(beta)


@dataclass
class EmotionBudget(Weight):
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
    beta: float  # the first round's
    unused_guard: float = 0.0  # model.emotion_guard, which the budget replaces (said at the start)
    readings: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    reference: dict[str, float] = field(default_factory=dict)
    smoothed: dict[str, float] = field(default_factory=dict)
    ceiling: float = BETA_RANGE[1]
    collapsed: bool = False  # the training side, after the last round
    last_beta: float | None = None  # the β of the last round (none before round 1)
    slack: float = 0.0  # after the last round: points left to spend (negative: overspent)
    reads_initialisation = True
    constrained = True

    def read_initialisation(self, emotion: dict[str, float]) -> bool:
        """One of the initialisation's readings (emotion by side), after one of its epochs; whether its
        validation emotion has plateaued."""
        for side in SIDES:
            self.readings[side].append(emotion[side])
        return self.plateaued()

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

    def after_round(self, round_: int, emotion: dict[str, float]) -> dict[str, float]:
        """The next round's beta after round ``round_`` read ``emotion`` (by side); returns what the
        round logs of the constraint."""
        beta = self.beta
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
            self.beta = min(max(beta * factor, BETA_RANGE[0]), self.ceiling)
        self.slack = slack
        logged = {ROUND_BUDGET_SLACK: slack, ROUND_BUDGET_CEILING: self.ceiling}
        for side in SIDES:
            logged |= {f"{ROUND_BUDGET_REFERENCE}/{side}": self.reference[side],
                       f"{ROUND_BUDGET_SIGNAL}/{side}": self.smoothed[side], f"{ROUND_BUDGET_SLACK}/{side}": slacks[side]}
        return logged

    @property
    def kept_its_promise(self) -> bool:
        return self.slack >= 0

    def state_dict(self) -> dict:
        return {"beta": self.beta, "readings": self.readings, "reference": self.reference, "smoothed": self.smoothed,
                "ceiling": self.ceiling, "collapsed": self.collapsed, "last_beta": self.last_beta, "slack": self.slack}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.readings, self.reference, self.smoothed = (state["beta"], state["readings"], state["reference"],
                                                                   state["smoothed"])
        self.ceiling, self.collapsed, self.last_beta = state["ceiling"], state["collapsed"], state["last_beta"]
        self.slack = state["slack"]

    def __str__(self) -> str:
        unused = f"; model.emotion_guard={self.unused_guard:g} is not used" if self.unused_guard else ""
        return f"beta from {self.beta:g} within an emotion budget of {self.max_loss:g} points{unused}"
