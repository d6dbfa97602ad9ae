"""The linkage audit: can an attacker who holds other pictures of a person link them to this one?

The identity attackers of :mod:`anonemo.audit.suite` classify the people the base was trained on.
Linkage needs no such list: it compares two pictures' features and decides whether they show the
same person, which works for anyone, including people the base never saw. On one side's original
images (never an augmented copy, so no pair is two copies of one photograph), and only between
different groups: two frames of one sequence are nearly the same picture, so their similarity is no
evidence of identity (same-group pairs are left out and counted, ``audit/linkage/pairs/same_group``):

- **verification**: every such pair of originals is scored by the cosine similarity of (a) features
  standardised with the training side's statistics and (b) the same features projected by LDA
  fitted on the training side's identities (its shrinkage chosen by the validation side's AUC).
  ``audit/linkage/<space>/auc`` and ``/eer``; ``audit/linkage/auc`` is the higher AUC (chance
  0.5) and ``audit/linkage/eer`` the lower equal error rate (chance 0.5);
- **identification**: one original per person as the gallery, the originals of their other groups
  as probes, nearest by cosine: ``audit/linkage/rank1`` (%, the better space) with
  ``audit/linkage/rank1/chance``.

Where a side holds no same-person pair from two groups (under the paper's protocol a test fold
usually holds one group per person), its linkage numbers are undefined and not logged.

The test side's numbers are what is reported; ``.../val`` are the same on the validation side, for
choosing settings.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline, make_pipeline

from anonemo.data.datamodule import TensorBatches
from anonemo.metrics import LINKAGE

log = logging.getLogger(__name__)

SHRINKAGES = (0.1, 0.5, 0.9)  # LDA's covariance shrinkage, chosen on the validation side
PCA_COMPONENTS = 128


def originals(side: TensorBatches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features, subjects and groups of a side's original images."""
    keep = side.tensors["original"].bool()
    return (side.tensors["features"][keep].double().numpy(), side.tensors["identity"][keep].numpy(),
            side.tensors["group"][keep].numpy())


