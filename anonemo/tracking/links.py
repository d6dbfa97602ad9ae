"""Links into the MLflow UI, in its model-training view: MLflow 3 opens its GenAI view (traces,
evaluations) unless the link asks for ``workflowType=machine_learning``; older versions ignore it.

An experiment's runs table opens on the headline metrics: a view that the UI's "share" feature
would store (an experiment tag ``mlflow.sharedViewState.<key>``), named by the link's
``viewStateShareKey``."""

from __future__ import annotations

import json

from anonemo.metrics import EMOTION, ERASED2EMOTION, HYBRID2EMOTION, IDENTITY_MAX, LINKAGE_AUC

MAKE_UI = "http://127.0.0.1:5000/"  # where `make ui` serves a local SQLite store
MODEL_TRAINING = "workflowType=machine_learning"
HEADLINE_VIEW = "anonemo-headline"
# The runs table's columns: each headline metric, and beside it a sweep parent's mean over folds.
HEADLINE_COLUMNS = tuple(f"metrics.`{name}{suffix}`" for name in (EMOTION, HYBRID2EMOTION, ERASED2EMOTION, IDENTITY_MAX,
                                                                 LINKAGE_AUC) for suffix in ("", "/mean"))


def headline_view_tags() -> dict[str, str]:
    """The experiment tag holding the runs table's headline view."""
    # the table's columns; the chart view draws the sweeps' means (one bar per sweep's parent run)
    view = {"selectedColumns": [*HEADLINE_COLUMNS, "attributes.`Duration`"], "chartsSearchFilter": "/mean"}
    return {f"mlflow.sharedViewState.{HEADLINE_VIEW}": json.dumps(view)}


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
