"""Hydra multirun support: one MLflow parent run per sweep.

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

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from anonemo.cli import terminate_as_interrupt
from anonemo.tracking.links import run_link

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run at multirun start and closes it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from anonemo.tracking.run import PARENT_RUN_ENV

        if os.environ.get(PARENT_RUN_ENV):  # a benchmark suite's jobs: the suite owns their parent run
            log.info("The jobs report to the benchmark suite's parent run %s", os.environ[PARENT_RUN_ENV])
            return
        # MLflow is imported here, not above: Hydra imports its callbacks for every command, and a
        # single job's mistakes are answered before the ~10 s of importing MLflow and torch.
        from mlflow.tracking import MlflowClient

        from anonemo.tracking.store import ensure_experiment, tracking_uri

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
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        from anonemo.tracking.run import PARENT_RUN_ENV

        os.environ.pop(PARENT_RUN_ENV, None)
        client = MlflowClient(self._uri)
        children = client.search_runs(
            [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        statuses = [run.info.status for run in children]
        for status in ("FINISHED", "FAILED", "KILLED", "RUNNING"):
            client.set_tag(parent, f"sweep.jobs_{status.lower()}", str(statuses.count(status)))
        summarise(client, parent)
        ok = statuses and all(status == "FINISHED" for status in statuses)
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
        failed = len(statuses) - statuses.count("FINISHED")
        log.info(
            "Sweep done: %d jobs, %d finished, %d failed. Fold means on the parent run: %s (make ui); the report "
            "again with: python -m anonemo.report parent_run=%s",
            len(statuses), statuses.count("FINISHED"), failed,
            run_link(self._uri, client.get_run(parent).info.experiment_id, parent), parent,
        )
        return failed


def summarise(client, parent: str) -> None:
    """The fold means and report on the parent run; a failure here is logged, as the parent must
    still be closed."""
    from mlflow.exceptions import MlflowException

    from anonemo.errors import AnonemoError
    from anonemo.report.sweep_summary import summarise_sweep

    try:
        summarise_sweep(client, parent)
    except (MlflowException, AnonemoError, OSError) as error:
        log.warning("The sweep's fold means could not be logged to its parent run %s: %s", parent, error)
