"""The paper's adversary (Algorithm 1) and the recommended one: identity heads frozen during a
round's steps and re-fitted on the frozen base after it.

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
=============  ===================================================================================

``heads`` lists the identity heads (an ensemble; widths by name, see
:func:`~anonemo.models.privacy.term.head_widths`); an adversarial step aims at their mean.
``restart_every`` r > 0 re-initialises every identity head before the re-fit of each r-th round,
so the base must fool attackers that did not co-adapt with it. ``standardise`` feeds the identity
heads the features standardised per feature with the training side's statistics, refreshed at
every re-fit: the audit's attackers standardise, so a direction of small spread that an
unstandardised head overlooks is one they read. ``refit_epochs``: passes over the training
side's cached features per re-fit.

Options measured and not adopted (a soft kNN adversary, cross-fitted heads) are recorded in
docs/history.md with the last commit that had them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.errors import ConfigError
from anonemo.models.networks import ClassifierHead, Networks
from anonemo.models.privacy.term import HeadLogits, HeadTraining, PrivacyTerm, build_heads, check_head

OBJECTIVES = ("neg_ce", "confusion")


@dataclass(frozen=True)
class RefittedAdversary(PrivacyTerm):
    objective: str = "neg_ce"
    heads: tuple[str, ...] = ("paper",)
    restart_every: int = 0
    standardise: bool = False
    refit_epochs: int = 5

    head_training = HeadTraining.REFITTED

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))  # from a config list
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"model.privacy.objective={self.objective!r} is not known: use one of {', '.join(OBJECTIVES)} "
                "(gradient reversal is model=grl)."
            )
        if not self.heads:
            raise ConfigError("model.privacy.heads is empty: name at least one identity head, e.g. [paper].")
        for name in self.heads:
            check_head(name)
        if self.restart_every < 0:
            raise ConfigError(f"model.privacy.restart_every={self.restart_every} must be 0 (never) or a number of rounds.")
        if self.refit_epochs < 1:
            raise ConfigError(f"model.privacy.refit_epochs={self.refit_epochs} must be at least 1.")

    def identity_heads(self, networks: Networks, in_features: int, identities: int) -> list[ClassifierHead]:
        return build_heads(self.heads, networks, in_features, identities, self.standardise)

    def restarts_before_refit(self, round_: int) -> bool:
        return self.restart_every > 0 and round_ % self.restart_every == 0

    def penalty(self, features: torch.Tensor, identities: torch.Tensor, identity_logits: HeadLogits,
                beta: float, progress: float) -> torch.Tensor:
        return beta * self.ensemble_penalty(identity_logits(features), identities)

    def ensemble_penalty(self, logits: list[torch.Tensor], identities: torch.Tensor) -> torch.Tensor:
        """The objective's term, averaged over the heads' ``logits``."""
        return torch.stack([self.head_penalty(head_logits.float(), identities) for head_logits in logits]).mean()

    def head_penalty(self, logits: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        if self.objective == "confusion":
            classes = log_p.new_full((len(log_p),), log_p.shape[1])
            return (-log_p.sum(1) / classes - classes.log()).mean()
        return F.nll_loss(log_p, identities).neg()
