"""What one training job does, per model: prepare the fold, train, select on validation, test
once, and log every paper number to one MLflow run.

==============  =====================================================================
model=          MLflow metrics (test fold, percent)
==============  =====================================================================
emotion         Emotion
face            Face
emotion2face    Emotion, Emotion2Face (fresh identity head on Emotion's frozen base)
hybrid          Hybrid2Emotion, Hybrid2Face (fresh heads on the final Hybrid base),
                Hybrid/emotion_head, Hybrid/identity_head (the Hybrid's own heads)
==============  =====================================================================

Every model with a conv base is also audited (``audit.enabled``): ``audit/identity/max`` and
``audit/emotion/max`` are the strongest of several attackers on the frozen base's features;
``audit/emotion_output/identity/max`` (``audit.emotion_output``) is the strongest identity
attacker on the output of the model's emotion head (the Emotion CNN's, or Hybrid2Emotion's).
"""

from __future__ import annotations

import logging
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from torch.utils.data import DataLoader

from anonemo.audit.suite import audit_emotion_output, audit_features
from anonemo.audit.attackers import Attacker, default_attackers
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import FeatureDataModule
from anonemo.data.pipeline import load_faces
from anonemo.errors import ConfigError, require_permutations
from anonemo.evaluation import ClassificationResult, confusion_figure, round_curves_figure, score
from anonemo.models.classifiers import ClassifierModule, SingleTaskModule, TransferModule
from anonemo.models.adversary import Adversary
from anonemo.models.hybrid import HybridModule, HybridSchedule
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.resume import checkpoint_dir, fit_resumably, resumable_callbacks
from anonemo.sweep import configure_threads
from anonemo.timing import PhaseClock
from anonemo.tracking import (
    BASE_ARTIFACT,
    EMOTION_HEAD_ARTIFACT,
    RunLogger,
    finished_run,
    mlflow_run,
    unfinished_run,
    run_url,
    tracking_uri,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate ``cfg.model`` on fold ``cfg.fold``; returns the metrics logged to MLflow
    (with ``wall_time_s`` and where it went, ``time/*``)."""
    if cfg.model.workflow not in WORKFLOWS:
        raise ConfigError(
            f"model.workflow={cfg.model.workflow} (model={cfg.model.name}) is not known: use one of {', '.join(WORKFLOWS)}."
        )
    require_permutations(cfg.audit.null_permutations, "audit.null_permutations")
    if cfg.sweep.skip_finished or cfg.resume:
        done = finished_run(cfg)
        if done is not None:
            log.info("Skipped %s on %s fold %d: run %s with the same settings FINISHED already (%s)",
                     cfg.model.name, cfg.dataset.name, cfg.fold, done.info.run_id,
                     "resume" if cfg.resume else "sweep.skip_finished")
            return dict(done.data.metrics)
    reopen = unfinished_run(cfg) if cfg.resume else None
    if cfg.resume:
        log.info("Resume: %s", f"continuing run {reopen.info.run_id} ({reopen.info.status})" if reopen
                 else "no unfinished run with these settings; starting a new one")
    clock = PhaseClock()
    # Weights and activations that decay into the subnormal range make CPU arithmetic several
    # times slower (seen here: 6x per epoch once the adversarial base collapsed); flush them to 0.
    torch.set_flush_denormal(True)
    threads = configure_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with mlflow_run(cfg, reopen) as logger:
        logger.client.set_tag(logger.run_id, "torch_threads", str(threads))
        with clock.phase("data"):
            datamodule = build_datamodule(cfg)
            for side in ("train", "val", "test"):
                datamodule.side(side)
        metrics = WORKFLOWS[cfg.model.workflow](cfg, datamodule, logger, clock)
        timings = clock.metrics()
        logger.log_metrics(timings)
        metrics |= timings
    log.info(
        "Results of %s on %s fold %d: %s. MLflow run %s in %s (open with `make ui`, then %s)",
        cfg.model.name, cfg.dataset.name, cfg.fold,
        ", ".join(f"{k} = {v:.2f}" for k, v in metrics.items() if not k.startswith("time/")),
        logger.run_id, tracking_uri(cfg), run_url(logger),
    )
    return metrics


def search_objective(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The value a hyper-parameter search maximises (``search.objective``), from validation only.

    ``hybrid_privacy``: the validation accuracy of Hybrid2Emotion, penalised by how far the
    strongest audit attacker's validation accuracy (``audit/identity/max/val``) exceeds
    ``search.identity_ceiling``. Not Hybrid2Face's: one fresh head is the weak measure that a base
    can fool while other attackers still read identity.
    """
    if cfg.search.objective != "hybrid_privacy":
        raise ConfigError(f"search.objective={cfg.search.objective!r} is not known: use hybrid_privacy.")
    if "Hybrid2Emotion/val_acc" not in metrics:
        raise ConfigError("search.objective=hybrid_privacy needs a Hybrid model (model=hybrid or hybrid_*): it scores Hybrid2Emotion.")
    if "audit/identity/max/val" not in metrics:
        raise ConfigError("search.objective=hybrid_privacy scores identity with the audit: set audit.enabled=true.")
    excess = max(0.0, metrics["audit/identity/max/val"] - cfg.search.identity_ceiling)
    return metrics["Hybrid2Emotion/val_acc"] - cfg.search.penalty * excess


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


def train_single_task(cfg: DictConfig, data: GroupedFoldDataModule, logger: RunLogger, clock: PhaseClock) -> dict[str, float]:
    """``model=emotion`` / ``model=face``."""
    metrics, module = fit_single_task(cfg, data, logger, clock)
    logger.log_network(module.base, BASE_ARTIFACT)
    if cfg.audit.enabled:
        with clock.phase("frozen_base"):
            features = FeatureDataModule(module.base, data, bf16=uses_bf16(cfg))
            metrics |= audit_base(cfg, features, data, logger, module.head if cfg.model.task == "emotion" else None)
    return metrics


def train_emotion2face(cfg: DictConfig, data: GroupedFoldDataModule, logger: RunLogger, clock: PhaseClock) -> dict[str, float]:
    """``model=emotion2face``: Emotion, then a fresh identity head on its frozen base."""
    metrics, emotion = fit_single_task(cfg, data, logger, clock)
    logger.log_network(emotion.base, BASE_ARTIFACT)
    with clock.phase("frozen_base"):
        features = FeatureDataModule(emotion.base, data, bf16=uses_bf16(cfg))
        metrics |= fit_transfer_heads(cfg, emotion.base, features, data, logger)[0]
        if cfg.audit.enabled:
            metrics |= audit_base(cfg, features, data, logger, emotion.head)
    return metrics


def train_hybrid(cfg: DictConfig, data: GroupedFoldDataModule, logger: RunLogger, clock: PhaseClock) -> dict[str, float]:
    """``model=hybrid``: Algorithm 1, then Hybrid2Emotion and Hybrid2Face on the final base."""
    m, net = cfg.model, cfg.network
    schedule = HybridSchedule(m.init_epochs, m.rounds, m.adversarial_epochs, m.refit_epochs)
    hybrid = HybridModule(
        num_emotions=data.num_emotions,
        num_subjects=data.num_subjects,
        image_size=cfg.dataset.image_size,
        schedule=schedule,
        alpha=m.alpha,
        beta=m.beta,
        adversary=Adversary(
            objective=m.adversary.objective,
            heads=tuple(m.adversary.heads),
            target=m.adversary.target,
            restart_every=m.adversary.restart_every,
            neighbour_weight=m.adversary.neighbour_weight,
            neighbour_temperature=m.adversary.neighbour_temperature,
            standardise=m.adversary.standardise,
            cross_fit=m.adversary.cross_fit,
        ),
        conv_channels=tuple(net.conv_channels),
        fc_hidden=tuple(net.fc_hidden),
        dropout=net.dropout,
        bottleneck=m.bottleneck,
        feature_norm=m.feature_norm,
        lr=m.lr,
        identity_lr=m.identity_lr,
        weight_decay=m.weight_decay,
        channels_last=net.channels_last,
        max_feature_growth=m.max_feature_growth,
        emotion_guard=m.emotion_guard,
        seed=cfg.seed,
    )
    log.info(
        "Algorithm 1: %d epochs of multi-task initialisation, then %d rounds of %d adversarial epoch(s) "
        "and a %d-pass identity re-fit (alpha=%g, beta=%g, emotion guard %g, adversary: %s)",
        schedule.init_epochs, schedule.rounds, schedule.adversarial_epochs, schedule.refit_epochs, m.alpha, m.beta,
        m.emotion_guard, hybrid.adversary,
    )
    # No validation loop or checkpoint selection: each round is scored on both sides by the module.
    folder = checkpoint_dir(cfg.paths.output_dir, logger.run_id, "hybrid")
    trainer = instantiate_trainer(cfg, logger, resumable_callbacks(folder), max_epochs=schedule.total_epochs,
                                  limit_val_batches=0)
    try:
        with warnings.catch_warnings():
            # The datamodule offers a val loader; the Hybrid scores rounds itself and needs none.
            warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
            with clock.phase("base_training"):
                fit_resumably(trainer, hybrid, data, folder, cfg.resume)
    finally:
        clock.move(hybrid.round_end_seconds, "base_training", "frozen_base")
        if hybrid.history:  # partial curves too, when training stopped early
            logger.log_figure(round_curves_figure(hybrid.history, f"Hybrid on {cfg.dataset.name}, fold {cfg.fold}"),
                              "hybrid_rounds.png")

    logger.log_network(hybrid.base, BASE_ARTIFACT)
    metrics: dict[str, float] = {}
    with clock.phase("frozen_base"):
        features = FeatureDataModule(hybrid.base, data, bf16=uses_bf16(cfg))
        own_heads = hybrid.head_logits(features.sides["test"].tensors["features"])
        for task, name in (("emotion", "Hybrid/emotion_head"), ("identity", "Hybrid/identity_head")):
            result = score(own_heads[task], data.labels("test", task), data.class_names(task))
            logger.log_metrics({name: result.accuracy})
            metrics[name] = result.accuracy
        transferred, heads = fit_transfer_heads(cfg, hybrid.base, features, data, logger)
        metrics |= transferred
        if cfg.audit.enabled:
            metrics |= audit_base(cfg, features, data, logger, heads["emotion"])  # Hybrid2Emotion's head
    return metrics


WORKFLOWS: dict[str, Callable[[DictConfig, GroupedFoldDataModule, RunLogger, PhaseClock], dict[str, float]]] = {
    "emotion": train_single_task,
    "face": train_single_task,
    "emotion2face": train_emotion2face,
    "hybrid": train_hybrid,
}


def fit_single_task(
    cfg: DictConfig, data: GroupedFoldDataModule, logger: RunLogger, clock: PhaseClock
) -> tuple[dict[str, float], SingleTaskModule]:
    """Train the Emotion or Face CNN, keep its best validation checkpoint, score it on the test fold."""
    task, net = cfg.model.task, cfg.network
    module = SingleTaskModule(
        task=task,
        num_classes=data.num_classes(task),
        image_size=cfg.dataset.image_size,
        conv_channels=tuple(net.conv_channels),
        fc_hidden=tuple(net.fc_hidden),
        dropout=net.dropout,
        lr=cfg.model.lr,
        weight_decay=cfg.model.weight_decay,
        channels_last=net.channels_last,
    )
    trainer = selecting_trainer(cfg, logger, phase=cfg.model.metric, monitor="val/acc", patience=cfg.callbacks.patience)
    folder = checkpoint_dir(cfg.paths.output_dir, logger.run_id, cfg.model.metric)
    with clock.phase("base_training"):
        fit_resumably(trainer, module, data, folder, cfg.resume)
    with clock.phase("evaluation"):
        result = test_once(trainer, module, data.test_dataloader(), data, task, folder / "best.ckpt")
    log_result(logger, result, cfg.model.metric)
    if task == "emotion":  # the selected checkpoint's head, which test_once loaded
        logger.log_network(module.head, EMOTION_HEAD_ARTIFACT, class_names=data.class_names(task))
    return result.as_metrics(cfg.model.metric), module


def transfer_heads(cfg: DictConfig) -> list[tuple[str, str]]:
    """(task, metric name) of each fresh head that ``cfg.model``'s workflow trains on its frozen base."""
    if cfg.model.workflow == "emotion2face":
        return [("identity", cfg.model.transfer_metric)]
    if cfg.model.workflow == "hybrid":
        return [("emotion", "Hybrid2Emotion"), ("identity", "Hybrid2Face")]
    return []


def fit_transfer_heads(
    cfg: DictConfig, base: ConvBase, features: FeatureDataModule, data: GroupedFoldDataModule, logger: RunLogger
) -> tuple[dict[str, float], dict[str, ClassifierHead]]:
    """The metrics of ``cfg.model``'s fresh heads, and the selected heads by task."""
    metrics: dict[str, float] = {}
    heads: dict[str, ClassifierHead] = {}
    for task, name in transfer_heads(cfg):
        head_metrics, heads[task] = fit_transfer(cfg, base, features, data, logger, task, name)
        metrics |= head_metrics
    return metrics, heads


def fit_transfer(
    cfg: DictConfig,
    base: ConvBase,
    features: FeatureDataModule,
    data: GroupedFoldDataModule,
    logger: RunLogger,
    task: str,
    name: str,
) -> tuple[dict[str, float], ClassifierHead]:
    """A fresh head on the frozen ``base``, trained on its cached features, scored as ``name``;
    its metrics, and the head (the selected checkpoint's)."""
    # Its own seed: the same head whether or not the job was resumed before this phase.
    pl.seed_everything((cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31, verbose=False)
    module = TransferModule(
        base,
        task=task,
        num_classes=data.num_classes(task),
        fc_hidden=tuple(cfg.network.fc_hidden),
        dropout=cfg.network.dropout,
        lr=cfg.transfer.lr,
        weight_decay=cfg.transfer.weight_decay,
        metric_prefix=f"{name}/",
        standardise_with=features.sides["train"].tensors["features"] if cfg.transfer.standardise else None,
    )
    trainer = selecting_trainer(
        cfg, logger, phase=name, monitor=f"{name}/val/acc", patience=cfg.transfer.patience,
        max_epochs=cfg.transfer.max_epochs,
    )
    trainer.fit(module, datamodule=features)
    result = test_once(trainer, module, features.test_dataloader(), data, task, trainer.checkpoint_callback.best_model_path)
    log_result(logger, result, name)
    if task == "emotion":  # Hybrid2Emotion: the emotion head an exported anonymous model uses
        logger.log_network(module.head, EMOTION_HEAD_ARTIFACT, class_names=data.class_names(task))
    # The selected head's validation accuracy: what hyper-parameter searches may optimise.
    val_acc = {f"{name}/val_acc": 100 * float(trainer.checkpoint_callback.best_model_score)}
    logger.log_metrics(val_acc)
    return result.as_metrics(name) | val_acc, module.head


def audit_base(
    cfg: DictConfig,
    features: FeatureDataModule,
    data: GroupedFoldDataModule,
    logger: RunLogger,
    emotion_head: ClassifierHead | None = None,
) -> dict[str, float]:
    """The identity audit of the features of a frozen base (see :mod:`anonemo.audit.suite`), logged;
    with ``audit.emotion_output`` also that of ``emotion_head``'s output, where the model has one."""
    metrics = audit_fold(cfg, features, data, cfg.audit.null_permutations)
    if emotion_head is not None and cfg.audit.emotion_output:
        metrics |= emotion_output_audit(cfg, features, data, emotion_head)
    logger.log_metrics(metrics)
    return metrics


def audit_attackers(cfg: DictConfig) -> list[Attacker]:
    return default_attackers(tuple(cfg.network.fc_hidden), bf16=uses_bf16(cfg))


def emotion_output_audit(
    cfg: DictConfig, features: FeatureDataModule, data: GroupedFoldDataModule, emotion_head: ClassifierHead
) -> dict[str, float]:
    """The identity audit of ``emotion_head``'s output on the base's features (see
    :func:`anonemo.audit.suite.audit_emotion_output`)."""
    return audit_emotion_output(features.sides, emotion_head, data.num_subjects, cfg.seed, audit_attackers(cfg))


def audit_fold(
    cfg: DictConfig, features: FeatureDataModule, data: GroupedFoldDataModule, null_permutations: int = 0
) -> dict[str, float]:
    started = time.perf_counter()
    metrics = audit_features(
        features.sides,
        {"emotion": data.num_emotions, "identity": data.num_subjects},
        seed=cfg.seed,
        attackers=audit_attackers(cfg),
        null_permutations=null_permutations,
    )
    log.info(
        "Audit: strongest identity attacker %.1f%% (chance %.1f%%), strongest emotion attacker %.1f%% (%.0f s)",
        metrics["audit/identity/max"], metrics["audit/identity/chance"], metrics["audit/emotion/max"],
        time.perf_counter() - started,
    )
    return metrics


def selecting_trainer(cfg: DictConfig, logger: RunLogger, phase: str, monitor: str, patience: int, **overrides) -> pl.Trainer:
    """A Trainer that early-stops on ``monitor`` and keeps the best checkpoint by it (validation only)."""
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=checkpoint_dir(cfg.paths.output_dir, logger.run_id, phase),
            filename="best",
            monitor=monitor,
            mode=cfg.callbacks.mode,
        ),
        EarlyStopping(monitor=monitor, mode=cfg.callbacks.mode, patience=patience),
        *resumable_callbacks(checkpoint_dir(cfg.paths.output_dir, logger.run_id, phase)),
    ]
    return instantiate_trainer(cfg, logger, callbacks, **overrides)


def instantiate_trainer(cfg: DictConfig, logger: RunLogger, callbacks: list[pl.Callback], **overrides) -> pl.Trainer:
    if cfg.trainer.enable_progress_bar:
        callbacks = [*callbacks, RichProgressBar()]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **overrides)


def uses_bf16(cfg: DictConfig) -> bool:
    return str(cfg.trainer.precision).startswith("bf16")


def test_once(
    trainer: pl.Trainer, module: ClassifierModule, loader: DataLoader, data: GroupedFoldDataModule, task: str,
    checkpoint: Path | str,
) -> ClassificationResult:
    """Score ``checkpoint``, the one selected on validation, on the test fold: the only look at it."""
    batches = trainer.predict(module, dataloaders=loader, ckpt_path=str(checkpoint))
    return score(torch.cat(batches), data.labels("test", task), data.class_names(task))


def log_result(logger: RunLogger, result: ClassificationResult, name: str) -> None:
    logger.log_metrics(result.as_metrics(name))
    logger.log_figure(confusion_figure(result, name), f"confusion_{name}.png")
