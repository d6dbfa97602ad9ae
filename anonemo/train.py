"""``python -m anonemo.train dataset=... model=... fold=...``: train and evaluate one model on one fold."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, in_multirun, user_errors_reported
from anonemo.data.check import check_job_data
from anonemo.errors import AnonemoError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, float] | float | None:
    """The job's metrics, or under a hyper-parameter search (``search`` set) its objective."""
    job = None
    with user_errors_reported(discard_run_dir=True):
        try:
            # Answered before torch, Lightning and MLflow are imported (~10 s); plan() does the rest.
            check_job_data(cfg)
            from anonemo.job import plan

            job = plan(cfg)  # every check that needs no MLflow run: a mistake leaves nothing behind
        except AnonemoError as error:
            if in_multirun():  # ... except the FAILED run by which a sweep counts this job
                from anonemo.job import record_failed_start

                record_failed_start(cfg, error)
            raise
    if job is None:  # in a sweep, a user error ends this job only
        return None
    from anonemo.job import execute
    from anonemo.summary import search_objective

    with user_errors_reported():
        metrics = execute(job)
        if not cfg.get("search"):
            return metrics
        return search_objective(cfg, metrics, job.headline.emotion)
    return None


if __name__ == "__main__":
    check_override_keys("train", sys.argv[1:])
    main()
