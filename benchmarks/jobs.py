"""Whole commands of anonemo timed: fold 0 of each model through the real job, and the recommended
recipe under the default OpenMP waiting, ``OMP_WAIT_POLICY=ACTIVE`` and beside a busy process.
Where the time went is read from what the jobs log (``time/*``, ``round/time/*``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from anonemo.job import run
from anonemo.metrics import ROUND_TIMES
from anonemo.tracking.job_key import finished_run
from anonemo.tracking.store import tracking_uri
from benchmarks.load import busy_processes

log = logging.getLogger(__name__)


def inherited_overrides(own: list[str]) -> list[str]:
    """This command's overrides that a job it runs keeps (not the benchmark's, and not the ones
    the job sets itself: ``own``)."""
    keys = tuple(o.split("=", 1)[0] for o in own)
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("bench.", "model=", "fold=", *keys))]


# The OpenMP waiting the recipe's job is timed under, each run a whole command: this process's (what
# anonemo sets unless the user did) and libgomp spinning (docs/performance.md, "Shared machines").
WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
POLICIES = {"default": {}, "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}}
BESIDE_BUSY = "default, beside 1 busy process"


def policy_environment(label: str) -> dict[str, str]:
    changed = POLICIES.get(label, {})
    return {k: v for k, v in os.environ.items() if not (changed and k in WAITING)} | changed


def time_rounds(cfg: DictConfig) -> dict[str, list[dict]]:
    """The recommended recipe (``bench.rounds.model``) on ``bench.rounds.overrides`` (a JAFFE-sized
    synthetic set) as whole commands: ``bench.rounds.pairs`` alternated runs under the default
    OpenMP waiting and under ``OMP_WAIT_POLICY=ACTIVE`` on a quiet machine, then one default run
    beside a busy process. Per run: its wall seconds, and its adversarial rounds' seconds by part
    from the run's ``round/time/*`` (round 0, the initialisation, left out)."""
    own = [*cfg.bench.rounds.overrides, f"model={cfg.bench.rounds.model}", "fold=0", "trainer.enable_progress_bar=false"]
    overrides = [*inherited_overrides(own), *own]
    job = hydra.compose("train", overrides=overrides)
    runs: dict[str, list[dict]] = {label: [] for label in (*POLICIES, BESIDE_BUSY)}
    order = [label for _ in range(cfg.bench.rounds.pairs) for label in POLICIES] + [BESIDE_BUSY]
    for label in order:
        environment = policy_environment(label)
        with busy_processes(1 if label == BESIDE_BUSY else 0):
            started = time.perf_counter()
            finished = subprocess.run([sys.executable, "-m", "anonemo.train", *overrides], env=environment,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.perf_counter() - started
        if finished.returncode:
            raise RuntimeError(f"The timed job ({label}) failed:\n{finished.stderr[-3000:]}")
        logged = finished_run(job)  # the newest run of this job: the one just finished
        client = MlflowClient(tracking_uri(job))
        parts = {key: [m.value for m in sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
                       if m.step > 0] for key in ROUND_TIMES}
        runs[label].append({"wall_s": wall, "rounds": parts})
        log.info("%s: %.1f s", label, wall)
    return runs


def time_full_folds(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Fold 0 of each of ``bench.fold_models`` through the real job: wall time and its phases.

    Each job is the training config composed with this command's own overrides (dataset, ...).
    """
    folds = {}
    for model in cfg.bench.fold_models:
        job = hydra.compose("train", overrides=[*inherited_overrides([]), f"model={model}", "fold=0"])
        metrics = run(job)
        folds[model] = {k: v for k, v in metrics.items() if k.startswith("time/") or k == "wall_time_s"}
    return folds
