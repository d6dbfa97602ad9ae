"""Datasets of image files in a folder or a zip archive: listing the files, and the base class of
every such loader (labels from file names, a manifest, or label files); decoding is
:mod:`anonemo.data.decode`."""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


from anonemo.data.decode import decode_grayscale
from anonemo.data.records import FaceRecords, OriginalLabels
from anonemo.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetFile:
    """One file of a dataset folder or archive, read on demand."""

    path: str  # relative to the folder (or the archive's member name), with / separators
    location: str  # where it is, for messages: a path, or archive.zip:member
    read: Callable[[], bytes]

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


def list_dataset_files(root: str | Path | None, title: str, how_to_get: str) -> list[DatasetFile]:
    """All regular, non-hidden files under ``root`` (a folder, searched recursively, or a .zip) of
    the dataset called ``title``."""
    if root is None or str(root).strip() == "":
        raise DatasetError(f"dataset.root is not set ({title}). {how_to_get}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset.root={root} does not exist. {how_to_get}")
    if path.is_dir():
        files = [
            DatasetFile(p.relative_to(path).as_posix(), str(p), p.read_bytes)
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
    elif zipfile.is_zipfile(path):
        files = _zip_members(path)
    else:
        raise DatasetError(
            f"dataset.root={root} is neither a folder nor a zip archive. Point it at the unpacked "
            f"folder or at the original .zip. {how_to_get}"
        )
    if not files:
        raise DatasetError(f"dataset.root={root} is empty. {how_to_get}")
    return files


def _zip_members(path: Path) -> list[DatasetFile]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and "__MACOSX" not in info.filename
            and not Path(info.filename).name.startswith(".")
        )

    def reader(member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with zipfile.ZipFile(path) as archive:
                return archive.read(member)

        return read

    return [DatasetFile(n, f"{path}:{n}", reader(n)) for n in names]


@dataclass(frozen=True)
class LabelledFile:
    """An image file with its labels as the dataset writes them."""

    file: DatasetFile
    subject: str
    emotion: str  # the dataset's code for it (a key of the loader's ``emotions``)
    group: str  # files of one group are near-duplicates (one video sequence): one side of every split


@dataclass(frozen=True)
class Listing:
    """What a loader found under its root: the labelled images, and the files it could not label."""

    labelled: list[LabelledFile]
    unlabelled: list[str]  # paths, for the message
    total: int  # files looked at
    unlabelled_as: str  # why they were not labelled, for the message ("matching no ... name")


class ImageFileSource:
    """A face dataset of image files with subject, emotion and group labels.

    Subclasses say how a file's labels are found (``listing``); this class keeps the emotions asked
    for (``emotions``: code -> class name in class order, a list of codes that are the names, or
    None for every emotion found, sorted), and loads, fingerprints and labels them. Which people a
    protocol keeps is decided later, for every dataset alike (:mod:`anonemo.data.check`).
    """

    title: str  # human-readable dataset name
    how_to_get: str  # where the data comes from and which override to set
    emotion_order: tuple[str, ...] = ()  # the class order of the emotions found, when none are asked for

    def __init__(self, root: str | Path | None, emotions: Mapping[str, str] | Sequence[str] | None = None):
        self.root = root
        self.emotions = None if emotions is None else (
            dict(emotions) if isinstance(emotions, Mapping) else {str(e): str(e) for e in emotions})
        self._selected: tuple[list[LabelledFile], dict[str, str]] | None = None

    def listing(self) -> Listing:
        """Every file under ``root`` and the labels the dataset's layout gives it."""
        raise NotImplementedError

    def files(self) -> list[DatasetFile]:
        return list_dataset_files(self.root, self.title, self.how_to_get)

    def selected(self) -> tuple[list[LabelledFile], dict[str, str]]:
        """The files used, and the emotion classes (code -> name, in class order)."""
        if self._selected is not None:
            return self._selected
        listing = self.listing()
        if listing.unlabelled:
            shown = ", ".join(listing.unlabelled[:5]) + (" ..." if len(listing.unlabelled) > 5 else "")
            log.warning("%s: %d file(s) in %s %s were ignored: %s",
                        self.title, len(listing.unlabelled), self.root, listing.unlabelled_as, shown)
        found = {f.emotion for f in listing.labelled}
        order = [e for e in self.emotion_order if e in found] + sorted(found - set(self.emotion_order))
        classes = self.emotions or {code: code for code in order}
        kept = [f for f in listing.labelled if f.emotion in classes]
        left_out = len(listing.labelled) - len(kept)
        if not kept:
            raise DatasetError(
                f"No {self.title} images found in dataset.root={self.root}: {listing.total} file(s) "
                f"there, {len(listing.unlabelled)} {listing.unlabelled_as} and {left_out} of emotions "
                f"other than {', '.join(classes)}. {self.how_to_get}"
            )
        log.info("%s: %d images kept from %s (%d of other emotions left out, %d unlabelled)",
                 self.title, len(kept), self.root, left_out, len(listing.unlabelled))
        self._selected = kept, classes
        return self._selected

    def labels(self) -> OriginalLabels:
        files, classes = self.selected()
        subject_codes = sorted({f.subject for f in files})
        subject_index = {code: i for i, code in enumerate(subject_codes)}
        group_index = {code: i for i, code in enumerate(dict.fromkeys(f.group for f in files))}
        emotion_index = {code: i for i, code in enumerate(classes)}
        return OriginalLabels.of(
            subjects=[subject_index[f.subject] for f in files],
            emotions=[emotion_index[f.emotion] for f in files],
            subject_names=[self.subject_name(code) for code in subject_codes],
            emotion_names=list(classes.values()),
            source_names=[self.source_name(f.file) for f in files],
            groups=[group_index[f.group] for f in files],
        )

    def subject_name(self, code: str) -> str:
        return code

    def source_name(self, file: DatasetFile) -> str:
        """How messages and predictions name an original: its path under the root."""
        return file.path

    @classmethod
    def layout_defaults(cls, root: str | None) -> dict[str, object]:
        """Settings that depend on how the data under ``root`` is laid out (``${anonemo.source_default:KEY}``
        in a dataset config); none for most datasets."""
        return {}

    def fingerprint(self) -> str:
        """A hash of the labels, names and bytes of every file used: changes whenever the pixels or
        labels can."""
        files, classes = self.selected()
        digest = hashlib.sha256(f"{type(self).__module__}.{type(self).__qualname__}".encode())
        for f in files:
            digest.update(f"{self.source_name(f.file)}|{f.subject}|{f.emotion}|{f.group}|".encode())
            digest.update(hashlib.sha256(f.file.read()).digest())
        digest.update(repr(list(classes.items())).encode())
        return digest.hexdigest()

    def load(self) -> FaceRecords:
        files, _ = self.selected()
        return self.labels().with_images([decode_grayscale(f.file.read(), f.file.location) for f in files])


class FileNameLabels(ImageFileSource):
    """A dataset whose subject and emotion are encoded in each file's name (one group per file)."""

    naming: str  # the naming scheme, for messages
    name_pattern: re.Pattern  # matches a file name, with the named groups subject and emotion
    code_case: Callable[[str], str] = staticmethod(str)  # file names vary in case; codes do not

    def parse(self, name: str) -> tuple[str, str] | None:
        """(subject code, emotion code) encoded in a file name, or None if it follows no scheme."""
        match = self.name_pattern.match(name)
        return (self.code_case(match["subject"]), self.code_case(match["emotion"])) if match else None

    def source_name(self, file: DatasetFile) -> str:
        return file.name  # the name carries the labels, wherever the folder or archive puts it

    def listing(self) -> Listing:
        files = self.files()
        labelled, unlabelled = [], []
        for file in files:
            labels = self.parse(file.name)
            if labels is None:
                unlabelled.append(file.name)
            else:
                labelled.append(LabelledFile(file, labels[0], labels[1], group=file.name))
        return Listing(labelled, unlabelled, len(files), f"matching no {self.naming} name")
