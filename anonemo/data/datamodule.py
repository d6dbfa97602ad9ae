"""The LightningDataModule that serves one cross-validation fold from in-memory tensors."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from anonemo.data.folds import FoldSplit, Protocol, fold_protocol, fold_split
from anonemo.data.records import FaceRecords
from anonemo.errors import ConfigError

# The label each task predicts, as keyed in every batch.
TASKS = ("emotion", "identity")


def check_task(task: str, option: str = "model.task") -> None:
    """A task the labels hold, or a ConfigError naming ``option``."""
    if task not in TASKS:
        raise ConfigError(f"{option}={task!r} is not known: use one of {', '.join(TASKS)}.")


class TensorBatches(Dataset):
    """Named tensors of equal length, indexed by whole batches.

    Indexing takes a list of indices and slices every tensor once, so a batch costs one gather
    instead of ``batch_size`` item lookups and a collate. The list becomes one index tensor first:
    indexing with a Python list converts it again for every tensor.
    """

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, batch: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(batch, dtype=torch.long)
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def face_tensors(faces: FaceRecords, indices: np.ndarray) -> TensorBatches:
    """``image`` scaled to [0, 1] as ``(N, 1, S, S)`` float, with ``emotion``, ``identity``,
    ``source`` (the original photograph an image is a copy of), ``group`` (the source's group: the
    frames of one sequence are near-duplicates) and ``original`` (it is that photograph, not an
    augmented copy: the originals come first in ``faces``)."""
    index = torch.as_tensor(indices, dtype=torch.long)
    return TensorBatches(
        image=torch.as_tensor(np.asarray(faces.images))[index].unsqueeze(1).float().div_(255),
        emotion=torch.as_tensor(faces.emotions)[index],
        identity=torch.as_tensor(faces.subjects)[index],
        source=torch.as_tensor(faces.sources)[index],
        group=torch.as_tensor(faces.groups)[index],
        original=index < len(faces.source_names),
    )


def batch_loader(
    data: TensorBatches, batch_size: int, shuffle: bool, seed: int = 0, generator: torch.Generator | None = None
) -> DataLoader:
    """In-process batches (no worker processes: the data are already tensors in memory).

    Shuffled batches come from ``generator`` (default: a fresh one seeded with ``seed``), so the
    per-epoch shuffles are reproducible for a seed.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    order = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    # batch_size=None: the sampler yields whole batches of indices and the dataset slices them.
    return DataLoader(data, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False))


class GroupedFoldDataModule(pl.LightningDataModule):
    """Fold ``fold`` of a grouped, stratified ``n_splits``-fold split of ``faces`` under ``protocol``
    (:mod:`anonemo.data.folds`).

    Batches are dicts with ``image``, ``emotion``, ``identity``, ``source``, ``group`` and ``original``. The split is computed once and
    is the same for every model given the same data and seed; the test side is served only by
    ``test_dataloader`` and is never used for any choice. Under ``subject_disjoint`` the subjects are
    renumbered so that the training side's are the identity classes 0..k-1, the only ones a model
    trained on this fold can learn (``num_classes("identity")`` is k).
    """

    def __init__(
        self,
        faces: FaceRecords,
        fold: int,
        n_splits: int = 10,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        seed: int = 0,
        protocol: str = "paper",
    ):
        super().__init__()
        self.fold = fold
        self.batch_size = batch_size
        self.seed = seed
        self.protocol: Protocol = fold_protocol(protocol)
        self.split: FoldSplit = fold_split(
            faces.subjects, faces.emotions, faces.groups, fold, n_splits, val_fraction, seed, protocol,
            names=faces.fold_names(),
        )
        training_subjects = np.unique(faces.subjects[self.split.train])
        self.faces = faces if self.protocol.closed_set_identity else faces.with_subjects_first(training_subjects)
        self.identity_classes = faces.num_subjects if self.protocol.closed_set_identity else len(training_subjects)
        self._sides: dict[str, TensorBatches] = {}
        self._shuffle = torch.Generator()
        self._restored_shuffle: torch.Tensor | None = None

    @property
    def testable_tasks(self) -> tuple[str, ...]:
        """The tasks whose test-fold labels a model trained on this fold can predict."""
        return self.protocol.testable_tasks

    @property
    def num_emotions(self) -> int:
        return self.faces.num_emotions

    def summary(self) -> dict[str, int]:
        """What the job trains and tests on, logged beside its settings (subjects after any were
        left out, original images, their groups, and images after augmentation)."""
        faces = self.faces
        return {"data.subjects": faces.num_subjects, "data.emotions": faces.num_emotions,
                "data.originals": len(faces.source_names), "data.groups": len(np.unique(faces.source_groups)),
                "data.images": len(faces)}

    @property
    def subject_names(self) -> tuple[str, ...]:
        return self.faces.subject_names

    @property
    def emotion_names(self) -> tuple[str, ...]:
        return self.faces.emotion_names

    def num_classes(self, task: str) -> int:
        """Classes a head for ``task`` predicts (identity: the subjects a model can train on)."""
        return self.num_emotions if task == "emotion" else self.identity_classes

    @property
    def testable_classes(self) -> dict[str, int]:
        """Classes per task the test fold can score (what the audit attacks)."""
        return {task: self.num_classes(task) for task in self.testable_tasks}

    def class_names(self, task: str) -> tuple[str, ...]:
        return self.emotion_names if task == "emotion" else self.subject_names

    def side(self, name: str) -> TensorBatches:
        """The tensors of one side of the split: ``train``, ``val`` or ``test``."""
        if name not in self._sides:
            self._sides[name] = face_tensors(self.faces, getattr(self.split, name))
        return self._sides[name]

    def setup(self, stage: str | None = None) -> None:
        for name in ("train", "val") if stage == "fit" else ("test",) if stage == "test" else ():
            self.side(name)

    def train_dataloader(self) -> DataLoader:
        """Every fit shuffles from ``seed``, except a resumed one (see ``load_state_dict``)."""
        self._shuffle.manual_seed(self.seed)
        if self._restored_shuffle is not None:
            self._shuffle.set_state(self._restored_shuffle)
            self._restored_shuffle = None
        return batch_loader(self.side("train"), self.batch_size, shuffle=True, generator=self._shuffle)

    # The shuffling generator's state goes into training checkpoints (Lightning restores it before
    # asking for the loader): a run resumed after epoch k draws the batches of an uninterrupted run.
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"shuffle": self._shuffle.get_state()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._restored_shuffle = state_dict["shuffle"]

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.side("val"), self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.side("test"), self.batch_size, shuffle=False)

    def labels(self, name: str, task: str) -> torch.Tensor:
        return self.side(name).tensors[task]
