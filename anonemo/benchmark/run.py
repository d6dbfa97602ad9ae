"""The benchmark's steps: the suite checked and planned before any work, the jobs still to run
launched as one Hydra multirun of ``anonemo.train`` under the suite's parent run, and the report
built from the runs of exactly the planned jobs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.benchmark.plan import Checked, check_jobs, dataset_root, estimate_cpu_seconds, find_finished
from anonemo.benchmark.report import report_metrics, write_report
from anonemo.benchmark.results import EMOTION, IDENTITY, gather, holdout_ratio, ranks, seed_check, setting_rows
from anonemo.benchmark.suite import Suite, build_suite
from anonemo.report.sweep_summary import MLFLOW_BATCH
from anonemo.tracking.links import run_link
from anonemo.tracking.run import PARENT_RUN_ENV
from anonemo.tracking.store import ensure_experiment, resolve_tracking_uri

log = logging.getLogger(__name__)
SUITE_KEY_TAG = "anonemo.benchmark.suite_key"


def run_suite(cfg: DictConfig, command: str) -> None:
    suite = build_suite(cfg, dataset_root)
    for skipped in suite.skipped:
        print(f"Left out: {skipped}")
    checked = check_jobs(suite)
    for (setting, method), reason in checked.ruled_out.items():
        print(f"Not run: {method.name} on {setting.name}: {reason}")
    uri = resolve_tracking_uri(cfg.tracking_uri, cfg.paths.output_dir)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    find_finished(client, experiment.experiment_id if experiment else None, checked)
    cpu_s, unknown = estimate_cpu_seconds(client, checked, dict(cfg.default_job_cpu_s))
    to_run = checked.to_run
    print(f"suite={suite.name}: {len(checked.jobs)} jobs ({len(suite.settings)} settings × {len(suite.methods)} methods × "
          f"{len(suite.folds)} folds × {len(suite.seeds)} seeds, less those ruled out); {len(checked.finished)} finished "
          f"already, {len(to_run)} to run, about {cpu_s / 3600:.1f} CPU-hours"
          + (f" ({unknown} jobs never timed in this store: default_job_cpu_s's figures)" if unknown else ""))
    if cfg.dry_run:
        for job in to_run:
            print("  python -m anonemo.train " + " ".join(job.overrides))
        return
    experiment_id = ensure_experiment(client, OmegaConf.create({"logger": {
        "experiment_name": cfg.experiment_name, "artifact_location": f"{cfg.paths.output_dir}/mlartifacts"}}), uri)
    parent = parent_run(client, experiment_id, suite, checked, command)
    started = time.monotonic()
    if to_run:
        launch(cfg, uri, parent, [job.overrides for job in to_run])
        find_finished(client, experiment_id, checked)
    report(cfg, client, parent, suite, checked, command)
    failed = len(checked.jobs) - len(checked.finished)
    client.set_terminated(parent, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))
    print(f"{len(to_run)} jobs run in {(time.monotonic() - started) / 60:.1f} min; {failed} of {len(checked.jobs)} "
          f"without a finished run{' (rerun the same command to retry them)' if failed else ''}.")
    print(f"The suite's parent run, with the report: {run_link(uri, experiment_id, parent)}")
    if failed:
        sys.exit(1)


def parent_run(client: MlflowClient, experiment_id: str, suite: Suite, checked: Checked, command: str) -> str:
    """The suite's parent run: the one an earlier run of the same suite made (same jobs), reopened,
    or a new one."""
    key = suite.key(list(checked.jobs))
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SUITE_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"benchmark suite={suite.name}",
                            tags={SUITE_KEY_TAG: key, "anonemo.sweep": "parent", "anonemo.benchmark": suite.name,
                                  "benchmark.command": command[:5000]})
    return run.info.run_id


def launch(cfg: DictConfig, uri: str, parent: str, jobs: list[list[str]]) -> None:
    """One multirun of ``anonemo.train`` over ``jobs`` through the plan sweeper and ``cfg.launcher``;
    the jobs report to the suite's parent run."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = output_dir / "plan.json"
    plan.write_text(json.dumps(jobs, indent=1))
    command = [sys.executable, "-m", "anonemo.train", "-m", "hydra/sweeper=plan", f"hydra.sweeper.plan={plan.resolve()}",
               f"logger.tracking_uri={uri}", f"paths.output_dir={Path(cfg.paths.output_dir).resolve()}", f"hydra/launcher={cfg.launcher}",
               *([f"hydra.launcher.n_jobs={cfg.parallel_jobs}"] if cfg.launcher == "joblib" else []), *cfg.launcher_overrides]
    environment = {**os.environ, PARENT_RUN_ENV: parent}
    log.info("Launching %d jobs: %s", len(jobs), " ".join(command[1:]))
    subprocess.run(command, env=environment, check=False)


def report(cfg: DictConfig, client: MlflowClient, parent: str, suite: Suite, checked: Checked, command: str) -> None:
    results = gather(suite, checked)
    rows, chances, headlines, ratios, checks = {}, {}, {}, {}, {}
    for setting in suite.settings:
        config = next((c for key, c in checked.configs.items() if checked.jobs[key].setting == setting), None)
        if config is None:
            continue
        ratios[setting] = holdout_ratio(config.cv.n_splits, config.cv.val_fraction)
        rows[setting] = setting_rows(results, setting, ratios[setting])
        own = [found for (s, _), found in results.items() if s == setting]
        chances[setting] = {measure: next((f.chance(measure) for f in own if f.chance(measure) is not None), None)
                            for measure in (EMOTION, IDENTITY)}
        headlines[setting] = own
        checks[setting] = seed_check(results, setting, ratios[setting])
    commits = {commit for found in results.values() for commit in found.commits}
    page, files, main = write_report(suite, command, rows, chances, headlines, ratios, ranks(rows),
                                     checked.ruled_out, commits, checks, Path(cfg.output_dir))
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in report_metrics(rows).items()]
    for start in range(0, len(metrics), MLFLOW_BATCH):
        client.log_batch(parent, metrics=metrics[start:start + MLFLOW_BATCH])
    for path in files:
        client.log_artifact(parent, str(path), "report")
    print("\n".join(main))
    print(f"Report: {page.resolve()}")
