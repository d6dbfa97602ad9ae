"""``python -m anonemo.train dataset=... model=... fold=...``: train and evaluate one model on one fold."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anonemo.cli import user_errors_reported
from anonemo.workflow import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, float]:
    with user_errors_reported():
        return run(cfg)


if __name__ == "__main__":
    main()
