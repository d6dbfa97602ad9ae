"""A job's identity: the fingerprint of the settings that decide its results, and the runs that
carry it (what ``sweep.skip_finished`` and ``resume`` look up)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

import anonemo
from anonemo.tracking.store import tracking_uri


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
