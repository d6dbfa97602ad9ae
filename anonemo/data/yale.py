"""The Yale Face Database (``dataset=yale``)."""

from __future__ import annotations

import re

from anonemo.data.files import FileNameLabels


class YaleFaces(FileNameLabels):
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
