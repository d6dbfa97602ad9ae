"""The identity audit: how much identity (and emotion) a frozen base's features still give away.

The paper's Hybrid2Face is one fresh FC head; a base can fool the head it was trained against
while other attackers still read identity off it. The audit has two parts.

Training-side attackers (``audit.attackers``, :func:`~anonemo.audit.attackers.build_attackers`) are fitted on the
training side's features, tuned on the validation side and scored once on the test fold.
``audit/<task>/max``, the strongest of them, is the leakage number the paper's protocol asks for.

Those attackers learn from features of images the base was trained on. An adversarially trained
base can treat those images differently from new ones: ``hybrid_robust`` bases on Yale put new
images of a subject away from that subject's training images, so training-side attackers scored
*below* chance on half of the folds (docs/audit.md). Below
chance is not anonymity: the features still separate people, just not the way the training side
says. The gallery audit therefore fits a tuning-free attacker (nearest class mean) on the
validation side, images the base never trained on, and scores it on the test images of the
subjects that side holds: ``audit/<task>/gallery`` with its own ``chance`` (one over the number of
gallery classes) and ``coverage`` (the share of test images it can score).

A third, optional part (:func:`audit_emotion_output`) attacks the emotion head's output instead of
the features: how much identity the emotion decisions themselves carry.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from anonemo import metrics as names
from anonemo.audit.attackers import NearestCentroidAttacker
from anonemo.probes import Attacker, Split, as_split
from anonemo.audit.linkage import linkage_audit
from anonemo.data.datamodule import TensorBatches
from anonemo.evaluation import accuracy

log = logging.getLogger(__name__)


def audit_base(
    sides: dict[str, TensorBatches],
    num_classes: dict[str, int],
    seed: int,
    attackers: list[Attacker],
    features: bool = True,
    null_permutations: int = 0,
    emotion_head: nn.Module | None = None,
) -> dict[str, float]:
    """The audit of a frozen base from its features' ``sides``: the attackers on the features
    (:func:`audit_features`) and the linkage audit (:func:`~anonemo.audit.linkage.linkage_audit`),
    with ``features``, and, given ``emotion_head``, the identity attackers on that head's output
    (:func:`audit_emotion_output`). ``num_classes`` names the tasks whose attackers run: without
    ``identity`` (test people who were never training people) only linkage measures identity."""
    metrics: dict[str, float] = {}
    if features:
        started = time.perf_counter()
        metrics |= audit_features(sides, num_classes, seed, attackers, null_permutations)
        strongest = ", ".join(f"strongest {task} attacker {metrics[names.audit(task)]:.1f}% (chance "
                              f"{metrics[names.audit(task, 'chance')]:.1f}%)" for task in num_classes)
        log.info("Audit: %s (%.0f s)", strongest, time.perf_counter() - started)
        metrics |= linkage_audit(sides, seed)
    if emotion_head is not None and "identity" in num_classes:
        metrics |= audit_emotion_output(sides, emotion_head, num_classes["identity"], seed, attackers)
    for name in names.below_chance(metrics):
        log.warning(
            "%s = %.1f%% is below chance (%.1f%%). That is not privacy: the features still tell the classes "
            "apart, and the attackers read them the wrong way round (new images placed away from their own "
            "class's training images). Read the gallery attacker and docs/audit.md.",
            name, metrics[name], metrics[names.chance_of(name)],
        )
    return metrics


def audit_features(
    sides: dict[str, TensorBatches],
    num_classes: dict[str, int],
    seed: int,
    attackers: list[Attacker],
    null_permutations: int = 0,
) -> dict[str, float]:
    """``audit/<task>/<attacker>`` test accuracies (%) for each task of ``num_classes``, with ``max``
    and ``chance`` per task, and
    the gallery audit's ``audit/<task>/gallery{,/chance,/coverage}``.

    Each attacker's validation score is logged as ``.../val``, and the strongest of them as
    ``audit/<task>/max/val``: the leakage number to *choose* settings by (a search, a β) without
    looking at the test fold. It reads high, as the attackers chose their epoch or k there.

    ``sides`` holds ``features`` and labels for ``train``, ``val`` and ``test``; only ``train``
    and ``val`` are used for fitting and every choice, ``test`` only for the final scores.
    ``null_permutations`` > 0 adds the identity audit's null (:func:`null_maxima`):
    ``audit/identity/max/null`` (its mean) and ``audit/identity/max/p_value``.
    """
    metrics: dict[str, float] = {}
    for task in num_classes:
        train, val, test = (as_split(sides[s].tensors["features"], sides[s].tensors[task]) for s in ("train", "val", "test"))
        scores = attack(train, val, test, num_classes[task], seed, attackers, task)
        metrics |= {f"{names.audit(task, attacker.name)}/val": attacker.val_accuracy for attacker in attackers}
        metrics[f"{names.audit(task)}/val"] = max(attacker.val_accuracy for attacker in attackers)
        metrics |= {names.audit(task, name): score for name, score in scores.items()}
        metrics[names.audit(task)] = max(scores.values())
        metrics[names.audit(task, "chance")] = 100 / num_classes[task]
        metrics |= gallery_audit(val, test, task)
    if null_permutations and "identity" in num_classes:
        maxima = null_maxima(sides, "identity", num_classes["identity"], seed, null_permutations, attackers)
        observed = metrics[names.IDENTITY_MAX]
        metrics[names.IDENTITY_MAX_NULL] = sum(maxima) / len(maxima)
        metrics[names.IDENTITY_MAX_P_VALUE] = (1 + sum(m >= observed for m in maxima)) / (1 + len(maxima))
        log.info("audit identity/max: %.1f%%; with permuted labels (no identity in the features) %.1f%% on average, "
                 "p = %.3f over %d permutations", observed, metrics[names.IDENTITY_MAX_NULL],
                 metrics[names.IDENTITY_MAX_P_VALUE], len(maxima))
    return metrics


def audit_emotion_output(
    sides: dict[str, TensorBatches],
    emotion_head: nn.Module,
    num_subjects: int,
    seed: int,
    attackers: list[Attacker],
) -> dict[str, float]:
    """``audit/emotion_output/identity/<attacker>``, with ``max`` and ``chance``: the identity
    attackers fitted, tuned and scored as in :func:`audit_features`, on ``emotion_head``'s output
    (its log-posteriors over the emotions) instead of the base's features.

    The output is computed from the features, so identity read off it can be read off the
    features by an attacker that includes the head: a base cannot leak less than this without
    changing its emotion decisions. Where people express emotions in personal ways (the synthetic
    faces draw a per-subject expression style), a good emotion output is itself partly an
    identity signal, and this number shows how much.
    """
    was_training = emotion_head.training
    emotion_head.eval()
    device = next(emotion_head.parameters()).device
    with torch.no_grad():
        outputs = {
            side: as_split(F.log_softmax(emotion_head(sides[side].tensors["features"].float().to(device)).float(), dim=1),
                           sides[side].tensors["identity"])
            for side in ("train", "val", "test")
        }
    emotion_head.train(was_training)
    task = names.EMOTION_OUTPUT_TASK
    scores = attack(outputs["train"], outputs["val"], outputs["test"], num_subjects, seed, attackers, task=task)
    metrics = {names.audit(task, name): score for name, score in scores.items()}
    metrics |= {names.audit(task): max(scores.values()), names.audit(task, "chance"): 100 / num_subjects}
    log.info("audit %s/max: %.1f%% of identity read off the emotion head's output (chance %.1f%%)", task,
             metrics[names.audit(task)], metrics[names.audit(task, "chance")])
    return metrics


def attack(
    train: Split, val: Split, test: Split, num_classes: int, seed: int, attackers: list[Attacker], task: str | None
) -> dict[str, float]:
    """Each attacker's test accuracy (%), fitted on ``train`` and tuned on ``val``; logged per
    attacker when ``task`` names the audit it belongs to."""
    scores = {}
    for attacker in attackers:
        started = time.perf_counter()
        attacker.fit(train, val, num_classes, seed)
        scores[attacker.name] = accuracy(attacker.predict(test.features), test.labels)
        if task is not None:
            log.debug("audit %s/%s: %.1f%% on the test fold (%.1f%% validation, %.1f s)", task, attacker.name,
                     scores[attacker.name], attacker.val_accuracy, time.perf_counter() - started)
    return scores


def null_maxima(
    sides: dict[str, TensorBatches], task: str, num_classes: int, seed: int, permutations: int, attackers: list[Attacker]
) -> list[float]:
    """The strongest attacker's test accuracy on features with no ``task`` information, once per
    permutation: the training and validation sides' labels are shuffled among their original
    images (copies keep one label), the test fold's are kept.

    ``max`` over several attackers, scored on a test fold of few originals (6 on Yale: each is
    one sixth of the score), sits above ``chance`` even for features without identity; this is
    the level to read it against, with the same features, copies and attackers.
    """
    generator = torch.Generator().manual_seed(seed * 7919 + 1)  # its own stream, apart from the fits' seed
    sources = torch.cat([sides[s].tensors["source"] for s in ("train", "val")])
    labels = torch.cat([torch.as_tensor(sides[s].tensors[task]) for s in ("train", "val")])
    originals, copy_of = sources.unique(return_inverse=True)
    label_of_original = torch.zeros(len(originals), dtype=labels.dtype).scatter_(0, copy_of, labels)
    n_train = len(sides["train"].tensors["source"])
    test = as_split(sides["test"].tensors["features"], sides["test"].tensors[task])
    maxima = []
    for _ in range(permutations):
        shuffled = label_of_original[torch.randperm(len(originals), generator=generator)][copy_of]
        train = as_split(sides["train"].tensors["features"], shuffled[:n_train])
        val = as_split(sides["val"].tensors["features"], shuffled[n_train:])
        maxima.append(max(attack(train, val, test, num_classes, seed, attackers, task=None).values()))
    return maxima


def gallery_audit(gallery: Split, test: Split, task: str) -> dict[str, float]:
    """A nearest-class-mean attacker fitted on ``gallery`` (images the base never trained on),
    scored on the ``test`` images whose class the gallery holds."""
    attacker = NearestCentroidAttacker().fit(gallery, None, 0, seed=0)
    covered = torch.isin(test.labels, attacker.classes)
    gallery_metric = names.audit(task, "gallery")
    metrics = {
        f"{gallery_metric}/chance": 100 / len(attacker.classes),
        f"{gallery_metric}/coverage": 100 * covered.float().mean().item(),
        gallery_metric: accuracy(attacker.predict(test.features[covered]), test.labels[covered])
        if covered.any() else float("nan"),
    }
    log.debug("audit %s/gallery: %.1f%% on %.0f%% of the test fold (chance %.1f%%, %d gallery classes)", task,
             metrics[gallery_metric], metrics[f"{gallery_metric}/coverage"], metrics[f"{gallery_metric}/chance"],
             len(attacker.classes))
    return metrics
