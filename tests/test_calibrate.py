"""python -m anonemo.calibrate: β chosen from validation sides only."""

import re
import shutil
import statistics

import pytest
from conftest import CONF, TINY_SYNTHETIC
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from test_bad_input import cli

from anonemo.calibrate import finished_metrics
from anonemo.calibration import (CLOSED_SET_LEAKAGE, LINKAGE_LEAKAGE, REFERENCE_UTILITY, Setting,
                                 check_options, choose, collect, grid, table)
from anonemo.errors import ConfigError

TINY_GRID = (*TINY_SYNTHETIC, "model.init_epochs=2", "model.rounds=2", "model.privacy.refit_epochs=2", "fresh_head.max_epochs=3",
             "calibrate.grid=[0.3,2.0]", "calibrate.folds=[0,1]")


def calibrate_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("calibrate", overrides=list(overrides))


def test_the_rule_keeps_emotion_then_minimises_validation_leakage():
    reference = Setting(None, (70.0, 72.0), (98.0, 99.0))
    settings = [reference, Setting(0.3, (69.0, 70.0), (30.0, 32.0)), Setting(0.8, (64.0, 66.0), (20.0, 22.0)),
                Setting(1.0, (40.0, 30.0), (10.0, 12.0))]
    assert choose(settings, max_emotion_loss=10).value == 0.8  # 1.0 loses 36 points of emotion
    assert choose(settings, max_emotion_loss=5).value == 0.3
    with pytest.raises(ConfigError, match="Every setting loses more than calibrate.max_emotion_loss=0"):
        choose([reference, *settings[2:]], max_emotion_loss=0)


def test_the_table_shows_the_emotion_lost_with_its_noise_and_flags_a_verdict_within_it():
    """The synthetic 40-person calibration: β=0.1 lost 2.5 points against a 2-point margin, with
    validation sides too small to tell (docs/algorithm.md, "Choosing β")."""
    reference = Setting(None, (66.25, 70.89, 66.87), (0.90, 0.96, 0.98))
    close = Setting(0.1, (60.62, 62.91, 73.12), (0.50, 0.56, 0.57))
    far = Setting(0.3, (58.0, 60.0, 57.0), (0.51, 0.67, 0.55))  # about 10 points lost on every fold
    kept = Setting(0.0, (61.87, 71.83, 76.88), (0.72, 0.80, 0.90))
    settings = [reference, kept, close, far]
    loss, spread = close.emotion_loss(reference)
    assert loss == pytest.approx(2.4533, abs=1e-3)
    assert spread == pytest.approx(statistics.stdev([5.63, 7.98, -6.25]) / 3 ** 0.5, abs=1e-2)
    rows = table(settings, choose(settings, 2), 2, LINKAGE_LEAKAGE).splitlines()
    assert rows[0].startswith("| setting | folds | validation emotion (%) | emotion lost (points ± s.e.) |")
    assert "loses 2.5 points of emotion (within one standard error of calibrate.max_emotion_loss=2)" in rows[4]
    assert rows[4].split(" | ")[3] == f"{loss:.2f} ± {spread:.2f}"
    assert "within one standard error" not in table(settings, choose(settings, 2), 2, LINKAGE_LEAKAGE).splitlines()[5]
    assert choose(settings, 2).value == 0.0


HYBRID2EMOTION_VAL = "Hybrid2Emotion/val_acc"  # what calibrating hybrid_standardised reads


def validation_metrics(validation, leakage_metric, test_side):
    """``metrics_of(beta, fold)`` for :func:`collect`: ``validation[beta]`` = (emotion, leakage),
    beside the test-side metrics ``test_side(beta, fold)``."""
    def of(beta, fold):
        utility = REFERENCE_UTILITY if beta is None else HYBRID2EMOTION_VAL
        return {utility: validation[beta][0], leakage_metric: validation[beta][1], **test_side(beta, fold)}
    return of


def test_only_validation_metrics_are_read_and_a_missing_job_is_named():
    cfg = calibrate_config("calibrate.grid=[0.3,0.8]", "calibrate.folds=[0,1]")
    validation = {None: (70.0, 99.0), 0.3: (69.0, 30.0), 0.8: (65.0, 20.0)}

    def metrics(test_side):
        return validation_metrics(validation, CLOSED_SET_LEAKAGE.metric, test_side)

    # what scrambled test labels change: every test-fold accuracy
    plain = choose(collect(cfg, metrics(lambda b, f: {"Hybrid2Emotion": 60.0, "audit/identity/max": 25.0})), 10)
    scrambled = choose(collect(cfg, metrics(lambda b, f: {"Hybrid2Emotion": 5.0 * f, "audit/identity/max": 90.0 - 40 * (b == 0.3)})), 10)
    assert plain.value == scrambled.value == 0.8
    with pytest.raises(ConfigError, match="β=0.8 fold 1 did not finish with audit/identity/max/val"):
        collect(cfg, lambda beta, fold: None if (beta, fold) == (0.8, 1) else metrics(lambda b, f: {})(beta, fold))


