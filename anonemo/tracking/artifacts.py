"""The artifacts a run keeps for later commands (re-audit, export), and fetching them."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from anonemo.errors import TrackingError

# Where each run keeps its frozen conv base (W_c), re-audited by ``python -m anonemo.audit``, and
# the emotion head on it (the Emotion CNN's, or Hybrid2Emotion), exported by ``anonemo.export``.
BASE_ARTIFACT = Path("model/conv_base.pt")
EMOTION_HEAD_ARTIFACT = Path("model/emotion_head.pt")

def require_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(
            f"run_id={run_id} is not a run in the tracking store {client.tracking_uri}; "
            "copy the id from the training log or the MLflow UI, or set tracking_uri."
        ) from error


def run_artifact(client: MlflowClient, run_id: str, artifact: str, folder: str) -> Path:
    """Download one artifact of a run into ``folder``; a clear error if the run has none."""
    try:
        return Path(client.download_artifacts(run_id, artifact, folder))
    except (MlflowException, OSError) as error:
        raise TrackingError(
            f"run_id={run_id} has no artifact {artifact}. Runs of this version of anonemo save their conv "
            "base, and emotion models (emotion, emotion2face, hybrid*) their emotion head; a face model "
            f"has none. Train it again or pick another run. ({error})"
        ) from error
