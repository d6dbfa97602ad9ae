"""``python -m anonemo.calibrate dataset=... [model=hybrid_standardised] [calibrate.option=beta]
[calibrate.grid=[...]] [calibrate.folds=[...]]``: choose the Hybrid's β (or, with
``calibrate.option=max_emotion_loss``, its emotion budget) for a dataset from validation sides only.

Runs the grid as two sweeps of ordinary jobs (with the launcher given, e.g.
``hydra/launcher=joblib``), then applies the rule of :mod:`anonemo.calibration`, prints the table
it chose from and the override to train with, writes it under ``outputs/calibration/`` and logs a
calibration run with the validation front.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from anonemo.calibration import (OPTIONS, Setting, check_options, choose, collect, float_value, front_figure, grid,
                                 grid_job_overrides, leakage_measure, table)
from anonemo.cli import CONF, check_override_keys, user_errors_reported
from anonemo.data.check import check_job_data

log = logging.getLogger(__name__)

# The grid sets these itself; the user's other overrides (dataset, sizes, seed) go to every job.
SET_BY_THE_GRID = ("model=", *(f"model.{option}=" for option in OPTIONS), "fold=", "calibrate.",
                   "logger.experiment_name=")


@hydra.main(version_base="1.3", config_path="../conf", config_name="calibrate")
def main(cfg: DictConfig) -> None:
    with user_errors_reported(discard_run_dir=True):  # before any job: a mistake leaves nothing behind
        check_options(cfg)
        check_job_data(cfg)
    with user_errors_reported():
        overrides = HydraConfig.get().overrides
        shared = [o for o in overrides.task if not o.startswith(SET_BY_THE_GRID)]
        shared.append(f"logger.experiment_name={cfg.logger.experiment_name}")
        launcher = [o for o in overrides.hydra if o.startswith(("hydra/launcher", "hydra.launcher"))]
        for sweep in grid(cfg, shared):
            command = [sys.executable, "-m", "anonemo.train", "-m", *launcher, *sweep,
                       "sweep.skip_finished=true", "trainer.enable_progress_bar=false"]
            log.info("Calibration sweep: %s", " ".join(command[3:]))
            subprocess.run(command, check=False)  # a failed job is named by collect() below
        report(cfg, collect(cfg, lambda value, fold: finished_metrics(shared, cfg, value, fold)))


def finished_metrics(shared: list[str], cfg: DictConfig, value: float | None, fold: int) -> dict[str, float] | None:
    """The metrics of the FINISHED run of one grid job, found by its config hash."""
    from anonemo.tracking.job_key import finished_run

    overrides = grid_job_overrides(cfg, shared, None if value is None else float_value(value), str(fold))
    if GlobalHydra.instance().is_initialized():  # inside this command: its conf/ is Hydra's
        job = compose("train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            job = compose("train", overrides=overrides)
    run = finished_run(job)
    return None if run is None else dict(run.data.metrics)


def report(cfg: DictConfig, settings: list[Setting]) -> None:
    """Print, write and log the choice."""
    # MLflow and matplotlib are imported here, after the checks: a mistaken option is answered first.
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    from anonemo.tracking.store import ensure_experiment, tracking_uri

    chosen = choose(settings, cfg.calibrate.max_emotion_loss)
    leakage = leakage_measure(cfg)
    rows = table(settings, chosen, cfg.calibrate.max_emotion_loss, leakage)
    option = cfg.calibrate.option
    # a calibrated beta is a fixed one: the emotion budget is off
    setting = {option: f"{chosen.value:g}"} | ({"max_emotion_loss": "null"} if option == "beta" else {})
    override = " ".join(f"model.{key}={value}" for key, value in setting.items())
    folder = Path(cfg.paths.output_dir) / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    # an experiment config: copied into conf/experiment/, experiment=<its name> applies the choice
    written = folder / f"calibrated_{cfg.dataset.name}_{cfg.model.name}.yaml"
    written.write_text(
        f"# @package _global_\n# python -m anonemo.calibrate on the validation sides of folds "
        f"{list(cfg.calibrate.folds)}; train with\n"
        f"#   python -m anonemo.train dataset={cfg.dataset.name} model={cfg.model.name} {override}\n"
        f"defaults:\n  - override /dataset: {cfg.dataset.name}\n  - override /model: {cfg.model.name}\n\n"
        "model:\n" + "".join(f"  {key}: {value}\n" for key, value in setting.items())
    )
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    run = client.create_run(ensure_experiment(client, cfg, uri), run_name=f"calibrate {cfg.model.name} on {cfg.dataset.name}",
                            tags={"anonemo.calibration": "parent", "dataset": cfg.dataset.name})
    run_id = run.info.run_id
    for key in ("option", "grid", "folds", "max_emotion_loss", "reference_model"):
        client.log_param(run_id, f"calibrate.{key}", str(cfg.calibrate[key]))
    client.log_metric(run_id, f"calibrate/{option}", chosen.value)
    with tempfile.TemporaryDirectory() as scratch:
        figure = front_figure(settings, chosen, f"{cfg.dataset.name}: validation front of {cfg.model.name}", leakage)
        figure.savefig(Path(scratch) / "calibration_front.png", dpi=110)
        plt.close(figure)
        (Path(scratch) / "calibration.md").write_text(rows + "\n")
        for name in ("calibration_front.png", "calibration.md"):
            client.log_artifact(run_id, str(Path(scratch) / name))
    client.log_artifact(run_id, str(written))
    client.set_terminated(run_id)
    print(f"\nCalibration of {cfg.model.name} on {cfg.dataset.name}, validation sides of folds "
          f"{list(cfg.calibrate.folds)} (rule: docs/algorithm.md, \"Choosing β\"):\n{rows}\n\n"
          f"Chosen: {chosen.label}. Train with: {override}\n(written to {written}; MLflow run {run_id})")


if __name__ == "__main__":
    check_override_keys("calibrate", sys.argv[1:])
    main()
