"""Any face dataset: the folder loader (manifest or pattern, groups, emotion classes, subjects left
out) on the real Yale images laid out as a researcher's own folder, and CK+ in both layouts."""

import logging
import re
import shutil

import numpy as np
import pytest
from conftest import (CKPLUS_EMOTIONS, CKPLUS_LONE_SUBJECT, CKPLUS_SUBJECTS, TINY_SYNTHETIC, YALE_EMOTIONS, make_config,
                      yale_as_own_folder)
from mlflow.tracking import MlflowClient
from test_bad_input import cli

from anonemo.data.check import check_job_data
from anonemo.data.ckplus import CKPlus
from anonemo.data.folder import FolderDataset
from anonemo.data.pipeline import fold_data
from anonemo.data.yale import YaleFaces
from anonemo.errors import ConfigError, DatasetError
from anonemo.job import run

# The small sizes of a test job, without the synthetic set's own keys.
TINY = tuple(o for o in TINY_SYNTHETIC if not o.startswith(("dataset.num_", "dataset.images_per_cell")))
# The copies of one image (``happy_0.gif``, ``happy_1.gif``, ...) are one group.
PATTERN = r"^people/(?P<subject>subject\d+)/(?P<group>(?P<emotion>[a-z]+))(?:_\d)?\.gif$"


def test_a_manifest_loads_the_same_faces_as_the_yale_loader(yale_root, tmp_path, caplog):
    root, manifest = yale_as_own_folder(tmp_path, yale_root)
    with caplog.at_level(logging.INFO):
        faces = FolderDataset(root, manifest=str(manifest)).load()
    assert "1 file(s) in" in caplog.text and "not in the manifest" in caplog.text and "notes.txt" in caplog.text
    yale = YaleFaces(yale_root, YALE_EMOTIONS).load()
    assert faces.emotion_names == ("happy", "normal", "sad", "surprised")  # found, sorted
    assert faces.subject_names == yale.subject_names and len(faces) == 60
    by_name = {name.rsplit("/", 2)[1] + "." + name.rsplit("/", 1)[1][:-4]: i for i, name in enumerate(faces.source_names)}
    for i, name in enumerate(yale.source_names):
        j = by_name[name]
        assert np.array_equal(faces.images[j], yale.images[i]) and faces.subjects[j] == yale.subjects[i]
        assert faces.emotion_names[faces.emotions[j]] == yale.emotion_names[yale.emotions[i]]


def test_a_pattern_labels_like_the_manifest_and_reports_what_it_skips(yale_root, tmp_path, caplog):
    root, manifest = yale_as_own_folder(tmp_path, yale_root)
    with caplog.at_level(logging.WARNING):
        by_pattern = FolderDataset(root, pattern=PATTERN).labels()
    assert "1 file(s)" in caplog.text and "not matching dataset.pattern" in caplog.text and "notes.txt" in caplog.text
    by_manifest = FolderDataset(root, manifest=str(manifest)).labels()
    order = np.argsort(by_pattern.source_names)
    assert sorted(by_manifest.source_names) == [by_pattern.source_names[i] for i in order]
    assert np.array_equal(by_manifest.subjects[np.argsort(by_manifest.source_names)], by_pattern.subjects[order])


def test_emotions_option_sets_the_class_order_and_leaves_the_others_out(yale_root, tmp_path):
    root, manifest = yale_as_own_folder(tmp_path, yale_root)
    labels = FolderDataset(root, manifest=str(manifest), emotions=["sad", "happy"]).labels()
    assert labels.emotion_names == ("sad", "happy") and len(labels.subjects) == 30


