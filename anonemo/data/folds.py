"""Grouped, stratified cross-validation folds under one of two protocols (``cv.protocol``).

``paper`` (the default, the paper's): an original photograph, its group (the frames of one
sequence) and all their augmented copies fall on one side of every split, and every training side
holds every subject and every emotion, so identity accuracy is defined: the test people are the
training people (which is why the paper rules out leave-one-subject-out).

``subject_disjoint``: folds are grouped by subject, so no test or validation subject is on the
training side. Emotion accuracy is then accuracy on unseen people; closed-set identity metrics are
undefined, and the linkage audit measures identity instead (docs/audit.md).

Folds depend only on the labels, the groups, the protocol and the seed, so every model sees the
same folds. Whether folds exist is decided by one search (:func:`plan_folds`), which needs no torch
and no scikit-learn: a job runs it before anything heavy is imported, and :func:`fold_split` runs
the same search, so the two cannot disagree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from anonemo.errors import ConfigError

MAX_ATTEMPTS = 50  # stratified reshuffles tried before the constructive assignment takes over
MAX_SEARCH_STEPS = 2_000  # backtracking steps of the fast search before an exact solver decides
SHOWN = 8  # names listed in a message before "and N more"
# Salt of the constructive search's random streams, so that they never repeat the shuffle's
# (SeedSequence([seed, attempt])).
STREAM = 2026


@dataclass(frozen=True)
class Protocol:
    """How folds are cut: the label whose values never straddle a split (``unit``), the label they
    are stratified on, the labels every training side must hold all of (``covers``), the tasks
    a model trained on a fold can be tested on (``testable_tasks``: identity only when the test
    people are training people), the units the validation carve keeps where it can
    (``min_val_units``: two people, so that linkage is defined on validation), and the groups a
    person needs to be kept (``min_groups_per_subject``: one for a test fold and one for its
    training side under the paper's protocol; one when test people are never training people)."""

    name: str
    unit: str
    stratify: str
    covers: tuple[str, ...]
    testable_tasks: tuple[str, ...]
    min_groups_per_subject: int
    min_val_units: int = 1

    @property
    def closed_set_identity(self) -> bool:
        return "identity" in self.testable_tasks


PROTOCOLS = {
    "paper": Protocol("paper", unit="group", stratify="subject", covers=("subject", "emotion"),
                      testable_tasks=("emotion", "identity"), min_groups_per_subject=2),
    "subject_disjoint": Protocol("subject_disjoint", unit="subject", stratify="emotion", covers=("emotion",),
                                 testable_tasks=("emotion",), min_groups_per_subject=1, min_val_units=2),
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


class FoldsImpossible(ConfigError):
    """No folds satisfy the protocol on this data; ``blockers`` names what prevents them."""

    def __init__(self, message: str, blockers: Sequence[str] = ()):
        super().__init__(message)
        self.blockers = tuple(blockers)


@dataclass(frozen=True)
class FoldSplit:
    """Indices (into the augmented set) of one fold's training, validation and test sides."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Units:
    """What the folds place: the units of a protocol (groups, or subjects) and, per unit, the
    labels it brings to a training side (``covers``: indices into ``label_names``)."""

    of_item: np.ndarray  # the unit of every item (image or original)
    covers: tuple[np.ndarray, ...]
    label_names: tuple[str, ...]  # "subject S005", "emotion contempt"
    groups: np.ndarray  # how many groups each unit holds
    unit_names: tuple[str, ...]  # for messages

    @property
    def count(self) -> int:
        return len(self.covers)

    def holders(self, inside: np.ndarray | None = None) -> np.ndarray:
        """How many units (of those ``inside`` marks, default all) hold each label."""
        held = np.zeros(len(self.label_names), dtype=np.int64)
        for u in range(self.count) if inside is None else np.flatnonzero(inside):
            held[self.covers[u]] += 1
        return held

    def removable(self, inside: np.ndarray, held: np.ndarray) -> list[int]:
        """The units ``inside`` marks that validation can take from a training side whose label
        counts are ``held`` without taking a label's last unit."""
        return [u for u in np.flatnonzero(inside) if (held[self.covers[u]] >= 2).all()]


def fold_units(subjects: np.ndarray, emotions: np.ndarray, groups: np.ndarray, rules: Protocol,
               names: Mapping[str, Sequence[str]]) -> Units:
    """The units ``rules`` places on one side of every split (groups, or subjects) of these items'
    labels; ``names``: label index -> name, for ``subject``, ``emotion`` and ``group``."""
    labels = {"subject": np.asarray(subjects), "emotion": np.asarray(emotions), "group": np.asarray(groups)}
    unit_ids, of_item = np.unique(labels[rules.unit], return_inverse=True)
    of_item = of_item.reshape(-1)
    label_names, offsets = [], {}
    for kind in rules.covers:
        values = int(labels[kind].max()) + 1 if len(labels[kind]) else 0
        # Every class counts, also one the data no longer holds: it then blocks the folds by name.
        values = max(values, len(names.get(kind, ())))
        offsets[kind] = len(label_names)
        label_names += [f"{kind} {names[kind][v] if kind in names else v}" for v in range(values)]
    ids = np.stack([labels[kind] + offsets[kind] for kind in rules.covers], axis=1)
    order = np.argsort(of_item, kind="stable")
    starts = np.searchsorted(of_item[order], np.arange(of_item.max() + 1 if len(of_item) else 0))
    covers = tuple(np.unique(part) for part in np.split(ids[order], starts[1:]))
    group_count = np.array([len(np.unique(part)) for part in np.split(labels["group"][order], starts[1:])])
    unit_names = tuple(str(names[rules.unit][u]) if rules.unit in names else f"{rules.unit} {u}" for u in unit_ids)
    return Units(of_item, covers, tuple(label_names), group_count, unit_names)


def plan_folds(units: Units, n_splits: int, seed: int, rules: Protocol) -> np.ndarray:
    """The test fold of every unit (:func:`fold_units`) of folds that satisfy ``rules``, found
    whenever they exist, or :class:`FoldsImpossible` naming what prevents them.

    A unit's labels must not all leave a training side: every fold keeps, outside its test units,
    a unit of every label, and at least one unit that can go to validation without taking a
    label's last training unit. Units are placed tightest first (fewest holders of a label) in the
    fold that holds the least of their labels, folds balanced in units, with backtracking where a
    placement leaves no valid completion; ties are broken by ``seed``."""
    _refuse_the_evidently_impossible(units, rules, n_splits)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_splits, STREAM]))
    try:
        test_fold = _assign(units, n_splits, rng)
    except _SearchTooLong:
        test_fold = _solve_exactly(units, n_splits)
    if test_fold is None:
        raise FoldsImpossible(
            f"No assignment of the {units.count} {rules.unit}s to cv.n_splits={n_splits} folds keeps every "
            f"{' and every '.join(rules.covers)} on every training side while leaving each fold a {rules.unit} "
            f"that validation can take without taking some {' or '.join(rules.covers)}'s last training {rules.unit}.",
            [f"cv.n_splits={n_splits}"])
    return test_fold


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _refuse_the_evidently_impossible(units: Units, rules: Protocol, n_splits: int) -> None:
    """The conditions every valid assignment needs, with the labels that break them named."""
    possible = [k for k in range(2, units.count + 1) if units.count - math.ceil(units.count / k) >= 2]
    if rules.unit == "subject" and n_splits not in possible:
        advice = (f"use cv.n_splits={possible[0]}..{possible[-1]}" if possible else
                  "it needs at least 3 subjects (dataset.num_subjects for the synthetic set)")
        raise FoldsImpossible(
            f"cv.protocol={rules.name} with cv.n_splits={n_splits} needs a subject in every test fold and two beside "
            f"the largest one (training and validation); the data has {units.count} subjects: {advice}.",
            [f"cv.n_splits={n_splits}"])
    if units.count < n_splits:
        raise FoldsImpossible(f"cv.n_splits={n_splits} is larger than the number of {rules.unit}s "
                              f"({units.count}): use at most {units.count} folds.", [f"cv.n_splits={n_splits}"])
    held = units.holders()
    lone = np.flatnonzero(held < 2)
    if len(lone):
        only = {}
        for u, cover in enumerate(units.covers):
            for label in cover:
                only[label] = units.unit_names[u]
        described = [f"{units.label_names[i]} ({'only in ' + only[i] if held[i] else f'no {rules.unit}'})"
                     for i in lone]
        raise FoldsImpossible(
            f"cv.protocol={rules.name} needs every {' and every '.join(rules.covers)} on the training side of the "
            f"fold that tests it, so each needs two {rules.unit}s or more"
            + (" (a group is one original image, or the originals that share a group, such as the frames of one "
               "sequence)" if rules.unit == "group" else "")
            + f"; the data has {len(lone)} with fewer: {_listed(described)}.",
            [units.label_names[i] for i in lone])


