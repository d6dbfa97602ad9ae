"""The Yale Face Database (``dataset=yale``)."""

from __future__ import annotations

import re

from anonemo.data.files import FileNameLabels


class YaleFaces(FileNameLabels):
    """The Yale Face Database: ``subjectNN.<condition>`` GIFs, usually without an extension."""

    title = "Yale faces"
    naming = "subjectNN.<condition>"
    how_to_get = (
        "Download the Yale Face Database (yalefaces: 15 subjects, 165 GIF files named like "
        "subject01.happy) from its distributors, e.g. http://vision.ucsd.edu/content/yale-face-database, "
        "unpack it, and run with dataset=yale dataset.root=/path/to/yalefaces (the .zip works too)."
    )
    name_pattern = re.compile(r"^subject(?P<subject>\d+)\.(?P<emotion>[a-z]+)(?:\.gif)?$", re.IGNORECASE)
    code_case = staticmethod(str.lower)

    def subject_name(self, code: str) -> str:
        return f"subject{code}"
