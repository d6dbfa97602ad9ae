"""Face datasets as researchers have them: few groups per person, rare emotions, near-identical
frames in a group. The fold search finds folds whenever they exist (and its early check agrees),
each protocol keeps the people it can use, an impossible dataset is answered with the settings
that would work, and the linkage audit never counts two frames of one group as evidence."""

import itertools
import logging
import re

import numpy as np
import pytest
from conftest import REPO, make_config
from real_shapes import (CKPLUS48_SEQUENCES_PER_EMOTION, CKPLUS48_SEQUENCES_PER_PERSON, KDEF_PATTERN, RAFD_PATTERN,
                         ckplus48_sequences)

from anonemo.audit.linkage import linkage_audit
from anonemo.data.check import check_job_data, dataset_source
from anonemo.data.datamodule import TensorBatches
from anonemo.data.folds import FoldsImpossible, _solve_exactly, check_fold_protocol, fold_protocol, fold_split, fold_units
from anonemo.job import run
from anonemo.metrics import LINKAGE


def random_shape(rng, protocol):
    """People with 1-4 groups of 1-2 originals, skewed emotions (some rare), and now and then a
    group of two emotions (a neutral first frame)."""
    people = int(rng.integers(2, 4 if protocol == "paper" else 8))
    emotions = int(rng.integers(2, 4))
    weights = np.array([3, 2, 1][:emotions], dtype=float)
    subjects, shown, groups = [], [], []
    for person in range(people):
        for _ in range(int(rng.integers(1, 5 if protocol == "paper" else 3))):
            group = len(set(groups))
            drawn = [int(rng.choice(emotions, p=weights / weights.sum()))]
            if rng.random() < 0.1:
                drawn.append(0)
            for emotion in drawn:
                for _ in range(int(rng.integers(1, 3))):
                    subjects.append(person), shown.append(emotion), groups.append(group)
    _, shown = np.unique(shown, return_inverse=True)  # classes the data shows
    return np.array(subjects), shown.reshape(-1), np.array(groups)


def is_valid(units, folds, n_splits):
    """Test folds of every unit, none empty, each leaving on its training side every label the
    protocol covers, and a unit that validation can take without taking a label's last one."""
    if len(set(folds.tolist())) < n_splits:
        return False
    for fold in range(n_splits):
        outside = np.zeros(len(units.label_names), dtype=int)
        for u in np.flatnonzero(folds != fold):
            outside[units.covers[u]] += 1
        if (outside < 1).any() or not any((outside[units.covers[u]] >= 2).all() for u in np.flatnonzero(folds != fold)):
            return False
    return True


def valid_folds_exist(units, n_splits):
    return any(is_valid(units, np.array(a), n_splits) for a in itertools.product(range(n_splits), repeat=units.count))


def assert_valid(split, subjects, emotions, groups, protocol):
    unit = {"paper": groups, "subject_disjoint": subjects}[protocol]
    sides = [set(unit[side]) for side in (split.train, split.val, split.test)]
    assert len(split.val) and len(split.test)
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert set(emotions[split.train]) == set(emotions)
    if protocol == "paper":
        assert set(subjects[split.train]) == set(subjects)


@pytest.mark.parametrize("protocol", ["paper", "subject_disjoint"])
def test_the_early_check_says_feasible_exactly_when_folds_exist_and_are_built(protocol):
    """300 random small shapes: the check run before any work, the folds a job cuts, an exhaustive
    search, and the integer program that decides where backtracking would take long agree on every
    one; every fold built keeps the protocol's rules."""
    rng = np.random.default_rng(7 if protocol == "paper" else 8)
    seen = {True: 0, False: 0}
    while sum(seen.values()) < 150:
        subjects, emotions, groups = random_shape(rng, protocol)
        n_splits = int(rng.integers(2, 4))
        units = fold_units(subjects, emotions, groups, fold_protocol(protocol), {})
        if units.count > 8:
            continue
        try:
            check_fold_protocol(subjects, emotions, groups, n_splits, {}, protocol)
            said = True
        except FoldsImpossible:
            said = False
        try:
            splits = [fold_split(subjects, emotions, groups, f, n_splits, 0.2, 0, protocol) for f in range(n_splits)]
            built = True
        except FoldsImpossible:
            built = False
        exact = _solve_exactly(units, n_splits) if units.count >= n_splits else None
        assert said == built == (exact is not None) == valid_folds_exist(units, n_splits), (
            subjects.tolist(), emotions.tolist(), groups.tolist(), n_splits)
        assert exact is None or is_valid(units, exact, n_splits)
        if built:
            for split in splits:
                assert_valid(split, subjects, emotions, groups, protocol)
            tests = np.sort(np.concatenate([s.test for s in splits]))
            assert np.array_equal(tests, np.arange(len(subjects)))
        seen[said] += 1
    assert min(seen.values()) > 20  # both answers were exercised


