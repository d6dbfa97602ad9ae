"""The seam every in-training privacy method fills (docs/algorithm.md, "Methods")."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.errors import ConfigError
from anonemo.models.networks import ClassifierHead, Networks

HeadLogits = Callable[[torch.Tensor], list[torch.Tensor]]  # features -> every identity head's logits
HEADS = ("paper", "linear", "mlp_1024_512")


class HeadTraining(enum.Enum):
    """When a term's identity heads learn identity during the adversarial rounds (during the
    multi-task initialisation every head learns it, with the base)."""

    NONE = "none"  # the term has no heads
    REFITTED = "refitted"  # frozen during a round's steps, re-fitted on the frozen base after it
    JOINTLY = "jointly"  # in the base's own backward pass
    ALTERNATELY = "alternately"  # a step of their own on each batch, before the base's


class PrivacyTerm(ABC):
    """What the base pays for identity in one adversarial step, weighted by β: a frozen dataclass of
    the method's options (the model config's ``privacy`` node), with the identity heads it needs
    and how they train (:class:`HeadTraining`). The Hybrid module holds the heads and runs the steps
    (:class:`~anonemo.models.hybrid.HybridModule`); a term never changes them itself."""

    head_training: HeadTraining
    standardise: bool = False  # the heads read features standardised with the training side's statistics

    def identity_heads(self, networks: Networks, in_features: int, identities: int) -> list[ClassifierHead]:
        """The term's identity heads, newly built (none by default)."""
        return []

    @abstractmethod
    def penalty(self, features: torch.Tensor, identities: torch.Tensor, identity_logits: HeadLogits,
                beta: float, progress: float) -> torch.Tensor:
        """The base's loss term for a batch of ``features``, weighted by ``beta``; ``progress`` is the
        fraction of the adversarial rounds done (0 at the first step, towards 1 at the last)."""



def identity_loss(logits: Sequence[torch.Tensor], identities: torch.Tensor) -> torch.Tensor:
    """Li: the identity heads' mean cross-entropy (what the heads themselves minimise)."""
    return torch.stack([F.cross_entropy(head_logits, identities) for head_logits in logits]).mean()


def head_widths(name: str, paper_hidden: Sequence[int]) -> tuple[int, ...]:
    """Hidden-layer widths of an identity head called ``name`` (``paper`` is the network config's;
    ``mlp_1024_512`` two hidden layers of 1024 and 512, narrower than the audit's ``wide_mlp``)."""
    check_head(name)
    return {"paper": tuple(paper_hidden), "linear": (), "mlp_1024_512": (1024, 512)}[name]


def check_head(name: str, option: str = "model.privacy.heads") -> None:
    if name not in HEADS:
        raise ConfigError(f"{option}: {name!r} is not a known identity head; use {', '.join(HEADS)}.")


@dataclass(frozen=True)
class OneHeadTerm(PrivacyTerm, ABC):
    """A term with one identity head, ``head`` by name (gradient reversal, MaxEnt-ARL)."""

    head: str = "paper"

    def __post_init__(self) -> None:
        check_head(self.head, "model.privacy.head")

    def identity_heads(self, networks: Networks, in_features: int, identities: int) -> list[ClassifierHead]:
        return build_heads([self.head], networks, in_features, identities)


def build_heads(names: Sequence[str], networks: Networks, in_features: int, identities: int,
                standardise: bool = False) -> list[ClassifierHead]:
    """One identity head per name, of the network config's kind."""
    return [networks.head(in_features, identities, hidden=head_widths(name, networks.fc_hidden), standardise=standardise)
            for name in names]
