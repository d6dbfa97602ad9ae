"""The in-memory form of a face dataset: one row per image, labels alongside."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


def group_names(source_groups: np.ndarray, source_names: Sequence[str]) -> tuple[str, ...]:
    """A name per group, for messages: its first original's name, and how many more it holds."""
    names = []
    for group in range(int(source_groups.max()) + 1 if len(source_groups) else 0):
        members = [source_names[i] for i in np.flatnonzero(source_groups == group)]
        names.append(members[0] + (f" and {len(members) - 1} more of its group" if len(members) > 1 else ""))
    return tuple(names)


@dataclass(frozen=True)
class OriginalLabels:
    """The labels of a dataset's original images, known without decoding a pixel (from file names,
    a manifest or label files, or the generator's plan): what a job checks its folds on before any
    work, and what :class:`FaceRecords` label their images with. ``groups[o]`` is original ``o``'s
    group: originals of one group (the frames of one video sequence) are near-duplicates."""

    subjects: np.ndarray
    emotions: np.ndarray
    groups: np.ndarray
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
        groups: Sequence[int] | None = None,
    ) -> OriginalLabels:
        """``groups`` None: each original is its own group."""
        return cls(np.asarray(subjects, dtype=np.int64), np.asarray(emotions, dtype=np.int64),
                   np.arange(len(subjects)) if groups is None else np.asarray(groups, dtype=np.int64),
                   tuple(subject_names), tuple(emotion_names), tuple(source_names))

    def fold_names(self) -> dict[str, tuple[str, ...]]:
        return {"subject": self.subject_names, "emotion": self.emotion_names,
                "group": group_names(self.groups, self.source_names)}

    def where(self, keep: np.ndarray) -> OriginalLabels:
        """The originals ``keep`` marks, subjects and groups renumbered in their order (emotion
        classes stay: a class the kept originals no longer show is named by the folds' check)."""
        kept_subjects, subjects = np.unique(self.subjects[keep], return_inverse=True)
        _, groups = np.unique(self.groups[keep], return_inverse=True)
        return OriginalLabels(subjects.reshape(-1), self.emotions[keep], groups.reshape(-1),
                              tuple(self.subject_names[s] for s in kept_subjects), self.emotion_names,
                              tuple(name for name, k in zip(self.source_names, keep) if k))

    def without_emotion(self, emotion: int) -> OriginalLabels:
        """These labels without the originals of one emotion class, nor the class."""
        kept = self.where(self.emotions != emotion)
        return dataclasses.replace(kept, emotions=kept.emotions - (kept.emotions > emotion),
                                   emotion_names=tuple(n for e, n in enumerate(self.emotion_names) if e != emotion))

    def with_images(self, images: Sequence[np.ndarray]) -> FaceRecords:
        """The records of these originals, once decoded or drawn, in the same order."""
        if len(images) != len(self.subjects):
            raise ValueError(f"{len(images)} images for {len(self.subjects)} labelled originals")
        return FaceRecords(list(images), np.arange(len(images)), self)


@dataclass(frozen=True)
class FaceRecords:
    """Grayscale face images, each a copy of one original whose labels ``labels`` holds.

    ``images`` is a list of 2-D uint8 arrays of any size as loaded from disk, and one stacked
    ``(N, S, S)`` uint8 array once preprocessed. ``sources[i]`` is the index of the original
    photograph that image ``i`` is (a copy of): originals have ``sources == arange(N)`` and
    augmented copies repeat their original's index. An image's subject, emotion and group are its
    original's (``subjects``, ``emotions``, ``groups``); originals of one group (the frames of one
    video sequence) are near-duplicates, and the folds keep a group, with all its copies, on one
    side of every split.
    """

    images: Sequence[np.ndarray] | np.ndarray
    sources: np.ndarray
    labels: OriginalLabels

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.images):
            raise ValueError(f"FaceRecords.sources has {len(self.sources)} entries for {len(self.images)} images")
        if len(self.sources) and not 0 <= self.sources.min() <= self.sources.max() < len(self.labels.subjects):
            raise ValueError(f"FaceRecords.sources name originals outside the {len(self.labels.subjects)} labelled ones")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def subjects(self) -> np.ndarray:
        """The subject of every image."""
        return self.labels.subjects[self.sources]

    @property
    def emotions(self) -> np.ndarray:
        """The emotion of every image."""
        return self.labels.emotions[self.sources]

    @property
    def groups(self) -> np.ndarray:
        """The group of every image: what the folds keep on one side."""
        return self.labels.groups[self.sources]

    @property
    def source_groups(self) -> np.ndarray:
        """The group of every original."""
        return self.labels.groups

    @property
    def subject_names(self) -> tuple[str, ...]:
        return self.labels.subject_names

    @property
    def emotion_names(self) -> tuple[str, ...]:
        return self.labels.emotion_names

    @property
    def source_names(self) -> tuple[str, ...]:
        return self.labels.source_names

    def fold_names(self) -> dict[str, tuple[str, ...]]:
        """Label index -> name for ``subject``, ``emotion`` and ``group``, for the folds' messages."""
        return self.labels.fold_names()

    @property
    def num_subjects(self) -> int:
        return len(self.subject_names)

    @property
    def num_emotions(self) -> int:
        return len(self.emotion_names)

    def originals_where(self, keep: np.ndarray) -> FaceRecords:
        """The originals ``keep`` marks (records not yet augmented), subjects and groups renumbered
        in their order."""
        return self.labels.where(keep).with_images([self.images[i] for i in np.flatnonzero(keep)])

    def with_subjects_first(self, first: Sequence[int]) -> FaceRecords:
        """The same records with subjects renumbered so that ``first`` (in order) are 0..k-1 and
        the others follow in their order: the identity classes of a fold's training people."""
        first = list(first)
        order = first + [s for s in range(self.num_subjects) if s not in set(first)]
        rank = np.empty(self.num_subjects, dtype=np.int64)
        rank[order] = np.arange(self.num_subjects)
        labels = dataclasses.replace(self.labels, subjects=rank[self.labels.subjects],
                                     subject_names=tuple(self.subject_names[s] for s in order))
        return dataclasses.replace(self, labels=labels)


@runtime_checkable
class FaceSource(Protocol):
    """What ``dataset.loader`` names: a dataset loader (``anonemo.data.synthetic.SyntheticFaces``,
    every ``anonemo.data.files.ImageFileSource``)."""

    def labels(self) -> OriginalLabels:
        """The originals' labels, without decoding a pixel: what the fold check reads."""

    def load(self) -> FaceRecords:
        """The decoded originals, in the order of :meth:`labels`."""

    def fingerprint(self) -> str:
        """What the prepared images' cache is keyed on: changes whenever the pixels or labels can."""

