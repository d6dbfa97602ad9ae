"""A sweep's parent run sums up its folds where the MLflow UI can sort and chart them: for every
headline metric its jobs logged, the mean, the standard deviation and the number of folds
(``Hybrid2Emotion/mean``, ``/std``, ``/n``, beside the jobs' own ``Hybrid2Emotion``), and the
report's tables and figures as its artifacts (``report/``)."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from anonemo.metrics import AUDIT_HEADLINE, WALL_TIME
from anonemo.report.collect import RunGroup, collect_groups, settings_labels
from anonemo.report.render import build_report

SUMMARISED = (*(name for name, _ in AUDIT_HEADLINE), WALL_TIME)  # beside each group's model metrics
STATISTICS = ("mean", "std", "n")
MLFLOW_BATCH = 1000  # metrics per log_batch call, MLflow's limit


def children_filter(parent_run_id: str) -> str:
    return f"tags.mlflow.parentRunId = '{parent_run_id}'"


def fold_means(groups: list[RunGroup]) -> dict[str, float]:
    """``<metric>/mean``, ``/std`` and ``/n`` over each group's folds. A sweep of several
    configurations names each by its model and the settings that tell it apart, before the metric
    (``hybrid_standardised model.beta:0.3/Hybrid2Emotion/mean``; MLflow allows no ``=`` in names)."""
    labels = settings_labels(groups)
    summary = {}
    for group in groups:
        prefix = "" if len(groups) == 1 else re.sub(r"[^/\w.\- :]", ":", f"{group.model} {labels[id(group)]}".strip()) + "/"
        for name in (*group.model_metrics, *SUMMARISED):
            found = group.summary(name)
            if found is not None:
                summary |= {f"{prefix}{name}/{statistic}": value for statistic, value in zip(STATISTICS, found)}
    return summary


def summarise_sweep(client: MlflowClient, parent_run_id: str, report_dir: Path | None = None
                    ) -> tuple[dict[str, float], dict[str, list[list[str]]]]:
    """Log the fold means of the sweep's FINISHED jobs to its parent run, and the report built from
    them under ``report_dir`` (a temporary folder when None) as its artifacts; the means and the
    report's tables (none when no job finished)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    groups = collect_groups(client, [experiment_id], children_filter(parent_run_id))
    if not groups:
        return {}, {}
    summary = fold_means(groups)
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in summary.items()]
    for start in range(0, len(metrics), MLFLOW_BATCH):
        client.log_batch(parent_run_id, metrics=metrics[start:start + MLFLOW_BATCH])
    with tempfile.TemporaryDirectory() as scratch:
        tables, files = build_report(client, [experiment_id], children_filter(parent_run_id), report_dir or Path(scratch))
        for path in files:
            client.log_artifact(parent_run_id, str(path), "report")
    return summary, tables