def test_calibrate_runs_the_grid_and_writes_the_choice(tmp_path):
    result = cli(*TINY_GRID, f"paths.output_dir={tmp_path}", module="anonemo.calibrate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| reference (Emotion CNN) | 2 |" in result.stdout and "| β=0.3 | 2 |" in result.stdout
    chosen = float(re.search(r"Chosen: β=([\d.]+?)\. ", result.stdout).group(1))
    assert f"Train with: model.beta={chosen:g} model.max_emotion_loss=null" in result.stdout
    # what it writes is an experiment config that composes to the chosen beta
    written = tmp_path / "calibration" / "calibrated_synthetic_hybrid_standardised.yaml"
    experiments = tmp_path / "conf" / "experiment"
    experiments.mkdir(parents=True)
    shutil.copy(written, experiments / written.name)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                               f"experiment={written.stem}"])
    assert (composed.model.name, composed.model.beta, composed.dataset.name) == ("hybrid_standardised", chosen,
                                                                                 "synthetic")
    assert composed.model.max_emotion_loss is None  # a calibrated beta is a fixed one
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("calibrate_synthetic").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("anonemo.calibration") == "parent"]
    assert parent.data.metrics["calibrate/beta"] == chosen
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"calibration_front.png", "calibration.md"}
    jobs = [r for r in runs if "fold" in r.data.params and r.info.status == "FINISHED"]
    assert all(r.data.params.get("model.max_emotion_loss", "None") == "None" for r in jobs)
    assert sorted((r.data.params["model.name"], r.data.params.get("model.beta")) for r in jobs) == [
        ("emotion", None), ("emotion", None), *[("hybrid_standardised", b) for b in ("0.3", "0.3", "2.0", "2.0")]]
    # the jobs are found again by their settings: what the choice was read from
    cfg = calibrate_config(*TINY_GRID, f"paths.output_dir={tmp_path}")
    shared = [*TINY_SYNTHETIC, "model.init_epochs=2", "model.rounds=2", "model.privacy.refit_epochs=2", "fresh_head.max_epochs=3",
              f"paths.output_dir={tmp_path}", "logger.experiment_name=calibrate_synthetic"]
    found = finished_metrics(shared, cfg, 0.3, 1)
    assert found is not None and HYBRID2EMOTION_VAL in found and CLOSED_SET_LEAKAGE.metric in found


def test_a_grid_of_emotion_budgets_sets_the_budget_and_a_grid_of_betas_turns_it_off():
    budgets = calibrate_config("calibrate.option=max_emotion_loss", "calibrate.grid=[1,2,5]")
    (reference, hybrids) = grid(budgets, ["dataset=yale"])
    assert hybrids == ["dataset=yale", "model=hybrid_standardised", "model.max_emotion_loss=1.0,2.0,5.0", "fold=0,1,2"]
    assert reference == ["dataset=yale", "model=emotion", "fold=0,1,2"]
    assert grid(calibrate_config(), [])[1][1:3] == ["model.beta=0.1,0.3,0.5,0.8,1.0", "model.max_emotion_loss=null"]
    settings = [Setting(None, (70.0,), (98.0,), "max_emotion_loss"), Setting(2.0, (69.0,), (30.0,), "max_emotion_loss")]
    assert settings[1].label == "E=2" and choose(settings, 10) is settings[1]
    with pytest.raises(ConfigError, match="calibrate.option=alpha is not an option the grid can set: use beta or "
                                          "max_emotion_loss"):
        check_options(calibrate_config("calibrate.option=alpha"))


def test_unseen_people_are_calibrated_on_validation_linkage():
    """Under cv.protocol=subject_disjoint the validation people were never trained on: the rule
    reads the linkage AUC, not the closed-set attackers (which such a job does not log)."""
    cfg = calibrate_config("cv.protocol=subject_disjoint", "calibrate.grid=[0.3,0.8]", "calibrate.folds=[0,1]")
    validation = {None: (70.0, 0.95), 0.3: (69.0, 0.70), 0.8: (65.0, 0.58)}
    settings = collect(cfg, validation_metrics(validation, LINKAGE_LEAKAGE.metric, lambda b, f: {}))
    chosen = choose(settings, 10)
    assert chosen.value == 0.8
    assert "| validation linkage AUC (chance 0.5) |" in table(settings, chosen, 10, LINKAGE_LEAKAGE)
    with pytest.raises(ConfigError, match="did not finish with audit/linkage/auc/val"):
        collect(cfg, validation_metrics(validation, CLOSED_SET_LEAKAGE.metric, lambda b, f: {}))


def test_beta_is_a_model_option_only():
    """β is set in one place, the model: the paper's recipe keeps its own on every dataset, the
    recommended one its own, and a dataset's calibrated value comes through an experiment config."""
    def composed(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    for dataset in ("synthetic", "yale", "jaffe", "ckplus", "folder"):
        assert "adversarial_beta" not in composed(f"dataset={dataset}").dataset
        assert composed(f"dataset={dataset}", "model=hybrid").model.beta == 1.0
        assert composed(f"dataset={dataset}", "model=hybrid_standardised").model.beta == 0.3
    yale = composed("experiment=calibrated_yale")
    assert (yale.dataset.name, yale.model.name, yale.model.beta) == ("yale", "hybrid_standardised", 0.1)
    assert composed("experiment=calibrated_yale", "model.beta=0.6").model.beta == 0.6  # the command line wins
