"""``python -m anonemo.report``: the paper's tables from the runs in MLflow.

Runs are grouped by every parameter except the fold (and settings that do not change results:
paths, logging, progress display, threads), so one group is one configuration evaluated over
folds. Each experiment gets a table with the paper's five accuracies and the audit's figures as
mean ± std over folds (n folds), the published row for that dataset and the chance levels,
written as Markdown and CSV with a privacy/utility trade-off plot and the Hybrid's per-round
curves averaged over folds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.errors import ConfigError
from anonemo.report.render import build_report, print_tables
from anonemo.report.sweep_summary import summarise_sweep
from anonemo.tracking.links import experiment_link, run_link
from anonemo.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    with user_errors_reported(discard_run_dir=True):  # an error here comes before any output
        uri = resolve_tracking_uri(cfg.tracking_uri, cfg.paths.output_dir)
        client = MlflowClient(uri)
        filters = [cfg.filter] if cfg.filter else []
        if cfg.parent_run:
            experiment_ids = [client.get_run(cfg.parent_run).info.experiment_id]
            filters.append(f"tags.mlflow.parentRunId = '{cfg.parent_run}'")
        elif cfg.experiment_name:
            names = [cfg.experiment_name] if isinstance(cfg.experiment_name, str) else list(cfg.experiment_name)
            experiments = {name: client.get_experiment_by_name(name) for name in names}
            unknown = [name for name, experiment in experiments.items() if experiment is None]
            if unknown:
                known = ", ".join(e.name for e in client.search_experiments())
                raise ConfigError(f"experiment_name={','.join(unknown)} is not in {uri}; experiments there: {known or 'none'}.")
            experiment_ids = [experiment.experiment_id for experiment in experiments.values()]
        else:
            experiment_ids = [e.experiment_id for e in client.search_experiments()]
        if cfg.parent_run and not cfg.filter:  # the parent run sums up its folds and keeps the report
            summary, tables = summarise_sweep(client, cfg.parent_run, Path(cfg.output_dir))
            if not summary:
                raise ConfigError(f"parent_run={cfg.parent_run} has no FINISHED job runs to report (runs still RUNNING "
                                  "or FAILED are not reported).")
        else:
            tables, _ = build_report(client, experiment_ids, " and ".join(filters), Path(cfg.output_dir))
        print_tables(tables)
        log.info("Report written to %s", Path(cfg.output_dir).resolve())
        if cfg.parent_run:
            print(f"The sweep's parent run, with the fold means: {run_link(uri, experiment_ids[0], cfg.parent_run)}")
        else:
            for experiment_id in experiment_ids:
                print(f"{client.get_experiment(experiment_id).name}: {experiment_link(uri, experiment_id)} (runs); "
                      f"{experiment_link(uri, experiment_id, charts=True)} (the sweeps' means, charted)")


if __name__ == "__main__":
    check_override_keys("report", sys.argv[1:])
    main()
