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
    return decode_many(sam, embedding, encoded, [prompts], box, mask_input, multimask)[0]


def decode_many(
    sam: Sam,
    embedding: torch.Tensor,
    encoded: Encoded,
    point_sets: list,
    box: np.ndarray | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = True,
) -> list:
    """:func:`decode` of each of ``point_sets`` (:class:`Prompts` of one length, or all None), sharing
    ``box`` and ``mask_input``, in one decoder call. SAM pads a prompt with a not-a-point token, so
    only sets of one length batch to the decodes one at a time would give."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    device = embedding.device
    count = len(point_sets)
    points = None
    if point_sets[0] is not None:
        if len({len(p.coords) for p in point_sets}) != 1:
            raise ValueError("decode_many batches point sets of one length only")
        coords = np.stack([transform.apply_coords(p.coords, encoded.original_size) for p in point_sets])
        points = (
            torch.as_tensor(coords, dtype=torch.float32, device=device),
            torch.as_tensor(np.stack([p.labels for p in point_sets]), dtype=torch.float32, device=device),
        )
    boxes = None
    if box is not None:
        boxes = torch.as_tensor(transform.apply_boxes(np.asarray(box, dtype=np.float64)[None], encoded.original_size),
                                dtype=torch.float32, device=device).expand(count, 4)
    masks = None if mask_input is None else mask_input.reshape(1, 1, *mask_input.shape[-2:]).expand(count, 1, -1, -1)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    logits, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense.expand(count, -1, -1, -1),
        multimask_output=multimask,
    )
    return [Decoded(l, i) for l, i in zip(logits, iou)]


def decode_each_point(sam: Sam, embedding: torch.Tensor, encoded: Encoded, coords: np.ndarray,
                      batch: int = 64) -> Decoded:
    """One single-output decode per positive point (N, 2) on ``embedding``, ``batch`` points per
    decoder call: logits (N, h', w') and IoU predictions (N,), in the order of ``coords``."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    decoded = []
    for start in range(0, len(coords), batch):
        points = [Prompts(xy[None], np.ones(1)) for xy in coords[start:start + batch]]
        decoded += decode_many(sam, embedding, encoded, points, multimask=False)
    return Decoded(torch.stack([d.logits[0] for d in decoded]), torch.stack([d.iou[0] for d in decoded]))


def to_mask(low_res_logits: torch.Tensor, encoded: Encoded, threshold: float = 0.0) -> np.ndarray:
    """Binary mask in the original image frame from low-res logits (h', w')."""
    return (to_image_frame(low_res_logits.detach(), encoded) > threshold).cpu().numpy()
