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

Where PR-MaGIC's release and this project's ``principled`` choices differ (support cells,
similarity upsampling, band sampler's point order and quantiles, the fit's prompts, the
cascade's box, which mask the selector encodes, the empty-support fallback), the baseline's
``settings`` preset decides (:mod:`prmagic_core.presets`).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from ..masks import box_of
from ..models import decoding
from ..models.decoding import Prompts, to_mask
from ..models.encoding import Encoded, Encoder, to_grid, to_image_frame
from ..presets import Preset, get_preset
from ..select import SelectorEvidence
from .base import Baseline, EmptySupportWarning, Prompter
from .mixing_fit import fit_mixing_weights

PROTOTYPES = ("mean", "maxmean")
# PR-MaGIC's PerSAM-F sampler: band 1 is S >= q(0.99999), band 2 is S >= q(0.9999) (it contains band 1).
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


def support_cells(mask: np.ndarray, encoded: Encoded, sam: Sam, rule: str = "coverage") -> torch.Tensor:
    """(h, w) bool: the embedding cells a support mask selects.

    ``coverage``: any part of the cell is covered. ``preprocessed`` (the releases'): the mask as
    a 3-channel 0/255 image goes through SAM's own preprocessing (resize on the longest side,
    pixel normalisation, zero padding to the square input), is resized bilinearly to the grid,
    and channel 0's cells > 0 are kept (about "the cell's centre is covered").
    """
    if rule == "coverage":
        return to_grid(mask, encoded) > 0
    if rule != "preprocessed":
        raise ValueError(f"support cell rule must be 'coverage' or 'preprocessed', got {rule!r}")
    rgb = np.repeat(np.asarray(mask, dtype=np.uint8)[..., None] * 255, 3, axis=2)
    resized = ResizeLongestSide(encoded.side).apply_image(rgb)
    device = sam.pixel_mean.device
    channels = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float()
    normalised = F.pad((channels - sam.pixel_mean) / sam.pixel_std,
                       (0, encoded.side - resized.shape[1], 0, encoded.side - resized.shape[0]))
    return F.interpolate(normalised, encoded.grid, mode="bilinear", align_corners=False)[0, 0] > 0


def support_target(supports: list, support_masks, prototype: str, sam: Sam | None = None,
                   cells: str = "coverage", empty_support: str = "error") -> Target:
    """Target feature from the masked support features of all shots pooled together.

    ``mean`` is PerSAM's prototype, ``maxmean`` ((max + mean) / 2 per channel) PerSAM-F's and PR-MaGIC's.
    ``cells``: see :func:`support_cells`. A shot whose mask selects no cell is an error, or with
    ``empty_support="fallback"`` contributes all its features, as the PerSAM-F release does (with
    an :class:`EmptySupportWarning`).
    """
    features = []
    for index, (support, mask) in enumerate(zip(supports, support_masks, strict=True)):
        inside = support_cells(mask, support, sam, cells)
        if not inside.any():
            message = f"support mask {index} is empty (no foreground on the {support.grid} embedding grid)"
            if empty_support != "fallback":
                raise ValueError(message)
            warnings.warn(f"{message}; using all its features", EmptySupportWarning, stacklevel=2)
            inside = torch.ones_like(inside)
        features.append(support.embedding[0].permute(1, 2, 0)[inside])
    pooled = torch.cat(features)
    mean = pooled.mean(0)
    embedding = mean if check_prototype(prototype) == "mean" else (pooled.max(0).values + mean) / 2
    return Target(embedding, F.normalize(embedding, dim=0))


UPSAMPLINGS = ("direct", "two-step")


def similarity_map(target: Target, embedding: torch.Tensor, encoded: Encoded,
                   upsampling: str = "direct") -> torch.Tensor:
    """S (H, W) on the original image: cosine of the target with each L2-normalised feature of ``embedding``.

    ``direct``: one interpolation from the grid to the image frame; ``two-step`` (the releases'):
    x4 bilinear first (to the low-res mask size), then SAM's postprocessing to the image.
    """
    features = F.normalize(embedding[0], dim=0)
    grid_map = torch.einsum("c,chw->hw", target.direction, features)
    if upsampling == "two-step":
        grid_map = F.interpolate(grid_map[None, None], scale_factor=4, mode="bilinear", align_corners=False)[0, 0]
    elif upsampling != "direct":
        raise ValueError(f"similarity upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
    return to_image_frame(grid_map, encoded)


def pixels_xy(flat_indices: torch.Tensor, width: int) -> np.ndarray:
    """(N, 2) prompt coordinates (x, y) of flat pixel indices."""
    rows, cols = np.divmod(flat_indices.reshape(-1).cpu().numpy(), width)
    return np.stack([cols, rows], axis=1).astype(np.float64)


def top1_xy(similarity: torch.Tensor) -> np.ndarray:
    """(1, 2) (x, y) of the argmax of S."""
    return pixels_xy(torch.argmax(similarity), similarity.shape[-1])


# ---------------------------------------------------------------- cascaded post-refinement (shared)

def box_or_none(logits: torch.Tensor, encoded: Encoded) -> np.ndarray | None:
    """Box of the mask of ``logits``; None for an empty mask, where the releases would crash."""
    mask = to_mask(logits, encoded)
    return box_of(mask) if mask.any() else None


def post_refine(sam: Sam, embedding: torch.Tensor, encoded: Encoded, prompts: Prompts,
                logits: torch.Tensor, box_first: bool, reuse_box: bool = False) -> decoding.Decoded:
    """The last two cascaded calls: each takes the points, the previous logits as mask input
    (and a box; the first call only when ``box_first``), multimask, best by IoU head.

    The second call's box is the box of the first call's best mask, or with ``reuse_box`` (and
    ``box_first``) the same box the first call got, as PR-MaGIC's PerSAM-F release does.
    Returns the last call's outputs (all of them; ``.best()`` is the candidate's logits).
    """
    box = box_or_none(logits, encoded) if box_first else None
    with torch.no_grad():  # the last call gets these logits detached: it alone carries d_phi's gradient
        middle = decoding.decode(sam, embedding, encoded, prompts, box=box, mask_input=logits.detach(),
                                 multimask=True).best()
    if not (reuse_box and box_first):
        box = box_or_none(middle, encoded)
    return decoding.decode(sam, embedding, encoded, prompts, box=box, mask_input=middle, multimask=True)


class LocationPrior(Prompter):
    """What PerSAM and PerSAM-F prompters share: the SAM, the target feature, the query."""

    def __init__(self, sam: Sam, target: Target, query: Encoded, upsampling: str = "direct"):
        self.sam = sam
        self.target = target
        self.query = query
        self.upsampling = upsampling

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        return similarity_map(self.target, embedding, self.query, self.upsampling)


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
        with target_guidance(self.sam.mask_decoder.transformer, bias, self.target.embedding), torch.no_grad():
            first = decoding.decode(self.sam, embedding, self.query, prompts, multimask=False).best()
        last = post_refine(self.sam, embedding, self.query, prompts, first, box_first=False)
        logits = last.best()
        mask = to_mask(logits, self.query)
        return mask, logits, SelectorEvidence(mask, float(last.iou.detach().max()), logits.detach())


def prepared_target(encoder: Encoder, supports: list, support_masks, prototype: str, settings: Preset) -> Target:
    return support_target(supports, support_masks, prototype, encoder.sam, settings.support_cells,
                          settings.empty_support)


class PerSAM(Baseline):
    """PerSAM, training-free. ``prototype``: ``"mean"`` (PerSAM's) or ``"maxmean"``; ``settings``: a
    :class:`~prmagic_core.presets.Preset` or its name (the support cells, the empty-support
    fallback and the similarity upsampling follow it)."""

    name = "persam"

    def __init__(self, prototype: str = "mean", settings: Preset | str | None = None):
        self.prototype = check_prototype(prototype)
        self.settings = get_preset(settings)

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> PerSAMPrompter:
        supports, query = encode_episode(encoder, support_images, query_image)
        target = prepared_target(encoder, supports, support_masks, self.prototype, self.settings)
        return PerSAMPrompter(encoder.sam, target, query, self.settings.similarity_upsampling)


# ---------------------------------------------------------------- PerSAM-F

def mix(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SAM's three multimask outputs (3, h, w) combined by ``weights`` (3,)."""
    return torch.einsum("k,khw->hw", weights, logits)


def fit_mask_weights(sam: Sam, support: Encoded, support_mask: np.ndarray, prompts: Prompts,
                     iters: int) -> tuple[torch.Tensor, list]:
    """PerSAM-F's fine-tuning on the support image, prompted with ``prompts``: (weights (3,), loss per iteration).

    The decoder's outputs do not depend on the weights, so it runs once (the release re-runs
    it every iteration, to the same effect) and only the mixing trains (:func:`fit_mixing_weights`:
    the plain AdamW loop's result without autograd).
    """
    with torch.no_grad():
        outputs = to_image_frame(decoding.decode(sam, support.embedding, support, prompts).logits, support)
    return fit_mixing_weights(outputs, torch.as_tensor(np.asarray(support_mask, dtype=bool)), iters)


def upper_quantiles(values: torch.Tensor, quantiles: tuple) -> torch.Tensor:
    """``torch.quantile(values, quantiles)`` (linear interpolation) of a 1-D float tensor, bit for bit
    on CPU (tested), read from its top values instead of a full sort: the release's bands lie in the
    top 0.001% and 0.01% of a map, and sorting every pixel was a tenth of a refinement step at 512 px."""
    q = torch.tensor(quantiles, dtype=values.dtype, device=values.device)
    if torch.isnan(values).any():  # torch.quantile's NaN rule, which top-k cannot follow
        return torch.quantile(values, q)
    n = values.numel()
    ranks = q.double() * (n - 1)  # torch.quantile's ranks: q in the values' dtype, times n - 1 in float64
    below, above = ranks.long(), ranks.ceil().long()
    descending = torch.topk(values, n - int(below.min())).values  # sorted[i] is descending[n - 1 - i]
    return descending[n - 1 - below].lerp_(descending[n - 1 - above], (ranks - below).to(values.dtype))


def band_prompts(similarity: torch.Tensor, points: int, generator: torch.Generator,
                 quantiles: tuple = BAND_QUANTILES, row_col: bool = False) -> Prompts:
    """PR-MaGIC's PerSAM-F prompts: the top-1 point, then up to ``points // 2`` random points from
    each band, all positive. Band k holds the pixels with S >= q(quantiles[k]) (so band 2
    contains band 1), less every pixel taken before (the top-1 first): no pixel is drawn twice.

    ``row_col`` reproduces the first release: extra points given as (row, col), and taken pixels
    remembered by the transposed flat index col * W + row, so band 2 removes the transposed
    pixel of a band-1 pick (its own repeat is then skipped, leaving fewer points). On an image
    wider than tall that index can fall outside the map, where the release raised and skipped
    the episode; so does this (ValueError).
    """
    height, width = similarity.shape
    flat = similarity.detach().flatten().float()
    top = int(torch.argmax(flat))
    taken = [top]
    extra = []
    thresholds = upper_quantiles(flat, quantiles)
    for threshold in thresholds:
        inside = (flat >= threshold).reshape(height, width)
        for index in taken:
            row, col = divmod(index, width)
            if row >= height:
                raise ValueError(f"the (row, col) sampler's transposed index {index} falls outside the "
                                 f"{height}x{width} similarity map (the first release fails here too)")
            inside[row, col] = False
        pixels = torch.nonzero(inside).cpu()
        if len(pixels) == 0:
            continue
        order = torch.randperm(len(pixels), generator=generator, device=generator.device).cpu()
        for row, col in pixels[order[: points // 2]].tolist():
            index = col * width + row if row_col else row * width + col
            if index not in taken:
                extra.append((row, col) if row_col else (col, row))
                taken.append(index)
    coords = np.concatenate([pixels_xy(torch.tensor(top), width), np.asarray(extra, dtype=np.float64).reshape(-1, 2)])
    return Prompts(coords, np.ones(len(coords)))


class PerSAMFPrompter(LocationPrior):
    """PerSAM-F's prompter; ``mask_weights`` (3,), ``loss_history`` and ``fit_prompts`` come from the support fit."""

    decode_uses_similarity = False

    def __init__(self, sam: Sam, target: Target, query: Encoded, mask_weights: torch.Tensor, loss_history: list,
                 points: int, settings: Preset, fit_prompts: Prompts):
        super().__init__(sam, target, query, settings.similarity_upsampling)
        self.mask_weights = mask_weights
        self.loss_history = loss_history
        self.points = points
        self.settings = settings
        self.fit_prompts = fit_prompts

    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> Prompts:
        return band_prompts(similarity, self.points, generator, self.settings.band_quantiles,
                            self.settings.point_order == "row_col")

    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor):
        """Stock calls, as PR-MaGIC's release: the three outputs mixed by the fitted weights, then
        :func:`post_refine` with the mixed mask's box from the start (``similarity`` is unused).

        The selector's evidence: the mask it encodes (call 1's mixed mask under the release's
        ``selector_mask="first-call"``, else the candidate), call 3's best IoU prediction, and
        call 3's three outputs mixed by the weights (the release's margin logits).
        """
        with torch.no_grad():  # reaches the last call only as a detached mask input and a box (post_refine)
            first = mix(decoding.decode(self.sam, embedding, self.query, prompts, multimask=True).logits,
                        self.mask_weights)
        last = post_refine(self.sam, embedding, self.query, prompts, first, box_first=True,
                           reuse_box=self.settings.cascade_box == "first")
        logits = last.best()
        mask = to_mask(logits, self.query)
        scored = to_mask(first, self.query) if self.settings.selector_mask == "first-call" else mask
        margin_logits = mix(last.logits.detach(), self.mask_weights)
        return mask, logits, SelectorEvidence(scored, float(last.iou.detach().max()), margin_logits)


class PerSAMF(Baseline):
    """PerSAM-F with PR-MaGIC's prompt sampler.

    ``prototype``: ``"maxmean"`` (the releases') or ``"mean"``; ``points``: prompt points
    (5 for semantic, 3 for part segmentation); ``train_iters``: fine-tuning iterations;
    ``settings``: a :class:`~prmagic_core.presets.Preset` or its name (sampler, cascade, fit,
    selector mask, support cells); ``released_point_order``: the first release's (row, col)
    extra points whatever the preset says; ``fit_seed``: the fit's band-point draws.
    """

    name = "persam_f"

    def __init__(self, prototype: str = "maxmean", points: int = 5, train_iters: int = 1000,
                 released_point_order: bool = False, settings: Preset | str | None = None, fit_seed: int = 0):
        if points < 1 or train_iters < 1:
            raise ValueError(f"points and train_iters must be >= 1, got points={points}, train_iters={train_iters}")
        self.prototype = check_prototype(prototype)
        self.points = points
        self.train_iters = train_iters
        settings = get_preset(settings)
        self.settings = settings.override(point_order="row_col") if released_point_order else settings
        self.fit_seed = fit_seed

    @property
    def released_point_order(self) -> bool:
        return self.settings.point_order == "row_col"

    def fit_prompts(self, sam: Sam, support: Encoded, target: Target) -> Prompts:
        """The fit's prompts on the support's own S: the top-1 point, or the whole band sample."""
        similarity = similarity_map(target, support.embedding, support, self.settings.similarity_upsampling)
        if self.settings.fit_points == "top1":
            return Prompts(top1_xy(similarity), np.ones(1))
        generator = torch.Generator().manual_seed(self.fit_seed)
        return band_prompts(similarity, self.points, generator, self.settings.band_quantiles,
                            self.settings.point_order == "row_col")

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> PerSAMFPrompter:
        supports, query = encode_episode(encoder, support_images, query_image)
        target = prepared_target(encoder, supports, support_masks, self.prototype, self.settings)
        prompts = self.fit_prompts(encoder.sam, supports[0], target)
        weights, history = fit_mask_weights(encoder.sam, supports[0], support_masks[0], prompts, self.train_iters)
        return PerSAMFPrompter(encoder.sam, target, query, weights, history, self.points, self.settings, prompts)
