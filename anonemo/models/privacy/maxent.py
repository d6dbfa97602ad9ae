"""MaxEnt-ARL (Roy & Boddeti, CVPR 2019): an adversary trained on identity as usual, one step of
its own on every batch, and a base that maximises the entropy of the adversary's posterior rather
than its loss. ``-CE`` can be won by confident mistakes; the entropy is largest, and its gradient
zero, at the uniform posterior, where the adversary can only guess."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.models.privacy.term import HeadLogits, HeadTraining, OneHeadTerm


def entropy_gap(logits: torch.Tensor) -> torch.Tensor:
    """``log K - H(p)``, the mean over the batch: 0 at the uniform posterior, positive elsewhere."""
    log_p = F.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return (math.log(logits.shape[1]) - entropy).mean()


@dataclass(frozen=True)
class MaxEntAdversary(OneHeadTerm):
    head_training = HeadTraining.ALTERNATELY

    def penalty(self, features: torch.Tensor, identities: torch.Tensor, identity_logits: HeadLogits,
                beta: float, progress: float) -> torch.Tensor:
        (logits,) = identity_logits(features)
        return beta * entropy_gap(logits)
