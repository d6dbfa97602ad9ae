"""The optimizer of every network here (a leaf module: networks, probes and recipes import it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

Optimizer = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]  # parameters -> optimizer (a config's partial)


def adam(parameters: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with its fused kernel: on CPU, PyTorch's default Adam updates one tensor at a time, as
    slow as a wide head's forward and backward passes (docs/performance.md)."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
