"""python -m anonemo.benchmark: its statistics against hand computations and the literature, the
suites' plans, and a tiny suite run, rerun and resumed through Hydra's launchers."""

import math
import re

import numpy as np
import pytest
from conftest import CONF, YALE
from hydra import compose, initialize_config_dir
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from test_bad_input import cli

from anonemo.benchmark.plan import check_jobs, dataset_root
from anonemo.benchmark.results import holdout_ratio
from anonemo.benchmark.stats import (average_ranks, corrected_t_interval, front_point, holm, hypervolume,
                                     paired_interval)
from anonemo.benchmark.suite import REFERENCE, build_suite
from anonemo.errors import ConfigError

def test_corrected_interval_matches_a_hand_computation():
    """d = 2 4 1 5 3 0 6 2 4 3 over 10 folds with n_test/n_train = 1/9: mean 3, s² = 30/9,
    corrected variance of the mean (1/10 + 1/9) · 30/9 = 0.703704, se 0.838870; t(0.975, 9) =
    2.262157, so 3 ± 1.897657; the plain paired t would give 3 ± 1.306057."""
    mean, low, high, p_value = corrected_t_interval([2, 4, 1, 5, 3, 0, 6, 2, 4, 3], 1 / 9)
    assert (mean, low, high) == pytest.approx((3.0, 1.102343, 4.897657), abs=1e-6)
    assert p_value == pytest.approx(0.005966, abs=1e-6)
    plain = corrected_t_interval([2, 4, 1, 5, 3, 0, 6, 2, 4, 3], 0.0)
    assert plain[1:3] == pytest.approx((1.693943, 4.306057), abs=1e-6)
    assert abs(plain[1] - low) > 0.5  # the uncorrected interval fails the hand computation


def test_the_overlap_term_is_the_folds_test_to_training_ratio():
    assert holdout_ratio(10, 0.0) == pytest.approx(1 / 9)
    assert holdout_ratio(10, 0.1) == pytest.approx(0.1 / (0.9 * 0.9))


def test_holm_adjusts_by_hand():
    """p sorted 0.01, 0.02, 0.04 over 3: 0.03, max(0.03, 0.04), max(0.04, 0.04)."""
    adjusted = holm({"a": 0.02, "b": 0.01, "c": 0.04, "one fold": math.nan})
    assert {name: p for name, (p, _) in adjusted.items()} == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    assert all(rejected for _, rejected in adjusted.values())


def test_nemenyi_critical_difference_of_demsar_example():
    """Demšar (JMLR 2006), section 3.2.2: 4 classifiers on 14 data sets, q(0.05) = 2.569, CD = 1.25."""
    rng = np.random.default_rng(0)
    scores = {f"d{i}": dict(zip("abcd", rng.random(4))) for i in range(14)}
    ranks = average_ranks(scores)
    assert ranks.critical_difference == pytest.approx(1.25, abs=0.005)
    assert sum(ranks.average.values()) == pytest.approx(1 + 2 + 3 + 4)
    always_best = {f"d{i}": {"a": 1.0, "b": 0.5, "c": 0.4, "d": 0.3 + 0.01 * i} for i in range(14)}
    found = average_ranks(always_best)
    assert found.average["a"] == 1 and found.friedman_p < 1e-6


def test_hypervolume_of_a_front_by_hand():
    assert hypervolume([(0.5, 0.5)]) == pytest.approx(0.25)
    # two points: 0.8 x 0.2 plus 0.4 x (0.9 - 0.2); a dominated point adds nothing
    assert hypervolume([(0.8, 0.2), (0.4, 0.9), (0.3, 0.1)]) == pytest.approx(0.16 + 0.28)
    # at chance on both: nothing; emotion 100 % with identity at chance: the whole square
    assert front_point(25, 25, 95, 6.67, 100) == pytest.approx((0.0, 1 - 88.33 / 93.33))
    assert hypervolume([front_point(100, 25, 6.67, 6.67, 100)]) == pytest.approx(1.0)
    assert front_point(60, 20, 0.5, 0.5, 1.0) == pytest.approx((0.5, 1.0))


def rejection_rate(simulate, ratio, repetitions=2000):
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(repetitions):
        method, reference = simulate(rng)
        rejected += paired_interval(method, reference, ratio).excludes_zero()
    return rejected / repetitions


def test_a_method_against_itself_under_other_seeds_is_no_difference_at_the_stated_rate():
    """One method's accuracies over 10 folds × 3 seeds, its folds' difficulty shared, seed noise
    larger than the effects (as measured): seeds 0-2 against seeds 3-5 of the same method come out
    as a difference in at most 5 % of repetitions."""
    def same_method(rng):
        difficulty = rng.normal(50, 15, size=10)
        runs = {(fold, seed): difficulty[fold] + rng.normal(0, 8) for fold in range(10) for seed in range(6)}
        return ({(f, s): v for (f, s), v in runs.items() if s < 3},
                {(f, s - 3): v for (f, s), v in runs.items() if s >= 3})

    assert rejection_rate(same_method, 1 / 9) <= 0.05 + 0.01  # two Monte-Carlo standard errors


