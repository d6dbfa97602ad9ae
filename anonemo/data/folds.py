"""Grouped, stratified cross-validation folds under one of two protocols (``cv.protocol``).

``paper`` (the default, the paper's): an original photograph, its group (the frames of one
sequence) and all their augmented copies fall on one side of every split, and every training side
holds every subject and every emotion, so identity accuracy is defined: the test people are the
training people (which is why the paper rules out leave-one-subject-out).

``subject_disjoint``: folds are grouped by subject, so no test or validation subject is on the
training side. Emotion accuracy is then accuracy on unseen people; closed-set identity metrics are
undefined, and the linkage audit measures identity instead (docs/audit.md).

Folds depend only on the labels, the groups, the protocol and the seed, so every model sees the
same folds. The checks here need no torch: a job runs them before anything heavy is imported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from anonemo.errors import ConfigError

MAX_ATTEMPTS = 50  # reshuffles tried before concluding the data cannot satisfy the coverage rule


@dataclass(frozen=True)
class Protocol:
    """How folds are cut: the label whose values never straddle a split (``unit``), the label they
    are stratified on, the labels every training side must hold all of (``covers``), the tasks
    a model trained on a fold can be tested on (``testable_tasks``: identity only when the test
    people are training people), and the units the validation carve keeps where it can
    (``min_val_units``: two people, so that linkage is defined on validation)."""

    name: str
    unit: str
    stratify: str
    covers: tuple[str, ...]
    testable_tasks: tuple[str, ...]
    min_val_units: int = 1

    @property
    def closed_set_identity(self) -> bool:
        return "identity" in self.testable_tasks


PROTOCOLS = {
    "paper": Protocol("paper", unit="group", stratify="subject", covers=("subject", "emotion"),
                      testable_tasks=("emotion", "identity")),
    "subject_disjoint": Protocol("subject_disjoint", unit="subject", stratify="emotion", covers=("emotion",),
                                 testable_tasks=("emotion",), min_val_units=2),
}

UNSEEN_PEOPLE_NOTE = (
    "cv.protocol=subject_disjoint: no test or validation subject is on the training side, so closed-set identity "
    "metrics (Face, Emotion2Face, Hybrid2Face, Hybrid/identity_head, audit/identity/*, audit/emotion_output/*) are "
    "undefined and not logged; the linkage audit (audit/linkage/*) measures identity for these unseen people."
)


def fold_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"cv.protocol={name!r} is not known: use {' or '.join(PROTOCOLS)} (docs/data.md, Folds).")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class FoldSplit:
    """Indices (into the augmented set) of one fold's training, validation and test sides."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fold_split(
    subjects: np.ndarray,
    emotions: np.ndarray,
    groups: np.ndarray,
    fold: int,
    n_splits: int = 10,
    val_fraction: float = 0.1,
    seed: int = 0,
    protocol: str = "paper",
    names: Mapping[str, Sequence[str]] | None = None,
) -> FoldSplit:
    """Split ``fold`` of ``n_splits`` under ``protocol``; validation is carved from its training
    side by the same rules.

    ``names`` (``subject``, ``emotion``, ``group``: label index -> name) make messages readable.
    """
    rules = fold_protocol(protocol)
    check_fold_options(fold, n_splits, val_fraction)
    check_fold_protocol(subjects, emotions, groups, n_splits, names or {}, protocol)
    labels = {"subject": subjects, "emotion": emotions, "group": groups}
    everything = np.arange(len(groups))
    train_val, test = _covering_folds(labels, rules, everything, n_splits, seed, "cv.n_splits")[fold]
    # Never fewer than min_val_units units per validation fold where there are enough to carve from.
    units = len(np.unique(labels[rules.unit][train_val]))
    val_splits = max(2, min(round(1 / val_fraction), units // rules.min_val_units))
    # A different stream of the seed per fold, so the validation carve is not the same shuffle twice.
    train, val = _covering_folds(labels, rules, train_val, val_splits, seed * 1000 + fold + 1, "cv.val_fraction")[0]
    return FoldSplit(train=train, val=val, test=test)


def _covering_folds(labels, rules: Protocol, indices, n_splits, seed, option):
    """Folds of ``indices`` grouped on ``rules.unit`` and stratified on ``rules.stratify``, whose
    every training side holds every value of ``rules.covers`` present in ``indices``; reshuffled
    until they do."""
    # Imported here, not above: it takes seconds, and the early check (no folds cut) needs none of it.
    from sklearn.model_selection import StratifiedGroupKFold

    needed = {name: set(labels[name][indices]) for name in rules.covers}
    for attempt in range(MAX_ATTEMPTS):
        state = int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] % 2**31)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=state)
        with warnings.catch_warnings():
            # Fewer images per class than folds is expected here; coverage is checked below.
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = [
                (indices[a], indices[b])
                for a, b in splitter.split(indices, labels[rules.stratify][indices], labels[rules.unit][indices])
            ]
        if all(len(test) and all(set(labels[name][train]) == needed[name] for name in rules.covers)
               for train, test in splits):
            return splits
    held = " and every ".join(rules.covers)
    raise ConfigError(
        f"Could not find {n_splits} folds grouped by {rules.unit} in which every training side holds every {held} "
        f"({MAX_ATTEMPTS} shuffles tried, cv.protocol={rules.name}). Some {held.replace(' and every ', ' or ')} has "
        f"too few {rules.unit}s for {option}: lower it, or add images."
    )


