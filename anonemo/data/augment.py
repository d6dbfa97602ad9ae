"""The paper's offline augmentation: random rotation, horizontal flip and Gaussian noise."""

from __future__ import annotations

from dataclasses import dataclass, replace

import albumentations as A
import cv2
import numpy as np

from anonemo.data.records import FaceRecords
from anonemo.errors import ConfigError


@dataclass(frozen=True)
class Augmentation:
    """Grows a set of originals to ``total`` images; the originals are kept unchanged.

    The copies are spread as evenly as possible over the originals (each gets ``total // n`` or
    one more, the extra ones chosen by the seed), and every copy records its original in
    ``sources`` so that folds keep an original and all its copies on one side.
    """

    total: int
    rotation_limit: float = 10.0  # degrees, both directions
    hflip_p: float = 0.5
    noise_std: tuple[float, float] = (0.01, 0.04)  # fraction of the pixel range
    seed: int = 0

    def apply(self, originals: FaceRecords) -> FaceRecords:
        n = len(originals)
        if self.total < n:
            raise ConfigError(
                f"augment.total={self.total} is smaller than the {n} original images: set it to at "
                f"least {n} (the paper uses 3038 for JAFFE and 3033 for Yale)."
            )
        rng = np.random.default_rng(self.seed)
        copies = np.full(n, (self.total - n) // n)
        copies[rng.permutation(n)[: (self.total - n) % n]] += 1
        transform = A.Compose(
            [
                A.Rotate(limit=self.rotation_limit, border_mode=cv2.BORDER_REFLECT_101, p=1.0, strict=True),
                A.HorizontalFlip(p=self.hflip_p, strict=True),
                A.GaussNoise(std_range=tuple(self.noise_std), p=1.0, strict=True),
            ],
            seed=int(rng.integers(2**31)),
            strict=True,
        )
        source_of_copy = np.repeat(np.arange(n), copies)
        augmented = [transform(image=originals.images[i])["image"] for i in source_of_copy]
        order = np.concatenate([np.arange(n), source_of_copy])
        return replace(
            originals,
            images=np.concatenate([originals.images, np.stack(augmented)]) if augmented else originals.images,
            sources=originals.sources[order],
        )
