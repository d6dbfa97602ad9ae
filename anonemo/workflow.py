"""What one training job does: prepare the fold, train, select on validation, test once, log."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.pipeline import load_faces
from anonemo.errors import ConfigError
from anonemo.evaluation import ClassificationResult, confusion_figure, score
from anonemo.models.single_task import SingleTaskModule
from anonemo.tracking import RunLogger, mlflow_run, run_url, tracking_uri

log = logging.getLogger(__name__)

SINGLE_TASK_MODELS = ("emotion", "face")


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate ``cfg.model`` on fold ``cfg.fold``; returns the metrics logged to MLflow."""
    if cfg.model.name not in SINGLE_TASK_MODELS:
        raise ConfigError(f"model={cfg.model.name} is not known: use one of {', '.join(SINGLE_TASK_MODELS)}.")
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    with mlflow_run(cfg) as logger:
        metrics = train_single_task(cfg, datamodule, logger)
        metrics["wall_time_s"] = time.perf_counter() - started
        logger.log_metrics({"wall_time_s": metrics["wall_time_s"]})
    log.info(
        "Results of %s on %s fold %d: %s. MLflow run %s in %s (open with `make ui`, then %s)",
        cfg.model.name, cfg.dataset.name, cfg.fold,
        ", ".join(f"{k} = {v:.2f}" for k, v in metrics.items()),
        logger.run_id, tracking_uri(cfg), run_url(logger),
    )
    return metrics


def build_datamodule(cfg: DictConfig) -> GroupedFoldDataModule:
    faces = load_faces(cfg.dataset, cfg.augment, cfg.paths.cache_dir)
    return GroupedFoldDataModule(
        faces,
        fold=cfg.fold,
        n_splits=cfg.cv.n_splits,
        val_fraction=cfg.cv.val_fraction,
        batch_size=cfg.data.batch_size,
        seed=cfg.cv.seed,
    )


def train_single_task(cfg: DictConfig, datamodule: GroupedFoldDataModule, logger: RunLogger) -> dict[str, float]:
    task = cfg.model.task
    module = SingleTaskModule(
        task=task,
        num_classes=datamodule.num_classes(task),
        image_size=cfg.dataset.image_size,
        conv_channels=tuple(cfg.model.conv_channels),
        fc_hidden=tuple(cfg.model.fc_hidden),
        dropout=cfg.model.dropout,
        lr=cfg.model.lr,
        weight_decay=cfg.model.weight_decay,
        channels_last=cfg.model.channels_last,
    )
    trainer = make_trainer(cfg, logger)
    trainer.fit(module, datamodule=datamodule)
    result = test_once(trainer, module, datamodule, task)
    log_result(logger, result, cfg.model.metric)
    return result.as_metrics(cfg.model.metric)


def make_trainer(cfg: DictConfig, logger: RunLogger) -> pl.Trainer:
    """The configured Trainer, selecting and early-stopping on the validation side."""
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=Path(cfg.paths.output_dir) / "checkpoints" / logger.run_id,
            filename="best",
            monitor=cfg.callbacks.monitor,
            mode=cfg.callbacks.mode,
        ),
        EarlyStopping(monitor=cfg.callbacks.monitor, mode=cfg.callbacks.mode, patience=cfg.callbacks.patience),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar())
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)


def test_once(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: GroupedFoldDataModule, task: str
) -> ClassificationResult:
    """Score the checkpoint selected on validation on the test fold; the only look at the test fold."""
    batches = trainer.predict(module, dataloaders=datamodule.test_dataloader(), ckpt_path="best")
    return score(torch.cat(batches), datamodule.labels("test", task), datamodule.class_names(task))


def log_result(logger: RunLogger, result: ClassificationResult, name: str) -> None:
    logger.log_metrics(result.as_metrics(name))
    logger.log_figure(confusion_figure(result, name), f"confusion_{name}.png")
