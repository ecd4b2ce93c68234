"""Masks drawn on their image as PNG files, so a run on your own photos can be looked at.

    save_overlays(Path("masks/episode-1"), episode, result)   # B.png, T.png, O.png, candidate_0.png, ...

The mask is tinted orange with a solid outline; the ground truth, when there is one, is outlined in
white. Files are written atomically (a temporary file renamed into place).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

MASK_COLOUR = np.array([255, 127, 14], dtype=np.float64)
TRUTH_COLOUR = np.array([255, 255, 255], dtype=np.float64)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's border pixels (foreground pixels with a background 4-neighbour)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay_image(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` with ``mask`` tinted and outlined, and ``truth`` outlined."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape} but the image is {image.shape[:2]}")
    out = image.astype(np.float64)
    out[mask] = (1 - alpha) * out[mask] + alpha * MASK_COLOUR
    out[outline(mask)] = MASK_COLOUR
    if truth is not None:
        out[outline(np.asarray(truth, dtype=bool))] = TRUTH_COLOUR
    return out.round().astype(np.uint8)


def write_png(array: np.ndarray, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def save_overlays(folder, episode, result) -> list:
    """One episode's B (step 0), T (the selector's pick), O (the oracle's, when the query has a mask) and
    every candidate as overlays on the query image under ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    picks = {"B": 0, "T": result.top1_index}
    if result.oracle_index is not None:
        picks["O"] = result.oracle_index
    named = {**{label: result.candidates[t] for label, t in picks.items()},
             **{f"candidate_{t}": mask for t, mask in enumerate(result.candidates)}}
    return [write_png(overlay_image(episode.query_image, mask, episode.query_mask), folder / f"{name}.png")
            for name, mask in named.items()]
