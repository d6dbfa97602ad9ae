"""A run killed with SIGKILL mid-adversarial-phase and started again with ``resume=true`` continues
inside the same MLflow run and ends with the metrics of an uninterrupted run."""

import logging
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from anonemo.job import run as train
from conftest import REPO, TINY_SYNTHETIC, make_config
from test_bad_input import cli

ROUNDS = 30
HYBRID = (*TINY_SYNTHETIC, "model=hybrid", "model.init_epochs=2", f"model.rounds={ROUNDS}", "threads=1",
          "trainer.enable_progress_bar=false", "trainer.precision=32-true")
RESULTS = ("Hybrid2Emotion", "Hybrid2Face", "Hybrid/emotion_head", "Hybrid/identity_head", "audit/identity/max",
           "audit/emotion/max", "audit/emotion_output/identity/max", "Hybrid2Emotion/val_acc")


def only_run(output_dir):
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    return run


def kill_during_round(output_dir, round_):
    """Start the job and SIGKILL it once it logs the end of ``round_``: mid-adversarial phase."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    job = subprocess.Popen([sys.executable, "-m", "anonemo.train", *HYBRID, f"paths.output_dir={output_dir}"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in job.stdout:
        seen.append(line)
        if f"round {round_}/{ROUNDS}:" in line:
            job.kill()
            break
    job.wait(timeout=60)
    assert job.returncode == -9, "".join(seen[-30:])


def test_a_killed_hybrid_resumes_to_the_uninterrupted_metrics(tmp_path, caplog):
    straight = cli(*HYBRID, f"paths.output_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = only_run(tmp_path / "straight").data.metrics

    killed_dir = tmp_path / "killed"
    kill_during_round(killed_dir, 3)
    killed = only_run(killed_dir)
    assert killed.info.status == "RUNNING"  # what SIGKILL leaves behind
    assert (killed_dir / "checkpoints" / killed.info.run_id / "hybrid" / "last.ckpt").exists()
    assert "Hybrid2Emotion" not in killed.data.metrics

    resumed = cli(*HYBRID, f"paths.output_dir={killed_dir}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resume: continuing run {killed.info.run_id} (RUNNING)" in resumed.stdout
    assert "Resume: continuing from" in resumed.stdout
    run = only_run(killed_dir)  # the same run, not a second one
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["anonemo.resumed"] == "1"
    assert {k: run.data.metrics[k] for k in RESULTS} == {k: expected[k] for k in RESULTS}
    rounds = [m.step for m in MlflowClient(f"sqlite:///{killed_dir / 'mlflow.db'}").get_metric_history(
        run.info.run_id, "round/emotion_acc/val")]
    assert set(rounds) == set(range(ROUNDS + 1))

    # Resuming a finished job is answered from its run, without training (in-process: a CLI start costs ~12 s).
    with caplog.at_level(logging.INFO, logger="anonemo.job"):
        again = train(make_config(killed_dir, *HYBRID, "resume=true"))
    assert f"run {run.info.run_id} with the same settings FINISHED already (resume)" in caplog.text
    assert again == run.data.metrics and len(MlflowClient(f"sqlite:///{killed_dir / 'mlflow.db'}").search_runs(
        [run.info.experiment_id])) == 1
