"""Folder-format episodes, so users can segment their own photos.

One folder per episode::

    <root>/<episode>/support.jpg        support_mask.png     (1-shot)
    <root>/<episode>/support_1.jpg      support_1_mask.png   (k-shot: support_1 .. support_k)
    <root>/<episode>/query.jpg          query_mask.png       (mask optional, for scoring)
    <root>/<episode>/class.txt          optional class name (default: the folder name)
    <root>/<episode>/kind.txt           optional "object" (default) or "part"

Images may be .jpg, .jpeg or .png in any mode; they are read as RGB uint8. Masks are PNGs
in any mode; a nonzero pixel is foreground (the palette index for "P" masks, and a fully
transparent pixel is background in masks with alpha).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .episode import Episode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NUMBERED_SUPPORT = re.compile(r"support_(\d+)$")


def _find_image(folder: Path, stem: str) -> Path:
    found = [p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise FileNotFoundError(f"missing image {folder / stem}.<jpg|jpeg|png>")
    if len(found) > 1:
        raise ValueError(f"ambiguous image {folder / stem}: {sorted(p.name for p in found)}")
    return found[0]


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        # Phone photos store their rotation in EXIF; masks are drawn on the image as displayed.
        return ImageOps.exif_transpose(image)


def _read_mask(path: Path, image_path: Path, image_size: tuple) -> np.ndarray:
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob(f"{path.stem}.*"))
        if others:  # JPEG compression smears a mask's edges into stray foreground, so only PNG is read
            raise FileNotFoundError(f"missing mask {path}: found {', '.join(others)}, but masks must be PNG "
                                    f"(save it as {path.name})")
        raise FileNotFoundError(f"missing mask {path}")
    mask = _open(path)
    if mask.size != image_size:
        raise ValueError(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but image {image_path} is "
            f"{image_size[0]}x{image_size[1]} (width x height)"
        )
    values = np.asarray(mask)
    if values.ndim == 2:
        return values != 0
    bands = mask.getbands()
    colour = values[..., [i for i, band in enumerate(bands) if band != "A"]]
    foreground = (colour != 0).any(axis=2)
    if "A" in bands:
        foreground &= values[..., bands.index("A")] != 0
    return foreground


def _read_pair(folder: Path, stem: str, mask_required: bool) -> tuple:
    image_path = _find_image(folder, stem)
    image = _open(image_path)
    mask_path = folder / f"{stem}_mask.png"
    mask = None
    if mask_required or any(folder.glob(f"{stem}_mask.*")):
        mask = _read_mask(mask_path, image_path, image.size)
    return np.asarray(image.convert("RGB"), dtype=np.uint8), mask, mask_path


def _support_stems(folder: Path) -> list:
    numbers = sorted(
        int(m.group(1))
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and (m := _NUMBERED_SUPPORT.match(p.stem))
    )
    single = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("support.*"))
    if single and numbers:
        raise ValueError(f"{folder} mixes support.<ext> with numbered support_<i> images")
    if single or not numbers:
        return ["support"]
    # Numbering from 1 without gaps: a gap is reported as the missing file, not skipped.
    return [f"support_{i}" for i in range(1, max(numbers) + 1)]


def _read_text(path: Path, default: str) -> str:
    if not path.is_file():
        return default
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def load_episode(path) -> Episode:
    """Read one episode folder (see the module docstring for the layout)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"episode folder {folder} does not exist")
    support_images, support_masks = [], []
    for stem in _support_stems(folder):
        image, mask, mask_path = _read_pair(folder, stem, mask_required=True)
        if not mask.any():
            raise ValueError(f"support mask {mask_path} is empty (no foreground pixel)")
        support_images.append(image)
        support_masks.append(mask)
    query_image, query_mask, _ = _read_pair(folder, "query", mask_required=False)
    return Episode(
        support_images=tuple(support_images),
        support_masks=tuple(support_masks),
        query_image=query_image,
        query_mask=query_mask,
        class_name=_read_text(folder / "class.txt", folder.name),
        kind=_read_text(folder / "kind.txt", "object"),
        name=folder.name,
    )


def load_episodes(root) -> list:
    """Every episode folder directly under ``root``, sorted by folder name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"episode root {root} does not exist")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.glob("query.*")):
        raise ValueError(f"{root} is one episode (it holds {_find_image(root, 'query').name}); pass the folder that "
                         f"holds episode folders, here its parent {root.parent}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"no episode folders under {root}")
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
