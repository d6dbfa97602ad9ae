"""The suite's report: a Markdown page with each setting's table (means with intervals, paired
differences to the Emotion CNN, Holm-adjusted p-values, fronts' hypervolumes, how many jobs each
number covers), the figures (fronts, paired differences, ranks), and its numbers as metrics."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from anonemo.benchmark.results import EMOTION, IDENTITY, MethodResults, Row, front_name  # noqa: E402
from anonemo.benchmark.stats import Interval, Ranks, mean_interval  # noqa: E402
from anonemo.benchmark.suite import REFERENCE, Setting, Suite  # noqa: E402


def interval_text(found: Interval | None, digits: int = 2, signed: bool = False) -> str:
    if found is None:
        return "missing"
    sign = "+" if signed else ""
    if math.isnan(found.low):
        return f"{found.mean:{sign}.{digits}f} (1 fold: no interval)"
    return f"{found.mean:{sign}.{digits}f} [{found.low:{sign}.{digits}f}, {found.high:{sign}.{digits}f}]"


def holm_text(found: tuple[float, bool] | None) -> str:
    if found is None:
        return ""
    p, rejected = found
    return f"p={p:.3g}{' *' if rejected else ''}"


def identity_label(setting: Setting) -> str:
    return "identity, strongest attacker (%)" if setting.protocol == "paper" else "linkage AUC"


def setting_table(setting: Setting, rows: list[Row], chances: dict[str, float | None]) -> list[str]:
    digits = 2 if setting.protocol == "paper" else 3
    emotion_chance, identity_chance = chances.get(EMOTION), chances.get(IDENTITY)
    lines = [
        f"### {setting.name}",
        "",
        f"Chance: emotion {emotion_chance:.2f} %, {identity_label(setting)} {identity_chance:.{digits}f}."
        if emotion_chance is not None and identity_chance is not None else "Chance levels: not logged.",
        "",
        f"| method | jobs | emotion | Δ emotion vs {REFERENCE} | Holm | {identity_label(setting)} | Δ identity | Holm "
        "| hypervolume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        metric = f" (`{row.emotion_metric}`)" if row.emotion_metric else ""
        lines.append(
            f"| {row.method.name}{metric} | {row.done}/{row.planned} | {interval_text(row.emotion)} "
            f"| {'reference' if row.method.model == REFERENCE else interval_text(row.emotion_diff, signed=True)} "
            f"| {holm_text(row.emotion_holm)} | {interval_text(row.identity, digits)} "
            f"| {'' if row.method.model == REFERENCE else interval_text(row.identity_diff, digits, signed=True)} "
            f"| {holm_text(row.identity_holm)} | {interval_text(row.hypervolume, 3)} |"
        )
    return lines


def headline_table(results: list[MethodResults], ratio: float) -> list[str]:
    """Every metric each method's recipe declares (the paper's five, the erasure's, ...), with intervals."""
    lines = ["| method | metric | mean [95 % interval] | folds × seeds |", "|---|---|---|---|"]
    for found in results:
        for measure, values in found.values.items():
            if measure in (EMOTION, IDENTITY) or not values:
                continue
            interval = mean_interval(values, ratio)
            lines.append(f"| {found.method.name} | {measure} | {interval_text(interval)} | "
                         f"{interval.folds} × {interval.seeds} |")
    return lines


