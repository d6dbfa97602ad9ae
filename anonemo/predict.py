"""``python -m anonemo.predict MODEL IMAGES... [--csv FILE] [--encode FILE]``: emotions of faces.

MODEL is a folder written by ``python -m anonemo.export`` (or its ``emotion_model.pt``, with
``preprocessing.json`` beside it). IMAGES are image files in any format OpenCV reads, or
folders of them. Each image goes through the training preprocessing (face crop, resize, scale);
the table gives the emotion and its probability per image, never an identity: the model has no
identity head. ``--encode`` writes the anonymised features instead (the encoder's output, the
representation the identity audit measured) for downstream use.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from PIL import Image

from anonemo.data.decode import MAX_IMAGE_PIXELS, decode_grayscale
from anonemo.data.preprocess import ImagePreprocessor
from anonemo.errors import AnonemoError, ConfigError, DatasetError, ImageReadError, ModelFileError
from anonemo.export import MODEL_FILE, PREPROCESSING_FILE

BATCH = 64
SHOWN_SKIPPED = 10


def load_exported(model_path: Path) -> tuple[torch.jit.ScriptModule, dict]:
    folder = model_path if model_path.is_dir() else model_path.parent
    files = (folder / MODEL_FILE, folder / PREPROCESSING_FILE) if model_path.is_dir() else (model_path, folder / PREPROCESSING_FILE)
    for file in files:
        if not file.is_file():
            raise ModelFileError(
                f"{file} does not exist: MODEL must be a folder written by python -m anonemo.export (holding "
                f"{MODEL_FILE} and {PREPROCESSING_FILE}) or the {MODEL_FILE} in it."
            )
    try:
        model = torch.jit.load(str(files[0]), map_location="cpu").eval()
    except Exception as error:  # TorchScript raises several unrelated classes for bad files
        raise ModelFileError(f"{files[0]} is not a TorchScript model written by anonemo.export ({error}).") from error
    return model, json.loads(files[1].read_text())


def image_files(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """The given files, and the non-hidden files inside given folders (sorted); and a skipped row
    for each link in a folder that leads out of it (a folder of images never reads elsewhere)."""
    files, skipped = [], []
    for path in paths:
        if path.is_dir():
            inside = path.resolve()
            for entry in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                target = entry.resolve()
                if target.is_relative_to(inside):
                    files.append(entry)
                else:
                    skipped.append({"image": str(entry), "error": f"{entry} is a link to {target}, outside "
                                    f"{path}: links out of a folder are not followed. Give the file itself to read it."})
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"{path} does not exist: give image files or folders of images.")
    if not files and not skipped:
        raise DatasetError(f"No files in {', '.join(map(str, paths))}: give image files or folders of images.")
    return files, skipped


def read_image(file: Path, max_pixels: int, advice: str) -> np.ndarray:
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ImageReadError(f"Could not read {file}: {error.strerror or error}. {advice}") from error
    return decode_grayscale(data, str(file), advice, max_pixels)


def predict(model: torch.jit.ScriptModule, preprocessing: dict, files: list[Path], encode: bool = False,
            max_pixels: int = MAX_IMAGE_PIXELS, strict: bool = False) -> list[dict]:
    """One row per image: ``image``, ``face_detected`` and either ``emotion`` and ``confidence``
    (and each class's probability) or ``features``; files that cannot be read or are over
    ``max_pixels`` get ``error`` (with ``strict``, the first of them stops the batch)."""
    prepare = ImagePreprocessor(preprocessing["face_crop"], preprocessing["image_size"])
    classes = preprocessing["class_names"]
    advice = "--strict stops here: remove the file, or leave out --strict to skip it." if strict else "It is skipped."
    rows = []
    for start in track(range(0, len(files), BATCH), description="Predicting", console=Console(stderr=True),
                       transient=True):
        batch, images = [], []
        for file in files[start : start + BATCH]:
            try:
                images.append(read_image(file, max_pixels, advice))
                batch.append(file)
            except ImageReadError as error:
                if strict:
                    raise
                rows.append({"image": str(file), "error": str(error)})
        if not images:
            continue
        tensors, detected = prepare(images)
        with torch.no_grad():
            outputs = model.encode(tensors) if encode else model(tensors)
        for file, found, output in zip(batch, detected, outputs):
            row = {"image": str(file), "face_detected": found}
            if encode:
                row["features"] = output.numpy()
            else:
                row |= {"emotion": classes[int(output.argmax())], "confidence": float(output.max())}
                row |= {f"p_{name}": float(p) for name, p in zip(classes, output)}
            rows.append(row)
    return rows


def report_skipped(failed: list[dict], total: int, csv_path: Path | None) -> None:
    """One counted warning, with the first few reasons; a batch of thousands is not stopped or
    flooded by a few bad files."""
    err = Console(stderr=True, highlight=False)
    where = f"; all of them are in {csv_path} (column error)" if csv_path is not None else ""
    err.print(f"skipped {len(failed)} of {total} files{where}:", soft_wrap=True)
    for row in failed[:SHOWN_SKIPPED]:
        err.print(f"skipped: {row['error']}", soft_wrap=True)
    if len(failed) > SHOWN_SKIPPED:
        err.print(f"... and {len(failed) - SHOWN_SKIPPED} more (--strict stops at the first).", soft_wrap=True)


def write_csv(rows: list[dict], path: Path, classes: list[str]) -> None:
    fields = ["image", "emotion", "confidence", "face_detected", *(f"p_{c}" for c in classes), "error"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def pixel_limit(option: int | None, preprocessing: dict) -> int:
    limit = option if option is not None else int(preprocessing.get("max_pixels", MAX_IMAGE_PIXELS))
    # Above twice its own limit Pillow refuses to read the header's size, so it could not be checked.
    if not 0 < limit <= 2 * Image.MAX_IMAGE_PIXELS:
        raise ConfigError(f"--max-pixels={limit} must be between 1 and {2 * Image.MAX_IMAGE_PIXELS:,} pixels.")
    return limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anonemo.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="folder written by python -m anonemo.export")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders of images")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--encode", type=Path, metavar="FILE.npz",
                        help="write the anonymised features (not emotions) of the images to this .npz file")
    parser.add_argument("--max-pixels", type=int, metavar="N",
                        help="refuse images whose header declares more pixels (default: the export's max_pixels, "
                             f"else {MAX_IMAGE_PIXELS:,})")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable or oversized file instead of skipping it")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        model, preprocessing = load_exported(args.model)
        max_pixels = pixel_limit(args.max_pixels, preprocessing)
        files, rows = image_files(args.images)
        if rows and args.strict:
            raise ImageReadError(rows[0]["error"])
        rows += predict(model, preprocessing, files, encode=args.encode is not None, max_pixels=max_pixels,
                        strict=args.strict)
    except AnonemoError as error:
        Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {error}", soft_wrap=True)
        return 2
    failed = [row for row in rows if "error" in row]
    if failed:
        report_skipped(failed, len(rows), args.csv if args.encode is None else None)
    done = [row for row in rows if "error" not in row]
    if args.encode is not None:
        np.savez(args.encode, images=np.array([r["image"] for r in done]),
                 features=np.stack([r["features"] for r in done]) if done else np.zeros((0, 0), np.float32))
        console.print(f"{len(done)} images encoded to {args.encode} (anonymised features, "
                      f"{done[0]['features'].shape[0] if done else 0} per image)")
    else:
        table = Table("emotion", "confidence", "face", "image")
        table.columns[-1].overflow = "fold"  # a long path wraps, never loses the part that tells files apart
        for row in done:
            table.add_row(row["emotion"], f"{row['confidence']:.3f}",
                          "detected" if row["face_detected"] else "not detected (centre crop)"
                          if preprocessing["face_crop"].get("method") == "haar" else "-", row["image"])
        console.print(table)
        if args.csv is not None:
            write_csv(rows, args.csv, preprocessing["class_names"])
            console.print(f"written to {args.csv}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
