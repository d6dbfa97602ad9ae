"""What the Hybrid measures at each round's end: features of both sides, its heads' scores, the
per-round curves and where the round's time went, and their figure. It measures; the module
decides (:meth:`~anonemo.models.hybrid.HybridModule.end_epoch`)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch

from matplotlib.ticker import MaxNLocator

from anonemo.data.datamodule import TensorBatches
from anonemo.data.features import extract_features
from anonemo.evaluation import accuracy, plt
from anonemo.metrics import (EMOTION_ACC, EXPECTED_EMOTION, IDENTITY_ACC, REFIT_IDENTITY_ACC, ROUND_BETA,
                             ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL, ROUND_BUDGET_SLACK, ROUND_FEATURE_SCALE,
                             round_curve)
from anonemo.models.weight import emotion_reading, expected_accuracy
from anonemo.timing import PhaseClock

log = logging.getLogger(__name__)

Sides = dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]  # side -> (features, labels)


class RoundRecorder:
    """The ``train`` and ``val`` sides of a Hybrid's fold, and what it keeps of its rounds:

    - :meth:`features`: the base's features of both sides, with their labels;
    - :meth:`scores`: the emotion head's accuracy and expected accuracy and the strongest identity
      head's accuracy on each side (``round/*_acc/<side>``; identity on the training side only when
      ``identity_on_val`` is false: validation people the heads never saw), or after a re-fit the
      re-fitted heads' (``round/refit_identity_acc/<side>``);
    - :meth:`record`: the round's row in ``history`` (checkpointed with the module, for resume),
      logged with the round as the MLflow step; the round end's time booked as frozen-base work on
      ``clock``.
    """

    def __init__(self, train: TensorBatches, val: TensorBatches, clock: PhaseClock | None = None,
                 identity_on_val: bool = True):
        self.sides = {"train": train, "val": val}
        self.identity_sides = ("train", "val") if identity_on_val else ("train",)
        self.clock = clock
        self.history: list[dict[str, float]] = []
        self.round_started = time.perf_counter()

    def start_round(self) -> None:
        self.round_started = time.perf_counter()

    def features(self, base: torch.nn.Module, bf16: bool) -> Sides:
        return {name: (extract_features(base, side.tensors["image"], bf16), side.tensors)
                for name, side in self.sides.items()}

    @staticmethod
    def emotion_readings(hybrid, sides: Sides) -> dict[str, float]:
        """What a controller reads of the emotion head on each side (:func:`~anonemo.models.weight.emotion_reading`)."""
        return {name: emotion_reading(name, hybrid.head_logits(features)["emotion"], labels["emotion"])
                for name, (features, labels) in sides.items()}

    @staticmethod
    def readings(metrics: dict[str, float]) -> dict[str, float]:
        """The same readings, from a round's scores."""
        return {"train": metrics[round_curve(EMOTION_ACC, "train")], "val": metrics[round_curve(EXPECTED_EMOTION, "val")]}

    def scores(self, hybrid, sides: Sides, refitted: bool = False) -> dict[str, float]:
        """The heads' scores on both sides and the training features' scale; ``refitted``: only the
        identity heads', after their re-fit."""
        metrics = {}
        for name, (features, labels) in sides.items():
            if refitted and name not in self.identity_sides:
                continue
            logits = hybrid.head_logits(features)
            identity = [accuracy(head.argmax(1), labels["identity"]) for head in logits["identity_heads"]]
            if identity and name in self.identity_sides:
                metrics[round_curve(REFIT_IDENTITY_ACC if refitted else IDENTITY_ACC, name)] = max(identity)
            if not refitted:
                metrics[round_curve(EMOTION_ACC, name)] = accuracy(logits["emotion"].argmax(1), labels["emotion"])
                metrics[round_curve(EXPECTED_EMOTION, name)] = expected_accuracy(logits["emotion"], labels["emotion"])
        if not refitted:
            metrics[ROUND_FEATURE_SCALE] = sides["train"][0].abs().mean().item()
        return metrics

    def record(self, round_: int, rounds: int, metrics: dict[str, float], logger: pl.loggers.Logger | None,
               started: float) -> None:
        self.history.append({"round": round_, **metrics})
        self.start_round()
        if self.clock is not None:
            self.clock.move(self.round_started - started, "base_training", "frozen_base")
        side = self.identity_sides[-1]
        identity = metrics.get(round_curve(REFIT_IDENTITY_ACC, side), metrics.get(round_curve(IDENTITY_ACC, side)))
        log.info("round %d/%d: emotion head %.1f%% val, %sfeature scale %.3g", round_, rounds,
                 metrics[round_curve(EMOTION_ACC, "val")],
                 "" if identity is None else f"identity {identity:.1f}% {side} (strongest head"
                 f"{', re-fitted' if round_curve(REFIT_IDENTITY_ACC, side) in metrics else ''}), ",
                 metrics[ROUND_FEATURE_SCALE])
        if logger is not None:
            logger.log_metrics(metrics, step=round_)


def round_curves_figure(history: list[dict[str, float]], title: str) -> plt.Figure:
    """Per-round accuracies of the Hybrid's heads (Algorithm 1, any method), training and validation sides.
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
