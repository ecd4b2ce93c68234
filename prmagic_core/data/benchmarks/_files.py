"""Reading benchmark files, each failure turned into one BenchmarkError line naming the path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..images import mask_values, open_image, to_rgb
from ._base import BenchmarkError
from ._pickles import RefusedGlobal, load_data


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


def _read_pixels(path: Path, expected: str, convert) -> np.ndarray:
    require_file(path, expected)
    try:
        # Benchmarks are read as their reference code reads them: without EXIF rotation.
        return convert(open_image(path, transpose=False))
    except InputError as error:
        raise fail(path, error.problem, expected) from None


def read_rgb(path: Path, expected: str) -> np.ndarray:
    """An HxWx3 uint8 image."""
    return _read_pixels(path, expected, to_rgb)


def read_binary_mask(path: Path, expected: str) -> np.ndarray:
    """A black/white mask image as bool, by the mask rule of :mod:`prmagic_core.data.images`
    (> 127 for 8-bit grey: HSNet's and Matcher's threshold at 128)."""
    return _read_pixels(path, expected, lambda image: mask_values(image)[0])


def read_label_map(path: Path, expected: str) -> np.ndarray:
    """The raw values of a label image (palette indices or grey levels, not colours)."""
    return _read_pixels(path, expected, np.array)


def read_pickle(path: Path, expected: str):
    """The pickled containers, numbers, strings and numpy arrays in ``path``; a pickle naming
    anything else (which could run code) is refused before it is imported."""
    require_file(path, expected)
    try:
        with open(path, "rb") as f:
            return load_data(f)
    except RefusedGlobal as error:
        raise fail(path, f"unsafe pickle: {error}", expected) from None
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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise fail(path, f"not UTF-8 text ({error.reason} at byte {error.start})", expected) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def crop(array: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """The box's rows and columns, clipped to the array (boxes may round past the border)."""
    top, left = max(top, 0), max(left, 0)
    return array[top:bottom, left:right]
