"""SAM-Tiny's mask decoder with SAM's own attention against :class:`ShortKeyAttention`, one run.

    python scripts/bench_attention.py

For each prompt shape (Matcher's batches of 8 subsets of 4, 5 or 6 points, PerSAM's single
2-point prompt) times one decoder call without a graph and one with its backward to the image
embedding, both attentions on the same weights and inputs, alternating, one torch thread.
Prints milliseconds per call, the ratio short-key / stock, the largest relative difference
of the logits, and a last line of JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from prmagic_core.models.loading import load_sam
from prmagic_core.models.tiny import build_sam_tiny

SHAPES = {"matcher 8 x 4 points": (8, 4), "matcher 8 x 5 points": (8, 5), "matcher 8 x 6 points": (8, 6),
          "persam 1 x 2 points": (1, 2)}


def decode(sam, embedding, coords, labels, backward: bool) -> torch.Tensor:
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    logits, _ = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    if backward:
        torch.autograd.grad(logits.sum(), embedding)
    return logits.detach()


def timed(sam, repeats: int, *args) -> tuple:
    decode(sam, *args)
    start = time.perf_counter()
    for _ in range(repeats):
        logits = decode(sam, *args)
    return (time.perf_counter() - start) / repeats * 1e3, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two attentions; the minimum is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sam = load_sam("tiny")  # the decoder's attention as ShortKeyAttention
    stock = build_sam_tiny().eval()  # SAM's own attention, the same weights
    stock.load_state_dict(sam.state_dict())
    models = {"stock": stock, "short_key": sam}
    side = sam.prompt_encoder.image_embedding_size
    results = {}
    for name, (batch, points) in SHAPES.items():
        coords, labels = torch.rand(batch, points, 2) * sam.image_encoder.img_size, torch.ones(batch, points)
        for backward in (False, True):
            embedding = torch.randn(1, sam.prompt_encoder.embed_dim, *side, requires_grad=backward)
            best = {}
            for _ in range(args.rounds):
                for which, model in models.items():
                    with torch.set_grad_enabled(backward):
                        ms, logits = timed(model, args.repeats, embedding, coords, labels, backward)
                    best[which] = min(best.get(which, (float("inf"),))[0], ms), logits
            stock, fast = best["stock"], best["short_key"]
            key = f"{name}, {'forward + backward' if backward else 'forward'}"
            results[key] = dict(stock_ms=round(stock[0], 2), short_key_ms=round(fast[0], 2),
                                ratio=round(fast[0] / stock[0], 3),
                                max_relative_difference=float((fast[1] - stock[1]).abs().max() / stock[1].abs().max()))
            print(f"{key:45s} stock {stock[0]:7.2f} ms  short-key {fast[0]:7.2f} ms  ratio {fast[0] / stock[0]:.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
