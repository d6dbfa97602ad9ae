"""Hydra multirun support: one MLflow parent run per sweep, and CPU threads per parallel job.

The callback runs in the launching process before any job starts. It creates the tracking
database, the experiment and the parent run there, once, so that parallel jobs never race to
create a fresh SQLite file, and hands the parent's id to every job through the environment
(joblib and submitit workers, and SLURM jobs, inherit it).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from anonemo.cli import in_multirun
from anonemo.tracking import PARENT_RUN_ENV, ensure_experiment, terminate_as_interrupt, tracking_uri

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run at multirun start and closes it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking_uri(config)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, config, uri)
        overrides = " ".join(config.hydra.overrides.task)
        parent = client.create_run(
            experiment_id,
            run_name=f"sweep {overrides}"[:250],
            tags={"anonemo.sweep": "parent", "sweep.overrides": overrides[:5000], "dataset": config.dataset.name},
        )
        os.environ[PARENT_RUN_ENV] = parent.info.run_id
        self._uri, self._parent = uri, parent.info.run_id
        atexit.register(self.close_parent)
        terminate_as_interrupt()  # a terminated sweep still closes its parent run at exit
        log.info("MLflow parent run %s for this sweep in %s", parent.info.run_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self.close_parent()
        if failed:
            sys.exit(1)

    def close_parent(self) -> int:
        """End the parent run (FINISHED if every child finished, else FAILED); the failed count.

        Called at the end of the sweep, and at interpreter exit for a sweep that died first, so
        that the parent is never left RUNNING. Does nothing the second time.
        """
        parent, self._parent = getattr(self, "_parent", None), None
        if parent is None:
            return 0
        os.environ.pop(PARENT_RUN_ENV, None)
        client = MlflowClient(self._uri)
        children = client.search_runs(
            [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        statuses = [run.info.status for run in children]
        for status in ("FINISHED", "FAILED", "KILLED", "RUNNING"):
            client.set_tag(parent, f"sweep.jobs_{status.lower()}", str(statuses.count(status)))
        ok = statuses and all(status == "FINISHED" for status in statuses)
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
        failed = len(statuses) - statuses.count("FINISHED")
        log.info(
            "Sweep done: %d jobs, %d finished, %d failed. Summarise with: python -m anonemo.report parent_run=%s",
            len(statuses), statuses.count("FINISHED"), failed, parent,
        )
        return failed


def parallel_jobs() -> int:
    """How many jobs of this sweep share the machine's cores (1 outside a parallel launcher)."""
    if not in_multirun():
        return 1
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs")  # joblib
    if n_jobs is not None:
        return os.cpu_count() or 1 if n_jobs < 0 else max(1, int(n_jobs))
    return 1


def configure_threads(threads: int | None) -> int:
    """Torch CPU threads for this job: ``threads`` if set, else the cores divided among parallel
    jobs, so that a joblib sweep does not oversubscribe the machine."""
    import torch

    if threads is None:
        launcher = HydraConfig.get().launcher if in_multirun() else {}
        threads = launcher.get("cpus_per_task") or max(1, (os.cpu_count() or 1) // parallel_jobs())
    torch.set_num_threads(int(threads))
    return int(threads)
