"""Classifiers fitted on a frozen base's features: what the audit attacks with and what INLP
erases with (a leaf module: the audit, the erasure and the networks import it, it imports none of them).

A probe is fitted on the training side, tunes its one hyper-parameter (or its stopping epoch) on
the validation side, and is then asked for predictions; scoring on the test fold is the caller's
single look at it. Features are standardised with training-side statistics.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.dropout_ahead import fit_with_masks_ahead
from anonemo.evaluation import accuracy
from anonemo.optim import adam


@dataclass(frozen=True)
class Split:
    """Features and labels of one side."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64


def as_split(features: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(features.float().cpu(), torch.as_tensor(np.asarray(labels), dtype=torch.long).cpu())


class Standardiser:
    """Zero mean, unit variance per feature, from the training side only."""

    def __init__(self, train: torch.Tensor):
        self.mean = train.mean(0)
        self.std = train.std(0).clamp_min(1e-6)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class Attacker(ABC):
    """What the audit reads of an attacker: its ``name`` (the metric's), and after :meth:`fit` its
    ``val_accuracy`` (%, on the validation side it tuned on) and :meth:`predict`."""

    def __init__(self, name: str):
        self.name = name
        self.val_accuracy = float("nan")

    @abstractmethod
    def fit(self, train: Split, val: Split | None, num_classes: int, seed: int) -> Attacker:
        """Fitted on ``train``, tuned on ``val``; sets ``val_accuracy``."""

    @abstractmethod
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row of ``features``."""


class NeuralAttacker(Attacker):
    """A network on standardised features, trained with Adam; the epoch with the best validation
    accuracy is kept (early stopping with ``patience``). ``network(in_features, num_classes)``
    builds it; ``precision`` is the job's (``trainer.precision``): under ``bf16*`` its matrix
    products run in bf16 autocast (weights and updates stay fp32)."""

    def __init__(self, name: str, network: Callable[[int, int], nn.Module], lr: float = 1e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 40, patience: int = 6, batch_size: int = 256,
                 precision: str = "32-true"):
        super().__init__(name)
        self.network = network
        self.lr, self.weight_decay = lr, weight_decay
        self.max_epochs, self.patience, self.batch_size = max_epochs, patience, batch_size
        self.bf16 = str(precision).startswith("bf16")

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> NeuralAttacker:
        torch.manual_seed(seed)
        self.standardise = Standardiser(train.features)
        x, x_val = self.standardise(train.features), self.standardise(val.features)
        self.model = self.network(x.shape[1], num_classes)
        optimizer = adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best, best_state, waited = -1.0, None, 0

        def loss_of(batch: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return F.cross_entropy(self.model(x[batch]), train.labels[batch])

        for _ in range(self.max_epochs):
            self.model.train()
            batches = torch.randperm(len(x), generator=generator).split(self.batch_size)
            # A job of several threads draws the dropout masks beside the steps: the same masks.
            fit_with_masks_ahead(self.model, loss_of, batches, optimizer, helper_thread=torch.get_num_threads() > 1)
            score = accuracy(self._predict_standardised(x_val), val.labels)
            if score > best:
                best, best_state, waited = score, copy.deepcopy(self.model.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        self.model.load_state_dict(best_state)
        self.val_accuracy = best
        return self

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    @torch.no_grad()
    def _predict_standardised(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self._autocast():
            return self.model(x).argmax(1)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self._predict_standardised(self.standardise(features))


def logistic_probe(name: str = "logistic", precision: str = "32-true") -> NeuralAttacker:
    """Multinomial logistic regression: the audit's linear attacker and INLP's probe."""
    return NeuralAttacker(name, nn.Linear, lr=1e-2, weight_decay=1e-3, precision=precision)
