"""Image encoding with SAM's encoder: cached by content, batched, counted.

Encoder passes are the cost of the whole method, so every image embedding goes through one
:class:`Encoder`: an image seen before (same bytes) is not encoded again, several images
are encoded as one batch, and ``passes`` counts the images that really went through the
encoder (the benchmark reports it).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from ..data.episode import check_image


@dataclass(frozen=True)
class Encoded:
    """An image and its SAM embedding (1, C, h, w), with the sizes needed to map between frames."""

    image: np.ndarray
    embedding: torch.Tensor
    input_size: tuple
    original_size: tuple
    side: int  # SAM's square, padded input side (1024 for official SAM, 128 for SAM-Tiny)

    @property
    def grid(self) -> tuple:
        return tuple(self.embedding.shape[-2:])


def _content_key(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()


# Memory the encoder may use for one batch when nobody says: a fixed amount on a CPU (so a run
# does not change with what else the machine holds), half of what is free on a GPU.
CPU_BUDGET_MB = 3072
MAX_AUTO_BATCH = 32


def encoder_bytes_per_image(image_encoder) -> int:
    """Peak bytes one image adds inside SAM's ViT encoder, dominated by attention.

    A block's attention holds heads x tokens^2 float32 scores three times at its peak (the
    scores, the scores plus the relative-position terms, their softmax); a global block
    attends over the whole grid (64 x 64 tokens at 1024 px: 0.8 GB per copy for vit_b's
    12 heads), a windowed block over each window.
    """
    grid = image_encoder.img_size // image_encoder.patch_embed.proj.kernel_size[0]
    peak = 0
    for block in image_encoder.blocks:
        window = block.window_size or grid
        windows = math.ceil(grid / window) ** 2
        peak = max(peak, 3 * 4 * block.attn.num_heads * windows * window**4)
    return peak


def auto_batch(sam: Sam, budget_mb: float | None = None) -> int:
    """The largest encoder batch whose attention fits in ``budget_mb`` (default: see CPU_BUDGET_MB), at least 1."""
    if budget_mb is None:
        if sam.device.type == "cuda":
            budget_mb = torch.cuda.mem_get_info(sam.device)[0] / 2**20 / 2
        else:
            budget_mb = CPU_BUDGET_MB
    per_image_mb = encoder_bytes_per_image(sam.image_encoder) / 2**20
    return int(max(1, min(MAX_AUTO_BATCH, budget_mb // per_image_mb)))


class Encoder:
    """SAM's image encoder behind a bounded content-keyed cache, with batched encoding.

    ``batch_size``: images per encoder call; None picks it from a memory budget (:func:`auto_batch`).
    The batch changes the cost, never the embeddings.
    """

    def __init__(self, sam: Sam, cache_size: int = 64, batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"encoder batch size must be at least 1, got {batch_size}")
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.cache_size = cache_size
        self.batch_size = batch_size or auto_batch(sam)
        self.passes = 0
        self._cache: OrderedDict[str, Encoded] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def encode(self, image: np.ndarray) -> Encoded:
        return self.encode_many([image])[0]

    def encode_many(self, images) -> list:
        """Encodings of ``images`` in order; only images not cached (and not repeated) are encoded."""
        keys = [_content_key(check_image(im)) for im in images]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        pending = list({k: im for k, im in zip(keys, images) if k not in found}.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for (key, _), encoded in zip(chunk, self._encode_batch([im for _, im in chunk])):
                found[key] = encoded
        for key in keys:
            self._remember(key, found[key])
        return [found[k] for k in keys]

    def _remember(self, key: str, encoded: Encoded) -> None:
        self._cache[key] = encoded
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @torch.no_grad()
    def _encode_batch(self, images: list) -> list:
        # Images of one batch may differ in size: each is resized and padded to the square input.
        inputs, sizes = [], []
        for image in images:
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
            inputs.append(self.sam.preprocess(tensor[None].float()))
            sizes.append(tuple(resized.shape[:2]))
        embeddings = self.sam.image_encoder(torch.cat(inputs))
        self.passes += len(images)
        return [
            Encoded(image, emb[None], size, tuple(image.shape[:2]), self.sam.image_encoder.img_size)
            for image, emb, size in zip(images, embeddings, sizes)
        ]


def to_image_frame(grid_map: torch.Tensor, encoded: Encoded) -> torch.Tensor:
    """A map on the embedding grid (h, w) or low-res logits (..., h', w') resized to the original image."""
    lead = grid_map.shape[:-2]
    flat = grid_map.reshape(-1, 1, *grid_map.shape[-2:]).float()
    padded = F.interpolate(flat, (encoded.side, encoded.side), mode="bilinear", align_corners=False)
    cropped = padded[..., : encoded.input_size[0], : encoded.input_size[1]]
    full = F.interpolate(cropped, encoded.original_size, mode="bilinear", align_corners=False)
    return full.reshape(*lead, *encoded.original_size)


def to_grid(mask: np.ndarray, encoded: Encoded) -> torch.Tensor:
    """A mask of the original image on the embedding grid (h, w): the fraction of each cell covered."""
    side = encoded.side
    m = torch.as_tensor(mask, dtype=torch.float32, device=encoded.embedding.device)[None, None]
    m = F.interpolate(m, encoded.input_size, mode="bilinear", align_corners=False)
    m = F.pad(m, (0, side - encoded.input_size[1], 0, side - encoded.input_size[0]))
    return F.interpolate(m, encoded.grid, mode="area")[0, 0]
