"""What every model's frozen base goes through once trained: fresh heads on its cached features,
the emotion head saved with it, the audit. The job calls it after training
(:func:`anonemo.job.train_and_evaluate`), the re-audit of a saved run on the run's saved base
(:func:`anonemo.audit.saved_run.reaudit_run`)."""

from __future__ import annotations

from collections.abc import Sequence

from anonemo import metrics as names
from anonemo.audit.suite import audit_base
from anonemo.data.features import FeatureDataModule
from anonemo.models.networks import ClassifierHead, ConvBase
from anonemo.probes import Attacker
from anonemo.recipes.base import JobContext
from anonemo.recipes.fresh_heads import fit_fresh_heads
from anonemo.tracking.artifacts import EMOTION_HEAD_ARTIFACT


def evaluate_frozen_base(job: JobContext, base: ConvBase, features: FeatureDataModule | None,
                         heads: Sequence[tuple[str, str]], emotion_head: ClassifierHead | None,
                         attackers: Sequence[Attacker], attack_features: bool = True,
                         emotion_head_logged: bool = False) -> dict[str, float]:
    """The fresh ``heads`` (task, metric name) that the fold can test, trained on ``base``'s cached
    ``features``; the emotion head (a fresh one replaces ``emotion_head``) logged as the one that
    goes with the base, unless it is ``emotion_head`` and that is the run's logged one
    (``emotion_head_logged``); then the audit by ``attackers`` (none: no audit) of the features
    (unless ``attack_features`` is false) and, with ``job.cfg.audit.emotion_output``, of the emotion
    head's output. Returns the metrics, logged to the job's run."""
    data, logger, metrics, fitted = job.data, job.logger, {}, {}
    testable = [(task, name) for task, name in heads if task in data.testable_tasks]
    if testable:
        with job.clock.phase("frozen_base"):
            metrics, fitted = fit_fresh_heads(job, base, features, testable)
        emotion_head = fitted.get("emotion", emotion_head)
    if emotion_head is not None and ("emotion" in fitted or not emotion_head_logged):  # what anonemo.export ships
        logger.log_network(emotion_head, EMOTION_HEAD_ARTIFACT, class_names=data.class_names("emotion"))
    if attackers:
        with job.clock.phase("frozen_base"):
            audited = audit_base(
                features.sides, data.testable_classes, job.cfg.seed, list(attackers), features=attack_features,
                null_permutations=job.cfg.audit.null_permutations,
                emotion_head=emotion_head if job.cfg.audit.emotion_output else None,
            )
        logger.log_metrics(audited)
        metrics |= audited
        if below := names.below_chance(audited):
            logger.client.set_tag(logger.run_id, "audit.below_chance", ", ".join(below))
    return metrics
