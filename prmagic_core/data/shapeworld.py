"""ShapeWorld: procedurally drawn scenes and few-shot episodes, seeded and reproducible.

An object class is a shape x texture pair ("stripes-circle"); its colours are drawn afresh
for every instance, so colour misleads a similarity map exactly as in the paper's failure
cases. Composite classes (snowman, house, car, mushroom) are made of parts, each part a
shape with a fixed texture; the parts are the classes of the part-segmentation episodes.

Seeds: every scene draws from ``np.random.default_rng([stream, seed, index])`` with
``stream = 0`` for training scenes (:func:`training_scenes`) and ``stream = 1`` for
evaluation episodes (:func:`episodes`), so the two never share a scene whatever seeds
are passed.

Folds (:func:`novel_classes`), in the style of COCO-20i: fold k holds out 6 of the 24
shape x texture classes, one per shape, texture (shape + k) mod 4 (a Latin square: every
class is novel in exactly one fold, and every shape and texture stays among the base
classes), and one composite with its 2 part classes. ``episodes(..., fold=k)`` poses only
novel classes; ``training_scenes(..., fold=k)`` holds base classes only, distractors
included, so a model trained on them never sees a novel class.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .episode import Episode

TRAIN_STREAM = 0
EVAL_STREAM = 1
REFERENCE_SIZE = 128  # the size the scene constants were chosen at

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
TEXTURES = ("stripes", "dots", "checks", "rings")
OBJECT_CLASSES = tuple(f"{t}-{s}" for s in SHAPES for t in TEXTURES)


@dataclass(frozen=True)
class Primitive:
    """One textured shape inside a composite, in the composite's frame (units of its radius)."""

    part: str
    shape: str
    texture: str
    offset: tuple
    scale: tuple


COMPOSITES = {
    "snowman": (
        Primitive("body", "circle", "stripes", (0.0, 0.35), (0.62, 0.62)),
        Primitive("head", "circle", "dots", (0.0, -0.58), (0.38, 0.38)),
    ),
    "house": (
        Primitive("walls", "rect", "stripes", (0.0, 0.35), (0.6, 0.5)),
        Primitive("roof", "triangle", "checks", (0.0, -0.45), (0.85, 0.55)),
    ),
    "car": (
        Primitive("frame", "rect", "checks", (0.0, -0.1), (0.95, 0.35)),
        Primitive("wheel", "circle", "rings", (-0.55, 0.38), (0.3, 0.3)),
        Primitive("wheel", "circle", "rings", (0.55, 0.38), (0.3, 0.3)),
    ),
    "mushroom": (
        Primitive("stem", "rect", "stripes", (0.0, 0.45), (0.28, 0.42)),
        Primitive("cap", "halfdisc", "dots", (0.0, 0.1), (0.9, 0.85)),
    ),
}
PART_CLASSES = tuple(sorted({f"{c}/{p.part}" for c, prims in COMPOSITES.items() for p in prims}))
ALL_CLASSES = OBJECT_CLASSES + tuple(COMPOSITES)
FOLDS = 4


def check_fold(fold) -> None:
    if fold is not None and (int(fold) != fold or not 0 <= fold < FOLDS):
        raise ValueError(f"fold must be None or an integer in 0..{FOLDS - 1}, got {fold!r}")


def novel_classes(fold: int, kind: str = "object") -> tuple:
    """The classes fold ``fold`` holds out: ``object`` 6 shape x texture classes and one composite,
    ``part`` that composite's 2 part classes."""
    check_fold(fold)
    _check_args(1, 32, 1, kind)
    composite = tuple(COMPOSITES)[fold]
    if kind == "part":
        return tuple(c for c in PART_CLASSES if c.startswith(composite + "/"))
    shape_texture = tuple(f"{TEXTURES[(s + fold) % len(TEXTURES)]}-{shape}" for s, shape in enumerate(SHAPES))
    return shape_texture + (composite,)


