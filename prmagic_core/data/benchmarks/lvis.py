"""LVIS-92i (Matcher's protocol): 10 folds, 2300 episodes per fold, classes visited in turn.

Assumed file, as Matcher reads it: ``lvis_val.pkl`` is a pickled dict from LVIS category id to
a dict from image name (relative to the root, e.g. ``val2017/000000000139.jpg``) to
``{"annotations": [{"segmentation": ...}, ...]}``, every annotation of that category in that
image; a segmentation is COCO polygons, an RLE or a mask array. The query or support mask is
the union of the image's annotations. Only the val pickle is needed for evaluation.
"""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_query_and_supports, read_pairs
from ._coco_masks import union_of_segmentations
from ._files import fail, read_pickle, read_rgb

NUM_FOLDS = 10
EPISODES_PER_FOLD = 2300
LAYOUT = "train2017/, val2017/ (COCO 2017 images) and lvis_{train,val}.pkl"
EXPECTED_PICKLE = "Matcher's pickled dict: category id -> {image name: {'annotations': [...]}}"


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    pickle_path = root / "lvis_val.pkl"
    annotations = read_pickle(pickle_path, EXPECTED_PICKLE)
    if not isinstance(annotations, dict):
        raise fail(pickle_path, f"a {type(annotations).__name__}", EXPECTED_PICKLE)
    # Matcher keeps the pickle's category order, drops categories too small for the shot count,
    # then deals the rest into folds: fold k gets categories k, k + 10, k + 20, ...
    usable = [cid for cid, images in annotations.items() if len(images) > shots]
    per_fold = len(usable) // NUM_FOLDS
    if per_fold == 0:
        raise fail(pickle_path, f"{len(usable)} categories with more than {shots} images", f"at least {NUM_FOLDS}")
    fold_classes = [usable[fold + NUM_FOLDS * v] for v in range(per_fold)]
    images_of = {cid: list(annotations[cid]) for cid in fold_classes}
    episodes = []
    for index in range(EPISODES_PER_FOLD):
        cid = fold_classes[index % per_fold]
        query, supports = draw_query_and_supports(rng, images_of[cid], shots)
        episodes.append(EpisodePlan(str(cid), cid, query, supports, f"{cid}-{Path(query).stem}"))
    return Plan(episodes, tuple(str(cid) for cid in fold_classes), _loader(root, annotations))


def _loader(root: Path, annotations: dict):
    def load(plan: EpisodePlan, rng):
        def read_pair(name: str):
            image = read_rgb(root / name, "a COCO-2017 image named in lvis_val.pkl")
            try:
                records = annotations[plan.class_key][name]["annotations"]
                mask = union_of_segmentations([r["segmentation"] for r in records], image.shape[:2])
            except (KeyError, TypeError, ValueError) as error:
                problem = f"no usable segmentation of category {plan.class_key} in {name} ({error!r})"
                raise fail(root / "lvis_val.pkl", problem, EXPECTED_PICKLE) from None
            return image, mask

        return read_pairs(read_pair, plan)

    return load


BENCHMARK = Benchmark("LVIS-92i", "object", NUM_FOLDS, LAYOUT, plan_episodes)
