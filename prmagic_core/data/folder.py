"""Folder-format episodes, so users can segment their own photos.

One folder per episode::

    <root>/<episode>/support.jpg        support_mask.png     (1-shot)
    <root>/<episode>/support_1.jpg      support_1_mask.png   (k-shot: support_1 .. support_k)
    <root>/<episode>/query.jpg          query_mask.png       (mask optional, for scoring)
    <root>/<episode>/class.txt          optional class name (default: the folder name)
    <root>/<episode>/kind.txt           optional "object" (default) or "part"

Images may be .jpg, .jpeg or .png in any mode; they are read as RGB uint8. Masks are PNGs
in any mode, read by the rule in :mod:`prmagic_core.data.images` (> 127 for 8-bit grey, a nonzero
index for palette and 1-bit masks); a mask with more than two values, or a support mask with no
background, is used with an :class:`~prmagic_core.errors.InputWarning` naming it. Every problem
is an :class:`~prmagic_core.errors.InputError` naming the file or folder.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, InputWarning
from .episode import KINDS, Episode
from .images import mask_values, open_image, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NUMBERED_SUPPORT = re.compile(r"support_(\d+)$")


def _find_image(folder: Path, stem: str) -> Path:
    found = [p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise InputError(f"{folder / stem}.<jpg|jpeg|png>", "missing image")
    if len(found) > 1:
        raise InputError(folder / stem, f"ambiguous image: {sorted(p.name for p in found)}")
    return found[0]


def _read_mask(path: Path, image_path: Path, image_size: tuple, support: bool) -> np.ndarray:
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob(f"{path.stem}.*"))
        if others:  # JPEG compression smears a mask's edges into stray foreground, so only PNG is read
            raise InputError(path, f"missing mask: found {', '.join(others)}, but masks must be PNG "
                                   f"(save it as {path.name})")
        raise InputError(path, "missing mask")
    image = open_image(path)
    if image.size != image_size:
        raise InputError(path, f"mask is {image.size[0]}x{image.size[1]} but image {image_path} is "
                               f"{image_size[0]}x{image_size[1]} (width x height)")
    mask, grey_levels = mask_values(image)
    if grey_levels:
        warnings.warn(f"{path}: mask has more than two values (anti-aliased or JPEG-compressed?); foreground is "
                      "where it is above half its range (8-bit: > 127; palette: index > 0)", InputWarning, stacklevel=2)
    if support and not mask.any():
        raise InputError(path, "support mask is empty (no foreground pixel)")
    if support and mask.all():
        warnings.warn(f"{path}: support mask is foreground everywhere (no background)", InputWarning, stacklevel=2)
    return mask


def _read_pair(folder: Path, stem: str, support: bool) -> tuple:
    image_path = _find_image(folder, stem)
    image = open_image(image_path)
    mask_path = folder / f"{stem}_mask.png"
    mask = None
    if support or any(folder.glob(f"{stem}_mask.*")):
        mask = _read_mask(mask_path, image_path, image.size, support)
    return to_rgb(image), mask


def _support_stems(folder: Path) -> list:
    numbers = sorted(
        int(m.group(1))
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and (m := _NUMBERED_SUPPORT.match(p.stem))
    )
    single = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("support.*"))
    if single and numbers:
        raise InputError(folder, "mixes support.<ext> with numbered support_<i> images")
    if single or not numbers:
        return ["support"]
    # Numbering from 1 without gaps: a gap is reported as the missing file, not skipped.
    return [f"support_{i}" for i in range(1, max(numbers) + 1)]


def _read_text(path: Path, default: str) -> str:
    if not path.is_file():
        return default
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not text:
        raise InputError(path, "is empty")
    return text


def load_episode(path) -> Episode:
    """Read one episode folder (see the module docstring for the layout)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(folder, "is not an episode folder" if folder.exists() else "no such episode folder")
    kind = _read_text(folder / "kind.txt", "object")
    if kind not in KINDS:
        raise InputError(folder / "kind.txt", f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    class_name = _read_text(folder / "class.txt", folder.name)
    support_images, support_masks = [], []
    for stem in _support_stems(folder):
        image, mask = _read_pair(folder, stem, support=True)
        support_images.append(image)
        support_masks.append(mask)
    query_image, query_mask = _read_pair(folder, "query", support=False)
    try:
        return Episode(tuple(support_images), tuple(support_masks), query_image, query_mask,
                       class_name=class_name, kind=kind, name=folder.name)
    except ValueError as error:
        raise InputError(folder, str(error)) from None


def load_episodes(root) -> list:
    """Every episode folder directly under ``root``, sorted by folder name; an entry that
    cannot be read (a broken link, a loop of links, no permission) is an error, not skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder of episodes" if root.exists() else "no such folder of episodes")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.glob("query.*")):
        raise InputError(root, f"is one episode (it holds {_find_image(root, 'query').name}); pass the folder that "
                               f"holds episode folders, here its parent {root.parent}")
    folders = []
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        try:
            entry.stat()
        except OSError as error:
            raise InputError(entry, f"cannot be read ({error.strerror or error})") from None
        if entry.is_dir():
            folders.append(entry)
    if not folders:
        raise InputError(root, "no episode folders in it")
    return [load_episode(folder) for folder in folders]


def save_episode(episode: Episode, path, image_format: str = "png") -> Path:
    """Write ``episode`` in the folder layout; returns the folder.

    ``image_format="png"`` round-trips exactly; ``"jpg"`` (quality 95, no chroma
    subsampling) is about half the size, for shipping samples. Masks are always 1-bit PNG. The folder must be new or
    empty, so stale files from an earlier episode can never be read back with this one.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    # Full-resolution chroma: subsampling smears colour across thin texture stripes.
    options = {"quality": 95, "subsampling": 0} if image_format == "jpg" else {}
    stems = ["support"] if episode.shots == 1 else [f"support_{i}" for i in range(1, episode.shots + 1)]
    pairs = list(zip(stems, episode.support_images, episode.support_masks))
    pairs.append(("query", episode.query_image, episode.query_mask))
    for stem, image, mask in pairs:
        Image.fromarray(image).save(folder / f"{stem}.{image_format}", **options)
        if mask is not None:
            Image.fromarray(mask).save(folder / f"{stem}_mask.png")
    # Class names may hold characters a folder name cannot (e.g. "car/wheel"), so always write them.
    (folder / "class.txt").write_text(episode.class_name + "\n", encoding="utf-8")
    if episode.kind != "object":
        (folder / "kind.txt").write_text(episode.kind + "\n", encoding="utf-8")
    return folder
