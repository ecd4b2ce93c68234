import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from prmagic_core.data import shapeworld
from prmagic_core.models.loading import CheckpointError, guess_model_type, load_sam, read_state_dict
from prmagic_core.models.tiny import build_sam_tiny
from prmagic_core.models.training import ScenePool, training_loss


def test_sam_tiny_is_a_small_stock_sam(random_tiny):
    n_params = sum(p.numel() for p in random_tiny.parameters())
    assert 2e5 < n_params < 3e6
    assert type(random_tiny).__module__.startswith("segment_anything")


def test_sam_predictor_runs_on_sam_tiny(random_tiny):
    ep = shapeworld.episodes(1, seed=0)[0]
    predictor = SamPredictor(random_tiny)
    predictor.set_image(ep.query_image)
    assert predictor.features.shape == (1, 64, 32, 32)
    masks, scores, low = predictor.predict(point_coords=np.array([[60.0, 60.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 128, 128) and scores.shape == (3,) and low.shape == (3, 128, 128)


def test_bad_architecture_sizes():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_sam_tiny({"img_size": 130})
    with pytest.raises(ValueError, match="window_size"):
        build_sam_tiny({"img_size": 120, "patch_size": 4, "window_size": 8})


def test_a_few_dozen_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    model = build_sam_tiny()
    pool = ScenePool(4, seed=0, size=128)
    images, masks = pool.batch(np.random.default_rng(0), images=2, per_image=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        loss = training_loss(model, images, masks, np.random.default_rng([1, step % 2]), correction_prob=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_checkpoint_round_trip_and_clear_errors(tmp_path, random_tiny):
    good = tmp_path / "tiny.pt"
    torch.save(random_tiny.state_dict(), good)
    loaded = load_sam("tiny", good)
    for (k, a), b in zip(random_tiny.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert guess_model_type(read_state_dict(good)) == "tiny"

    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_sam("tiny", tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a PyTorch checkpoint"):
        load_sam("tiny", junk)
    with pytest.raises(CheckpointError, match=r"not a vit_b checkpoint: .*missing keys.*it is a tiny checkpoint"):
        load_sam("vit_b", good)
    partial = dict(random_tiny.state_dict())
    partial["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    bad = tmp_path / "bad.pt"
    torch.save(partial, bad)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e.g. mask_decoder.iou_token.weight"):
        load_sam("tiny", bad)
    with pytest.raises(CheckpointError, match="needs --checkpoint"):
        load_sam("vit_h")
    with pytest.raises(CheckpointError, match="unknown model type"):
        load_sam("vit_x", good)


def test_shipped_weights_reach_a_quality_floor():
    from prmagic_core.models.quality import evaluate_tiny

    sam = load_sam("tiny")
    result = evaluate_tiny(sam, episodes=12)
    # far above an untrained model (~0.05), well below the targets so the test is stable
    assert result["point_miou"] > 0.5
    assert result["box_miou"] > 0.6
    assert result["part_point_miou"] > 0.35


def test_info_reports_versions_weights_and_backends(capsys):
    import json

    from prmagic_core.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["tiny_weights_present"] and info["backends"]["tiny"] == "ready"
    assert info["segment_anything"] != "not installed" and info["torch"] == torch.__version__
    assert info["tiny_card"]["evaluation"]["point_miou"] >= 0.8