def test_the_ckplus48_shaped_fixture_has_ckplus48s_shape(ckplus48_shaped_root):
    labels = dataset_source(make_config(ckplus48_shaped_root.parent, "dataset=ckplus",
                                        f"dataset.root={ckplus48_shaped_root}").dataset).labels()
    assert len(labels.subjects) == 981 and len(np.unique(labels.groups)) == 327 and len(labels.subject_names) == 118
    pairs = np.unique(np.stack([labels.subjects, labels.groups]), axis=1)
    per_person = np.bincount(np.bincount(pairs[0]))
    assert {k: int(per_person[k]) for k in range(1, 7)} == CKPLUS48_SEQUENCES_PER_PERSON
    per_emotion = {name: len(np.unique(labels.groups[labels.emotions == e])) for e, name in enumerate(labels.emotion_names)}
    assert per_emotion == CKPLUS48_SEQUENCES_PER_EMOTION
    assert len(ckplus48_sequences()) == len(set(ckplus48_sequences()))  # no person shows an emotion twice


def shaped(name, root):
    return {"ckplus48": ["dataset=ckplus", f"dataset.root={root}"],
            "kdef": ["dataset=folder", f"dataset.root={root}", f"dataset.pattern='{KDEF_PATTERN}'",
                     "dataset.face_crop.method=none"],
            "rafd": ["dataset=folder", f"dataset.root={root}", f"dataset.pattern='{RAFD_PATTERN}'",
                     "dataset.face_crop.method=none"]}[name]


@pytest.fixture
def shaped_root(request):
    return request.getfixturevalue({"ckplus48": "ckplus48_shaped_root", "kdef": "kdef_root", "rafd": "rafd_root"}[request.param])


@pytest.mark.parametrize(("shaped_root", "people", "groups", "kept"),
                         [("ckplus48", 118, 327, {"paper": 97, "subject_disjoint": 118}),
                          ("kdef", 70, 980, {"paper": 70, "subject_disjoint": 70}),
                          ("rafd", 67, 536, {"paper": 67, "subject_disjoint": 67})],
                         indirect=["shaped_root"], ids=["ckplus48", "kdef", "rafd"])
def test_each_protocol_keeps_the_people_it_can_fold_and_says_so(shaped_root, request, tmp_path, caplog, people, groups,
                                                                kept):
    """With default settings, folds exist under both protocols (all ten, found by the check), the
    pattern's groups are one posed expression, and the log says whom each protocol keeps."""
    name = request.node.callspec.id
    for protocol, count in kept.items():
        cfg = make_config(tmp_path, *shaped(name, shaped_root), f"cv.protocol={protocol}")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            check_job_data(cfg)
        labels = dataset_source(cfg.dataset).labels()
        assert len(labels.subject_names) == people and len(np.unique(labels.groups)) == groups
        everyone = count == people
        said = f"cv.protocol={protocol} keeps " + (f"all {people} people" if everyone else f"the {count} of {people} people")
        assert said in caplog.text


def test_folds_for_ckplus48s_shape_are_cut_where_the_stratified_shuffle_finds_none(ckplus48_shaped_root, tmp_path):
    from anonemo.data.check import kept_originals

    labels = dataset_source(make_config(tmp_path, "dataset=ckplus", f"dataset.root={ckplus48_shaped_root}").dataset).labels()
    kept = labels.where(kept_originals(labels, 2))
    for protocol in ("paper", "subject_disjoint"):
        split = fold_split(kept.subjects, kept.emotions, kept.groups, 0, 10, 0.1, 0, protocol)
        assert_valid(split, kept.subjects, kept.emotions, kept.groups, protocol)
        assert 0.07 < len(split.test) / len(kept.subjects) < 0.13 and len(split.val) / len(kept.subjects) > 0.05
    # a person with two sequences has one in a test fold and the other on that fold's training side
    two = [s for s in range(len(kept.subject_names)) if len(np.unique(kept.groups[kept.subjects == s])) == 2]
    split = fold_split(kept.subjects, kept.emotions, kept.groups, 0, 10, 0.1, 0, "paper")
    tested = [s for s in two if s in set(kept.subjects[split.test])]
    assert tested and all(s in set(kept.subjects[split.train]) and s not in set(kept.subjects[split.val]) for s in tested)


TINY_REAL = ("dataset.image_size=16", "trainer.max_epochs=1", "model.init_epochs=1", "model.rounds=1",
             "model.privacy.refit_epochs=1", "fresh_head.max_epochs=1")


KEPT_UNDER_PAPER = {"ckplus48": 97, "kdef": 70, "rafd": 67}


