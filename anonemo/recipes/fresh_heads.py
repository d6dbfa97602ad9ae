"""Fresh heads on a frozen base (Emotion2Face, Hybrid2Emotion, Hybrid2Face): the paper's measure of
what a base still holds, trained on its cached features with their own early stopping."""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import pytorch_lightning as pl
from hydra.utils import instantiate

from anonemo.data.datamodule import TASKS
from anonemo.data.features import FeatureDataModule
from anonemo.metrics import ERASED, fresh_head_metric
from anonemo.models.classifiers import FreshHeadModule
from anonemo.erasure import Erasure
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.recipes.base import JobContext, Recipe
from anonemo.threads import one_thread


def final_base_heads(recipe: Recipe, erasure: Erasure | None) -> list[tuple[str, str]]:
    """(task, metric name) of the fresh heads on the base the job ships: the recipe's own
    (``Emotion2Face``, ``Hybrid2Emotion``, ...), or after an erasure an emotion and an identity
    head on the erased base (``Erased2Emotion``, ``Erased2Face``)."""
    if erasure is None:
        return recipe.fresh_head_metrics()
    return [(task, fresh_head_metric(ERASED, task)) for task in TASKS]


@dataclass(frozen=True)
class Headline:
    """What a job of a recipe reports as its model's numbers: ``metrics`` (the recipe's own and its
    fresh heads'), and ``emotion``, the one that measures emotion (searches and calibration read
    its validation accuracy), if any."""

    metrics: tuple[str, ...]
    emotion: str | None


def headline(recipe: Recipe, erasure: Erasure | None) -> Headline:
    """The headline of a job of ``recipe`` with ``erasure``: declared by the recipe, nowhere else."""
    heads = final_base_heads(recipe, erasure)
    fresh = dict(heads)
    return Headline((*recipe.own_metrics.values(), *fresh.values()),
                    fresh.get("emotion", recipe.own_metrics.get("emotion")))


def fit_fresh_heads(
    job: JobContext, base: ConvBase, features: FeatureDataModule, heads: list[tuple[str, str]]
) -> tuple[dict[str, float], dict[str, ClassifierHead]]:
    """The metrics of the fresh heads ``heads`` (task, metric name), and the selected heads by task."""
    metrics: dict[str, float] = {}
    fitted: dict[str, ClassifierHead] = {}
    for task, name in heads:
        head_metrics, fitted[task] = fit_fresh_head(job, base, features, task, name)
        metrics |= head_metrics
    return metrics, fitted


def fit_fresh_head(
    job: JobContext, base: ConvBase, features: FeatureDataModule, task: str, name: str
) -> tuple[dict[str, float], ClassifierHead]:
    """A fresh head of the network config's shape on the frozen ``base``, trained on its cached
    features with the ``fresh_head`` settings, scored as ``name``; its metrics and the selected head.

    With ``fresh_head.standardise`` the head reads the features standardised with the training
    side's statistics, as the audit's attackers do (docs/algorithm.md, "Fresh heads")."""
    settings, data = job.cfg.fresh_head, job.data
    # Its own seed: the same head whether or not the job was resumed before this phase.
    pl.seed_everything((job.cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31, verbose=False)
    head = job.networks.head(base.out_features, data.num_classes(task), standardise=settings.standardise)
    if settings.standardise:
        head.set_input_statistics(features.sides["train"].tensors["features"])
    module = FreshHeadModule(base, head, task, instantiate(settings.optimizer), metric_prefix=f"{name}/")
    trainer = job.selecting_trainer(phase=name, monitor=f"{name}/val/acc", patience=settings.patience,
                                    max_epochs=settings.max_epochs)
    with one_thread(), warnings.catch_warnings():
        # A base loaded for a re-audit is in eval mode; the head trains on its cached features, so the
        # base's mode changes nothing and Lightning's warning about it would only alarm.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        trainer.fit(module, datamodule=features)
        result = job.test_once(trainer, module, features.test_dataloader(), task,
                               trainer.checkpoint_callback.best_model_path)
    return job.log_result(result, name, trainer), module.head