def base_classes(fold: int, kind: str = "object") -> tuple:
    """Every class of ``kind`` that fold ``fold`` does not hold out."""
    novel = novel_classes(fold, kind)
    return tuple(c for c in (ALL_CLASSES if kind == "object" else PART_CLASSES) if c not in novel)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "rect":
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == "triangle":
        return (v <= 0.5) & (v >= -1.0 + 1.732 * np.abs(u))
    if shape == "star":
        r = np.hypot(u, v)
        return r <= 0.62 + 0.38 * np.cos(5 * np.arctan2(v, u) + np.pi / 2)
    if shape == "hexagon":
        return np.maximum.reduce([np.abs(u), np.abs(0.5 * u + 0.866 * v), np.abs(0.5 * u - 0.866 * v)]) <= 0.9
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.33) & (av <= 0.95)) | ((av <= 0.33) & (au <= 0.95))
    if shape == "halfdisc":
        return (u * u + v * v <= 1.0) & (v <= 0.0)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    """Binary pattern in pixel units of the object's rotated frame (a, b)."""
    if texture == "stripes":
        return np.mod(a, period) < period / 2
    if texture == "checks":
        return (np.floor(a / period) + np.floor(b / period)) % 2 == 0
    if texture == "dots":
        da, db = np.mod(a, period) - period / 2, np.mod(b, period) - period / 2
        return da * da + db * db < (0.32 * period) ** 2
    if texture == "rings":
        return np.mod(np.hypot(a, b), period) < period / 2
    raise ValueError(f"unknown texture {texture!r}")


def random_colour(rng: np.random.Generator, saturation=(0.55, 1.0), value=(0.45, 1.0)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb) * 255.0


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of one instance; far enough apart that its texture is visible."""
    first = random_colour(rng)
    while True:
        second = random_colour(rng, value=(0.15, 0.9))
        if np.abs(first - second).sum() > 180:
            return first, second


@dataclass
class Instance:
    """A named visible mask in a scene (an object or a part)."""

    name: str
    mask: np.ndarray


@dataclass
class Scene:
    image: np.ndarray
    objects: list
    parts: list


def _primitives(name: str) -> tuple:
    if name in COMPOSITES:
        return COMPOSITES[name]
    texture, shape = name.split("-")
    return (Primitive(name, shape, texture, (0.0, 0.0), (1.0, 1.0)),)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    low = rng.random((4, 4))
    ramp = np.linspace(0, 3, size)
    i0 = np.clip(ramp.astype(int), 0, 2)
    f = ramp - i0
    rows = low[i0] * (1 - f)[:, None] + low[i0 + 1] * f[:, None]
    blend = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    c1 = random_colour(rng, saturation=(0.0, 0.35), value=(0.3, 0.9))
    c2 = random_colour(rng, saturation=(0.0, 0.35), value=(0.3, 0.9))
    return blend[..., None] * c1 + (1 - blend[..., None]) * c2


@dataclass
class _Placement:
    name: str
    centre: tuple
    radius: float
    angle: float


def _window(place: _Placement, size: int) -> tuple:
    """Row and column slices of the image that hold every pixel the placement can cover."""
    reach = max(max(abs(p.offset[0]) + p.scale[0], abs(p.offset[1]) + p.scale[1]) for p in _primitives(place.name))
    half = np.sqrt(2.0) * 1.1 * reach * place.radius + 2  # a rotated frame; shapes reach 1.04 of their scale
    (x0, x1), (y0, y1) = ((int(max(0, np.floor(c - half))), int(min(size, np.ceil(c + half)))) for c in place.centre)
    return slice(y0, y1), slice(x0, x1)


def _primitive_layers(place: _Placement, rows: slice, cols: slice):
    """(primitive, inside, a, b) per primitive over the window: its mask and the pixel coordinates
    (a, b) of its own rotated frame, for the texture."""
    yy, xx = np.mgrid[rows, cols].astype(np.float64) + 0.5
    cos, sin = np.cos(place.angle), np.sin(place.angle)
    dx, dy = xx - place.centre[0], yy - place.centre[1]
    a, b = cos * dx + sin * dy, -sin * dx + cos * dy
    for prim in _primitives(place.name):
        pa = a - prim.offset[0] * place.radius
        pb = b - prim.offset[1] * place.radius
        inside = _shape_mask(prim.shape, pa / (prim.scale[0] * place.radius), pb / (prim.scale[1] * place.radius))
        yield prim, inside, pa, pb


def _render(rng: np.random.Generator, size: int, placements: list) -> Scene:
    """Paint the placements in order (later ones occlude earlier ones); each only over its window."""
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)
    part_owner = np.full((size, size), -1, dtype=np.int32)
    part_names = []
    for index, place in enumerate(placements):
        rows, cols = _window(place, size)
        # textures scale with the image, so a 512-px render resized to 128 px looks like a 128-px one
        period = rng.uniform(5.0, 8.0) * size / REFERENCE_SIZE
        part_ids = {}
        for prim, inside, pa, pb in _primitive_layers(place, rows, cols):
            if prim.part not in part_ids:
                part_ids[prim.part] = (len(part_names), _colour_pair(rng))
                part_names.append(f"{place.name}/{prim.part}" if place.name in COMPOSITES else place.name)
            pid, (c1, c2) = part_ids[prim.part]
            pattern = _texture(prim.texture, pa[inside], pb[inside], period)
            canvas[rows, cols][inside] = np.where(pattern[:, None], c1, c2)
            owner[rows, cols][inside] = index
            part_owner[rows, cols][inside] = pid
    canvas += rng.normal(0.0, 6.0, canvas.shape)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    objects = [Instance(p.name, owner == i) for i, p in enumerate(placements)]
    parts = [Instance(n, part_owner == i) for i, n in enumerate(part_names) if "/" in n]
    return Scene(image, objects, parts)


def _full_area(name: str, radius: float, size: int) -> float:
    """Pixel area of an unoccluded instance: the target's visibility is measured against it."""
    place = _Placement(name, (size / 2, size / 2), radius, 0.0)
    union = None
    for _, inside, _, _ in _primitive_layers(place, *_window(place, size)):
        union = inside if union is None else union | inside
    return float(union.sum())


