"""Matching features on a grid of cells, and the maps between those cells and image pixels.

Two frames exist. SAM's (:class:`PaddedFrame`): the image resized on its longest side and
padded to a square, the grid being SAM's embedding grid; cells over the padding are not
part of the image. Matcher's (:class:`StretchedFrame`): the image resized to a square
without keeping its aspect (518x518 for DINOv2 ViT-L/14, 37x37 tokens), every cell inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...models.encoding import Encoded, to_grid, to_image_frame


class PaddedFrame:
    """SAM's frame of one encoded image; the grid is its embedding grid."""

    def __init__(self, encoded: Encoded):
        self.encoded = encoded
        self.grid = encoded.grid

    def cells(self, mask: np.ndarray) -> torch.Tensor:
        return to_grid(mask, self.encoded).flatten()

    def to_image(self, grid_map: torch.Tensor) -> torch.Tensor:
        return to_image_frame(grid_map, self.encoded)

    def centres(self) -> tuple:
        """((h*w, 2) cell centres as original-image (x, y), (h*w,) whether the centre lies in the image)."""
        e = self.encoded
        rows, cols = np.meshgrid(np.arange(self.grid[0]), np.arange(self.grid[1]), indexing="ij")
        x_in = (cols.ravel() + 0.5) * e.side / self.grid[1]
        y_in = (rows.ravel() + 0.5) * e.side / self.grid[0]
        inside = (x_in < e.input_size[1]) & (y_in < e.input_size[0])
        xy = np.stack([x_in * e.original_size[1] / e.input_size[1], y_in * e.original_size[0] / e.input_size[0]], 1)
        return xy, inside

    def from_sam_grid(self, sam_map: torch.Tensor) -> torch.Tensor:
        """A map (1, C, h', w') on SAM's embedding grid onto this grid (C, h, w): the same frame, so a resize."""
        return F.interpolate(sam_map, self.grid, mode="bilinear", align_corners=False)[0]


class StretchedFrame:
    """Matcher's frame: the image stretched to a square covered by an (h, w) token grid."""

    def __init__(self, encoded: Encoded, grid: tuple):
        self.encoded = encoded
        self.original_size = tuple(encoded.original_size)
        self.grid = tuple(grid)

    def cells(self, mask: np.ndarray) -> torch.Tensor:
        m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
        return F.interpolate(m, self.grid, mode="area").flatten()

    def to_image(self, grid_map: torch.Tensor) -> torch.Tensor:
        full = F.interpolate(grid_map[None, None].float(), self.original_size, mode="bilinear", align_corners=False)
        return full[0, 0]

    def centres(self) -> tuple:
        rows, cols = np.meshgrid(np.arange(self.grid[0]), np.arange(self.grid[1]), indexing="ij")
        height, width = self.original_size
        xy = np.stack([(cols.ravel() + 0.5) * width / self.grid[1], (rows.ravel() + 0.5) * height / self.grid[0]], 1)
        return xy, np.ones(len(xy), dtype=bool)

    def from_sam_grid(self, sam_map: torch.Tensor) -> torch.Tensor:
        """A map (1, C, h', w') on SAM's padded embedding grid onto this grid (C, h, w): the padding is
        cropped away first, so each token meets the SAM cells over the same pixels."""
        e = self.encoded
        rows = round(e.input_size[0] / e.side * e.grid[0])
        cols = round(e.input_size[1] / e.side * e.grid[1])
        return F.interpolate(sam_map[..., :rows, :cols], self.grid, mode="bilinear", align_corners=False)[0]


@dataclass(frozen=True)
class TokenGrid:
    """One image's matching features: ``tokens`` (C, h, w) as the feature extractor gives them
    (not normalised) and the frame they live in."""

    tokens: torch.Tensor
    frame: PaddedFrame | StretchedFrame

    def __post_init__(self):
        if tuple(self.tokens.shape[-2:]) != tuple(self.frame.grid):
            raise ValueError(f"tokens on a {tuple(self.tokens.shape[-2:])} grid, the frame's is {self.frame.grid}")


def centre_cell(grid: tuple) -> np.ndarray:
    """(h*w,) bool: only the centre cell of an (h, w) grid (the releases' stand-in for an empty support mask)."""
    cells = np.zeros(grid, dtype=bool)
    cells[grid[0] // 2, grid[1] // 2] = True
    return cells.ravel()


def normalised_cells(tokens: torch.Tensor) -> torch.Tensor:
    """(h*w, C) L2-normalised features, one row per cell (row-major)."""
    return F.normalize(tokens.flatten(1).T.float(), dim=1)
