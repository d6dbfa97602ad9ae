"""Shipping the anonymous emotion model: export (TorchScript + MLflow Model) and predict."""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch
from conftest import gif_declaring, png_declaring
from test_bad_input import cli

from anonemo.data.decode import MAX_IMAGE_PIXELS
from anonemo.data.synthetic import SyntheticFaces
from anonemo.export import MODEL_FILE, PREPROCESSING_FILE
from anonemo.models.networks import ClassifierHead, ConvBase, EmotionModel
from anonemo.predict import main as predict_main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Hybrid run, exported and registered."""
    from conftest import run_and_export

    return run_and_export(tmp_path_factory.mktemp("export"), "model=hybrid", "model.init_epochs=2", "model.rounds=1",
                          "model.privacy.refit_epochs=1", "fresh_head.max_epochs=3", "audit.enabled=false",
                          registered_name="anonemo-test")


def test_export_writes_torchscript_and_an_mlflow_model_that_agree_with_the_run(exported):
    tmp_path, client, run_id, metrics, result = exported
    folder = tmp_path / "model"
    preprocessing = json.loads((folder / PREPROCESSING_FILE).read_text())
    assert preprocessing["class_names"] == ["neutral", "happy", "sad"] and preprocessing["image_size"] == 32
    assert preprocessing["run_id"] == run_id and preprocessing["face_crop"]["method"] == "none"
    assert preprocessing["max_pixels"] == MAX_IMAGE_PIXELS
    # the packaged model reproduces the run's own Hybrid2Emotion evaluation on the test fold
    assert result["export/agreement"] >= 95
    assert result["export/run_path_test_acc"] == pytest.approx(metrics["Hybrid2Emotion"])
    scripted = torch.jit.load(str(folder / MODEL_FILE))
    reloaded = mlflow.pytorch.load_model(result["model_uri"])
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        probabilities = scripted(images)
        assert torch.allclose(reloaded(images), probabilities, atol=1e-6)
    assert probabilities.shape == (4, 3) and torch.allclose(probabilities.sum(1), torch.ones(4))
    assert not any("identity" in name for name, _ in scripted.named_parameters())  # no identity head shipped
    (version,) = client.search_model_versions("name = 'anonemo-test'")
    assert version.run_id == run_id


def test_predict_prints_emotions_writes_csv_and_encodes(exported):
    tmp_path, *_ = exported
    images = tmp_path / "images"
    images.mkdir()
    faces = SyntheticFaces(num_subjects=2, num_emotions=3, images_per_cell=1).load()
    for k, image in enumerate(faces.images[:4]):
        cv2.imwrite(str(images / f"face{k}.{'png' if k % 2 else 'jpg'}"), image)
    (images / "notes.txt").write_text("not an image")
    table = tmp_path / "emotions.csv"
    result = cli(str(tmp_path / "model"), str(images), "--csv", str(table), module="anonemo.predict")
    assert result.returncode == 1  # one file skipped
    assert "skipped: Could not decode" in result.stderr and "notes.txt" in result.stderr
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader(table.open()))
    assert [r["image"].rsplit("/", 1)[1] for r in rows if not r["error"]] == ["face0.jpg", "face1.png", "face2.jpg", "face3.png"]
    assert all(r["emotion"] in ("neutral", "happy", "sad") for r in rows if not r["error"])
    for row in (r for r in rows if not r["error"]):
        assert float(row["confidence"]) == pytest.approx(max(float(row[f"p_{c}"]) for c in ("neutral", "happy", "sad")))
    assert "identity" not in table.read_text() and "subject" not in result.stdout
    encoded = tmp_path / "features.npz"
    result = cli(str(tmp_path / "model"), *(str(p) for p in sorted(images.glob("face*"))), "--encode", str(encoded),
                 module="anonemo.predict")
    assert result.returncode == 0, result.stderr
    saved = np.load(encoded)
    assert saved["features"].shape == (4, 64 * (32 // 8) ** 2) and len(saved["images"]) == 4  # W_c's output


def test_predict_crops_real_faces_as_in_training(yale_root, tmp_path):
    """A model packaged with Haar cropping detects the face in every real Yale image given."""
    torch.manual_seed(0)
    model = EmotionModel(ConvBase(64, (4, 8, 8)), ClassifierHead(8 * 64, 4, (16, 8))).eval()
    torch.jit.script(model).save(str(tmp_path / MODEL_FILE))
    preprocessing = {"face_crop": {"method": "haar", "scale_factor": 1.1, "min_neighbors": 5, "min_size": 0.2,
                                   "margin": 0.1, "center_fraction": 0.9}, "image_size": 64,
                     "class_names": ["normal", "happy", "sad", "surprised"]}
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps(preprocessing))
    files = [yale_root / f"subject0{k}.happy" for k in range(1, 5)]  # GIFs without an extension
    result = cli(str(tmp_path), *map(str, files), module="anonemo.predict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("detected") == 4 and "not detected" not in result.stdout


def untrained_export(folder):
    """An exported-model folder holding an untrained 32-pixel model (for tests of predict's input
    handling, which do not need a trained one)."""
    folder.mkdir()
    torch.jit.script(EmotionModel(ConvBase(32, (4, 8, 8)), ClassifierHead(128, 3, (8, 8)))).save(str(folder / MODEL_FILE))
    (folder / PREPROCESSING_FILE).write_text(json.dumps({"face_crop": {"method": "none"}, "image_size": 32,
                                                         "class_names": ["a", "b", "c"], "max_pixels": 1_000_000}))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", "{tmp}/none does not exist: MODEL must be a folder written by python -m anonemo.export"),
        ("folder without preprocessing", "{tmp}/model/preprocessing.json does not exist"),
        ("junk model", "{tmp}/junk/emotion_model.pt is not a TorchScript model written by anonemo.export"),
        ("missing image", "{tmp}/nothing.png does not exist: give image files or folders of images"),
        ("pixel limit out of range", "--max-pixels=0 must be between 1 and"),
    ],
)
def test_predict_names_bad_input(tmp_path, capsys, case, message):
    untrained_export(tmp_path / "good")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / MODEL_FILE).write_bytes((tmp_path / "good" / MODEL_FILE).read_bytes())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / MODEL_FILE).write_bytes(b"junk")
    (tmp_path / "junk" / PREPROCESSING_FILE).write_text("{}")
    model, images, *options = {
        "missing model": ("none", "x.png"),
        "folder without preprocessing": ("model", "x.png"),
        "junk model": ("junk", "x.png"),
        "missing image": ("good", "nothing.png"),
        "pixel limit out of range": ("good", "x.png", "--max-pixels=0"),
    }[case]
    assert predict_main([str(tmp_path / model), str(tmp_path / images), *options]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err.replace("\n", "")


@pytest.fixture
def hostile_folder(tmp_path):
    """Two faces, two decompression bombs, a text file, a link to a face outside the folder and a
    link to a face inside it."""
    folder = tmp_path / "images"
    folder.mkdir()
    faces = SyntheticFaces(num_subjects=1, num_emotions=3, images_per_cell=1).load().images
    for k in range(2):
        cv2.imwrite(str(folder / f"face{k}.png"), faces[k])
    cv2.imwrite(str(tmp_path / "elsewhere.png"), faces[2])
    (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))
    (folder / "bomb.gif").write_bytes(gif_declaring(30000, 30000))
    (folder / "notes.txt").write_text("not an image")
    (folder / "out.png").symlink_to(tmp_path / "elsewhere.png")
    (folder / "same.png").symlink_to(folder / "face0.png")
    return folder


def test_predict_skips_bombs_unreadable_files_and_links_out_of_the_folder(tmp_path, hostile_folder, capsys):
    model = untrained_export(tmp_path / "model")
    table = tmp_path / "out.csv"
    started = time.perf_counter()
    assert predict_main([str(model), str(hostile_folder), "--csv", str(table)]) == 1
    assert time.perf_counter() - started < 10  # the bombs are refused from their headers, never decoded
    err = capsys.readouterr().err.replace("\n", "")
    assert f"skipped 4 of 7 files; all of them are in {table}" in err
    # Over twice its own limit Pillow refuses the file and reports only the product of width and height.
    assert "bomb.png declares 900,000,000 pixels, over the limit of 1,000,000: it may be a decompression bomb" in err
    assert "bomb.gif declares 900,000,000 pixels" in err
    assert f"out.png is a link to {tmp_path / 'elsewhere.png'}, outside {hostile_folder}" in err
    assert "notes.txt as an image" in err
    rows = {Path(r["image"]).name: r for r in csv.DictReader(table.open())}
    assert {name for name, r in rows.items() if not r["error"]} == {"face0.png", "face1.png", "same.png"}
    assert rows["same.png"]["emotion"] == rows["face0.png"]["emotion"]


def test_predict_strict_stops_at_the_first_bad_file_and_encode_refuses_bombs(tmp_path, hostile_folder, capsys):
    model = untrained_export(tmp_path / "model")
    assert predict_main([str(model), str(hostile_folder / "face0.png"), str(hostile_folder / "bomb.gif"), "--strict"]) == 2
    assert "--strict stops here: remove the file" in capsys.readouterr().err.replace("\n", "")
    encoded = tmp_path / "features.npz"
    assert predict_main([str(model), str(hostile_folder / "bomb.png"), str(hostile_folder / "face1.png"),
                         "--encode", str(encoded)]) == 1
    assert "skipped 1 of 2 files:" in capsys.readouterr().err.replace("\n", "")
    assert list(np.load(encoded)["images"]) == [str(hostile_folder / "face1.png")]
    # The limit is the export's (1,000,000 here) unless --max-pixels sets it.
    cv2.imwrite(str(hostile_folder / "big.png"), np.full((1000, 1200), 128, np.uint8))
    assert predict_main([str(model), str(hostile_folder / "big.png")]) == 1
    assert "big.png declares 1200 x 1000 pixels, over the limit of 1,000,000" in capsys.readouterr().err.replace("\n", "")
    assert predict_main([str(model), str(hostile_folder / "big.png"), "--max-pixels=2000000"]) == 0


def test_mlflow_models_serve_answers_a_rest_request(exported):
    """The exported MLflow Model serves: ``mlflow models serve`` on 127.0.0.1 answers /invocations."""
    tmp_path, client, _, _, result = exported
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The server starts `uvicorn` by name: the environment's bin folder must be on PATH, as in an
    # activated virtual environment.
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": client.tracking_uri, "NO_ALBUMENTATIONS_UPDATE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", result["model_uri"], "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up in 180 s"
                time.sleep(1)
        images = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            served = np.array(json.loads(reply.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    with torch.no_grad():
        expected = torch.jit.load(str(tmp_path / "model" / MODEL_FILE))(torch.from_numpy(images)).numpy()
    assert served.shape == (3, 3) and np.allclose(served, expected, atol=1e-5)
