"""The encoder's batch is bounded by memory and never changes an embedding."""
import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from prmagic_core.data.shapeworld import episodes
from prmagic_core.models.encoding import Encoder, auto_batch, encoder_bytes_per_image
from prmagic_core.select import select


def test_batch_one_and_batch_n_give_identical_embeddings_and_selector_scores(random_tiny):
    episode = episodes(1, seed=2, size=512)[0]
    images = [episode.query_image, *episode.support_images, episode.query_image[::-1].copy()]
    one, many = Encoder(random_tiny, batch_size=1), Encoder(random_tiny, batch_size=3)
    for a, b in zip(one.encode_many(images), many.encode_many(images)):
        assert torch.equal(a.embedding, b.embedding)
    candidates = [episode.query_mask, episode.query_mask[::-1].copy(), ~episode.query_mask]
    for name in ("masked-image", "crop-pool"):
        picks = [select(name, candidates, e, e.encode(episode.query_image), episode.support_images,
                        episode.support_masks) for e in (one, many)]
        assert picks[0] == picks[1]


def test_automatic_batch_follows_the_memory_budget(random_tiny):
    vit_b = sam_model_registry["vit_b"]().image_encoder
    # vit_b at 1024 px: 12 heads x 4096^2 float32 scores, three copies at the peak of a global block
    assert encoder_bytes_per_image(vit_b) == 3 * 4 * 12 * 4096**2
    per_image_mb = encoder_bytes_per_image(random_tiny.image_encoder) / 2**20
    assert auto_batch(random_tiny, budget_mb=5.5 * per_image_mb) == 5
    assert auto_batch(random_tiny, budget_mb=per_image_mb / 10) == 1  # never below one image
    with pytest.raises(ValueError, match="at least 1"):
        Encoder(random_tiny, batch_size=0)


@pytest.mark.parametrize("with_box", [False, True])
def test_one_decoder_call_for_equal_sized_point_sets_equals_one_call_each(with_box):
    from prmagic_core.models import decoding
    from prmagic_core.models.decoding import Prompts
    from prmagic_core.models.loading import load_sam

    sam = load_sam("tiny")
    episode = episodes(1, seed=5, size=512)[0]
    query = Encoder(sam).encode(episode.query_image)
    rng = np.random.default_rng(0)
    sets = [Prompts(rng.uniform(0, 511, (4, 2)), np.ones(4)) for _ in range(5)]
    box = np.array([40.0, 60.0, 400.0, 380.0]) if with_box else None
    with torch.no_grad():
        batched = decoding.decode_many(sam, query.embedding, query, sets, box=box)
        single = [decoding.decode(sam, query.embedding, query, p, box=box) for p in sets]
    for a, b in zip(batched, single):  # batched matrix products round differently: ~1e-6 relative
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.iou, b.iou, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one length"):
        decoding.decode_many(sam, query.embedding, query, [sets[0], Prompts(np.zeros((2, 2)), np.ones(2))])
