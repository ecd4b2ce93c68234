import numpy as np
import pytest
import torch

from prmagic_core.baselines import PerSAMF
from prmagic_core.data import shapeworld
from prmagic_core.models.encoding import Encoder
from prmagic_core.push import ARMS, push, top_region
from prmagic_core.refine import DecodeMemo, refine


@pytest.fixture(scope="module")
def setting(random_tiny):
    episode = shapeworld.episodes(1, seed=3)[0]
    prompter = PerSAMF(train_iters=20).prepare(Encoder(random_tiny), episode.support_images, episode.support_masks,
                                               episode.query_image)
    return prompter, episode


def test_top_region_holds_the_asked_share_of_the_map():
    similarity = torch.arange(100.0).reshape(10, 10)
    region = top_region(similarity, 0.05)
    assert region.sum() == 5 and region.ravel()[-5:].all()
    assert top_region(similarity, 1e-9).sum() == 1  # never empty


def test_a_zero_step_changes_nothing_and_the_gradient_raises_d_phi_first(setting):
    prompter, episode = setting
    memo = DecodeMemo(prompter)
    rows = push(prompter, memo, episode.query_mask, norms=[0.0, 1e-3], generator=torch.Generator().manual_seed(5))
    assert [(r["arm"], r["norm"]) for r in rows] == [(a, n) for a in ARMS for n in (0.0, 1e-3)]
    for r in rows[::2]:  # norm 0
        assert r["top_iou"] == 1.0 and r["peak_shift"] == 0.0 and r["prompts_moved"] == 0
        assert r["d_phi_same_prompts"] == pytest.approx(0.0, abs=1e-3) and r["d_phi_next"] == 0.0 and r["iou_next"] == 0.0
    small = {r["arm"]: r for r in rows[1::2]}
    # first order: a step of norm h along the gradient raises d_phi by about h * |grad|, more than any other unit step
    grad = memo(refine(prompter, 0, generator=torch.Generator().manual_seed(5)).steps[0].prompts,
                prompter.similarity(prompter.query.embedding), "sum")[3]
    assert small["gradient"]["d_phi_same_prompts"] == pytest.approx(1e-3 * float(grad.norm()), rel=0.1)
    assert small["gradient"]["d_phi_same_prompts"] > max(small[a]["d_phi_same_prompts"] for a in ("sign", "random"))


def test_push_starts_from_the_trajectorys_first_prompts(setting):
    prompter, episode = setting
    memo = DecodeMemo(prompter)
    refine(prompter, 1, generator=torch.Generator().manual_seed(9), memo=memo)  # decodes its first prompts on z0, with a gradient
    calls = memo.calls
    push(prompter, memo, episode.query_mask, norms=[0.0], arms=("gradient",), generator=torch.Generator().manual_seed(9))
    assert memo.calls == calls  # the same prompts, so nothing new to decode
    with pytest.raises(ValueError, match="unknown arms"):
        push(prompter, memo, episode.query_mask, norms=[1.0], arms=("uphill",))
