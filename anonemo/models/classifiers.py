"""Single-task classifiers: the paper's Emotion and Face CNNs, and fresh heads on a frozen base."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from anonemo.data.datamodule import check_task
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.optim import Optimizer


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class EpochMean(Metric):
    """The batch-size-weighted mean of a per-batch value (a loss) over an epoch.

    A NaN stays NaN, so a diverged epoch does not look finite. torchmetrics' ``MeanMetric``
    either drops NaNs or, with ``nan_strategy="disable"``, ignores the weights (1.9.0).
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.detach().float() * weight
        self.count += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of ``head`` for one task, on ``base``; subclasses say what the head reads.

    Metrics are logged per epoch as ``<metric_prefix>{train,val}/{loss,acc,macro_f1}``, so that
    several phases of one job (e.g. Emotion, then Emotion2Face) can share one MLflow run.
    ``optimizer`` builds the optimizer from the trainable parameters (``model.optimizer``).
    """

    def __init__(self, base: ConvBase, head: ClassifierHead, task: str, optimizer: Optimizer, metric_prefix: str = ""):
        super().__init__()
        check_task(task)
        self.task = task
        self.make_optimizer = optimizer
        self.metric_prefix = metric_prefix
        num_classes = head.architecture["num_classes"]
        self.train_metrics = classification_metrics(num_classes, f"{metric_prefix}train/")
        self.val_metrics = classification_metrics(num_classes, f"{metric_prefix}val/")
        self.train_loss, self.val_loss = EpochMean(), EpochMean()
        # each step's predicted classes and targets, scored at the epoch's end (_log_epoch)
        self.epoch_predictions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": []}
        self.base, self.head = base, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(images))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's logits for one batch."""
        raise NotImplementedError

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self.logits(batch)
        targets = batch[self.task]
        loss = F.cross_entropy(logits, targets)
        # Scored and logged once per epoch (_log_epoch): a Lightning self.log call or a metrics
        # update per step is a sizeable share of a CPU step (docs/performance.md).
        self.epoch_predictions[stage].append((logits.detach().argmax(dim=1), targets))
        getattr(self, f"{stage}_loss").update(loss.detach(), len(targets))
        return loss

    def _log_epoch(self, stage: str) -> None:
        metrics, loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        predicted, targets = zip(*self.epoch_predictions[stage])
        self.epoch_predictions[stage].clear()
        # the same counts as an update per step: the metrics sum confusion counts over updates
        metrics.update(torch.cat(predicted), torch.cat(targets))
        scores = metrics.compute() | {f"{self.metric_prefix}{stage}/loss": loss.compute()}
        # The progress bar shows what early stopping watches; one column keeps it on one line at 80 columns.
        shown = f"{self.metric_prefix}val/acc"
        self.log_dict({k: v for k, v in scores.items() if k != shown})
        if shown in scores:
            self.log(shown, scores[shown], prog_bar=True)
        metrics.reset()
        loss.reset()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.logits(batch).float()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer([p for p in self.parameters() if p.requires_grad])


class SingleTaskModule(ClassifierModule):
    """The Emotion CNN (task ``emotion``) and the Face CNN (task ``identity``): ``base`` and
    ``head`` trained together on images."""

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"])


class FreshHeadModule(ClassifierModule):
    """A frozen, given ``base`` and a fresh ``head`` trained for one task.

    Emotion2Face, Hybrid2Emotion and Hybrid2Face. The base never changes, so the head trains on
    the base's features computed once per side (batches with a ``features`` key, see
    :class:`~anonemo.data.features.FeatureDataModule`); ``forward`` still maps images to logits.
    """

    def __init__(self, base: ConvBase, head: ClassifierHead, task: str, optimizer: Optimizer, metric_prefix: str = ""):
        super().__init__(base, head, task, optimizer, metric_prefix)
        self.base.requires_grad_(False)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(batch["features"])
