"""The report's outputs: Markdown and CSV tables, the trade-off figures, and the console table."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from anonemo import metrics as names
from anonemo.errors import ConfigError
from anonemo.evaluation import plt
from anonemo.models.rounds import round_curves_figure
from anonemo.metrics import CHANCE_BOUNDED_AUDITS, PAPER_METRICS
from anonemo.report.collect import RunGroup, collect_groups, mean_round_history, settings_labels
from anonemo.report.measures import AUDIT_METRICS, COLUMNS, ERASED_METRICS, PAPER_RESULTS, anonymity, emotion_baseline


BELOW_CHANCE_NOTE = ("k↓: on k folds the value is below its chance level, which is not privacy: the features still "
                     "tell people apart, the attacker reads them the wrong way round (docs/audit.md).")


def format_cell(group: RunGroup, metric: str) -> str:
    """``mean ± std (folds)``, one fold as ``value (1)``; ``, k↓`` when k folds are below chance."""
    summary = group.summary(metric)
    if summary is None:
        return ""
    mean, std, n = summary
    below = group.below_chance_folds(metric) if metric in CHANCE_BOUNDED_AUDITS else 0
    folds = f"{n}, {below}↓" if below else f"{n}"
    return f"{mean:.2f} ± {std:.2f} ({folds})" if n > 1 else f"{mean:.2f} ({folds})"


def columns(groups: list[RunGroup]) -> tuple[str, ...]:
    """The paper's and the erasure's columns, any other model metric the groups' recipes declared,
    then the audit's."""
    declared = dict.fromkeys(m for g in groups for m in g.model_metrics if m not in COLUMNS)
    return (*PAPER_METRICS, *ERASED_METRICS, *declared, *AUDIT_METRICS)


def table_rows(groups: list[RunGroup], shown: tuple[str, ...]) -> list[list[str]]:
    """Rows of one experiment's table in the columns ``shown``: one per group, then the paper's row
    and chance."""
    labels = settings_labels(groups)
    rows = []
    for g in groups:
        score = anonymity(g, groups)
        rows.append([g.model, labels[id(g)], *(format_cell(g, m) for m in shown),
                     "" if score is None else f"{score:.2f}"])
    dataset = groups[0].dataset
    if dataset in PAPER_RESULTS:
        rows.append(["paper (Narula et al. 2020)", "", *(f"{PAPER_RESULTS[dataset][m]:.2f}" for m in PAPER_METRICS),
                     *[""] * (len(shown) - len(PAPER_METRICS) + 1)])
    chance = {m: next((g.chance(m) for g in groups if g.chance(m) is not None), None) for m in shown}
    rows.append(["chance", "", *("" if chance[m] is None else f"{chance[m]:.2f}" for m in shown), ""])
    return rows


@dataclass(frozen=True)
class ExperimentTable:
    """One experiment's table: its metric columns and its rows (model, settings, cells, anonymity)."""

    columns: tuple[str, ...]
    rows: list[list[str]]

    @property
    def header(self) -> list[str]:
        return ["model", "settings", *(m.replace("/", " ") if m in AUDIT_METRICS else m for m in self.columns),
                "anonymity"]


def experiment_table(groups: list[RunGroup]) -> ExperimentTable:
    shown = columns(groups)
    return ExperimentTable(shown, table_rows(groups, shown))


def write_markdown(tables: dict[str, ExperimentTable], path: Path) -> None:
    lines = []
    for experiment, table in tables.items():
        rows = table.rows
        lines += [f"## {experiment}", "", "Test-fold accuracy (%), mean ± std over folds (number of folds).", ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if any("↓" in cell for row in rows for cell in row):
            lines += ["", BELOW_CHANCE_NOTE]
        lines.append("")
    path.write_text("\n".join(lines))


def write_csv(groups: list[RunGroup], path: Path) -> None:
    labels, shown = settings_labels(groups), columns(groups)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "dataset", "model", "settings", "folds",
                         *(f"{m}_{s}" for m in shown for s in ("mean", "std", "n", "below_chance")), "anonymity"])
        for g in groups:
            cells = []
            for metric in shown:
                summary = g.summary(metric)
                below = g.below_chance_folds(metric) if metric in CHANCE_BOUNDED_AUDITS else ""
                cells += ["", "", "", ""] if summary is None else [f"{summary[0]:.4f}", f"{summary[1]:.4f}", summary[2], below]
            score = anonymity(g, [h for h in groups if h.experiment == g.experiment])
            writer.writerow([g.experiment, g.dataset, g.model, labels[id(g)], len(g.runs), *cells,
                             "" if score is None else f"{score:.4f}"])