def check_fold_options(fold: int, n_splits: int, val_fraction: float, protocol: str = "paper") -> None:
    fold_protocol(protocol)
    if n_splits < 2:
        raise ConfigError(f"cv.n_splits={n_splits} must be at least 2.")
    if not 0 <= fold < n_splits:
        raise ConfigError(f"fold={fold} is out of range for cv.n_splits={n_splits}: use fold=0..{n_splits - 1}.")
    if not 0 < val_fraction <= 0.5:
        raise ConfigError(
            f"cv.val_fraction={val_fraction} must be in (0, 0.5]: a validation side is needed for "
            "early stopping and model selection, which never look at the test fold."
        )


def check_fold_protocol(subjects: np.ndarray, emotions: np.ndarray, groups: np.ndarray, n_splits: int,
                        names: Mapping[str, Sequence[str]], protocol: str = "paper") -> None:
    """Whether folds of this data are possible under ``protocol``, with a message that names the
    subject or emotion that prevents them and what to set. ``names``: label index -> name, for
    ``subject``, ``emotion`` and ``group``."""
    if fold_protocol(protocol).unit == "subject":
        _check_subject_folds(subjects, emotions, n_splits, names)
    else:
        _check_group_folds(subjects, emotions, groups, n_splits, names)


def _check_group_folds(subjects, emotions, groups, n_splits, names) -> None:
    """The paper's protocol needs every subject and emotion on every training side: at least two
    groups of each (a group is one original image, or the originals that share a group, such as
    the frames of one sequence), and no more folds than groups."""
    n_groups = len(np.unique(groups))
    if n_splits > n_groups:
        raise ConfigError(
            f"cv.n_splits={n_splits} is larger than the number of groups of original images ({n_groups}): "
            f"use at most {n_groups} folds."
        )
    advice = {
        "subject": "add images of that subject, or drop subjects with fewer groups: dataset.min_groups_per_subject=2 "
                   "(dataset=folder, dataset=ckplus)",
        "emotion": "add images of that emotion, or leave it out of dataset.emotions",
    }
    for name, labels in (("subject", subjects), ("emotion", emotions)):
        for label in np.unique(labels):
            members = np.unique(groups[labels == label])
            if len(members) < 2:
                shown = names[name][label] if name in names else label
                files = ", ".join(str(names["group"][g]) for g in members) if "group" in names else ""
                raise ConfigError(
                    f"{name} {shown} has only {len(members)} original image or group{f' ({files})' if files else ''}: "
                    "with one it cannot be on the training side of the fold that tests it. Every subject and "
                    f"every emotion needs at least two; {advice[name]}."
                )


def _check_subject_folds(subjects, emotions, n_splits, names) -> None:
    """Subject-disjoint folds need a subject per test fold, at least two subjects left beside the
    largest test fold (training and validation), and every emotion shown by two subjects or more."""
    n_subjects = len(np.unique(subjects))
    possible = [k for k in range(2, n_subjects + 1) if n_subjects - math.ceil(n_subjects / k) >= 2]
    if n_splits not in possible:
        advice = (f"use cv.n_splits={possible[0]}..{possible[-1]}" if possible else
                  "it needs at least 3 subjects (dataset.num_subjects for the synthetic set)")
        raise ConfigError(
            f"cv.protocol=subject_disjoint with cv.n_splits={n_splits} needs a subject in every test fold and two "
            f"beside the largest one (training and validation); the data has {n_subjects} subjects: {advice}."
        )
    for emotion in np.unique(emotions):
        shown_by = np.unique(subjects[emotions == emotion])
        if len(shown_by) < 2:
            emotion_name = names["emotion"][emotion] if "emotion" in names else emotion
            subject_name = names["subject"][shown_by[0]] if "subject" in names else shown_by[0]
            raise ConfigError(
                f"emotion {emotion_name} is shown by one subject only ({subject_name}): under cv.protocol=subject_disjoint "
                "it cannot be on the training side of the fold that tests that subject. Add another subject's "
                "images of it, or leave it out of dataset.emotions."
            )
