"""PerSAM-F's fast weight fit against the plain autograd AdamW loop it replaces (kept as the reference)."""
import math

import pytest
import torch
import torch.nn.functional as F

from prmagic_core.baselines.mixing_fit import autograd_fit, fit_mixing_weights


def logit_maps(size: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Three smooth logit maps that disagree, and a disc mask they roughly follow; ``scale`` sets how
    many pixels saturate. One mask pixel sits at -120, where sigmoid underflows."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    truth = rows**2 + cols**2 < 0.3
    coarse = torch.randn(3, 1, 8, 8, generator=g)
    noise = F.interpolate(coarse, (size, size), mode="bilinear", align_corners=False)[:, 0]
    signed = (0.3 - rows**2 - cols**2) * scale
    outputs = torch.stack([signed * (0.6 + 0.4 * k) for k in range(3)]) + noise * scale / 4
    outputs[0, size // 2, size // 2] = -120.0
    return outputs.contiguous(), truth


@pytest.mark.parametrize("size,seed,scale,iters", [(64, 0, 8.0, 1000), (96, 1, 40.0, 1000),
                                                     (128, 2, 120.0, 600), (512, 3, 60.0, 150)])
def test_fast_fit_gives_the_plain_loops_weights_and_losses(size, seed, scale, iters):
    outputs, truth = logit_maps(size, seed, scale)
    weights, history = fit_mixing_weights(outputs, truth, iters)
    expected, expected_history = autograd_fit(outputs, truth, iters)
    assert weights.shape == (3,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(weights, expected, atol=1e-5, rtol=0), (weights, expected)
    assert (weights - torch.tensor([1 / 3] * 3)).abs().max() > 1e-2  # the fit really moved
    assert history == pytest.approx(expected_history, rel=1e-4, abs=1e-6)
    every_pixel, _ = fit_mixing_weights(outputs, truth, iters, saturated=math.inf)
    assert torch.allclose(every_pixel, weights, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fast_fit_equals_the_plain_loop_at_512_px_for_1000_iterations():
    outputs, truth = logit_maps(512, 4, 30.0)
    weights, _ = fit_mixing_weights(outputs, truth, 1000)
    expected, _ = autograd_fit(outputs, truth, 1000)
    assert torch.allclose(weights, expected, atol=1e-5, rtol=0), (weights, expected)
