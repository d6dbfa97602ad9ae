"""The audit's attackers beside the probes of :mod:`anonemo.probes`: cosine kNN, nearest class
mean, the wide MLP's network, and the suite built from the config (``audit.attackers``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from anonemo.errors import ConfigError
from anonemo.evaluation import accuracy
from anonemo.probes import Attacker, Split, Standardiser


class CosineKnnAttacker(Attacker):
    """k nearest training neighbours by cosine similarity, majority vote; k chosen on validation."""

    def __init__(self, name: str = "knn", ks: Sequence[int] = (1, 3, 5, 9, 15)):
        super().__init__(name)
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

    def __init__(self, name: str = "centroid"):
        super().__init__(name)

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


def build_attackers(attackers: Mapping) -> list[Attacker]:
    """The suite ``audit.attackers`` names: each entry built from its ``_target_``, named by its key."""
    built = []
    for name, node in attackers.items():
        if node is None:  # removed from the command line: audit.attackers.knn=null
            continue
        if "_target_" not in node:
            raise ConfigError(f"audit.attackers.{name} has no _target_: give the class or function that builds it "
                              "(conf/attackers/default.yaml shows each attacker's).")
        attacker = instantiate(node, name=name)
        if not isinstance(attacker, Attacker):
            raise ConfigError(f"audit.attackers.{name}: {node._target_} built a {type(attacker).__name__}, not an "
                              "anonemo.probes.Attacker (fit, predict, val_accuracy).")
        built.append(attacker)
    if not built:
        raise ConfigError("audit.attackers is empty: keep at least one attacker, or set audit.enabled=false.")
    return built
