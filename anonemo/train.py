"""``python -m anonemo.train dataset=... model=... fold=...``: train and evaluate one model on one fold."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anonemo.cli import user_errors_reported


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, float] | float | None:
    """The job's metrics, or under a hyper-parameter search (``search`` set) its objective."""
    # Imported here, not above: torch, Lightning and MLflow take ~10 s to import, and a mistyped
    # override should be answered (by Hydra, before this runs) without that wait.
    from anonemo.job import run, search_objective

    with user_errors_reported():
        metrics = run(cfg)
        return search_objective(cfg, metrics) if cfg.get("search") else metrics
    return None


if __name__ == "__main__":
    main()
