import json
import shlex

import pytest
import torch

from prmagic_core.cli import main
from prmagic_core.models import training
from prmagic_core.models.training import TrainConfig, train

SMALL = dict(steps=4, scenes=4, images_per_step=2, targets_per_image=1, warmup=1, checkpoint_every=2)


def _weights(path):
    return torch.load(path, weights_only=True)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = TrainConfig(**SMALL)
    train(cfg, tmp_path / "whole", progress=False)

    real_loss = training.training_loss
    calls = {"n": 0}

    def dies_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "training_loss", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(training, "training_loss", real_loss)
    train(cfg, tmp_path / "resumed", resume=True, progress=False)

    whole, resumed = _weights(tmp_path / "whole" / "sam_tiny.pt"), _weights(tmp_path / "resumed" / "sam_tiny.pt")
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_resume_with_other_settings_is_an_error(tmp_path):
    train(TrainConfig(**SMALL), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(TrainConfig(**dict(SMALL, seed=1)), tmp_path, resume=True, progress=False)


def test_train_tiny_command_writes_weights_and_card(tmp_path, capsys):
    argv = ["train-tiny", "--out-dir", str(tmp_path / "a b"), "--steps", "2", "--scenes", "8", "--eval-episodes", "2",
            "--threads", "1"]
    assert main(argv) == 0
    card = json.loads((tmp_path / "a b" / "sam_tiny.json").read_text())
    assert shlex.split(card["command"]) == ["prmagic", *argv]  # called from Python, not a shell: main's own argv
    assert card["steps"] == 2 and card["seed"] == 0
    assert set(card["evaluation"]) >= {"point_miou", "part_point_miou", "box_miou"}
    assert all(0 <= card["evaluation"][k] <= 1 for k in ("point_miou", "part_point_miou", "box_miou"))
    assert (tmp_path / "a b" / "sam_tiny.pt").is_file() and (tmp_path / "a b" / "checkpoint.pt").is_file()


def test_too_few_scenes_is_a_clear_error(tmp_path, capsys):
    assert main(["train-tiny", "--out-dir", str(tmp_path), "--steps", "2", "--scenes", "4"]) == 2
    assert "scenes (4) must be at least images_per_step (8)" in capsys.readouterr().err
