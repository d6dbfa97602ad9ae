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
``entropy``    ``log K - H(p)``: maximises the posterior's entropy (also bounded by 0)
``grl``        gradient reversal: one backward pass trains the identity heads on ``CE(p, y)``
               and the base (and W_e) on ``Le - beta * CE(p, y)``, simultaneously
=============  ===================================================================================

``heads`` lists the identity heads (an ensemble; widths by name, see :func:`head_widths`), and
``target`` says whether an adversarial step aims at ``all`` of them (their mean) or at the
``strongest`` (the lowest identity loss on the batch). ``restart_every`` r > 0 re-initialises
every identity head before the re-fit of each r-th round, so the base must fool attackers
that did not co-adapt with it.

``standardise`` feeds the identity heads the features standardised per feature with the training
side's statistics, refreshed at every re-fit: the audit's attackers standardise, so a direction of
small spread that an unstandardised head overlooks is one they read.

``cross_fit`` splits the training side's originals in two halves (by the parity of the original's
index) and keeps one set of identity heads per half, each initialised and re-fitted on its own half
only. An adversarial step attacks every image with the set that never saw its original. The audit
asks whether identity *generalises* from training originals to new ones; a head fitted on the very
images it attacks also rewards the base for scrambling what that head memorised of them, which no
attacker of new images can use (on synthetic fold 0 the standardised heads read 49% identity on
the training side and 24% on validation).