def _assign(units: Units, n_splits: int, rng: np.random.Generator) -> np.ndarray | None:
    """Every unit's test fold, by depth-first search; None when no valid assignment exists."""
    held = units.holders()
    count = units.count
    tightness = np.array([held[cover].min() for cover in units.covers])
    order = np.lexsort((rng.permutation(count), tightness))
    tie = rng.random((count, n_splits))
    capacity = math.ceil(count / n_splits)
    in_fold = np.zeros((len(held), n_splits), dtype=np.int64)
    unplaced = held.copy()
    size = np.zeros(n_splits, dtype=np.int64)
    fold_of = np.full(count, -1, dtype=np.int64)
    stack: list[list[int]] = []  # per placed unit, in ``order``: the folds not tried yet
    steps = 0
    while True:
        if len(stack) == count:
            if _every_fold_leaves_a_validation_unit(units, fold_of, in_fold, held):
                return fold_of
            options = []
        else:
            options = _placements(units.covers[order[len(stack)]], in_fold, unplaced, held, size, capacity,
                                  count - len(stack), tie[len(stack)])
        while not options:  # take placements back until one has an untried fold
            if not stack:
                return None
            options = stack.pop()
            unit = order[len(stack)]
            _place(units.covers[unit], fold_of[unit], in_fold, unplaced, size, unit, fold_of, -1)
            steps += 1
            if steps > MAX_SEARCH_STEPS:
                raise _SearchTooLong
        unit = order[len(stack)]
        _place(units.covers[unit], options[0], in_fold, unplaced, size, unit, fold_of, +1)
        stack.append(options[1:])


