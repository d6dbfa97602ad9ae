"""MLflow: where runs are stored, and one run's lifecycle.

Defaults: a SQLite database at ``<paths.output_dir>/mlflow.db`` (MLflow 3 refuses a plain file
store) with artifacts under ``<paths.output_dir>/mlartifacts``. ``MLFLOW_TRACKING_URI`` in the
environment wins over that, and ``logger.tracking_uri`` wins over both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

import anonemo
from anonemo.cli import in_multirun
from anonemo.errors import ConfigError, TrackingError
from anonemo.models.networks import ClassifierHead, ConvBase, save_network

log = logging.getLogger(__name__)

# Where each run keeps its frozen conv base (W_c), re-audited by ``python -m anonemo.audit``, and
# the emotion head on it (the Emotion CNN's, or Hybrid2Emotion), exported by ``anonemo.export``.
BASE_ARTIFACT = Path("model/conv_base.pt")
EMOTION_HEAD_ARTIFACT = Path("model/emotion_head.pt")
# Set by anonemo.sweep.MlflowSweepCallback for the jobs of a Hydra multirun.
PARENT_RUN_ENV = "ANONEMO_MLFLOW_PARENT_RUN_ID"
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


def ensure_experiment(client: MlflowClient, cfg: DictConfig, uri: str) -> str:
    """The experiment's id, creating it (with an explicit artifact location) if needed."""
    check_reachable(uri)
    name = cfg.logger.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A local database needs an explicit artifact root; a tracking server has its own.
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(cfg.logger.artifact_location).resolve() / name).as_uri()
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} in {uri} is deleted: restore it in the MLflow UI, or pick "
            "another name with logger.experiment_name=..."
        )
    return experiment.experiment_id


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger bound to a run that anonemo opens and closes.

    Lightning finalizes its logger when ``fit`` ends; the run must stay open for the test fold,
    artifacts and any later phase, so ending it is left to :func:`mlflow_run`.
    """

    def finalize(self, status: str = "success") -> None:
        pass

    @property
    def client(self) -> MlflowClient:
        return self.experiment

    def log_figure(self, figure: plt.Figure, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)
        plt.close(figure)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_network(self, network: ConvBase | ClassifierHead, artifact: Path, **extra: object) -> None:
        """A network's architecture and weights as the artifact ``artifact`` (see ``save_network``)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact.name
            save_network(network, path, **extra)
            self.client.log_artifact(self.run_id, str(path), str(artifact.parent))


_received_signal: str | None = None  # set by _interrupt: the job was stopped, not broken


def _interrupt(signum: int, frame: Any) -> None:
    global _received_signal
    _received_signal = signal.Signals(signum).name
    raise KeyboardInterrupt(f"terminated by signal {_received_signal}")


def terminate_as_interrupt() -> None:
    """Make SIGTERM (what ``kill``, job schedulers and joblib's shutdown send) and SIGINT (Ctrl-C)
    raise KeyboardInterrupt and be remembered, so that open runs are closed as KILLED instead of
    being left RUNNING, even where a library turns the interrupt into an exit (Lightning's
    Trainer exits with status 1 after a graceful shutdown)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _interrupt)


@contextmanager
def mlflow_run(cfg: DictConfig, reopen: Run | None = None) -> Iterator[RunLogger]:
    """Open an MLflow run for this job with its config as params (or ``reopen`` an unfinished
    one, to resume it); always close it.

    The run ends FINISHED on success, FAILED with the error as the ``error`` tag on an exception,
    and KILLED on Ctrl-C or SIGTERM, so no run is left RUNNING (only SIGKILL cannot be caught:
    ``resume=true`` picks such a run up again).
    """
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, cfg, uri)
    tags = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "fold": str(cfg.fold),
        "anonemo.version": anonemo.__version__,
        "mlflow.source.name": "anonemo.train",
        CONFIG_HASH_TAG: config_hash(cfg),
    }
    tags.update(sweep_tags())
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if reopen is None:
        run_name = cfg.logger.run_name or f"{cfg.model.name}-{cfg.dataset.name}-fold{cfg.fold}"
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    else:
        run = reopen
        client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        resumes = int(run.data.tags.get("anonemo.resumed", "0")) + 1
        client.set_tag(run.info.run_id, "anonemo.resumed", str(resumes))
    logger = RunLogger(experiment_name=cfg.logger.experiment_name, tracking_uri=uri, run_id=run.info.run_id)
    # Lightning's logger calls mlflow.set_tracking_uri, which writes MLFLOW_TRACKING_URI into the
    # environment; restore the caller's value so the next job in this process finds its own store.
    caller_uri = os.environ.get("MLFLOW_TRACKING_URI")
    terminate_as_interrupt()
    try:
        if reopen is None:  # a reopened run has them already (the same config, by its hash)
            logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
            logger.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield logger
    except KeyboardInterrupt:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        if _received_signal is not None:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            raise KeyboardInterrupt(f"terminated by signal {_received_signal}") from error
        client.set_tag(run.info.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    finally:
        if caller_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = caller_uri


def sweep_tags() -> dict[str, str]:
    """Tags that tie a job's run to its sweep: the parent run and the job's own overrides."""
    if not in_multirun():
        return {}
    tags = {f"override.{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in HydraConfig.get().overrides.task if "=" in o}
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    return tags


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.1}}`` -> ``{"model.lr": 0.1}``; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# Settings that do not change what a job computes: where it is stored and shown, its threads,
# and how sweeps treat it. The report and the skipping of finished jobs ignore them.
RESULT_NEUTRAL = (
    "paths.", "logger.", "threads", "sweep.", "resume", "trainer.enable_progress_bar", "trainer.enable_model_summary"
)
CONFIG_HASH_TAG = "anonemo.config_hash"


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of everything in ``cfg`` that decides the job's results (fold included)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    decisive = {k: v for k, v in sorted(flat.items()) if not k.startswith(RESULT_NEUTRAL)}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_run(cfg: DictConfig) -> Run | None:
    """The newest FINISHED run of this exact job (same config hash) in its experiment, if any."""
    return _newest_run(cfg, "attributes.status = 'FINISHED'")


def unfinished_run(cfg: DictConfig) -> Run | None:
    """The newest run of this exact job that did not finish (RUNNING after a SIGKILL, KILLED,
    FAILED): what ``resume=true`` continues."""
    return _newest_run(cfg, "attributes.status != 'FINISHED'")


def _newest_run(cfg: DictConfig, status_filter: str) -> Run | None:
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{CONFIG_HASH_TAG}` = '{config_hash(cfg)}' and {status_filter}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def require_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(
            f"run_id={run_id} is not a run in the tracking store {client.tracking_uri}; "
            "copy the id from the training log or the MLflow UI, or set tracking_uri."
        ) from error


def run_artifact(client: MlflowClient, run_id: str, artifact: str, folder: str) -> Path:
    """Download one artifact of a run into ``folder``; a clear error if the run has none."""
    try:
        return Path(client.download_artifacts(run_id, artifact, folder))
    except (MlflowException, OSError) as error:
        raise TrackingError(
            f"run_id={run_id} has no artifact {artifact}. Runs of this version of anonemo save their conv "
            "base, and emotion models (emotion, emotion2face, hybrid*) their emotion head; a face model "
            f"has none. Train it again or pick another run. ({error})"
        ) from error


def git_commit() -> str | None:
    """The commit anonemo's source is at (with ``-dirty`` if modified), or None outside git."""
    source = Path(anonemo.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def run_url(logger: RunLogger) -> str:
    return f"#/experiments/{logger.experiment_id}/runs/{logger.run_id}"

