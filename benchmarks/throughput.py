"""Training throughput of anonemo's real path against a minimal hand-written PyTorch loop.

In one process, on the same fold's training images (in memory), network, batch size and
precision, alternated ``bench.repeats`` times (each implementation first in every other repeat):

- ``single_task``: a hand-written loop (forward, cross-entropy, backward, Adam step) and the
  Emotion CNN (:class:`~anonemo.models.classifiers.SingleTaskModule`) under the Lightning Trainer;
- ``adversarial``: a hand-written eq. (2) step (W_i frozen, ``Le - beta*Li`` on W_c and W_e) and
  the paper's Hybrid (its recipe's :class:`~anonemo.models.hybrid.HybridModule`) in its adversarial
  epochs under the Trainer.

Each measurement is ``bench.epochs`` warm epochs (the epoch before them warms kernels and allocators).
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections.abc import Callable

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from anonemo.config import build
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.features import is_bf16
from anonemo.models.classifiers import SingleTaskModule
from anonemo.models.hybrid import HybridModule
from anonemo.models.networks import ClassifierHead, ConvBase, Networks
from anonemo.optim import Optimizer
from anonemo.recipes.base import JobContext
from anonemo.recipes.hybrid import Hybrid
from anonemo.timing import PhaseClock

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
    beta = paper_hybrid(epochs).settings.beta
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
        if not isinstance(module, HybridModule) or module.phase(trainer.current_epoch).kind == "adversarial":
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
    module = paper_hybrid(epochs).module(JobContext(w.cfg, w.data, None, PhaseClock(), w.networks))
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
    # The Trainer sets this for the whole process: the plain loop's first repeat runs under it too.
    deterministic = cfg.trainer.deterministic
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
    images = len(w.images)
    results: dict = {path: {"plain": [], "anonemo": []} for path in PATHS}
    memory: dict = {path: {"plain": 0.0, "anonemo": 0.0} for path in PATHS}
    for repeat in range(cfg.bench.repeats):
        for path in PATHS:
            # alternated, each first in every other repeat: drifts and the place in a pair hit both alike
            order = ("plain", "anonemo") if repeat % 2 == 0 else ("anonemo", "plain")
            for implementation in order:
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
