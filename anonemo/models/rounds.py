"""The Hybrid's round ends: features, the re-fit of W_i, scores on both sides, curves and timing."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

from anonemo.data.datamodule import TensorBatches
from anonemo.data.features import extract_features, is_bf16
from anonemo.metrics import (EMOTION_ACC, EXPECTED_EMOTION, IDENTITY_ACC, REFIT_IDENTITY_ACC, ROUND_BETA,
                             ROUND_FEATURE_SCALE, ROUND_TIMES, round_curve)
from anonemo.models.budget import REFERENCE_EPOCHS, emotion_reading
from anonemo.models.hybrid import HybridModule, Phase
from anonemo.threads import one_thread
from anonemo.timing import PhaseClock

log = logging.getLogger(__name__)


class RoundEnd(pl.Callback):
    """After the multi-task initialisation (round 0) and after every adversarial round t of a
    :class:`~anonemo.models.hybrid.HybridModule`:

    - extracts the base's features of the ``train`` and ``val`` sides;
    - scores the emotion head and the strongest identity head on both (``round/*_acc/<side>``;
      identity on the training side only when ``identity_on_val`` is false: validation people
      the heads never saw);
    - for t >= 1, has the module re-fit W_i on the training features (step 6 of Algorithm 1) and
      scores the re-fitted heads (``round/refit_identity_acc/<side>``);
    - hands the module the feature scale and emotion accuracies it keeps (:meth:`HybridModule.end_round`),
      and logs what its emotion budget, if any, says of the round (the budget also reads the
      emotion after each of the initialisation's epochs from its last ``REFERENCE_EPOCHS`` on, and
      ends the initialisation once that stops rising);
    - logs it all with the round as the MLflow step, with the seconds of the round's adversarial
      epoch and of the round end's parts (``round/time/*``), keeps it in ``history``
      (checkpointed, for resume), and books the round end's time as frozen-base work on ``clock``.
    """

    def __init__(self, train: TensorBatches, val: TensorBatches, clock: PhaseClock | None = None,
                 identity_on_val: bool = True):
        self.sides = {"train": train, "val": val}
        self.identity_sides = ("train", "val") if identity_on_val else ("train",)
        self.clock = clock
        self.history: list[dict[str, float]] = []
        self.round_started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, hybrid: HybridModule) -> None:
        self.round_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, hybrid: HybridModule) -> None:
        epoch, schedule = trainer.current_epoch, hybrid.schedule
        phase = schedule.phase(epoch)
        # Callbacks' epoch-end hooks run before the module's: a run-away epoch stops here, unscored.
        hybrid.check_divergence(phase)
        bf16, started, sides = is_bf16(trainer.precision), time.perf_counter(), None
        if hybrid.budget is not None and phase.kind == "init" and epoch >= schedule.init_epochs - REFERENCE_EPOCHS:
            sides = self._features(hybrid, bf16)  # the round end below scores the same features
            hybrid.budget.read(self._emotion(hybrid, sides))
            if schedule.may_end_initialisation(epoch) and hybrid.budget.plateaued():
                schedule.end_initialisation(epoch)
                log.info("The initialisation ends after %d epochs: its validation emotion stopped rising", epoch + 1)
                phase = schedule.phase(epoch)
        if not phase.ends_round:
            return
        training_s = started - self.round_started
        if sides is None:
            sides = self._features(hybrid, bf16)
        extracted = time.perf_counter()
        with one_thread() as job_threads:
            metrics, refit_s = self._score_and_refit(hybrid, phase, sides, helper_thread=job_threads > 1)
        ended = time.perf_counter()
        metrics |= dict(zip(ROUND_TIMES, (training_s, extracted - started, refit_s, ended - extracted - refit_s)))
        readings = {"train": metrics[round_curve(EMOTION_ACC, "train")], "val": metrics[round_curve(EXPECTED_EMOTION, "val")]}
        metrics |= hybrid.end_round(phase.round, metrics[ROUND_FEATURE_SCALE], readings)
        self.history.append({"round": phase.round, **metrics})
        self.round_started = time.perf_counter()
        if self.clock is not None:
            self.clock.move(self.round_started - started, "base_training", "frozen_base")
        identity_side = self.identity_sides[-1]
        log.info(
            "round %d/%d: emotion head %.1f%% val, identity %.1f%% %s (strongest head%s), feature scale %.3g",
            phase.round, hybrid.schedule.rounds, metrics[round_curve(EMOTION_ACC, "val")],
            metrics.get(round_curve(REFIT_IDENTITY_ACC, identity_side), metrics[round_curve(IDENTITY_ACC, identity_side)]),
            identity_side, ", re-fitted" if phase.round else "", metrics[ROUND_FEATURE_SCALE],
        )
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=phase.round)
        if phase.round == hybrid.schedule.rounds:  # before max_epochs when the initialisation ended early
            trainer.should_stop = True

    def _features(self, hybrid: HybridModule, bf16: bool) -> dict[str, tuple]:
        """The base's features of each side, with the side's labels."""
        return {name: (extract_features(hybrid.base, side.tensors["image"], bf16), side.tensors)
                for name, side in self.sides.items()}

    @staticmethod
    def _emotion(hybrid: HybridModule, sides: dict[str, tuple]) -> dict[str, float]:
        """What the budget reads of the emotion head on each side: one reading of its reference."""
        return {name: emotion_reading(name, hybrid.head_logits(features)["emotion"], labels["emotion"])
                for name, (features, labels) in sides.items()}

    def _score_and_refit(self, hybrid: HybridModule, phase: Phase, sides: dict,
                         helper_thread: bool) -> tuple[dict[str, float], float]:
        """The round's scores on both sides, and after an adversarial round the re-fit of W_i (with
        a helper thread for its dropout masks if ``helper_thread``) with the re-fitted heads'
        scores; the re-fit's seconds."""
        metrics = {}
        for name, (features, labels) in sides.items():
            accuracies = hybrid.round_accuracies(features, labels, name)
            if name not in self.identity_sides:
                del accuracies[round_curve(IDENTITY_ACC, name)]
            metrics |= accuracies
        train_features, train_labels = sides["train"]
        metrics[ROUND_FEATURE_SCALE] = train_features.abs().mean().item()
        refit_s = 0.0
        if phase.kind == "adversarial":
            refit_started = time.perf_counter()
            hybrid.refit_identity_heads(train_features, train_labels["identity"], phase.round, helper_thread)
            refit_s = time.perf_counter() - refit_started
            for name in self.identity_sides:
                features, labels = sides[name]
                refitted = hybrid.round_accuracies(features, labels, name)[round_curve(IDENTITY_ACC, name)]
                metrics[round_curve(REFIT_IDENTITY_ACC, name)] = refitted
            metrics[ROUND_BETA] = hybrid.round_beta
        return metrics, refit_s

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
