"""End-to-end jobs: training, selection on validation, one test-fold evaluation, MLflow contract."""

import logging

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from anonemo.tracking.store import tracking_uri
from anonemo.data.pipeline import fold_data
from anonemo.job import run
from anonemo.summary import result_summary


def only_run(cfg):
    client = MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_emotion_run_logs_the_mlflow_contract(tiny_config, caplog):
    cfg = tiny_config("model=emotion", "fold=2", "seed=3")
    with caplog.at_level(logging.INFO, logger="anonemo.job"):
        metrics = run(cfg)
    # the job ends with its headline numbers, each beside its chance level, on one screen
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Results of")]
    assert summary.startswith("Results of emotion on synthetic fold 2 (test fold; accuracies in %, AUC and EER as fractions):")
    assert ["Emotion", f"{metrics['Emotion']:.1f}", "chance", "33.3"] in [line.split() for line in summary.splitlines()]
    assert "identity, strongest attacker" in summary and len(summary.splitlines()) <= 15
    assert ["linkage,", "same-person", "AUC", f"{metrics['audit/linkage/auc']:.2f}", "chance", "0.50"] in [
        line.split() for line in summary.splitlines()]
    client, logged = only_run(cfg)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["Emotion"] == pytest.approx(metrics["Emotion"])
    assert 0 <= logged.data.metrics["Emotion"] <= 100
    assert logged.data.metrics["Emotion/chance"] == pytest.approx(100 / 3)
    assert "Emotion/macro_f1" in logged.data.metrics and "Face" not in logged.data.metrics
    assert len(client.get_metric_history(logged.info.run_id, "val/acc")) == 2  # one value per epoch
    params = logged.data.params
    assert (params["fold"], params["model.name"], params["seed"], params["dataset.name"]) == ("2", "emotion", "3", "synthetic")
    assert params["trainer.precision"] == "32-true" and params["network.conv_channels"] == "[16, 32, 64]"
    assert logged.data.tags["dataset"] == "synthetic"
    assert logged.data.tags["mlflow.runName"] == "emotion-synthetic-fold2"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "confusion_Emotion.png", "model"} <= artifacts
    assert tracking_uri(cfg).startswith("sqlite:////")
    # where the wall time went: every phase measured, together no more than the whole
    m = logged.data.metrics
    phases = [m[f"time/{p}_s"] for p in ("data", "base_training", "frozen_base", "evaluation")]
    assert all(t > 0 for t in phases) and m["time/other_s"] >= 0
    assert sum(phases) + m["time/other_s"] == pytest.approx(m["wall_time_s"])
    assert m["time/outside_base_training_share"] == pytest.approx(1 - m["time/base_training_s"] / m["wall_time_s"])


def test_same_config_gives_same_folds_and_accuracies(tiny_config, tmp_path):
    cfg = tiny_config("model=face")
    first, second = run(cfg), run(cfg)
    for name in ("Face", "Face/macro_f1"):
        assert first[name] == second[name]
    a, b = fold_data(cfg).split, fold_data(cfg).split
    assert all(np.array_equal(getattr(a, s), getattr(b, s)) for s in ("train", "val", "test"))


def test_face_on_real_yale_faces(yale_root, tmp_path):
    from conftest import make_config

    cfg = make_config(
        tmp_path, "dataset=yale", f"dataset.root={yale_root}", "model=face", "dataset.image_size=32",
        "augment.total=300", "trainer.max_epochs=2", "fold=4",
    )
    metrics = run(cfg)
    _, logged = only_run(cfg)
    assert logged.data.metrics["Face/chance"] == pytest.approx(100 / 15)
    assert logged.data.metrics["Face"] == pytest.approx(metrics["Face"])
    assert logged.data.params["dataset.root"] == str(yale_root)


def test_default_synthetic_emotion_is_not_solved_in_one_epoch(tmp_path):
    """The built-in data must be hard enough to be a benchmark."""
    from conftest import make_config

    cfg = make_config(tmp_path, "trainer.max_epochs=1", "audit.enabled=false")
    metrics = run(cfg)
    assert metrics["Emotion"] < 90
    assert not any(name.startswith("audit/") for name in metrics)


def test_jobs_in_one_process_each_use_their_own_store(tiny_config, tmp_path, monkeypatch):
    """Lightning's MLflow logger sets MLFLOW_TRACKING_URI process-wide; it must not leak."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tiny_config("paths.output_dir=" + str(tmp_path / "a"))
    second = tiny_config("paths.output_dir=" + str(tmp_path / "b"))
    run(first)
    run(second)
    only_run(first)
    only_run(second)


def test_tracking_uri_precedence(tiny_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tiny_config()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/env.db")
    assert tracking_uri(tiny_config()) == "sqlite:////elsewhere/env.db"
    assert tracking_uri(tiny_config("logger.tracking_uri=sqlite:////x/cli.db")) == "sqlite:////x/cli.db"


def test_result_summary_marks_an_audit_below_chance():
    summary = result_summary("hybrid on yale fold 0", {
        "Hybrid2Emotion": 50.0, "Hybrid2Emotion/chance": 25.0, "audit/identity/max": 0.0,
        "audit/identity/chance": 100 / 15, "wall_time_s": 12.0,
    }, ["Hybrid2Emotion", "Hybrid2Face"])
    lines = summary.splitlines()
    assert lines[1].split() == ["Hybrid2Emotion", "50.0", "chance", "25.0"]
    assert lines[2].endswith("below chance (docs/audit.md)") and "0.0" in lines[2]
    assert lines[-1] == "  wall time 12 s"
