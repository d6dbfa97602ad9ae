"""The Hybrid's round ends: features, the re-fit of W_i, scores on both sides, curves and timing."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

from anonemo.data.datamodule import TensorBatches
from anonemo.data.features import extract_features, is_bf16
from anonemo.metrics import ROUND_BETA, ROUND_FEATURE_SCALE
from anonemo.models.hybrid import HybridModule
from anonemo.timing import PhaseClock

log = logging.getLogger(__name__)


class RoundEnd(pl.Callback):
    """After the multi-task initialisation (round 0) and after every adversarial round t of a
    :class:`~anonemo.models.hybrid.HybridModule`:

    - extracts the base's features of the ``train`` and ``val`` sides;
    - scores the emotion head and the strongest identity head on both (``round/*_acc/<side>``);
    - for t >= 1, has the module re-fit W_i on the training features (step 6 of Algorithm 1) and
      scores the re-fitted heads (``round/refit_identity_acc/<side>``);
    - hands the module the feature scale and emotion accuracy it keeps (:meth:`HybridModule.end_round`);
    - logs it all with the round as the MLflow step and keeps it in ``history`` (checkpointed, for
      resume), and books its time as frozen-base work on ``clock``.
    """

    def __init__(self, train: TensorBatches, val: TensorBatches, clock: PhaseClock | None = None):
        self.sides = {"train": train, "val": val}
        self.clock = clock
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, hybrid: HybridModule) -> None:
        phase = hybrid.schedule.phase(trainer.current_epoch)
        # Callbacks' epoch-end hooks run before the module's: a run-away epoch stops here, unscored.
        hybrid.check_divergence(phase)
        if not phase.ends_round:
            return
        started = time.perf_counter()
        bf16 = is_bf16(trainer.precision)
        sides = {name: (extract_features(hybrid.base, side.tensors["image"], bf16), side.tensors)
                 for name, side in self.sides.items()}
        metrics = {}
        for name, (features, labels) in sides.items():
            metrics |= hybrid.round_accuracies(features, labels, name)
        train_features, train_labels = sides["train"]
        metrics[ROUND_FEATURE_SCALE] = train_features.abs().mean().item()
        if phase.kind == "adversarial":
            hybrid.refit_identity_heads(train_features, train_labels["identity"], phase.round)
            for name, (features, labels) in sides.items():
                refitted = hybrid.round_accuracies(features, labels, name)[f"round/identity_acc/{name}"]
                metrics[f"round/refit_identity_acc/{name}"] = refitted
            metrics[ROUND_BETA] = hybrid.round_beta
        hybrid.end_round(phase.round, metrics[ROUND_FEATURE_SCALE], metrics["round/emotion_acc/train"])
        self.history.append({"round": phase.round, **metrics})
        if self.clock is not None:
            self.clock.move(time.perf_counter() - started, "base_training", "frozen_base")
        log.info(
            "round %d/%d: emotion head %.1f%% val, identity %.1f%% val (strongest head%s), feature scale %.3g",
            phase.round, hybrid.schedule.rounds, metrics["round/emotion_acc/val"],
            metrics.get("round/refit_identity_acc/val", metrics["round/identity_acc/val"]),
            ", re-fitted" if phase.round else "", metrics[ROUND_FEATURE_SCALE],
        )
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=phase.round)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
