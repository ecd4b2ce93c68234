"""DIS5K: every test image is a query once; a class is a group folder (DIS-TE1, ...)."""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_supports, read_pairs
from ._files import fail, read_binary_mask, read_rgb, require_dir

LAYOUT = "{Train,Test}/im/<group>/<name>.jpg with masks {Train,Test}/gt/<group>/<name>.png"


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    image_root = require_dir(root / "Test" / "im", "one folder of .jpg test images per DIS5K group")
    classes = tuple(sorted(folder.name for folder in image_root.iterdir() if folder.is_dir()))
    if not classes:
        raise fail(image_root, "no group folders", "one folder of .jpg test images per DIS5K group")
    episodes = []
    for group in classes:
        images = sorted((image_root / group).glob("*.jpg"))
        if len(images) <= shots:
            raise fail(image_root / group, f"{len(images)} .jpg images", f"more than {shots} for {shots}-shot episodes")
        for query_index, query in enumerate(images):
            supports = draw_supports(rng, images, query_index, shots)
            episodes.append(EpisodePlan(group, group, query, supports, f"{group}-{query.stem}"))
    return Plan(episodes, classes, _loader(root))


def _loader(root: Path):
    def read_pair(image_path: Path):
        image = read_rgb(image_path, "a DIS5K image Test/im/<group>/<name>.jpg")
        mask_path = root / "Test" / "gt" / image_path.parent.name / f"{image_path.stem}.png"
        return image, read_binary_mask(mask_path, f"the DIS5K mask of {image_path.name}")

    def load(plan: EpisodePlan, rng):
        return read_pairs(read_pair, plan)

    return load


BENCHMARK = Benchmark("DIS5K", "object", 1, LAYOUT, plan_episodes)
