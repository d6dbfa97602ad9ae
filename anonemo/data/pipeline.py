"""From a `dataset` config to the augmented image set, cached on disk.

Loading, face detection and augmentation run once per distinct input; the result is stored under
``paths.cache_dir`` keyed by everything that changes the pixels (the source files' bytes or the
generator's settings, the crop and size, the augmentation and its seed, and the pipeline version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anonemo.data.augment import Augmentation
from anonemo.data.check import check_image_size, dataset_source, kept_originals, min_groups_per_subject
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.records import FaceRecords, OriginalLabels

log = logging.getLogger(__name__)

# Bump whenever a code change alters the pixels the pipeline produces or what the cache holds, so
# old caches are not reused.
PIXEL_PIPELINE_VERSION = 3


def face_cropper(dataset: DictConfig) -> FaceCropper:
    return FaceCropper(**OmegaConf.to_container(dataset.face_crop, resolve=True))


def load_originals(dataset: DictConfig) -> FaceRecords:
    """The original images, face-cropped and resized, not augmented (no cache)."""
    check_image_size(dataset.image_size)
    return preprocess(dataset_source(dataset).load(), face_cropper(dataset), dataset.image_size)


def load_faces(dataset: DictConfig, augment: DictConfig, cache_dir: str | Path, min_groups_per_subject: int = 1) -> FaceRecords:
    """The originals of people with at least ``min_groups_per_subject`` groups, plus augmented
    copies (``augment.total`` images in all), from cache if possible. The image size was checked
    with the job's data (:func:`~anonemo.data.check.check_job_data`) or the finished run's."""
    source = dataset_source(dataset)
    keep = kept_originals(source.labels(), min_groups_per_subject)
    augmentation = Augmentation(
        total=augment.total,
        rotation_limit=augment.rotation_limit,
        hflip_p=augment.hflip_p,
        noise_std=tuple(augment.noise_std),
        seed=augment.seed,
    )
    key = _cache_key(
        version=PIXEL_PIPELINE_VERSION,
        source=source.fingerprint(),
        crop=repr(face_cropper(dataset)),
        image_size=dataset.image_size,
        augmentation=repr(augmentation),
        # only where someone is left out, so that the caches of complete datasets stay valid
        **({"left_out": sorted(np.flatnonzero(~keep).tolist())} if not keep.all() else {}),
    )
    path = Path(cache_dir) / f"{dataset.name}-{key[:20]}.npz"
    if path.exists():
        log.info("Using cached %s images from %s", dataset.name, path)
        return _read_cache(path)
    started = time.perf_counter()
    originals = source.load()
    if not keep.all():
        originals = originals.originals_where(keep)
    faces = augmentation.apply(preprocess(originals, face_cropper(dataset), dataset.image_size))
    _write_cache(path, faces)
    log.info(
        "Prepared %d %s images (%d originals) in %.1f s; cached at %s",
        len(faces), dataset.name, len(originals.source_names), time.perf_counter() - started, path,
    )
    return faces


def _cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _write_cache(path: Path, faces: FaceRecords) -> None:
    # Write to a temporary file and rename: an interrupted run never leaves a half-written cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(handle)
    try:
        np.savez(
            tmp,
            images=faces.images,
            sources=faces.sources,
            subjects=faces.labels.subjects,  # per original
            emotions=faces.labels.emotions,
            source_groups=faces.source_groups,
            subject_names=np.array(faces.subject_names),
            emotion_names=np.array(faces.emotion_names),
            source_names=np.array(faces.source_names),
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_cache(path: Path) -> FaceRecords:
    with np.load(path) as data:
        labels = OriginalLabels(data["subjects"], data["emotions"], data["source_groups"],
                                tuple(str(s) for s in data["subject_names"]), tuple(str(s) for s in data["emotion_names"]),
                                tuple(str(s) for s in data["source_names"]))
        return FaceRecords(data["images"], data["sources"], labels)


def fold_data(cfg: DictConfig) -> GroupedFoldDataModule:
    """Fold ``cfg.fold`` of the configured dataset, augmented and split as ``cfg.cv`` says."""
    return GroupedFoldDataModule(
        load_faces(cfg.dataset, cfg.augment, cfg.paths.cache_dir, min_groups_per_subject(cfg)),
        fold=cfg.fold,
        n_splits=cfg.cv.n_splits,
        val_fraction=cfg.cv.val_fraction,
        batch_size=cfg.data.batch_size,
        seed=cfg.cv.seed,
        protocol=cfg.cv.protocol,
    )
