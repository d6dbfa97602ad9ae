"""A dependence penalty, no adversary: the base pays ``beta * HSIC(features, identity)`` on every
batch (Gretton et al., ALT 2005; the HSIC method of the FFB benchmark, Han et al., ICLR 2024).

HSIC is the biased estimate ``tr(K H L H) / (n - 1)^2`` with Gaussian kernels on the features and
on the identities' one-hot codes, each bandwidth by the median heuristic (sigma^2: the median of the
batch's squared pairwise distances; not differentiated). It is zero, in expectation, exactly when
features and identity are independent, whatever the form of the dependence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anonemo.models.privacy.term import HeadLogits, HeadTraining, PrivacyTerm


def median_heuristic_kernel(x: torch.Tensor) -> torch.Tensor:
    """``exp(-|xi - xj|^2 / (2 sigma^2))`` with sigma^2 the median squared distance between distinct
    rows (the mean of the two middle ones for an even count; their mean where the median is 0:
    one-hot codes of a batch that is mostly one person)."""
    squared = torch.cdist(x, x).square()
    distinct = squared[~torch.eye(len(x), dtype=torch.bool, device=x.device)].detach()
    scale = distinct.quantile(0.5)
    if scale <= 0:
        scale = distinct.mean()
    return torch.exp(-squared / (2 * scale.clamp_min(1e-12)))


def hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The biased HSIC estimate between the rows of ``x`` and ``y`` (n rows each)."""
    n = len(x)
    k, l = median_heuristic_kernel(x), median_heuristic_kernel(y)
    k_centred = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()  # H K H
    return (k_centred * l).sum() / (n - 1) ** 2


@dataclass(frozen=True)
class HSICPenalty(PrivacyTerm):
    head_training = HeadTraining.NONE

    def penalty(self, features: torch.Tensor, identities: torch.Tensor, identity_logits: HeadLogits,
                beta: float, progress: float) -> torch.Tensor:
        codes = F.one_hot(identities).float()  # their width changes no distance between codes
        return beta * hsic(features.float().flatten(1), codes)
