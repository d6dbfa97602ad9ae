"""Where runs are stored: the tracking URI, the server check and the experiment.

Defaults: a SQLite database at ``<paths.output_dir>/mlflow.db`` (MLflow 3 refuses a plain file
store) with artifacts under ``<paths.output_dir>/mlartifacts``. ``MLFLOW_TRACKING_URI`` in the
environment wins over that, and ``logger.tracking_uri`` wins over both.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from anonemo.errors import ConfigError, TrackingError
from anonemo.tracking.links import HEADLINE_VIEW_TAG, headline_view_tags

EXPERIMENT_KIND = "mlflow.experimentKind"
# MLflow's schema migrations log a page of INFO lines the first time a database is created.
logging.getLogger("alembic").setLevel(logging.WARNING)


def tracking_uri(cfg: DictConfig) -> str:
    return resolve_tracking_uri(cfg.logger.tracking_uri, cfg.paths.output_dir)


def resolve_tracking_uri(explicit: str | None, output_dir: str | Path) -> str:
    """``explicit`` if given, else ``$MLFLOW_TRACKING_URI``, else SQLite under ``output_dir``."""
    if explicit:
        return str(explicit)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    database = Path(output_dir).resolve() / "mlflow.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}"  # the absolute path's own leading slash makes the fourth


def check_reachable(uri: str) -> None:
    """Fail fast, with the URI in the message, when a tracking server does not answer (MLflow's
    own client would retry for minutes and end in a traceback)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            pass
    except (OSError, ValueError) as error:
        raise TrackingError(
            f"The MLflow tracking server {uri} (logger.tracking_uri or $MLFLOW_TRACKING_URI) cannot be "
            f"reached ({error}). Start it (mlflow server ...), fix the address, or unset both to use the "
            "local SQLite store under paths.output_dir."
        ) from error
    check_credentials(uri)


def check_credentials(uri: str) -> None:
    """A server with authentication on refuses a client without its user's credentials: said here,
    with where credentials go, rather than as MLflow's traceback from the first logged value."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                            params={"max_results": 1}, max_retries=0, timeout=10)
    if response.status_code in (401, 403):
        raise TrackingError(
            f"The MLflow tracking server {uri} refuses this client ({response.status_code}: "
            f"{'no valid user and password' if response.status_code == 401 else 'this user lacks permission'}). "
            "Give the command its user's credentials in the environment, MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or in ~/.mlflow/credentials (chmod 600); never in a config or an override, "
            "which are logged with every run (docs/tracking.md, \"A shared server\")."
        )


def ensure_experiment(client: MlflowClient, cfg: DictConfig, uri: str, model_metrics: Sequence[str] = ()) -> str:
    """The experiment's id, creating it (with an explicit artifact location) if needed; its runs
    table's headline view gains the columns of ``model_metrics`` (a job's declared headline)."""
    check_reachable(uri)
    name = cfg.logger.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A local database needs an explicit artifact root; a tracking server has its own.
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(cfg.logger.artifact_location).resolve() / name).as_uri()
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND: "custom_model_development",
                                              **headline_view_tags(model_metrics)})
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} in {uri} is deleted: restore it in the MLflow UI, or pick "
            "another name with logger.experiment_name=..."
        )
    for key, value in headline_view_tags(model_metrics, experiment.tags.get(HEADLINE_VIEW_TAG)).items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id
