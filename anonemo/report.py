"""``python -m anonemo.report``: the paper's tables from the runs in MLflow.

Runs are grouped by every parameter except the fold (and settings that do not change results:
paths, logging, progress display, threads), so one group is one configuration evaluated over
folds. Each experiment gets a table with the paper's five accuracies as mean ± std over folds
(n folds), the published row for that dataset and the chance levels, written as Markdown and CSV
with a privacy/utility trade-off plot and the Hybrid's per-round curves averaged over folds.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from anonemo.cli import user_errors_reported
from anonemo.errors import ConfigError
from anonemo.evaluation import plt, round_curves_figure
from anonemo.tracking import RESULT_NEUTRAL, resolve_tracking_uri

log = logging.getLogger(__name__)

PAPER_METRICS = ("Face", "Emotion", "Emotion2Face", "Hybrid2Emotion", "Hybrid2Face")
# Narula, Wang & Chaspari (ICASSP 2020), Tables 1 and 2.
PAPER_RESULTS = {
    "jaffe": dict(zip(PAPER_METRICS, (99.26, 84.27, 90.41, 81.57, 25.79))),
    "yale": dict(zip(PAPER_METRICS, (87.96, 44.61, 78.44, 49.12, 1.00))),
}
# The gallery audit's chance differs per fold (one over the gallery's subjects): its own column.
# The strongest identity attacker's permutation null (audit.null_permutations) is what
# audit/identity/max reads off features without identity: the level to compare it with.
# audit/emotion_output/identity/max is what the strongest attacker reads off the emotion head's
# output alone: how low the base's leakage can go without changing its emotion decisions.
AUDIT_METRICS = ("audit/identity/max", "audit/identity/max/null", "audit/emotion/max", "audit/identity/gallery",
                 "audit/emotion_output/identity/max", "audit/identity/max/val")
COLUMNS = (*PAPER_METRICS, *AUDIT_METRICS)
MODEL_ORDER = ("face", "emotion", "emotion2face", "hybrid", "hybrid_robust", "hybrid_standardised")
# Parameters that differ between runs without changing their results (the audit only adds
# measurements of the trained base).
NOT_GROUPED = ("fold", "audit.", *RESULT_NEUTRAL)
ROUND_CURVES = tuple(
    f"round/{curve}/{side}" for curve in ("emotion_acc", "identity_acc", "refit_identity_acc") for side in ("train", "val")
)


@dataclass
class RunGroup:
    """Runs of one configuration over folds (the latest run of each fold)."""

    experiment: str
    params: dict[str, str]
    runs: dict[int, Run] = field(default_factory=dict)  # fold -> run

    @property
    def model(self) -> str:
        return self.params.get("model.name", "?")

    @property
    def dataset(self) -> str:
        return self.params.get("dataset.name", "?")

    def add(self, run: Run) -> None:
        fold = int(run.data.params.get("fold", -1))
        if fold not in self.runs or run.info.start_time > self.runs[fold].info.start_time:
            self.runs[fold] = run

    def values(self, metric: str) -> list[float]:
        # NaN: not measurable on that fold (a gallery that holds none of the test fold's subjects).
        return [run.data.metrics[metric] for run in self.runs.values()
                if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])]

    def summary(self, metric: str) -> tuple[float, float, int] | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def chance(self, metric: str) -> float | None:
        """The chance level logged with ``metric`` (``Face/chance``; ``audit/identity/chance`` for
        the attackers; ``audit/identity/gallery/chance``), averaged over folds."""
        shared = metric.startswith("audit/") and not metric.endswith("/gallery")
        values = self.values(f"{metric.rsplit('/', 1)[0]}/chance" if shared else f"{metric}/chance")
        return statistics.fmean(values) if values else None


def collect_groups(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[RunGroup]:
    """FINISHED job runs (sweep parents excluded), grouped by configuration."""
    groups: dict[tuple, RunGroup] = {}
    names = {e: client.get_experiment(e).name for e in experiment_ids}
    for run in client.search_runs(experiment_ids, filter_string=filter_string, max_results=50_000):
        if run.info.status != "FINISHED" or run.data.tags.get("anonemo.sweep") == "parent" or "fold" not in run.data.params:
            continue
        params = {k: v for k, v in run.data.params.items() if not k.startswith(NOT_GROUPED)}
        key = (run.info.experiment_id, tuple(sorted(params.items())))
        groups.setdefault(key, RunGroup(names[run.info.experiment_id], params)).add(run)
    return sorted(groups.values(), key=lambda g: (g.experiment, _model_rank(g.model), sorted(g.params.items())))


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def settings_labels(groups: list[RunGroup]) -> dict[int, str]:
    """For each group, the parameters that distinguish it from other groups of the same model."""
    labels = {}
    for group in groups:
        siblings = [g for g in groups if g.model == group.model and g.experiment == group.experiment]
        varying = sorted({k for g in siblings for k in set(g.params) | set(group.params)
                          if g.params.get(k) != group.params.get(k)})
        labels[id(group)] = " ".join(f"{k}={group.params.get(k)}" for k in varying)
    return labels


def format_cell(summary: tuple[float, float, int] | None) -> str:
    if summary is None:
        return ""
    mean, std, n = summary
    return f"{mean:.2f} ± {std:.2f} ({n})"


def anonymity(group: RunGroup, groups: list[RunGroup]) -> float | None:
    """1 - (identity leakage - chance) / (leakage of the plain Emotion base - chance), with the
    strongest audit attacker as the leakage: 0 leaks as much as an emotion CNN, 1 is chance."""
    leakage, chance = group.summary("audit/identity/max"), group.chance("audit/identity/max")
    baseline = next((g.summary("audit/identity/max") for g in groups
                     if g.model in ("emotion", "emotion2face") and g.summary("audit/identity/max")), None)
    if leakage is None or baseline is None or chance is None or baseline[0] <= chance:
        return None
    return 1 - (leakage[0] - chance) / (baseline[0] - chance)


def table_rows(groups: list[RunGroup]) -> list[list[str]]:
    """Rows of one experiment's table: one per group, then the paper's row and chance."""
    labels = settings_labels(groups)
    rows = []
    for g in groups:
        score = anonymity(g, groups)
        rows.append([g.model, labels[id(g)], *(format_cell(g.summary(m)) for m in COLUMNS),
                     "" if score is None else f"{score:.2f}"])
    dataset = groups[0].dataset
    if dataset in PAPER_RESULTS:
        rows.append(["paper (Narula et al. 2020)", "", *(f"{PAPER_RESULTS[dataset][m]:.2f}" for m in PAPER_METRICS),
                     *[""] * (len(AUDIT_METRICS) + 1)])
    chance = {m: next((g.chance(m) for g in groups if g.chance(m) is not None), None) for m in COLUMNS}
    rows.append(["chance", "", *("" if chance[m] is None else f"{chance[m]:.2f}" for m in COLUMNS), ""])
    return rows


HEADER = ["model", "settings", *PAPER_METRICS, *(m.replace("/", " ") for m in AUDIT_METRICS),
          "anonymity"]


def write_markdown(tables: dict[str, list[list[str]]], path: Path) -> None:
    lines = []
    for experiment, rows in tables.items():
        lines += [f"## {experiment}", "", "Test-fold accuracy (%), mean ± std over folds (number of folds).", ""]
        lines.append("| " + " | ".join(HEADER) + " |")
        lines.append("|" + "---|" * len(HEADER))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    path.write_text("\n".join(lines))


def write_csv(groups: list[RunGroup], path: Path) -> None:
    labels = settings_labels(groups)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "dataset", "model", "settings", "folds",
                         *(f"{m}_{s}" for m in COLUMNS for s in ("mean", "std", "n")), "anonymity"])
        for g in groups:
            cells = []
            for metric in COLUMNS:
                summary = g.summary(metric)
                cells += ["", "", ""] if summary is None else [f"{summary[0]:.4f}", f"{summary[1]:.4f}", summary[2]]
            score = anonymity(g, [h for h in groups if h.experiment == g.experiment])
            writer.writerow([g.experiment, g.dataset, g.model, labels[id(g)], len(g.runs), *cells,
                             "" if score is None else f"{score:.4f}"])


def tradeoff_figure(groups: list[RunGroup], title: str, by_experiment: bool = False) -> plt.Figure | None:
    """Hybrid2Emotion (utility) against identity leakage, one point per Hybrid setting (labelled
    with its experiment too when ``by_experiment``: the front across several sweeps).

    Leakage is the strongest audit attacker (``audit/identity/max``) when every Hybrid setting
    was audited, else the paper's single-head Hybrid2Face.
    """
    hybrids = [g for g in groups if g.summary("Hybrid2Emotion") and g.summary("Hybrid2Face")]
    if not hybrids:
        return None
    audited = all(g.summary("audit/identity/max") for g in hybrids)
    leakage = "audit/identity/max" if audited else "Hybrid2Face"
    labels = settings_labels(groups)
    figure, axes = plt.subplots(figsize=(10, 5) if by_experiment else (6.5, 5))
    for g in hybrids:
        (x, dx, _), (y, dy, n) = g.summary(leakage), g.summary("Hybrid2Emotion")
        label = f"{g.experiment}: " * by_experiment + f"{g.model} {labels[id(g)]}".strip() + f" ({n} folds)"
        if by_experiment:  # a front's points lie close together: named in the legend, with their values
            axes.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", capsize=3, label=f"{label}: {x:.1f}, {y:.1f}")
        else:
            axes.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", capsize=3)
            axes.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    # References: the Emotion CNN's accuracy, and the leakage of its base by the same measure.
    references = [("Emotion", "Emotion", axes.axhline, ("emotion", "emotion2face"))]
    if audited:
        references.append(("Emotion base, strongest attacker", "audit/identity/max", axes.axvline, ("emotion", "emotion2face")))
    else:
        references.append(("Emotion2Face", "Emotion2Face", axes.axvline, ("emotion2face",)))
    for label, metric, draw, models in references:
        reference = next((g.summary(metric) for g in groups if g.model in models and g.summary(metric)), None)
        if reference:
            draw(reference[0], color="gray", linewidth=1, label=f"{label} {reference[0]:.1f}")
    for metric, draw in (("Hybrid2Emotion", axes.axhline), (leakage, axes.axvline)):
        chance = next((g.chance(metric) for g in hybrids if g.chance(metric) is not None), None)
        if chance is not None:
            draw(chance, color="gray", linestyle=":", linewidth=1, label=f"chance ({metric}) {chance:.1f}")
    nulls = [g.summary("audit/identity/max/null")[0] for g in hybrids if audited and g.summary("audit/identity/max/null")]
    if nulls:  # what the strongest attacker reads off features without identity
        null = statistics.fmean(nulls)
        axes.axvline(null, color="gray", linestyle="--", linewidth=1, label=f"strongest attacker, permuted identities {null:.1f}")
    axes.set_xlabel(f"identity leakage: {leakage} accuracy (%)  ← more private")
    axes.set_ylabel("utility: Hybrid2Emotion accuracy (%)")
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_title(title)
    if by_experiment:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    elif axes.get_legend_handles_labels()[0]:  # reference lines, where the groups have them
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def mean_round_history(client: MlflowClient, group: RunGroup) -> list[dict[str, float]]:
    """The per-round curves of a Hybrid group, averaged over its folds."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in group.runs.values():
        for key in ROUND_CURVES:
            for point in client.get_metric_history(run.info.run_id, key):
                sums[point.step][key].append(point.value)
    return [{"round": step, **{k: statistics.fmean(v) for k, v in sums[step].items()}} for step in sorted(sums)]


