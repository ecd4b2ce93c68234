"""Reading benchmark files, each failure turned into one BenchmarkError line naming the path.

Also decodes COCO-style segmentations (polygons and RLE) without pycocotools, which the
LVIS, PACO and Pascal-Part annotations use.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ._base import BenchmarkError


def fail(path: Path, problem: str, expected: str) -> BenchmarkError:
    return BenchmarkError(f"{path}: {problem}; expected {expected}")


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise fail(path, "no such folder", expected)
    return path


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise fail(path, "no such file", expected)
    return path


def _read_pixels(path: Path, expected: str, mode: str | None) -> np.ndarray:
    require_file(path, expected)
    try:
        with Image.open(path) as image:
            return np.array(image if mode is None else image.convert(mode))
    # Pillow reports broken files as OSError (truncated, unidentified), SyntaxError (bad PNG
    # chunks) or ValueError, depending on the format and where the file breaks off.
    except (OSError, SyntaxError, ValueError) as error:
        raise fail(path, f"unreadable image ({error})", expected) from None


def read_rgb(path: Path, expected: str) -> np.ndarray:
    """An HxWx3 uint8 image."""
    return _read_pixels(path, expected, "RGB")


def read_binary_mask(path: Path, expected: str) -> np.ndarray:
    """A black/white mask image as bool, thresholded at 128 as HSNet and Matcher do."""
    return _read_pixels(path, expected, "L") >= 128


def read_label_map(path: Path, expected: str) -> np.ndarray:
    """The raw values of a label image (palette indices or grey levels, not colours)."""
    return _read_pixels(path, expected, None)


def read_pickle(path: Path, expected: str):
    require_file(path, expected)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    # A damaged pickle can fail with almost any exception type.
    except Exception as error:  # noqa: BLE001
        raise fail(path, f"unreadable pickle ({type(error).__name__}: {error})", expected) from None


def read_json(path: Path, expected: str):
    require_file(path, expected)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as error:
        raise fail(path, f"unreadable JSON ({error})", expected) from None


def read_lines(path: Path, expected: str) -> list:
    """Non-empty stripped lines of a text file."""
    require_file(path, expected)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """An HxW bool mask from a COCO-style segmentation.

    Accepts a list of polygons (flat ``[x0, y0, x1, y1, ...]`` lists), an RLE dict (``size`` =
    ``[h, w]`` and ``counts`` as a compressed string/bytes or a plain list), a list of RLE dicts
    (their union) or an HxW array. Raises ValueError on anything else.
    """
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(f"mask array has shape {segmentation.shape}, image is {(height, width)}")
        return segmentation.astype(bool)
    if isinstance(segmentation, dict):
        return _decode_rle(segmentation, height, width)
    if isinstance(segmentation, (list, tuple)):
        if segmentation and all(isinstance(item, dict) for item in segmentation):
            return np.logical_or.reduce([_decode_rle(rle, height, width) for rle in segmentation])
        return _rasterize_polygons(segmentation, height, width)
    raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")


def union_of_segmentations(segmentations, shape: tuple) -> np.ndarray:
    """The union of COCO-style segmentations as an HxW bool mask; ValueError when there is none."""
    if not segmentations:
        raise ValueError("no segmentation")
    return np.logical_or.reduce([decode_segmentation(s, *shape) for s in segmentations])


def _rasterize_polygons(polygons, height: int, width: int) -> np.ndarray:
    # Pillow's fill can differ from pycocotools' by a pixel along edges; negligible for IoU.
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=float).reshape(-1, 2)
        if len(points) >= 3:
            draw.polygon([tuple(p) for p in points], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def _decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
    rle_height, rle_width = (int(v) for v in rle["size"])
    if (rle_height, rle_width) != (height, width):
        raise ValueError(f"RLE size {(rle_height, rle_width)} differs from image size {(height, width)}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts cover {sum(counts)} pixels, image has {height * width}")
    # Runs alternate background/foreground, starting with background, in column-major order.
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape((height, width), order="F")


def rle_counts_from_string(text: str) -> list:
    """Run lengths from COCO's compressed RLE string (a port of pycocotools' ``rleFrString``).

    Each run is a little-endian base-32 number in characters offset by 48, six bits a character
    with 0x20 meaning "more follows" and 0x10 the sign of the last one; from the fourth run on,
    the number is stored as the difference from the run two places back.
    """
    counts = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(text[position]) - 48
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def crop(array: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """The box's rows and columns, clipped to the array (boxes may round past the border)."""
    top, left = max(top, 0), max(left, 0)
    return array[top:bottom, left:right]
