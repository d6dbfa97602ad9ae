"""What every recipe shares: the job it trains in (:class:`JobContext`), what it hands on
(:class:`Trained`), and its fresh heads' names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from torch import nn
from torch.utils.data import DataLoader

from anonemo.data.datamodule import TASKS, GroupedFoldDataModule
from anonemo.data.features import is_bf16
from anonemo.errors import ConfigError
from anonemo.evaluation import ClassificationResult, confusion_figure, score
from anonemo.metrics import fresh_head_metric, val_acc
from anonemo.models.classifiers import ClassifierModule
from anonemo.models.networks import ClassifierHead, ConvBase, Networks
from anonemo.resume import checkpoint_dir, fit_resumably, resumable_callbacks
from anonemo.timing import PhaseClock
from anonemo.tracking.run import RunLogger


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's version (the job ends with its run id)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


@dataclass
class JobContext:
    """One job's fold, MLflow run, clock and settings, and the training steps recipes share."""

    cfg: DictConfig
    data: GroupedFoldDataModule
    logger: RunLogger
    clock: PhaseClock
    networks: Networks

    @property
    def bf16(self) -> bool:
        return is_bf16(self.cfg.trainer.precision)

    def checkpoints(self, phase: str) -> Path:
        """Where a training phase of this job checkpoints (see :mod:`anonemo.resume`)."""
        return checkpoint_dir(self.cfg.paths.output_dir, self.logger.run_id, phase)

    def trainer(self, callbacks: list[pl.Callback], **overrides) -> pl.Trainer:
        """The configured Trainer (``conf/trainer``), logging to this job's run."""
        if self.cfg.trainer.enable_progress_bar:
            callbacks = [*callbacks, ProgressBar()]
        return instantiate(self.cfg.trainer, callbacks=callbacks, logger=self.logger, **overrides)

    def selecting_trainer(self, phase: str, monitor: str, patience: int, **overrides) -> pl.Trainer:
        """A Trainer that early-stops on ``monitor``, a validation accuracy, and keeps the best
        checkpoint by it."""
        folder = self.checkpoints(phase)
        callbacks: list[pl.Callback] = [
            ModelCheckpoint(dirpath=folder, filename="best", monitor=monitor, mode="max"),
            EarlyStopping(monitor=monitor, mode="max", patience=patience),
            *resumable_callbacks(folder),
        ]
        return self.trainer(callbacks, **overrides)

    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, phase: str) -> None:
        """``trainer.fit``, continued from the phase's last checkpoint with ``resume=true``."""
        fit_resumably(trainer, module, datamodule, self.checkpoints(phase), self.cfg.resume)

    def test_once(self, trainer: pl.Trainer, module: ClassifierModule, loader: DataLoader, task: str,
                  checkpoint: Path | str) -> ClassificationResult:
        """Score ``checkpoint``, the one selected on validation, on the test fold: the only look at it."""
        batches = trainer.predict(module, dataloaders=loader, ckpt_path=str(checkpoint))
        return score(torch.cat(batches), self.data.labels("test", task), self.data.class_names(task))

    def log_result(self, result: ClassificationResult, name: str, trainer: pl.Trainer) -> dict[str, float]:
        """The test-fold result of ``name``, and its selected checkpoint's validation accuracy
        (``<name>/val_acc``: what searches and calibration may read)."""
        metrics = result.as_metrics(name) | {val_acc(name): 100 * float(trainer.checkpoint_callback.best_model_score)}
        self.logger.log_metrics(metrics)
        self.logger.log_figure(confusion_figure(result, name), f"confusion_{name}.png")
        return metrics


@dataclass
class Trained:
    """What a recipe hands on: its final ``base`` (audited, saved, exported), the test-fold
    ``metrics`` it scored itself, the ``emotion_head`` that goes with the base unless a fresh
    emotion head replaces it, and ``own_heads`` (metric name: task, head) that the job scores on
    the base's frozen test features."""

    base: ConvBase
    metrics: dict[str, float] = field(default_factory=dict)
    emotion_head: ClassifierHead | None = None
    own_heads: dict[str, tuple[str, nn.Module]] = field(default_factory=dict)


class Recipe(ABC):
    """A kind of model. ``label`` is what its trained base is called in metric names (the paper's
    Emotion, Face, Hybrid), ``fresh_heads`` the tasks of the fresh heads the job trains on that
    base once it is frozen (``Emotion2Face``: a fresh identity head on the Emotion CNN's base)."""

    label: str
    weighted = False  # whether the model has a privacy weight β (model.beta, model.max_emotion_loss) to calibrate

    @property
    def own_metrics(self) -> dict[str, str]:
        """Task -> name of each headline metric :meth:`train` scores itself on the test fold
        (the Emotion CNN's ``Emotion``); the job adds its fresh heads' (``Emotion2Face``)."""
        return {}

    def __init__(self, name: str, fresh_heads: Sequence[str] = ()):
        unknown = [task for task in fresh_heads if task not in TASKS]
        if unknown:
            raise ConfigError(f"model.fresh_heads: {', '.join(map(str, unknown))} is not a task; use {' or '.join(TASKS)}.")
        self.name = name
        self.fresh_heads = tuple(fresh_heads)

    def fresh_head_metrics(self) -> list[tuple[str, str]]:
        """(task, metric name) of each fresh head: ``("identity", "Emotion2Face")``."""
        return [(task, fresh_head_metric(self.label, task)) for task in self.fresh_heads]

    @property
    def hands_on_emotion_head(self) -> bool:
        """Whether a trained model of this recipe has an emotion head (saved, audited, exported)."""
        return "emotion" in self.fresh_heads

    def check_testable(self, testable_tasks: Sequence[str]) -> None:
        """Raise :class:`ConfigError` if the recipe scores a task the folds cannot test (a Face
        CNN where the test people were never trained on)."""

    @abstractmethod
    def train(self, job: JobContext) -> Trained:
        """Train on ``job.data`` (training and validation sides only), score what the recipe
        itself scores on the test fold, and log it to ``job.logger``."""
