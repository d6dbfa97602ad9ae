"""Sweeps (Hydra multirun with parent runs, joblib, submitit, optuna) and the report."""

import base64
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SYNTHETIC, WORKER_THREADS
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from rich.console import Console
from test_bad_input import cli

from anonemo.report.collect import collect_groups, settings_labels
from anonemo.report.render import BELOW_CHANCE_NOTE, build_report, print_tables, tradeoff_figure
from anonemo.report.sweep_summary import fold_means
from anonemo.tracking.links import HEADLINE_VIEW_TAG
from anonemo.tracking.store import ensure_experiment, tracking_uri
from anonemo.job import run

TINY_JOB = (*TINY_SYNTHETIC, "trainer.enable_progress_bar=false")


def make_run(client, experiment_id, params, metrics, status="FINISHED", tags=None):
    run = client.create_run(experiment_id, tags=tags or {})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.create_experiment("yale", artifact_location=(tmp_path / "artifacts").as_uri())


def test_report_groups_by_everything_but_the_fold(store, tmp_path):
    client, experiment = store
    common = {"dataset.name": "yale", "seed": "0", "paths.output_dir": "/somewhere"}
    face = [100.0, 90.0, 95.0]
    for fold, value in enumerate(face):
        make_run(client, experiment, {**common, "model.name": "face", "fold": fold}, {"Face": value, "Face/chance": 100 / 15})
    audit_chance = {"audit/identity/chance": 100 / 15, "audit/emotion/chance": 25.0}
    for fold in range(2):
        make_run(client, experiment, {**common, "model.name": "emotion", "fold": fold},
                 {"Emotion": 50.0, "audit/identity/max": 90.0, "audit/emotion/max": 55.0, **audit_chance})
    for beta, h2e in (("1.0", [40.0, 50.0]), ("0.5", [60.0, 70.0])):
        for fold, value in enumerate(h2e):
            make_run(client, experiment, {**common, "model.name": "hybrid", "model.beta": beta, "fold": fold},
                     {"Hybrid2Emotion": value, "Hybrid2Face": 10.0 + fold, "Hybrid2Emotion/chance": 25.0,
                      "audit/identity/max": 20.0, "audit/emotion/max": 50.0, **audit_chance,
                      # the gallery's chance is per fold; NaN: no test subject in that fold's gallery
                      "audit/identity/gallery": 30.0 if beta == "0.5" or fold == 0 else float("nan"),
                      "audit/identity/gallery/chance": 20.0 if fold == 0 else 25.0,
                      # the permutation null, where it was run (audit.null_permutations > 0)
                      **({"audit/identity/max/null": 11.0 + fold} if beta == "0.5" else {}),
                      # identity read off the emotion head's output (audit.emotion_output)
                      "audit/emotion_output/identity/max": 15.0 + 2 * fold,
                      "audit/emotion_output/identity/chance": 100 / 15,
                      # the strongest attacker on the validation side, to choose settings by
                      "audit/identity/max/val": 25.0 + fold})
    # not reported: a failed run, a sweep parent, and an older duplicate of face fold 0
    make_run(client, experiment, {**common, "model.name": "face", "fold": 5}, {"Face": 0.0}, status="FAILED")
    make_run(client, experiment, {}, {}, tags={"anonemo.sweep": "parent"})
    groups = collect_groups(client, [experiment])
    assert [(g.model, g.params.get("model.beta")) for g in groups] == [
        ("face", None), ("emotion", None), ("hybrid", "0.5"), ("hybrid", "1.0")
    ]
    assert groups[0].summary("Face") == pytest.approx((95.0, statistics.stdev(face), 3))
    assert groups[3].summary("Hybrid2Emotion") == pytest.approx((45.0, statistics.stdev([40.0, 50.0]), 2))
    assert groups[1].summary("Face") is None

    tables, files = build_report(client, [experiment], "", tmp_path / "report")
    rows = {(row[0], row[1]): row for row in tables["yale"].rows}
    assert rows[("face", "")][2] == "95.00 ± 5.00 (3)"
    assert rows[("hybrid", "model.beta=0.5")][5] == "65.00 ± 7.07 (2)"
    assert rows[("paper (Narula et al. 2020)", "")][2:7] == ["87.96", "44.61", "78.44", "49.12", "1.00"]
    assert rows[("chance", "")][2] == "6.67" and rows[("chance", "")][5] == "25.00" and rows[("chance", "")][9] == "6.67"
    # anonymity: 1 - (20 - 6.67) / (90 - 6.67) against the Emotion base's leakage
    assert rows[("hybrid", "model.beta=0.5")][7:9] == ["", ""]  # no erasure: no Erased2Emotion, Erased2Face
    assert rows[("hybrid", "model.beta=0.5")][9:] == [
        "20.00 ± 0.00 (2)", "11.50 ± 0.71 (2)", "50.00 ± 0.00 (2)", "30.00 ± 0.00 (2)", "16.00 ± 1.41 (2)",
        "25.50 ± 0.71 (2)", "", "", "", "0.84"
    ]
    assert rows[("hybrid", "model.beta=1.0")][10] == "" and rows[("hybrid", "model.beta=1.0")][12] == "30.00 (1)"
    assert rows[("chance", "")][10] == "" and rows[("chance", "")][12] == "22.50" and rows[("chance", "")][13] == "6.67"
    assert rows[("emotion", "")][18] == "0.00" and rows[("emotion", "")][14] == ""
    names = {f.name for f in files}
    assert {"report.md", "report.csv", "tradeoff_yale.png"} <= names
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| hybrid | model.beta=1.0 |  |  |  | 45.00 ± 7.07 (2) | 10.50 ± 0.71 (2) |  |  | 20.00 ± 0.00 (2) |  |" in markdown
    assert "| audit identity max | audit identity max null | audit emotion max | audit identity gallery | " \
           "audit emotion_output identity max | audit identity max val | audit linkage auc | audit linkage eer | " \
           "audit linkage rank1 | anonymity |" in markdown
    csv_lines = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("experiment,dataset,model,settings,folds,Face_mean")
    assert len(csv_lines) == 5 and csv_lines[0].endswith(",anonymity")
    # on an 80-column terminal every cell stays on one line, beside its column's name
    for width, layout in ((80, "blocks"), (400, "table")):
        console = Console(width=width, record=True, file=io.StringIO())
        print_tables(tables, console)
        shown = console.export_text()
        assert max(len(line) for line in shown.splitlines()) <= width
        assert all(cell in shown for row in tables["yale"].rows for cell in row)
        assert ("  Hybrid2Emotion" in shown and "65.00 ± 7.07 (2)" in shown) if layout == "blocks" else "┃ model" in shown


