"""Loading the real Yale faces, generated JAFFE files and the synthetic set."""

import logging
import shutil
import zipfile
from collections import Counter

import numpy as np
from conftest import JAFFE_CODES, JAFFE_SUBJECTS, JAFFE_TAKES, jaffe_gray_values
from sklearn.linear_model import LogisticRegression

from anonemo.data.jaffe import JaffeFaces
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.synthetic import SyntheticFaces
from anonemo.data.yale import YaleFaces

YALE_EMOTIONS = {"normal": "normal", "happy": "happy", "sad": "sad", "surprised": "surprised"}
JAFFE_EMOTIONS = dict(zip(JAFFE_CODES, ("neutral", "happiness", "sadness", "surprise", "anger", "disgust", "fear")))


def test_yale_keeps_the_papers_60_images(yale_root):
    faces = YaleFaces(yale_root, YALE_EMOTIONS).load()
    assert len(faces) == 60
    assert faces.subject_names == tuple(f"subject{i:02d}" for i in range(1, 16))
    assert faces.emotion_names == ("normal", "happy", "sad", "surprised")
    # exactly one image per subject x emotion
    assert Counter(zip(faces.subjects.tolist(), faces.emotions.tolist())) == {
        (s, e): 1 for s in range(15) for e in range(4)
    }
    assert all(image.shape == (243, 320) and image.dtype == np.uint8 for image in faces.images)
    assert faces.source_names[faces.subjects.tolist().index(0)].startswith("subject01.")


def test_yale_zip_gives_the_same_records(yale_root, tmp_path):
    archive = tmp_path / "yalefaces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(yale_root.iterdir()):
            zf.write(path, f"yalefaces/{path.name}")
    from_folder = YaleFaces(yale_root, YALE_EMOTIONS).load()
    from_zip = YaleFaces(archive, YALE_EMOTIONS).load()
    assert from_zip.source_names == from_folder.source_names
    assert all(np.array_equal(a, b) for a, b in zip(from_zip.images, from_folder.images))
    assert YaleFaces(archive, YALE_EMOTIONS).fingerprint() == YaleFaces(yale_root, YALE_EMOTIONS).fingerprint()


def test_haar_crop_finds_every_yale_face(yale_root, caplog):
    faces = YaleFaces(yale_root, YALE_EMOTIONS).load()
    with caplog.at_level(logging.INFO):
        cropped = preprocess(faces, FaceCropper("haar"), 64)
    assert "found a face in all 60 images" in caplog.text
    assert cropped.images.shape == (60, 64, 64)
    # Yale frames are 320x243 with the face off-centre and small: a detected crop differs from the
    # centre crop for every image, not just for some
    centre = preprocess(faces, FaceCropper("center"), 64).images
    assert all(not np.array_equal(a, b) for a, b in zip(cropped.images, centre))


def test_failed_detection_falls_back_to_centre_crop_and_is_counted(caplog):
    blank = SyntheticFaces(num_subjects=2, num_emotions=2, images_per_cell=1).load()
    with caplog.at_level(logging.WARNING):
        cropped = preprocess(blank, FaceCropper("haar", min_neighbors=50), 32)
    assert "no face in 4 of 4 images" in caplog.text
    assert np.array_equal(cropped.images, preprocess(blank, FaceCropper("center"), 32).images)


def test_jaffe_fixture_loads_with_labels_from_names(jaffe_root, caplog):
    with caplog.at_level(logging.WARNING):
        faces = JaffeFaces(jaffe_root, JAFFE_EMOTIONS).load()
    assert len(faces) == len(JAFFE_SUBJECTS) * 7 * JAFFE_TAKES
    assert faces.subject_names == tuple(sorted(JAFFE_SUBJECTS))
    assert faces.emotion_names == tuple(JAFFE_EMOTIONS.values())
    assert "README_FIRST.txt" in caplog.text  # reported, not guessed
    for name, subject, emotion in zip(faces.source_names, faces.subjects, faces.emotions):
        poser, code = name.split(".")[:2]
        assert faces.subject_names[subject] == poser
        assert JAFFE_CODES[emotion] == code[:2]


def test_jaffe_palette_coded_tiffs_become_their_gray_values(jaffe_root):
    faces = JaffeFaces(jaffe_root, JAFFE_EMOTIONS).load()
    palette = [n for n in faces.source_names if (jaffe_root / n).exists() and _is_palette(jaffe_root / n)]
    assert palette, "the fixture must contain palette-coded TIFFs"
    for name in palette:
        image = faces.images[faces.source_names.index(name)]
        assert np.array_equal(image, jaffe_gray_values(jaffe_root / name))


def test_jaffe_emotion_subset_keeps_only_those_codes(jaffe_root):
    faces = JaffeFaces(jaffe_root, {"HA": "happiness", "SA": "sadness"}).load()
    assert len(faces) == len(JAFFE_SUBJECTS) * 2 * JAFFE_TAKES
    assert set(faces.emotions.tolist()) == {0, 1}


def test_jaffe_from_zip(jaffe_root, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "jaffe"), "zip", jaffe_root)
    assert len(JaffeFaces(archive, JAFFE_EMOTIONS).load()) == len(JAFFE_SUBJECTS) * 7 * JAFFE_TAKES


def _is_palette(path):
    from PIL import Image

    return Image.open(path).mode == "P"


def test_synthetic_is_deterministic_for_a_seed():
    a = SyntheticFaces(num_subjects=3, num_emotions=4, images_per_cell=2, generator_seed=5).load()
    b = SyntheticFaces(num_subjects=3, num_emotions=4, images_per_cell=2, generator_seed=5).load()
    c = SyntheticFaces(num_subjects=3, num_emotions=4, images_per_cell=2, generator_seed=6).load()
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert not all(np.array_equal(x, y) for x, y in zip(a.images, c.images))
    assert Counter(zip(a.subjects.tolist(), a.emotions.tolist())) == {(s, e): 2 for s in range(3) for e in range(4)}


def test_synthetic_identity_is_recoverable_and_emotion_is_not_trivial():
    """A linear model on raw pixels of held-out images: identity far above chance (the face
    carries who it is), emotion short of perfect (expressions vary in intensity and style)."""
    faces = preprocess(SyntheticFaces(num_subjects=6, num_emotions=7, images_per_cell=6).load(), FaceCropper("none"), 24)
    pixels = faces.images.reshape(len(faces), -1) / 255.0
    held_out = np.arange(len(faces)) % 3 == 0
    accuracy = {}
    for name, labels in (("identity", faces.subjects), ("emotion", faces.emotions)):
        model = LogisticRegression(max_iter=300).fit(pixels[~held_out], labels[~held_out])
        accuracy[name] = model.score(pixels[held_out], labels[held_out])
    assert accuracy["identity"] > 0.6  # chance 1/6
    assert accuracy["emotion"] < 0.9
