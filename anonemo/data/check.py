"""What a job can check about its data before torch, Lightning and MLflow are imported (about
10 s): the options, the dataset's files and labels, which people the protocol keeps, and whether
its folds are possible. A mistake is then answered in about a second, with the settings that would
work, and leaves nothing behind."""

from __future__ import annotations

import functools
import inspect
import logging

import numpy as np
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from anonemo.config import build
from anonemo.data.folds import PROTOCOLS, FoldsImpossible, check_fold_options, check_fold_protocol, fold_protocol
from anonemo.data.records import FaceSource, OriginalLabels
from anonemo.errors import ConfigError

log = logging.getLogger(__name__)

MIN_IMAGE_SIZE = 8  # three 2x2 poolings need at least 8 pixels to leave one


def check_job_data(cfg: DictConfig) -> None:
    """The dataset and fold options of a training job, and the dataset's files and labels (names
    only: no image is decoded)."""
    check_image_size(cfg.dataset.image_size)
    check_fold_options(cfg.fold, cfg.cv.n_splits, cfg.cv.val_fraction, cfg.cv.protocol)
    labels = dataset_source(cfg.dataset).labels()
    minimum = min_groups_per_subject(cfg)
    log.info("%s", people_kept_report(labels, cfg.dataset.name, cfg.cv.protocol, cfg.dataset.get("min_groups_per_subject")))
    try:
        folds_possible(labels, minimum, cfg.cv.n_splits, cfg.cv.protocol, cfg.cv.seed)
    except FoldsImpossible as error:
        raise FoldsImpossible(f"{error} {fold_advice(labels, cfg, error)}", error.blockers) from None


def min_groups_per_subject(cfg: DictConfig) -> int:
    """``dataset.min_groups_per_subject`` if set, else what ``cv.protocol`` needs of a person."""
    given = cfg.dataset.get("min_groups_per_subject")
    if given is None:
        return fold_protocol(cfg.cv.protocol).min_groups_per_subject
    if given < 1:
        raise ConfigError(f"dataset.min_groups_per_subject={given} must be at least 1 (or null: what cv.protocol "
                          "needs, 2 groups under paper and 1 under subject_disjoint).")
    return int(given)


def groups_per_subject(labels: OriginalLabels) -> np.ndarray:
    pairs = np.unique(np.stack([labels.subjects, labels.groups]), axis=1)
    return np.bincount(pairs[0], minlength=len(labels.subject_names))


def kept_originals(labels: OriginalLabels, min_groups: int) -> np.ndarray:
    """Which originals belong to people with at least ``min_groups`` groups."""
    keep = groups_per_subject(labels)[labels.subjects] >= min_groups
    if not keep.any():
        raise ConfigError(f"No subject has {min_groups} groups of images or more (dataset.min_groups_per_subject="
                          f"{min_groups}): lower it, or add images.")
    return keep


def folds_possible(labels: OriginalLabels, min_groups: int, n_splits: int, protocol: str, seed: int) -> None:
    kept = labels.where(kept_originals(labels, min_groups))
    check_fold_protocol(kept.subjects, kept.emotions, kept.groups, n_splits, kept.fold_names(), protocol, seed)


def _kept(labels: OriginalLabels, min_groups: int) -> str:
    per_subject = groups_per_subject(labels)
    people, images = int((per_subject >= min_groups).sum()), int((per_subject[labels.subjects] >= min_groups).sum())
    if people == len(per_subject):
        return f"keeps all {people} people ({images} images)"
    return (f"keeps the {people} of {len(per_subject)} people with {min_groups} groups or more ({images} of "
            f"{len(labels.subjects)} images)")


def people_kept_report(labels: OriginalLabels, dataset: str, protocol: str, override: int | None) -> str:
    """Who each protocol keeps: the people with enough groups (a group is an original, or the
    originals that share one, such as the frames of a sequence)."""
    if override is not None:
        dropped = _dropped(labels, override)
        return f"{dataset}: dataset.min_groups_per_subject={override} {_kept(labels, override)}" + dropped
    parts = [f"cv.protocol={name} {_kept(labels, rules.min_groups_per_subject)}"
             for name, rules in sorted(PROTOCOLS.items(), key=lambda item: item[0] != protocol)]
    return f"{dataset}: {'; '.join(parts)}" + _dropped(labels, PROTOCOLS[protocol].min_groups_per_subject)


