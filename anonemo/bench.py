"""``python -m anonemo.bench``: anonemo's training throughput against a plain PyTorch loop.

In one process, on the same fold's training images (in memory), network, batch size and
precision, it alternates ``bench.repeats`` times between

- ``single_task``: a hand-written loop (forward, cross-entropy, backward, Adam step) and the
  Emotion CNN (:class:`~anonemo.models.classifiers.SingleTaskModule`) under the Lightning Trainer;
- ``adversarial``: a hand-written eq. (2) step (W_i frozen, ``Le - beta*Li`` on W_c and W_e) and
  the Hybrid's adversarial epochs (:class:`~anonemo.models.hybrid.HybridModule`, manual
  optimisation) under the Trainer.

Each measurement is ``bench.epochs`` warm epochs (the epoch before them warms kernels and allocators). It prints
the medians, peak memory and a line ``ratio anonemo/plain <path>: <ratio>`` per path, and writes
everything as JSON. On a machine with a GPU the same is measured there too (detected, not
configured). With ``bench.full_folds`` it then runs fold 0 of each model through the real
training job and reports where its wall time went (see :mod:`anonemo.timing`). With
``bench.rounds.enabled`` it runs the recommended recipe on a JAFFE-sized synthetic set as whole
commands, under the default OpenMP waiting and under ``OMP_WAIT_POLICY=ACTIVE`` in alternated pairs
and once beside a busy process, and reports their wall times and the seconds per adversarial round
by part (training, feature extraction, identity re-fit, scoring).

``bench.contention=N`` measures the throughput twice: alone, and beside N busy single-threaded
processes that the benchmark starts and stops itself (another user's jobs on a shared machine),
and reports the slowdown.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from torch import nn

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.config import build
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import is_bf16
from anonemo.data.pipeline import fold_data
from anonemo.errors import ConfigError
from anonemo.job import run
from anonemo.metrics import ROUND_TIMES
from anonemo.models.classifiers import SingleTaskModule
from anonemo.models.hybrid import HybridModule
from anonemo.models.networks import ClassifierHead, ConvBase, Networks
from anonemo.optim import Optimizer
from anonemo.recipes.base import Job
from anonemo.recipes.hybrid import Hybrid
from anonemo.threads import configure_threads
from anonemo.timing import PhaseClock
from anonemo.tracking.identity import finished_run
from anonemo.tracking.store import tracking_uri

log = logging.getLogger(__name__)
PATHS = ("single_task", "adversarial")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Workload:
    """One fold's training side as tensors on ``device``, and the settings both loops share."""

    def __init__(self, cfg: DictConfig, data: GroupedFoldDataModule, device: torch.device):
        train = data.side("train").tensors
        self.images = train["image"].to(device)
        self.emotion = train["emotion"].to(device)
        self.identity = train["identity"].to(device)
        self.device = device
        self.batch_size = data.batch_size
        self.bf16 = is_bf16(cfg.trainer.precision)
        self.num_emotions, self.num_subjects = data.num_emotions, data.num_classes("identity")
        self.networks: Networks = build(cfg.network, "network")
        self.optimizer: Optimizer = build(cfg.model.optimizer, "model.optimizer")  # the Emotion CNN's (model=emotion)
        self.data = data
        self.cfg = cfg

    def base_and_head(self, num_classes: int) -> tuple[ConvBase, ClassifierHead]:
        base = self.networks.base()
        return base, self.networks.head(base.out_features, num_classes)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(epoch)
        return list(torch.randperm(len(self.images), generator=generator).to(self.device).split(self.batch_size))


