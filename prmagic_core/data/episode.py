"""The unit of few-shot segmentation: k masked support images and one query image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("object", "part")


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Return ``image`` if it is an HxWx3 uint8 array, else raise a ValueError naming the problem."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be HxWx3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got dtype {image.dtype}")
    return image


def check_mask(mask: np.ndarray, image: np.ndarray, what: str = "mask", allow_empty: bool = False) -> np.ndarray:
    """Return ``mask`` as a bool HxW array matching ``image``; raise on a size mismatch or an empty mask."""
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{what} has shape {mask.shape} but its image is {image.shape[:2]}")
    mask = mask.astype(bool)
    if not allow_empty and not mask.any():
        raise ValueError(f"{what} is empty (no foreground pixel)")
    return mask


@dataclass(frozen=True)
class Episode:
    """k support (image, mask) pairs and a query image with its optional ground truth.

    Images are HxWx3 uint8; masks are HxW bool. ``kind`` is ``"object"`` or ``"part"``.
    The query mask is used only for scoring and for the oracle selector.
    """

    support_images: tuple
    support_masks: tuple
    query_image: np.ndarray
    query_mask: np.ndarray | None
    class_name: str
    kind: str = "object"
    name: str = ""

    def __post_init__(self):
        if len(self.support_images) == 0:
            raise ValueError("an episode needs at least one support image")
        if len(self.support_images) != len(self.support_masks):
            raise ValueError(
                f"{len(self.support_images)} support images but {len(self.support_masks)} support masks"
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        images = tuple(check_image(im, f"support image {i}") for i, im in enumerate(self.support_images))
        masks = tuple(
            check_mask(m, im, f"support mask {i}") for i, (m, im) in enumerate(zip(self.support_masks, images))
        )
        object.__setattr__(self, "support_images", images)
        object.__setattr__(self, "support_masks", masks)
        check_image(self.query_image, "query image")
        if self.query_mask is not None:
            object.__setattr__(
                self, "query_mask", check_mask(self.query_mask, self.query_image, "query mask", allow_empty=True)
            )

    @property
    def shots(self) -> int:
        return len(self.support_images)