@pytest.mark.parametrize("shaped_root", ["ckplus48", "kdef", "rafd"], indirect=True)
@pytest.mark.parametrize("protocol", ["paper", "subject_disjoint"])
def test_real_shapes_train_both_models_end_to_end_under_both_protocols(shaped_root, request, tmp_path, protocol):
    """Default data and fold settings, tiny training: each job ends with its protocol's numbers
    (closed-set identity over the people the paper's protocol keeps; linkage across groups for
    unseen people)."""
    name = request.node.callspec.params["shaped_root"]
    total = {"ckplus48": 1000, "kdef": 2000, "rafd": 1100}[name]
    for model in ("emotion", "hybrid_standardised"):
        overrides = [o for o in TINY_REAL if model != "emotion" or not o.startswith(("model.", "fresh_head."))]
        metrics = run(make_config(tmp_path / model, *shaped(name, shaped_root), f"model={model}",
                                  f"cv.protocol={protocol}", f"augment.total={total}", *overrides))
        assert 0 <= metrics["Emotion" if model == "emotion" else "Hybrid2Emotion"] <= 100
        if protocol == "paper":
            assert metrics["audit/identity/chance"] == pytest.approx(100 / KEPT_UNDER_PAPER[name])
        else:
            assert "audit/identity/max" not in metrics and metrics[f"{LINKAGE}/pairs/same_group"] > 0
            assert 0 <= metrics[f"{LINKAGE}/auc"] <= 1


def frames_side(people, groups_per_person, frames, identity, seed):
    """Originals of ``people``, each group ``frames`` near-identical copies of one picture (its
    own direction), with ``identity`` times a per-person direction added."""
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(people), groups_per_person * frames)
    group = np.repeat(np.arange(people * groups_per_person), frames) + 1000 * seed
    picture = rng.normal(size=(people * groups_per_person, 16))[group - 1000 * seed]
    directions = np.random.default_rng(99).normal(size=(people, 16))
    features = picture + identity * directions[person] + 0.01 * rng.normal(size=picture.shape)
    import torch

    return TensorBatches(features=torch.tensor(features, dtype=torch.float32), identity=torch.tensor(person),
                         emotion=torch.tensor(person % 2), source=torch.arange(len(person)),
                         group=torch.tensor(group), original=torch.ones(len(person), dtype=torch.bool))


def test_frames_of_one_group_are_no_evidence_of_identity():
    """Three near-identical frames per group and no identity at all: counting frame pairs read
    AUC near 1 and rank-1 far above chance; pairs across groups read chance, and a side with one
    group per person has no linkage number."""
    sides = {"train": frames_side(12, 3, 3, 0.0, 0), "val": frames_side(12, 2, 3, 0.0, 1)}
    across = linkage_audit({**sides, "test": frames_side(12, 3, 3, 0.0, 2)}, seed=0)
    assert abs(across[f"{LINKAGE}/auc"] - 0.5) < 0.1 and across[f"{LINKAGE}/rank1"] < 3 * across[f"{LINKAGE}/rank1/chance"]
    assert across[f"{LINKAGE}/pairs/same_group"] == 12 * 3 * 3  # 3 pairs in each of 36 groups
    identity = linkage_audit({**sides, "test": frames_side(12, 3, 3, 3.0, 2)}, seed=0)
    assert identity[f"{LINKAGE}/auc"] > 0.9  # real identity still shows across groups
    one_group = linkage_audit({**sides, "test": frames_side(12, 1, 3, 0.0, 2)}, seed=0)
    assert f"{LINKAGE}/auc" not in one_group and f"{LINKAGE}/rank1" not in one_group
    # what counting frames of one sequence as same-person pairs reads (groups ignored)
    ignored = frames_side(12, 1, 3, 0.0, 2)
    ignored.tensors["group"] = ignored.tensors["source"]
    assert linkage_audit({**sides, "test": ignored}, seed=0)[f"{LINKAGE}/auc"] > 0.95


def test_an_impossible_dataset_is_answered_before_any_work_with_the_settings_that_would_work(ckplus48_shaped_root,
                                                                                            tmp_path):
    """CK+48's shape with everyone kept under the paper's protocol: 21 people have one sequence.
    The command exits 2 naming them and the settings that would work with what each keeps, and
    leaves no run and no folder."""
    from test_bad_input import cli

    result = cli("dataset=ckplus", f"dataset.root={ckplus48_shaped_root}", "model=emotion", "fold=0",
                 "dataset.min_groups_per_subject=1", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    message = " ".join(result.stderr.split())
    assert "the data has 21 with fewer: subject S009 (only in " in message
    assert ("Settings that would work: dataset.min_groups_per_subject=2 keeps the 97 of 118 people with 2 groups or "
            "more (918 of 981 images); cv.protocol=subject_disjoint keeps all 118 people (981 images)") in message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_kdef_and_rafd_patterns_in_the_docs_are_the_tested_ones():
    documented = re.findall(r"dataset\.pattern='([^']+)'", (REPO / "docs" / "data.md").read_text())
    assert KDEF_PATTERN in documented and RAFD_PATTERN in documented