def test_the_correction_holds_the_rate_where_folds_share_training_data_and_the_plain_test_does_not():
    """Two methods equal on average whose per-fold difference depends on the training data, which
    the folds share: correlated across folds with ρ = n_test/(n_test + n_train), the model Nadeau and
    Bengio's correction is derived for. The corrected interval keeps its 5 %; the plain one does not."""
    ratio = 1 / 9
    rho = ratio / (1 + ratio)

    def overlapping(rng):
        shared = rng.normal()
        differences = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=10)
        reference = {(fold, 0): 50.0 for fold in range(10)}
        return {(fold, 0): 50.0 + 5 * d for fold, d in enumerate(differences)}, reference

    assert rejection_rate(overlapping, ratio) <= 0.05 + 0.01
    assert rejection_rate(overlapping, 0.0) > 0.09


@pytest.fixture
def composed(monkeypatch, tmp_path):
    """The benchmark's config for given overrides, with Hydra initialised as the command has it."""
    for variable in ("ANONEMO_YALE_ROOT", "ANONEMO_JAFFE_ROOT", "ANONEMO_CKPLUS_ROOT"):
        monkeypatch.delenv(variable, raising=False)

    def build(*overrides):
        return compose("benchmark", overrides=[f"paths.output_dir={tmp_path}", *overrides])

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield build


@pytest.mark.parametrize("suite", sorted(path.stem for path in (CONF / "suite").glob("*.yaml")))
def test_every_suite_plans_every_method_on_the_same_folds_and_seeds(composed, monkeypatch, tmp_path, suite):
    for variable in ("ANONEMO_YALE_ROOT", "ANONEMO_JAFFE_ROOT", "ANONEMO_CKPLUS_ROOT"):
        monkeypatch.setenv(variable, str(tmp_path))
    planned = build_suite(composed(f"suite={suite}", "folds=2", "seeds=[0,1]"), dataset_root)  # full: ~100 s whole
    checked = check_jobs(planned)
    assert planned.methods[0].model == REFERENCE
    for setting in planned.settings:
        cells = {}
        for job in checked.jobs.values():
            if job.setting == setting:
                cells.setdefault(job.method, set()).add((job.fold, job.seed))
        assert cells[planned.methods[0]] == {(f, s) for f in planned.folds for s in planned.seeds}
        assert all(found == cells[planned.methods[0]] for found in cells.values())  # paired by design
    budgets = {job.method.budget for job in checked.jobs.values()} - {None}
    assert budgets == set(map(float, composed(f"suite={suite}").suite.budgets))
    assert len(checked.jobs) == len({tuple(job.overrides) for job in checked.jobs.values()})


def test_quick_suite_plans_what_it_says(composed, monkeypatch):
    monkeypatch.setenv("ANONEMO_YALE_ROOT", str(YALE))
    planned = build_suite(composed("suite=quick"), dataset_root)
    checked = check_jobs(planned)
    assert [s.name for s in planned.settings] == ["yale/paper", "synthetic40/subject_disjoint"]
    assert [m.name for m in planned.methods] == ["emotion", "hybrid", "emotion_leace", "hybrid_standardised E=4"]
    assert len(checked.jobs) == 2 * 4 * 3 and not checked.ruled_out
    narrowed = build_suite(composed("suite=quick", "datasets=[yale]", "methods=[hybrid]", "folds=2"), dataset_root)
    assert [m.name for m in narrowed.methods] == ["emotion", "hybrid"] and narrowed.folds == (0, 1)


