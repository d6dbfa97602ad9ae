"""One training job: ``run(cfg)`` trains ``cfg.model`` on fold ``cfg.fold`` and logs every number
to one MLflow run.

The job has no model-specific branches. The model's recipe (``cfg.model``, see
:mod:`anonemo.recipes`) trains and scores what it trains; the job then does what every model
shares: fresh heads on the frozen base (``Emotion2Face``, ``Hybrid2Emotion``, ``Hybrid2Face``),
the audit of the base (``audit/identity/max``, ...; docs/audit.md), the saved base and emotion
head, and where the wall time went (``time/*``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from mlflow.entities import Run
from omegaconf import DictConfig

from anonemo import metrics as names
from anonemo.audit.attackers import build_attackers
from anonemo.config import build
from anonemo.data.check import check_job_data
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import FeatureDataModule
from anonemo.data.folds import UNSEEN_PEOPLE_NOTE, fold_protocol
from anonemo.data.pipeline import fold_data
from anonemo.errors import ConfigError, require_permutations
from anonemo.evaluation import score
from anonemo.audit.frozen_base import evaluate_frozen_base
from anonemo.erasure import Erasure, erase
from anonemo.models.networks import Networks
from anonemo.probes import Attacker
from anonemo.recipes.base import JobContext, Recipe, Trained
from anonemo.recipes.fresh_heads import Headline, final_base_heads, headline
from anonemo.summary import result_summary
from anonemo.threads import configure_cpu
from anonemo.timing import PhaseClock
from anonemo.tracking.artifacts import BASE_ARTIFACT
from anonemo.tracking.job_key import finished_run, unfinished_run
from anonemo.tracking.links import run_link
from anonemo.tracking.run import mlflow_run
from anonemo.tracking.store import check_reachable, tracking_uri

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A job checked and ready to run: every option built and the fold's data loaded and split,
    before anything is written to MLflow. ``finished``: the metrics of a FINISHED run of this very
    job, when it is not to run again (``sweep.skip_finished``, ``resume``)."""

    cfg: DictConfig
    recipe: Recipe
    networks: Networks
    clock: PhaseClock
    data: GroupedFoldDataModule | None = None
    threads: int = 1
    reopen: Run | None = None
    finished: dict[str, float] | None = None
    erasure: Erasure | None = None
    attackers: tuple[Attacker, ...] = ()  # the audit's, none when it is off

    @property
    def headline(self) -> Headline:
        return headline(self.recipe, self.erasure)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate ``cfg.model`` on fold ``cfg.fold``; returns the metrics logged to MLflow
    (with ``wall_time_s`` and where it went, ``time/*``)."""
    check_job_data(cfg)
    return execute(plan(cfg))


def plan(cfg: DictConfig) -> Plan:
    """Everything that can be checked before the job's MLflow run exists, after
    :func:`~anonemo.data.check.check_job_data`: an invalid option, an unreachable tracking server or
    a dataset that cannot be loaded or folded stops here and leaves no run behind."""
    clock = PhaseClock()
    recipe: Recipe = build(cfg.model, "model")
    networks: Networks = build(cfg.network, "network")
    erasure: Erasure | None = None if cfg.get("erasure") is None else build(cfg.erasure, "erasure")
    attackers = tuple(build_attackers(cfg.audit.attackers)) if cfg.audit.enabled else ()
    check_protocol(cfg, recipe, erasure)
    check_reachable(tracking_uri(cfg))
    if cfg.sweep.skip_finished or cfg.resume:
        done = finished_run(cfg)
        if done is not None:
            log.info("Skipped %s on %s fold %d: run %s with the same settings FINISHED already (%s)",
                     recipe.name, cfg.dataset.name, cfg.fold, done.info.run_id,
                     "resume" if cfg.resume else "sweep.skip_finished")
            return Plan(cfg, recipe, networks, clock, finished=dict(done.data.metrics))
    reopen = unfinished_run(cfg) if cfg.resume else None
    if cfg.resume:
        log.info("Resume: %s", f"continuing run {reopen.info.run_id} ({reopen.info.status})" if reopen
                 else "no unfinished run with these settings; starting a new one")
    threads = configure_cpu(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with clock.phase("data"):
        data = fold_data(cfg)
        for side in ("train", "val", "test"):
            data.side(side)
    if erasure is not None:
        erasure.check_capacity(networks.feature_directions(), data.identity_classes)
    return Plan(cfg, recipe, networks, clock, data, threads, reopen, erasure=erasure, attackers=attackers)


def check_protocol(cfg: DictConfig, recipe: Recipe, erasure: Erasure | None = None) -> None:
    """A model, erasure or audit option that needs test (or validation) people who were training
    people, under a protocol whose test and validation people never were."""
    testable = fold_protocol(cfg.cv.protocol).testable_tasks
    recipe.check_testable(testable)
    if erasure is not None and erasure.needs_validation_identity and "identity" not in testable:
        raise ConfigError(
            f"erasure={erasure.name} stops on the identity of validation faces of training people, and under "
            f"cv.protocol={cfg.cv.protocol} no validation person is one: use erasure=leace (fitted on the training "
            "side only) or cv.protocol=paper."
        )
    require_permutations(cfg.audit.null_permutations, "audit.null_permutations")
    if cfg.audit.null_permutations and "identity" not in testable:
        raise ConfigError(
            f"audit.null_permutations={cfg.audit.null_permutations} is the null of the closed-set identity attackers, "
            f"which cv.protocol={cfg.cv.protocol} does not run (its test people were never trained on): set "
            "audit.null_permutations=0; the linkage audit measures identity there."
        )


def record_failed_start(cfg: DictConfig, error: Exception) -> None:
    """A sweep's job that stopped before it started is still one of the sweep's jobs: a FAILED run
    holding the error records it, so that the sweep's parent run counts it."""
    try:
        with mlflow_run(cfg):
            raise error
    except type(error):
        pass


def execute(plan: Plan) -> dict[str, float]:
    """The planned job in its MLflow run (see :func:`plan`)."""
    if plan.finished is not None:
        return plan.finished
    cfg, recipe, clock = plan.cfg, plan.recipe, plan.clock
    log.info("%s on %s fold %d: %d torch thread(s), precision %s, %s", recipe.name, cfg.dataset.name, cfg.fold,
             plan.threads, cfg.trainer.precision, "GPU" if torch.cuda.is_available() else "CPU")
    if not plan.data.protocol.closed_set_identity:
        log.info(UNSEEN_PEOPLE_NOTE)
    model = plan.headline
    with mlflow_run(cfg, plan.reopen, model.metrics) as logger:
        logger.client.set_tag(logger.run_id, "torch_threads", str(plan.threads))
        logger.log_hyperparams(plan.data.summary())
        logger.client.set_tag(logger.run_id, names.HEADLINE_TAG, ",".join(model.metrics))
        logger.client.set_tag(logger.run_id, names.EMOTION_METRIC_TAG, model.emotion or "")
        metrics = train_and_evaluate(recipe, JobContext(cfg, plan.data, logger, clock, plan.networks), plan.erasure,
                                     plan.attackers)
        timings = clock.metrics()
        logger.log_metrics(timings)
        metrics |= timings
    uri = tracking_uri(cfg)
    log.info("%s\nAll %d metrics: MLflow run %s in %s (make ui, then %s)",
             result_summary(f"{recipe.name} on {cfg.dataset.name} fold {cfg.fold}", metrics, model.metrics),
             len(metrics), logger.run_id, uri, run_link(uri, logger.experiment_id, logger.run_id))
    return metrics


def train_and_evaluate(recipe: Recipe, job: JobContext, erasure: Erasure | None = None,
                       attackers: Sequence[Attacker] = ()) -> dict[str, float]:
    """The recipe's training, its own heads scored on the frozen base's features, an ``erasure``
    fitted on it (which then belongs to the base), the saved base, then what every frozen base
    goes through (:func:`~anonemo.audit.frozen_base.evaluate_frozen_base`: fresh heads, the audit by
    ``attackers``, none: no audit)."""
    data, logger = job.data, job.logger
    trained = recipe.train(job)
    metrics = dict(trained.metrics)
    base = trained.base
    heads = final_base_heads(recipe, erasure)
    features = None
    if heads or trained.own_heads or attackers:
        with job.clock.phase("frozen_base"):
            features = FeatureDataModule(base, data, bf16=job.bf16)
            metrics |= score_own_heads(trained, features, job)  # the heads trained with the base, before any erasure
            if erasure is not None:
                base, features, erased = erase(erasure, base, features, data)
                logger.log_metrics(erased)
                metrics |= erased
    logger.log_network(base, BASE_ARTIFACT)
    return metrics | evaluate_frozen_base(job, base, features, heads, trained.emotion_head, attackers)


def score_own_heads(trained: Trained, features: FeatureDataModule, job: JobContext) -> dict[str, float]:
    """Test-fold accuracy of each of the recipe's own heads (eval mode) on the frozen features,
    for the tasks the fold can test."""
    metrics = {}
    for name, (task, head) in trained.own_heads.items():
        if task not in job.data.testable_tasks:
            continue
        was_training = head.training
        head.eval()
        with torch.no_grad():
            logits = head(features.sides["test"].tensors["features"])
        head.train(was_training)
        metrics[name] = score(logits, job.data.labels("test", task), job.data.class_names(task)).accuracy
    job.logger.log_metrics(metrics)
    return metrics
