"""A suite (``conf/suite/``) expanded into jobs: every method on the same folds and seeds of each
dataset under each protocol, the Emotion CNN among them as the reference, and each weighted method
at each of the suite's emotion budgets."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from anonemo.errors import ConfigError

REFERENCE = "emotion"  # the Emotion CNN: every method is compared with it, on the same folds and seeds


@dataclass(frozen=True)
class Setting:
    """One dataset under one protocol, as the suite names it (``yale/paper``)."""

    dataset: str
    protocol: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.protocol}"


@dataclass(frozen=True)
class Method:
    """A ``model=`` option, at an emotion budget (``model.max_emotion_loss``) or as configured."""

    model: str
    budget: float | None = None

    @property
    def name(self) -> str:
        return self.model if self.budget is None else f"{self.model} E={self.budget:g}"

    @property
    def overrides(self) -> tuple[str, ...]:
        budget = () if self.budget is None else (f"model.max_emotion_loss={self.budget:g}",)
        return (f"model={self.model}", *budget)


@dataclass(frozen=True)
class PlannedJob:
    setting: Setting
    method: Method
    fold: int
    seed: int
    shared: tuple[str, ...]  # the suite's overrides for every job (data seed, experiment, ...)

    @property
    def overrides(self) -> list[str]:
        return [*self.setting.overrides, f"cv.protocol={self.setting.protocol}", *self.method.overrides,
                f"fold={self.fold}", f"seed={self.seed}", *self.shared]


@dataclass(frozen=True)
class Suite:
    name: str
    settings: tuple[Setting, ...]
    methods: tuple[Method, ...]  # the reference first
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    shared: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # datasets left out for want of a root, with the variable to set

    def plan(self) -> list[PlannedJob]:
        return [PlannedJob(setting, method, fold, seed, self.shared)
                for setting in self.settings for method in self.methods for seed in self.seeds for fold in self.folds]

    def key(self, job_hashes: Sequence[str]) -> str:
        """The suite's identity: its name and its jobs' config hashes (a rerun finds its parent run)."""
        return hashlib.sha256(" ".join([self.name, *sorted(job_hashes)]).encode()).hexdigest()[:16]


def build_suite(cfg: DictConfig, dataset_root) -> Suite:
    """The suite ``cfg.suite`` narrowed by ``cfg.datasets``, ``cfg.methods``, ``cfg.folds``,
    ``cfg.seeds``; ``dataset_root(overrides)`` -> (root or None, the variable that sets it) checks
    that each dataset can be found before any work."""
    suite = cfg.suite
    datasets = dict(suite.datasets)
    if cfg.datasets is not None:
        unknown = sorted(set(cfg.datasets) - set(datasets))
        if unknown:
            raise ConfigError(f"datasets={list(cfg.datasets)}: suite={suite.name} has no dataset {', '.join(unknown)}; "
                              f"its datasets: {', '.join(datasets)}.")
        datasets = {name: datasets[name] for name in cfg.datasets}
    fixed = list(suite.methods)
    budgeted = list(suite.budgeted)
    if cfg.methods is not None:
        known = [*fixed, *budgeted]
        unknown = sorted(set(cfg.methods) - set(known) - {REFERENCE})
        if unknown:
            raise ConfigError(f"methods={list(cfg.methods)}: suite={suite.name} has no method {', '.join(unknown)}; "
                              f"its methods: {', '.join(known)} (and the reference, {REFERENCE}).")
        fixed = [m for m in fixed if m in cfg.methods]
        budgeted = [m for m in budgeted if m in cfg.methods]
    methods = [Method(REFERENCE), *(Method(m) for m in fixed if m != REFERENCE),
               *(Method(m, float(budget)) for m in budgeted for budget in suite.budgets)]
    folds = list(range(suite.folds)) if cfg.folds is None else list(range(cfg.folds))
    if cfg.folds is not None and not 1 <= cfg.folds <= suite.folds:
        raise ConfigError(f"folds={cfg.folds}: narrow suite={suite.name}'s {suite.folds} folds to 1 to {suite.folds}.")
    seeds = list(suite.seeds if cfg.seeds is None else cfg.seeds)
    settings, skipped = [], []
    for name, entry in datasets.items():
        overrides = tuple(entry.overrides)
        root, variable = dataset_root(overrides)
        if variable is not None and root is None:
            if suite.skip_datasets_without_root:
                skipped.append(f"{name} (set {variable})")
                continue
            raise ConfigError(
                f"suite={suite.name} runs dataset {name}, whose root is not set: {variable}=/path/to/it python -m "
                f"anonemo.benchmark suite={suite.name} ..., or leave it out with datasets=[{','.join(n for n in datasets if n != name)}]."
            )
        settings += [Setting(name, protocol, overrides) for protocol in entry.protocols]
    if not settings:
        raise ConfigError(f"suite={suite.name} has no dataset to run: {'; '.join(skipped) or 'none named'}.")
    shared = (f"cv.seed={suite.data_seed}", f"augment.seed={suite.data_seed}", f"logger.experiment_name={cfg.experiment_name}",
              "trainer.enable_progress_bar=false", "resume=true", *cfg.job_overrides)
    return Suite(suite.name, tuple(settings), tuple(methods), tuple(folds), tuple(seeds), shared, tuple(skipped))


ROOT_VARIABLE = re.compile(r"\$\{oc\.env:(\w+)")


def root_variable(dataset: DictConfig) -> str | None:
    """The environment variable a dataset's ``root`` is read from (``ANONEMO_YALE_ROOT``), None for
    a dataset without a root (the built-in synthetic faces)."""
    if "root" not in dataset:
        return None
    raw = OmegaConf.to_container(dataset, resolve=False).get("root")
    found = ROOT_VARIABLE.search(str(raw))
    return found.group(1) if found else "dataset.root"
