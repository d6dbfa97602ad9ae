"""The identity audit: how much identity (and emotion) a frozen base's features still give away.

The paper's Hybrid2Face is one fresh FC head; a base can fool the head it was trained against
while other attackers still read identity off it. The audit has two parts.

Training-side attackers (:func:`~anonemo.audit.attackers.default_attackers`) are fitted on the
training side's features, tuned on the validation side and scored once on the test fold.
``audit/<task>/max``, the strongest of them, is the leakage number the paper's protocol asks for.

Those attackers learn from features of images the base was trained on. An adversarially trained
base can treat those images differently from new ones: measured on Yale, ``hybrid_robust`` bases
put new images of a subject away from that subject's training images, so training-side attackers
scored *below* chance (0% on both validation and test, chance 6.7%) on half of the folds. Below
chance is not anonymity: the features still separate people, just not the way the training side
says. The gallery audit therefore fits a tuning-free attacker (nearest class mean) on the
validation side, images the base never trained on, and scores it on the test images of the
subjects that side holds: ``audit/<task>/gallery`` with its own ``chance`` (one over the number of
gallery classes) and ``coverage`` (the share of test images it can score).
"""

from __future__ import annotations

import logging
import time

import torch

from anonemo.audit.attackers import Attacker, NearestCentroidAttacker, Split, as_split, default_attackers
from anonemo.data.datamodule import TASKS, TensorBatches
from anonemo.evaluation import accuracy

log = logging.getLogger(__name__)


def audit_features(
    sides: dict[str, TensorBatches], num_classes: dict[str, int], seed: int, attackers: list[Attacker] | None = None
) -> dict[str, float]:
    """``audit/<task>/<attacker>`` test accuracies (%), with ``max`` and ``chance`` per task, and
    the gallery audit's ``audit/<task>/gallery{,/chance,/coverage}``.

    ``sides`` holds ``features`` and labels for ``train``, ``val`` and ``test``; only ``train``
    and ``val`` are used for fitting and every choice, ``test`` only for the final scores.
    """
    metrics: dict[str, float] = {}
    for task in TASKS:
        train, val, test = (as_split(sides[s].tensors["features"], sides[s].tensors[task]) for s in ("train", "val", "test"))
        scores = {}
        for attacker in attackers if attackers is not None else default_attackers():
            started = time.perf_counter()
            attacker.fit(train, val, num_classes[task], seed)
            scores[attacker.name] = accuracy(attacker.predict(test.features), test.labels)
            metrics[f"audit/{task}/{attacker.name}/val"] = attacker.val_accuracy
            log.info("audit %s/%s: %.1f%% on the test fold (%.1f%% validation, %.1f s)", task, attacker.name,
                     scores[attacker.name], attacker.val_accuracy, time.perf_counter() - started)
        metrics |= {f"audit/{task}/{name}": score for name, score in scores.items()}
        metrics[f"audit/{task}/max"] = max(scores.values())
        metrics[f"audit/{task}/chance"] = 100 / num_classes[task]
        if metrics[f"audit/{task}/max"] < metrics[f"audit/{task}/chance"]:
            log.warning(
                "audit %s: every training-side attacker is below chance (best %.1f%%, chance %.1f%%): the features "
                "treat new images unlike training images; read the gallery audit", task,
                metrics[f"audit/{task}/max"], metrics[f"audit/{task}/chance"],
            )
        metrics |= gallery_audit(val, test, task)
    return metrics


def gallery_audit(gallery: Split, test: Split, task: str) -> dict[str, float]:
    """A nearest-class-mean attacker fitted on ``gallery`` (images the base never trained on),
    scored on the ``test`` images whose class the gallery holds."""
    attacker = NearestCentroidAttacker().fit(gallery, None, 0, seed=0)
    covered = torch.isin(test.labels, attacker.classes)
    metrics = {
        f"audit/{task}/gallery/chance": 100 / len(attacker.classes),
        f"audit/{task}/gallery/coverage": 100 * covered.float().mean().item(),
        f"audit/{task}/gallery": accuracy(attacker.predict(test.features[covered]), test.labels[covered])
        if covered.any() else float("nan"),
    }
    log.info("audit %s/gallery: %.1f%% on %.0f%% of the test fold (chance %.1f%%, %d gallery classes)", task,
             metrics[f"audit/{task}/gallery"], metrics[f"audit/{task}/gallery/coverage"],
             metrics[f"audit/{task}/gallery/chance"], len(attacker.classes))
    return metrics