``neighbour_weight`` w > 0 adds a non-parametric adversary, weighted w relative to the heads: a
soft version of the audit's cosine kNN attacker (:func:`soft_knn_log_posteriors`). Parametric
heads learn smooth boundaries; a kNN attacker reads identity from who a new image's nearest
training images are, which the heads never test. Its identity posterior for a batch image is the
softmax-weighted (``neighbour_temperature``) vote of the batch's other originals, and the same
objective is applied to it (``grl``: the paper's ``-CE``, as a kNN has no weights to reverse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.errors import ConfigError
from anonemo.models.networks import Standardiser

OBJECTIVES = ("neg_ce", "confusion", "entropy", "grl")
TARGETS = ("all", "strongest")


def head_widths(name: str, paper_hidden: Sequence[int]) -> tuple[int, ...]:
    """Hidden-layer widths of an identity head called ``name`` (``paper`` is the network config's)."""
    widths = {"paper": tuple(paper_hidden), "linear": (), "wide": (1024, 512), "narrow": (64,)}
    if name not in widths:
        raise ConfigError(f"model.adversary.heads: {name!r} is not a known identity head; use {', '.join(widths)}.")
    return widths[name]


@dataclass(frozen=True)
class Adversary:
    objective: str = "neg_ce"
    heads: tuple[str, ...] = ("paper",)
    target: str = "all"
    restart_every: int = 0
    neighbour_weight: float = 0.0
    neighbour_temperature: float = 0.1
    standardise: bool = False
    cross_fit: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"model.adversary.objective={self.objective!r} is not known: use one of {', '.join(OBJECTIVES)}."
            )
        if self.target not in TARGETS:
            raise ConfigError(f"model.adversary.target={self.target!r} is not known: use one of {', '.join(TARGETS)}.")
        if not self.heads:
            raise ConfigError("model.adversary.heads is empty: name at least one identity head, e.g. [paper].")
        if self.cross_fit and self.objective == "grl":
            raise ConfigError(
                "model.adversary.cross_fit=true needs a frozen-head objective (neg_ce, confusion or entropy): "
                "grl trains the identity heads on the very batch it attacks."
            )
        if self.restart_every < 0:
            raise ConfigError(f"model.adversary.restart_every={self.restart_every} must be 0 (never) or a number of rounds.")
        if self.neighbour_weight < 0:
            raise ConfigError(f"model.adversary.neighbour_weight={self.neighbour_weight} must be 0 (off) or positive.")
        if self.neighbour_temperature <= 0:
            raise ConfigError(
                f"model.adversary.neighbour_temperature={self.neighbour_temperature} must be positive (default 0.1)."
            )

    def restarts_before_refit(self, round_: int) -> bool:
        return self.restart_every > 0 and round_ % self.restart_every == 0

    def penalty(self, logits: Sequence[torch.Tensor], identities: torch.Tensor) -> torch.Tensor:
        """The identity term the base minimises, from each identity head's logits on a batch.

        For ``grl`` the logits must come through :func:`reverse_gradient`; the term is then the
        heads' own cross-entropy, which the reversal turns into ``-CE`` for the base.
        """
        per_head = torch.stack([self.head_penalty(head_logits.float(), identities) for head_logits in logits])
        if self.target == "all":
            return per_head.mean()
        strongest = torch.stack([F.cross_entropy(head_logits.float(), identities) for head_logits in logits]).argmin()
        return per_head[strongest]

    def head_penalty(self, logits: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        if self.objective == "grl":
            return F.nll_loss(log_p, identities)  # reversed before the heads
        return self.posterior_penalty(log_p, identities)

    def posterior_penalty(self, log_p: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """The objective's term for identity log-posteriors ``log_p`` (batch, classes); ``grl``
        (which needs weights to reverse) counts as ``neg_ce``. A class at ``-inf`` (no vote in a
        soft kNN) is left out: uniform and entropy are over the classes a posterior can reach."""
        if self.objective in ("confusion", "entropy"):
            reachable = torch.isfinite(log_p)
            log_k = reachable.sum(1).float().log()
            finite_log_p = log_p.masked_fill(~reachable, 0.0)
            if self.objective == "confusion":
                return (-finite_log_p.sum(1) / reachable.sum(1) - log_k).mean()
            entropy = -(log_p.exp() * finite_log_p).sum(1)
            return (log_k - entropy).mean()
        return F.nll_loss(log_p, identities).neg()

    def neighbour_penalty(
        self, features: torch.Tensor, identities: torch.Tensor, sources: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """The objective's term for the soft kNN attacker's posteriors within a batch (unweighted),
        over the images whose own subject has a vote (another original of theirs in the batch)."""
        log_p = soft_knn_log_posteriors(features, identities, sources, num_classes, self.neighbour_temperature)
        voted = torch.isfinite(log_p.gather(1, identities.unsqueeze(1)).squeeze(1))
        if not voted.any():
            return features.sum() * 0.0  # nothing to attack in this batch; keeps the graph
        return self.posterior_penalty(log_p[voted], identities[voted])


def soft_knn_log_posteriors(
    features: torch.Tensor, identities: torch.Tensor, sources: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """log P(identity | image) for each image of a batch by a soft kNN vote of the other images.

    The features are standardised (with the batch's statistics) and compared by cosine, as the
    audit's kNN attacker compares them; each image's vote is softmax(cosine / ``temperature``)
    over the batch, leaving out copies of its own original (the audit's test images have none
    on the training side). Keys and queries are the current features, so the vote follows the
    base as it moves; a bank of features from the last round end is stale, and a base can
    escape it by moving every image together without separating people any less.
    """
    features = features.float()
    unit = F.normalize(Standardiser(features)(features), dim=1)
    votes = sources.unsqueeze(1) != sources.unsqueeze(0)  # (query, key): not a copy of its own original
    similarity = (unit @ unit.T / temperature).masked_fill(~votes, float("-inf"))
    # A query without a voter (every other image is its own copy) gets a finite dummy row, and
    # no reachable class below; -inf rows would turn the gradients into NaN.
    similarity = torch.where(votes.any(1, keepdim=True), similarity, 0.0)
    one_hot = F.one_hot(identities, num_classes).float()
    reachable = (votes.float() @ one_hot) > 0  # (query, class): some voter is of that class
    p = similarity.softmax(1) @ one_hot
    return torch.where(reachable, p, 1.0).log().masked_fill(~reachable, float("-inf"))


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
