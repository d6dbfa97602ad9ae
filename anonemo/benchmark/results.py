"""The suite's results: each method's measures on each setting, per (fold, seed), from the runs of
its planned jobs; and the statistics the report shows (paired with the reference, Holm-corrected
within a setting, fronts' hypervolumes, ranks across settings)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from mlflow.entities import Run

from anonemo import metrics as names
from anonemo.benchmark.plan import Checked
from anonemo.benchmark.stats import (Cell, Interval, Ranks, average_ranks, front_point, holm, hypervolume,
                                     mean_interval, paired_interval)
from anonemo.benchmark.suite import REFERENCE, Method, Setting, Suite

EMOTION, IDENTITY = "emotion", "identity"
WALL = names.WALL_TIME  # each job's wall time, reported beside the declared metrics


@dataclass
class MethodResults:
    """One method on one setting: each measure per (fold, seed), its chance levels, and how many
    jobs were planned."""

    setting: Setting
    method: Method
    planned: int = 0
    values: dict[str, dict[Cell, float]] = field(default_factory=lambda: defaultdict(dict))
    chances: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    emotion_metric: str | None = None
    commits: set[str] = field(default_factory=set)

    @property
    def done(self) -> int:
        return len({cell for measure in self.values.values() for cell in measure})

    def chance(self, measure: str) -> float | None:
        found = self.chances.get(measure)
        return sum(found) / len(found) if found else None

    def add(self, fold: int, seed: int, run: Run, identity_metric: str) -> None:
        metrics = run.data.metrics
        declared = run.data.tags.get(names.HEADLINE_TAG, "")
        emotion_metric = run.data.tags.get(names.EMOTION_METRIC_TAG) or (names.EMOTION if names.EMOTION in metrics else None)
        self.emotion_metric = self.emotion_metric or emotion_metric
        self.commits.add(run.data.tags.get("mlflow.source.git.commit", "unknown"))
        measures = {EMOTION: emotion_metric, IDENTITY: identity_metric, WALL: names.WALL_TIME}
        measures |= {name: name for name in declared.split(",") if name}
        for measure, metric in measures.items():
            value = metrics.get(metric) if metric else None
            if value is None or math.isnan(value):
                continue
            self.values[measure][(fold, seed)] = value
            if names.chance_of(metric) in metrics:
                self.chances[measure].append(metrics[names.chance_of(metric)])



def identity_measure(setting: Setting) -> tuple[str, float]:
    """The identity measure of a setting and its ceiling: the strongest closed-set attacker's
    accuracy (%) where test people were trained on, else the linkage audit's same-person AUC."""
    return (names.IDENTITY_MAX, 100.0) if setting.protocol == "paper" else (names.LINKAGE_AUC, 1.0)


def gather(suite: Suite, checked: Checked) -> dict[tuple[Setting, Method], MethodResults]:
    results = {(s, m): MethodResults(s, m) for s in suite.settings for m in suite.methods
               if (s, m) not in checked.ruled_out}
    for key, job in checked.jobs.items():
        found = results[(job.setting, job.method)]
        found.planned += 1
        if key in checked.finished:
            found.add(job.fold, job.seed, checked.finished[key], identity_measure(job.setting)[0])
    return results


@dataclass(frozen=True)
class Row:
    """A method's line in a setting's table."""

    method: Method
    done: int
    planned: int
    emotion: Interval | None
    identity: Interval | None
    emotion_diff: Interval | None  # method - reference, paired
    identity_diff: Interval | None
    emotion_holm: tuple[float, bool] | None
    identity_holm: tuple[float, bool] | None
    hypervolume: Interval | None  # of the method's front (every budget of its model) per (fold, seed)
    emotion_metric: str | None


def holdout_ratio(n_splits: int, val_fraction: float) -> float:
    """n_test / n_train of a grouped k-fold with a validation carve from the training side: the
    overlap term of the corrected interval."""
    return (1 / n_splits) / ((1 - 1 / n_splits) * (1 - val_fraction))


def front_values(results: dict[tuple[Setting, Method], MethodResults], setting: Setting, method: Method
                 ) -> dict[Cell, float]:
    """The hypervolume, per (fold, seed), of ``method``'s front: its model's runs at all the suite's
    budgets, or its one point when it runs as configured."""
    family = [r for (s, m), r in results.items() if s == setting
              and (m == method or (m.model == method.model and None not in (m.budget, method.budget)))]
    _, ceiling = identity_measure(setting)
    points: dict[Cell, list[tuple[float, float]]] = defaultdict(list)
    for found in family:
        emotion_chance, identity_chance = found.chance(EMOTION), found.chance(IDENTITY)
        if emotion_chance is None or identity_chance is None:
            continue
        for cell in found.values[EMOTION].keys() & found.values[IDENTITY].keys():
            points[cell].append(front_point(found.values[EMOTION][cell], emotion_chance,
                                            found.values[IDENTITY][cell], identity_chance, ceiling))
    return {cell: hypervolume(found) for cell, found in points.items()}


def setting_rows(results: dict[tuple[Setting, Method], MethodResults], setting: Setting, ratio: float) -> list[Row]:
    reference = results.get((setting, Method(REFERENCE)))
    own = [found for (s, _), found in results.items() if s == setting]
    diffs = {}
    for found in own:
        for measure in (EMOTION, IDENTITY):
            pair = None
            if reference is not None and found is not reference:
                pair = paired_interval(found.values[measure], reference.values[measure], ratio)
            diffs[(found.method, measure)] = pair
    corrected = {measure: holm({m.name: d.p_value for (m, ms), d in diffs.items() if ms == measure and d})
                 for measure in (EMOTION, IDENTITY)}
    rows = []
    for found in own:
        hv = front_values(results, setting, found.method)
        rows.append(Row(
            found.method, found.done, found.planned,
            mean_interval(found.values[EMOTION], ratio) if found.values[EMOTION] else None,
            mean_interval(found.values[IDENTITY], ratio) if found.values[IDENTITY] else None,
            diffs[(found.method, EMOTION)], diffs[(found.method, IDENTITY)],
            corrected[EMOTION].get(found.method.name), corrected[IDENTITY].get(found.method.name),
            mean_interval(hv, ratio) if hv else None, found.emotion_metric,
        ))
    return rows


def front_name(method: Method) -> str:
    """A front's name: the model, with "at budgets" when its points are the suite's budgets."""
    return method.model if method.budget is None else f"{method.model} at budgets"


def ranks(rows_by_setting: dict[Setting, list[Row]]) -> Ranks | None:
    """Average ranks of the models by their fronts' mean hypervolume across settings."""
    scores = {setting.name: {front_name(row.method): row.hypervolume.mean for row in rows if row.hypervolume}
              for setting, rows in rows_by_setting.items()}
    return average_ranks(scores)


def seed_check(results: dict[tuple[Setting, Method], MethodResults], setting: Setting, ratio: float
               ) -> dict[str, Interval | None] | None:
    """The Emotion CNN against itself: its second seed minus its first, paired by fold, as every
    method is paired with it. An interval excluding zero here would say the test sees differences
    where there are none; None with fewer than two seeds."""
    reference = results.get((setting, Method(REFERENCE)))
    if reference is None:
        return None
    seeds = sorted({seed for values in reference.values.values() for _, seed in values})
    if len(seeds) < 2:
        return None
    first, second = seeds[:2]
    return {measure: paired_interval({(f, 0): v for (f, s), v in reference.values[measure].items() if s == second},
                                     {(f, 0): v for (f, s), v in reference.values[measure].items() if s == first}, ratio)
            for measure in (EMOTION, IDENTITY)}
