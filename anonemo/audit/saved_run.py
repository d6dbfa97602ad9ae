"""Re-audit the saved base of a finished run: ``python -m anonemo.audit run_id=...``.

Every training job logs its frozen conv base (``model/conv_base.pt``) and its resolved config
(``config.yaml``). From those two artifacts the fold is rebuilt exactly (same data, folds and
seed) and the current attacker suite is run again; the metrics go back into the same run.
"""

from __future__ import annotations

import logging
import tempfile
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.data.features import FeatureDataModule
from anonemo.models.networks import load_base
from anonemo.tracking import BASE_ARTIFACT, require_run, run_artifact
from anonemo.workflow import audit_fold, build_datamodule, uses_bf16

log = logging.getLogger(__name__)


def reaudit_run(
    client: MlflowClient, run_id: str, dataset_root: str | None = None, null_permutations: int = 0
) -> dict[str, float]:
    """Audit metrics of run ``run_id``'s saved base, logged to that run and returned."""
    require_run(client, run_id)
    with tempfile.TemporaryDirectory() as folder:
        run_cfg: DictConfig = OmegaConf.load(run_artifact(client, run_id, "config.yaml", folder))
        base = load_base(run_artifact(client, run_id, BASE_ARTIFACT.as_posix(), folder))
    if dataset_root is not None:
        run_cfg.dataset.root = dataset_root
    started = time.perf_counter()
    data = build_datamodule(run_cfg)
    metrics = audit_fold(run_cfg, FeatureDataModule(base, data, bf16=uses_bf16(run_cfg)), data, null_permutations)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
    client.set_tag(run_id, "audit.reaudited_s", f"{time.perf_counter() - started:.1f}")
    return metrics