class _SearchTooLong(Exception):
    """The depth-first search backtracked too often to finish quickly."""


def _solve_exactly(units: Units, n_splits: int) -> np.ndarray | None:
    """The same question as :func:`_assign` as an integer program (HiGHS, through SciPy), for the
    rare data on which backtracking takes long: the test fold of every unit with the largest fold
    as small as possible, or None when there is none. Variables: ``x[u, f]`` unit u is tested in
    fold f; ``w[u, f]`` u can go to fold f's validation; ``z[l, f]`` fold f's training side holds
    label l twice or more; ``t`` the largest fold's size."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    count, labels = units.count, len(units.label_names)
    held = units.holders()
    x = lambda u, f: u * n_splits + f  # noqa: E731
    w = lambda u, f: (count + u) * n_splits + f  # noqa: E731
    z = lambda label, f: 2 * count * n_splits + label * n_splits + f  # noqa: E731
    t = 2 * count * n_splits + labels * n_splits
    rows, columns, values, lower, upper = [], [], [], [], []

    def constraint(terms: list[tuple[int, float]], low: float, high: float) -> None:
        for column, value in terms:
            rows.append(len(lower)), columns.append(column), values.append(value)
        lower.append(low), upper.append(high)

    members = [[] for _ in range(labels)]
    for u, cover in enumerate(units.covers):
        constraint([(x(u, f), 1) for f in range(n_splits)], 1, 1)
        for label in cover:
            members[label].append(u)
    for f in range(n_splits):
        constraint([(x(u, f), 1) for u in range(count)], 1, np.inf)
        constraint([(x(u, f), 1) for u in range(count)] + [(t, -1)], -np.inf, 0)
        constraint([(w(u, f), 1) for u in range(count)], 1, np.inf)
        for label in range(labels):
            constraint([(x(u, f), 1) for u in members[label]] + [(z(label, f), 1)], -np.inf, held[label] - 1)
        for u, cover in enumerate(units.covers):
            constraint([(w(u, f), 1), (x(u, f), 1)], -np.inf, 1)
            for label in cover:
                constraint([(w(u, f), 1), (z(label, f), -1)], -np.inf, 0)
    size = t + 1
    matrix = coo_matrix((values, (rows, columns)), shape=(len(lower), size))
    cost = np.zeros(size)
    cost[t] = 1
    result = milp(cost, constraints=LinearConstraint(matrix, lower, upper), integrality=np.ones(size),
                  bounds=Bounds(np.zeros(size), np.r_[np.ones(t), count]))
    if result.status != 0:
        return None
    return np.round(result.x[: count * n_splits]).reshape(count, n_splits).argmax(axis=1)


def _place(cover, fold, in_fold, unplaced, size, unit, fold_of, sign) -> None:
    in_fold[cover, fold] += sign
    unplaced[cover] -= sign
    size[fold] += sign
    fold_of[unit] = fold if sign > 0 else -1


def _placements(cover, in_fold, unplaced, held, size, capacity, remaining, tie) -> list[int]:
    """The folds a unit may go to, best first: never the fold that would hold all of a label whose
    last unplaced unit this is, never a filled fold while the remaining units are needed to fill
    the empty ones; folds under capacity first, then the least share of the unit's labels."""
    last = cover[unplaced[cover] == 1]
    blocked = (in_fold[last] == held[last, None] - 1).any(axis=0)
    if remaining == (size == 0).sum():
        blocked |= size > 0
    share = (in_fold[cover] / held[cover, None]).sum(axis=0)
    folds = np.flatnonzero(~blocked)
    return [int(f) for f in folds[np.lexsort((tie[folds], size[folds], share[folds], size[folds] >= capacity))]]


