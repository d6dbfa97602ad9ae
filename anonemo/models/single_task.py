"""The paper's Emotion and Face CNNs: one convolutional base and one head, trained for one task."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from anonemo.data.datamodule import TASKS
from anonemo.errors import ConfigError
from anonemo.models.networks import ClassifierHead, ConvBase


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class SingleTaskModule(pl.LightningModule):
    """``model=emotion`` (task ``emotion``) and ``model=face`` (task ``identity``)."""

    def __init__(
        self,
        task: str,
        num_classes: int,
        image_size: int,
        conv_channels: Sequence[int] = (16, 32, 64),
        fc_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        channels_last: bool = True,
    ):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"model.task={task!r} is not known: use one of {', '.join(TASKS)}.")
        self.save_hyperparameters()
        self.task = task
        self.base = ConvBase(image_size, conv_channels)
        self.head = ClassifierHead(self.base.out_features, num_classes, fc_hidden, dropout)
        self.train_metrics = classification_metrics(num_classes, "train/")
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.channels_last = channels_last
        if channels_last:
            # On CPU, channels_last convolutions under bf16 autocast were ~2x faster here.
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.base(images))

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["image"])
        targets = batch[self.task]
        loss = F.cross_entropy(logits, targets)
        metrics.update(logits.detach(), targets)
        # on_epoch only: per-step logging would force a host sync every batch.
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_metrics)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).float()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
