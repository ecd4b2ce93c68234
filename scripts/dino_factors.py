"""Does a DINO-Tiny read shape and texture on classes it never saw? The object heads of a training run,
applied to the mask-pooled query features of evaluation episodes, novel classes against base ones.

    python scripts/dino_factors.py runs/train-dino-tiny/checkpoint.pt --episodes 60

A novel class is a new combination of a shape and a texture seen in other classes: a readout right on
base classes and wrong on novel ones is a network that predicts one factor from the other.
"""
from __future__ import annotations

import argparse

import torch

from prmagic_core.data import shapeworld
from prmagic_core.models import dino_training
from prmagic_core.models.dino_quality import EVAL_SEED, _features
from prmagic_core.models.dino_tiny import build_dino_tiny


def readout(model, heads, draw, temperature: float) -> dict:
    right = {"shape": 0, "texture": 0}
    textured = 0
    for ep in draw:
        tokens, cover = _features(model, ep.query_image, ep.query_mask)
        pooled = (cover[:, None] * tokens).sum(0) / cover.sum()  # as training pools an instance
        shape, texture = dino_training.object_factors(shapeworld.ALL_CLASSES.index(ep.class_name))
        with torch.no_grad():
            right["shape"] += int(dino_training.object_logits(heads, "shape", pooled, temperature).argmax()) == shape
            if texture >= 0:
                right["texture"] += int(dino_training.object_logits(heads, "texture", pooled, temperature).argmax()) == texture
                textured += 1
    return {"shape": round(right["shape"] / len(draw), 3), "texture": round(right["texture"] / max(textured, 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a train-dino-tiny checkpoint.pt (it holds the heads)")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = torch.load(args.checkpoint, weights_only=True)
    model, heads = build_dino_tiny(), dino_training.make_heads(dino_training.DINO_TINY_CONFIG["embed_dim"])
    model.load_state_dict(state["model"])
    heads.load_state_dict(state["heads"])
    model.eval()
    fold = state["config"]["fold"]
    novel = shapeworld.episodes(args.episodes, seed=EVAL_SEED, size=args.size, fold=fold)
    pool = shapeworld.episodes(3 * args.episodes, seed=EVAL_SEED, size=args.size)
    base = [ep for ep in pool if ep.class_name not in shapeworld.novel_classes(fold)][: args.episodes]
    print(f"fold {fold}, {args.episodes} episodes each at {args.size} px: share read right by the object heads")
    for name, draw in (("novel", novel), ("base", base)):
        print(f"{name:>6}: {readout(model, heads, draw, state['config'].get('object_head_temperature', 0.0))}")


if __name__ == "__main__":
    main()
