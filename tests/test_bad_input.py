"""Bad input gets one clear paragraph naming the file or option, never a library traceback."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_SYNTHETIC, make_config
from mlflow.tracking import MlflowClient

from anonemo.errors import ConfigError, DatasetError, ImageReadError
from anonemo.workflow import run


def yale_folder(tmp_path, files):
    folder = tmp_path / "yale"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["dataset=yale", "dataset.root=null"], DatasetError, "dataset.root is not set for dataset=yale"),
        (["dataset=jaffe", "dataset.root=/no/such/jaffe"], DatasetError, "dataset.root=/no/such/jaffe does not exist"),
        (["dataset.image_size=4"], ConfigError, "dataset.image_size=4 is too small for the three 2x2 poolings"),
        (["fold=12"], ConfigError, "fold=12 is out of range for cv.n_splits=10"),
        (["augment.total=10"], ConfigError, "augment.total=10 is smaller than the 420 original images"),
        (["dataset.num_emotions=9"], ConfigError, "dataset.num_emotions=9 is out of range"),
        (["model.task=age"], ConfigError, "model.task='age' is not known"),
        (["model.workflow=hybridx"], ConfigError, "model.workflow=hybridx (model=emotion) is not known"),
    ],
)
def test_bad_settings(tmp_path, overrides, error, message):
    with pytest.raises(error) as raised:
        run(make_config(tmp_path, *overrides))
    assert message in str(raised.value)


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="is empty") as raised:
        run(make_config(tmp_path, "dataset=yale", f"dataset.root={yale_folder(tmp_path, {})}"))
    assert "Yale Face Database" in str(raised.value)  # says where the data comes from


def test_folder_without_recognised_files(tmp_path):
    root = yale_folder(tmp_path, {"notes.txt": b"x", "photo.jpg": b"y"})
    with pytest.raises(DatasetError, match="2 matching no subjectNN.<condition> name"):
        run(make_config(tmp_path, "dataset=yale", f"dataset.root={root}"))


def test_unreadable_image_is_named(yale_root, tmp_path):
    files = {p.name: p.read_bytes() for p in yale_root.iterdir()}
    files["subject03.sad"] = files["subject03.sad"][:200]  # truncated GIF
    root = yale_folder(tmp_path, files)
    with pytest.raises(ImageReadError) as raised:
        run(make_config(tmp_path, "dataset=yale", f"dataset.root={root}"))
    assert f"{root}/subject03.sad" in str(raised.value)


def cli(*arguments, module="anonemo.train"):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_cli_reports_a_missing_dataset_without_traceback(tmp_path):
    result = cli("dataset=yale", "dataset.root=/no/such/yalefaces", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2
    assert "dataset.root=/no/such/yalefaces does not exist" in result.stderr
    assert "dataset=yale dataset.root=/path/to/yalefaces" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_rejects_unknown_config_values(tmp_path):
    result = cli("model=hybrid_unknown", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'model/hybrid_unknown'" in result.stderr
    assert "Available options in 'model'" in result.stderr
    result = cli("dataset.imagesize=32", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0 and "imagesize" in result.stderr
    assert "Traceback" not in result.stderr


def test_preview_writes_a_contact_sheet(yale_root, tmp_path):
    output = tmp_path / "sheet.png"
    result = cli("dataset=yale", f"dataset.root={yale_root}", f"output={output}", f"paths.output_dir={tmp_path}",
                 module="anonemo.data.preview")
    assert result.returncode == 0, result.stderr
    from PIL import Image

    sheet = Image.open(output)
    assert sheet.width < sheet.height  # 15 subject rows, 4 emotion columns


def test_terminated_job_is_marked_killed_not_left_running(tmp_path):
    """SIGTERM (kill, a scheduler's pre-emption) mid-training: the run ends KILLED, exit 130."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    arguments = [f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false", "model=hybrid", "model.rounds=500"]
    job = subprocess.Popen([sys.executable, "-m", "anonemo.train", *TINY_SYNTHETIC, *arguments], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob("mlartifacts/*/*/artifacts/config.yaml")):
        time.sleep(0.5)
    time.sleep(3)  # into training
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130, stderr[-2000:]
    assert "interrupted (terminated by signal SIGTERM): the MLflow run is marked KILLED" in stderr
    assert "Traceback" not in stderr
    (logged,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert logged.info.status == "KILLED"