def _related(target: str, rng: np.random.Generator, pool: tuple) -> list:
    """Distractor candidates from ``pool`` that share the target's shape or texture (its hardest confusers)."""
    if target in COMPOSITES:
        textures = {p.texture for p in COMPOSITES[target]}
        return [c for c in OBJECT_CLASSES if c in pool and c.split("-")[0] in textures]
    texture, shape = target.split("-")
    same_shape = [c for c in OBJECT_CLASSES if c in pool and c != target and c.endswith(f"-{shape}")]
    same_texture = [c for c in OBJECT_CLASSES if c in pool and c != target and c.startswith(f"{texture}-")]
    return [same_shape[rng.integers(len(same_shape))], same_texture[rng.integers(len(same_texture))]]


def _scene_with(rng: np.random.Generator, target: str, size: int, min_visible: float = 0.6,
                pool: tuple = ALL_CLASSES) -> Scene:
    """A scene holding one instance of ``target`` (index 0 in ``objects`` order of drawing) and 1-4
    distractors drawn from ``pool``."""
    others = [c for c in pool if c != target]
    for _ in range(100):
        n_distract = int(rng.integers(1, 5))
        related = _related(target, rng, pool)
        names = [related[i % len(related)] if rng.random() < 0.6 else others[rng.integers(len(others))]
                 for i in range(n_distract)]
        radius = rng.uniform(0.17, 0.28) * size if target in COMPOSITES else rng.uniform(0.12, 0.22) * size
        margin = radius * 0.9
        target_place = _Placement(target, tuple(rng.uniform(margin, size - margin, 2)), radius, rng.uniform(0, 2 * np.pi))
        places = [
            _Placement(n, tuple(rng.uniform(0, size, 2)), rng.uniform(0.08, 0.18) * size, rng.uniform(0, 2 * np.pi))
            for n in names
        ]
        order = int(rng.integers(0, len(places) + 1))
        places.insert(order, target_place)
        scene = _render(rng, size, places)
        visible = scene.objects[order].mask.sum()
        if visible >= min_visible * _full_area(target, radius, size):
            if target in COMPOSITES:
                mine = [p for p in scene.parts if p.name.startswith(target + "/")]
                if len({p.name for p in mine if p.mask.sum() >= 0.3 * visible / len(COMPOSITES[target])}) < len(
                    {p.part for p in COMPOSITES[target]}
                ):
                    continue
            scene.objects.insert(0, scene.objects.pop(order))
            return scene
    raise RuntimeError(f"could not place a visible {target!r} in 100 tries")


