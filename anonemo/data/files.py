"""Reading a dataset whose labels are in its file names, from a folder or a zip archive."""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anonemo.data.records import FaceRecords, OriginalLabels
from anonemo.errors import DatasetError, ImageReadError

log = logging.getLogger(__name__)

# OpenCV prints its own decoder errors to stderr; ours name the file instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@dataclass(frozen=True)
class DatasetFile:
    """One file of a dataset folder or archive, read on demand."""

    name: str  # the file name alone, which carries the labels
    location: str  # where it is, for messages: a path, or archive.zip:member
    read: Callable[[], bytes]


def list_dataset_files(root: str | Path | None, dataset: str, how_to_get: str) -> list[DatasetFile]:
    """All regular, non-hidden files under ``root`` (a folder, searched recursively, or a .zip)."""
    if root is None or str(root).strip() == "":
        raise DatasetError(f"dataset.root is not set for dataset={dataset}. {how_to_get}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset.root={root} does not exist. {how_to_get}")
    if path.is_dir():
        files = [
            DatasetFile(p.name, str(p), p.read_bytes)
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

    return [DatasetFile(Path(n).name, f"{path}:{n}", reader(n)) for n in names]


DATASET_FILE_ADVICE = "Replace it with an intact copy from the original download, or remove it from the folder."


def decode_grayscale(data: bytes, location: str, advice: str = DATASET_FILE_ADVICE) -> np.ndarray:
    """Decode image bytes (GIF, TIFF incl. palette-coded, PNG, JPEG, ...) to a 2-D uint8 array;
    ``advice`` ends the error for a file that is not an image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if image is None or image.ndim != 2 or min(image.shape) == 0:
        raise ImageReadError(
            f"Could not decode {location} as an image: the file is empty, truncated or not in an "
            f"image format OpenCV reads. {advice}"
        )
    return image


class LabelledImageFolder:
    """A face dataset whose subject and emotion labels are encoded in its file names.

    Subclasses give the naming scheme (``parse``) and the texts used in messages.
    """

    title: str  # human-readable dataset name
    config_name: str  # the value of `dataset=` that selects it
    naming: str  # the naming scheme, for messages
    how_to_get: str  # where the official data comes from and which override to set

    def __init__(self, root: str | Path | None, emotions: Mapping[str, str]):
        self.root = root
        self.emotions = dict(emotions)  # file-name code -> class name, in class-index order
        self._selected: list[tuple[DatasetFile, str, str]] | None = None

    def parse(self, name: str) -> tuple[str, str] | None:
        """(subject code, emotion code) encoded in a file name, or None if it follows no scheme."""
        raise NotImplementedError

    def selected_files(self) -> list[tuple[DatasetFile, str, str]]:
        """The files used, with their subject and emotion codes; the others are logged."""
        if self._selected is not None:
            return self._selected
        files = list_dataset_files(self.root, self.config_name, self.how_to_get)
        selected, unrecognised, left_out = [], [], 0
        for file in files:
            labels = self.parse(file.name)
            if labels is None:
                unrecognised.append(file.name)
            elif labels[1] in self.emotions:
                selected.append((file, *labels))
            else:
                left_out += 1
        if unrecognised:
            shown = ", ".join(unrecognised[:5]) + (" ..." if len(unrecognised) > 5 else "")
            log.warning(
                "%s: %d file(s) in %s match no %s name and were ignored: %s",
                self.title, len(unrecognised), self.root, self.naming, shown,
            )
        if not selected:
            raise DatasetError(
                f"No {self.title} images found in dataset.root={self.root}: {len(files)} file(s) "
                f"there, {len(unrecognised)} matching no {self.naming} name and {left_out} of "
                f"emotions other than {', '.join(self.emotions)}. {self.how_to_get}"
            )
        log.info(
            "%s: %d images kept from %s (%d of other conditions left out, %d unrecognised)",
            self.title, len(selected), self.root, left_out, len(unrecognised),
        )
        self._selected = selected
        return selected

    def fingerprint(self) -> str:
        """A hash of the names and bytes of every file used: changes whenever the pixels can."""
        digest = hashlib.sha256(self.config_name.encode())
        for file, subject, emotion in self.selected_files():
            digest.update(f"{file.name}|{subject}|{emotion}|".encode())
            digest.update(hashlib.sha256(file.read()).digest())
        digest.update(repr(sorted(self.emotions.items())).encode())
        return digest.hexdigest()

    def labels(self) -> OriginalLabels:
        selected = self.selected_files()
        subject_codes = sorted({subject for _, subject, _ in selected})
        subject_index = {code: i for i, code in enumerate(subject_codes)}
        emotion_index = {code: i for i, code in enumerate(self.emotions)}
        return OriginalLabels.of(
            subjects=[subject_index[subject] for _, subject, _ in selected],
            emotions=[emotion_index[emotion] for _, _, emotion in selected],
            subject_names=[self.subject_name(code) for code in subject_codes],
            emotion_names=list(self.emotions.values()),
            source_names=[file.name for file, _, _ in selected],
        )

    def load(self) -> FaceRecords:
        return self.labels().with_images([decode_grayscale(file.read(), file.location) for file, _, _ in self.selected_files()])

    def subject_name(self, code: str) -> str:
        return code


class YaleFaces(LabelledImageFolder):
    """The Yale Face Database: ``subjectNN.<condition>`` GIFs, usually without an extension."""

    title = "Yale faces"
    config_name = "yale"
    naming = "subjectNN.<condition>"
    how_to_get = (
        "Download the Yale Face Database (yalefaces: 15 subjects, 165 GIF files named like "
        "subject01.happy) from its distributors, e.g. http://vision.ucsd.edu/content/yale-face-database, "
        "unpack it, and run with dataset=yale dataset.root=/path/to/yalefaces (the .zip works too)."
    )
    _pattern = re.compile(r"^subject(\d+)\.([a-z]+)(?:\.gif)?$", re.IGNORECASE)

    def parse(self, name: str) -> tuple[str, str] | None:
        match = self._pattern.match(name)
        return (match.group(1), match.group(2).lower()) if match else None

    def subject_name(self, code: str) -> str:
        return f"subject{code}"


class JaffeFaces(LabelledImageFolder):
    """JAFFE: ``XX.EEn.NNN.tiff`` (poser initials, emotion code + take, running number)."""

    title = "JAFFE"
    config_name = "jaffe"
    naming = "XX.EEn.NNN.tiff"
    how_to_get = (
        "JAFFE may not be redistributed: request it from its authors (Lyons, Kamachi & Gyoba, "
        "https://zenodo.org/record/3451524), unpack the flat folder of 213 .tiff files named like "
        "KA.AN1.39.tiff, and run with dataset=jaffe dataset.root=/path/to/jaffe (the .zip works too)."
    )
    _pattern = re.compile(r"^([A-Za-z]{2})\.([A-Za-z]{2})\d*\.(\d+)\.tiff?$", re.IGNORECASE)

    def parse(self, name: str) -> tuple[str, str] | None:
        match = self._pattern.match(name)
        return (match.group(1).upper(), match.group(2).upper()) if match else None
