"""Pascal-Part (Matcher's protocol): 4 folds, the animals, indoor, person and vehicles groups.

Assumed files under the VOC2010 root, as Matcher reads them: ``all_obj_part_to_image.json`` =
``{group: {"object": {object: {"part": {part: {"train": [image ids], "val": [image ids]}}}}}}``,
``Annotations_Part_json_merged_part_classes/<image id>.json`` = ``{"object": [{"name",
"bndbox": {"xmin", "ymin", "xmax", "ymax"}, "parts": [{"name", "mask": [RLE, ...]}]}]}`` and
``JPEGImages/<image id>.jpg``. A class is ``object+part``; episode i uses class i mod n, and
its images come from the class's val list, cropped to the chosen object's box.
"""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_query_and_supports, read_pairs, unique
from ._coco_masks import union_of_segmentations
from ._files import crop, fail, read_json, read_rgb

GROUPS = ("animals", "indoor", "person", "vehicles")
MAX_EPISODES = 2500
# Matcher leaves this class out of its evaluation.
EXCLUDED_CLASSES = {"aeroplane+TAIL"}
INDEX_FILE = "all_obj_part_to_image.json"
ANNOTATION_FOLDER = "Annotations_Part_json_merged_part_classes"
LAYOUT = f"JPEGImages/<id>.jpg, {ANNOTATION_FOLDER}/<id>.json and {INDEX_FILE}"
EXPECTED_INDEX = "{group: {'object': {object: {'part': {part: {'train': [ids], 'val': [ids]}}}}}}"
EXPECTED_ANNOTATION = "{'object': [{'name', 'bndbox', 'parts': [{'name', 'mask': [RLE, ...]}]}]}"


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    index_path = root / INDEX_FILE
    index = read_json(index_path, EXPECTED_INDEX)
    try:
        objects = index[GROUPS[fold]]["object"]
        listings = {f"{obj}+{part}": lists for obj, entry in objects.items() for part, lists in entry["part"].items()}
        # Matcher counts every val listing of the group, excluded classes included.
        num_episodes = min(MAX_EPISODES, sum(len(lists["val"]) for lists in listings.values()))
        candidates = {name: unique(lists["val"]) for name, lists in listings.items() if lists["train"]}
    except (KeyError, TypeError, AttributeError) as error:
        raise fail(index_path, f"unexpected structure ({error!r})", EXPECTED_INDEX) from None
    classes = [name for name, ids in candidates.items() if name not in EXCLUDED_CLASSES and len(ids) > shots]
    if not classes:
        raise fail(index_path, f"no {GROUPS[fold]} part with more than {shots} val images", EXPECTED_INDEX)
    episodes = []
    for index_in_fold in range(num_episodes):
        name = classes[index_in_fold % len(classes)]
        query, supports = draw_query_and_supports(rng, candidates[name], shots)
        episodes.append(EpisodePlan(name, tuple(name.split("+", 1)), query, supports, f"{name}-{query}"))
    return Plan(episodes, tuple(classes), _loader(root))


def _loader(root: Path):
    def load(plan: EpisodePlan, rng):
        def read_pair(image_id: str):
            image = read_rgb(root / "JPEGImages" / f"{image_id}.jpg", f"a VOC2010 image listed in {INDEX_FILE}")
            annotation_path = root / ANNOTATION_FOLDER / f"{image_id}.json"
            annotation = read_json(annotation_path, EXPECTED_ANNOTATION)
            try:
                box, mask = _object_part_mask(annotation, *plan.class_key, image.shape[:2], rng)
            except (KeyError, TypeError, ValueError) as error:
                raise fail(annotation_path, f"no usable {plan.class_name} ({error!r})", EXPECTED_ANNOTATION) from None
            return crop(image, *box), crop(mask, *box)

        return read_pairs(read_pair, plan)

    return load


def _object_part_mask(annotation: dict, obj: str, part: str, shape: tuple, rng) -> tuple:
    """One object's box and its part mask.

    Matcher draws among all objects of the class and redraws the image when the drawn object lacks
    the part; drawing only among objects that have it keeps the planned image, so plans stay valid.
    """
    holders = [o for o in annotation["object"] if o["name"] == obj and any(p["name"] == part for p in o["parts"])]
    if not holders:
        raise ValueError(f"no {obj} with a {part}")
    chosen = holders[int(rng.integers(len(holders)))]
    rles = [rle for p in chosen["parts"] if p["name"] == part for rle in p["mask"]]
    box = tuple(int(float(chosen["bndbox"][key])) for key in ("xmin", "ymin", "xmax", "ymax"))
    return box, union_of_segmentations(rles, shape)


BENCHMARK = Benchmark("Pascal-Part", "part", len(GROUPS), LAYOUT, plan_episodes)
