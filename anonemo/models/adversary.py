"""What the Hybrid's base is trained against in an adversarial step (``model.adversary.*``).

The paper (eq. 2) minimises ``Le - beta * Li`` with one identity head W_i frozen. ``-Li`` is
unbounded below, so a base can "win" by making that one head confidently wrong (inflating its
logits) while identity stays readable by any fresh attacker. The options here are the
alternatives that the audit can hold to account:

=============  ===================================================================================
objective      the identity term the base minimises (weighted by beta)
=============  ===================================================================================
``neg_ce``     ``-CE(p, y)``: the paper's eq. (2)
``confusion``  ``CE(p, uniform) - log K`` = KL(uniform || p): pushes the posterior to uniform;
               bounded below by 0, so it cannot be won by confident mistakes
``grl``        gradient reversal: one backward pass trains the identity heads on ``CE(p, y)``
               and the base (and W_e) on ``Le - beta * CE(p, y)``, simultaneously
=============  ===================================================================================

``heads`` lists the identity heads (an ensemble; widths by name, see :func:`head_widths`); an
adversarial step aims at their mean. ``restart_every`` r > 0 re-initialises
every identity head before the re-fit of each r-th round, so the base must fool attackers
that did not co-adapt with it.

``standardise`` feeds the identity heads the features standardised per feature with the training
side's statistics, refreshed at every re-fit: the audit's attackers standardise, so a direction of
small spread that an unstandardised head overlooks is one they read.

Options measured and not adopted (a soft kNN adversary, cross-fitted heads) are recorded in
docs/results.md with the last commit that had them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.errors import ConfigError

OBJECTIVES = ("neg_ce", "confusion", "grl")
HEADS = ("paper", "linear", "wide")


def head_widths(name: str, paper_hidden: Sequence[int]) -> tuple[int, ...]:
    """Hidden-layer widths of an identity head called ``name`` (``paper`` is the network config's)."""
    check_head(name)
    return {"paper": tuple(paper_hidden), "linear": (), "wide": (1024, 512)}[name]


def check_head(name: str) -> None:
    if name not in HEADS:
        raise ConfigError(f"model.adversary.heads: {name!r} is not a known identity head; use {', '.join(HEADS)}.")


@dataclass(frozen=True)
class Adversary:
    objective: str = "neg_ce"
    heads: tuple[str, ...] = ("paper",)
    restart_every: int = 0
    standardise: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))  # from a config list
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"model.adversary.objective={self.objective!r} is not known: use one of {', '.join(OBJECTIVES)}."
            )
        if not self.heads:
            raise ConfigError("model.adversary.heads is empty: name at least one identity head, e.g. [paper].")
        for name in self.heads:
            check_head(name)
        if self.restart_every < 0:
            raise ConfigError(f"model.adversary.restart_every={self.restart_every} must be 0 (never) or a number of rounds.")

    def restarts_before_refit(self, round_: int) -> bool:
        return self.restart_every > 0 and round_ % self.restart_every == 0

    def penalty(self, logits: Sequence[torch.Tensor], identities: torch.Tensor) -> torch.Tensor:
        """The identity term the base minimises, from each identity head's logits on a batch.

        For ``grl`` the logits must come through :func:`reverse_gradient`; the term is then the
        heads' own cross-entropy, which the reversal turns into ``-CE`` for the base.
        """
        return torch.stack([self.head_penalty(head_logits.float(), identities) for head_logits in logits]).mean()

    def head_penalty(self, logits: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        if self.objective == "grl":
            return F.nll_loss(log_p, identities)  # reversed before the heads
        return self.posterior_penalty(log_p, identities)

    def posterior_penalty(self, log_p: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """The objective's term for identity log-posteriors ``log_p`` (batch, classes)."""
        if self.objective == "confusion":
            classes = log_p.new_full((len(log_p),), log_p.shape[1])
            return (-log_p.sum(1) / classes - classes.log()).mean()
        return F.nll_loss(log_p, identities).neg()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(features: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient flowing back to ``features`` by ``-scale``."""
    return _ReverseGradient.apply(features, scale)
