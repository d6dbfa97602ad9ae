"""The in-memory form of a face dataset: one row per image, labels alongside."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceRecords:
    """Grayscale face images with subject, emotion and source-image labels.

    ``images`` is a list of 2-D uint8 arrays of any size as loaded from disk, and one stacked
    ``(N, S, S)`` uint8 array once preprocessed. ``sources[i]`` is the index of the original
    photograph that image ``i`` is (a copy of): originals have ``sources == arange(N)`` and
    augmented copies repeat their original's index, which is what the folds group on.
    """

    images: Sequence[np.ndarray] | np.ndarray
    subjects: np.ndarray
    emotions: np.ndarray
    sources: np.ndarray
    subject_names: tuple[str, ...]
    emotion_names: tuple[str, ...]
    source_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("subjects", "emotions", "sources"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FaceRecords.{name} has {len(getattr(self, name))} entries for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_subjects(self) -> int:
        return len(self.subject_names)

    @property
    def num_emotions(self) -> int:
        return len(self.emotion_names)


@dataclass(frozen=True)
class OriginalLabels:
    """The labels of a dataset's original images, known without decoding a pixel (from file names,
    or the generator's plan): what a job checks its folds on before any work."""

    subjects: np.ndarray
    emotions: np.ndarray
    subject_names: tuple[str, ...]
    emotion_names: tuple[str, ...]
    source_names: tuple[str, ...]

    @classmethod
    def of(
        cls,
        subjects: Sequence[int],
        emotions: Sequence[int],
        subject_names: Sequence[str],
        emotion_names: Sequence[str],
        source_names: Sequence[str],
    ) -> OriginalLabels:
        return cls(np.asarray(subjects, dtype=np.int64), np.asarray(emotions, dtype=np.int64),
                   tuple(subject_names), tuple(emotion_names), tuple(source_names))

    @property
    def groups(self) -> np.ndarray:
        """Each original is its own group: the folds keep it and its copies on one side."""
        return np.arange(len(self.subjects))

    def with_images(self, images: Sequence[np.ndarray]) -> FaceRecords:
        """The records of these originals, once decoded or drawn, in the same order."""
        if len(images) != len(self.subjects):
            raise ValueError(f"{len(images)} images for {len(self.subjects)} labelled originals")
        return FaceRecords(list(images), self.subjects, self.emotions, self.groups, self.subject_names,
                           self.emotion_names, self.source_names)