def test_a_group_never_straddles_a_split(yale_root, tmp_path):
    """Three near-identical copies of each Yale image share a group (manifest column or pattern
    group): no fold puts copies of one group on two sides. Without the group they do."""
    root, manifest = yale_as_own_folder(tmp_path, yale_root, copies=3, header="path,subject,emotion,group")
    sizes = (*TINY, "dataset.image_size=16", "augment.total=360", "cv.n_splits=5", "cv.val_fraction=0.2")

    def straddling(*source):
        data = fold_data(make_config(tmp_path / "cfg", "dataset=folder", f"dataset.root={root}", *source,
                                     "dataset.face_crop.method=center", *sizes))
        image_of = np.array([re.sub(r"_\d\.gif$", "", name) for name in data.faces.source_names])
        groups = image_of[data.faces.sources]  # which Yale image each one is a copy of
        sides = [set(groups[data.split.train]), set(groups[data.split.val]), set(groups[data.split.test])]
        return len(sides[0] & sides[1]) + len(sides[0] & sides[2]) + len(sides[1] & sides[2]), data

    for source in ([f"dataset.manifest={manifest}"], [f"dataset.pattern='{PATTERN}'"]):
        shared, data = straddling(*source)
        assert shared == 0 and data.summary()["data.groups"] == 60 and data.summary()["data.originals"] == 180
    plain = yale_as_own_folder(tmp_path / "plain", yale_root, copies=3)[1]  # the same files, no group column
    assert straddling(f"dataset.manifest={plain}")[0] > 0


def test_subjects_with_too_few_groups_are_left_out_and_counted(yale_root, tmp_path, caplog):
    """Under the paper's protocol a person needs two groups (one for a test fold, one for its
    training side); under subject_disjoint one. The log says whom each keeps; the job's data hold
    exactly those people."""
    root, manifest = yale_as_own_folder(tmp_path, yale_root,
                                manifest_rows=lambda rows: [r for r in rows if not r.startswith("people/subject07/") or "happy" in r])
    assert len(FolderDataset(root, manifest=str(manifest)).labels().subject_names) == 15  # the loader keeps everyone
    folder = ("dataset=folder", f"dataset.root={root}", f"dataset.manifest={manifest}", "dataset.image_size=16",
              "augment.total=120", "cv.n_splits=4")
    for protocol, kept in (("paper", 14), ("subject_disjoint", 15)):
        cfg = make_config(tmp_path / protocol, *folder, f"cv.protocol={protocol}")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            check_job_data(cfg)
        data = fold_data(cfg)
        assert data.summary()["data.subjects"] == kept and data.summary()["data.originals"] == 56 + kept - 14
        assert ("subject07" in data.subject_names) == (protocol == "subject_disjoint")
        first, second = ("paper", "subject_disjoint") if protocol == "paper" else ("subject_disjoint", "paper")
        assert f"folder: cv.protocol={first} keeps" in caplog.text and f"; cv.protocol={second} keeps" in caplog.text
        assert ("cv.protocol=paper keeps the 14 of 15 people with 2 groups or more (56 of 57 images)" in caplog.text
                and "cv.protocol=subject_disjoint keeps all 15 people (57 images)" in caplog.text)
        assert ("Left out: subject07" in caplog.text) == (protocol == "paper")
    override = make_config(tmp_path / "one", *folder, "dataset.min_groups_per_subject=1", "cv.protocol=subject_disjoint")
    assert fold_data(override).summary()["data.subjects"] == 15


