"""Face crop and resize: turns loaded photographs into the square arrays the networks see."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from anonemo.data.records import FaceRecords
from anonemo.errors import ConfigError

log = logging.getLogger(__name__)

CROP_METHODS = ("haar", "center", "none")


@dataclass(frozen=True)
class FaceCropper:
    """Crops the face with OpenCV's frontal-face Haar cascade, or the image centre.

    With ``method="haar"`` the largest detection is used, widened by ``margin`` on every side and
    made square; an image with no detection falls back to the centre crop and is counted.
    """

    method: str = "haar"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: float = 0.2  # smallest face, as a fraction of the image's shorter side
    margin: float = 0.1  # added on each side, as a fraction of the detected box
    center_fraction: float = 0.9  # side of the centre crop, as a fraction of the shorter side

    def __post_init__(self) -> None:
        if self.method not in CROP_METHODS:
            raise ConfigError(
                f"dataset.face_crop.method={self.method!r} is not known: use one of {', '.join(CROP_METHODS)}."
            )

    def crop_all(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return self.crop_with_detections(images)[0]

    def crop_with_detections(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        """The crops, and for each image whether a face was detected (False: centre crop or none)."""
        if self.method == "none":
            return images, [False] * len(images)
        cascade = None
        if self.method == "haar":
            cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        crops, detected = [], []
        for image in images:
            box = self._detect(cascade, image) if cascade is not None else None
            detected.append(box is not None)
            crops.append(self._crop(image, box))
        fallbacks = detected.count(False) if cascade is not None else 0
        if fallbacks:
            log.warning("Face detection found no face in %d of %d images: used a centre crop for those", fallbacks, len(images))
        elif cascade is not None:
            log.info("Face detection found a face in all %d images", len(images))
        return crops, detected

    def _detect(self, cascade: cv2.CascadeClassifier, image: np.ndarray) -> tuple[int, int, int, int] | None:
        side = int(self.min_size * min(image.shape))
        faces = cascade.detectMultiScale(
            image, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        size = int(max(w, h) * (1 + 2 * self.margin))
        return int(x + w / 2 - size / 2), int(y + h / 2 - size / 2), size, size

    def _crop(self, image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
        height, width = image.shape
        if box is None:
            size = int(self.center_fraction * min(height, width))
            box = ((width - size) // 2, (height - size) // 2, size, size)
        x, y, w, h = box
        # A widened box may leave the image: pad by edge replication rather than shrink the face.
        pad = max(0, -x, -y, x + w - width, y + h - height)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        return image[y + pad : y + pad + h, x + pad : x + pad + w]


def resize_square(crops: list[np.ndarray], image_size: int) -> np.ndarray:
    """Face crops resized to ``image_size`` x ``image_size`` with area interpolation, stacked (uint8)."""
    return np.stack([cv2.resize(c, (image_size, image_size), interpolation=cv2.INTER_AREA) for c in crops])


def preprocess(records: FaceRecords, cropper: FaceCropper, image_size: int) -> FaceRecords:
    """Crop each face and resize it to ``image_size`` x ``image_size`` (uint8, stacked)."""
    return replace(records, images=resize_square(cropper.crop_all(list(records.images)), image_size))


@dataclass(frozen=True)
class ImagePreprocessor:
    """The exact path from an image file to the network's input, as in training: decode to
    grayscale, crop the face (``face_crop``: the dataset's FaceCropper settings), resize to
    ``image_size`` with area interpolation, scale to [0, 1]. Saved beside exported models."""

    face_crop: dict
    image_size: int

    def __call__(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[bool]]:
        """``(N, 1, S, S)`` float32 in [0, 1] from 2-D uint8 images, and which had a detected face."""
        crops, detected = FaceCropper(**self.face_crop).crop_with_detections(images)
        return torch.as_tensor(resize_square(crops, self.image_size)).unsqueeze(1).float().div_(255), detected
