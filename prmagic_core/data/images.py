"""Image and mask files to arrays: the input rules every loader follows.

Images become HxWx3 uint8 RGB. Pillow reads 16-bit colour PNGs at 8 bits (the high byte) and
converts CMYK JPEGs (Adobe's inverted ones too) itself; 16-bit grey PNGs are scaled the same way
here, as Pillow's own conversion would clip them to white. Alpha is dropped, as ``cv2.imread``
and ``convert("RGB")`` in the authors' code do.

Masks: a pixel is foreground when its value is above half its range (> 127 for 8-bit grey,
> 32767 for 16-bit grey, any colour channel > 127 for colour masks) and, when the mask has
alpha, it is not mostly transparent (alpha > 127). Palette and 1-bit masks: a nonzero index is
foreground, whatever colour the palette gives it. A grey mask holding only 0 and 1 is a label
map: 1 is foreground.

A file Pillow cannot decode (truncated, not an image, unreadable) is an :class:`InputError`
naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GREY = ("L", "LA") + _SIXTEEN_BIT_GREY


def open_image(path, transpose: bool = True) -> Image.Image:
    """The decoded image at ``path``; ``transpose`` applies its EXIF rotation (masks are drawn on the image as shown)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image) if transpose else image.copy()
    # Pillow reports broken files as OSError (truncated, unidentified, unreadable), SyntaxError
    # (bad PNG chunks), ValueError or a DecompressionBombError, depending on where the file breaks.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        problem = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise InputError(path, f"unreadable image ({type(error).__name__}: {problem})") from None


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB of any Pillow mode, 16-bit grey scaled to 8 bits."""
    if image.mode in _SIXTEEN_BIT_GREY:
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def mask_values(image: Image.Image) -> tuple:
    """(foreground as HxW bool, whether the mask holds more than two distinct values)."""
    if image.mode == "1":
        # numpy sees Pillow's 1-bit pixels as bools stored as 0/255 bytes, which compare wrongly.
        image = image.convert("L")
    elif image.mode not in _GREY + ("P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    values = np.asarray(image)
    bands = image.getbands()
    alpha = values[..., bands.index("A")] if "A" in bands else None
    colour = values[..., [i for i, band in enumerate(bands) if band != "A"]] if values.ndim == 3 else values[..., None]
    if image.mode == "P":
        foreground = colour[..., 0] != 0
    else:
        threshold = 32767 if image.mode in _SIXTEEN_BIT_GREY else 127
        label_map = image.mode in _GREY and colour.max(initial=0) <= 1
        foreground = (colour > (0 if label_map else threshold)).any(axis=2)
    if alpha is not None:
        foreground &= alpha > 127
    return foreground, _more_than_two_values(values)


def _more_than_two_values(values: np.ndarray) -> bool:
    flat = values.reshape(values.shape[0] * values.shape[1], -1)
    if flat.shape[0] == 0:
        return False
    others = flat[(flat != flat[0]).any(axis=1)]
    return bool(len(others)) and bool((others != others[0]).any())
