"""Bad input gets one clear paragraph naming the file or option, never a library traceback."""

import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from conftest import REPO, TINY_SYNTHETIC, gif_declaring, make_config, yale_as_own_folder
from mlflow.tracking import MlflowClient

from anonemo.errors import ConfigError, DatasetError, ImageReadError, ImageTooLargeError, TrackingError
from anonemo.job import run


def yale_folder(tmp_path, files):
    folder = tmp_path / "yale"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def copy_folder(source, target, edit=None):
    """``source``'s files copied into ``target``; ``edit(name, data)`` may change (bytes) or drop (None) each."""
    target.mkdir()
    for file in source.iterdir():
        data = file.read_bytes() if edit is None else edit(file.name, file.read_bytes())
        if data is not None:
            (target / file.name).write_bytes(data)
    return target


def zip_of(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def folder_job(tmp_path, yale_root, rows=None, header="path,subject,emotion"):
    """dataset=folder on Yale's images as a researcher's folder, with its (edited) manifest."""
    root, manifest = yale_as_own_folder(tmp_path, yale_root, manifest_rows=rows, header=header)
    return ["dataset=folder", f"dataset.root={root}", f"dataset.manifest={manifest}"]


# The catalogue of bad input: (case, overrides built from (tmp_path, yale_root, jaffe_root), error class,
# the message's telling part ({tmp} is tmp_path)). Every case runs the real job from its config.
CATALOGUE = [
    ("dataset root not set", lambda t, y, j: ["dataset=yale", "dataset.root=null"],
     DatasetError, "dataset.root is not set (Yale faces)"),
    ("dataset root missing", lambda t, y, j: ["dataset=jaffe", f"dataset.root={t}/no/such/jaffe"],
     DatasetError, "dataset.root={tmp}/no/such/jaffe does not exist"),
    ("empty folder", lambda t, y, j: ["dataset=yale", f"dataset.root={yale_folder(t, {})}"],
     DatasetError, "dataset.root={tmp}/yale is empty"),
    ("neither folder nor zip", lambda t, y, j: ["dataset=yale", f"dataset.root={yale_folder(t, {'a.txt': b'x'})}/a.txt"],
     DatasetError, "dataset.root={tmp}/yale/a.txt is neither a folder nor a zip archive"),
    ("zip with no images", lambda t, y, j: ["dataset=yale", f"dataset.root={zip_of(t / 'yale.zip', {'readme.txt': b'x'})}"],
     DatasetError, "No Yale faces images found in dataset.root={tmp}/yale.zip: 1 file(s) there, 1 matching no"),
    ("files matching no naming scheme", lambda t, y, j: ["dataset=yale", f"dataset.root={yale_folder(t, {'notes.txt': b'x', 'photo.jpg': b'y'})}"],
     DatasetError, "2 file(s) there, 2 matching no subjectNN.<condition> name"),
    ("truncated GIF", lambda t, y, j: ["dataset=yale", f"dataset.root={copy_folder(y, t / 'yale', lambda n, d: d[:200] if n == 'subject03.sad' else d)}"],
     ImageReadError, "Could not decode {tmp}/yale/subject03.sad as an image"),
    ("decompression bomb", lambda t, y, j: ["dataset=yale", f"dataset.root={copy_folder(y, t / 'yale', lambda n, d: gif_declaring(30000, 30000) if n == 'subject03.sad' else d)}"],
     ImageTooLargeError, "{tmp}/yale/subject03.sad declares 900,000,000 pixels, over the limit of 100,000,000: it may be a decompression bomb"),
    ("corrupt TIFF", lambda t, y, j: ["dataset=jaffe", f"dataset.root={copy_folder(j, t / 'jaffe', lambda n, d: d[:300] if n.endswith('.5.tiff') else d)}"],
     ImageReadError, ".5.tiff as an image"),
    ("subject with one original image, kept by the user", lambda t, y, j: ["dataset=jaffe", f"dataset.root={copy_folder(j, t / 'jaffe', lambda n, d: None if n.startswith('KA.') and not n.startswith('KA.AN1.') else d)}", "dataset.min_groups_per_subject=1"],
     ConfigError, "the data has 1 with fewer: subject KA (only in KA.AN1."),
    ("no validation group left in a fold", lambda t, y, j: [*folder_job(t, y, rows=lambda r: [x for x in r if "/happy" in x or "/sad" in x]), "cv.n_splits=2"],
     ConfigError, "leaving each fold a group that validation can take without taking some subject or emotion's last training group. Settings that would work: cv.n_splits=3 (more, smaller test folds); cv.protocol=subject_disjoint keeps all 15 people"),
    ("fold out of range", lambda t, y, j: ["fold=12"], ConfigError, "fold=12 is out of range for cv.n_splits=10"),
    ("more folds than original images", lambda t, y, j: [*TINY_SYNTHETIC, "cv.n_splits=100"],
     ConfigError, "cv.n_splits=100 is larger than the number of groups (48): use at most 48 folds"),
    ("one fold", lambda t, y, j: ["cv.n_splits=1"], ConfigError, "cv.n_splits=1 must be at least 2"),
    ("validation fraction", lambda t, y, j: ["cv.val_fraction=0.9"], ConfigError, "cv.val_fraction=0.9 must be in (0, 0.5]"),
    ("too few augmented images", lambda t, y, j: ["augment.total=10"], ConfigError, "augment.total=10 is smaller than the 420 original images"),
    ("image too small for three poolings", lambda t, y, j: ["dataset.image_size=4"], ConfigError, "dataset.image_size=4 is too small for the three 2x2 poolings"),
    ("too many synthetic emotions", lambda t, y, j: ["dataset.num_emotions=9"], ConfigError, "dataset.num_emotions=9 is out of range"),
    ("unknown fold protocol", lambda t, y, j: ["cv.protocol=loso"], ConfigError, "cv.protocol='loso' is not known: use paper or subject_disjoint"),
    ("more subject-disjoint folds than people", lambda t, y, j: ["dataset=yale", f"dataset.root={y}", "cv.protocol=subject_disjoint", "cv.n_splits=16"],
     ConfigError, "the data has 15 subjects: use cv.n_splits=2..15"),
    ("a Face CNN for unseen people", lambda t, y, j: [*TINY_SYNTHETIC, "model=face", "cv.protocol=subject_disjoint"],
     ConfigError, "model=face classifies the training subjects, and under this cv.protocol no test subject is one of them"),
    ("INLP for unseen people", lambda t, y, j: [*TINY_SYNTHETIC, "model=emotion_inlp", "cv.protocol=subject_disjoint"],
     ConfigError, "erasure=inlp stops on the identity of validation faces of training people"),
    ("LEACE on features narrower than the identities", lambda t, y, j: [*TINY_SYNTHETIC, "model=emotion_leace", "network=compact", "network.bottleneck=3"],
     ConfigError, "erasure=leace removes 3 directions (4 training identities, less one), and this model's base features vary in only 2"),
    ("unknown face crop", lambda t, y, j: ["dataset=yale", f"dataset.root={y}", "dataset.face_crop.method=dlib"],
     ConfigError, "dataset.face_crop.method='dlib' is not known"),
    ("a dataset loader that is none", lambda t, y, j: ["dataset.loader=collections.OrderedDict"],
     ConfigError, "dataset.loader: collections.OrderedDict built a OrderedDict, not a dataset loader"),
    ("a dataset loader that does not exist", lambda t, y, j: ["dataset.loader=anonemo.data.yale.YaleFace"],
     ConfigError, "dataset.loader='anonemo.data.yale.YaleFace' names no class that can be imported"),
    ("unknown task", lambda t, y, j: ["model.task=age"], ConfigError, "model.task='age' is not known"),
    ("unknown fresh head", lambda t, y, j: ["model=emotion2face", "model.fresh_heads=[age]"],
     ConfigError, "model.fresh_heads: age is not a task; use emotion or identity"),
    ("negative alpha", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid", "model.alpha=-0.5"], ConfigError, "model.alpha=-0.5 must be non-negative"),
    ("negative beta", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid", "model.beta=-1"], ConfigError, "model.beta=-1 must be non-negative"),
    ("T = 0", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid", "model.rounds=0"], ConfigError, "model.rounds=0 must be at least 1"),
    ("unknown adversary objective", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid", "model.privacy.objective=kl"],
     ConfigError, "model.privacy.objective='kl' is not known: use one of neg_ce, confusion"),
    ("unknown identity head", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid", "model.privacy.heads=[paper,huge]"],
     ConfigError, "model.privacy.heads: 'huge' is not a known identity head"),
    ("unknown reversal schedule", lambda t, y, j: [*TINY_SYNTHETIC, "model=grl", "model.privacy.schedule=linear"],
     ConfigError, "model.privacy.schedule='linear' is not known: use one of constant, dann"),
    ("unknown feature norm", lambda t, y, j: [*TINY_SYNTHETIC, "model=hybrid_robust", "network.feature_norm=group"],
     ConfigError, "network.feature_norm='group' is not known"),
    ("negative null permutations", lambda t, y, j: ["audit.null_permutations=-1"],
     ConfigError, "audit.null_permutations=-1 must be 0 (no null) or a number of permutations"),
    ("manifest names a missing file", lambda t, y, j: folder_job(t, y, rows=lambda r: [*r, "people/subject99/happy.gif,subject99,happy"]),
     DatasetError, "{tmp}/labels.csv, line 62: people/subject99/happy.gif is not a file under dataset.root={tmp}/faces"),
    ("manifest with a mistyped column", lambda t, y, j: folder_job(t, y, header="path,subjct,emotion"),
     DatasetError, "{tmp}/labels.csv: the column 'subjct' is not one anonemo reads (did you mean subject?)"),
    ("pattern matching no file", lambda t, y, j: [*folder_job(t, y)[:2], "dataset.pattern='(?P<subject>s\\d+)_(?P<emotion>\\w+)\\.png'"],
     DatasetError, "No Folder dataset images found in dataset.root={tmp}/faces: 61 file(s) there, 61 not matching dataset.pattern="),
    ("folder without manifest or pattern", lambda t, y, j: folder_job(t, y)[:2],
     ConfigError, "dataset=folder needs exactly one of dataset.manifest and dataset.pattern (got neither)"),
    ("every subject below the minimum groups", lambda t, y, j: [*folder_job(t, y), "dataset.min_groups_per_subject=5"],
     ConfigError, "No subject has 5 groups of images or more (dataset.min_groups_per_subject=5)"),
    ("an emotion with one group", lambda t, y, j: folder_job(t, y, rows=lambda r: [x for x in r if "surprised" not in x or "subject01/" in x]),
     ConfigError, "emotion surprised (only in people/subject01/surprised.gif). Settings that would work: leaving emotion surprised out of dataset.emotions (its 1 images)"),
    ("unreachable tracking server", lambda t, y, j: ["logger.tracking_uri=http://127.0.0.1:9"],
     TrackingError, "The MLflow tracking server http://127.0.0.1:9 (logger.tracking_uri or $MLFLOW_TRACKING_URI) cannot be reached"),
]


@pytest.mark.parametrize(("case", "overrides", "error", "message"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(tmp_path, yale_root, jaffe_root, case, overrides, error, message):
    """Each bad input stops with its own error class and a message naming the file or option;
    nothing half-written is left in the cache."""
    with pytest.raises(error) as raised:
        run(make_config(tmp_path, *overrides(tmp_path, yale_root, jaffe_root)))
    assert message.format(tmp=tmp_path) in str(raised.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or all(f.suffix == ".npz" for f in cache.rglob("*") if f.is_file())
    # stopped before any work: no MLflow store, run or checkpoint was written
    assert not {"mlflow.db", "mlartifacts", "checkpoints"} & {p.name for p in tmp_path.iterdir()}


def test_empty_folder_says_where_the_data_comes_from(tmp_path):
    with pytest.raises(DatasetError) as raised:
        run(make_config(tmp_path, "dataset=yale", f"dataset.root={yale_folder(tmp_path, {})}"))
    assert "Yale Face Database" in str(raised.value)


def cli(*arguments, module="anonemo.train"):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_cli_reports_a_missing_dataset_without_traceback_and_leaves_nothing(tmp_path):
    result = cli("dataset=yale", "dataset.root=/no/such/yalefaces", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2
    assert "dataset.root=/no/such/yalefaces does not exist" in result.stderr
    assert "dataset=yale dataset.root=/path/to/yalefaces" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # neither an MLflow run nor the folder Hydra made for the command's log
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(("arguments", "message"), [
    (["dataset=yale", "dataset.root=/no/such/yalefaces"], "dataset.root=/no/such/yalefaces does not exist"),
    (["dataset=yale", "dataset.root={tmp}/photos"], "No Yale faces images found in dataset.root={tmp}/photos"),
    (["fold=10"], "fold=10 is out of range for cv.n_splits=10"),
], ids=["missing root", "folder of unrelated photos", "fold out of range"])
def test_data_and_fold_mistakes_are_answered_before_torch_is_imported(tmp_path, arguments, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("IMG_0001.jpg", "IMG_0002.jpg"):
        (photos / name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    command = [sys.executable, "-X", "importtime", "-m", "anonemo.train", f"paths.output_dir={tmp_path}/out",
               *(argument.format(tmp=tmp_path) for argument in arguments)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "anonemo.data.check" in imported
    assert not {"torch", "pytorch_lightning", "mlflow"} & imported
    assert not (tmp_path / "out").exists()


def test_a_mistyped_key_gets_the_nearest_key_not_hydras_plus(tmp_path):
    result = cli("dataset=yale", "dataset.rot=/data/yalefaces", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2
    assert "dataset.rot is not an option" in result.stderr and "Did you mean dataset.root?" in result.stderr
    assert "To append to your config use" not in result.stderr
    # keys that a group option brings are known: model=hybrid has model.rounds
    result = cli("model=face,hybrid", "model.round=2", f"paths.output_dir={tmp_path}", "--cfg", "job")
    assert "Did you mean model.rounds?" in result.stderr
    result = cli("model=hybrid", "model.rounds=2", f"paths.output_dir={tmp_path}", "--cfg", "job")
    assert result.returncode == 0 and "rounds: 2" in result.stdout
    # a group chosen at its package, with a key of what it brings
    result = cli("attackers@audit.attackers=default", "audit.attackers.paper_head.network.dropout=0.5",
                 f"paths.output_dir={tmp_path}", "--cfg", "job")
    assert result.returncode == 0 and "dropout: 0.5" in result.stdout, result.stderr


def test_a_sweep_over_models_says_how_to_set_an_option_the_default_model_lacks(tmp_path):
    """Hydra composes a multirun once with model=emotion, where model.max_emotion_loss does not exist."""
    result = cli("-m", "model=grl,hsic", "model.max_emotion_loss=4", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2 and "To append to your config use" not in result.stderr
    assert "not of the default model=emotion" in result.stderr and "++model.max_emotion_loss=" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


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


def test_a_signal_during_a_store_write_interrupts_once_the_write_returns(monkeypatch):
    """An interrupt cut into SQLAlchemy's code can leave the MLflow store locked: it must land
    in the caller, after the write."""
    from anonemo import cli

    events = []
    store_module = {"__name__": "sqlalchemy.orm.session", "signal": signal, "events": events}
    exec("def write():\n    signal.raise_signal(signal.SIGTERM)\n    events.append('write finished')\n", store_module)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    trace = sys.gettrace()
    monkeypatch.setattr(cli, "_received_signal", None)
    cli.terminate_as_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt, match="terminated by signal SIGTERM"):
            store_module["write"]()
            events.append("caller went on")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert events == ["write finished"]
    assert sys.gettrace() is trace  # tracing was on only until the interrupt


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
