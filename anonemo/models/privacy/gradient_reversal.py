"""Gradient reversal (Ganin & Lempitsky, ICML 2015; DANN, JMLR 2016): one identity head trained
jointly with the base. The head's input passes through a layer that is the identity forward and
multiplies the gradient by ``-beta * lambda`` backward, so one backward pass trains the head on
``CE(p, y)`` and turns the base against it. ``schedule: dann`` ramps lambda from 0 to 1 over the
adversarial rounds as DANN does, ``lambda = 2 / (1 + exp(-gamma * progress)) - 1``;
``constant`` keeps it at 1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.errors import ConfigError
from anonemo.models.privacy.term import HeadLogits, HeadTraining, OneHeadTerm

SCHEDULES = ("constant", "dann")


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


@dataclass(frozen=True)
class GradientReversal(OneHeadTerm):
    schedule: str = "constant"
    gamma: float = 10.0

    head_training = HeadTraining.JOINTLY

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"model.privacy.schedule={self.schedule!r} is not known: use one of {', '.join(SCHEDULES)}.")
        if self.gamma <= 0:
            raise ConfigError(f"model.privacy.gamma={self.gamma} must be positive (DANN uses 10).")

    def reversal(self, progress: float) -> float:
        """lambda at ``progress`` through the adversarial rounds."""
        return 2 / (1 + math.exp(-self.gamma * progress)) - 1 if self.schedule == "dann" else 1.0

    def penalty(self, features: torch.Tensor, identities: torch.Tensor, identity_logits: HeadLogits,
                beta: float, progress: float) -> torch.Tensor:
        """The head's own cross-entropy on reversed features: +CE for the head, -beta*lambda*CE for the base."""
        (logits,) = identity_logits(reverse_gradient(features, beta * self.reversal(progress)))
        return F.cross_entropy(logits.float(), identities)