def _target_mask(scene: Scene, class_name: str, kind: str) -> np.ndarray:
    if kind == "object":
        return scene.objects[0].mask
    mask = np.zeros(scene.image.shape[:2], dtype=bool)
    for part in scene.parts:
        if part.name == class_name:
            mask |= part.mask
    return mask


def _check_args(n: int, size: int, shots: int, kind: str) -> None:
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(shots) != shots or shots <= 0:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and at least 32, got {size!r}")
    if kind not in ("object", "part"):
        raise ValueError(f"kind must be 'object' or 'part', got {kind!r}")


def episode(seed: int, index: int, kind: str = "object", shots: int = 1, size: int = 128,
            fold: int | None = None) -> Episode:
    """The ``index``-th evaluation episode of ``seed`` (independent of how many are drawn); with
    ``fold``, of a class that fold holds out (distractors may be of any class, as in a real image)."""
    _check_args(1, size, shots, kind)
    check_fold(fold)
    key = [EVAL_STREAM, seed, index, 0 if kind == "object" else 1, shots, size]
    classes = ALL_CLASSES if kind == "object" else PART_CLASSES
    if fold is not None:
        key.append(fold)
        classes = novel_classes(fold, kind)
    rng = np.random.default_rng(key)
    class_name = classes[rng.integers(len(classes))]
    holder = class_name if kind == "object" else class_name.split("/")[0]
    scenes = [_scene_with(rng, holder, size) for _ in range(shots + 1)]
    masks = [_target_mask(s, class_name, kind) for s in scenes]
    fold_tag = "" if fold is None else f"f{fold}-"
    return Episode(
        support_images=tuple(s.image for s in scenes[:shots]),
        support_masks=tuple(masks[:shots]),
        query_image=scenes[-1].image,
        query_mask=masks[-1],
        class_name=class_name,
        kind=kind,
        name=f"shapeworld-{kind}-{fold_tag}s{seed}-{index}",
    )


def episodes(n: int, seed: int = 0, kind: str = "object", shots: int = 1, size: int = 128,
             fold: int | None = None) -> list:
    """``n`` seeded evaluation episodes (of fold ``fold``'s novel classes if given): same arguments, identical arrays."""
    _check_args(n, size, shots, kind)
    return [episode(seed, i, kind, shots, size, fold) for i in range(n)]


def training_scene(seed: int, index: int, size: int = 128, fold: int | None = None) -> Scene:
    """The ``index``-th training scene of ``seed``: 2-5 random instances, composites included;
    with ``fold``, every instance (distractors too) of a base class of that fold."""
    _check_args(1, size, 1, "object")
    check_fold(fold)
    key = [TRAIN_STREAM, seed, index, size] + ([] if fold is None else [fold])
    pool = ALL_CLASSES if fold is None else base_classes(fold)
    rng = np.random.default_rng(key)
    target = pool[rng.integers(len(pool))]
    return _scene_with(rng, target, size, min_visible=0.4, pool=pool)


def training_scenes(n: int, seed: int = 0, size: int = 128, fold: int | None = None) -> list:
    """``n`` seeded training scenes from the training stream (see :func:`training_scene`)."""
    _check_args(n, size, 1, "object")
    return [training_scene(seed, index, size, fold) for index in range(n)]
