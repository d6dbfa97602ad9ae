"""One job's MLflow run: opened with its config, logged to through Lightning's logger, always closed."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

import anonemo
from anonemo.cli import in_multirun, received_signal, terminate_as_interrupt
from anonemo.models.networks import ClassifierHead, ConvBase, save_network
from anonemo.tracking.job_key import CONFIG_HASH_TAG, config_hash, flatten, git_commit
from anonemo.tracking.store import ensure_experiment, tracking_uri

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "ANONEMO_MLFLOW_PARENT_RUN_ID"  # how a sweep's jobs learn their parent run (anonemo.sweep)


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


@contextmanager
def mlflow_run(cfg: DictConfig, reopen: Run | None = None, model_metrics: Sequence[str] = ()) -> Iterator[RunLogger]:
    """Open an MLflow run for this job with its config as params (or ``reopen`` an unfinished
    one, to resume it); always close it. The experiment's headline view shows ``model_metrics``.

    The run ends FINISHED on success, FAILED with the error as the ``error`` tag on an exception,
    and KILLED on Ctrl-C or SIGTERM, so no run is left RUNNING (only SIGKILL cannot be caught:
    ``resume=true`` picks such a run up again).
    """
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, cfg, uri, model_metrics)
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
    terminate_as_interrupt()
    with callers_tracking_uri():
        try:
            if reopen is None:  # a reopened run has them already (the same config, by its hash)
                logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
                logger.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield logger
        except KeyboardInterrupt:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException as error:
            if received_signal() is not None:
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
                raise KeyboardInterrupt(f"terminated by signal {received_signal()}") from error
            client.set_tag(run.info.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        else:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def callers_tracking_uri() -> Iterator[None]:
    """Lightning's logger calls ``mlflow.set_tracking_uri``, which writes MLFLOW_TRACKING_URI into
    the environment: inside, a :class:`RunLogger` may; after, the caller's value is back, so that
    the next job in this process finds its own store."""
    caller_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
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
