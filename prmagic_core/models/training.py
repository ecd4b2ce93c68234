"""SAM-style promptable training of SAM-Tiny on ShapeWorld objects and parts.

Each step draws a batch of scenes and several targets per scene (objects or parts), prompts
each with a point, a jittered box or a few positive/negative points sampled from its ground
truth, and trains the decoder's outputs with focal + dice (the lowest-loss of the three
multimask outputs for a single point, the single output otherwise) plus an MSE on the IoU
head. Half of the steps add an iterative correction click (at the interior of the largest
error) with the previous low-res logits as mask input, so that cascaded decoder calls (as in
PerSAM's post-refinement) work. Warm-up + cosine schedule, AdamW, gradient clipping.

Every draw is seeded by (seed, step), so a resumed run continues the same sequence.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from ..data import shapeworld
from ..errors import UserError
from ..results import check_writable
from .loading import CheckpointError, read_checkpoint
from .tiny import TINY_CONFIG, build_sam_tiny

RESUME_KEYS = ("model", "optimizer", "scheduler", "step", "elapsed", "losses", "config")


@dataclass
class TrainConfig:
    steps: int = 4000
    scenes: int = 4000
    images_per_step: int = 8
    targets_per_image: int = 4
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    correction_prob: float = 0.5
    seed: int = 0
    checkpoint_every: int = 100


def _targets_of(scene, min_area: int = 12) -> list:
    return [t.mask for t in scene.objects + scene.parts if t.mask.sum() >= min_area]


class ScenePool:
    """Pre-drawn training scenes and their target masks (objects and parts)."""

    def __init__(self, n: int, seed: int, size: int):
        scenes = shapeworld.training_scenes(n, seed=seed, size=size)
        self.images = np.stack([s.image for s in scenes])
        self.targets = [_targets_of(s) for s in scenes]

    def batch(self, rng: np.random.Generator, images: int, per_image: int):
        picks = rng.choice(len(self.images), size=images, replace=False)
        flips = rng.random(images) < 0.5
        batch_images, batch_masks = [], []
        for index, flip in zip(picks, flips):
            chosen = rng.choice(len(self.targets[index]), size=per_image, replace=True)
            image, masks = self.images[index], np.stack([self.targets[index][c] for c in chosen])
            if flip:
                image, masks = image[:, ::-1], masks[:, :, ::-1]
            batch_images.append(np.ascontiguousarray(image))
            batch_masks.append(np.ascontiguousarray(masks))
        return np.stack(batch_images), batch_masks


def _sample_point(rng: np.random.Generator, mask: np.ndarray, interior_bias: bool) -> np.ndarray:
    if interior_bias:
        weight = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].ravel() ** 2
    else:
        weight = mask.ravel().astype(np.float64)
    flat = rng.choice(mask.size, p=weight / weight.sum())
    y, x = divmod(flat, mask.shape[1])
    return np.array([x + 0.5, y + 0.5])


def _jittered_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    span = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    box += rng.normal(0, 0.08, 4) * np.minimum(span, 40)
    return np.clip(box, 0, mask.shape[1])


def _prompts(rng: np.random.Generator, masks: np.ndarray, kind: str):
    """Points (N, k, 2), labels (N, k) or boxes (N, 4) for the masks of one image."""
    if kind == "box":
        return None, None, np.stack([_jittered_box(rng, m) for m in masks])
    if kind == "point":
        pts = np.stack([[_sample_point(rng, m, rng.random() < 0.5)] for m in masks])
        return pts, np.ones((len(masks), 1)), None
    k = int(rng.integers(2, 5))
    coords, labels = np.zeros((len(masks), k, 2)), np.full((len(masks), k), -1.0)
    for i, m in enumerate(masks):
        n_neg = int(rng.integers(0, k)) if (~m).any() else 0
        for j in range(k):
            negative = j < n_neg
            coords[i, j] = _sample_point(rng, ~m if negative else m, interior_bias=False)
            labels[i, j] = 0 if negative else 1
    return coords, labels, None


def _correction_clicks(rng: np.random.Generator, pred: np.ndarray, truth: np.ndarray):
    """A click at the interior of each target's largest error region: positive if missed, negative if spurious."""
    coords, labels = np.zeros((len(truth), 1, 2)), np.zeros((len(truth), 1))
    for i, (p, t) in enumerate(zip(pred, truth)):
        missed, spurious = t & ~p, p & ~t
        error = missed | spurious
        if not error.any():
            coords[i, 0], labels[i, 0] = _sample_point(rng, t, interior_bias=True), 1
            continue
        distance = ndimage.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(distance), distance.shape)
        coords[i, 0], labels[i, 0] = (x + 0.5, y + 0.5), float(missed[y, x])
    return coords, labels


