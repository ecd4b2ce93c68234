"""Training DINO-Tiny on the BASE classes of one ShapeWorld fold.

Supervised, on what ShapeWorld's classes are made of: every patch token (after the final
norm) is classified by three linear heads, the shape of the object it lies on (6 shapes or
4 composites, or background), its texture (4, or background) and its part (8 part
classes, or none), background weighted down (``background_weight``); the mask-pooled tokens of each object (before the final norm: the
features Matcher and the selector use) are pulled together across the batch when the
objects share a class and pushed apart otherwise (supervised contrastive, temperature
``temperature``) and read by two linear object heads, shape and texture (``object_weight``).
Novel classes are new combinations of a shape and a texture that were both seen in other
classes, and a composite whose parts were never seen: a feature that keeps the two factors
apart tells novel classes apart without having seen them.

Among base classes a shape predicts its texture (fold 0 never shows a striped circle), and a
network told both learns that shortcut: trained that way, texture read on novel objects fell
below chance (0.23, base 0.68). So a share of each batch (``shuffle_fraction``) has its image
cut into ``tile``-px tiles and the tiles permuted (labels with them): a shuffled image keeps
every texture and no shape, and is asked only for texture and part. Optionally another share
(``flat_fraction``, 0 in the shipped recipe) has every object painted one random flat colour: a
flat image keeps every shape and no texture, and is asked only for shape (patches and pooled
objects). Tried at 0.25 (shuffle 0.375), it read novel shapes better (0.48 against 0.35) and
novel textures worse (0.80 against 0.91), and classed novel objects worse (0.823 against 0.860).
Optionally (``factor_contrastive_weight``, 0 in the shipped recipe) the pooled objects are also
contrasted by factor: by shape on the first half of their channels, by texture on the second, so
objects of one shape must agree in one half whatever their texture. Tried at 0.5, with and without
the class contrast, it classed novel objects no better (0.847 both, against 0.860).
Optionally (``context_weight``, 0 in the shipped recipe) ``context_pairs`` objects per step are
shown twice, in their own scene and pasted at the same place into another
(:meth:`LabelledPool.pasted`), and their pooled features contrasted by class
(:func:`context_loss`): an object's feature should not depend on what surrounds it. Evaluation
scenes put distractors of any class, often sharing the target's shape or texture, around it,
and the shipped weights class novel objects alone on a plain background better than in their
scenes (0.912 against 0.860-0.890). Tried at 0.5 and 1.0 (16000 scenes), it classed novel objects
worse (0.810 and 0.843, against 0.880 without it).
Optionally (``patch_contrastive_weight``, 0 in the shipped recipe) the foreground patch tokens of
the intact images are contrasted by class across images (:func:`patch_contrastive`), as Matcher
wants a query patch's nearest support patch on the support's object.
Optionally (``shuffled_shape_weight``, 0 in the shipped recipe) the shape heads are also asked of the
shuffled view's objects, with no shape as the answer: patch and object shape logits pushed toward
even odds over the shapes (:func:`undecided_shape`). A shuffled object keeps its texture and loses
its silhouette, so a shape named there was read from the texture: the shortcut that lets fold 0's
striped circles and hexagons pass for each other.
Optionally (``object_head_temperature`` t > 0, 0 in the shipped recipe: linear heads) the object heads
are cosine classifiers (:func:`object_logits`: the cosine of the pooled feature and each class's weight
row, over t), so shape and texture must each separate by ANGLE, which is what the nearest neighbour by
cosine that Matcher's matching and the quality bar use can see; a linear head can read a factor from
a direction too weak to move a cosine.
Instances and classes are asked of the intact images only. Texture and part are asked of the
patches that have one; only the shape head also tells objects from background (label 0,
down-weighted).

Scenes come from the training stream (:func:`shapeworld.training_scene` with ``fold``),
rendered at ``render_scales`` times the input in turn (by default two thirds at 128 px and one
third at 256 px) and reduced to the input by block means (evaluation renders at 512 px and is
stretched to the input), flipped and rotated
by multiples of 90 degrees. Every draw is seeded by (seed, step), so ``resume`` continues
exactly.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import shapeworld
from .dino_quality import patch_coverage
from .dinov2 import IMAGENET_MEAN, IMAGENET_STD
from .dino_tiny import DINO_TINY_CONFIG, build_dino_tiny
from .training import _lr_factor, _save_atomic

INPUT = DINO_TINY_CONFIG["img_size"]
GRID = INPUT // 2 ** len(DINO_TINY_CONFIG["stem_channels"])
SHAPE_LABELS = ("background",) + shapeworld.SHAPES + tuple(shapeworld.COMPOSITES)
TEXTURE_LABELS = ("background",) + shapeworld.TEXTURES
PART_LABELS = ("none",) + shapeworld.PART_CLASSES
HEADS = {"shape": len(SHAPE_LABELS), "texture": len(TEXTURE_LABELS), "part": len(PART_LABELS)}
OBJECT_HEADS = ("shape", "texture")  # read from mask-pooled tokens; a composite has no single texture


@dataclass
class DinoTrainConfig:
    fold: int = 0
    steps: int = 200
    scenes: int = 600
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.05
    background_weight: float = 0.2
    contrastive_weight: float = 0.5
    factor_contrastive_weight: float = 0.0
    temperature: float = 0.1
    object_weight: float = 1.0
    shuffle_fraction: float = 0.5
    flat_fraction: float = 0.0
    context_weight: float = 0.0
    context_pairs: int = 8
    patch_contrastive_weight: float = 0.0
    shuffled_shape_weight: float = 0.0
    object_head_temperature: float = 0.0
    render_scales: tuple = (1, 1, 2)
    tile: int = 16
    seed: int = 0
    checkpoint_every: int = 50


def _texture_of_part(part_name: str) -> str:
    composite, part = part_name.split("/")
    return next(p.texture for p in shapeworld.COMPOSITES[composite] if p.part == part)


def _majority(labels: np.ndarray, classes: int) -> np.ndarray:
    """(GRID, GRID) majority label of each patch of a (H, W) label map."""
    block = labels.shape[0] // GRID
    counts = np.eye(classes, dtype=np.int32)[labels].reshape(GRID, block, GRID, block, classes).sum((1, 3))
    return counts.argmax(-1)


def scene_labels(scene) -> np.ndarray:
    """(4, GRID, GRID) int: shape, texture, part and instance (0 = background, i = object i - 1) per patch."""
    size = scene.image.shape[0]
    maps = np.zeros((4, size, size), dtype=np.int64)
    for index, obj in enumerate(scene.objects):
        if obj.name in shapeworld.COMPOSITES:
            maps[0][obj.mask] = SHAPE_LABELS.index(obj.name)
        else:
            texture, shape = obj.name.split("-")
            maps[0][obj.mask] = SHAPE_LABELS.index(shape)
            maps[1][obj.mask] = TEXTURE_LABELS.index(texture)
        maps[3][obj.mask] = index + 1
    for part in scene.parts:
        maps[1][part.mask] = TEXTURE_LABELS.index(_texture_of_part(part.name))
        maps[2][part.mask] = PART_LABELS.index(part.name)
    classes = (len(SHAPE_LABELS), len(TEXTURE_LABELS), len(PART_LABELS), len(scene.objects) + 1)
    return np.stack([_majority(m, c) for m, c in zip(maps, classes)])


def _to_input(image: np.ndarray) -> np.ndarray:
    """A square render reduced to the model's input by block means (render sizes are multiples of it)."""
    block = image.shape[0] // INPUT
    if block == 1:
        return image
    return image.reshape(INPUT, block, INPUT, block, 3).mean((1, 3)).round().astype(np.uint8)


