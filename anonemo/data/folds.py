"""Grouped, stratified cross-validation folds, as in the paper's protocol.

An original photograph and all its augmented copies always fall on the same side of a split.
Every training side must contain every subject and every emotion: identity accuracy is only
defined for subjects the base has seen (which is why the paper rules out leave-one-subject-out).
Folds depend only on the labels, the groups and the seed, so every model sees the same folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from anonemo.data.check import check_fold_options, check_fold_protocol
from anonemo.errors import ConfigError

MAX_ATTEMPTS = 50  # reshuffles tried before concluding the data cannot satisfy the coverage rule


@dataclass(frozen=True)
class FoldSplit:
    """Indices (into the augmented set) of one fold's training, validation and test sides."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def grouped_fold_split(
    subjects: np.ndarray,
    emotions: np.ndarray,
    groups: np.ndarray,
    fold: int,
    n_splits: int = 10,
    val_fraction: float = 0.1,
    seed: int = 0,
    names: Mapping[str, Sequence[str]] | None = None,
) -> FoldSplit:
    """Split ``fold`` of ``n_splits``; validation is carved, grouped, from its training side.

    ``names`` (``subject``, ``emotion``, ``group``: label index -> name) make messages readable.
    """
    check_fold_options(fold, n_splits, val_fraction)
    check_fold_protocol(subjects, emotions, groups, n_splits, names or {})
    everything = np.arange(len(groups))
    folds = _covering_folds(subjects, emotions, groups, everything, n_splits, seed, "cv.n_splits")
    train_val, test = folds[fold]
    val_splits = max(2, round(1 / val_fraction))
    # A different stream of the seed per fold, so the validation carve is not the same shuffle twice.
    train, val = _covering_folds(
        subjects, emotions, groups, train_val, val_splits, seed * 1000 + fold + 1, "cv.val_fraction"
    )[0]
    return FoldSplit(train=train, val=val, test=test)


def _covering_folds(subjects, emotions, groups, indices, n_splits, seed, option):
    """Grouped folds of ``indices``, stratified on subject, whose every training side holds every
    subject and emotion present in ``indices``; reshuffled until they do."""
    needed_subjects, needed_emotions = set(subjects[indices]), set(emotions[indices])
    for attempt in range(MAX_ATTEMPTS):
        state = int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] % 2**31)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=state)
        with warnings.catch_warnings():
            # Fewer images per subject than folds is expected here; coverage is checked below.
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = [
                (indices[a], indices[b])
                for a, b in splitter.split(indices, subjects[indices], groups[indices])
            ]
        if all(
            set(subjects[train]) == needed_subjects and set(emotions[train]) == needed_emotions
            for train, _ in splits
        ):
            return splits
    raise ConfigError(
        f"Could not find {n_splits} grouped folds in which every training side holds every subject "
        f"and every emotion ({MAX_ATTEMPTS} shuffles tried). Some subject or emotion has too few "
        f"original images for {option}: lower it, or add images."
    )
