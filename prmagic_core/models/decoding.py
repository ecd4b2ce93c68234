"""One call of SAM's prompt encoder + mask decoder on a given image embedding.

Unlike ``SamPredictor.predict`` it takes the embedding as an argument, so the same call
serves the stock decode, the decode on a refined embedding and the differentiable decode
whose logits drive the gradient flow (gradients flow to ``embedding`` when it requires them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .encoding import Encoded, to_image_frame


@dataclass(frozen=True)
class Prompts:
    """Point prompts in the original image's pixels: ``coords`` (N, 2) as (x, y), ``labels`` (N,) 1/0."""

    coords: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.float64).reshape(-1)
        if len(coords) != len(labels):
            raise ValueError(f"{len(coords)} prompt points but {len(labels)} labels")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "labels", labels)

    def fingerprint(self) -> bytes:
        """Everything a decode of these prompts depends on (subclasses carrying more extend it)."""
        return self.coords.tobytes() + self.labels.tobytes()


@dataclass
class Decoded:
    """Low-res logits (k, h', w') and IoU predictions (k,) of one decoder call."""

    logits: torch.Tensor
    iou: torch.Tensor

    def best(self) -> torch.Tensor:
        """The low-res logits (h', w') of the output the IoU head ranks first."""
        return self.logits[int(torch.argmax(self.iou))]


def decode(
    sam: Sam,
    embedding: torch.Tensor,
    encoded: Encoded,
    prompts: Prompts | None = None,
    box: np.ndarray | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = True,
) -> Decoded:
    """Decode on ``embedding`` (1, C, h, w) with prompts given in ``encoded``'s original frame."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    device = embedding.device
    points = None
    if prompts is not None:
        points = _point_tensors(sam, encoded, prompts.coords[None], prompts.labels[None], device)
    boxes = None
    if box is not None:
        boxes = torch.as_tensor(transform.apply_boxes(np.asarray(box, dtype=np.float64)[None], encoded.original_size),
                                dtype=torch.float32, device=device)
    masks = None if mask_input is None else mask_input.reshape(1, 1, *mask_input.shape[-2:])
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    logits, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return Decoded(logits[0], iou[0])


def _point_tensors(sam: Sam, encoded: Encoded, coords: np.ndarray, labels: np.ndarray, device) -> tuple:
    """(coords (B, N, 2) in SAM's input frame, labels (B, N)) from original-frame (x, y) points."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    moved = transform.apply_coords(np.asarray(coords, dtype=np.float64), encoded.original_size)
    return (torch.as_tensor(moved, dtype=torch.float32, device=device),
            torch.as_tensor(labels, dtype=torch.float32, device=device))


def decode_each_point(sam: Sam, embedding: torch.Tensor, encoded: Encoded, coords: np.ndarray,
                      batch: int = 64) -> Decoded:
    """One single-output decode per positive point (N, 2) on ``embedding``, ``batch`` points per
    decoder call: logits (N, h', w') and IoU predictions (N,), in the order of ``coords``."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 1, 2)
    logits, iou = [], []
    for start in range(0, len(coords), batch):
        chunk = coords[start : start + batch]
        points = _point_tensors(sam, encoded, chunk, np.ones(chunk.shape[:2]), embedding.device)
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        chunk_logits, chunk_iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits.append(chunk_logits[:, 0])
        iou.append(chunk_iou[:, 0])
    return Decoded(torch.cat(logits), torch.cat(iou))


def to_mask(low_res_logits: torch.Tensor, encoded: Encoded, threshold: float = 0.0) -> np.ndarray:
    """Binary mask in the original image frame from low-res logits (h', w')."""
    return (to_image_frame(low_res_logits.detach(), encoded) > threshold).cpu().numpy()
