"""Any face dataset (``dataset=folder``): labels from a manifest CSV or from a file-name pattern.

A manifest has the columns ``path`` (relative to ``dataset.root``), ``subject``, ``emotion`` and
optionally ``group``; a pattern is a regular expression with the named groups ``subject`` and
``emotion`` (optionally ``group``), searched in each file's path under the root. Files sharing a
group (the frames of one sequence) are near-duplicates: the folds keep them on one side. A group
belongs to its subject, so group names need only be unique per subject.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Sequence
from pathlib import Path

from anonemo.data.files import ImageFileSource, LabelledFile, Listing
from anonemo.errors import ConfigError, DatasetError

REQUIRED_COLUMNS = ("path", "subject", "emotion")
OPTIONAL_COLUMNS = ("group",)


class FolderDataset(ImageFileSource):
    title = "Folder dataset"
    how_to_get = (
        "Point dataset.root at the folder (or .zip) of face images and give either "
        "dataset.manifest=labels.csv (columns path, subject, emotion and optionally group; paths "
        "relative to dataset.root) or dataset.pattern=REGEX with the named groups (?P<subject>...) and "
        "(?P<emotion>...) (optionally (?P<group>...)) searched in each file's path under the root "
        "(docs/data.md, \"Bring your own dataset\")."
    )

    def __init__(self, root: str | Path | None, manifest: str | None = None, pattern: str | None = None,
                 emotions: Sequence[str] | None = None):
        super().__init__(root, emotions)
        self.manifest = manifest
        self.pattern = None if pattern is None else compile_label_pattern(pattern)

    def listing(self) -> Listing:
        if (self.manifest is None) == (self.pattern is None):
            raise ConfigError(
                "dataset=folder needs exactly one of dataset.manifest and dataset.pattern "
                f"(got {'both' if self.manifest else 'neither'}). {self.how_to_get}"
            )
        return self._from_manifest() if self.manifest is not None else self._from_pattern()

    def _from_pattern(self) -> Listing:
        files = self.files()
        labelled, unmatched = [], []
        for file in files:
            match = self.pattern.search(file.path)
            if match is None or not match.group("subject") or not match.group("emotion"):
                unmatched.append(file.path)
                continue
            group = match.groupdict().get("group") or file.path
            labelled.append(LabelledFile(file, match.group("subject"), match.group("emotion"),
                                         f"{match.group('subject')}/{group}"))
        return Listing(labelled, unmatched, len(files), f"not matching dataset.pattern={self.pattern.pattern}")

    def _from_manifest(self) -> Listing:
        path = self.manifest_path()
        rows = read_manifest(path)
        files = {file.path: file for file in self.files()}
        labelled, missing, seen = [], [], {}
        for line, row in rows:
            name = row["path"].replace("\\", "/").removeprefix("./")
            if name in seen:
                raise DatasetError(f"{path}, line {line}: path {name} is listed twice (first on line {seen[name]}). "
                                   "List each image once.")
            seen[name] = line
            if name not in files:
                missing.append((line, name))
                continue
            group = row.get("group") or name
            labelled.append(LabelledFile(files[name], row["subject"], row["emotion"], f"{row['subject']}/{group}"))
        if missing:
            line, name = missing[0]
            raise DatasetError(
                f"{path}, line {line}: {name} is not a file under dataset.root={self.root}"
                + (f" ({len(missing)} rows name missing files)" if len(missing) > 1 else "")
                + ". Paths in the manifest are relative to dataset.root, with / between folders."
            )
        unlisted = sorted(set(files) - set(seen) - {Path(path).name})
        return Listing(labelled, unlisted, len(files), "not in the manifest")

    def manifest_path(self) -> Path:
        """``dataset.manifest`` as given, or relative to the root when it is not found as given."""
        given = Path(self.manifest).expanduser()
        if given.is_file():
            return given
        if self.root is not None and not given.is_absolute() and (Path(self.root).expanduser() / given).is_file():
            return Path(self.root).expanduser() / given
        raise DatasetError(f"dataset.manifest={self.manifest} does not exist (nor under dataset.root={self.root}). "
                           f"{self.how_to_get}")


def compile_label_pattern(pattern: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"dataset.pattern={pattern} is not a regular expression: {error}.") from None
    missing = [name for name in ("subject", "emotion") if name not in compiled.groupindex]
    if missing:
        raise ConfigError(
            f"dataset.pattern={pattern} has no named group {' or '.join(missing)}: write (?P<subject>...) and "
            "(?P<emotion>...) around the parts of the path that hold them, e.g. "
            r"'(?P<subject>S\d+)_(?P<emotion>[a-z]+)_\d+\.png'."
        )
    unknown = sorted(set(compiled.groupindex) - {"subject", "emotion", "group"})
    if unknown:
        raise ConfigError(f"dataset.pattern={pattern} has the named group(s) {', '.join(unknown)}, which anonemo "
                          "does not read: name only subject, emotion and group (use (?:...) for other parts).")
    return compiled


def read_manifest(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row, values stripped; the columns checked, with the nearest
    known name for a mistyped one."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")  # a BOM from spreadsheet exports
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    if not columns:
        raise DatasetError(f"{path} is empty: a manifest starts with the header line path,subject,emotion[,group].")
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    for column in columns:
        if column not in known:
            nearest = difflib.get_close_matches(column, known, n=1)
            raise DatasetError(
                f"{path}: the column {column!r} is not one anonemo reads"
                + (f" (did you mean {nearest[0]}?)" if nearest else "")
                + f". A manifest has the columns {', '.join(REQUIRED_COLUMNS)} and optionally group; "
                "remove or rename the others."
            )
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise DatasetError(f"{path} has no column {', '.join(absent)}: its header is {','.join(columns)}; "
                           f"a manifest needs {', '.join(REQUIRED_COLUMNS)} (and optionally group).")
    rows = []
    for line, raw in enumerate(reader, start=2):
        if None in raw:
            raise DatasetError(f"{path}, line {line} has more values than the header has columns.")
        row = {key.strip(): (value or "").strip() for key, value in raw.items()}
        if not any(row.values()):
            continue
        empty = [c for c in REQUIRED_COLUMNS if not row.get(c)]
        if empty:
            raise DatasetError(f"{path}, line {line}: no {' or '.join(empty)} given. Every row needs "
                               f"{', '.join(REQUIRED_COLUMNS)}.")
        rows.append((line, row))
    if not rows:
        raise DatasetError(f"{path} has a header but no rows.")
    return rows