def focal_loss(logits, truth, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss, mean over pixels, per mask: (N, M, H, W) -> (N, M)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    p_t = prob * truth + (1 - prob) * (1 - truth)
    weight = alpha * truth + (1 - alpha) * (1 - truth)
    return (weight * ce * (1 - p_t) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits, truth, eps=1.0):
    """1 - soft Dice per mask: (N, M, H, W) -> (N, M)."""
    prob = logits.sigmoid()
    inter = (prob * truth).sum(dim=(-2, -1))
    return 1 - (2 * inter + eps) / (prob.sum(dim=(-2, -1)) + truth.sum(dim=(-2, -1)) + eps)


def _decode(model, embedding, coords, labels, boxes, mask_input):
    points = None
    if coords is not None:
        points = (torch.as_tensor(coords, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.float32))
    box_t = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
    sparse, dense = model.prompt_encoder(points=points, boxes=box_t, masks=mask_input)
    # predict_masks returns all four outputs: the single-mask token and the three multimask ones.
    return model.mask_decoder.predict_masks(
        image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
    )


def _round_loss(logits, iou_pred, truth, multimask: bool):
    """Mask loss of the trained output(s) plus IoU-head MSE; returns (loss, chosen logits)."""
    outputs = slice(1, 4) if multimask else slice(0, 1)
    lg, ip = logits[:, outputs], iou_pred[:, outputs]
    t = truth[:, None].expand_as(lg)
    mask_loss = 20 * focal_loss(lg, t) + dice_loss(lg, t)
    best = mask_loss.argmin(dim=1)
    rows = torch.arange(len(lg))
    with torch.no_grad():
        hard = lg > 0
        inter = (hard & (t > 0.5)).sum(dim=(-2, -1)).float()
        union = (hard | (t > 0.5)).sum(dim=(-2, -1)).float().clamp(min=1)
    iou_loss = F.mse_loss(ip, inter / union)
    return mask_loss[rows, best].mean() + iou_loss, lg[rows, best]


def training_loss(model, images: np.ndarray, masks: list, rng: np.random.Generator, correction_prob: float):
    """Loss of one batch: images (B, H, W, 3) uint8, masks a list of (K, H, W) bool, one per image."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    x = (x - model.pixel_mean) / model.pixel_std
    embeddings = model.image_encoder(x)
    total, parts = 0.0, 0
    for b, target_masks in enumerate(masks):
        truth = torch.as_tensor(target_masks, dtype=torch.float32)
        kind = ("point", "box", "points")[rng.choice(3, p=[0.5, 0.25, 0.25])]
        coords, labels, boxes = _prompts(rng, target_masks, kind)
        logits, iou_pred = _decode(model, embeddings[b : b + 1], coords, labels, boxes, None)
        loss, chosen = _round_loss(logits, iou_pred, truth, multimask=kind == "point")
        total, parts = total + loss, parts + 1
        if rng.random() < correction_prob:
            clicks, click_labels = _correction_clicks(rng, (chosen > 0).detach().numpy(), target_masks)
            if coords is not None:
                clicks = np.concatenate([coords, clicks], axis=1)
                click_labels = np.concatenate([labels, click_labels], axis=1)
            logits, iou_pred = _decode(model, embeddings[b : b + 1], clicks, click_labels, boxes, chosen.detach()[:, None])
            loss, _ = _round_loss(logits, iou_pred, truth, multimask=False)
            total, parts = total + loss, parts + 1
    return total / parts


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return float(0.5 * (1 + np.cos(np.pi * min(1.0, progress))))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, out_dir: Path, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Train SAM-Tiny; writes ``checkpoint.pt`` periodically and ``sam_tiny.pt`` at the end.

    A folder holding an earlier run's ``checkpoint.pt`` is refused unless ``resume`` (continue it)
    or ``overwrite`` (start over, discarding it), so that no run's progress is lost by accident.
    """
    if cfg.scenes < cfg.images_per_step:
        raise UserError(f"scenes ({cfg.scenes}) must be at least images_per_step ({cfg.images_per_step})")
    if resume and overwrite:
        raise UserError("--resume continues the run in the folder, --overwrite discards it: give one of them")
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists() and not (resume or overwrite):
        raise UserError(f"{checkpoint} holds an earlier run: continue it with --resume, "
                        "choose another --out-dir, or start over with --overwrite")
    check_writable(out_dir)
    torch.manual_seed(cfg.seed)
    model = build_sam_tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    start, elapsed, losses = 0, 0.0, []
    if resume and checkpoint.exists():
        state = read_checkpoint(checkpoint)
        if not isinstance(state, dict) or not set(RESUME_KEYS) <= state.keys():
            raise CheckpointError(f"{checkpoint}: not a train-tiny checkpoint (needs {', '.join(RESUME_KEYS)})")
        if state["config"] != asdict(cfg):
            raise UserError(f"{checkpoint} was written with other settings: {state['config']} (now {asdict(cfg)})")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            first_line = (str(error).splitlines() or [""])[0]
            raise CheckpointError(f"{checkpoint}: does not fit SAM-Tiny's training state ({first_line})") from None
        start, elapsed, losses = state["step"], state["elapsed"], list(state["losses"])
    elif overwrite:
        checkpoint.unlink(missing_ok=True)
    pool = ScenePool(cfg.scenes, cfg.seed, TINY_CONFIG["img_size"])
    model.train()
    began = time.time() - elapsed
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train-tiny")
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        images, masks = pool.batch(rng, cfg.images_per_step, cfg.targets_per_image)
        loss = training_loss(model, images, masks, rng, cfg.correction_prob)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_atomic(
                dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     step=step + 1, elapsed=time.time() - began, losses=losses, config=asdict(cfg)),
                checkpoint,
            )
    _save_atomic(model.state_dict(), out_dir / "sam_tiny.pt")
    summary = dict(config=asdict(cfg), steps=cfg.steps, wall_seconds=round(time.time() - began, 1),
                   final_loss=float(np.mean(losses[-50:])) if losses else None)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_card(path: Path, summary: dict, evaluation: dict, command: str) -> dict:
    """The JSON card shipped beside the weights: how they were made and how good they are."""
    card = dict(command=command, seed=summary["config"]["seed"], steps=summary["steps"],
                wall_seconds=summary["wall_seconds"], final_loss=summary["final_loss"],
                config=summary["config"], architecture=TINY_CONFIG, evaluation=evaluation)
    Path(path).write_text(json.dumps(card, indent=2) + "\n")
    return card
