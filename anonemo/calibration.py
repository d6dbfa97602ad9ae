"""Choosing an in-training method's β (or emotion budget) for a dataset from validation sides
only (``python -m anonemo.calibrate``; the recommended Hybrid by default, any ``model=`` whose
recipe is ``weighted``).

The grid is two sweeps of ordinary jobs on ``calibrate.folds``: the reference model (the Emotion
CNN) and the Hybrid at every value of ``calibrate.grid`` of the model option ``calibrate.option``
(``beta``, a fixed β: the budget is off; or ``max_emotion_loss``, an emotion budget). Each job is
found again by its config hash, so a re-run reuses what finished. The choice reads only
validation-side numbers: the method's fresh emotion head as its recipe declares it
(``Hybrid2Emotion/val_acc``, ``HSIC2Emotion/val_acc``), the reference's selected epoch
(``Emotion/val_acc``) and the validation side's leakage: the strongest audit attacker
(``audit/identity/max/val``) under the paper's protocol, the linkage audit's AUC
(``audit/linkage/auc/val``) under ``cv.protocol=subject_disjoint``, whose validation people were
never trained on. Rule: among the settings whose mean validation emotion is at most
``calibrate.max_emotion_loss`` points below the reference's, the one with the lowest mean
validation leakage (ties: more emotion).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
from omegaconf import DictConfig

from anonemo import metrics as names
from anonemo.data.folds import fold_protocol
from anonemo.errors import ConfigError

REFERENCE_UTILITY = names.val_acc(names.EMOTION)  # of calibrate.reference_model, an Emotion CNN
# The model options a grid can set, and how a setting of each is named in tables and figures.
OPTIONS = {"beta": "β", "max_emotion_loss": "E"}


@dataclass(frozen=True)
class Leakage:
    """The validation-side identity measure the rule minimises, and how tables and figures name it."""

    metric: str
    label: str


CLOSED_SET_LEAKAGE = Leakage(names.IDENTITY_MAX_VAL, "validation identity, strongest attacker (%)")
LINKAGE_LEAKAGE = Leakage(f"{names.LINKAGE_AUC}/val", "validation linkage AUC (chance 0.5)")


def leakage_measure(cfg: DictConfig) -> Leakage:
    """Closed-set re-identification where the validation people are training people, linkage where not."""
    return CLOSED_SET_LEAKAGE if fold_protocol(cfg.cv.protocol).closed_set_identity else LINKAGE_LEAKAGE


@dataclass(frozen=True)
class Setting:
    """One row of the grid: the reference model (``value`` None) or the Hybrid with ``option`` at
    ``value``, with its validation numbers per fold (%)."""

    value: float | None
    emotion: tuple[float, ...]
    leakage: tuple[float, ...]
    option: str = "beta"

    @property
    def label(self) -> str:
        return "reference (Emotion CNN)" if self.value is None else f"{OPTIONS[self.option]}={self.value:g}"

    @property
    def mean_emotion(self) -> float:
        return statistics.fmean(self.emotion)

    @property
    def mean_leakage(self) -> float:
        return statistics.fmean(self.leakage)

    def emotion_loss(self, reference: Setting) -> tuple[float, float]:
        """Points of validation emotion lost against ``reference``: the mean over folds of the
        per-fold difference and its standard error (nan with one fold)."""
        losses = [r - e for r, e in zip(reference.emotion, self.emotion)]
        spread = statistics.stdev(losses) / math.sqrt(len(losses)) if len(losses) > 1 else math.nan
        return statistics.fmean(losses), spread


def grid_job_overrides(cfg: DictConfig, overrides: list[str], value: str | None, folds: str) -> list[str]:
    """The overrides of one grid job (or, with comma lists, of one sweep): the user's, then the
    reference model (``value`` None; the user's ``model.*`` options are the Hybrid's and stay out)
    or the Hybrid with ``calibrate.option`` at ``value`` (a fixed β turns the emotion budget off)."""
    if value is None:
        shared = [o for o in overrides if not o.startswith("model.")]
        return [*shared, f"model={cfg.calibrate.reference_model}", f"fold={folds}"]
    setting = [f"model.{cfg.calibrate.option}={value}"]
    if cfg.calibrate.option == "beta":
        setting.append("model.max_emotion_loss=null")
    return [*overrides, f"model={cfg.model.name}", *setting, f"fold={folds}"]


def grid(cfg: DictConfig, overrides: list[str]) -> list[list[str]]:
    """The two sweeps: the reference, then the Hybrid at every value, on every calibration fold."""
    folds = ",".join(str(f) for f in cfg.calibrate.folds)
    values = ",".join(float_value(v) for v in cfg.calibrate.grid)
    return [grid_job_overrides(cfg, overrides, None, folds), grid_job_overrides(cfg, overrides, values, folds)]


def float_value(value: float) -> str:
    """A value as an override that stays a float (``2.0``, not the integer ``2``)."""
    return repr(float(value))


def check_options(cfg: DictConfig) -> None:
    options = cfg.calibrate
    if options.option not in OPTIONS:
        raise ConfigError(f"calibrate.option={options.option} is not an option the grid can set: use "
                          f"{' or '.join(OPTIONS)}.")
    if not options.grid or any(v < 0 for v in options.grid):
        raise ConfigError(f"calibrate.grid={list(options.grid)} must be a non-empty list of non-negative values "
                          f"of model.{options.option}.")
    if not options.folds or any(not 0 <= f < cfg.cv.n_splits for f in options.folds):
        raise ConfigError(f"calibrate.folds={list(options.folds)} must list folds in 0..{cfg.cv.n_splits - 1}.")
    if options.max_emotion_loss < 0:
        raise ConfigError(f"calibrate.max_emotion_loss={options.max_emotion_loss} must be non-negative (points).")
    from anonemo.config import build

    if not build(cfg.model, "model").weighted:
        raise ConfigError(f"model={cfg.model.name} has no β to calibrate: use an in-training method "
                          "(model=hybrid_standardised, grl, maxent, hsic).")


def calibrated_emotion_metric(cfg: DictConfig) -> str:
    """The metric that measures the calibrated model's emotion, as its recipe declares it
    (Hybrid2Emotion for a Hybrid)."""
    from anonemo.config import build
    from anonemo.recipes.fresh_heads import headline

    erasure = None if cfg.get("erasure") is None else build(cfg.erasure, "erasure")
    return headline(build(cfg.model, "model"), erasure).emotion


def collect(cfg: DictConfig, metrics_of: Callable[[float | None, int], dict[str, float] | None]) -> list[Setting]:
    """The grid's validation numbers; ``metrics_of(value, fold)``: the metrics of that FINISHED job,
    or None. Only validation metrics are read."""
    settings, missing = [], []
    leakage_metric = leakage_measure(cfg).metric
    model_utility = names.val_acc(calibrated_emotion_metric(cfg))
    for value in [None, *cfg.calibrate.grid]:
        utility = REFERENCE_UTILITY if value is None else model_utility
        emotion, leakage = [], []
        setting = Setting(value, (), (), cfg.calibrate.option)
        for fold in cfg.calibrate.folds:
            found = metrics_of(value, fold)
            if found is None or utility not in found or leakage_metric not in found:
                missing.append(f"{setting.label} fold {fold}")
                continue
            emotion.append(found[utility])
            leakage.append(found[leakage_metric])
        settings.append(Setting(value, tuple(emotion), tuple(leakage), cfg.calibrate.option))
    if missing:
        raise ConfigError(f"The calibration grid is incomplete ({', '.join(missing)} did not finish with "
                          f"{leakage_metric}): see the sweep's log above, fix the cause and run the same command "
                          "again (finished jobs are reused). A linkage number needs two validation people or more.")
    return settings


def choose(settings: list[Setting], max_emotion_loss: float) -> Setting:
    """The rule of this module's docstring; ``settings[0]`` is the reference."""
    reference, candidates = settings[0], settings[1:]
    kept = [s for s in candidates if reference.mean_emotion - s.mean_emotion <= max_emotion_loss]
    if not kept:
        raise ConfigError(
            f"Every setting loses more than calibrate.max_emotion_loss={max_emotion_loss:g} points of validation "
            f"emotion against the reference's {reference.mean_emotion:.1f}%: try other calibrate.grid."
        )
    return min(kept, key=lambda s: (round(s.mean_leakage, 6), -s.mean_emotion))