def _dropped(labels: OriginalLabels, min_groups: int) -> str:
    per_subject = groups_per_subject(labels)
    dropped = [labels.subject_names[s] for s in np.flatnonzero(per_subject < min_groups)]
    if not dropped:
        return ""
    return f". Left out: {', '.join(dropped[:20])}" + (" ..." if len(dropped) > 20 else "")


def fold_advice(labels: OriginalLabels, cfg: DictConfig, error: FoldsImpossible) -> str:
    """The settings that make folds possible, each with what it costs, found by running the same
    search on the data each would give."""
    protocol, n_splits, seed = cfg.cv.protocol, cfg.cv.n_splits, cfg.cv.seed
    minimum = min_groups_per_subject(cfg)

    def works(min_groups: int = minimum, splits: int = n_splits, rules: str = protocol,
              data: OriginalLabels = labels) -> bool:
        try:
            folds_possible(data, min_groups, splits, rules, seed)
        except (FoldsImpossible, ConfigError):
            return False
        return True

    advice = []
    most = int(groups_per_subject(labels).max())
    raised = next((m for m in range(minimum + 1, most + 1) if works(min_groups=m)), None)
    if raised is not None:
        advice.append(f"dataset.min_groups_per_subject={raised} {_kept(labels, raised)}")
    # the nearest fold count that works: fewer folds leave more groups per person in a test fold,
    # more folds leave more on each training side for validation
    counts = sorted((k for k in range(2, 2 * n_splits + 1) if k != n_splits), key=lambda k: (abs(k - n_splits), -k))
    nearest = next((k for k in counts if works(splits=k)), None)
    if nearest is not None:
        advice.append(f"cv.n_splits={nearest} ({'fewer, larger' if nearest < n_splits else 'more, smaller'} test folds)")
    for other, rules in PROTOCOLS.items():
        if other != protocol and works(min_groups=rules.min_groups_per_subject, rules=other):
            advice.append(f"cv.protocol={other} {_kept(labels, rules.min_groups_per_subject)}"
                          + ("; its test people are never training people, so identity is measured by linkage"
                             if not rules.closed_set_identity else ""))
    for blocker in error.blockers:
        kind, _, name = blocker.partition(" ")
        if kind == "emotion" and name in labels.emotion_names:
            emotion = labels.emotion_names.index(name)
            shown = labels.emotions == emotion
            if works(data=labels.without_emotion(emotion)):
                advice.append(f"leaving emotion {name} out of dataset.emotions (its {int(shown.sum())} images)")
    if not advice:
        return ("No single change of dataset.min_groups_per_subject, cv.n_splits, cv.protocol or dataset.emotions "
                "makes folds possible: add images of the people and emotions named.")
    return "Settings that would work: " + "; ".join(advice) + "."


def dataset_source(dataset: DictConfig) -> FaceSource:
    """The loader ``dataset.loader`` names, given the keys of the dataset config that its
    constructor names (``dataset.root``, ``dataset.emotions``, ...); one per setting in a process:
    the check and the job share it, so its files are listed (and reported) once."""
    loader = loader_class(dataset)
    try:
        parameters = inspect.signature(loader).parameters
    except ValueError:  # a built-in class has none to read; it is named as no loader below
        parameters = {}
    options = {key: dataset[key] for key in parameters if key in dataset}
    return _built_source(dataset.loader, OmegaConf.to_yaml(OmegaConf.create(options), resolve=True))


def loader_class(dataset: DictConfig) -> type:
    """The class ``dataset.loader`` names."""
    try:
        return get_class(dataset.loader)
    except Exception as error:  # Hydra raises ImportError or ValueError, wrapped in several ways
        raise ConfigError(f"dataset.loader={dataset.get('loader')!r} names no class that can be imported ({error}): "
                          "give a loader's full path, e.g. anonemo.data.folder.FolderDataset.") from None


@functools.lru_cache(maxsize=4)
def _built_source(loader: str, options: str) -> FaceSource:
    source = build(OmegaConf.merge({"_target_": loader}, OmegaConf.create(options)), "dataset")
    if not isinstance(source, FaceSource):
        raise ConfigError(f"dataset.loader: {loader} built a {type(source).__name__}, not a dataset loader "
                          "(labels(), load() and fingerprint(), anonemo.data.records.FaceSource; docs/architecture.md).")
    return source


def check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"dataset.image_size={image_size} is too small for the three 2x2 poolings of the "
            f"convolutional base: use at least {MIN_IMAGE_SIZE} (the paper's setting here is 64)."
        )
