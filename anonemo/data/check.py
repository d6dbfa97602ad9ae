"""What a job can check about its data before torch, Lightning and MLflow are imported (about
10 s): the options, the dataset's files and labels, and whether its folds are possible. A mistake
is then answered in about a second, and leaves nothing behind."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anonemo.config import build
from anonemo.errors import ConfigError

MIN_IMAGE_SIZE = 8  # three 2x2 poolings need at least 8 pixels to leave one


def check_job_data(cfg: DictConfig) -> None:
    """The dataset and fold options of a training job, and the dataset's files and labels (names
    only: no image is decoded)."""
    check_image_size(cfg.dataset.image_size)
    check_fold_options(cfg.fold, cfg.cv.n_splits, cfg.cv.val_fraction)
    labels = dataset_source(cfg.dataset).labels()
    check_fold_protocol(labels.subjects, labels.emotions, labels.groups, cfg.cv.n_splits, labels.fold_names())


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


def check_fold_options(fold: int, n_splits: int, val_fraction: float) -> None:
    if n_splits < 2:
        raise ConfigError(f"cv.n_splits={n_splits} must be at least 2.")
    if not 0 <= fold < n_splits:
        raise ConfigError(f"fold={fold} is out of range for cv.n_splits={n_splits}: use fold=0..{n_splits - 1}.")
    if not 0 < val_fraction <= 0.5:
        raise ConfigError(
            f"cv.val_fraction={val_fraction} must be in (0, 0.5]: a validation side is needed for "
            "early stopping and model selection, which never look at the test fold."
        )


def check_fold_protocol(subjects: np.ndarray, emotions: np.ndarray, groups: np.ndarray, n_splits: int,
                        names: Mapping[str, Sequence[str]]) -> None:
    """The paper's protocol needs every subject and emotion on every training side: at least two
    groups of each (a group is one original image, or the originals that share a group, such as
    the frames of one sequence), and no more folds than groups. ``names``: label index -> name, for
    ``subject``, ``emotion`` and ``group``."""
    n_groups = len(np.unique(groups))
    if n_splits > n_groups:
        raise ConfigError(
            f"cv.n_splits={n_splits} is larger than the number of groups of original images ({n_groups}): "
            f"use at most {n_groups} folds."
        )
    advice = {
        "subject": "add images of that subject, or drop subjects with fewer groups: dataset.min_groups_per_subject=2 "
                   "(dataset=folder, dataset=ckplus)",
        "emotion": "add images of that emotion, or leave it out of dataset.emotions",
    }
    for name, labels in (("subject", subjects), ("emotion", emotions)):
        for label in np.unique(labels):
            members = np.unique(groups[labels == label])
            if len(members) < 2:
                shown = names[name][label] if name in names else label
                files = ", ".join(str(names["group"][g]) for g in members) if "group" in names else ""
                raise ConfigError(
                    f"{name} {shown} has only {len(members)} original image or group{f' ({files})' if files else ''}: "
                    "with one it cannot be on the training side of the fold that tests it. Every subject and "
                    f"every emotion needs at least two; {advice[name]}."
                )
