"""Before any work: each planned job's configuration composed and checked, the runs of it that
FINISHED already, and an estimate of the CPU time of the rest from the store's past timings."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from hydra import compose
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from anonemo import metrics as names
from anonemo.benchmark.suite import Method, PlannedJob, Setting, Suite, root_variable
from anonemo.config import build
from anonemo.errors import ConfigError
from anonemo.tracking.job_key import CONFIG_HASH_TAG, config_hash


@dataclass
class Checked:
    """The suite's jobs with their config hashes; the (setting, method) pairs a protocol rules out,
    with the reason; the FINISHED run of each job found in the store."""

    jobs: dict[str, PlannedJob] = field(default_factory=dict)  # config hash -> job
    configs: dict[str, DictConfig] = field(default_factory=dict)
    ruled_out: dict[tuple[Setting, Method], str] = field(default_factory=dict)
    finished: dict[str, Run] = field(default_factory=dict)

    @property
    def to_run(self) -> list[PlannedJob]:
        return [job for key, job in self.jobs.items() if key not in self.finished]


def dataset_root(overrides: tuple[str, ...]) -> tuple[str | None, str | None]:
    """A dataset's root as its overrides and the environment set it, and where it is set from."""
    try:
        dataset = compose("train", overrides=list(overrides)).dataset
    except Exception as error:  # Hydra's composition error names the option and its choices
        raise ConfigError(f"The suite's dataset overrides {list(overrides)}: {error}") from None
    variable = root_variable(dataset)
    return (dataset.get("root") if variable else None), variable


def check_jobs(suite: Suite) -> Checked:
    """Compose every job; a method its protocol cannot run (a Face CNN for unseen people) is ruled
    out with the recipe's own reason, once per setting, and kept out of the plan."""
    from anonemo.job import check_protocol  # torch and Lightning: after the suite itself is checked

    checked, composed = Checked(), {}
    for job in suite.plan():
        pair = (job.setting, job.method)
        if pair in checked.ruled_out:
            continue
        if pair not in composed:  # once per pair (~0.1 s); its jobs differ only in the plain values fold and seed
            try:
                composed[pair] = compose("train", overrides=job.overrides)
            except Exception as error:  # Hydra's composition error names the option and its choices
                raise ConfigError(f"suite={suite.name}, {job.setting.name}, {job.method.name}: {error}") from None
            cfg = composed[pair]
            recipe = build(cfg.model, "model")
            erasure = None if cfg.get("erasure") is None else build(cfg.erasure, "erasure")
            try:
                check_protocol(cfg, recipe, erasure)
            except ConfigError as error:
                checked.ruled_out[pair] = str(error)
                continue
        cfg = composed[pair].copy()
        cfg.fold, cfg.seed = job.fold, job.seed
        key = config_hash(cfg)
        checked.jobs[key] = job
        checked.configs[key] = cfg
    return checked


def find_finished(client: MlflowClient, experiment_id: str | None, checked: Checked) -> None:
    """The newest FINISHED run of each planned job in the suite's experiment (by config hash)."""
    checked.finished.clear()
    if experiment_id is None:
        return
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50_000)
    for run in runs:
        key = run.data.tags.get(CONFIG_HASH_TAG)
        if key in checked.jobs and key not in checked.finished:
            checked.finished[key] = run


def estimate_cpu_seconds(client: MlflowClient, checked: Checked, defaults: dict[str, float]) -> tuple[float, int]:
    """Estimated CPU seconds of the jobs still to run: for each, the median wall time × torch threads
    of the store's FINISHED runs of the same model on the same dataset and protocol (any
    experiment), else ``defaults`` for its model (or ``defaults["other"]``); and how many jobs had
    no past timing."""
    past: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                      max_results=50_000):
            wall = run.data.metrics.get(names.WALL_TIME)
            if wall is None:
                continue
            params = run.data.params
            key = (params.get("model.name"), params.get("dataset.name"), params.get("cv.protocol"))
            past[key].append(wall * int(run.data.tags.get("torch_threads", "1")))
    total, unknown = 0.0, 0
    for key in checked.jobs.keys() - checked.finished.keys():
        cfg = checked.configs[key]
        found = past.get((cfg.model.name, cfg.dataset.name, cfg.cv.protocol))
        if found:
            total += statistics.median(found)
        else:
            total += defaults.get(cfg.model.name, defaults["other"])
            unknown += 1
    return total, unknown
