"""Reading benchmark files, each failure turned into one BenchmarkError line naming the path."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

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


def crop(array: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """The box's rows and columns, clipped to the array (boxes may round past the border)."""
    top, left = max(top, 0), max(left, 0)
    return array[top:bottom, left:right]
