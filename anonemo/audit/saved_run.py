"""Re-audit the saved base of a finished run: ``python -m anonemo.audit run_id=...``.

Every training job logs its frozen conv base (``model/conv_base.pt``) and its resolved config
(``config.yaml``). From those two artifacts the fold is rebuilt exactly (same data, folds and
seed) and the current attacker suite is run again; the metrics go back into the same run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.data.features import FeatureDataModule
from anonemo.errors import TrackingError
from anonemo.models.networks import load_base
from anonemo.tracking import BASE_ARTIFACT
from anonemo.workflow import audit_fold, build_datamodule, uses_bf16

log = logging.getLogger(__name__)


def download(client: MlflowClient, run_id: str, artifact: str, folder: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=folder, tracking_uri=client._tracking_client.tracking_uri
        ))
    except (MlflowException, OSError) as error:
        raise TrackingError(
            f"run_id={run_id} has no artifact {artifact}: only runs trained by this version of anonemo on a "
            f"model with a conv base (emotion, face, emotion2face, hybrid) save one. Train it again. ({error})"
        ) from error


def reaudit_run(client: MlflowClient, run_id: str, dataset_root: str | None = None) -> dict[str, float]:
    """Audit metrics of run ``run_id``'s saved base, logged to that run and returned."""
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(
            f"run_id={run_id} is not a run in the tracking store {client._tracking_client.tracking_uri}; "
            "copy the id from the training log or the MLflow UI, or set tracking_uri."
        ) from error
    with tempfile.TemporaryDirectory() as folder:
        run_cfg: DictConfig = OmegaConf.load(download(client, run_id, "config.yaml", folder))
        base = load_base(download(client, run_id, BASE_ARTIFACT.as_posix(), folder))
    if dataset_root is not None:
        run_cfg.dataset.root = dataset_root
    started = time.perf_counter()
    data = build_datamodule(run_cfg)
    metrics = audit_fold(run_cfg, FeatureDataModule(base, data, bf16=uses_bf16(run_cfg)), data)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
    client.set_tag(run_id, "audit.reaudited_s", f"{time.perf_counter() - started:.1f}")
    return metrics