def test_a_method_its_protocol_cannot_run_is_ruled_out_with_the_recipes_reason(composed, monkeypatch):
    monkeypatch.setenv("ANONEMO_YALE_ROOT", str(YALE))
    checked = check_jobs(build_suite(composed("suite=methods", "methods=[emotion_inlp]", "folds=1"), dataset_root))
    # INLP stops on validation faces of training people: ruled out for unseen people, with the reason
    assert {(s.name, m.name) for s, m in checked.ruled_out} == {("synthetic40/subject_disjoint", "emotion_inlp")}
    assert "erasure=inlp" in next(iter(checked.ruled_out.values()))
    assert {job.method.name for job in checked.jobs.values()} == {"emotion", "emotion_inlp"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["datasets=[yael]"], "suite=quick has no dataset yael; its datasets: yale, synthetic40"),
    (["methods=[gradient_reversal]"], "has no method gradient_reversal; its methods: hybrid, emotion_leace, hybrid_standardised"),
    (["folds=11"], "folds=11: narrow suite=quick's 3 folds to 1 to 3"),
    ([], "ANONEMO_YALE_ROOT=/path/to/it python -m anonemo.benchmark suite=quick ..., or leave it out with datasets=[synthetic40]"),
])
def test_a_suite_that_cannot_run_says_so_before_any_work(composed, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_suite(composed("suite=quick", *overrides), dataset_root)


def test_full_suite_leaves_out_datasets_without_a_root_and_says_so(composed):
    planned = build_suite(composed("suite=full"), dataset_root)
    assert [s.dataset for s in planned.settings] == ["synthetic40", "synthetic40"]
    assert planned.skipped == ("yale (set ANONEMO_YALE_ROOT)", "jaffe (set ANONEMO_JAFFE_ROOT)",
                               "ckplus (set ANONEMO_CKPLUS_ROOT)")


TINY_SUITE = """\
name: tiny
folds: 2
seeds: [0, 1]
data_seed: 0
budgets: [4]
skip_datasets_without_root: false
datasets:
  tiny:
    overrides: [dataset=synthetic, dataset.num_subjects=6, dataset.num_emotions=3, dataset.images_per_cell=4,
      dataset.image_size=32, augment.total=300, cv.n_splits=4, cv.val_fraction=0.25, trainer.max_epochs=2,
      ++dataset.paper_rounds=2, fresh_head.max_epochs=2, trainer.precision=32-true]
    protocols: [paper]
methods: []
budgeted: [grl]
"""


def tiny_suite(tmp_path, *arguments):
    (tmp_path / "conf" / "suite").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "suite" / "tiny.yaml").write_text(TINY_SUITE)
    return cli("suite=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"paths.output_dir={tmp_path}",
               *arguments, module="anonemo.benchmark")


def test_a_tiny_suite_reports_paired_differences_reruns_nothing_and_retries_what_failed(tmp_path):
    first = tiny_suite(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "8 jobs (1 settings × 2 methods × 2 folds × 2 seeds" in first.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("benchmark")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("anonemo.benchmark") == "tiny"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert parent.info.status == "FINISHED"
    report = (tmp_path / "benchmark" / "tiny" / "report.md").read_text()
    assert "| grl E=4 (`GRL2Emotion`) | 4/4 |" in report and "| emotion (`Emotion`) | 4/4 |" in report
    assert "Seed check: the Emotion CNN against itself" in report
    # the paired difference is the mean over folds of each fold's mean over seeds, minus the reference's
    def by_cell(model, metric):
        return {(int(r.data.params["fold"]), int(r.data.params["seed"])): r.data.metrics[metric]
                for r in children if r.data.params["model.name"] == model}
    grl, cnn = by_cell("grl", "GRL2Emotion"), by_cell("emotion", "Emotion")
    difference = np.mean([np.mean([grl[(f, s)] - cnn[(f, s)] for s in (0, 1)]) for f in (0, 1)])
    assert parent.data.metrics["tiny/paper/grl E4/emotion_diff/mean"] == pytest.approx(difference)
    assert parent.data.metrics["tiny/paper/grl E4/emotion_diff/folds"] == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/front_tiny_paper.png", "report/differences_tiny_paper.png"} <= artifacts
    assert first.stdout.rstrip().endswith(f"#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                                          "?workflowType=machine_learning")

    # a job that did not finish (killed, failed) is run again, and only it
    failed = next(r for r in children if r.data.params["model.name"] == "grl")
    client.set_terminated(failed.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    second = tiny_suite(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "7 finished already, 1 to run" in second.stdout
    assert client.get_run(failed.info.run_id).info.status == "FINISHED"  # resumed, in its own run

    report = (tmp_path / "benchmark" / "tiny" / "report.md").read_text()
    third = tiny_suite(tmp_path)
    assert third.returncode == 0 and "8 finished already, 0 to run" in third.stdout
    assert (tmp_path / "benchmark" / "tiny" / "report.md").read_text() == report  # the same report
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)  # the same parent run, no new job run


def test_a_tiny_suite_runs_through_submitits_local_executor(tmp_path):
    result = tiny_suite(tmp_path, "methods=[]", "folds=1", "seeds=[0]", "launcher=submitit_local")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 jobs (1 settings × 1 methods × 1 folds × 1 seeds" in result.stdout
    assert "| emotion (`Emotion`) | 1/1 |" in (tmp_path / "benchmark" / "tiny" / "report.md").read_text()
    assert list((tmp_path / "multirun").glob("*/.submitit/*/*_result.pkl"))


def test_a_suite_naming_a_dataset_without_its_root_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("ANONEMO_YALE_ROOT", raising=False)
    result = cli("suite=quick", f"paths.output_dir={tmp_path}", module="anonemo.benchmark")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ANONEMO_YALE_ROOT=/path/to/it" in result.stderr
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
