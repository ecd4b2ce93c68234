"""GF-SAM on SAM-Tiny, at z0: `python scripts/gfsam_clusters.py object 20`. Why GF-SAM's B is what it is on SAM-Tiny features: per episode, points, clusters, merged points,
and the IoU of GF-SAM's mask, of the best single cluster's union, and of the union of all point masks."""
import sys, json, numpy as np, torch
from prmagic_core.baselines import GFSAM
from prmagic_core.data import shapeworld
from prmagic_core.masks import iou
from prmagic_core.models.encoding import Encoder, to_image_frame
from prmagic_core.models.loading import load_sam
torch.set_num_threads(1)
kind, n = sys.argv[1], int(sys.argv[2])
enc, b = Encoder(load_sam("tiny")), GFSAM()
out = []
for ep in shapeworld.episodes(n, seed=0, kind=kind):
    p = b.prepare(enc, ep.support_images, ep.support_masks, ep.query_image)
    S = p.similarity(p.z0); pr = p.sample_prompts(S, torch.Generator())
    with torch.no_grad():
        masks = (to_image_frame(p._point_logits(p.z0, pr.cells), p.query) > 0).numpy()
    d = p.decide(masks, pr)
    truth = ep.query_mask
    clusters = [iou(masks[d.labels == c].any(0), truth) for c in range(d.clusters)]
    hit = np.array([truth[int(y), int(x)] for x, y in pr.coords])
    out.append(dict(k=len(pr.cells), points_on_target=float(hit.mean()), clusters=d.clusters, merged=len(d.merged),
                    gfsam=iou(masks[d.merged].any(0), truth), best_cluster=max(clusters), all_points=iou(masks.any(0), truth)))
    print(json.dumps(out[-1]), flush=True)
print("MEAN", json.dumps({k: round(float(np.mean([o[k] for o in out])), 3) for k in out[0]}))