def cosine(features: np.ndarray) -> np.ndarray:
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def scored_pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Row and column indices of every pair of originals from two groups, and how many same-group
    pairs were left out."""
    rows, columns = np.triu_indices(len(groups), k=1)
    other_group = groups[rows] != groups[columns]
    return rows[other_group], columns[other_group], int((~other_group).sum())


def verification(features: np.ndarray, subjects: np.ndarray, groups: np.ndarray) -> tuple[float, float, int]:
    """ROC-AUC and equal error rate of same-person decisions by cosine similarity over every pair of
    two groups, and the number of those pairs; NaN where the side has no same-person or no
    different-person pair."""
    rows, columns, _ = scored_pairs(groups)
    scores, same = cosine(features)[rows, columns], subjects[rows] == subjects[columns]
    if same.all() or not same.any():
        return float("nan"), float("nan"), len(same)
    false_positive, true_positive, _ = roc_curve(same, scores)
    crossing = np.argmin(np.abs(false_positive - (1 - true_positive)))
    eer = (false_positive[crossing] + 1 - true_positive[crossing]) / 2
    return float(roc_auc_score(same, scores)), float(eer), len(same)


def rank1(features: np.ndarray, subjects: np.ndarray, groups: np.ndarray, seed: int) -> tuple[float, float]:
    """Rank-1 identification (%) of probes against a gallery of one original per subject (drawn
    with ``seed``), each probe from another group than its subject's gallery original, and its
    chance; NaN where no subject has an original of a second group."""
    order = np.random.default_rng(seed).permutation(len(subjects))
    _, first = np.unique(subjects[order], return_index=True)
    gallery = order[first]
    gallery_group = dict(zip(subjects[gallery].tolist(), groups[gallery].tolist()))
    probes = np.setdiff1d(np.arange(len(subjects)), gallery)
    probes = probes[[gallery_group[s] != g for s, g in zip(subjects[probes].tolist(), groups[probes].tolist())]]
    if len(probes) == 0 or len(gallery) < 2:
        return float("nan"), float("nan")
    nearest = gallery[cosine(features)[np.ix_(probes, gallery)].argmax(axis=1)]
    return 100 * float(np.mean(subjects[nearest] == subjects[probes])), 100 / len(gallery)


def linkage_audit(sides: dict[str, TensorBatches], seed: int) -> dict[str, float]:
    """``audit/linkage/*`` on the test side's originals, and ``.../val`` on the validation side's
    (standardisation and LDA fitted on the training side; LDA's shrinkage chosen on validation)."""
    train_x, train_y, _ = originals(sides["train"])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    standardised = {side: ((x - mean) / std, y, g) for side, (x, y, g) in
                    ((s, originals(sides[s])) for s in ("val", "test"))}
    spaces = {"cosine": dict(standardised)}
    lda = best_lda((train_x - mean) / std, train_y, *standardised["val"])
    if lda is not None:
        spaces["lda"] = {side: (lda.transform(x), y, g) for side, (x, y, g) in standardised.items()}
    metrics: dict[str, float] = {}
    for side, suffix in (("test", ""), ("val", "/val")):
        aucs, eers, ranks = [], [], []
        for space, data in spaces.items():
            auc, eer, pairs = verification(*data[side])
            rank, chance = rank1(*data[side], seed)
            metrics |= {f"{LINKAGE}/{space}/auc{suffix}": auc, f"{LINKAGE}/{space}/eer{suffix}": eer,
                        f"{LINKAGE}/{space}/rank1{suffix}": rank}
            aucs.append(auc), eers.append(eer), ranks.append(rank)
        metrics |= {f"{LINKAGE}/auc{suffix}": strongest(aucs, max), f"{LINKAGE}/eer{suffix}": strongest(eers, min),
                    f"{LINKAGE}/rank1{suffix}": strongest(ranks, max),
                    f"{LINKAGE}/rank1/chance{suffix}": chance, f"{LINKAGE}/pairs{suffix}": float(pairs),
                    f"{LINKAGE}/pairs/same_group{suffix}": float(scored_pairs(standardised[side][2])[2])}
    metrics[f"{LINKAGE}/auc/chance"] = metrics[f"{LINKAGE}/eer/chance"] = 0.5
    _, test_people, test_groups = standardised["test"]
    left_out = int(metrics[f"{LINKAGE}/pairs/same_group"])
    within = f"; {left_out} pairs of two originals of one group left out" if left_out else ""
    if np.isnan(metrics[f"{LINKAGE}/auc"]):
        # e.g. a test fold of the paper's protocol that holds one group per person, or a
        # subject-disjoint test fold of one person
        people = len(np.unique(test_people))
        log.info("Linkage audit undefined on this fold: its %d test originals of %d %s%s", len(test_people), people,
                 "people hold no same-person pair from two groups" if people > 1
                 else "person hold no pair of two people", within)
    else:
        log.info("Linkage audit: same-person AUC %.2f (chance 0.5), EER %.2f, rank-1 %.1f%% (chance %.1f%%) over %d "
                 "pairs of test originals from two groups%s", metrics[f"{LINKAGE}/auc"], metrics[f"{LINKAGE}/eer"],
                 metrics[f"{LINKAGE}/rank1"], metrics[f"{LINKAGE}/rank1/chance"], metrics[f"{LINKAGE}/pairs"],
                 within)
    # an undefined number is left out, not logged as NaN
    return {k: float(v) for k, v in metrics.items() if not np.isnan(v)}


def strongest(values: list[float], pick) -> float:
    """The attacker's best of the defined ``values`` (``pick``: max or min), NaN if none is."""
    defined = [v for v in values if not np.isnan(v)]
    return pick(defined) if defined else float("nan")


def best_lda(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
             val_groups: np.ndarray) -> Pipeline | None:
    """LDA on the training side's identities, its shrinkage the one with the best validation AUC;
    None where the training side has fewer than two subjects. PCA first: LDA's eigen solver on
    the paper base's 4096 features is slow (docs/audit.md)."""
    if len(np.unique(train_y)) < 2:
        return None
    components = min(PCA_COMPONENTS, len(train_y) - 1, train_x.shape[1])
    best, best_auc = None, -1.0
    for shrinkage in SHRINKAGES:
        lda = make_pipeline(PCA(components, svd_solver="full"),
                            LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage)).fit(train_x, train_y)
        auc = verification(lda.transform(val_x), val_y, val_groups)[0]
        if best is None or (not np.isnan(auc) and auc > best_auc):
            best, best_auc = lda, auc
    return best
