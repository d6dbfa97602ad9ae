"""Re-audit the saved base of a finished run: ``python -m anonemo.audit run_id=...``.

Every training job logs its frozen conv base (``model/conv_base.pt``) and its resolved config
(``config.yaml``). From those two artifacts the fold is rebuilt exactly (same data, folds and
seed) and the current attacker suite is run again; the metrics go back into the same run.
Optionally the run's fresh heads (Emotion2Face, Hybrid2Emotion, Hybrid2Face: what its recipe
trains) are re-fitted too, with given ``fresh_head`` settings: how runs trained before a change of
that protocol are brought up to it without training their bases again. With ``emotion_output``
the run's saved emotion head (``model/emotion_head.pt``, after any re-fit) is audited too.
"""

from __future__ import annotations

import logging
import tempfile
import time

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.audit.attackers import build_attackers
from anonemo.config import build
from anonemo.data.features import FeatureDataModule, is_bf16
from anonemo.data.pipeline import fold_data
from anonemo.errors import TrackingError
from anonemo.erasure import Erasure
from anonemo.audit.frozen_base import evaluate_frozen_base
from anonemo.models.networks import ClassifierHead, Networks, load_base, load_network
from anonemo.recipes.base import JobContext, Recipe
from anonemo.recipes.fresh_heads import final_base_heads
from anonemo.timing import PhaseClock
from anonemo.tracking.artifacts import BASE_ARTIFACT, EMOTION_HEAD_ARTIFACT, require_run, run_artifact
from anonemo.tracking.run import RunLogger, callers_tracking_uri

log = logging.getLogger(__name__)


def reaudit_run(
    client: MlflowClient,
    run_id: str,
    attackers: DictConfig,
    dataset_root: str | None = None,
    null_permutations: int = 0,
    fresh_head: DictConfig | None = None,
    audit: bool = True,
    emotion_output: bool = False,
) -> dict[str, float]:
    """Audit metrics of run ``run_id``'s saved base by ``attackers`` (an ``audit.attackers`` config,
    built against the run's config: its network and precision), logged to that run and returned; with
    ``fresh_head`` (a ``conf/fresh_head`` config) also the metrics of its re-fitted fresh heads, and
    with ``audit=False`` not the attacker suite on the features. ``emotion_output``: also (or, with
    ``audit=False``, only) the audit of its emotion head's output, if the model has an emotion head."""
    require_run(client, run_id)
    with tempfile.TemporaryDirectory() as folder:
        run_cfg: DictConfig = OmegaConf.load(run_artifact(client, run_id, "config.yaml", folder))
        base = load_base(run_artifact(client, run_id, BASE_ARTIFACT.as_posix(), folder))
    if "_target_" not in run_cfg.model:
        raise TrackingError(
            f"run_id={run_id} was trained by an anonemo older than its model recipes (model={run_cfg.model.name}); "
            "train it again with this version to re-audit it."
        )
    if dataset_root is not None:
        run_cfg.dataset.root = dataset_root
    recipe: Recipe = build(run_cfg.model, "model")
    networks: Networks = build(run_cfg.network, "network")
    # The saved base carries the run's erasure; its fresh heads are then Erased2Emotion and Erased2Face.
    erasure: Erasure | None = None if run_cfg.get("erasure") is None else build(run_cfg.erasure, "erasure")
    started = time.perf_counter()
    # Runs saved before cv.protocol existed used the paper's folds.
    run_cfg = OmegaConf.merge({"cv": {"protocol": "paper"}}, run_cfg)
    for key, value in (("audit.attackers", OmegaConf.to_container(attackers, resolve=False)),
                       ("audit.null_permutations", null_permutations), ("audit.emotion_output", emotion_output)):
        OmegaConf.update(run_cfg, key, value, merge=False)
    if fresh_head is not None:
        OmegaConf.update(run_cfg, "fresh_head", fresh_head, merge=False)
    suite = build_attackers(run_cfg.audit.attackers)
    data = fold_data(run_cfg)
    features = FeatureDataModule(base, data, bf16=is_bf16(run_cfg.trainer.precision))
    heads = [] if fresh_head is None else final_base_heads(recipe, erasure)
    if fresh_head is not None and not heads:
        log.warning("Run %s (model=%s) has no fresh heads on its base; nothing to re-fit.", run_id, run_cfg.model.name)
    emotion_head = saved_emotion_head(client, run_id, recipe, erasure) if emotion_output else None
    with tempfile.TemporaryDirectory() as folder, callers_tracking_uri():
        # The heads' checkpoints go to a scratch folder; the run's own are left as they are.
        OmegaConf.update(run_cfg, "paths.output_dir", folder, merge=False)
        job = JobContext(run_cfg, data, RunLogger(tracking_uri=client.tracking_uri, run_id=run_id), PhaseClock(), networks)
        metrics = evaluate_frozen_base(job, base, features, heads, emotion_head, suite, attack_features=audit,
                                       emotion_head_logged=True)
    if heads:
        client.set_tag(run_id, "fresh_head.refit", OmegaConf.to_yaml(fresh_head).strip().replace("\n", ", "))
    client.set_tag(run_id, "audit.reaudited_s", f"{time.perf_counter() - started:.1f}")
    return metrics


def saved_emotion_head(client: MlflowClient, run_id: str, recipe: Recipe,
                       erasure: Erasure | None = None) -> ClassifierHead | None:
    """The emotion head the run logged (the Emotion CNN's, Hybrid2Emotion's or Erased2Emotion's);
    None for a Face model without an erasure."""
    if not (recipe.hands_on_emotion_head or erasure is not None):
        log.info("Run %s (model=%s) has no emotion head; its emotion output is not audited.", run_id, recipe.name)
        return None
    with tempfile.TemporaryDirectory() as folder:
        head, _ = load_network(run_artifact(client, run_id, EMOTION_HEAD_ARTIFACT.as_posix(), folder), ClassifierHead)
    return head
