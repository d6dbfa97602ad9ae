"""Grouped folds, offline augmentation and the on-disk cache."""

from pathlib import Path

import numpy as np
import pytest
from conftest import make_config
from omegaconf import OmegaConf

from anonemo.data.augment import Augmentation
from anonemo.data.folds import fold_split
from anonemo.data.pipeline import load_faces
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.synthetic import SyntheticFaces
from anonemo.errors import ConfigError

def dataset_config(tmp_path, *overrides):
    """The ``dataset`` node of the real config (its loader interpolates the dataset's keys)."""
    return make_config(tmp_path, *overrides).dataset


AUGMENT = {"total": 600, "rotation_limit": 10, "hflip_p": 0.5, "noise_std": [0.01, 0.04], "seed": 0}


@pytest.fixture(scope="module")
def yale_faces(yale_root, tmp_path_factory):
    dataset = dataset_config(tmp_path_factory.mktemp("config"), "dataset=yale", f"dataset.root={yale_root}", "dataset.image_size=32")
    return load_faces(dataset, OmegaConf.create(AUGMENT), tmp_path_factory.mktemp("cache"))


def test_yale_folds_follow_the_papers_protocol(yale_faces):
    """Sides never share an original; the test folds partition the data; every training side
    holds all 15 subjects and all 4 emotions."""
    f = yale_faces
    test_sides = []
    for fold in range(10):
        split = fold_split(f.subjects, f.emotions, f.sources, fold, n_splits=10, val_fraction=0.1, seed=0)
        sources = [set(f.sources[side]) for side in (split.train, split.val, split.test)]
        assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
        assert len(split.train) + len(split.val) + len(split.test) == len(f)
        assert set(f.subjects[split.train]) == set(range(15))
        assert set(f.emotions[split.train]) == set(range(4))
        assert len(split.val) > 0
        test_sides.append(split.test)
    assert np.array_equal(np.sort(np.concatenate(test_sides)), np.arange(len(f)))


def test_folds_are_identical_for_a_seed_and_differ_across_seeds(yale_faces):
    f = yale_faces
    a = fold_split(f.subjects, f.emotions, f.sources, 3, seed=7)
    b = fold_split(f.subjects, f.emotions, f.sources, 3, seed=7)
    c = fold_split(f.subjects, f.emotions, f.sources, 3, seed=8)
    assert all(np.array_equal(getattr(a, s), getattr(b, s)) for s in ("train", "val", "test"))
    assert not np.array_equal(a.test, c.test)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fold": 10}, "fold=10 is out of range for cv.n_splits=10: use fold=0..9"),
        ({"fold": -1}, "fold=-1 is out of range"),
        ({"n_splits": 61}, "cv.n_splits=61 is larger than the number of groups (60): use at most 60 folds"),
        ({"val_fraction": 0.0}, "cv.val_fraction=0.0 must be in (0, 0.5]"),
        ({"n_splits": 1}, "cv.n_splits=1 must be at least 2"),
    ],
)
def test_bad_fold_settings_are_named(yale_faces, kwargs, message):
    f = yale_faces
    arguments = {"fold": 0, "n_splits": 10, "val_fraction": 0.1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError) as error:
        fold_split(f.subjects, f.emotions, f.sources, **arguments)
    assert message in str(error.value)


def test_a_subject_with_one_original_cannot_be_on_every_training_side():
    subjects = np.array([0, 0, 0, 1, 1, 1, 2])
    emotions = np.array([0, 1, 0, 1, 0, 1, 0])
    with pytest.raises(ConfigError, match="the data has 1 with fewer: subject 2 \\(only in group 6\\)"):
        fold_split(subjects, emotions, np.arange(7), 0, n_splits=2)


def test_augmentation_keeps_originals_and_spreads_copies_evenly():
    originals = preprocess(SyntheticFaces(num_subjects=2, num_emotions=3, images_per_cell=2).load(), FaceCropper("none"), 16)
    augmented = Augmentation(total=53, seed=1).apply(originals)
    n = len(originals)
    assert len(augmented) == 53
    assert np.array_equal(augmented.images[:n], originals.images)
    copies = np.bincount(augmented.sources, minlength=n)
    assert copies.max() - copies.min() <= 1
    # copies carry their original's labels
    assert np.array_equal(augmented.subjects, originals.subjects[augmented.sources])
    assert np.array_equal(augmented.emotions, originals.emotions[augmented.sources])
    assert not np.array_equal(augmented.images[n:], originals.images[augmented.sources[n:]])
    again = Augmentation(total=53, seed=1).apply(originals)
    assert np.array_equal(again.images, augmented.images)


def test_augment_total_below_the_originals_is_refused():
    originals = preprocess(SyntheticFaces(num_subjects=2, num_emotions=2, images_per_cell=2).load(), FaceCropper("none"), 16)
    with pytest.raises(ConfigError, match="augment.total=5 is smaller than the 8 original images"):
        Augmentation(total=5).apply(originals)


def test_cache_is_reused_and_keyed_by_what_changes_pixels(yale_root, tmp_path):
    yale = ("dataset=yale", f"dataset.root={yale_root}")
    dataset = dataset_config(tmp_path / "config", *yale, "dataset.image_size=32")
    augment = OmegaConf.create({**AUGMENT, "total": 120})
    first = load_faces(dataset, augment, tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"
    again = load_faces(dataset, augment, tmp_path)
    assert np.array_equal(first.images, again.images) and first.source_names == again.source_names
    assert list(tmp_path.iterdir()) == cached  # read, not rebuilt
    for changed_dataset, changed_augment in (
        (dataset_config(tmp_path / "config", *yale, "dataset.image_size=24"), augment),
        (dataset, {**AUGMENT, "total": 120, "seed": 1}),
        (dataset, {**AUGMENT, "total": 120, "rotation_limit": 5}),
    ):
        load_faces(changed_dataset, OmegaConf.create(changed_augment), tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not list(tmp_path.glob("*.tmp*"))


def test_cache_key_follows_the_source_files_bytes(jaffe_root, tmp_path):
    import shutil

    copy = Path(shutil.copytree(jaffe_root, tmp_path / "jaffe"))
    dataset = dataset_config(tmp_path / "config", "dataset=jaffe", f"dataset.root={copy}", "dataset.image_size=16",
                             "dataset.face_crop.method=center")
    dataset.emotions = {"HA": "happiness", "SA": "sadness"}
    augment = OmegaConf.create({**AUGMENT, "total": 40})
    before = load_faces(dataset, augment, tmp_path / "cache")
    image = next(copy.glob("*.HA1.*.tiff"))
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(image)
    after = load_faces(dataset, augment, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not np.array_equal(before.images, after.images)
