"""Scoring predictions on the test fold: accuracy, macro-F1, chance level and confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # file output only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import (  # noqa: E402
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
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
