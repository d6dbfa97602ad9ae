"""``python -m anonemo.data.preview dataset=...``: a PNG contact sheet of a dataset.

Rows are subjects and columns emotions; each cell shows the first original image of that pair
after face crop and resize, i.e. what the networks are trained on (before augmentation).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.data.pipeline import load_originals
from anonemo.data.records import FaceRecords
from anonemo.evaluation import plt

log = logging.getLogger(__name__)


def contact_sheet(faces: FaceRecords) -> np.ndarray:
    """A ``(subjects * S, emotions * S)`` mosaic; cells with no image stay mid-grey."""
    size = faces.images.shape[-1]
    sheet = np.full((faces.num_subjects * size, faces.num_emotions * size), 128, np.uint8)
    filled = set()
    for image, subject, emotion in zip(faces.images, faces.subjects, faces.emotions):
        if (subject, emotion) not in filled:
            filled.add((subject, emotion))
            sheet[subject * size : (subject + 1) * size, emotion * size : (emotion + 1) * size] = image
    return sheet


def write_contact_sheet(faces: FaceRecords, path: str | Path, title: str) -> Path:
    sheet = contact_sheet(faces)
    size = faces.images.shape[-1]
    height, width = sheet.shape
    figure, axes = plt.subplots(figsize=(1.5 + width / 64 * 1.1, 0.8 + height / 64 * 1.1))
    axes.imshow(sheet, cmap="gray", vmin=0, vmax=255)
    axes.set_xticks(np.arange(faces.num_emotions) * size + size / 2, faces.emotion_names, rotation=45)
    axes.set_yticks(np.arange(faces.num_subjects) * size + size / 2, faces.subject_names)
    axes.tick_params(length=0)
    axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@hydra.main(version_base="1.3", config_path="../../conf", config_name="preview")
def main(cfg: DictConfig) -> None:
    with user_errors_reported():
        faces = load_originals(cfg.dataset)
        title = f"{cfg.dataset.name}: {len(faces)} originals, {faces.num_subjects} subjects x {faces.num_emotions} emotions"
        path = write_contact_sheet(faces, cfg.output, title)
        log.info("Wrote the contact sheet of %s to %s", cfg.dataset.name, path.resolve())


if __name__ == "__main__":
    check_override_keys("preview", sys.argv[1:])
    main()
