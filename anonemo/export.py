"""``python -m anonemo.export run_id=ID [register=true]``: ship a run's anonymous emotion model.

The package is the run's conv base W_c (the anonymising encoder) with its emotion head (the
Emotion CNN's own head, or for a Hybrid the Hybrid2Emotion head selected on validation) and no
identity head, plus the exact preprocessing of its training images:

- ``<output_dir>/emotion_model.pt``: TorchScript (``forward``: emotion probabilities, ``encode``:
  the anonymised features) and ``<output_dir>/preprocessing.json`` beside it; what
  ``python -m anonemo.predict`` reads;
- an MLflow Model (pytorch flavour, with signature and input example) logged to the run as
  ``emotion_model`` (and registered under ``registered_name`` with ``register=true``), with
  ``preprocessing.json`` in its folder; ``mlflow models serve`` serves it.

Before writing anything it checks the packaged model against the run's own evaluation on the
run's test fold: the share of test images on which both predict the same emotion is printed.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.data.features import extract_features, is_bf16
from anonemo.data.decode import MAX_IMAGE_PIXELS
from anonemo.data.pipeline import fold_data
from anonemo.errors import ConfigError
from anonemo.evaluation import accuracy
from anonemo.models.networks import ClassifierHead, ConvBase, EmotionModel, load_network
from anonemo.tracking.artifacts import BASE_ARTIFACT, EMOTION_HEAD_ARTIFACT, require_run, run_artifact
from anonemo.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)
MODEL_FILE = "emotion_model.pt"
PREPROCESSING_FILE = "preprocessing.json"


def load_emotion_model(client: MlflowClient, run_id: str) -> tuple[EmotionModel, dict, DictConfig]:
    """The run's encoder and emotion head as one model, its preprocessing, and the run's config."""
    require_run(client, run_id)
    with tempfile.TemporaryDirectory() as folder:
        run_cfg = OmegaConf.load(run_artifact(client, run_id, "config.yaml", folder))
        base, _ = load_network(run_artifact(client, run_id, BASE_ARTIFACT.as_posix(), folder), ConvBase)
        head, payload = load_network(run_artifact(client, run_id, EMOTION_HEAD_ARTIFACT.as_posix(), folder), ClassifierHead)
    preprocessing = {
        "face_crop": OmegaConf.to_container(run_cfg.dataset.get("face_crop", {"method": "none"})),
        "image_size": int(run_cfg.dataset.image_size),
        "class_names": list(payload["class_names"]),
        "max_pixels": MAX_IMAGE_PIXELS,  # images declaring more are refused before decoding
        "run_id": run_id,
        "model": str(run_cfg.model.name),
        "dataset": str(run_cfg.dataset.name),
    }
    return EmotionModel(base, head).eval(), preprocessing, run_cfg


def agreement_on_test_fold(model: EmotionModel, run_cfg: DictConfig) -> dict[str, float]:
    """The packaged model (float32, images in) against the run's own evaluation path (cached
    features of the base under the run's precision, then the head) on the run's test fold."""
    data = fold_data(run_cfg)
    test = data.side("test").tensors
    with torch.no_grad():
        exported = torch.cat([model(chunk) for chunk in test["image"].split(512)]).argmax(1)
        features = extract_features(model.base, test["image"], is_bf16(run_cfg.trainer.precision))
        own = model.head(features).argmax(1)
    return {
        "export/agreement": accuracy(exported, own),
        "export/test_acc": accuracy(exported, test["emotion"]),
        "export/run_path_test_acc": accuracy(own, test["emotion"]),
    }


def export_run(client: MlflowClient, run_id: str, output_dir: Path, register: bool, registered_name: str) -> dict:
    model, preprocessing, run_cfg = load_emotion_model(client, run_id)
    checks = agreement_on_test_fold(model, run_cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(output_dir / MODEL_FILE))
    (output_dir / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2))

    size = preprocessing["image_size"]
    example = np.random.default_rng(0).random((2, 1, size, size), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    with mlflow.start_run(run_id=run_id, log_system_metrics=False), warnings.catch_warnings():
        # torch.export's archive warns about weights off the CPU; these are on it (and the test reloads them)
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        info = mlflow.pytorch.log_model(
            model,
            name="emotion_model",
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=registered_name if register else None,
        )
        mlflow.log_dict(preprocessing, f"emotion_model_files/{PREPROCESSING_FILE}")
        mlflow.log_metrics(checks)
    return {"model_uri": info.model_uri, "files": [str(output_dir / MODEL_FILE), str(output_dir / PREPROCESSING_FILE)],
            "precision": str(run_cfg.trainer.precision), **checks}


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors_reported(discard_run_dir=True):  # an error here comes before any output
        if not cfg.run_id:
            raise ConfigError("run_id is required: python -m anonemo.export run_id=<MLflow run id>.")
        uri = resolve_tracking_uri(cfg.tracking_uri, cfg.paths.output_dir)
        mlflow.set_tracking_uri(uri)
        result = export_run(MlflowClient(uri), str(cfg.run_id), Path(cfg.output_dir), cfg.register, cfg.registered_name)
        print(f"Exported run {cfg.run_id}: {', '.join(result['files'])}; MLflow model {result['model_uri']}"
              + (f", registered as {cfg.registered_name}" if cfg.register else ""))
        print(f"On the run's test fold the exported model agrees with the run's own evaluation on "
              f"{result['export/agreement']:.2f}% of images (accuracy {result['export/test_acc']:.2f}% "
              f"against {result['export/run_path_test_acc']:.2f}%).")
        if result["precision"] != "32-true":
            print(f"The run evaluated its base under trainer.precision={result['precision']}, the export runs in "
                  "float32: images whose top two emotions are nearly tied can flip between the two (under "
                  "trainer.precision=32-true they differ by float rounding only).")


if __name__ == "__main__":
    check_override_keys("export", sys.argv[1:])
    main()