def utility_of(group: RunGroup) -> str | None:
    """The emotion accuracy of a fresh head on the group's final base, as its recipe declared it
    (Hybrid2Emotion, GRL2Emotion, Erased2Emotion after an erasure); None for the reference."""
    metric = group.fresh_emotion_metric
    return metric if metric and group.summary(metric) else None


FRESH_IDENTITY_HEAD = "fresh identity head"  # a leakage measure read per group (Hybrid2Face, HSIC2Face, ...)


def leakage_metric(group: RunGroup, leakage: str) -> str | None:
    """The metric that measures ``leakage`` in ``group``: the group's own fresh identity head for
    ``FRESH_IDENTITY_HEAD``, else ``leakage`` itself."""
    return group.fresh_identity_metric if leakage == FRESH_IDENTITY_HEAD else leakage


def tradeoff_figure(groups: list[RunGroup], title: str, by_experiment: bool = False,
                    leakage: str | None = None) -> plt.Figure | None:
    """Utility (each point's declared fresh emotion head: Hybrid2Emotion, HSIC2Emotion, or
    Erased2Emotion for a base with a post-hoc erasure) against identity leakage, one point per
    in-training or erased setting (labelled with its experiment too when ``by_experiment``: the
    front across several sweeps).

    Leakage is ``leakage`` where every setting logged it (``audit/linkage/auc``: the linkage
    front), by default the strongest audit attacker (``audit/identity/max``) when every setting
    was audited, else each setting's own fresh identity head (the paper's Hybrid2Face).
    """
    points = [g for g in groups if utility_of(g)]
    if leakage is None:
        audited = all(g.summary(names.IDENTITY_MAX) for g in points)
        leakage = names.IDENTITY_MAX if audited else FRESH_IDENTITY_HEAD
    # Unseen people's runs (cv.protocol=subject_disjoint) have a linkage AUC and no fresh identity head.
    if not points or not all(leakage_metric(g, leakage) and g.summary(leakage_metric(g, leakage)) for g in points):
        return None
    top = 1 if leakage == names.LINKAGE_AUC else 100  # an AUC, or an accuracy in %
    number = ".2f" if top == 1 else ".1f"
    labels = settings_labels(groups)
    # Points named in a legend beside the axes, with their values: across sweeps, and wherever
    # there are enough of them to lie close together (erasure baselines beside in-training methods).
    in_legend = by_experiment or len(points) > 3
    figure, axes = plt.subplots(figsize=(10, 5) if in_legend else (6.5, 5))
    for g in points:
        measured = leakage_metric(g, leakage)
        (x, dx, _), (y, dy, n) = g.summary(measured), g.summary(utility_of(g))
        below = g.below_chance_folds(measured) if measured in CHANCE_BOUNDED_AUDITS else 0
        label = (f"{g.experiment}: " * by_experiment + f"{g.model} {labels[id(g)]}".strip()
                 + f" ({n} fold{'s' * (n > 1)}{f', {below} below chance' if below else ''})")
        # A point with folds below chance is drawn hollow: below chance is not privacy.
        style = {"fmt": "o", "capsize": 3, "mfc": "none" if below else None}
        if in_legend:
            axes.errorbar(x, y, xerr=dx, yerr=dy, label=f"{label}: {x:{number}}, {y:.1f}", **style)
        else:
            axes.errorbar(x, y, xerr=dx, yerr=dy, **style)
            axes.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    # References: the Emotion CNN's accuracy, and the leakage of its base by the same measure.
    base_leakage = {names.IDENTITY_MAX: ("Emotion CNN's base, strongest attacker", names.IDENTITY_MAX),
                    FRESH_IDENTITY_HEAD: (names.EMOTION2FACE, names.EMOTION2FACE)}.get(leakage, (f"Emotion CNN's base, {leakage}", leakage))
    references = [("Emotion CNN, emotion", names.EMOTION, axes.axhline, "tab:green"),
                  (*base_leakage, axes.axvline, "tab:red")]
    for label, metric, draw, color in references:
        reference = emotion_baseline(groups, metric)
        if reference:
            draw(reference[0], color=color, linestyle="-.", linewidth=1, label=f"{label} {reference[0]:{number if metric == leakage_metric(points[0], leakage) else '.1f'}}")
    for metric, draw in ((utility_of(points[0]), axes.axhline), (leakage_metric(points[0], leakage), axes.axvline)):
        chance = next((g.chance(metric) for g in points if g.chance(metric) is not None), None)
        if chance is not None:
            draw(chance, color="gray", linestyle=":", linewidth=1, label=f"chance ({metric}) {chance:{number if metric != utility_of(points[0]) else '.1f'}}")
    nulls = [g.summary(names.IDENTITY_MAX_NULL)[0] for g in points
             if leakage == names.IDENTITY_MAX and g.summary(names.IDENTITY_MAX_NULL)]
    if nulls:  # what the strongest attacker reads off features without identity
        null = statistics.fmean(nulls)
        axes.axvline(null, color="gray", linestyle="--", linewidth=1, label=f"strongest attacker, permuted identities {null:.1f}")
    unit = "same-person ROC-AUC" if top == 1 else "accuracy (%)"
    axes.set_xlabel(f"identity leakage: {leakage} {unit}  ← more private")
    axes.set_ylabel("utility: a fresh emotion head on the final base, accuracy (%)")
    axes.set_xlim(-0.02 * top, 1.02 * top)  # lines at 0 or 100% stay off the frame
    axes.set_ylim(-2, 102)
    axes.set_title(title)
    if in_legend:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    elif axes.get_legend_handles_labels()[0]:  # reference lines, where the groups have them
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def build_report(
    client: MlflowClient, experiment_ids: list[str], filter_string: str, output_dir: Path
) -> tuple[dict[str, ExperimentTable], list[Path]]:
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
    tables = {name: experiment_table(members) for name, members in by_experiment.items()}
    files = [output_dir / "report.md", output_dir / "report.csv"]
    write_markdown(tables, files[0])
    write_csv(groups, files[1])

    def save(figure: plt.Figure | None, name: str) -> None:
        if figure is not None:
            files.append(output_dir / name)
            figure.savefig(files[-1], dpi=110, bbox_inches="tight")  # a legend beside the axes stays whole
            plt.close(figure)

    for name, members in by_experiment.items():
        save(tradeoff_figure(members, f"{name}: privacy/utility trade-off"), f"tradeoff_{name}.png")
        save(tradeoff_figure(members, f"{name}: linkage/utility trade-off", leakage=names.LINKAGE_AUC),
             f"tradeoff_linkage_{name}.png")
        hybrids = [(group, history) for group in members if (history := mean_round_history(client, group))]
        for index, (group, history) in enumerate(hybrids):
            title = f"{name}: {group.model} rounds, mean of {len(group.runs)} folds"
            save(round_curves_figure(history, title), f"rounds_{name}_{index}.png")
    # A trade-off swept over several experiments (one per beta, say) is drawn as one front per dataset.
    for dataset, members in by_dataset.items():
        if len({g.experiment for g in members}) > 1:
            title = f"{dataset}: privacy/utility front across experiments"
            save(tradeoff_figure(members, title, by_experiment=True), f"front_{dataset}.png")
    return tables, files


def print_tables(tables: dict[str, ExperimentTable], console: Console | None = None) -> None:
    """The tables on the console; where one is wider than the terminal, one block per configuration
    instead, so that no cell is split over lines (report.md and report.csv never depend on it)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or pipe: do not wrap at 80 columns
            console = Console(width=200)
    for name, experiment in tables.items():
        rows, header = experiment.rows, experiment.header
        title = f"{name}: test-fold accuracy (%), mean ± std over folds (n)"
        table = Table(title=title)
        for column in header:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        if Measurement.get(console, console.options.update_width(10**6), table).maximum <= console.width:
            console.print(table)
        else:
            console.print(title, soft_wrap=True)
            width = max(len(column) for column in header)
            for row in rows:
                console.print(" ".join(row[:2]).strip(), style="bold", soft_wrap=True)
                for column, cell in zip(header[2:], row[2:]):
                    if cell:
                        console.print(f"  {column:<{width}}  {cell}", soft_wrap=True, highlight=False)
        if any("↓" in cell for row in rows for cell in row):
            console.print(BELOW_CHANCE_NOTE, soft_wrap=True, highlight=False)
