"""SAM-Tiny: the official ``segment_anything`` architecture at laptop size.

It is an ordinary :class:`segment_anything.modeling.Sam` (so ``SamPredictor`` and every
piece of code written for SAM work on it unchanged), built with a 128-px input, 4-px
patches and a 32x32x64 image embedding. The weights shipped in ``weights/`` were trained
on ShapeWorld by ``prmagic train-tiny``; their card sits beside them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

TINY_CONFIG = dict(
    img_size=128,
    patch_size=4,
    encoder_dim=64,
    encoder_depth=4,
    encoder_heads=4,
    window_size=8,
    global_attn_indexes=(3,),
    embed_dim=64,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_heads=4,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
TINY_WEIGHTS = WEIGHTS_DIR / "sam_tiny.pt"
TINY_CARD = WEIGHTS_DIR / "sam_tiny.json"


def build_sam_tiny(config: dict = TINY_CONFIG) -> Sam:
    """A randomly initialised SAM-Tiny."""
    c = dict(TINY_CONFIG, **config)
    if c["img_size"] % c["patch_size"]:
        raise ValueError(f"img_size {c['img_size']} is not a multiple of patch_size {c['patch_size']}")
    grid = c["img_size"] // c["patch_size"]
    if grid % c["window_size"]:
        raise ValueError(f"the {grid}x{grid} token grid is not a multiple of window_size {c['window_size']}")
    encoder = ImageEncoderViT(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["encoder_dim"],
        depth=c["encoder_depth"],
        num_heads=c["encoder_heads"],
        mlp_ratio=4.0,
        out_chans=c["embed_dim"],
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=False,
        window_size=c["window_size"],
        global_attn_indexes=tuple(c["global_attn_indexes"]),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=c["embed_dim"],
        image_embedding_size=(grid, grid),
        input_image_size=(c["img_size"], c["img_size"]),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=c["decoder_depth"],
            embedding_dim=c["embed_dim"],
            mlp_dim=c["decoder_mlp_dim"],
            num_heads=c["decoder_heads"],
        ),
        transformer_dim=c["embed_dim"],
        iou_head_depth=3,
        iou_head_hidden_dim=c["embed_dim"],
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder)
