import copy

import pytest
import torch
from segment_anything.modeling.transformer import Attention

from prmagic_core.models.attention import SHORT, ShortKeyAttention, use_short_key_attention
from prmagic_core.models.loading import load_sam
from prmagic_core.models.tiny import build_sam_tiny


def _pair(downsample_rate: int = 2):
    torch.manual_seed(0)
    stock = Attention(64, 2, downsample_rate)
    short = copy.deepcopy(stock)
    short.__class__ = ShortKeyAttention
    return stock, short


@pytest.mark.parametrize("keys", [1, 7, 12, SHORT - 1])
def test_short_keys_give_sams_attention_up_to_rounding(keys):
    stock, short = _pair()
    q, k, v = torch.randn(3, 1024, 64), torch.randn(3, keys, 64), torch.randn(3, keys, 64)
    expected = stock(q, k, v)
    got = short(q, k, v)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the same math: in float64 the two layouts agree to float64 rounding
    torch.testing.assert_close(short.double()(q.double(), k.double(), v.double()),
                               stock.double()(q.double(), k.double(), v.double()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keys", [SHORT, 40, 1024])
def test_from_short_on_it_is_sams_attention_bit_for_bit(keys):
    stock, short = _pair()
    q, k, v = torch.randn(2, 9, 64), torch.randn(2, keys, 64), torch.randn(2, keys, 64)
    assert torch.equal(short(q, k, v), stock(q, k, v))


def test_gradients_match_sams_attention():
    stock, short = _pair()
    q, k, v = torch.randn(2, 256, 64), torch.randn(2, 9, 64), torch.randn(2, 9, 64)
    grads = []
    for module in (stock, short):
        x = q.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(x, k, v).square().sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def shipped_tiny():
    return load_sam("tiny")


def test_load_sam_swaps_only_the_decoders_attention_and_keeps_the_weights(shipped_tiny):
    decoder_attention = [m for m in shipped_tiny.mask_decoder.transformer.modules() if isinstance(m, Attention)]
    assert decoder_attention and all(type(m) is ShortKeyAttention for m in decoder_attention)
    assert not any(isinstance(m, Attention) for m in shipped_tiny.image_encoder.modules())
    stock = build_sam_tiny()
    stock.load_state_dict(shipped_tiny.state_dict())  # the same parameters under the same names


@pytest.mark.parametrize("points", [1, 4, 6, 20])
def test_a_decode_with_short_key_attention_equals_the_stock_decoders(shipped_tiny, points):
    stock = build_sam_tiny()
    stock.load_state_dict(shipped_tiny.state_dict())
    stock.eval()
    torch.manual_seed(1)
    embedding = torch.randn(1, 64, 32, 32, requires_grad=True)
    coords, labels = torch.rand(3, points, 2) * 128, torch.ones(3, points)
    results = []
    for sam in (shipped_tiny, stock):
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits, iou = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        (grad,) = torch.autograd.grad(logits.sum(), embedding)
        results.append((logits, iou, grad))
    for got, expected in zip(*results):  # rounding apart, elementwise checks would flag values near 0
        assert got.shape == expected.shape
        assert float((got - expected).norm() / expected.norm()) < 1e-5
