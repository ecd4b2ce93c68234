"""COCO-style segmentations (polygons, RLE) to bool masks, without pycocotools.

LVIS, PACO and Pascal-Part store masks this way, and Matcher decodes them with pycocotools; the
polygon and compressed-RLE code here are ports of its ``maskApi.c`` (``rleFrPoly``,
``rleFrString``) so the ground truth comes out pixel for pixel the same.
"""
from __future__ import annotations

import numpy as np


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """An HxW bool mask from a COCO-style segmentation.

    Accepts a list of polygons (flat ``[x0, y0, x1, y1, ...]`` lists; their union), an RLE dict
    (``size`` = ``[h, w]``, ``counts`` a compressed string/bytes or a plain list), a list of RLE
    dicts (their union) or an HxW array. Raises ValueError on anything else.
    """
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(f"mask array has shape {segmentation.shape}, image is {(height, width)}")
        return segmentation.astype(bool)
    if isinstance(segmentation, dict):
        return _decode_rle(segmentation, height, width)
    if isinstance(segmentation, (list, tuple)) and segmentation:
        if all(isinstance(item, dict) for item in segmentation):
            return np.logical_or.reduce([_decode_rle(rle, height, width) for rle in segmentation])
        polygons = [polygon_to_counts(np.asarray(p, dtype=float), height, width) for p in segmentation]
        return np.logical_or.reduce([counts_to_mask(counts, height, width) for counts in polygons])
    raise ValueError(f"unknown segmentation {type(segmentation).__name__} {segmentation!r:.40}")


def union_of_segmentations(segmentations, shape: tuple) -> np.ndarray:
    """The union of COCO-style segmentations as an HxW bool mask; ValueError when there is none."""
    if not segmentations:
        raise ValueError("no segmentation")
    return np.logical_or.reduce([decode_segmentation(s, *shape) for s in segmentations])


def counts_to_mask(counts, height: int, width: int) -> np.ndarray:
    """Runs alternate background/foreground, starting with background, in column-major order."""
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts cover {sum(counts)} pixels, image has {height * width}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape((height, width), order="F")


def _decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
    rle_shape = tuple(int(v) for v in rle["size"])
    if rle_shape != (height, width):
        raise ValueError(f"RLE size {rle_shape} differs from image size {(height, width)}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    return counts_to_mask(counts, height, width)


def rle_counts_from_string(text: str) -> list:
    """Run lengths from COCO's compressed RLE string (``rleFrString``).

    Each run is a little-endian base-32 number in characters offset by 48, with 0x20 meaning
    "more follows" and 0x10 in the last character the sign; from the fourth run on, the number
    is stored as the difference from the run two places back.
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


def polygon_to_counts(xy: np.ndarray, height: int, width: int) -> list:
    """RLE counts of one polygon given as flat x, y pairs (``rleFrPoly``).

    pycocotools walks the boundary on a 5x finer grid, keeps the points where it crosses a pixel
    column centre, and turns those into run boundaries; ``astype(int)`` truncates toward zero
    like the C casts it replaces.
    """
    if xy.ndim != 1 or xy.size < 2 or xy.size % 2:
        raise ValueError(f"a polygon is a flat list of x, y pairs, got {xy.size} numbers")
    scale = 5.0
    x = (scale * xy[0::2] + 0.5).astype(np.int64)
    y = (scale * xy[1::2] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    u, v = _boundary_points(x, y)
    moved = u[1:] != u[:-1]
    column = np.where(u[1:] < u[:-1], u[1:], u[1:] - 1)
    column = (column + 0.5) / scale - 0.5
    keep = moved & (np.floor(column) == column) & (column >= 0) & (column <= width - 1)
    row = np.minimum(v[1:], v[:-1])
    row = np.ceil(np.clip((row + 0.5) / scale - 0.5, 0, height))
    starts = column[keep].astype(np.int64) * height + row[keep].astype(np.int64)
    edges = np.sort(np.append(starts, height * width))
    runs = np.diff(edges, prepend=0).tolist()
    # A zero-length run merges its neighbours, as pycocotools does.
    counts = [runs[0]]
    j = 1
    while j < len(runs):
        if runs[j] > 0:
            counts.append(runs[j])
        elif j + 1 < len(runs):
            j += 1
            counts[-1] += runs[j]
        j += 1
    return counts


def _boundary_points(x: np.ndarray, y: np.ndarray) -> tuple:
    """Every grid point along the closed polygon's edges, each edge stepped along its longer axis."""
    us, vs = [], []
    for xs, xe, ys, ye in zip(x[:-1], x[1:], y[:-1], y[1:]):
        dx, dy = abs(xe - xs), abs(ye - ys)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            t = np.arange(dx + 1)[::-1] if flip else np.arange(dx + 1)
            slope = (ye - ys) / dx if dx else 0.0
            us.append(t + xs)
            vs.append((ys + slope * t + 0.5).astype(np.int64))
        else:
            t = np.arange(dy + 1)[::-1] if flip else np.arange(dy + 1)
            slope = (xe - xs) / dy
            vs.append(t + ys)
            us.append((xs + slope * t + 0.5).astype(np.int64))
    return np.concatenate(us), np.concatenate(vs)
