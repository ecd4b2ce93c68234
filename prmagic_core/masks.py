"""Small helpers on binary masks shared by training, prompting and scoring."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel farthest from the mask's border (the distance-transform maximum)."""
    if not mask.any():
        raise ValueError("interior_point of an empty mask")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(distance), distance.shape)
    return np.array([x, y], dtype=np.float64)


def box_of(mask: np.ndarray) -> np.ndarray:
    """XYXY box around the mask's foreground, in pixel coordinates (x1, y1, x2, y2)."""
    if not mask.any():
        raise ValueError("box_of an empty mask")
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)
