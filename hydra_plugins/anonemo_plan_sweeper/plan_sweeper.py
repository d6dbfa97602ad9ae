"""A Hydra sweeper that launches a list of jobs, each with its own overrides, in one launch.

Hydra's basic sweeper runs the Cartesian product of the values given; a benchmark suite is a union
of such products (each method with its own options, each dataset with its own). Written by
``python -m anonemo.benchmark`` as a JSON list of override lists, the plan is handed to whichever
launcher the command names (joblib on one machine, submitit on a cluster), all jobs at once so that
every worker stays busy. A job that fails does not stop the others; its MLflow run records it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class PlanSweeper(Sweeper):
    def __init__(self, plan: str) -> None:
        self.plan = plan
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = json.loads(Path(self.plan).read_text())
        batch = [[*arguments, *job] for job in jobs]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        results: list[JobReturn] = list(self.launcher.launch(batch, initial_job_idx=0))
        failed = sum(result.status == JobStatus.FAILED for result in results)
        log.info("%d jobs launched, %d ended with an error (their runs say which)", len(results), failed)
        return [results]
