"""Image bytes to a grayscale array, with errors that name the file: for dataset loaders, and for
``anonemo.predict`` and ``anonemo.export`` reading a user's images."""

from __future__ import annotations

import io
import re
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from anonemo.errors import ImageReadError, ImageTooLargeError

# OpenCV prints its own decoder errors to stderr; ours name the file instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

DATASET_FILE_ADVICE = "Replace it with an intact copy from the original download, or remove it from the folder."
# A 10000 x 10000 image; camera photos are 12-50 megapixels. A few bytes of PNG or GIF can declare
# 30000 x 30000 (a "decompression bomb"), which would take gigabytes to decode.
MAX_IMAGE_PIXELS = 100_000_000


def refuse_oversized(data: bytes, location: str, max_pixels: int, advice: str) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, without decoding
    its pixels. Formats Pillow does not know pass (OpenCV then decides whether it is an image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as refusal:  # Pillow's own refusal, at twice its warning limit
        # Pillow keeps the width and height to itself here; its message carries their product.
        declared = re.search(r"\((\d+) pixels\)", str(refusal))
        size = f"{int(declared[1]):,} pixels" if declared else f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # not an image Pillow reads
        return
    else:
        if width * height <= max_pixels:
            return
        size = f"{width} x {height} pixels"
    raise ImageTooLargeError(
        f"{location} declares {size}, over the limit of {max_pixels:,}: it may be a decompression "
        f"bomb (a small file that decodes to gigabytes), so it is not decoded. {advice}"
    )


def decode_grayscale(data: bytes, location: str, advice: str = DATASET_FILE_ADVICE,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode image bytes (GIF, TIFF incl. palette-coded, PNG, JPEG, ...) to a 2-D uint8 array;
    ``advice`` ends the error for a file that is not an image or declares more than
    ``max_pixels`` pixels (refused from its header, before decoding)."""
    if data:
        refuse_oversized(data, location, max_pixels, advice)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    except cv2.error:  # OpenCV's own checks (for instance its size limit) raise instead of returning None
        image = None
    if image is None or image.ndim != 2 or min(image.shape) == 0:
        raise ImageReadError(
            f"Could not decode {location} as an image: the file is empty, truncated or not in an "
            f"image format OpenCV reads. {advice}"
        )
    if image.size > max_pixels:
        raise ImageTooLargeError(f"{location} has {image.size:,} pixels, over the limit of {max_pixels:,}. {advice}")
    return image