def timed_epochs(w: Workload, epochs: int, step: Callable[[torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer) -> list[float]:
    """Seconds per epoch of the minimal loop an expert would write: for each batch of indices,
    the loss ``step`` computes under autocast, backward, optimizer step."""
    seconds = []
    for epoch in range(epochs):
        synchronize(w.device)
        started = time.perf_counter()
        for index in w.batches(epoch):
            with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=w.bf16):
                loss = step(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(w.device)
        seconds.append(time.perf_counter() - started)
    return seconds


def plain_single_task(w: Workload, epochs: int) -> list[float]:
    """The Emotion CNN: cross-entropy on the emotion labels."""
    base, head = w.base_and_head(w.num_emotions)
    model = nn.Sequential(base, head).to(w.device)
    optimizer = w.optimizer(model.parameters())
    return timed_epochs(w, epochs, lambda index: F.cross_entropy(model(w.images[index]), w.emotion[index]), optimizer)


def plain_adversarial(w: Workload, epochs: int) -> list[float]:
    """Eq. (2): W_i frozen, W_c and W_e minimise Le - beta*Li, with the paper's Hybrid's beta."""
    beta = paper_hybrid(epochs).beta
    base, emotion_head = w.base_and_head(w.num_emotions)
    identity_head = w.base_and_head(w.num_subjects)[1]
    for module in (base, emotion_head, identity_head):
        module.to(w.device)
    identity_head.requires_grad_(False)
    optimizer = w.optimizer([*base.parameters(), *emotion_head.parameters()])

    def step(index: torch.Tensor) -> torch.Tensor:
        features = base(w.images[index])
        emotion_loss = F.cross_entropy(emotion_head(features), w.emotion[index])
        return emotion_loss - beta * F.cross_entropy(identity_head(features), w.identity[index])

    return timed_epochs(w, epochs, step, optimizer)


class EpochTimer(pl.Callback):
    """Seconds of each training epoch's steps; for the Hybrid only its adversarial epochs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        synchronize(self.device)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        synchronize(self.device)
        if not isinstance(module, HybridModule) or module.schedule.phase(trainer.current_epoch).kind == "adversarial":
            self.seconds.append(time.perf_counter() - self.started)


def lightning_epochs(w: Workload, module: pl.LightningModule, epochs: int) -> list[float]:
    timer = EpochTimer(w.device)
    trainer = pl.Trainer(
        accelerator=w.device.type if w.device.type == "cpu" else "gpu",
        devices=1,
        precision=w.cfg.trainer.precision,
        deterministic=w.cfg.trainer.deterministic,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=w.data)
    return timer.seconds


def anonemo_single_task(w: Workload, epochs: int) -> list[float]:
    module = SingleTaskModule(*w.base_and_head(w.num_emotions), "emotion", w.optimizer)
    return lightning_epochs(w, module, epochs)


def paper_hybrid(epochs: int) -> Hybrid:
    """The paper's Hybrid (``model=hybrid``) as its recipe builds it: one initialisation epoch, ``epochs`` rounds."""
    overrides = [*HydraConfig.get().overrides.task, "model=hybrid", "model.init_epochs=1", f"model.rounds={epochs}"]
    return build(hydra.compose("bench", overrides=overrides).model, "model")


def anonemo_adversarial(w: Workload, epochs: int) -> list[float]:
    """The paper's Hybrid for one initialisation epoch and ``epochs`` adversarial ones; its round
    ends (re-fits, scoring) are not part of the loop."""
    module = paper_hybrid(epochs).module(Job(w.cfg, w.data, None, PhaseClock(), w.networks))
    return lightning_epochs(w, module, 1 + epochs)


RUNNERS: dict[str, dict[str, Callable[[Workload, int], list[float]]]] = {
    "single_task": {"plain": plain_single_task, "anonemo": anonemo_single_task},
    "adversarial": {"plain": plain_adversarial, "anonemo": anonemo_adversarial},
}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process high-water


def measure_throughput(cfg: DictConfig, data: GroupedFoldDataModule, device: torch.device) -> dict:
    """Per path and implementation: images/s of each repeat's warm epoch, medians and ratios."""
    w = Workload(cfg, data, device)
    images = len(w.images)
    results: dict = {path: {"plain": [], "anonemo": []} for path in PATHS}
    memory: dict = {path: {"plain": 0.0, "anonemo": 0.0} for path in PATHS}
    for repeat in range(cfg.bench.repeats):
        for path in PATHS:
            for implementation in ("plain", "anonemo"):  # alternated, so drifts hit both alike
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                torch.manual_seed(repeat)
                # the first epoch warms up; several timed epochs average out a shared machine's swings
                seconds = sum(RUNNERS[path][implementation](w, 1 + cfg.bench.epochs)[1:])
                results[path][implementation].append(images * cfg.bench.epochs / seconds)
                memory[path][implementation] = max(memory[path][implementation], peak_memory_mb(device))
                log.info("repeat %d, %s, %s: %.0f images/s", repeat + 1, path, implementation,
                         results[path][implementation][-1])
    summary = {}
    for path in PATHS:
        medians = {impl: statistics.median(values) for impl, values in results[path].items()}
        summary[path] = {
            "images_per_s": results[path],
            "median_images_per_s": medians,
            "peak_memory_mb": memory[path],
            "ratio_anonemo_over_plain": medians["anonemo"] / medians["plain"],
            # each repeat's pair, measured back to back: the spread a single ratio hides
            "ratio_per_repeat": [a / p for a, p in zip(results[path]["anonemo"], results[path]["plain"])],
        }
    return {"device": str(device), "train_images": images, "paths": summary}


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` CPU-bound single-threaded processes running for the duration (none for 0)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def load_conditions(cfg: DictConfig) -> list[tuple[str, int]]:
    """(label, busy processes): alone, and beside ``bench.contention`` busy processes if set."""
    return [("alone", 0)] + ([(f"beside {cfg.bench.contention} busy", cfg.bench.contention)] if cfg.bench.contention else [])


def inherited_overrides(own: list[str]) -> list[str]:
    """This command's overrides that a job it runs keeps (not the benchmark's, and not the ones
    the job sets itself: ``own``)."""
    keys = tuple(o.split("=", 1)[0] for o in own)
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("bench.", "model=", "fold=", *keys))]


# The OpenMP waiting the recipe's job is timed under, each run a whole command: this process's (what
# anonemo sets unless the user did) and libgomp spinning (docs/performance.md, "Shared machines").
WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
POLICIES = {"default": {}, "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}}
BESIDE_BUSY = "default, beside 1 busy process"


def policy_environment(label: str) -> dict[str, str]:
    changed = POLICIES.get(label, {})
    return {k: v for k, v in os.environ.items() if not (changed and k in WAITING)} | changed


def time_rounds(cfg: DictConfig) -> dict[str, list[dict]]:
    """The recommended recipe (``bench.rounds.model``) on ``bench.rounds.overrides`` (a JAFFE-sized
    synthetic set) as whole commands: ``bench.rounds.pairs`` alternated runs under the default
    OpenMP waiting and under ``OMP_WAIT_POLICY=ACTIVE`` on a quiet machine, then one default run
    beside a busy process. Per run: its wall seconds, and its adversarial rounds' seconds by part
    from the run's ``round/time/*`` (round 0, the initialisation, left out)."""
    own = [*cfg.bench.rounds.overrides, f"model={cfg.bench.rounds.model}", "fold=0", "trainer.enable_progress_bar=false"]
    overrides = [*inherited_overrides(own), *own]
    job = hydra.compose("train", overrides=overrides)
    runs: dict[str, list[dict]] = {label: [] for label in (*POLICIES, BESIDE_BUSY)}
    order = [label for _ in range(cfg.bench.rounds.pairs) for label in POLICIES] + [BESIDE_BUSY]
    for label in order:
        environment = policy_environment(label)
        with busy_processes(1 if label == BESIDE_BUSY else 0):
            started = time.perf_counter()
            finished = subprocess.run([sys.executable, "-m", "anonemo.train", *overrides], env=environment,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.perf_counter() - started
        if finished.returncode:
            raise RuntimeError(f"The timed job ({label}) failed:\n{finished.stderr[-3000:]}")
        logged = finished_run(job)  # the newest run of this job: the one just finished
        client = MlflowClient(tracking_uri(job))
        parts = {key: [m.value for m in sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
                       if m.step > 0] for key in ROUND_TIMES}
        runs[label].append({"wall_s": wall, "rounds": parts})
        log.info("%s: %.1f s", label, wall)
    return runs


def time_full_folds(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Fold 0 of each of ``bench.fold_models`` through the real job: wall time and its phases.

    Each job is the training config composed with this command's own overrides (dataset, ...).
    """
    folds = {}
    for model in cfg.bench.fold_models:
        job = hydra.compose("train", overrides=[*inherited_overrides([]), f"model={model}", "fold=0"])
        metrics = run(job)
        folds[model] = {k: v for k, v in metrics.items() if k.startswith("time/") or k == "wall_time_s"}
    return folds


def report(results: dict) -> list[str]:
    lines = []
    for condition, device_results in results["throughput"].items():
        for device_result in device_results:
            device = device_result["device"]
            suffix = ("" if device == "cpu" else f"@{device}") + ("" if condition == "alone" else f" {condition}")
            lines.append(f"{device}{'' if condition == 'alone' else ', ' + condition}: {device_result['train_images']} "
                         f"training images per epoch, batch {results['batch_size']}, precision {results['precision']}, "
                         f"{results['torch_threads']} torch thread(s)")
            for path, r in device_result["paths"].items():
                m = r["median_images_per_s"]
                lines.append(f"  {path:12s} plain {m['plain']:7.0f} img/s   anonemo {m['anonemo']:7.0f} img/s   "
                             f"peak memory {r['peak_memory_mb']['plain']:.0f} / {r['peak_memory_mb']['anonemo']:.0f} MB")
            for path, r in device_result["paths"].items():
                lines.append(f"ratio anonemo/plain {path}{suffix}: {r['ratio_anonemo_over_plain']:.2f} "
                             f"(repeats {min(r['ratio_per_repeat']):.2f}-{max(r['ratio_per_repeat']):.2f})")
    alone = results["throughput"]["alone"][0]["paths"]
    for condition, device_results in results["throughput"].items():
        if condition != "alone":
            for path, r in device_results[0]["paths"].items():
                lines.append(f"slowdown {condition} {path} anonemo: "
                             f"{alone[path]['median_images_per_s']['anonemo'] / r['median_images_per_s']['anonemo']:.2f}x")
    for model, t in results.get("full_folds", {}).items():
        lines.append(
            f"fold 0 of {model}: {t['wall_time_s']:.1f} s; base training {t['time/base_training_s']:.1f} s, "
            f"data {t['time/data_s']:.1f} s, frozen-base phases {t['time/frozen_base_s']:.1f} s "
            f"({100 * t['time/frozen_base_share']:.1f}%), evaluation {t['time/evaluation_s']:.1f} s, "
            f"other {t['time/other_s']:.1f} s; outside base training {100 * t['time/outside_base_training_share']:.1f}%"
        )
    runs = results.get("rounds")
    if runs:
        parts = {key: [t for run in runs["default"] for t in run["rounds"][key]] for key in ROUND_TIMES}
        medians = {key.split("/")[-1].removesuffix("_s"): statistics.median(values) for key, values in parts.items()}
        total = sum(medians.values())
        lines.append(f"{results['rounds_model']} per adversarial round ({len(parts[ROUND_TIMES[0]])} rounds of "
                     f"{len(runs['default'])} runs, default waiting, alone): {total:.2f} s median; "
                     + ", ".join(f"{part} {s:.2f} s ({100 * s / total:.0f}%)" for part, s in medians.items()))
        walls = {label: [run["wall_s"] for run in measured] for label, measured in runs.items()}
        alone = statistics.median(walls["default"])
        pairs = [d / a for d, a in zip(walls["default"], walls["OMP_WAIT_POLICY=ACTIVE"])]
        lines.append(f"{results['rounds_model']} whole job alone: default {alone:.1f} s, OMP_WAIT_POLICY=ACTIVE "
                     f"{statistics.median(walls['OMP_WAIT_POLICY=ACTIVE']):.1f} s (medians of {len(pairs)} alternated "
                     f"pairs); ratio default/ACTIVE: {statistics.median(pairs):.2f} (pairs {min(pairs):.2f}-{max(pairs):.2f})")
        busy = statistics.median(walls[BESIDE_BUSY])
        lines.append(f"{results['rounds_model']} whole job beside 1 busy process: {busy:.1f} s, slowdown "
                     f"{busy / alone:.2f}x its time alone")
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    with user_errors_reported():
        for option in ("repeats", "epochs"):
            if cfg.bench[option] < 1:
                raise ConfigError(f"bench.{option}={cfg.bench[option]} must be at least 1.")
        if cfg.bench.contention < 0:
            raise ConfigError(f"bench.contention={cfg.bench.contention} must be 0 (alone only) or a number of busy processes.")
        torch.set_flush_denormal(True)
        threads = configure_threads(cfg.threads)
        pl.seed_everything(cfg.seed, verbose=False)
        data = fold_data(cfg)
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        results = {
            "dataset": cfg.dataset.name,
            "batch_size": cfg.data.batch_size,
            "precision": str(cfg.trainer.precision),
            "image_size": cfg.dataset.image_size,
            "torch_threads": threads,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "throughput": {},
        }
        for condition, busy in load_conditions(cfg):
            with busy_processes(busy):
                results["throughput"][condition] = [measure_throughput(cfg, data, device) for device in devices]
        if cfg.bench.full_folds:
            results["full_folds"] = time_full_folds(cfg)
        if cfg.bench.rounds.enabled:
            if cfg.bench.rounds.pairs < 1:
                raise ConfigError(f"bench.rounds.pairs={cfg.bench.rounds.pairs} must be at least 1.")
            results["rounds_model"] = cfg.bench.rounds.model
            results["rounds"] = time_rounds(cfg)
        output = Path(cfg.bench.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        for line in report(results):
            print(line)
        print(f"written to {output}")


if __name__ == "__main__":
    check_override_keys("bench", sys.argv[1:])
    main()
