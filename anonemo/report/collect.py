"""Runs from MLflow, grouped: one group is one configuration evaluated over folds."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from anonemo.metrics import (EMOTION, EMOTION_METRIC_TAG, ERASED2EMOTION, ERASED2FACE, HEADLINE_TAG, HYBRID2EMOTION,
                             PAPER_METRICS, ROUND_CURVES, chance_of, is_fresh_head_metric)
from anonemo.tracking.job_key import RESULT_NEUTRAL

# Parameters that differ between runs without changing their results (the audit only adds
# measurements of the trained base).
# The loader goes with dataset.name; runs before loaders read the dataset's keys restated them under dataset.source.
NOT_GROUPED = ("fold", "audit.", "dataset.loader", "dataset.source.", *RESULT_NEUTRAL)


@dataclass
class RunGroup:
    """Runs of one configuration over folds (the latest run of each fold)."""

    experiment: str
    params: dict[str, str]
    runs: dict[int, Run] = field(default_factory=dict)  # fold -> run

    @property
    def model(self) -> str:
        return self.params.get("model.name", "?")

    @property
    def dataset(self) -> str:
        return self.params.get("dataset.name", "?")

    @property
    def model_metrics(self) -> tuple[str, ...]:
        """The model's headline metrics, as its recipe declared them (the runs' ``anonemo.headline``
        tag); for runs logged before the tag, those of the paper's and the erasure's it logged."""
        declared = dict.fromkeys(name for run in self.runs.values()
                                 for name in run.data.tags.get(HEADLINE_TAG, "").split(",") if name)
        return tuple(declared) or tuple(name for name in (*PAPER_METRICS, ERASED2EMOTION, ERASED2FACE)
                                        if self.summary(name))

    @property
    def fresh_emotion_metric(self) -> str | None:
        """A fresh emotion head's metric on the group's final base, as its recipe declared it (the
        runs' ``anonemo.emotion_metric`` tag: Hybrid2Emotion, HSIC2Emotion, Erased2Emotion); None
        for a model measured by its own emotion head (the Emotion CNN, the reference) or none."""
        declared = {run.data.tags.get(EMOTION_METRIC_TAG) for run in self.runs.values()} - {None, "", EMOTION}
        if not declared:  # runs logged before the tag
            declared = {name for name in (HYBRID2EMOTION, ERASED2EMOTION) if self.summary(name)}
        return next(iter(sorted(declared)), None)

    @property
    def fresh_identity_metric(self) -> str | None:
        """The fresh identity head's metric on the group's final base (Hybrid2Face, HSIC2Face,
        Erased2Face, Emotion2Face), from its declared headline."""
        return next((name for name in self.model_metrics if is_fresh_head_metric(name, "identity")), None)

    def add(self, run: Run) -> None:
        fold = int(run.data.params.get("fold", -1))
        if fold not in self.runs or run.info.start_time > self.runs[fold].info.start_time:
            self.runs[fold] = run

    def values(self, metric: str) -> list[float]:
        # NaN: not measurable on that fold (a gallery that holds none of the test fold's subjects).
        return [run.data.metrics[metric] for run in self.runs.values()
                if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])]

    def summary(self, metric: str) -> tuple[float, float, int] | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def chance(self, metric: str) -> float | None:
        """The chance level logged with ``metric`` (``Face/chance``; ``audit/identity/chance`` for
        the attackers; ``audit/identity/gallery/chance``), averaged over folds."""
        values = self.values(chance_of(metric))
        return statistics.fmean(values) if values else None

    def below_chance_folds(self, metric: str) -> int:
        """On how many folds ``metric`` scored below that fold's chance level."""
        return sum(1 for value, level in self.with_chance(metric) if value < level)

    def with_chance(self, metric: str) -> list[tuple[float, float]]:
        """(value, chance level) of ``metric`` on each fold that logged both."""
        pairs = [(run.data.metrics.get(metric), run.data.metrics.get(chance_of(metric))) for run in self.runs.values()]
        return [(value, level) for value, level in pairs
                if value is not None and level is not None and not math.isnan(value)]


def collect_groups(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[RunGroup]:
    """FINISHED job runs (sweep parents excluded), grouped by configuration."""
    groups: dict[tuple, RunGroup] = {}
    names = {e: client.get_experiment(e).name for e in experiment_ids}
    for run in client.search_runs(experiment_ids, filter_string=filter_string, max_results=50_000):
        if run.info.status != "FINISHED" or run.data.tags.get("anonemo.sweep") == "parent" or "fold" not in run.data.params:
            continue
        params = {k: v for k, v in run.data.params.items() if not k.startswith(NOT_GROUPED)}
        key = (run.info.experiment_id, tuple(sorted(params.items())))
        groups.setdefault(key, RunGroup(names[run.info.experiment_id], params)).add(run)
    return sorted(groups.values(), key=lambda g: (g.experiment, table_rank(g), g.model, sorted(g.params.items())))


def table_rank(group: RunGroup) -> int:
    """Rows in the paper's column order: a group ranks by the first paper metric it logged."""
    return next((i for i, metric in enumerate(PAPER_METRICS) if group.summary(metric)), len(PAPER_METRICS))


def settings_labels(groups: list[RunGroup]) -> dict[int, str]:
    """For each group, the parameters that distinguish it from other groups of the same model."""
    labels = {}
    for group in groups:
        siblings = [g for g in groups if g.model == group.model and g.experiment == group.experiment]
        varying = sorted({k for g in siblings for k in set(g.params) | set(group.params)
                          if g.params.get(k) != group.params.get(k)})
        labels[id(group)] = " ".join(filter(None, (setting_label(k, group.params) for k in varying)))
    return labels


def setting_label(key: str, params: dict[str, str]) -> str:
    """``key``'s setting as a command line would choose it: ``erasure=inlp`` (a config group, from
    its ``_target_``), ``erasure=none``, ``model.beta=0.3``; "" for an option of an absent group."""
    value, group = params.get(key), key.rsplit(".", 1)[0]
    if key.endswith("._target_"):
        return f"{group}={'none' if value in (None, 'None') else value.rsplit('.', 1)[-1].lower()}"
    if value in (None, "None") and f"{group}._target_" not in params:
        return ""
    return f"{key}={value}"


def mean_round_history(client: MlflowClient, group: RunGroup) -> list[dict[str, float]]:
    """The per-round curves of a Hybrid group, averaged over its folds."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in group.runs.values():
        if ROUND_CURVES[0] not in run.data.metrics:  # not a Hybrid
            continue
        for key in ROUND_CURVES:
            for point in client.get_metric_history(run.info.run_id, key):
                sums[point.step][key].append(point.value)
    return [{"round": step, **{k: statistics.fmean(v) for k, v in sums[step].items()}} for step in sorted(sums)]
