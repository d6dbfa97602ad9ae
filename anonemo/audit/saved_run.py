"""Re-audit the saved base of a finished run: ``python -m anonemo.audit run_id=...``.

Every training job logs its frozen conv base (``model/conv_base.pt``) and its resolved config
(``config.yaml``). From those two artifacts the fold is rebuilt exactly (same data, folds and
seed) and the current attacker suite is run again; the metrics go back into the same run.
Optionally the run's fresh heads (Emotion2Face, Hybrid2Emotion, Hybrid2Face) are re-fitted too,
with given ``transfer`` settings: how runs trained before a change of that protocol are brought
up to it without training their bases again. With ``emotion_output`` the run's saved emotion head
(``model/emotion_head.pt``, after any re-fit) is audited too.
"""

from __future__ import annotations

import logging
import tempfile
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import FeatureDataModule
from anonemo.models.networks import ClassifierHead, ConvBase, load_base, load_network
from anonemo.tracking import BASE_ARTIFACT, EMOTION_HEAD_ARTIFACT, RunLogger, require_run, run_artifact
from anonemo.workflow import (
    audit_fold,
    build_datamodule,
    emotion_output_audit,
    fit_transfer_heads,
    transfer_heads,
    uses_bf16,
)

log = logging.getLogger(__name__)


def reaudit_run(
    client: MlflowClient,
    run_id: str,
    dataset_root: str | None = None,
    null_permutations: int = 0,
    transfer: DictConfig | None = None,
    audit: bool = True,
    emotion_output: bool = False,
) -> dict[str, float]:
    """Audit metrics of run ``run_id``'s saved base, logged to that run and returned; with
    ``transfer`` (a ``conf/transfer`` config) also the metrics of its re-fitted fresh heads, and
    with ``audit=False`` not the attacker suite on the features. ``emotion_output``: also (or, with
    ``audit=False``, only) the audit of its emotion head's output, if the model has an emotion head."""
    require_run(client, run_id)
    with tempfile.TemporaryDirectory() as folder:
        run_cfg: DictConfig = OmegaConf.load(run_artifact(client, run_id, "config.yaml", folder))
        base = load_base(run_artifact(client, run_id, BASE_ARTIFACT.as_posix(), folder))
    if dataset_root is not None:
        run_cfg.dataset.root = dataset_root
    started = time.perf_counter()
    data = build_datamodule(run_cfg)
    features = FeatureDataModule(base, data, bf16=uses_bf16(run_cfg))
    metrics = {} if transfer is None else refit_transfer_heads(client, run_id, run_cfg, transfer, base, features, data)
    # The re-fitted heads' metrics are logged already, as the job logs them; the emotion head is
    # read back after the re-fit, which replaced it.
    audited = audit_fold(run_cfg, features, data, null_permutations) if audit else {}
    if emotion_output and (emotion_head := saved_emotion_head(client, run_id, run_cfg)) is not None:
        audited |= emotion_output_audit(run_cfg, features, data, emotion_head)
    if audited:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in audited.items()])
        client.set_tag(run_id, "audit.reaudited_s", f"{time.perf_counter() - started:.1f}")
        metrics |= audited
    return metrics


def saved_emotion_head(client: MlflowClient, run_id: str, run_cfg: DictConfig) -> ClassifierHead | None:
    """The emotion head the run logged (the Emotion CNN's, or Hybrid2Emotion's); None for a Face model."""
    model = run_cfg.model
    if model.workflow == "face":
        log.info("Run %s (model=%s) has no emotion head; its emotion output is not audited.", run_id, model.name)
        return None
    with tempfile.TemporaryDirectory() as folder:
        head, _ = load_network(run_artifact(client, run_id, EMOTION_HEAD_ARTIFACT.as_posix(), folder), ClassifierHead)
    return head


def refit_transfer_heads(
    client: MlflowClient,
    run_id: str,
    run_cfg: DictConfig,
    transfer: DictConfig,
    base: ConvBase,
    features: FeatureDataModule,
    data: GroupedFoldDataModule,
) -> dict[str, float]:
    """The run's fresh heads trained again on its saved ``base`` with ``transfer`` settings, their
    metrics (and Hybrid2Emotion's head artifact) logged to the run, as the job logs them."""
    if not transfer_heads(run_cfg):
        log.warning("Run %s (model=%s) has no fresh heads on its base; nothing to re-fit.", run_id, run_cfg.model.name)
        return {}
    with tempfile.TemporaryDirectory() as folder:
        # The heads' checkpoints go to a scratch folder; the run's own are left as they are.
        refit_cfg = OmegaConf.merge(run_cfg, {"transfer": transfer, "paths": {"output_dir": folder}})
        logger = RunLogger(tracking_uri=client.tracking_uri, run_id=run_id)
        metrics, _ = fit_transfer_heads(refit_cfg, base, features, data, logger)
    client.set_tag(run_id, "transfer.refit", OmegaConf.to_yaml(transfer).strip().replace("\n", ", "))
    return metrics
