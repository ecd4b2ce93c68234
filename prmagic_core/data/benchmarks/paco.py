"""PACO-Part (Matcher's protocol): 4 folds, 2500 episodes, each image cropped to its object's box.

Assumed files, as Matcher reads them: ``paco/paco_part_{train,val}.pkl`` each hold a dict with
``"cid2img"``: part category id -> list of one-entry dicts ``{image id: file name}``, and
``"img2anno"``: image id -> list of part annotations ``{"category_id", "obj_ann_id",
"obj_bbox" (x, y, w, h of the whole object), "segmentation"}``. The last two components of a
file name (``val2017/000000000139.jpg``) are taken relative to the root. The train pickle only
fixes the category order folds are dealt from; episodes come from the val pickle.
"""
from __future__ import annotations

from pathlib import Path

from ._base import Benchmark, EpisodePlan, Plan, draw_query_and_supports, read_pairs
from ._coco_masks import union_of_segmentations
from ._files import crop, fail, read_pickle, read_rgb

NUM_FOLDS = 4
EPISODES_PER_FOLD = 2500
LAYOUT = "train2017/, val2017/ (COCO 2017 images) and paco/paco_part_{train,val}.pkl"
EXPECTED_PICKLE = "Matcher's pickled dict with 'cid2img' and 'img2anno'"


def plan_episodes(root: Path, fold: int, shots: int, rng) -> Plan:
    train = _read_annotations(root / "paco" / "paco_part_train.pkl")
    val_path = root / "paco" / "paco_part_val.pkl"
    val = _read_annotations(val_path)
    categories = list(train["cid2img"])
    # Fold k tests train categories k, k + 4, ... that have enough distinct val images.
    dealt = [categories[fold + NUM_FOLDS * v] for v in range(len(categories) // NUM_FOLDS)]
    images_of = {cid: _distinct_images(val["cid2img"].get(cid, ()), val_path) for cid in dealt}
    fold_classes = [cid for cid in dealt if len(images_of[cid]) > shots]
    if not fold_classes:
        raise fail(val_path, f"no fold-{fold} category with more than {shots} images", EXPECTED_PICKLE)
    episodes = []
    for _ in range(EPISODES_PER_FOLD):
        # Matcher draws the category uniformly per episode, then the query and supports within it.
        cid = fold_classes[int(rng.integers(len(fold_classes)))]
        query, supports = draw_query_and_supports(rng, images_of[cid], shots)
        episodes.append(EpisodePlan(str(cid), cid, query, supports, f"{cid}-{Path(query[1]).stem}"))
    return Plan(episodes, tuple(str(cid) for cid in fold_classes), _loader(root, val["img2anno"], val_path))


def _read_annotations(path: Path) -> dict:
    annotations = read_pickle(path, EXPECTED_PICKLE)
    if not (isinstance(annotations, dict) and {"cid2img", "img2anno"} <= annotations.keys()):
        raise fail(path, "no 'cid2img' and 'img2anno' keys", EXPECTED_PICKLE)
    return annotations


def _distinct_images(entries, path: Path) -> list:
    """(image id, relative file name) pairs, each image once (the val lists repeat images)."""
    names = {}
    try:
        for entry in entries:
            ((image_id, file_name),) = entry.items()
            names.setdefault(image_id, "/".join(str(file_name).split("/")[-2:]))
    except (AttributeError, ValueError) as error:
        raise fail(path, f"bad 'cid2img' entry ({error})", "one-entry dicts {image id: file name}") from None
    return list(names.items())


def _loader(root: Path, annotations_of_image: dict, val_path: Path):
    def load(plan: EpisodePlan, rng):
        def read_pair(image_entry: tuple):
            image_id, name = image_entry
            image = read_rgb(root / name, "a COCO-2017 image named in paco_part_val.pkl")
            try:
                box, mask = _object_part_mask(annotations_of_image[image_id], plan.class_key, image.shape[:2], rng)
            except (KeyError, TypeError, ValueError) as error:
                problem = f"no usable part {plan.class_key} in image {image_id} ({error!r})"
                raise fail(val_path, problem, EXPECTED_PICKLE) from None
            return crop(image, *box), crop(mask, *box)

        return read_pairs(read_pair, plan)

    return load


def _object_part_mask(annotations: list, cid, shape: tuple, rng) -> tuple:
    """One object's box and its part mask, the object drawn among those having the part."""
    objects = {}
    for annotation in annotations:
        if annotation["category_id"] == cid:
            box, segmentations = objects.setdefault(annotation["obj_ann_id"], (annotation["obj_bbox"], []))
            segmentations.append(annotation["segmentation"])
    if not objects:
        raise ValueError(f"no annotation of category {cid}")
    box, segmentations = list(objects.values())[int(rng.integers(len(objects)))]
    x, y, w, h = box
    # Truncating x + w (not x and w apart) is how Matcher crops.
    return (int(x), int(y), int(x + w), int(y + h)), union_of_segmentations(segmentations, shape)


BENCHMARK = Benchmark("PACO-Part", "part", NUM_FOLDS, LAYOUT, plan_episodes)
