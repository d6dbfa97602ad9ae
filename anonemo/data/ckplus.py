"""The Extended Cohn-Kanade dataset, CK+ (``dataset=ckplus``), in either of the layouts users have.

- The official distribution: ``cohn-kanade-images/S005/001/S005_001_00000011.png``, labels in
  ``Emotion/S005/001/S005_001_00000011_emotion.txt`` (one float code per labelled sequence). The
  last ``frames_per_sequence`` frames of a labelled sequence take its label, and with
  ``neutral_first_frame`` its first frame is a neutral face.
- "CK+48", the pre-cropped 48x48 copy: one folder per emotion holding ``S###_###_########.png``.

A sequence (subject and sequence number) is one group: its frames never straddle a split.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from pathlib import Path

from anonemo.data.files import DatasetFile, ImageFileSource, LabelledFile, Listing, list_dataset_files
from anonemo.errors import ConfigError, DatasetError

# The label files' codes, in the order they define.
CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
IMAGE = re.compile(r"(?:^|/)cohn-kanade-images/(S\d+)/(\d+)/(S\d+_\d+_(\d+))\.png$", re.IGNORECASE)
LABEL = re.compile(r"(?:^|/)Emotion/(S\d+)/(\d+)/S\d+_\d+_\d+_emotion\.txt$", re.IGNORECASE)
CROPPED = re.compile(rf"(?:^|/)({'|'.join(CODES[1:])})/(S\d+)_(\d+)_\d+\.png$", re.IGNORECASE)
# Pre-cropped faces need no face detection, and keep their own size.
LAYOUT_DEFAULTS = {"official": {"image_size": 64, "face_crop": "haar"},
                   "ck+48": {"image_size": 48, "face_crop": "none"}}


def layout(paths: list[str]) -> str | None:
    """Which CK+ layout these file paths follow: ``official``, ``ck+48``, or None."""
    if any(LABEL.search(p) for p in paths) and any(IMAGE.search(p) for p in paths):
        return "official"
    if any(CROPPED.search(p) for p in paths):
        return "ck+48"
    return None


class CKPlus(ImageFileSource):
    title = "CK+"
    emotion_order = CODES
    how_to_get = (
        "CK+ may not be redistributed: request it from its authors (Lucey et al. 2010, "
        "https://www.jeffcohn.net/Resources/), unpack it, and run with dataset=ckplus "
        "dataset.root=/path/to/CK+ (the folder holding cohn-kanade-images and Emotion), or point "
        "dataset.root at the pre-cropped CK+48 copy (one folder per emotion: anger, contempt, disgust, "
        "fear, happy, sadness, surprise)."
    )

    def __init__(self, root: str | Path | None, emotions: list[str] | None = None, frames_per_sequence: int = 3,
                 neutral_first_frame: bool = False):
        super().__init__(root, emotions)
        if frames_per_sequence < 1:
            raise ConfigError(f"dataset.frames_per_sequence={frames_per_sequence} must be at least 1: the last "
                              "frames of a sequence carry its emotion.")
        self.frames_per_sequence = frames_per_sequence
        self.neutral_first_frame = neutral_first_frame

    def listing(self) -> Listing:
        files = self.files()
        found = layout([f.path for f in files])
        if found == "official":
            return self._official(files)
        if found == "ck+48":
            return self._cropped(files)
        raise DatasetError(f"dataset.root={self.root} holds neither CK+ layout ({len(files)} file(s), none "
                           f"in cohn-kanade-images/ with labels in Emotion/, none in an emotion folder). "
                           f"{self.how_to_get}")

    def _official(self, files: list[DatasetFile]) -> Listing:
        frames: dict[tuple[str, str], list[tuple[int, DatasetFile]]] = defaultdict(list)
        codes: dict[tuple[str, str], str] = {}
        other = []
        for file in files:
            if image := IMAGE.search(file.path):
                frames[image.group(1).upper(), image.group(2)].append((int(image.group(4)), file))
            elif label := LABEL.search(file.path):
                codes[label.group(1).upper(), label.group(2)] = read_code(file)
            else:
                other.append(file.path)
        labelled = []
        for (subject, sequence), emotion in sorted(codes.items()):
            ordered = [file for _, file in sorted(frames.get((subject, sequence), []), key=lambda f: f[0])]
            if not ordered:
                raise DatasetError(f"CK+: {subject}/{sequence} has an emotion label but no frames under "
                                   f"cohn-kanade-images/{subject}/{sequence} in dataset.root={self.root}.")
            group = f"{subject}_{sequence}"
            picked = ordered[-self.frames_per_sequence:]
            if self.neutral_first_frame and len(ordered) > len(picked):
                labelled.append(LabelledFile(ordered[0], subject, "neutral", group))
            labelled += [LabelledFile(file, subject, emotion, group) for file in picked]
        return Listing(labelled, other, len(files), "outside cohn-kanade-images/ and Emotion/")

    def _cropped(self, files: list[DatasetFile]) -> Listing:
        labelled, other = [], []
        for file in files:
            if match := CROPPED.search(file.path):
                subject = match.group(2).upper()
                labelled.append(LabelledFile(file, subject, match.group(1).lower(), f"{subject}_{match.group(3)}"))
            else:
                other.append(file.path)
        return Listing(labelled, other, len(files), "named otherwise than <emotion>/S###_###_########.png")

    @classmethod
    @functools.lru_cache(maxsize=8)  # a config reads it once per key it sets, and listing a CK+ tree takes a while
    def layout_defaults(cls, root: str | None) -> dict[str, object]:
        """The image size and face crop that fit the layout under ``root`` (the official one's when
        the root is not set or not readable: the job then says what is wrong with it)."""
        try:
            found = layout([f.path for f in list_dataset_files(root, cls.title, cls.how_to_get)])
        except DatasetError:
            found = None
        return LAYOUT_DEFAULTS[found or "official"]


def read_code(file: DatasetFile) -> str:
    """The emotion of a CK+ label file (``   7.0000000e+00``)."""
    text = file.read().decode("ascii", errors="replace").strip()
    try:
        code = float(text)
    except ValueError:
        code = -1.0
    if code != int(code) or not 0 <= code < len(CODES):
        raise DatasetError(f"{file.location} does not hold a CK+ emotion code (0-7, e.g. 7.0000000e+00): "
                           f"{text[:40]!r}. Replace it with the file from the original download.")
    return CODES[int(code)]
