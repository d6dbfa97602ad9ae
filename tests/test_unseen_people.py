"""The subject-disjoint protocol (``cv.protocol=subject_disjoint``): folds that never share a
person between sides, identity classes of the training people only, and jobs that log linkage
instead of closed-set identity numbers; the paper's protocol unchanged."""

import hashlib
import logging

import numpy as np
import pytest
from conftest import YALE_EMOTIONS
from mlflow.tracking import MlflowClient

from anonemo import metrics as names
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.folds import UNSEEN_PEOPLE_NOTE, fold_split
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.synthetic import SyntheticFaces
from anonemo.data.yale import YaleFaces
from anonemo.errors import ConfigError
from anonemo.job import plan, run
from anonemo.tracking.store import tracking_uri

# 6 subjects x 3 emotions: 3 folds of 2 test people, so the test fold's linkage is defined.
SIX_PEOPLE = ("cv.protocol=subject_disjoint", "dataset.num_subjects=6", "cv.n_splits=3")


def test_the_papers_folds_are_unchanged():
    """The folds of the paper's protocol, for two seeds, are the ones cut before ``cv.protocol``
    existed (the digest was computed with commit 933c20c's ``grouped_fold_split``)."""
    rng = np.random.default_rng(2020)
    subjects, emotions = np.repeat(np.arange(15), 4), np.tile(np.arange(4), 15)
    sources = np.concatenate([np.arange(60), rng.integers(0, 60, 540)])
    digest = hashlib.sha256()
    for seed in (0, 3):
        for fold in range(10):
            split = fold_split(subjects[sources], emotions[sources], sources, fold, 10, 0.1, seed)
            for side in (split.train, split.val, split.test):
                digest.update(np.asarray(side, dtype=np.int64).tobytes())
    assert digest.hexdigest() == "38958ce5df48e6455760d57f3f134df416f189c6a0bbee69be6fdb24dc07fc07"


@pytest.mark.parametrize("n_splits", [7, 15])
def test_yale_subject_disjoint_folds_never_share_a_person(yale_root, n_splits):
    labels = YaleFaces(yale_root, YALE_EMOTIONS).labels()
    subject_folds_are_disjoint(labels.subjects, labels.emotions, labels.groups, n_splits)


def test_synthetic_subject_disjoint_folds_never_share_a_person():
    labels = SyntheticFaces(num_subjects=40).labels()
    tests = subject_folds_are_disjoint(labels.subjects, labels.emotions, labels.groups, 10)
    assert {len(people) for people in tests} == {4}


def subject_folds_are_disjoint(subjects, emotions, groups, n_splits):
    """Every fold: no person on two sides, every emotion on the training side, test folds that
    partition the people; returns each fold's test people."""
    tests = []
    for fold in range(n_splits):
        split = fold_split(subjects, emotions, groups, fold, n_splits, 0.1, 0, protocol="subject_disjoint")
        people = [set(subjects[side]) for side in (split.train, split.val, split.test)]
        assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
        assert all(people) and set(emotions[split.train]) == set(emotions)
        assert len(people[1]) >= 2  # two validation people: linkage is defined there
        assert len(split.train) + len(split.val) + len(split.test) == len(subjects)
        tests.append(people[2])
    assert sorted(p for people in tests for p in people) == sorted(set(subjects))
    return tests


@pytest.mark.parametrize(
    ("n_subjects", "n_splits", "message"),
    [
        (15, 16, "cv.n_splits=16 needs a subject in every test fold and two beside the largest one (training and "
                 "validation); the data has 15 subjects: use cv.n_splits=2..15"),
        (3, 2, "the data has 3 subjects: use cv.n_splits=3..3"),
        (2, 2, "it needs at least 3 subjects"),
    ],
)
def test_too_few_people_for_the_folds_are_named(n_subjects, n_splits, message):
    subjects = np.repeat(np.arange(n_subjects), 4)
    emotions = np.tile(np.arange(2), 2 * n_subjects)
    with pytest.raises(ConfigError) as error:
        fold_split(subjects, emotions, np.arange(len(subjects)), 0, n_splits, protocol="subject_disjoint")
    assert message in str(error.value)


def test_an_emotion_shown_by_one_person_is_named():
    subjects, emotions = np.repeat(np.arange(4), 3), np.array([0, 1, 2] + [0, 1, 0] * 3)
    with pytest.raises(ConfigError, match="the data has 1 with fewer: emotion happy \\(only in S0\\)"):
        fold_split(subjects, emotions, np.arange(12), 0, 2, protocol="subject_disjoint",
                   names={"subject": ("S0", "S1", "S2", "S3"), "emotion": ("neutral", "sad", "happy")})


def test_an_unknown_protocol_is_named():
    with pytest.raises(ConfigError, match="cv.protocol='loso' is not known: use paper or subject_disjoint"):
        fold_split(np.zeros(4, int), np.zeros(4, int), np.arange(4), 0, 2, protocol="loso")


def test_identity_classes_are_the_training_people():
    faces = preprocess(SyntheticFaces(num_subjects=6, num_emotions=3, images_per_cell=2).load(), FaceCropper("none"), 16)
    data = GroupedFoldDataModule(faces, fold=1, n_splits=3, val_fraction=0.25, protocol="subject_disjoint")
    k = data.num_classes("identity")
    train, val, test = (data.side(s).tensors["identity"] for s in ("train", "val", "test"))
    assert k == len(train.unique()) == 2 and train.max() == k - 1
    assert val.min() >= k and test.min() >= k
    # renumbered, not relabelled: every image keeps its person's name
    assert [data.subject_names[i] for i in data.faces.subjects] == [faces.subject_names[i] for i in faces.subjects]
    assert data.testable_tasks == ("emotion",)


def test_a_subject_disjoint_job_logs_linkage_and_no_closed_set_identity(tiny_config, caplog):
    caplog.set_level(logging.INFO)
    metrics = run(tiny_config("model=emotion2face", *SIX_PEOPLE))
    assert names.EMOTION in metrics and names.audit("emotion") in metrics
    assert 0 <= metrics[names.LINKAGE_AUC] <= 1 and metrics[names.LINKAGE_RANK1 + "/chance"] == 50
    closed_set = [k for k in metrics if k.startswith((names.EMOTION2FACE, "audit/identity", "audit/emotion_output"))]
    assert closed_set == []
    assert caplog.text.count(UNSEEN_PEOPLE_NOTE) == 1


def test_a_subject_disjoint_hybrid_scores_identity_on_training_people_only(tiny_config):
    cfg = tiny_config("model=hybrid_standardised", "model.rounds=2", "model.init_epochs=1", *SIX_PEOPLE)
    metrics = run(cfg)
    assert names.HYBRID2EMOTION in metrics and names.LINKAGE_AUC in metrics
    assert not [k for k in metrics if k.startswith((names.HYBRID2FACE, "Hybrid/identity_head", "audit/identity"))]
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    rounds = logged.data.metrics
    assert "round/refit_identity_acc/train" in rounds and "round/identity_acc/val" not in rounds
    assert "round/refit_identity_acc/val" not in rounds


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=face",), "model=face classifies the training subjects, and under this cv.protocol no test subject"),
        (("audit.null_permutations=5",), "audit.null_permutations=5 is the null of the closed-set identity attackers"),
    ],
)
def test_closed_set_options_are_refused_under_subject_disjoint(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(tiny_config(*overrides, *SIX_PEOPLE))