def table(settings: list[Setting], chosen: Setting, max_emotion_loss: float, leakage: Leakage) -> str:
    """The grid as Markdown: validation emotion and leakage, mean over folds, the emotion lost
    against the reference (± its standard error over folds), and the verdict. A setting ruled out
    by less than one standard error is flagged: more ``calibrate.folds`` would be needed to tell."""
    reference = settings[0]
    lines = [f"| setting | folds | validation emotion (%) | emotion lost (points ± s.e.) | {leakage.label} | |",
             "|---|---|---|---|---|---|"]
    for s in settings:
        loss, spread = s.emotion_loss(reference)
        verdict = ("" if s.value is None else "**chosen**" if s is chosen
                   else f"loses {loss:.1f} points of emotion" if loss > max_emotion_loss else "")
        if verdict.startswith("loses") and loss - spread <= max_emotion_loss:
            verdict += f" (within one standard error of calibrate.max_emotion_loss={max_emotion_loss:g})"
        lost = "" if s.value is None else f"{loss:.2f}" if math.isnan(spread) else f"{loss:.2f} ± {spread:.2f}"
        lines.append(f"| {s.label} | {len(s.emotion)} | {s.mean_emotion:.2f} | {lost} | {s.mean_leakage:.2f} | {verdict} |")
    return "\n".join(lines)


def front_figure(settings: list[Setting], chosen: Setting, title: str, leakage: Leakage) -> plt.Figure:
    """Validation emotion against validation leakage, one point per setting."""
    figure, axes = plt.subplots(figsize=(6.5, 5))
    for s in settings:
        marker = "s" if s.value is None else "*" if s is chosen else "o"
        axes.plot(s.mean_leakage, s.mean_emotion, marker, markersize=12 if s is chosen else 7, label=s.label)
        axes.annotate(s.label, (s.mean_leakage, s.mean_emotion), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel(f"{leakage.label}  (lower is more private)")
    axes.set_ylabel("validation: emotion (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure
