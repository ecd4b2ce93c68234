"""PerSAM and PerSAM-F (Zhang et al., ICLR 2024) as baselines that PR-MaGIC wraps.

Both share PerSAM's location prior: a target feature pooled from the masked support
features, and S = its cosine similarity with every query feature (SPEC section 4).

- :class:`PerSAM` (training-free): a positive point at argmax S and a negative one at
  argmin S; the first decoder call is guided by S (target-guided attention) and by the
  target feature (target-semantic prompting), then two stock calls refine it.
- :class:`PerSAMF`: stock decoder calls only; SAM's three multimask outputs are mixed by
  two scalars fitted on the support image, then the same two refining calls. Its prompts
  are PR-MaGIC's sampler: the top-1 point plus random points from two top quantile bands.

Facts taken from the releases (Personalize-SAM and PR-MaGIC's PerSAM-F script):

- PerSAM's first call is single-mask and the only guided one; its attention guidance
  modulates the token-to-image attention of the two-way blocks, not the final attention.
- The refining calls get the previous logits as mask input detached, so the gradient of
  the last call's logits w.r.t. the embedding comes from that call's own use of it.
- PerSAM-F's fine-tuning uses one support image: with k shots, the first.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from torchvision.ops import sigmoid_focal_loss

from ..masks import box_of
from ..models import decoding
from ..models.decoding import Prompts, to_mask
from ..models.encoding import Encoded, Encoder, to_grid, to_image_frame
from .base import Baseline, Prompter

PROTOTYPES = ("mean", "maxmean")
# PR-MaGIC's PerSAM-F sampler: band 1 is S >= q(0.99999), band 2 is q(0.9999) <= S < q(0.99999).
BAND_QUANTILES = (0.99999, 0.9999)


# ---------------------------------------------------------------- location prior (shared)

def check_prototype(prototype: str) -> str:
    if prototype not in PROTOTYPES:
        raise ValueError(f"prototype must be one of {PROTOTYPES}, got {prototype!r}")
    return prototype


@dataclass(frozen=True)
class Target:
    """The support object's feature: as pooled (for target-semantic prompting) and L2-normalised (for S)."""

    embedding: torch.Tensor  # (C,)
    direction: torch.Tensor  # (C,)


def support_target(supports: list, support_masks, prototype: str) -> Target:
    """Target feature from the masked support features of all shots pooled together.

    ``mean`` is PerSAM's prototype, ``maxmean`` ((max + mean) / 2 per channel) PerSAM-F's and PR-MaGIC's.
    """
    features = []
    for index, (support, mask) in enumerate(zip(supports, support_masks, strict=True)):
        inside = to_grid(mask, support) > 0
        if not inside.any():
            raise ValueError(f"support mask {index} is empty (no foreground on the {support.grid} embedding grid)")
        features.append(support.embedding[0].permute(1, 2, 0)[inside])
    pooled = torch.cat(features)
    mean = pooled.mean(0)
    embedding = mean if check_prototype(prototype) == "mean" else (pooled.max(0).values + mean) / 2
    return Target(embedding, F.normalize(embedding, dim=0))


def similarity_map(target: Target, embedding: torch.Tensor, encoded: Encoded) -> torch.Tensor:
    """S (H, W) on the original image: cosine of the target with each L2-normalised feature of ``embedding``."""
    features = F.normalize(embedding[0], dim=0)
    return to_image_frame(torch.einsum("c,chw->hw", target.direction, features), encoded)


def pixels_xy(flat_indices: torch.Tensor, width: int, row_col: bool = False) -> np.ndarray:
    """(N, 2) prompt coordinates of flat pixel indices: (x, y), or (row, col) to reproduce a release quirk."""
    rows, cols = np.divmod(flat_indices.reshape(-1).cpu().numpy(), width)
    return np.stack([rows, cols] if row_col else [cols, rows], axis=1).astype(np.float64)


def top1_xy(similarity: torch.Tensor) -> np.ndarray:
    """(1, 2) (x, y) of the argmax of S."""
    return pixels_xy(torch.argmax(similarity), similarity.shape[-1])


# ---------------------------------------------------------------- cascaded post-refinement (shared)

def box_or_none(logits: torch.Tensor, encoded: Encoded) -> np.ndarray | None:
    """Box of the mask of ``logits``; None for an empty mask, where the releases would crash."""
    mask = to_mask(logits, encoded)
    return box_of(mask) if mask.any() else None


def post_refine(sam: Sam, embedding: torch.Tensor, encoded: Encoded, prompts: Prompts,
                logits: torch.Tensor, box_first: bool) -> tuple[np.ndarray, torch.Tensor, float]:
    """The last two cascaded calls: each takes the points, the previous logits as mask input
    (and the previous mask's box; the first only when ``box_first``), multimask, best by IoU head.

    Returns the last call's (mask in the original frame, low-res logits, IoU prediction).
    """
    for with_box in (box_first, True):
        box = box_or_none(logits, encoded) if with_box else None
        decoded = decoding.decode(sam, embedding, encoded, prompts, box=box, mask_input=logits.detach(), multimask=True)
        logits = decoded.best()
    return to_mask(logits, encoded), logits, float(decoded.iou.max().detach())


class LocationPrior(Prompter):
    """What PerSAM and PerSAM-F prompters share: the SAM, the target feature, the query."""

    def __init__(self, sam: Sam, target: Target, query: Encoded):
        self.sam = sam
        self.target = target
        self.query = query

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        return similarity_map(self.target, embedding, self.query)


def encode_episode(encoder: Encoder, support_images, query_image: np.ndarray) -> tuple[list, Encoded]:
    """(support encodings, query encoding), encoded as one batch."""
    *supports, query = encoder.encode_many([*support_images, query_image])
    return supports, query


# ---------------------------------------------------------------- PerSAM

def attention_bias(similarity: torch.Tensor, encoded: Encoded) -> torch.Tensor:
    """PerSAM's attention guidance (h*w,): S standardised, on the embedding grid, through a sigmoid.

    The release resizes the image-frame map straight to 64x64; mapping it through SAM's
    resize-and-pad frame instead keeps it aligned with the grid on non-square images.
    It is a prompt, not a path for the gradient, hence detached.
    """
    s = similarity.detach()
    standardised = (s - s.mean()) / s.std().clamp_min(1e-12)  # a constant map would divide by zero
    return torch.sigmoid(to_grid(standardised, encoded)).flatten()


def guided_attention(attention: Attention, bias: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> torch.Tensor:
    """``attention``'s forward with PerSAM's guidance: the bias is added to the softmaxed weights,
    which are softmaxed again (the change sits between softmax and product, so the forward is
    re-expressed with the module's own projections)."""
    heads = attention.num_heads
    q = attention._separate_heads(attention.q_proj(q), heads)
    k = attention._separate_heads(attention.k_proj(k), heads)
    v = attention._separate_heads(attention.v_proj(v), heads)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    weights = torch.softmax(weights + bias, dim=-1)
    return attention.out_proj(attention._recombine_heads(weights @ v))


def _add_to_tokens(target: torch.Tensor, module, args):
    image_embedding, image_pe, point_embedding = args  # MaskDecoder calls the transformer positionally
    return image_embedding, image_pe, point_embedding + target


def _add_to_kwarg(name: str, target: torch.Tensor, module, args, kwargs):
    kwargs[name] = kwargs[name] + target
    return args, kwargs


@contextmanager
def target_guidance(transformer: TwoWayTransformer, bias: torch.Tensor, target_embedding: torch.Tensor):
    """PerSAM's target-guided attention and target-semantic prompting, active inside the block.

    Guidance: every two-way block's token-to-image attention runs :func:`guided_attention`.
    Prompting reproduces PerSAM's in-place ``queries += target`` before every block: the first
    addition aliases the token embedding, so the tokens' positional term carries the target
    in every block and in the final attention (transformer pre-hook); later blocks' queries
    get it once more (block pre-hooks), and so does the final attention's query (its pre-hook).
    Everything is restored on exit, also on error.
    """
    target = target_embedding.reshape(1, 1, -1)
    undo = []
    try:
        for block in transformer.layers:
            attention = block.cross_attn_token_to_image
            attention.forward = partial(guided_attention, attention, bias)
            undo.append(partial(delattr, attention, "forward"))  # uncovers the class's forward
        undo.append(transformer.register_forward_pre_hook(partial(_add_to_tokens, target)).remove)
        for block in transformer.layers[1:]:
            hook = partial(_add_to_kwarg, "queries", target)
            undo.append(block.register_forward_pre_hook(hook, with_kwargs=True).remove)
        hook = partial(_add_to_kwarg, "q", target)
        undo.append(transformer.final_attn_token_to_image.register_forward_pre_hook(hook, with_kwargs=True).remove)
        yield
    finally:
        for restore in reversed(undo):
            restore()


class PerSAMPrompter(LocationPrior):
    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> Prompts:
        """Positive point at argmax S, negative at argmin S (deterministic: ``generator`` is unused)."""
        extremes = torch.stack([torch.argmax(similarity), torch.argmin(similarity)])
        return Prompts(pixels_xy(extremes, similarity.shape[-1]), np.array([1, 0]))

    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor):
        bias = attention_bias(similarity, self.query)
        with target_guidance(self.sam.mask_decoder.transformer, bias, self.target.embedding):
            first = decoding.decode(self.sam, embedding, self.query, prompts, multimask=False).best()
        return post_refine(self.sam, embedding, self.query, prompts, first, box_first=False)


class PerSAM(Baseline):
    """PerSAM, training-free. ``prototype``: ``"mean"`` (PerSAM's) or ``"maxmean"``."""

    name = "persam"

    def __init__(self, prototype: str = "mean"):
        self.prototype = check_prototype(prototype)

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> PerSAMPrompter:
        supports, query = encode_episode(encoder, support_images, query_image)
        return PerSAMPrompter(encoder.sam, support_target(supports, support_masks, self.prototype), query)


# ---------------------------------------------------------------- PerSAM-F

def mixing_weights(free: torch.Tensor) -> torch.Tensor:
    """w = [1 - a - b, a, b] from the two free scalars (a, b)."""
    return torch.cat([1 - free.sum(0, keepdim=True), free])


def mix(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SAM's three multimask outputs (3, h, w) combined by ``weights`` (3,)."""
    return torch.einsum("k,khw->hw", weights, logits)


def dice_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    return 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)


def fit_mask_weights(sam: Sam, support: Encoded, support_mask: np.ndarray, target: Target,
                     iters: int) -> tuple[torch.Tensor, list]:
    """PerSAM-F's fine-tuning on the support image: (weights (3,), loss per iteration).

    The support is prompted with the top-1 point of its own S. The decoder's outputs do not
    depend on the weights, so it runs once (the release re-runs it every iteration, to the
    same effect) and only the mixing trains.
    """
    prompts = Prompts(top1_xy(similarity_map(target, support.embedding, support)), np.ones(1))
    with torch.no_grad():
        outputs = to_image_frame(decoding.decode(sam, support.embedding, support, prompts).logits, support)
    truth = torch.as_tensor(np.asarray(support_mask, dtype=bool), dtype=torch.float32, device=outputs.device)
    free = torch.nn.Parameter(torch.full((2,), 1 / 3, device=outputs.device))
    optimizer = torch.optim.AdamW([free], lr=1e-3, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    history = []
    with torch.enable_grad():
        for _ in range(iters):
            logits = mix(outputs, mixing_weights(free))
            loss = dice_loss(logits, truth) + sigmoid_focal_loss(logits, truth, alpha=0.25, gamma=2, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(loss.detach())
    return mixing_weights(free).detach(), torch.stack(history).tolist()


def band_pixels(similarity: torch.Tensor, lower_q: float, upper_q: float | None = None) -> torch.Tensor:
    """Flat indices (CPU) of the pixels with q(lower_q) <= S (< q(upper_q) when given)."""
    flat = similarity.detach().flatten().float()
    inside = flat >= torch.quantile(flat, lower_q)
    if upper_q is not None:
        inside &= flat < torch.quantile(flat, upper_q)
    return torch.nonzero(inside).flatten().cpu()


def draw(pixels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` of ``pixels`` at random without replacement; all of them when the band is smaller.

    Small images make the bands tiny (under 100k pixels band 1 is the argmax alone), so a
    prompt set may hold fewer than ``points`` points rather than repeated ones.
    """
    order = torch.randperm(len(pixels), generator=generator, device=generator.device).cpu()
    return pixels[order[:count]]


def band_prompts(similarity: torch.Tensor, points: int, generator: torch.Generator,
                 released_point_order: bool = False) -> Prompts:
    """PR-MaGIC's PerSAM-F prompts: the top-1 point, then ``points // 2`` random points from
    band 1, then as many from band 2 (see BAND_QUANTILES); all positive.

    ``released_point_order`` gives the extra points as (row, col), as the release does.
    """
    upper, lower = BAND_QUANTILES
    extra = torch.cat([draw(band_pixels(similarity, upper), points // 2, generator),
                       draw(band_pixels(similarity, lower, upper), points // 2, generator)])
    coords = np.concatenate([top1_xy(similarity),
                             pixels_xy(extra, similarity.shape[-1], row_col=released_point_order)])
    return Prompts(coords, np.ones(len(coords)))


class PerSAMFPrompter(LocationPrior):
    """PerSAM-F's prompter; ``mask_weights`` (3,) and ``loss_history`` come from the support fit."""

    decode_uses_similarity = False

    def __init__(self, sam: Sam, target: Target, query: Encoded, mask_weights: torch.Tensor,
                 loss_history: list, points: int, released_point_order: bool):
        super().__init__(sam, target, query)
        self.mask_weights = mask_weights
        self.loss_history = loss_history
        self.points = points
        self.released_point_order = released_point_order

    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> Prompts:
        return band_prompts(similarity, self.points, generator, self.released_point_order)

    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor):
        """Stock calls, as PR-MaGIC's release: the three outputs mixed by the fitted weights,
        then :func:`post_refine` with the mixed mask's box from the start (``similarity`` is unused)."""
        first = decoding.decode(self.sam, embedding, self.query, prompts, multimask=True)
        return post_refine(self.sam, embedding, self.query, prompts, mix(first.logits, self.mask_weights),
                           box_first=True)


class PerSAMF(Baseline):
    """PerSAM-F with PR-MaGIC's prompt sampler.

    ``prototype``: ``"maxmean"`` (the releases') or ``"mean"``; ``points``: prompt points
    (5 for semantic, 3 for part segmentation); ``train_iters``: fine-tuning iterations;
    ``released_point_order``: reproduce the release's (row, col) extra points.
    """

    name = "persam_f"

    def __init__(self, prototype: str = "maxmean", points: int = 5, train_iters: int = 1000,
                 released_point_order: bool = False):
        if points < 1 or train_iters < 1:
            raise ValueError(f"points and train_iters must be >= 1, got points={points}, train_iters={train_iters}")
        self.prototype = check_prototype(prototype)
        self.points = points
        self.train_iters = train_iters
        self.released_point_order = released_point_order

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> PerSAMFPrompter:
        supports, query = encode_episode(encoder, support_images, query_image)
        target = support_target(supports, support_masks, self.prototype)
        weights, history = fit_mask_weights(encoder.sam, supports[0], support_masks[0], target, self.train_iters)
        return PerSAMFPrompter(encoder.sam, target, query, weights, history, self.points, self.released_point_order)
