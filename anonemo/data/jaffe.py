"""JAFFE, the Japanese Female Facial Expression database (``dataset=jaffe``)."""

from __future__ import annotations

import re

from anonemo.data.files import FileNameLabels


class JaffeFaces(FileNameLabels):
    """JAFFE: ``XX.EEn.NNN.tiff`` (poser initials, emotion code + take, running number)."""

    title = "JAFFE"
    naming = "XX.EEn.NNN.tiff"
    how_to_get = (
        "JAFFE may not be redistributed: request it from its authors (Lyons, Kamachi & Gyoba, "
        "https://zenodo.org/record/3451524), unpack the flat folder of 213 .tiff files named like "
        "KA.AN1.39.tiff, and run with dataset=jaffe dataset.root=/path/to/jaffe (the .zip works too)."
    )
    name_pattern = re.compile(r"^(?P<subject>[A-Za-z]{2})\.(?P<emotion>[A-Za-z]{2})\d*\.\d+\.tiff?$", re.IGNORECASE)
    code_case = staticmethod(str.upper)
