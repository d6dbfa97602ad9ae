"""The emotion budget: the adversarial weight set round by round so that validation emotion stays
within ``max_loss`` points of the reference (docs/algorithm.md, "The emotion budget")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anonemo.errors import ConfigError
from anonemo.metrics import ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL, ROUND_BUDGET_SLACK

# The controller's constants (docs/algorithm.md says why these): the smoothed signal moves half way
# to each round's value; a slack of STEP_POINTS doubles beta, an overspend of as much halves it;
# beta grows by at most MAX_GROWTH and falls by at most half per round, within BETA_RANGE.
SMOOTHING = 0.5
STEP_POINTS = 2.0
MAX_GROWTH = 2**0.5
BETA_RANGE = (0.01, 2.0)


def expected_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean probability (%) the classifier gives the true class: accuracy's expectation under its
    own softmax, which moves in small steps where accuracy on a few faces jumps by whole faces."""
    probabilities = logits.float().softmax(dim=1)
    return 100 * probabilities.gather(1, labels.to(logits.device).view(-1, 1)).mean().item()


@dataclass
class EmotionBudget:
    """Dual ascent on the adversarial weight under the constraint
    ``smoothed validation emotion >= reference - max_loss``.

    The reference is the validation emotion that the model the Hybrid starts from holds under
    further training (set by the recipe; round 0's reading when it is not). After every round the
    signal (the emotion head's
    expected accuracy on the validation side) is smoothed over rounds, and beta is multiplied by
    ``2 ** (slack / STEP_POINTS)``, between 1/2 and ``MAX_GROWTH``: up while there is emotion to
    spend, down faster than up when there is not.
    """

    max_loss: float
    reference: float | None = None
    smoothed: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_loss <= 100:
            raise ConfigError(f"model.max_emotion_loss={self.max_loss} must be between 0 and 100 accuracy points, or "
                              "null for a fixed model.beta.")

    def step(self, round_: int, beta: float, val_emotion: float) -> tuple[float, dict[str, float]]:
        """The next round's beta after round ``round_`` (which used ``beta``) read ``val_emotion``,
        and what the round logs of the constraint."""
        if round_ == 0:
            if self.reference is None:
                self.reference = val_emotion
            self.smoothed = self.reference
        else:
            self.smoothed += SMOOTHING * (val_emotion - self.smoothed)
        slack = self.smoothed - (self.reference - self.max_loss)
        if round_ > 0:
            factor = min(max(2 ** (slack / STEP_POINTS), 0.5), MAX_GROWTH)
            beta = min(max(beta * factor, BETA_RANGE[0]), BETA_RANGE[1])
        return beta, {ROUND_BUDGET_REFERENCE: self.reference, ROUND_BUDGET_SIGNAL: self.smoothed,
                      ROUND_BUDGET_SLACK: slack}

    def state_dict(self) -> dict[str, float | None]:
        return {"reference": self.reference, "smoothed": self.smoothed}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.reference, self.smoothed = state["reference"], state["smoothed"]
