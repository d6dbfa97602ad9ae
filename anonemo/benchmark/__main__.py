"""``python -m anonemo.benchmark suite=quick``: every method of a suite on the same folds and seeds,
compared in pairs with the Emotion CNN; one report (docs/benchmark.md)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, user_errors_reported


@hydra.main(version_base="1.3", config_path="../../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from anonemo.benchmark.run import run_suite

    with user_errors_reported(discard_run_dir=True):  # a folder holding a report is kept
        run_suite(cfg, " ".join(["python -m anonemo.benchmark", *sys.argv[1:]]))


if __name__ == "__main__":
    check_override_keys("benchmark", sys.argv[1:])
    main()
