"""What a job can check about its data before torch, Lightning and MLflow are imported (about
10 s): the options, the dataset's files and labels, and whether its folds are possible. A mistake
is then answered in about a second, and leaves nothing behind."""

from __future__ import annotations

import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anonemo.config import build
from anonemo.data.folds import check_fold_options, check_fold_protocol
from anonemo.errors import ConfigError

MIN_IMAGE_SIZE = 8  # three 2x2 poolings need at least 8 pixels to leave one


def check_job_data(cfg: DictConfig) -> None:
    """The dataset and fold options of a training job, and the dataset's files and labels (names
    only: no image is decoded)."""
    check_image_size(cfg.dataset.image_size)
    check_fold_options(cfg.fold, cfg.cv.n_splits, cfg.cv.val_fraction, cfg.cv.protocol)
    labels = dataset_source(cfg.dataset).labels()
    check_fold_protocol(labels.subjects, labels.emotions, labels.groups, cfg.cv.n_splits, labels.fold_names(),
                        cfg.cv.protocol)


def dataset_source(dataset: DictConfig) -> Any:
    """The loader ``dataset.source`` builds, one per setting in a process: the check and the job
    share it, so its files are listed (and reported) once."""
    return _built_source(OmegaConf.to_yaml(dataset.source, resolve=True))


@functools.lru_cache(maxsize=4)
def _built_source(node: str) -> Any:
    return build(OmegaConf.create(node), "dataset")


def check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"dataset.image_size={image_size} is too small for the three 2x2 poolings of the "
            f"convolutional base: use at least {MIN_IMAGE_SIZE} (the paper's setting here is 64)."
        )
