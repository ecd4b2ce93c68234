"""COCO-20i (HSNet's protocol): 1000 episodes per fold over the fold's 20 test classes.

Assumed files, as HSNet ships them: ``splits/val/fold<k>.pkl`` is a pickled dict from class
index c (0..79) to the names of the val images holding that class, each name relative to the
root (``val2014/COCO_val2014_000000000139.jpg``); its label map is the same name under
``annotations/`` with ``.png``, pixel value c + 1 marking class c and 0 background.
"""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_query_and_supports, read_pairs, unique
from ._files import fail, read_label_map, read_pickle, read_rgb

NUM_FOLDS = 4
EPISODES_PER_FOLD = 1000
LAYOUT = "train2014/, val2014/, annotations/{train,val}2014/<name>.png and splits/{trn,val}/fold{0-3}.pkl"
CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def fold_class_indices(fold: int) -> list:
    """HSNet's interleaved split: fold k tests classes k, k + 4, ..., k + 76."""
    return [fold + NUM_FOLDS * v for v in range(len(CLASS_NAMES) // NUM_FOLDS)]


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    split_file = root / "splits" / "val" / f"fold{fold}.pkl"
    expected = "HSNet's pickled dict: class index (0-79) -> list of image names"
    images_of_class = read_pickle(split_file, expected)
    class_indices = fold_class_indices(fold)
    candidates = {}
    for c in class_indices:
        if not isinstance(images_of_class, dict) or c not in images_of_class:
            raise fail(split_file, f"no image list for class {c} ({CLASS_NAMES[c]})", expected)
        candidates[c] = unique(images_of_class[c])
        if len(candidates[c]) <= shots:
            problem = f"only {len(candidates[c])} distinct images of class {c} ({CLASS_NAMES[c]})"
            raise fail(split_file, problem, f"more than {shots} for {shots}-shot episodes")
    episodes = []
    for _ in range(EPISODES_PER_FOLD):
        # HSNet draws the class uniformly per episode, then the query and supports within it.
        c = class_indices[int(rng.integers(len(class_indices)))]
        query, supports = draw_query_and_supports(rng, candidates[c], shots)
        episodes.append(EpisodePlan(CLASS_NAMES[c], c, query, supports, Path(query).stem))
    return Plan(episodes, tuple(CLASS_NAMES[c] for c in class_indices), _loader(root))


def _loader(root: Path):
    def load(plan: EpisodePlan, rng):
        def read_pair(name: str):
            image = read_rgb(root / name, "a COCO-2014 image named in the split pickle")
            label_path = (root / "annotations" / name).with_suffix(".png")
            labels = read_label_map(label_path, f"the COCO-20i label map of {name} (pixel = class + 1)")
            return image, labels == plan.class_key + 1

        return read_pairs(read_pair, plan)

    return load


BENCHMARK = Benchmark("COCO-20i", "object", NUM_FOLDS, LAYOUT, plan_episodes)
