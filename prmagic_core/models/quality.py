"""How good is a SAM-Tiny? Promptable-segmentation quality on held-out ShapeWorld episodes.

The query image and ground truth of each evaluation episode (the evaluation stream, never
seen in training) is segmented through the stock ``SamPredictor``:

- ``point_miou``: objects, one positive point at the interior-most pixel of the ground
  truth (distance-transform maximum), the multimask output ranked first by the IoU head;
- ``part_point_miou``: the same on part episodes;
- ``box_miou``: objects, the ground truth's box, single-mask output.

Each number is the mean IoU over episodes, as a fraction in [0, 1].
"""
from __future__ import annotations

import numpy as np
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from ..data import shapeworld
from ..masks import box_of, interior_point, iou

EVAL_SEED = 1000


def _point_iou(predictor: SamPredictor, truth: np.ndarray) -> float:
    masks, scores, _ = predictor.predict(point_coords=interior_point(truth)[None], point_labels=np.array([1]),
                                         multimask_output=True)
    return iou(masks[int(np.argmax(scores))], truth)


def _box_iou(predictor: SamPredictor, truth: np.ndarray) -> float:
    masks, _, _ = predictor.predict(box=box_of(truth), multimask_output=False)
    return iou(masks[0], truth)


def evaluate_tiny(sam: Sam, episodes: int = 100, seed: int = EVAL_SEED, size: int | None = None,
                  progress: bool = False) -> dict:
    """Point / part-point / box mean IoU of ``sam`` on ``episodes`` held-out episodes of each kind,
    rendered at ``size`` px (default: the model's input side; the predictor resizes any size to it)."""
    from tqdm.auto import tqdm

    predictor = SamPredictor(sam)
    size = size or sam.image_encoder.img_size
    scores = {"point_miou": [], "box_miou": [], "part_point_miou": []}
    for kind in ("object", "part"):
        for ep in tqdm(shapeworld.episodes(episodes, seed=seed, kind=kind, size=size), disable=not progress, desc=kind):
            predictor.set_image(ep.query_image)
            if kind == "object":
                scores["point_miou"].append(_point_iou(predictor, ep.query_mask))
                scores["box_miou"].append(_box_iou(predictor, ep.query_mask))
            else:
                scores["part_point_miou"].append(_point_iou(predictor, ep.query_mask))
    result = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    result.update(episodes=episodes, seed=seed, image_size=size, metric="mean IoU over episodes (fraction)")
    return result