def object_owner(scene) -> np.ndarray:
    """(INPUT, INPUT) int8: the index of the object seen at each pixel of the model's input, -1 on background."""
    owner = np.full(scene.image.shape[:2], -1, dtype=np.int8)
    for index, obj in enumerate(scene.objects):
        owner[obj.mask] = index
    block = owner.shape[0] // INPUT
    return owner[block // 2::block, block // 2::block]


INTACT, SHUFFLED, FLAT = 0, 1, 2


class LabelledPool:
    """Pre-drawn base-class training scenes of one fold: images at the input size, patch labels, instance
    classes and which object each input pixel shows."""

    def __init__(self, n: int, seed: int, fold: int, render_scales: tuple = DinoTrainConfig.render_scales):
        # filled in place: a list of renders stacked at the end would hold the pool twice at its peak
        self.images = np.empty((n, INPUT, INPUT, 3), dtype=np.uint8)
        self.labels = np.empty((n, 4, GRID, GRID), dtype=np.int64)
        self.owners = np.empty((n, INPUT, INPUT), dtype=np.int8)
        self.classes = []
        for index in range(n):
            size = render_scales[index % len(render_scales)] * INPUT
            scene = shapeworld.training_scene(seed, index, size=size, fold=fold)
            self.images[index], self.labels[index] = _to_input(scene.image), scene_labels(scene)
            self.owners[index] = object_owner(scene)
            self.classes.append([shapeworld.ALL_CLASSES.index(o.name) for o in scene.objects])

    def batch(self, rng: np.random.Generator, size: int, shuffle_fraction: float = 0.0, tile: int = 16,
              flat_fraction: float = 0.0):
        """Images (B, 3, INPUT, INPUT) float normalised, labels (B, 4, GRID, GRID), instance classes per
        image, and (B,) int: each image's view, :data:`SHUFFLED` (:func:`shuffle_tiles`, the first
        ``shuffle_fraction``), :data:`FLAT` (:func:`paint_flat`, the next ``flat_fraction``) or :data:`INTACT`."""
        picks = rng.choice(len(self.images), size=size, replace=False)
        turns, flips = rng.integers(0, 4, size), rng.random(size) < 0.5
        n_shuffled, n_flat = round(shuffle_fraction * size), round(flat_fraction * size)
        views = np.full(size, INTACT)
        views[:n_shuffled], views[n_shuffled:n_shuffled + n_flat] = SHUFFLED, FLAT
        images, labels = [], []
        for index, turn, flip, view in zip(picks, turns, flips, views):
            image = self.images[index]
            if view == FLAT:
                image = paint_flat(image, self.owners[index], rng)
            image, label = np.rot90(image, turn, (0, 1)), np.rot90(self.labels[index], turn, (1, 2))
            if flip:
                image, label = image[:, ::-1], label[:, :, ::-1]
            if view == SHUFFLED:
                image, label = shuffle_tiles(image, label, tile, rng)
            images.append(np.ascontiguousarray(image))
            labels.append(np.ascontiguousarray(label))
        return (normalise(np.stack(images)), torch.as_tensor(np.stack(labels)), [self.classes[i] for i in picks],
                torch.as_tensor(views))

    def pasted(self, rng: np.random.Generator, n: int):
        """``n`` scenes' targets each shown twice, in its own scene and pasted at the same place into
        another scene: images (2n, 3, INPUT, INPUT) normalised (the first n in their own scenes, each
        view turned and flipped on its own), the targets' (2n, GRID * GRID) patch coverage, and their
        (2n,) classes."""
        sources, hosts = rng.choice(len(self.images), size=(2, n), replace=False)
        images, coverage = [], []
        for source, host in ((sources, sources), (sources, hosts)):
            for s, h in zip(source, host):
                target = self.owners[s] == 0
                image = self.images[h].copy()
                image[target] = self.images[s][target]
                turn, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
                image, target = np.rot90(image, turn, (0, 1)), np.rot90(target, turn)
                if flip:
                    image, target = image[:, ::-1], target[:, ::-1]
                images.append(np.ascontiguousarray(image))
                coverage.append(patch_coverage(np.ascontiguousarray(target), (GRID, GRID)).flatten())
        classes = [self.classes[s][0] for s in sources] * 2
        return (normalise(np.stack(images)), torch.stack(coverage),
                torch.as_tensor(classes))


def context_loss(model, x: torch.Tensor, coverage: torch.Tensor, classes: torch.Tensor, temperature: float):
    """Supervised contrast of the coverage-pooled tokens (as :mod:`.dino_quality` pools them) of objects
    seen in their own scene and pasted into another (:meth:`LabelledPool.pasted`): an object's feature
    should not depend on what surrounds it."""
    tokens = prenorm_tokens(model, x)
    pooled = (coverage[..., None] * tokens).sum(1) / coverage.sum(1, keepdim=True).clamp_min(1e-6)
    return instance_contrastive(pooled, classes, temperature)


def paint_flat(image: np.ndarray, owner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` with every object (``owner`` >= 0) painted one random colour plus the renderer's pixel
    noise: its silhouette stays, its texture goes."""
    flat = image.astype(np.float64)
    for index in range(int(owner.max()) + 1):
        inside = owner == index
        flat[inside] = shapeworld.random_colour(rng) + rng.normal(0.0, 6.0, (int(inside.sum()), 3))
    return np.clip(flat, 0, 255).astype(np.uint8)


def shuffle_tiles(image: np.ndarray, labels: np.ndarray, tile: int, rng: np.random.Generator) -> tuple:
    """``image`` (S, S, 3) and its patch ``labels`` (4, GRID, GRID) cut into ``tile``-px tiles, tiles permuted alike."""
    n, cell = INPUT // tile, tile * GRID // INPUT
    order = rng.permutation(n * n)

    def permuted(a: np.ndarray, side: int) -> np.ndarray:  # a: (..., n*side, n*side)
        lead = a.shape[:-2]
        blocks = a.reshape(*lead, n, side, n, side).swapaxes(-3, -2).reshape(*lead, n * n, side, side)
        return blocks[..., order, :, :].reshape(*lead, n, n, side, side).swapaxes(-3, -2).reshape(a.shape)

    return np.moveaxis(permuted(np.moveaxis(image, -1, 0), tile), 0, -1), permuted(labels, cell)


def normalise(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) ImageNet-normalised, as :func:`.dinov2.patch_tokens` feeds the model."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_heads(width: int) -> torch.nn.ModuleDict:
    """Per-patch heads (:data:`HEADS`) and per-object heads (``object_`` + :data:`OBJECT_HEADS`)."""
    patch = {name: torch.nn.Linear(width, classes) for name, classes in HEADS.items()}
    whole = {f"object_{name}": torch.nn.Linear(width, HEADS[name]) for name in OBJECT_HEADS}
    return torch.nn.ModuleDict(patch | whole)


def object_factors(class_index: int) -> tuple:
    """(shape label, texture label) of a class of :data:`shapeworld.ALL_CLASSES`; texture -100 for a composite."""
    name = shapeworld.ALL_CLASSES[class_index]
    if name in shapeworld.COMPOSITES:
        return SHAPE_LABELS.index(name), -100
    texture, shape = name.split("-")
    return SHAPE_LABELS.index(shape), TEXTURE_LABELS.index(texture)


def prenorm_tokens(model, x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens of the last block before the final norm (what :func:`.dinov2.patch_tokens` returns)."""
    (tokens,) = model.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True)
    return tokens


def instance_features(tokens: torch.Tensor, instances: torch.Tensor, classes: list) -> tuple:
    """(K, C) mask-pooled tokens of every instance covering >= 2 patches, their (K,) classes and (K,) images."""
    pooled, labels, images = [], [], []
    for b, names in enumerate(classes):
        ids = instances[b].flatten()
        for i, cls in enumerate(names):
            inside = ids == i + 1
            if inside.sum() >= 2:
                pooled.append(tokens[b][inside].mean(0))
                labels.append(cls)
                images.append(b)
    if not pooled:
        return tokens.new_zeros(0, tokens.shape[-1]), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.stack(pooled), torch.as_tensor(labels), torch.as_tensor(images)


def instance_contrastive(pooled: torch.Tensor, labels: torch.Tensor, temperature: float,
                         sources: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss of L2-normalised instance features (``labels``: their classes; with
    ``sources``, only features from another source count as positives)."""
    if len(pooled) < 2:
        return pooled.sum() * 0
    z = F.normalize(pooled, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    positive = (labels[:, None] == labels[None]) & ~eye
    if sources is not None:
        positive &= sources[:, None] != sources[None]
    log_prob = logits - logits.logsumexp(1, keepdim=True)
    has = positive.any(1)
    if not has.any():
        return pooled.sum() * 0
    return -((log_prob * positive).sum(1)[has] / positive.sum(1)[has]).mean()


def factor_contrastive(pooled: torch.Tensor, factor: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`instance_contrastive` by one factor (shape or texture) of the instances that show it (not -100)."""
    shown = factor != -100
    return instance_contrastive(pooled[shown], factor[shown], temperature)


def patch_contrastive(tokens: torch.Tensor, instances: torch.Tensor, classes: list, temperature: float) -> torch.Tensor:
    """:func:`instance_contrastive` of the foreground patch tokens of ``tokens`` (B, N, C): a patch's positives
    are the patches of objects of its class in the OTHER images, as Matcher wants a query patch's nearest
    support patch to lie on the support's object. ``instances`` (B, N): patch instance ids (0 background),
    ``classes``: each image's instance classes."""
    lookup = torch.full((len(classes), max(map(len, classes), default=0) + 1), -1, dtype=torch.long)
    for b, names in enumerate(classes):
        lookup[b, 1:len(names) + 1] = torch.as_tensor(names, dtype=torch.long)
    patch_class = lookup.gather(1, instances)
    image = torch.arange(len(classes))[:, None].expand_as(instances)
    foreground = patch_class >= 0
    return instance_contrastive(tokens[foreground], patch_class[foreground], temperature, image[foreground])


def object_logits(heads, name: str, pooled: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """Object head ``name`` (``shape`` or ``texture``) on pooled features: linear (``temperature`` 0) or the
    cosine of each feature and each class's weight row over ``temperature``."""
    head = heads[f"object_{name}"]
    if not temperature:
        return head(pooled)
    return F.normalize(pooled, dim=-1) @ F.normalize(head.weight, dim=-1).T / temperature


def undecided_shape(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of shape ``logits`` (M, shapes incl. background) against even odds over the object
    shapes (not background): lowest, log(shapes - 1), when the head names no shape."""
    if not len(logits):
        return logits.sum() * 0
    return -F.log_softmax(logits, dim=-1)[:, 1:].mean()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not -100 (0 when there are none)."""
    if not (target != -100).any():
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=-100, **kwargs)


def training_loss(model, heads, x, labels, classes, views, cfg: DinoTrainConfig) -> torch.Tensor:
    """Patch heads and object heads on what each image's view (:meth:`LabelledPool.batch`) still shows."""
    tokens = prenorm_tokens(model, x)
    normed = model.norm(tokens)
    has_shape, has_texture = views != SHUFFLED, views != FLAT
    weight = torch.ones(HEADS["shape"])
    weight[0] = cfg.background_weight
    loss = _cross_entropy(heads["shape"](normed[has_shape]).flatten(0, 1), labels[has_shape, 0].flatten(), weight=weight)
    for k, name in ((1, "texture"), (2, "part")):
        target = labels[has_texture, k].flatten()
        loss = loss + _cross_entropy(heads[name](normed[has_texture]).flatten(0, 1), target.masked_fill(target == 0, -100))
    pooled, instance_classes, image = instance_features(tokens, labels[:, 3].flatten(1), classes)
    factors = torch.as_tensor([object_factors(int(c)) for c in instance_classes], dtype=torch.long).reshape(-1, 2)
    shape_target = factors[:, 0].masked_fill(~has_shape[image], -100)
    texture_target = factors[:, 1].masked_fill(~has_texture[image], -100)
    t = cfg.object_head_temperature
    loss = loss + cfg.object_weight * (_cross_entropy(object_logits(heads, "shape", pooled, t), shape_target)
                                       + _cross_entropy(object_logits(heads, "texture", pooled, t), texture_target))
    if cfg.shuffled_shape_weight:
        shuffled = views == SHUFFLED
        on_object = labels[shuffled, 0].flatten(1) != 0
        loss = loss + cfg.shuffled_shape_weight * (undecided_shape(heads["shape"](normed[shuffled][on_object]))
                                                    + cfg.object_weight * undecided_shape(
                                                        object_logits(heads, "shape", pooled[shuffled[image]], t)))
    whole = views[image] == INTACT
    loss = loss + cfg.contrastive_weight * instance_contrastive(pooled[whole], instance_classes[whole], cfg.temperature)
    if cfg.patch_contrastive_weight:
        intact = views == INTACT
        loss = loss + cfg.patch_contrastive_weight * patch_contrastive(
            tokens[intact], labels[intact, 3].flatten(1), [c for c, keep in zip(classes, intact) if keep], cfg.temperature)
    if cfg.factor_contrastive_weight:
        half = pooled.shape[1] // 2
        loss = loss + cfg.factor_contrastive_weight * (factor_contrastive(pooled[:, :half], shape_target, cfg.temperature)
                                                       + factor_contrastive(pooled[:, half:], texture_target, cfg.temperature))
    return loss


def train(cfg: DinoTrainConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train DINO-Tiny; writes ``checkpoint.pt`` periodically and ``dino_tiny.pt`` (backbone only) at the end."""
    if cfg.scenes < cfg.batch:
        raise ValueError(f"scenes ({cfg.scenes}) must be at least batch ({cfg.batch})")
    if cfg.tile <= 0 or INPUT % cfg.tile or cfg.tile % (INPUT // GRID):
        raise ValueError(f"tile ({cfg.tile}) must divide the {INPUT}-px input and be a multiple of its "
                         f"{INPUT // GRID}-px patches")
    if not cfg.render_scales or any(int(k) != k or k < 1 for k in cfg.render_scales):
        raise ValueError(f"render_scales ({cfg.render_scales}) must be whole numbers >= 1")
    if cfg.context_weight and 2 * cfg.context_pairs > cfg.scenes:
        raise ValueError(f"scenes ({cfg.scenes}) must be at least twice context_pairs ({cfg.context_pairs})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_dino_tiny()
    heads = make_heads(DINO_TINY_CONFIG["embed_dim"])
    parameters = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    start, elapsed, losses = 0, 0.0, []
    checkpoint = out_dir / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{checkpoint} was written with other settings: {state['config']} (now {asdict(cfg)})")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, elapsed, losses = state["step"], state["elapsed"], list(state["losses"])
    pool = LabelledPool(cfg.scenes, cfg.seed, cfg.fold, cfg.render_scales)
    model.train()
    began = time.time() - elapsed
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train-dino-tiny")
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        x, labels, classes, views = pool.batch(rng, cfg.batch, cfg.shuffle_fraction, cfg.tile, cfg.flat_fraction)
        loss = training_loss(model, heads, x, labels, classes, views, cfg)
        if cfg.context_weight:
            loss = loss + cfg.context_weight * context_loss(model, *pool.pasted(rng, cfg.context_pairs), cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_atomic(dict(model=model.state_dict(), heads=heads.state_dict(), optimizer=optimizer.state_dict(),
                              scheduler=scheduler.state_dict(), step=step + 1, elapsed=time.time() - began,
                              losses=losses, config=asdict(cfg)), checkpoint)
    _save_atomic(model.state_dict(), out_dir / "dino_tiny.pt")
    summary = dict(config=asdict(cfg), steps=cfg.steps, wall_seconds=round(time.time() - began, 1),
                   final_loss=float(np.mean(losses[-50:])) if losses else None)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
