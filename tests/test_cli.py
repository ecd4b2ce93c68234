"""The ``prmagic`` command's help: every command listed, every flag explained, defaults shown."""
import argparse

import pytest

from prmagic_core.cli import build_parser, card_lines
from prmagic_core.evaluation import bto_table


def subcommands():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action


def test_top_help_lists_every_command_with_a_line():
    action = subcommands()
    listed = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(listed) == set(action.choices)
    assert all(text and text.strip() for text in listed.values()), listed
    text = build_parser().format_help()
    assert all(name in text for name in action.choices)


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
