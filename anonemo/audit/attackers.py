"""Attackers that try to read a label (identity, or emotion) off a frozen base's features.

Each attacker is fitted on the training side, tunes its one hyper-parameter (or its stopping
epoch) on the validation side, and is then asked for predictions; scoring on the test fold is the
caller's single look at it. Features are standardised with training-side statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.evaluation import accuracy
from anonemo.models.networks import ClassifierHead, Standardiser, adam


@dataclass(frozen=True)
class Split:
    """Features and labels of one side."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64


class Attacker:
    name: str

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> Attacker:
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NeuralAttacker(Attacker):
    """A network on standardised features, trained with Adam; the epoch with the best validation
    accuracy is kept (early stopping with ``patience``)."""

    def __init__(self, name: str, build: Callable[[int, int], nn.Module], lr: float = 1e-3, weight_decay: float = 1e-4,
                 max_epochs: int = 40, patience: int = 6, batch_size: int = 256, bf16: bool = False):
        self.name = name
        self.build = build
        self.lr, self.weight_decay = lr, weight_decay
        self.max_epochs, self.patience, self.batch_size = max_epochs, patience, batch_size
        self.bf16 = bf16  # bf16 autocast for the matrix products (weights and updates stay fp32)

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> NeuralAttacker:
        torch.manual_seed(seed)
        self.standardise = Standardiser(train.features)
        x, x_val = self.standardise(train.features), self.standardise(val.features)
        self.model = self.build(x.shape[1], num_classes)
        optimizer = adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best, best_state, waited = -1.0, None, 0
        for _ in range(self.max_epochs):
            self.model.train()
            for batch in torch.randperm(len(x), generator=generator).split(self.batch_size):
                with self._autocast():
                    loss = F.cross_entropy(self.model(x[batch]), train.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
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


class CosineKnnAttacker(Attacker):
    """k nearest training neighbours by cosine similarity, majority vote; k chosen on validation."""

    name = "knn"

    def __init__(self, ks: Sequence[int] = (1, 3, 5, 9, 15)):
        self.ks = tuple(ks)

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> CosineKnnAttacker:
        self.standardise = Standardiser(train.features)
        self.train = F.normalize(self.standardise(train.features), dim=1)
        self.train_labels, self.num_classes = train.labels, num_classes
        scores = {k: accuracy(self._predict(val.features, k), val.labels) for k in self.ks if k <= len(train.labels)}
        self.k = max(scores, key=lambda k: (scores[k], -k))  # ties: the smaller k
        self.val_accuracy = scores[self.k]
        return self

    @torch.no_grad()
    def _predict(self, features: torch.Tensor, k: int) -> torch.Tensor:
        query = F.normalize(self.standardise(features), dim=1)
        predictions = []
        for chunk in query.split(1024):
            neighbours = (chunk @ self.train.T).topk(k, dim=1).indices
            votes = F.one_hot(self.train_labels[neighbours], self.num_classes).sum(1)
            predictions.append(votes.argmax(1))
        return torch.cat(predictions)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self._predict(features, self.k)


class NearestCentroidAttacker(Attacker):
    """Each class's mean standardised feature; a sample gets the class of the most cosine-similar
    mean. Nothing to tune, so it can be fitted on a handful of images (the gallery audit)."""

    name = "centroid"

    def fit(self, train: Split, val: Split | None, num_classes: int, seed: int) -> NearestCentroidAttacker:
        self.standardise = Standardiser(train.features)
        features = F.normalize(self.standardise(train.features), dim=1)
        self.classes = train.labels.unique()  # only the classes the fitting side holds
        self.centroids = F.normalize(torch.stack([features[train.labels == c].mean(0) for c in self.classes]), dim=1)
        self.val_accuracy = accuracy(self.predict(val.features), val.labels) if val is not None else float("nan")
        return self

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(self.standardise(features), dim=1) @ self.centroids.T
        return self.classes[similarity.argmax(1)]


def wide_mlp(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, 1024), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, num_classes),
    )


def logistic_attacker(bf16: bool = False) -> NeuralAttacker:
    """The audit's linear attacker (multinomial logistic regression), also INLP's probe."""
    return NeuralAttacker("logistic", lambda d, k: nn.Linear(d, k), lr=1e-2, weight_decay=1e-3, bf16=bf16)


def default_attackers(fc_hidden: Sequence[int] = (256, 128), bf16: bool = False) -> list[Attacker]:
    """The audit's suite: linear, the paper's FC head, a wider/deeper MLP, cosine kNN and nearest
    class mean. ``bf16``: the networks train under bf16 autocast (the training jobs' precision)."""
    return [
        logistic_attacker(bf16),
        NeuralAttacker("paper_head", lambda d, k: ClassifierHead(d, k, tuple(fc_hidden), dropout=0.3), bf16=bf16),
        NeuralAttacker("wide_mlp", wide_mlp, bf16=bf16),
        CosineKnnAttacker(),
        NearestCentroidAttacker(),
    ]


def as_split(features: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(features.float().cpu(), torch.as_tensor(np.asarray(labels), dtype=torch.long).cpu())
