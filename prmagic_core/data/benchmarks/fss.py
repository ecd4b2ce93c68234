"""FSS-1000: every image of every test class is a query once (240 classes x 10 images = 2400)."""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_supports, read_pairs
from ._files import fail, read_binary_mask, read_lines, read_rgb, require_dir

IMAGES_PER_CLASS = 10
LAYOUT = "data/<class>/<n>.jpg with mask <n>.png (n = 1..10), and splits/{trn,val,test}.txt listing class names"


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    split_file = root / "splits" / "test.txt"
    # Sorted as HSNet and Matcher sort them, so episodes come in their order.
    classes = tuple(sorted(read_lines(split_file, "the FSS-1000 test class names, one per line")))
    if not classes:
        raise fail(split_file, "no class names", "the FSS-1000 test class names, one per line")
    if shots >= IMAGES_PER_CLASS:
        expected = f"more than {shots} for {shots}-shot episodes"
        raise fail(root / "data", f"{IMAGES_PER_CLASS} images per class", expected)
    episodes = []
    for class_name in classes:
        folder = require_dir(root / "data" / class_name, f"an FSS-1000 class folder with {IMAGES_PER_CLASS} images")
        images = [folder / f"{n}.jpg" for n in range(1, IMAGES_PER_CLASS + 1)]
        for query_index, query in enumerate(images):
            supports = draw_supports(rng, images, query_index, shots)
            episodes.append(EpisodePlan(class_name, class_name, query, supports, f"{class_name}-{query.stem}"))
    return Plan(episodes, classes, _load)


def _read_pair(image_path: Path):
    image = read_rgb(image_path, "an FSS-1000 image data/<class>/<n>.jpg, n = 1..10")
    mask = read_binary_mask(image_path.with_suffix(".png"), f"the FSS-1000 mask of {image_path.name}")
    return image, mask


def _load(plan: EpisodePlan, rng):
    return read_pairs(_read_pair, plan)


BENCHMARK = Benchmark("FSS-1000", "object", 1, LAYOUT, plan_episodes)
