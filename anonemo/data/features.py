"""Features of a frozen convolutional base, computed once per side of a fold.

Every phase that trains a head on a frozen base (Emotion2Face, the Hybrid's identity re-fits,
Hybrid2Emotion, Hybrid2Face) reads these instead of running the base on every batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from anonemo.data.datamodule import GroupedFoldDataModule, TensorBatches, batch_loader

# Chunks whose activations fit in cache (docs/performance.md measures the sizes).
EXTRACTION_BATCH = 128


@torch.no_grad()
def extract_features(base: nn.Module, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """``base(images)`` in eval mode, in chunks, as float32 on the base's device."""
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    chunks = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), EXTRACTION_BATCH):
            chunks.append(base(images[start : start + EXTRACTION_BATCH].to(device)).float())
    base.train(was_training)
    return torch.cat(chunks)


class FeatureDataModule(pl.LightningDataModule):
    """The train, val and test sides of a fold as features of a frozen ``base``.

    Batches hold ``features`` and the image fold's labels (``emotion``, ``identity``, ``source``,
    ``original``); the split is the image fold's own.
    """

    def __init__(self, base: nn.Module, fold_data: GroupedFoldDataModule, bf16: bool = False):
        super().__init__()
        self.batch_size = fold_data.batch_size
        self.seed = fold_data.seed
        self.sides = {}
        for name in ("train", "val", "test"):
            side = fold_data.side(name).tensors
            labels = {key: tensor for key, tensor in side.items() if key != "image"}
            self.sides[name] = TensorBatches(features=extract_features(base, side["image"], bf16).cpu(), **labels)

    def mapped(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> FeatureDataModule:
        """These sides with ``transform`` applied to their features (a post-hoc erasure)."""
        mapped = copy.copy(self)
        mapped.sides = {name: TensorBatches(**{**side.tensors, "features": transform(side.tensors["features"])})
                        for name, side in self.sides.items()}
        return mapped

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.sides["train"], self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.sides["val"], self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.sides["test"], self.batch_size, shuffle=False)


def is_bf16(precision: object) -> bool:
    """Whether a Trainer precision (``trainer.precision``: ``bf16-mixed``, ...) runs under bf16 autocast."""
    return str(precision).startswith("bf16")
