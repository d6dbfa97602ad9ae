"""Post-hoc concept erasure (``erasure=leace`` or ``erasure=inlp``): an affine map, fitted on a
frozen base's training-side features, that removes the identity a linear classifier can read.

LEACE (Belrose et al., NeurIPS 2023, the ``concept-erasure`` package) is the least-squares
erasure after which no linear classifier of the fitted labels beats a constant; INLP (Ravfogel et
al., ACL 2020) projects out the row spaces of linear identity probes until a new probe is at
chance on the validation side. Both are fitted on standardised features, as the audit reads them,
and folded back into one map on the base's raw features (:class:`~anonemo.models.networks.AffineErasure`), which the base
then applies as its last layer (``ConvBase.with_erasure``): saved, re-audited and exported with it.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import FeatureDataModule
from anonemo.errors import ConfigError
from anonemo.metrics import ERASURE_RANK
from anonemo.models.networks import AffineErasure, ConvBase
from anonemo.probes import Split, Standardiser, as_split, logistic_probe

log = logging.getLogger(__name__)


class Erasure(ABC):
    """How an eraser is fitted: on the training side's features and identity labels (and, where
    the method tunes something, the validation side's)."""

    name: str
    # INLP stops on validation identities, which exist only when validation people are training people.
    needs_validation_identity: bool = False

    @abstractmethod
    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> AffineErasure:
        """The erasure of identity (``labels``) from ``train.features``."""

    def fit_metrics(self) -> dict[str, float]:
        """What the last :meth:`fit` chose, for the run (``erasure/*``)."""
        return {}

    def check_capacity(self, directions: int, identities: int) -> None:
        """Refuse, before training, an erasure that would remove every direction of the features."""


class Leace(Erasure):
    """LEACE of the one-hot identity from standardised features (``concept_erasure.LeaceEraser``)."""

    name = "leace"

    def check_capacity(self, directions: int, identities: int) -> None:
        if identities - 1 >= directions:
            raise ConfigError(
                f"erasure=leace removes {identities - 1} directions ({identities} training identities, less one), "
                f"and this model's base features vary in only {directions} (network.bottleneck, network.feature_norm): "
                "it would erase all of them and leave nothing for emotion. Use erasure=inlp, which stops once a "
                "linear identity probe is at chance on validation, or a base with more features (network=paper)."
            )

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> AffineErasure:
        from concept_erasure import LeaceEraser  # imports on use: only erasure jobs need it

        standardiser = Standardiser(train.features)
        one_hot = F.one_hot(train.labels, num_classes).double()
        eraser = LeaceEraser.fit(standardiser(train.features).double(), one_hot)
        center = eraser.bias if eraser.bias is not None else torch.zeros(train.features.shape[1], dtype=torch.float64)
        # k one-hot classes span k - 1 directions once centred: the eraser's null pair is dropped.
        kept = eraser.proj_left.norm(dim=0) * eraser.proj_right.norm(dim=1)
        kept = kept > kept.max() * 1e-9
        return AffineErasure.of_standardised(standardiser, center, eraser.proj_left[:, kept], eraser.proj_right[kept])


class Inlp(Erasure):
    """Iterative null-space projection: train the audit's logistic attacker on the (projected)
    standardised features, project out its weights' row space, and repeat until a new probe's
    validation accuracy is within two standard errors of the majority class's share, or for
    ``max_iterations`` probes."""

    name = "inlp"
    needs_validation_identity = True

    def __init__(self, max_iterations: int = 30):
        self.max_iterations = max_iterations

    def fit(self, train: Split, val: Split, num_classes: int, seed: int) -> AffineErasure:
        standardiser = Standardiser(train.features)
        x, x_val = standardiser(train.features), standardiser(val.features)
        basis = torch.zeros(x.shape[1], 0)
        bound = chance_bound(val.labels)
        for iteration in range(self.max_iterations):
            probe = logistic_probe().fit(Split(project_out(x, basis), train.labels),
                                            Split(project_out(x_val, basis), val.labels), num_classes, seed + iteration)
            self.iterations, self.val_accuracy = iteration, probe.val_accuracy
            if probe.val_accuracy <= bound:
                break
            # The probe reads its inputs standardised once more; its directions in ours are w / std.
            directions = probe.model.weight.detach() / probe.standardise.std[None, :]
            basis = orthonormal(torch.cat([basis, directions.T], dim=1))
        else:
            self.iterations = self.max_iterations
            log.warning("INLP: the linear identity probe still read %.1f%% of validation faces (chance bound %.1f%%) "
                        "after %d projections (erasure.max_iterations)", self.val_accuracy, bound, self.max_iterations)
        log.info("INLP: %d projection(s), rank %d removed; last probe %.1f%% on validation (chance bound %.1f%%)",
                 self.iterations, basis.shape[1], self.val_accuracy, bound)
        return AffineErasure.of_standardised(standardiser, torch.zeros(x.shape[1]), basis, basis.T)

    def fit_metrics(self) -> dict[str, float]:
        return {"erasure/iterations": float(self.iterations), "erasure/probe/val": self.val_accuracy}


def erase(erasure: Erasure, base: ConvBase, features: FeatureDataModule,
          data: GroupedFoldDataModule) -> tuple[ConvBase, FeatureDataModule, dict[str, float]]:
    """``erasure`` fitted on the training side's features and identities (the validation side's
    where it stops on them): the base with it, its features, and what the fit chose."""
    train, val = (as_split(features.sides[side].tensors["features"], features.sides[side].tensors["identity"])
                  for side in ("train", "val"))
    affine = erasure.fit(train, val, data.num_classes("identity"), data.seed)
    log.info("Erasure %s: rank %d removed from the base's %d features", erasure.name, affine.rank, base.out_features)
    erased = features.mapped(affine)
    if leaves_nothing(train.features, erased.sides["train"].tensors["features"]):
        # One INLP probe removes a direction per class: on a base with fewer directions, all of them.
        log.warning("erasure=%s removed every direction the base's %d features vary in (rank %d): the erased "
                    "base carries nothing, emotion included, so its fresh heads are at chance. Use a base with "
                    "more features than identities, or no erasure.", erasure.name, base.out_features, affine.rank)
    return base.with_erasure(affine), erased, {ERASURE_RANK: float(affine.rank), **erasure.fit_metrics()}


# Spread left after an erasure, relative to the spread before, under which nothing is left but
# floating-point error (a numerical tolerance, not a tuned threshold).
VANISHED_SPREAD = 1e-4


def leaves_nothing(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether the erased features ``after`` no longer vary (against the spread of ``before``)."""
    return bool(after.std(0).max() <= VANISHED_SPREAD * before.std(0).max())


def project_out(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``features`` with their components along the orthonormal columns of ``basis`` removed."""
    return features - (features @ basis) @ basis.T


def orthonormal(vectors: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the column space of ``vectors`` (numerically null directions dropped)."""
    u, s, _ = torch.linalg.svd(vectors.double(), full_matrices=False)
    return u[:, s > s.max() * 1e-6].float()


def chance_bound(labels: torch.Tensor) -> float:
    """The majority class's share of ``labels`` plus two binomial standard errors, in %."""
    share = labels.bincount().max().item() / len(labels)
    return 100 * (share + 2 * math.sqrt(share * (1 - share) / len(labels)))