def test_a_manifest_job_trains_end_to_end_from_the_command_line(yale_root, tmp_path):
    """The command line of docs/data.md (sizes made small): the job logs how many subjects it kept."""
    root, manifest = yale_as_own_folder(tmp_path, yale_root)
    result = cli("dataset=folder", f"dataset.root={root}", f"dataset.manifest={manifest}", "model=emotion", "fold=0",
                 f"paths.output_dir={tmp_path / 'out'}", *TINY, "cv.n_splits=4", "dataset.image_size=32",
                 "audit.enabled=false", "trainer.enable_progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("folder").experiment_id])
    assert logged.info.status == "FINISHED" and 0 <= logged.data.metrics["Emotion"] <= 100
    assert logged.data.params["data.subjects"] == "15" and logged.data.params["data.originals"] == "60"


def test_ckplus_official_layout(ckplus_root, caplog):
    with caplog.at_level(logging.INFO):
        plain = CKPlus(ckplus_root).labels()
    assert plain.subject_names == (*CKPLUS_SUBJECTS, CKPLUS_LONE_SUBJECT)  # one sequence: kept until a protocol decides
    assert plain.emotion_names == ("anger", "happy", "surprise")
    assert len(plain.subjects) == 16 * 3  # the last 3 frames of each labelled sequence; 009 has no label
    assert not any("_009_" in name for name in plain.source_names)
    assert all(name.endswith(("_00000003.png", "_00000004.png", "_00000005.png")) for name in plain.source_names)
    assert len(np.unique(plain.groups)) == 16  # a sequence is a group
    with_neutral = CKPlus(ckplus_root, frames_per_sequence=2, neutral_first_frame=True).labels()
    assert with_neutral.emotion_names == ("neutral", "anger", "happy", "surprise")
    neutral = [n for n, e in zip(with_neutral.source_names, with_neutral.emotions) if e == 0]
    assert len(neutral) == 16 and all(n.endswith("_00000001.png") for n in neutral)
    assert len(with_neutral.subjects) == 16 * 3


def test_ckplus48_layout_and_its_defaults(ckplus_root, ckplus48_root, tmp_path):
    labels = CKPlus(ckplus48_root).labels()
    assert labels.emotion_names == ("anger", "happy", "surprise") and len(labels.subjects) == 48
    assert len(np.unique(labels.groups)) == 16
    cropped = make_config(tmp_path, "dataset=ckplus", f"dataset.root={ckplus48_root}").dataset
    official = make_config(tmp_path, "dataset=ckplus", f"dataset.root={ckplus_root}").dataset
    assert (cropped.image_size, cropped.face_crop.method) == (48, "none")
    assert (official.image_size, official.face_crop.method) == (64, "haar")
    assert make_config(tmp_path, "dataset=ckplus", f"dataset.root={ckplus48_root}", "dataset.image_size=32").network.image_size == 32


@pytest.mark.parametrize("layout", ["official", "ck+48"])
def test_ckplus_trains_the_recommended_hybrid_end_to_end(ckplus_root, ckplus48_root, tmp_path, layout):
    root = ckplus_root if layout == "official" else ckplus48_root
    metrics = run(make_config(tmp_path, "dataset=ckplus", f"dataset.root={root}", "model=hybrid_standardised", "fold=0",
                              *TINY, "dataset.image_size=32", "augment.total=180", "cv.n_splits=3", "cv.val_fraction=0.34",
                              "model.init_epochs=2", "model.rounds=2", "model.privacy.refit_epochs=2", "fresh_head.max_epochs=3"))
    # the fixture's 3 emotions, read from its label files (or folders), and its people with two sequences or more
    assert metrics["Hybrid2Emotion/chance"] == pytest.approx(100 / len(CKPLUS_EMOTIONS))
    assert metrics["audit/identity/chance"] == pytest.approx(100 / len(CKPLUS_SUBJECTS))


def test_ckplus_bad_label_file_is_named(ckplus_root, tmp_path):
    copy = shutil.copytree(ckplus_root, tmp_path / "ck")
    label = next((copy / "Emotion").rglob("*_emotion.txt"))
    label.write_text("happy\n")
    with pytest.raises(DatasetError, match=rf"{label} does not hold a CK\+ emotion code"):
        CKPlus(copy).labels()
    with pytest.raises(DatasetError, match="holds neither CK\\+ layout"):
        CKPlus(tmp_path / "ck" / "Emotion").labels()


def test_folder_needs_one_way_to_label(tmp_path):
    with pytest.raises(ConfigError, match="needs exactly one of dataset.manifest and dataset.pattern \\(got neither\\)"):
        FolderDataset(tmp_path).labels()
    with pytest.raises(ConfigError, match="has no named group emotion"):
        FolderDataset(tmp_path, pattern=r"(?P<subject>\w+)/.*")