def build_report(
    client: MlflowClient, experiment_ids: list[str], filter_string: str, output_dir: Path
) -> tuple[dict[str, list[list[str]]], list[Path]]:
    """Write the report files under ``output_dir``; returns the tables and the files written."""
    groups = collect_groups(client, experiment_ids, filter_string)
    if not groups:
        raise ConfigError(
            "No finished runs match: check the experiment, parent_run or filter options "
            "(runs still RUNNING or FAILED are not reported)."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    by_experiment: dict[str, list[RunGroup]] = defaultdict(list)
    by_dataset: dict[str, list[RunGroup]] = defaultdict(list)
    for group in groups:
        by_experiment[group.experiment].append(group)
        by_dataset[group.dataset].append(group)
    tables = {name: table_rows(members) for name, members in by_experiment.items()}
    files = [output_dir / "report.md", output_dir / "report.csv"]
    write_markdown(tables, files[0])
    write_csv(groups, files[1])

    def save(figure: plt.Figure | None, name: str) -> None:
        if figure is not None:
            files.append(output_dir / name)
            figure.savefig(files[-1], dpi=110)
            plt.close(figure)

    for name, members in by_experiment.items():
        save(tradeoff_figure(members, f"{name}: privacy/utility trade-off"), f"tradeoff_{name}.png")
        for index, group in enumerate(g for g in members if g.model.startswith("hybrid")):
            history = mean_round_history(client, group)
            if history:
                title = f"{name}: Hybrid rounds, mean of {len(group.runs)} folds"
                save(round_curves_figure(history, title), f"rounds_{name}_{index}.png")
    # A trade-off swept over several experiments (one per beta, say) is drawn as one front per dataset.
    for dataset, members in by_dataset.items():
        if len({g.experiment for g in members}) > 1:
            title = f"{dataset}: privacy/utility front across experiments"
            save(tradeoff_figure(members, title, by_experiment=True), f"front_{dataset}.png")
    return tables, files


def print_tables(tables: dict[str, list[list[str]]]) -> None:
    console = Console()
    if not console.is_terminal:  # a log file or pipe: do not wrap the table at 80 columns
        console = Console(width=200)
    for name, rows in tables.items():
        table = Table(title=f"{name}: test-fold accuracy (%), mean ± std over folds (n)")
        for column in HEADER:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    with user_errors_reported():
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
        tables, files = build_report(client, experiment_ids, " and ".join(filters), Path(cfg.output_dir))
        print_tables(tables)
        if cfg.parent_run:
            for path in files:
                client.log_artifact(cfg.parent_run, str(path), "report")
        log.info("Report written to %s", Path(cfg.output_dir).resolve())


if __name__ == "__main__":
    main()