def test_report_draws_the_front_across_experiments(store, tmp_path):
    """Settings swept as separate experiments (one per beta) share one trade-off figure per dataset."""
    client, first = store
    second = client.create_experiment("yale_beta08", artifact_location=(tmp_path / "artifacts2").as_uri())
    common = {"dataset.name": "yale", "model.name": "hybrid_standardised"}
    for experiment, beta, h2e in ((first, "0.3", 50.0), (second, "0.8", 40.0)):
        for fold in range(2):
            make_run(client, experiment, {**common, "model.beta": beta, "fold": fold},
                     {"Hybrid2Emotion": h2e, "Hybrid2Face": 10.0, "audit/identity/max": 30.0 - 10 * (beta == "0.8")})
    make_run(client, first, {"dataset.name": "yale", "model.name": "emotion2face", "fold": 0},
             {"Emotion": 45.0, "audit/identity/max": 90.0})
    groups = collect_groups(client, [first, second])
    figure = tradeoff_figure(groups, "front", by_experiment=True)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    # each point named with its experiment and (leakage, utility)
    assert "yale: hybrid_standardised (2 folds): 30.0, 50.0" in legend
    assert "yale_beta08: hybrid_standardised (2 folds): 20.0, 40.0" in legend
    assert "Emotion CNN's base, strongest attacker 90.0" in legend
    _, files = build_report(client, [first, second], "", tmp_path / "report")
    assert {"tradeoff_yale.png", "tradeoff_yale_beta08.png", "front_yale.png"} <= {f.name for f in files}
    _, files = build_report(client, [first], "", tmp_path / "one")
    assert "front_yale.png" not in {f.name for f in files}  # one experiment: its own figure is the front
    assert "tradeoff_linkage_yale.png" not in {f.name for f in files}  # no run logged the linkage audit


