"""SAM's mask-decoder attention with the softmax laid out the way a CPU runs it fast.

In the decoder's image-to-token attention every image position (1024 on SAM-Tiny, 4096 on
SAM) attends to the few prompt tokens (5 output tokens plus the points: 7 to 12 keys). torch's
softmax over a last dimension shorter than a vector register falls back to a slow loop per
row: 2.9 ms for 8 x 2 x 1024 rows of 9 keys on one core, against 0.25 ms for the same
numbers softmaxed along the other axis of a (keys, queries) layout. Matcher decodes 24 such
prompt subsets per candidate, so that softmax alone was 15% of its trajectory.

:class:`ShortKeyAttention` computes the same attention with the scores laid out keys x queries
when there are fewer than :data:`SHORT` keys, and exactly as SAM does otherwise. The result
equals SAM's up to float rounding (summation order: about 1e-7 relative), not bit for bit.
"""
from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

SHORT = 16  # below this many keys the (keys, queries) layout is faster; from 16 on, torch vectorises the last dim


class ShortKeyAttention(Attention):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[1] >= SHORT:
            return super().forward(q, k, v)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        scores = k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])  # B x heads x keys x queries
        weights = torch.softmax(scores, dim=-2).transpose(-2, -1)
        return self.out_proj(self._recombine_heads(weights @ v))


def use_short_key_attention(sam: Sam) -> Sam:
    """``sam`` with every attention of its mask decoder computing as :class:`ShortKeyAttention`
    (same parameters, same state dict); returns ``sam``."""
    for module in sam.mask_decoder.transformer.modules():
        if type(module) is Attention:
            module.__class__ = ShortKeyAttention
    return sam
