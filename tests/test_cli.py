"""The ``prmagic`` command's help: every command listed, every flag explained, defaults shown."""
import argparse
import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prmagic_core.cli import TINY_ONLY_SHAPEWORLD, build_parser, card_lines, main
from prmagic_core.evaluation import bto_table
from prmagic_core.overlays import MASK_COLOUR, overlay_image


def subcommands():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action


def test_top_help_lists_every_command_with_a_line():
    action = subcommands()
    listed = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(listed) == set(action.choices)
    assert all(text and text.strip() for text in listed.values()), listed
    lines = build_parser().format_help().splitlines()
    for name, text in listed.items():  # the name and the start of its help on one line
        assert any(line.split()[:2] == [name, text.split()[0]] for line in lines if line.strip()), name


@pytest.mark.parametrize("command", sorted(subcommands().choices))
def test_every_flag_has_help_and_shows_its_default(command):
    parser = subcommands().choices[command]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"prmagic {command} {action.option_strings}: no help"
        if action.default not in (None, False, []):
            assert f"(default: {action.default})" in " ".join(text.split()), f"prmagic {command} {action.option_strings}"


def test_the_table_says_what_rows_and_columns_are():
    summary = {f"{v}_{m}": 10.0 * i + j for i, v in enumerate(("baseline", "top1", "oracle"))
               for j, m in enumerate(("miou", "fb_iou", "episode_fb_miou"))}
    summary.update(episodes=1, failed_episodes=0, settings={"baseline": "persam_f", "steps": 5, "selector": "pooled"})
    lines = bto_table(summary).splitlines()
    assert lines[0].startswith("1 episode (0 failed)") and "steps=5" in lines[0] and "in %" in lines[0]
    assert lines[1].split() == ["mIoU", "%", "FB-IoU", "%", "ep-FB-mIoU", "%"]
    assert lines[2].split()[0] == "B" and lines[2].split()[-3:] == ["0.00", "1.00", "2.00"]
    assert "pooled" in lines[3] and lines[3].split()[-3:] == ["10.00", "11.00", "12.00"]
    assert lines[4].split()[0] == "O" and lines[4].split()[-1] == "22.00"
    assert "class-wise" in lines[5]


def test_the_weights_card_reads_as_a_few_lines():
    card = {"command": "prmagic train-tiny --steps 3", "seed": 0, "steps": 3, "wall_seconds": 120, "final_loss": 0.5,
            "architecture": {"img_size": 128, "patch_size": 4, "encoder_dim": 64, "encoder_depth": 4, "embed_dim": 64,
                             "decoder_depth": 2},
            "evaluation": {"point_miou": 0.8896, "box_miou": 0.9, "episodes": 200, "metric": "mean IoU"}}
    lines = card_lines(card).splitlines()
    assert len(lines) == 3 and "2 min" in lines[0] and "point_miou 0.890" in lines[2] and "{" not in card_lines(card)


# ---------------------------------------------------------------- own photos: --save-masks and the tiny warning

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples" / "shapeworld"
QUICK = ["evaluate", "--steps", "1", "--persam-f-iters", "20", "--device", "cpu", "--episodes", "1"]


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def resized_episode(root: Path, side: int, query_mask: bool = True) -> Path:
    """The first shipped sample at ``side`` px: no longer ShapeWorld's 128-px world."""
    source = sorted(p for p in SAMPLES.iterdir() if p.is_dir())[0]
    folder = root / source.name
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix in (".png", ".jpg") and (query_mask or path.name != "query_mask.png"):
            resample = Image.NEAREST if "mask" in path.name else Image.BILINEAR
            Image.open(path).resize((side, side), resample).save(folder / path.name)
        elif path.suffix == ".txt":
            shutil.copy(path, folder / path.name)
    return folder


def test_save_masks_writes_every_candidate_and_b_t_o_as_overlays(tmp_path):
    episode = resized_episode(tmp_path / "data", 96)
    code, _, err = run(*QUICK, "--data", str(tmp_path / "data"), "--save-masks", str(tmp_path / "masks"), "--json")
    assert code == 0, err
    written = tmp_path / "masks" / episode.name
    names = sorted(p.name for p in written.iterdir())
    assert names == ["B.png", "O.png", "T.png", "candidate_0.png", "candidate_1.png"]
    assert all(Image.open(written / n).size == (96, 96) for n in names)
    same = lambda a, b: np.array_equal(np.asarray(Image.open(written / a)), np.asarray(Image.open(written / b)))  # noqa: E731
    assert same("B.png", "candidate_0.png")
    assert any(same("T.png", f"candidate_{t}.png") for t in (0, 1))
    assert err.count("SAM-Tiny (--backend tiny) was trained on ShapeWorld only") == 1
    assert "--checkpoint" in TINY_ONLY_SHAPEWORLD and "\n" not in TINY_ONLY_SHAPEWORLD


def test_an_unscored_photo_still_gets_its_masks(tmp_path):
    episode = resized_episode(tmp_path / "data", 96, query_mask=False)
    code, _, err = run(*QUICK, "--data", str(tmp_path / "data"), "--save-masks", str(tmp_path / "masks"))
    assert code == 1  # no episode could be scored
    assert sorted(p.name for p in (tmp_path / "masks" / episode.name).iterdir()) == ["B.png", "T.png", "candidate_0.png",
                                                                                     "candidate_1.png"]


def test_shapeworld_folders_get_no_tiny_warning(tmp_path):
    code, _, err = run(*QUICK, "--data", str(SAMPLES), "--json")
    assert code == 0 and "ShapeWorld only" not in err


def test_overlay_tints_the_mask_outlines_it_and_the_truth():
    image = np.full((9, 9, 3), 100, dtype=np.uint8)
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    truth = np.zeros((9, 9), bool)
    truth[0:9, 0:9] = True
    drawn = overlay_image(image, mask, truth, alpha=0.5)
    assert (drawn[2, 2] == MASK_COLOUR).all() and (drawn[4, 4] == np.round(0.5 * 100 + 0.5 * MASK_COLOUR)).all()
    assert (drawn[0, 4] == 255).all() and (drawn[1, 1] == 100).all()  # truth's border white, outside untouched
    with pytest.raises(ValueError, match="mask is"):
        overlay_image(image, mask[:5])