def fronts_figure(setting: Setting, rows: list[Row], chances: dict[str, float | None], path: Path) -> Path:
    """Emotion against identity, each method's mean with its intervals; a model's budgets joined."""
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    by_model: dict[str, list[Row]] = {}
    for row in rows:
        if row.emotion and row.identity:
            by_model.setdefault(front_name(row.method), []).append(row)
    for model, found in by_model.items():
        found = sorted(found, key=lambda r: r.method.budget or 0)
        x = [r.emotion.mean for r in found]
        y = [r.identity.mean for r in found]
        xerr = [[r.emotion.mean - r.emotion.low for r in found], [r.emotion.high - r.emotion.mean for r in found]]
        yerr = [[r.identity.mean - r.identity.low for r in found], [r.identity.high - r.identity.mean for r in found]]
        axis.errorbar(x, y, xerr=None if any(map(math.isnan, xerr[0])) else xerr,
                      yerr=None if any(map(math.isnan, yerr[0])) else yerr, marker="o", capsize=3, label=model)
    if chances.get(EMOTION) is not None:
        axis.axvline(chances[EMOTION], color="grey", linestyle=":", label="chance")
    if chances.get(IDENTITY) is not None:
        axis.axhline(chances[IDENTITY], color="grey", linestyle=":")
    axis.set_xlabel("emotion (%)")
    axis.set_ylabel(identity_label(setting))
    axis.set_title(f"{setting.name}: better is right and down to chance")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def differences_figure(setting: Setting, rows: list[Row], path: Path) -> Path:
    """Each method minus the Emotion CNN, paired, with the corrected 95 % intervals."""
    found = [row for row in rows if row.emotion_diff or row.identity_diff]
    figure, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(found) + 1.5), sharey=True)
    for axis, measure in zip(axes, (EMOTION, IDENTITY)):
        for i, row in enumerate(found):
            diff = row.emotion_diff if measure == EMOTION else row.identity_diff
            if diff is None or math.isnan(diff.low):
                continue
            axis.errorbar([diff.mean], [i], xerr=[[diff.mean - diff.low], [diff.high - diff.mean]], fmt="o", capsize=3)
        axis.axvline(0, color="grey", linestyle=":")
        axis.set_xlabel(f"Δ {measure if measure == EMOTION else identity_label(setting)}")
    axes[0].set_yticks(range(len(found)), [row.method.name for row in found])
    figure.suptitle(f"{setting.name}: minus {REFERENCE}, paired by fold and seed")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def ranks_figure(found: Ranks, path: Path) -> Path:
    """Average ranks with Nemenyi's critical difference as a bar (Demšar's diagram, simplified)."""
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(found.average) + 1.5))
    order = sorted(found.average, key=found.average.get)
    axis.scatter([found.average[m] for m in order], range(len(order)))
    axis.set_yticks(range(len(order)), order)
    if not math.isnan(found.critical_difference):
        best = found.average[order[0]]
        axis.plot([best, best + found.critical_difference], [-0.7, -0.7], color="black", linewidth=3)
        axis.text(best, -1.1, f"CD = {found.critical_difference:.2f}", fontsize=8)
    axis.set_xlabel(f"average rank by hypervolume over {found.datasets} settings (1 = best)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def metric_name(*parts: str) -> str:
    """An MLflow metric name (no ``=``): ``yale/paper/grl E4/emotion/mean``."""
    return re.sub(r"[^/\w.\- :]", "", "/".join(parts))


def report_metrics(rows_by_setting: dict[Setting, list[Row]]) -> dict[str, float]:
    metrics = {}
    for setting, rows in rows_by_setting.items():
        for row in rows:
            for measure, found in ((EMOTION, row.emotion), (IDENTITY, row.identity), ("hypervolume", row.hypervolume),
                                   (f"{EMOTION}_diff", row.emotion_diff), (f"{IDENTITY}_diff", row.identity_diff)):
                if found is None:
                    continue
                for statistic, value in (("mean", found.mean), ("low", found.low), ("high", found.high),
                                         ("folds", found.folds), ("seeds", found.seeds)):
                    if not math.isnan(value):
                        metrics[metric_name(setting.name, row.method.name, measure, statistic)] = float(value)
            metrics[metric_name(setting.name, row.method.name, "jobs_done")] = float(row.done)
    return metrics


def write_report(suite: Suite, command: str, rows_by_setting: dict[Setting, list[Row]], chances, headlines,
                 ratios: dict[Setting, float], found_ranks: Ranks | None, ruled_out: dict, commits: set[str],
                 seed_checks: dict, output_dir: Path) -> tuple[Path, list[Path], list[str]]:
    """The Markdown page and figures under ``output_dir``; its path, every file, and the main table's lines."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    main: list[str] = []
    lines = [
        f"# Benchmark suite `{suite.name}`",
        "",
        f"Made by: `{command}`",
        "",
        f"Folds {list(suite.folds)} of 10, seeds {list(suite.seeds)} (training only: folds, validation carve and "
        "augmentation are fixed). Each number is the mean over folds of the mean over seeds, with a 95 % interval: "
        "the Nadeau-Bengio corrected t over folds (docs/benchmark.md). Δ: the method minus the Emotion CNN on the same "
        "fold and seed. Holm: the p-value of Δ ≠ 0 adjusted over the setting's methods, `*` below 0.05. "
        "Hypervolume: the area of the unit square (emotion from chance to 100 %, identity from its ceiling to chance) "
        "the model's front dominates, over all its budgets; 1 is perfect. `jobs`: finished of planned; a mean "
        "covers only the finished ones.",
        "",
        f"Code: {', '.join(sorted(commits))}" + (" (**several commits**: numbers may not be comparable)"
                                                 if len(commits) > 1 else ""),
        "",
    ]
    if suite.skipped:
        lines += [f"Datasets left out (no root): {', '.join(suite.skipped)}.", ""]
    for setting, rows in rows_by_setting.items():
        table = setting_table(setting, rows, chances[setting])
        main += table + [""]
        slug = setting.name.replace("/", "_")
        files.append(fronts_figure(setting, rows, chances[setting], output_dir / f"front_{slug}.png"))
        files.append(differences_figure(setting, rows, output_dir / f"differences_{slug}.png"))
        lines += table + ["", f"![front](front_{slug}.png) ![differences](differences_{slug}.png)", ""]
        check = seed_checks.get(setting)
        if check:
            lines += [f"Seed check: the Emotion CNN against itself, its second seed minus its first, paired by fold: "
                      f"emotion {interval_text(check[EMOTION], signed=True)}, identity "
                      f"{interval_text(check[IDENTITY], digits=2 if setting.protocol == 'paper' else 3, signed=True)} "
                      "(an interval without 0 here would be a difference where there is none).", ""]
        lines += ["Every metric each method declares:", "", *headline_table(headlines[setting], ratios[setting]), ""]
    if ruled_out:
        lines += ["## Not run: the protocol rules them out", ""]
        lines += [f"- {setting.name}, {method.name}: {reason}" for (setting, method), reason in ruled_out.items()]
        lines.append("")
    lines += ["## Ranks across settings", ""]
    if found_ranks is None:
        lines.append("No ranks: no two models have a hypervolume on a common setting.")
    else:
        lines += ["| model | average rank (hypervolume) |", "|---|---|"]
        lines += [f"| {model} | {rank:.2f} |" for model, rank in sorted(found_ranks.average.items(), key=lambda kv: kv[1])]
        lines.append("")
        if math.isnan(found_ranks.friedman_p):
            lines.append(f"Friedman's test needs at least 3 models on at least 2 settings; here {len(found_ranks.average)} "
                         f"on {found_ranks.datasets}: ranks only.")
        else:
            files.append(ranks_figure(found_ranks, output_dir / "ranks.png"))
            lines += [f"Friedman's test over {found_ranks.datasets} settings: p = {found_ranks.friedman_p:.3g}; "
                      f"Nemenyi's critical difference at 0.05: {found_ranks.critical_difference:.2f}. With fewer than "
                      "about 10 settings the test has little power (docs/benchmark.md).", "", "![ranks](ranks.png)"]
    page = output_dir / "report.md"
    page.write_text("\n".join(lines) + "\n")
    return page, [page, *files], main
