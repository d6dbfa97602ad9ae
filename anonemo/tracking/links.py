"""Links into the MLflow UI, in its model-training view: MLflow 3 opens its GenAI view (traces,
evaluations) unless the link asks for ``workflowType=machine_learning``; older versions ignore it.

An experiment's runs table opens on the headline metrics its jobs' recipes declared: a view that
the UI's "share" feature would store (an experiment tag ``mlflow.sharedViewState.<key>``), named
by the link's ``viewStateShareKey``."""

from __future__ import annotations

import json
from collections.abc import Sequence

from anonemo.metrics import IDENTITY_MAX, LINKAGE_AUC

MAKE_UI = "http://127.0.0.1:5000/"  # where `make ui` serves a local SQLite store
MODEL_TRAINING = "workflowType=machine_learning"
HEADLINE_VIEW = "anonemo-headline"
HEADLINE_VIEW_TAG = f"mlflow.sharedViewState.{HEADLINE_VIEW}"
AUDIT_COLUMNS = (IDENTITY_MAX, LINKAGE_AUC)
DURATION = "attributes.`Duration`"


def headline_view_tags(model_metrics: Sequence[str] = (), view: str | None = None) -> dict[str, str]:
    """The experiment tag holding the runs table's headline view: the columns of ``view`` (the
    tag's current value, if any), then each of ``model_metrics`` (the headline a job's recipe
    declares) and of the audit's identity headline, each beside a sweep parent's mean over folds."""
    previous = [] if view is None else json.loads(view).get("selectedColumns", [])
    metrics = [f"metrics.`{name}{suffix}`" for name in (*model_metrics, *AUDIT_COLUMNS) for suffix in ("", "/mean")]
    columns = [*dict.fromkeys(column for column in (*previous, *metrics) if column != DURATION), DURATION]
    # the chart view draws the sweeps' means (one bar per sweep's parent run)
    return {HEADLINE_VIEW_TAG: json.dumps({"selectedColumns": columns, "chartsSearchFilter": "/mean"})}


def ui_base(tracking_uri: str) -> str:
    """The UI that shows ``tracking_uri``: a tracking server serves its own, a SQLite file `make ui`'s."""
    return tracking_uri.rstrip("/") + "/" if tracking_uri.startswith(("http://", "https://")) else MAKE_UI


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def experiment_link(tracking_uri: str, experiment_id: str, charts: bool = False) -> str:
    """The experiment's runs table, with the headline metrics' columns; or its chart view of the
    sweeps' fold means."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (f"{ui_base(tracking_uri)}#/experiments/{experiment_id}/runs?viewStateShareKey={HEADLINE_VIEW}{mode}"
            f"&{MODEL_TRAINING}")
