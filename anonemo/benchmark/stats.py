"""The benchmark's statistics: intervals over folds and seeds, the corrected paired interval,
Holm's correction, average ranks with Friedman's test and Nemenyi's critical difference, and the
hypervolume of a privacy/utility front (docs/benchmark.md says which test, why, and its limits)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

Cell = tuple[int, int]  # (fold, seed)


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % interval over ``folds`` folds (each the mean over its seeds) and the
    p-value of "the mean is zero" (for a paired difference)."""

    mean: float
    low: float
    high: float
    folds: int
    seeds: int
    p_value: float = math.nan

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def fold_means(values: Mapping[Cell, float]) -> dict[int, float]:
    """Each fold's mean over its seeds: seeds repeat training on the same test fold, so they are
    not new resamples of the data; averaging them first leaves one number per fold."""
    by_fold: dict[int, list[float]] = {}
    for (fold, _), value in values.items():
        by_fold.setdefault(fold, []).append(value)
    return {fold: float(np.mean(found)) for fold, found in sorted(by_fold.items())}


def seed_count(values: Mapping[Cell, float]) -> int:
    return len({seed for _, seed in values}) if values else 0


def corrected_t_interval(differences: Sequence[float], test_train_ratio: float, confidence: float = 0.95
                         ) -> tuple[float, float, float, float]:
    """Nadeau & Bengio's corrected resampled t (Machine Learning 52, 2003): the variance of the
    mean of J differences measured on resamples whose training sets overlap is not s²/J but
    (1/J + n_test/n_train) s². Returns (mean, low, high, two-sided p) with J - 1 degrees of freedom;
    ``test_train_ratio`` = 0 gives the plain paired t interval."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    variance = float(d.var(ddof=1))
    scale = math.sqrt((1 / n + test_train_ratio) * variance)
    t_crit = stats.t.ppf(0.5 + confidence / 2, n - 1)
    if scale == 0:
        p_value = 1.0 if mean == 0 else 0.0
        return mean, mean, mean, p_value
    p_value = float(2 * stats.t.sf(abs(mean) / scale, n - 1))
    return mean, mean - t_crit * scale, mean + t_crit * scale, p_value


def mean_interval(values: Mapping[Cell, float], test_train_ratio: float) -> Interval:
    """A measure's mean over folds × seeds with its corrected 95 % interval over the folds."""
    per_fold = fold_means(values)
    mean, low, high, p_value = corrected_t_interval(list(per_fold.values()), test_train_ratio)
    return Interval(mean, low, high, len(per_fold), seed_count(values), p_value)


def paired_interval(method: Mapping[Cell, float], reference: Mapping[Cell, float], test_train_ratio: float
                    ) -> Interval | None:
    """``method`` minus ``reference`` on the cells (fold, seed) both have, then as
    :func:`mean_interval`: paired by fold and seed, corrected for the folds' shared training data."""
    shared = method.keys() & reference.keys()
    if not shared:
        return None
    return mean_interval({cell: method[cell] - reference[cell] for cell in shared}, test_train_ratio)


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, tuple[float, bool]]:
    """Holm's step-down correction over a family of p-values (statsmodels): name -> (adjusted p,
    rejected at ``alpha``). NaN p-values (one fold) stay out of the family."""
    names = [name for name, p in p_values.items() if not math.isnan(p)]
    if not names:
        return {}
    rejected, adjusted, _, _ = multipletests([p_values[name] for name in names], alpha=alpha, method="holm")
    return {name: (float(p), bool(r)) for name, p, r in zip(names, adjusted, rejected)}


@dataclass(frozen=True)
class Ranks:
    """Average ranks of methods over datasets (1 = best), Friedman's test, Nemenyi's critical difference."""

    average: dict[str, float]
    datasets: int
    friedman_p: float
    critical_difference: float


def average_ranks(scores: Mapping[str, Mapping[str, float]], higher_is_better: bool = True, alpha: float = 0.05
                  ) -> Ranks | None:
    """``scores[dataset][method]``, over the datasets where every method has a score (Demšar, JMLR
    2006). Friedman's test needs three methods and two datasets; its p-value and the critical
    difference are NaN below that."""
    methods = sorted({method for row in scores.values() for method in row})
    complete = [row for row in scores.values() if all(method in row for method in methods)]
    if not complete or len(methods) < 2:
        return None
    table = np.array([[row[method] for method in methods] for row in complete])
    ranks = stats.rankdata(-table if higher_is_better else table, axis=1).mean(axis=0)
    n, k = table.shape
    friedman_p = critical = math.nan
    if k >= 3 and n >= 2:
        friedman_p = float(stats.friedmanchisquare(*table.T).pvalue)
        q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
        critical = float(q_alpha * math.sqrt(k * (k + 1) / (6 * n)))
    return Ranks(dict(zip(methods, map(float, ranks))), n, friedman_p, critical)


def hypervolume(points: Sequence[tuple[float, float]]) -> float:
    """The area a front dominates in the unit square, both coordinates to be maximised and the
    reference point at (0, 0): points are (emotion gain, privacy) from :func:`front_point`."""
    clipped = sorted(((min(max(u, 0.0), 1.0), min(max(p, 0.0), 1.0)) for u, p in points), reverse=True)
    area, best_privacy = 0.0, 0.0
    for utility, privacy in clipped:  # by utility, highest first
        if privacy > best_privacy:
            area += utility * (privacy - best_privacy)
            best_privacy = privacy
    return area


def front_point(emotion: float, emotion_chance: float, identity: float, identity_chance: float,
                identity_ceiling: float) -> tuple[float, float]:
    """A result in the unit square measured from the chance point: emotion gain 0 at chance and 1
    at 100 %, privacy 1 at identity chance and 0 at the attacker's ceiling (100 % accuracy, or
    AUC 1), with leakage in either direction counted (an attacker reading features the wrong way
    round still tells people apart)."""
    gain = (emotion - emotion_chance) / (100 - emotion_chance)
    privacy = 1 - abs(identity - identity_chance) / (identity_ceiling - identity_chance)
    return gain, privacy
