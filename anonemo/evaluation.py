"""Scoring predictions on the test fold: accuracy, macro-F1, chance level and confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # file output only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import (  # noqa: E402
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from anonemo.metrics import (  # noqa: E402
    EMOTION_ACC,
    EXPECTED_EMOTION,
    IDENTITY_ACC,
    REFIT_IDENTITY_ACC,
    ROUND_BETA,
    ROUND_BUDGET_REFERENCE,
    ROUND_BUDGET_SIGNAL,
    ROUND_BUDGET_SLACK,
    round_curve,
)


@dataclass(frozen=True)
class ClassificationResult:
    """Scores in percent, as the paper reports them."""

    accuracy: float
    macro_f1: float
    chance: float  # 100 / number of classes: the paper's data are balanced
    confusion: np.ndarray  # rows: true class, columns: predicted class
    class_names: tuple[str, ...]

    def as_metrics(self, name: str) -> dict[str, float]:
        """MLflow metrics: the accuracy under ``name`` itself (e.g. ``Emotion``), the rest under it."""
        return {name: self.accuracy, f"{name}/macro_f1": self.macro_f1, f"{name}/chance": self.chance}


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``predictions`` (class indices) equal to ``labels``."""
    return 100 * (predictions.cpu() == labels.cpu()).float().mean().item()


def score(logits: torch.Tensor, targets: torch.Tensor, class_names: tuple[str, ...]) -> ClassificationResult:
    k = len(class_names)
    predictions = logits.argmax(dim=1)
    return ClassificationResult(
        accuracy=100 * multiclass_accuracy(predictions, targets, k, average="micro").item(),
        macro_f1=100 * multiclass_f1_score(predictions, targets, k, average="macro").item(),
        chance=100 / k,
        confusion=multiclass_confusion_matrix(predictions, targets, k).numpy(),
        class_names=tuple(class_names),
    )


def confusion_figure(result: ClassificationResult, title: str) -> plt.Figure:
    k = len(result.class_names)
    size = max(4.0, 0.45 * k + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(result.confusion, cmap="Blues")
    axes.set_xticks(range(k), result.class_names, rotation=90 if k > 7 else 0)
    axes.set_yticks(range(k), result.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title}: {result.accuracy:.1f}% (chance {result.chance:.1f}%)")
    threshold = result.confusion.max() / 2
    for (row, column), count in np.ndenumerate(result.confusion):
        if count:
            axes.text(column, row, int(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.tight_layout()
    return figure


def round_curves_figure(history: list[dict[str, float]], title: str) -> plt.Figure:
    """Per-round accuracies of the Hybrid's heads (Algorithm 1), training and validation sides.
    With an emotion budget (``round/budget/*`` in the rows), a second panel shows each round's beta
    and, per side, the budget's reading of the emotion head (accuracy on the training side, expected
    accuracy on validation), its smoothed value, the reference and the floor the budget keeps it above.

    ``history`` rows hold ``round`` and ``round/<curve>/<side>`` percentages.
    """
    budget = any(ROUND_BUDGET_SLACK in row for row in history)
    figure, panels = plt.subplots(2 if budget else 1, figsize=(8, 8 if budget else 4.5), squeeze=False)
    axes = panels[0, 0]
    rounds = [row["round"] for row in history]

    def curve(key: str) -> list[tuple[float, float]]:
        return [(r, row[key]) for r, row in zip(rounds, history) if key in row]

    styles = {"train": "--", "val": "-"}
    curves = {
        EMOTION_ACC: ("emotion head", "tab:blue"),
        IDENTITY_ACC: ("identity head, after the adversarial step", "tab:red"),
        REFIT_IDENTITY_ACC: ("identity head, re-fitted", "tab:orange"),
    }
    for name, (label, color) in curves.items():
        for side, style in styles.items():
            points = curve(round_curve(name, side))
            if points:
                axes.plot(*zip(*points), style, color=color, marker=".", label=f"{label} ({side})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round t (0: after the initialisation)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="best")
    if budget:
        constraint = panels[1, 0]
        readings = {"train": (round_curve(EMOTION_ACC, "train"), "accuracy"),
                    "val": (round_curve(EXPECTED_EMOTION, "val"), "expected accuracy")}
        for (side, (key, reading)), color in zip(readings.items(), ("tab:purple", "tab:blue")):
            reference = curve(f"{ROUND_BUDGET_REFERENCE}/{side}")[0][1]
            floor = reference - curve(f"{ROUND_BUDGET_SLACK}/{side}")[0][1]  # round 0's slack is the whole budget
            constraint.plot(*zip(*curve(key)), ":", color=color, marker=".", label=f"emotion head, {reading} ({side})")
            constraint.plot(*zip(*curve(f"{ROUND_BUDGET_SIGNAL}/{side}")), "-", color=color, label=f"same, smoothed ({side})")
            constraint.axhline(reference, color=color, linewidth=0.8, label=f"reference: the initialisation ({side})")
            constraint.axhline(floor, color=color, linestyle="--", linewidth=0.8, label=f"reference - max_emotion_loss ({side})")
        constraint.set_ylabel("emotion: what the budget reads (%)")
        constraint.set_xlabel("round t")
        constraint.xaxis.set_major_locator(MaxNLocator(integer=True))
        weight = constraint.twinx()
        betas = curve(ROUND_BETA)
        weight.step(*zip(*betas), where="mid", color="tab:green", marker=".", label="beta of the round")
        # Logarithmic above the smallest positive beta, linear below it: a first round at beta=0 stays drawable.
        weight.set_yscale("symlog", linthresh=min((b for _, b in betas if b > 0), default=1.0))
        weight.set_ylim(bottom=0)
        weight.set_ylabel("beta", color="tab:green")
        lines, extra = constraint.get_legend_handles_labels(), weight.get_legend_handles_labels()
        constraint.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=6, loc="best")
    figure.tight_layout()
    return figure