def test_erased_bases_stand_on_the_front_beside_the_hybrids(store, tmp_path):
    client, experiment = store
    for model, utility in (("hybrid_standardised", "Hybrid2Emotion"), ("emotion_leace", "Erased2Emotion")):
        for fold in range(2):
            make_run(client, experiment, {"dataset.name": "yale", "model.name": model, "fold": fold},
                     {utility: 60.0 + 10 * (model == "emotion_leace"), "audit/identity/max": 20.0 + 5 * fold})
    figure = tradeoff_figure(collect_groups(client, [experiment]), "front")
    points = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in figure.axes[0].lines if line.get_marker() == "o")
    assert points == [(22.5, 60.0), (22.5, 70.0)]
    tables, _ = build_report(client, [experiment], "", tmp_path / "report")
    (leace,) = [row for row in tables["yale"].rows if row[0] == "emotion_leace"]
    assert leace[tables["yale"].header.index("Erased2Emotion")] == "70.00 ± 0.00 (2)"


def test_a_recipes_declared_metric_gets_a_report_column_and_a_fold_mean(store, tmp_path):
    """A model metric no list here names (a new recipe's fresh head) reaches the report and the
    sweep's fold means through the runs' anonemo.headline tag."""
    client, experiment = store
    for fold, value in enumerate((60.0, 70.0)):
        make_run(client, experiment, {"dataset.name": "yale", "model.name": "toy", "fold": fold},
                 {"Toy2Emotion": value, "audit/identity/max": 10.0}, tags={"anonemo.headline": "Toy2Emotion"})
    tables, files = build_report(client, [experiment], "", tmp_path / "report")
    (row,) = [r for r in tables["yale"].rows if r[0] == "toy"]
    assert row[tables["yale"].header.index("Toy2Emotion")] == "65.00 ± 7.07 (2)"
    assert "Toy2Emotion_mean" in (tmp_path / "report" / "report.csv").read_text()
    assert fold_means(collect_groups(client, [experiment]))["Toy2Emotion/mean"] == 65.0


def test_the_ui_headline_view_gains_each_jobs_declared_metrics_and_keeps_the_others(tmp_path):
    """The runs table's saved view (anonemo.tracking.links) shows what the jobs' recipes declare:
    a toy recipe's metric joins the columns, and a later job of another model keeps them."""
    cfg = OmegaConf.create({"logger": {"experiment_name": "mixed", "artifact_location": str(tmp_path / "artifacts")}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    for model_metrics in (["Toy2Emotion"], ["Hybrid/emotion_head", "Hybrid2Emotion"], []):
        experiment_id = ensure_experiment(client, cfg, uri, model_metrics)
    view = json.loads(client.get_experiment(experiment_id).tags[HEADLINE_VIEW_TAG])
    assert view["selectedColumns"] == [
        "metrics.`Toy2Emotion`", "metrics.`Toy2Emotion/mean`", "metrics.`audit/identity/max`",
        "metrics.`audit/identity/max/mean`", "metrics.`audit/linkage/auc`", "metrics.`audit/linkage/auc/mean`",
        "metrics.`Hybrid/emotion_head`", "metrics.`Hybrid/emotion_head/mean`", "metrics.`Hybrid2Emotion`",
        "metrics.`Hybrid2Emotion/mean`", "attributes.`Duration`"]


def test_groups_are_labelled_by_the_settings_a_command_line_chose(store):
    """An erasure is named as `erasure=inlp` chose it (not by its class path), its absence as
    `erasure=none`, and the options of an absent erasure are left out."""
    client, experiment = store
    inlp = {"erasure._target_": "anonemo.erasure.Inlp", "erasure.max_iterations": "30"}
    for params in ({}, inlp, {**inlp, "erasure.max_iterations": "100"}):
        make_run(client, experiment, {"model.name": "hybrid_standardised", "fold": 0, **params}, {"Hybrid2Emotion": 60.0})
    groups = collect_groups(client, [experiment])
    assert sorted(settings_labels(groups).values()) == [
        "erasure=inlp erasure.max_iterations=100", "erasure=inlp erasure.max_iterations=30", "erasure=none"]


def test_report_draws_the_linkage_front(store, tmp_path):
    """Runs on unseen people (cv.protocol=subject_disjoint) log no closed-set identity metric: the
    linkage front is drawn from their linkage AUC alone."""
    client, experiment = store
    for fold in range(2):
        make_run(client, experiment, {"dataset.name": "yale", "model.name": "hybrid_standardised", "fold": fold},
                 {"Hybrid2Emotion": 50.0, "audit/linkage/auc": 0.55 + 0.1 * fold, "audit/linkage/auc/chance": 0.5})
    make_run(client, experiment, {"dataset.name": "yale", "model.name": "emotion", "fold": 0},
             {"Emotion": 45.0, "audit/linkage/auc": 0.9})
    figure = tradeoff_figure(collect_groups(client, [experiment]), "t", leakage="audit/linkage/auc")
    axes = figure.axes[0]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert "Emotion CNN's base, audit/linkage/auc 0.90" in legend and "chance (audit/linkage/auc) 0.50" in legend
    assert "ROC-AUC" in axes.get_xlabel() and axes.get_xlim() == (-0.02, 1.02)
    (point,) = [line for line in axes.lines if line.get_marker() == "o"]
    assert point.get_xdata()[0] == pytest.approx(0.6)  # the mean over folds
    _, files = build_report(client, [experiment], "", tmp_path / "report")
    assert "tradeoff_linkage_yale.png" in {f.name for f in files}


def test_below_chance_is_marked_and_not_read_as_privacy(store, tmp_path):
    """An attacker below chance still tells people apart (the wrong way round): the cell says on
    how many folds, the anonymity score counts the distance from chance, the figure's point is
    labelled and hollow."""
    client, experiment = store
    chance = {"audit/identity/chance": 100 / 15}
    for fold, leakage in enumerate([0.0, 40 / 3]):  # fold 0 below chance, fold 1 as far above
        make_run(client, experiment, {"dataset.name": "yale", "model.name": "hybrid_standardised", "fold": fold},
                 {"Hybrid2Emotion": 50.0, "Hybrid2Face": 5.0, "audit/identity/max": leakage, **chance})
    make_run(client, experiment, {"dataset.name": "yale", "model.name": "emotion2face", "fold": 0},
             {"Emotion": 45.0, "audit/identity/max": 90.0, **chance})
    tables, _ = build_report(client, [experiment], "", tmp_path / "report")
    row = next(r for r in tables["yale"].rows if r[0] == "hybrid_standardised")
    assert row[tables["yale"].header.index("audit identity max")] == "6.67 ± 9.43 (2, 1↓)"
    assert row[-1] == f"{1 - (20 / 3) / (90 - 20 / 3):.2f}" == "0.92"  # not 1.00, as the mean alone would say
    assert BELOW_CHANCE_NOTE in (tmp_path / "report" / "report.md").read_text()
    figure = tradeoff_figure(collect_groups(client, [experiment]), "t")
    assert any("1 below chance" in text.get_text() for text in figure.axes[0].texts)


def test_settings_that_do_not_change_results_do_not_split_groups(store):
    client, experiment = store
    base = {"dataset.name": "yale", "model.name": "emotion"}
    make_run(client, experiment, {**base, "fold": 0, "threads": "1", "paths.output_dir": "/a"}, {"Emotion": 40.0})
    make_run(client, experiment, {**base, "fold": 1, "audit.enabled": "True", "logger.run_name": "x"}, {"Emotion": 60.0})
    make_run(client, experiment, {**base, "fold": 2, "seed": "1"}, {"Emotion": 10.0})  # a different seed is a different setting
    # the same setting logged before loaders read the dataset's keys (a dataset.source node), and after
    make_run(client, experiment, {**base, "fold": 3, "dataset.source._target_": "anonemo.data.yale.YaleFaces"}, {"Emotion": 50.0})
    make_run(client, experiment, {**base, "fold": 4, "dataset.loader": "anonemo.data.yale.YaleFaces"}, {"Emotion": 30.0})
    groups = collect_groups(client, [experiment])
    assert sorted(g.summary("Emotion")[2] for g in groups) == [1, 4]


def test_a_parent_of_several_configurations_names_each_configurations_fold_means(store):
    client, experiment = store
    for beta, values in (("0.3", (50.0, 70.0)), ("0.8", (40.0, 44.0))):
        for fold, value in enumerate(values):
            make_run(client, experiment, {"dataset.name": "yale", "model.name": "hybrid_standardised", "model.beta": beta,
                                          "fold": fold}, {"Hybrid2Emotion": value, "wall_time_s": 100.0})
    means = fold_means(collect_groups(client, [experiment]))
    assert means["hybrid_standardised model.beta:0.3/Hybrid2Emotion/mean"] == 60.0
    assert means["hybrid_standardised model.beta:0.8/Hybrid2Emotion/std"] == pytest.approx(statistics.stdev([40.0, 44.0]))
    assert means["hybrid_standardised model.beta:0.8/wall_time_s/n"] == 2
    assert not any("Emotion2Face" in key for key in means)  # only what the jobs logged


def test_latest_run_of_a_fold_wins(store):
    client, experiment = store
    params = {"dataset.name": "yale", "model.name": "face", "fold": 0}
    make_run(client, experiment, params, {"Face": 10.0})
    make_run(client, experiment, params, {"Face": 90.0})
    (group,) = collect_groups(client, [experiment])
    assert group.summary("Face") == (90.0, 0.0, 1)


def runs_of(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("anonemo.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("anonemo.sweep") != "parent"]
    return client, parents, children


def test_parallel_sweep_records_every_job_and_survives_a_failing_one(tmp_path):
    """joblib, 2 jobs at a time on one fresh SQLite store; fold 9 of 4 fails, the others finish."""
    result = cli("-m", *TINY_JOB, f"paths.output_dir={tmp_path}", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", "fold=0,1,9")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "fold=9 is out of range for cv.n_splits=4" in result.stderr
    client, (parent,), children = runs_of(tmp_path)
    by_fold = {r.data.tags["override.fold"]: r for r in children}
    assert {fold: r.info.status for fold, r in by_fold.items()} == {"0": "FINISHED", "1": "FINISHED", "9": "FAILED"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all("Emotion" in by_fold[f].data.metrics and "Emotion/macro_f1" in by_fold[f].data.metrics for f in "01")
    assert "ConfigError" in by_fold["9"].data.tags["error"]
    # two jobs share the cores: each gets its half of the threads
    assert by_fold["0"].data.tags["torch_threads"] == str(max(1, os.cpu_count() // 2))
    assert parent.info.status == "FAILED"
    assert (parent.data.tags["sweep.jobs_finished"], parent.data.tags["sweep.jobs_failed"]) == ("2", "1")
    assert "fold=0,1,9" in parent.data.tags["sweep.overrides"]
    # the parent sums up the folds that finished, where the UI can sort them, and keeps the report
    emotion = [by_fold[f].data.metrics["Emotion"] for f in "01"]
    assert parent.data.metrics["Emotion/mean"] == pytest.approx(statistics.fmean(emotion))
    assert parent.data.metrics["Emotion/std"] == pytest.approx(statistics.stdev(emotion))
    assert parent.data.metrics["Emotion/n"] == 2 and parent.data.metrics["audit/identity/max/n"] == 2
    assert {"report/report.md", "report/report.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    link = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert link in result.stdout  # the sweep's last words

    report = cli(f"parent_run={parent.info.run_id}", f"paths.output_dir={tmp_path}", f"output_dir={tmp_path}/report",
                 module="anonemo.report")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "(2)" in report.stdout  # the two finished folds, averaged
    assert report.stdout.rstrip().endswith(f"The sweep's parent run, with the fold means: http://127.0.0.1:5000/{link}")


def test_submitit_local_launcher_runs_a_job(tmp_path):
    result = cli("-m", *TINY_JOB, f"paths.output_dir={tmp_path}", "hydra/launcher=submitit_local", "fold=2")
    assert result.returncode == 0, result.stderr[-2000:]
    _, (parent,), (child,) = runs_of(tmp_path)
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_optuna_search_optimises_a_validation_objective(tmp_path):
    result = cli("-m", "hparams_search=hybrid_optuna", *TINY_JOB, "model.init_epochs=1", "fresh_head.max_epochs=2",
                 f"paths.output_dir={tmp_path}", "hydra.sweeper.n_trials=2", "model.rounds=range(1,2)")
    assert result.returncode == 0, result.stderr[-2000:]
    (results,) = (tmp_path / "multirun").glob("*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert set(best["best_params"]) == {"model.beta", "model.rounds"}
    _, _, children = runs_of(tmp_path)
    assert len(children) == 2
    objectives = []
    for child in children:  # the objective reads validation numbers, logged beside the test ones
        metrics = child.data.metrics
        assert {"Hybrid2Emotion/val_acc", "audit/identity/max/val", "Hybrid2Emotion"} <= set(metrics)
        # the objective: validation emotion, 2 points off per point the strongest attacker reads over 20%
        objectives.append(metrics["Hybrid2Emotion/val_acc"] - 2.0 * max(0.0, metrics["audit/identity/max/val"] - 20.0))
    assert best["best_value"] == pytest.approx(max(objectives), abs=1e-3)


def test_relaunch_skips_finished_jobs_and_redoes_the_others(tiny_config):
    """sweep.skip_finished: the same job (settings and fold) is not trained twice; a changed
    setting, another fold, or a run that did not finish is trained again."""
    first = run(tiny_config("model=emotion", "fold=0"))
    client = MlflowClient(tracking_uri(tiny_config()))
    experiment_id = client.get_experiment_by_name("synthetic").experiment_id

    def runs():
        return client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])

    # torch threads change how fast a job runs, not what it is
    again = run(tiny_config("model=emotion", "fold=0", "sweep.skip_finished=true", f"threads={WORKER_THREADS + 1}"))
    assert len(runs()) == 1 and again["Emotion"] == first["Emotion"]
    run(tiny_config("model=emotion", "fold=1", "sweep.skip_finished=true"))
    run(tiny_config("model=emotion", "fold=0", "model.optimizer.lr=0.01", "sweep.skip_finished=true"))
    assert len(runs()) == 3
    client.set_terminated(runs()[1].info.run_id, "FAILED")  # fold 1 crashed: it is redone
    run(tiny_config("model=emotion", "fold=1", "sweep.skip_finished=true"))
    assert [r.data.tags["fold"] for r in runs()] == ["0", "1", "0", "1"]
    assert runs()[-1].info.status == "FINISHED"


def test_report_names_an_unknown_experiment(tmp_path):
    # a list of experiments: the one that is not in the store is named (MLflow creates "Default")
    result = cli("experiment_name=[Default,nope]", f"paths.output_dir={tmp_path}", module="anonemo.report")
    assert result.returncode == 2
    assert "experiment_name=nope is not in sqlite:///" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())  # no empty report folder


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_service(arguments, log_path, env=None):
    """``python -m mlflow <arguments>`` on a free local port, as `make ui` starts it (no server-side
    job runner), until it answers; yields its address, then stops its process group."""
    port = free_port()
    with log_path.open("w") as log:  # a file, not a pipe: an unread pipe would block the server
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", *arguments, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # `mlflow ui` starts `uvicorn` by name: the environment's bin folder goes on PATH
            env={**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                 "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"})
        try:
            deadline = time.monotonic() + 120
            while not answers(f"http://127.0.0.1:{port}/health"):
                assert server.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, f"mlflow {arguments[0]} did not answer within 120 s"
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def test_parallel_sweep_against_a_real_tracking_server(tmp_path):
    """The documented path to many machines: jobs log to `mlflow server` (database backend,
    proxied artifacts) instead of a local file; 4 jobs, 2 at a time, then the server is stopped."""
    with mlflow_service(["server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                         str(tmp_path / "server_artifacts"), "--workers", "1"], tmp_path / "server.log") as address:
        uri = address.rstrip("/")
        result = cli("-m", *TINY_JOB, f"paths.output_dir={tmp_path}/jobs", f"logger.tracking_uri={uri}",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "fold=0,1,2,3")
        assert result.returncode == 0, result.stderr[-2000:]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("anonemo.sweep") == "parent"]
        children = [r for r in runs if r.data.tags.get("anonemo.sweep") != "parent"]
        assert sorted(r.data.tags["override.fold"] for r in children) == ["0", "1", "2", "3"]
        assert all(r.info.status == "FINISHED" and "Emotion" in r.data.metrics for r in children)
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
        assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs_finished"] == "4"
        # the artifacts went through the server to its store, and nothing was written locally
        assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"config.yaml", "model"}
        assert any((tmp_path / "server_artifacts").rglob("conv_base.pt"))
        assert not (tmp_path / "jobs" / "mlflow.db").exists()
    assert not answers(f"{uri}/health")


def test_a_server_with_authentication_takes_credentials_from_the_environment_and_logs_none(tmp_path, monkeypatch):
    """docs/tracking.md's shared server: MLflow's basic-auth app, users without permissions on
    others' experiments. A job without credentials is refused before any work with where they go; with
    them (in the environment) it logs, and the password is in none of its params, tags or config."""
    admin_password, password = "admin-Pw-7c1e", "alice-Pw-93fd"
    (tmp_path / "auth.ini").write_text(
        f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{tmp_path}/users.db\n"
        f"admin_username = admin\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server_env = {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"}
    with mlflow_service(["server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                        tmp_path / "server.log", server_env) as address:
        uri = address.rstrip("/")
        for user in ("alice", "bob"):
            request = urllib.request.Request(
                f"{uri}/api/2.0/mlflow/users/create", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"username": user, "password": password}).encode())
            request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(
                f"admin:{admin_password}".encode()).decode())
            urllib.request.urlopen(request, timeout=30).close()
        job = (*TINY_JOB, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}/jobs", f"logger.tracking_uri={uri}")
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(variable, raising=False)
        refused = cli(*job)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "refuses this client (401" in refused.stderr and "MLFLOW_TRACKING_USERNAME" in refused.stderr
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        logged = cli(*job)
        assert logged.returncode == 0, logged.stderr[-2000:]
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
        assert run.info.status == "FINISHED"
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        logged_text = json.dumps([run.data.params, run.data.tags]) + Path(config).read_text() + logged.stdout + logged.stderr
        assert password not in logged_text
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")  # another user reads nothing of alice's
        with pytest.raises(Exception, match="PERMISSION_DENIED|Permission denied"):
            MlflowClient(uri).get_run(run.info.run_id)