def _every_fold_leaves_a_validation_unit(units: Units, fold_of, in_fold, held) -> bool:
    # held - in_fold: the holders of each label on each fold's training side
    return all(units.removable(fold_of != fold, held - in_fold[:, fold]) for fold in range(in_fold.shape[1]))


def _carve(units: Units, train_val: np.ndarray, val_fraction: float, rules: Protocol,
           rng: np.random.Generator) -> np.ndarray:
    """Validation units of one fold's training side: never a label's last training unit; about
    ``val_fraction`` of the units, at least ``rules.min_val_units`` where there are enough; units of
    several groups first (linkage needs same-person pairs from two groups), then the labels held
    most often, ties by ``rng``."""
    held = units.holders(train_val)
    target = max(1, rules.min_val_units, round(val_fraction * int(train_val.sum())))
    taken = np.zeros(units.count, dtype=bool)
    tie = rng.random(units.count)
    for _ in range(target):
        free = units.removable(train_val & ~taken, held)
        if not free:
            break
        best = max(free, key=lambda u: (units.groups[u] > 1, held[units.covers[u]].min(), tie[u]))
        taken[best] = True
        held[units.covers[best]] -= 1
    return taken


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

    A stratified shuffle is tried first (it cut every fold recorded in docs/history.md); where it
    finds no valid folds, the constructive assignment of :func:`plan_folds` is used.
    ``names`` (``subject``, ``emotion``, ``group``: label index -> name) make messages readable.
    """
    rules = fold_protocol(protocol)
    check_fold_options(fold, n_splits, val_fraction)
    units = fold_units(subjects, emotions, groups, rules, names or {})
    labels = {"subject": subjects, "emotion": emotions, "group": groups}
    everything = np.arange(len(groups))
    shuffled = _covering_folds(labels, rules, everything, n_splits, seed, units)
    if shuffled is not None:
        train_val, test = shuffled[fold]
    else:  # the search the job's early check ran (check_fold_protocol), needed only here
        in_test = plan_folds(units, n_splits, seed, rules)[units.of_item] == fold
        train_val, test = everything[~in_test], everything[in_test]
    # Never fewer than min_val_units units per validation fold where there are enough to carve from.
    count = len(np.unique(labels[rules.unit][train_val]))
    val_splits = max(2, min(round(1 / val_fraction), count // rules.min_val_units))
    # A different stream of the seed per fold, so the validation carve is not the same shuffle twice.
    carved = _covering_folds(labels, rules, train_val, val_splits, seed * 1000 + fold + 1)
    if carved is not None:
        train, val = carved[0]
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, fold, STREAM]))
        in_train_val = np.zeros(units.count, dtype=bool)
        in_train_val[units.of_item[train_val]] = True
        in_val = _carve(units, in_train_val, val_fraction, rules, rng)[units.of_item[train_val]]
        train, val = train_val[~in_val], train_val[in_val]
    return FoldSplit(train=train, val=val, test=test)


def _covering_folds(labels, rules: Protocol, indices, n_splits, seed, units: Units | None = None):
    """Folds of ``indices`` grouped on ``rules.unit`` and stratified on ``rules.stratify``, whose
    every training side holds every value of ``rules.covers`` present in ``indices`` (and, given
    ``units``, a unit that validation can take); None when no reshuffle gives them."""
    # Imported here, not above: it takes seconds, and the early check (no folds cut) needs none of it.
    from sklearn.model_selection import StratifiedGroupKFold

    needed = {name: set(labels[name][indices]) for name in rules.covers}
    for attempt in range(MAX_ATTEMPTS):
        state = int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] % 2**31)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=state)
        with warnings.catch_warnings():
            # Fewer images per class than folds is expected here; coverage is checked below.
            warnings.filterwarnings("ignore", message="The least populated class")
            try:
                splits = [
                    (indices[a], indices[b])
                    for a, b in splitter.split(indices, labels[rules.stratify][indices], labels[rules.unit][indices])
                ]
            except ValueError:  # more folds than units, or than any class's members: no shuffle gives them
                return None
        if all(len(test) and all(set(labels[name][train]) == needed[name] for name in rules.covers)
               and (units is None or _leaves_a_validation_unit(units, train))
               for train, test in splits):
            return splits
    return None


def _leaves_a_validation_unit(units: Units, train_val: np.ndarray) -> bool:
    inside = np.zeros(units.count, dtype=bool)
    inside[units.of_item[train_val]] = True
    return bool(units.removable(inside, units.holders(inside)))


def check_fold_protocol(subjects: np.ndarray, emotions: np.ndarray, groups: np.ndarray, n_splits: int,
                        names: Mapping[str, Sequence[str]], protocol: str = "paper", seed: int = 0) -> None:
    """Whether folds of this data are possible under ``protocol``: the search of :func:`fold_split`,
    run before anything heavy is imported. ``names``: label index -> name, for ``subject``,
    ``emotion`` and ``group``."""
    rules = fold_protocol(protocol)
    plan_folds(fold_units(subjects, emotions, groups, rules, names), n_splits, seed, rules)


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
