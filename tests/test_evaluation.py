"""Evaluation runs through the CLI: resume after SIGKILL, settings checks, failed episodes,
two torchrun ranks against one process, a miniature FSS-1000, and the paper-table script."""
import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prmagic_core
from prmagic_core import distributed
from prmagic_core.baselines import PerSAMF
from prmagic_core.cli import main
from prmagic_core.data.benchmarks import load_benchmark
from prmagic_core.evaluation import accumulate, bto_table, evaluate, paired_differences, shard_path, summarise
from prmagic_core.models.encoding import Encoder

ROOT = Path(prmagic_core.__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Few iterations of PerSAM-F's fit and SAM-Tiny's own input size: the plumbing is under test.
TINY_RUN = ["evaluate", "--backend", "tiny", "--baseline", "persam_f", "--episodes", "6", "--steps", "1",
            "--persam-f-iters", "20", "--image-size", "128", "--device", "cpu"]


def run_cli(*argv) -> tuple[int, dict | None, str]:
    """In-process ``prmagic``: (exit code, the --json summary or None, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err.getvalue()


def read_table(path) -> list:
    """A results CSV's rows sorted by episode, without the timings (the only thing allowed to differ)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    return sorted(rows, key=lambda row: row["episode"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run: (results path, its summary)."""
    out = tmp_path_factory.mktemp("reference") / "results.csv"
    code, summary, _ = run_cli(*TINY_RUN, "--out", str(out), "--json")
    assert code == 0 and summary["episodes"] == 6
    return out, summary


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_table(reference, tmp_path):
    out = tmp_path / "results.csv"
    command = [sys.executable, "-m", "prmagic_core.cli", *TINY_RUN, "--out", str(out), "--json"]
    run = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(read_table(out)) < 2:
            assert run.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no two rows within 120 s"
            time.sleep(0.02)
    finally:
        run.kill()  # SIGKILL
        run.wait()
    assert 2 <= len(read_table(out)) < 6
    code, summary, _ = run_cli(*TINY_RUN, "--out", str(out), "--json")
    assert code == 0
    assert read_table(out) == read_table(reference[0])
    assert summary == reference[1]


def test_other_settings_on_an_existing_file_are_refused_in_one_line(reference, tmp_path):
    out = tmp_path / "results.csv"
    for suffix in ("", ".settings.json"):
        shutil.copy(f"{reference[0]}{suffix}", f"{out}{suffix}")
    before = out.read_bytes()
    code, _, err = run_cli(*TINY_RUN, "--steps", "2", "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("prmagic evaluate: error:") and "steps: file 1 vs now 2" in err
    assert out.read_bytes() == before


def write_fss(root: Path, classes=("cat", "dog", "eel"), size=32, empty=()) -> Path:
    """A miniature FSS-1000: random pixels, random masks; ``empty`` lists (class, n) whose mask is empty."""
    rng = np.random.default_rng(7)
    for name in classes:
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for n in range(1, 11):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{n}.jpg")
            mask = rng.random((size, size)) < 0.4
            mask[size // 2, size // 2] = True
            if (name, n) in empty:
                mask[:] = False
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{n}.png")
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("\n".join(classes) + "\n")
    return root


def write_dis5k(root: Path, groups=("DIS-TE1", "DIS-TE2"), images=3) -> Path:
    rng = np.random.default_rng(8)
    for group in groups:
        for n in range(images):
            for part in ("im", "gt"):
                (root / "Test" / part / group).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(root / "Test/im" / group / f"{n}.jpg")
            Image.fromarray((rng.random((12, 20)) < 0.5).astype(np.uint8) * 255).save(root / "Test/gt" / group / f"{n}.png")
    return root


def test_episodes_whose_files_cannot_be_used_are_failed_rows(random_tiny, tmp_path):
    # Empty masks: an episode that picks one of them as its support cannot be built (BenchmarkError).
    root = write_fss(tmp_path, classes=("cat",), size=16, empty={("cat", n) for n in range(1, 6)})
    episodes = load_benchmark("fss", root, size=None)

    def loads(index):
        try:
            episodes[index]
        except Exception:
            return False
        return True

    unusable = {episodes.episode_ids[i] for i in range(len(episodes)) if not loads(i)}
    assert 0 < len(unusable) < len(episodes)
    rows = evaluate(PerSAMF(train_iters=2), Encoder(random_tiny), episodes, steps=1, progress=False)
    assert {r["episode"] for r in rows if r["status"] == "failed"} == unusable
    assert all(r["reason"].startswith("BenchmarkError: ") for r in rows if r["status"] == "failed")
    accs = accumulate(rows)
    assert accs["top1"].episodes == len(episodes) - len(unusable)
    assert len(accs["top1"].failures) == len(unusable)


def test_paired_differences_compare_each_episode_with_itself():
    def row(b, t, o, status="ok"):  # foreground IoU b / 10 etc.: [I_fg, U_fg, I_bg, U_bg]
        return {"status": status, "class": "c", "reason": "", **{f"counts_{v}": json.dumps([x, 10, 5, 5])
                                                                  for v, x in (("baseline", b), ("top1", t), ("oracle", o))}}

    rows = [row(5, 6, 7), row(5, 4, 6), row(5, 5, 5), row(1, 1, 1, "failed")]
    diffs = paired_differences(rows)
    assert diffs["t_minus_b"]["mean"] == 0.0 and diffs["t_minus_b"]["low"] < 0 < diffs["t_minus_b"]["high"]
    assert diffs["o_minus_b"]["mean"] == 10.0 and diffs["o_minus_b"]["low"] >= 0  # the oracle never loses
    assert diffs["o_minus_b"]["clusters"] == 3  # failed episodes have no masks to compare
    summary = summarise(accumulate(rows[:3]), {"steps": 1}, rows[:3])
    assert "T - B: +0.00 foreground-IoU points per episode" in bto_table(summary)
    assert paired_differences([]) == {}


def test_outside_torchrun_the_process_group_calls_are_no_ops(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup("cpu") == (0, 1, torch.device("cpu"))
    rows = [{"episode": "a"}, {"episode": "b"}]
    assert distributed.gather_rows(rows) == rows
    distributed.teardown()
    assert not torch.distributed.is_initialized()


def test_two_torchrun_ranks_give_the_rows_and_summary_of_one_process(reference, tmp_path):
    out = tmp_path / "results.csv"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "prmagic_core.cli", *TINY_RUN, "--out", str(out), "--json"]
    done = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == reference[1]
    assert read_table(out) == read_table(reference[0])
    with open(reference[0], newline="") as f:
        order = [row["episode"] for row in csv.DictReader(f)]
    for rank in (0, 1):
        shard = read_table(shard_path(out, rank, 2))
        assert sorted(row["episode"] for row in shard) == sorted(order[rank::2])


def test_a_miniature_fss_1000_gives_30_episodes(tmp_path):
    root = write_fss(tmp_path / "fss")
    code, summary, err = run_cli("evaluate", "--dataset", "fss", "--data-root", str(root), "--backend", "tiny",
                                 "--baseline", "persam_f", "--steps", "1", "--seed", "0", "--json",
                                 "--persam-f-iters", "5", "--device", "cpu")
    assert code == 0
    assert (summary["episodes"], summary["failed_episodes"]) == (30, 0)
    assert summary["settings"]["dataset"] == "fss" and summary["settings"]["episodes"] == 30
    assert "30 episodes (0 failed)" in err


@pytest.fixture(scope="module")
def paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "scripts" / "paper_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_paper_table_dry_run_plans_every_fold_and_seed(paper_table, tmp_path, capsys):
    data = tmp_path / "data"
    write_fss(data / "fss")
    write_dis5k(data / "dis5k")
    code = paper_table.main(["--out-dir", str(tmp_path / "out"), "--data-root", str(data),
                             "--baselines", "persam_f", "--dry-run"])
    assert code == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    # columns: baseline benchmark folds cells episodes done left s/episode GPU-hours
    plan = {row[1]: row[2:7] for row in rows if row and row[0] == "persam_f"}
    assert plan == {"fss": ["1", "5", str(5 * 30), "0", str(5 * 30)], "dis5k": ["1", "5", str(5 * 6), "0", str(5 * 6)]}
    total = next(row for row in rows if row and row[0] == "total")
    hours = 5 * (30 + 6) * paper_table.COST_MODEL["persam_f"] / 3600
    assert total[1:3] == ["10", "180"] and float(total[-1]) == round(hours, 1)
    assert ["skipped", "coco:"] in [row[:2] for row in rows]
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


def test_paper_table_runs_cells_writes_the_table_and_resumes(paper_table, tmp_path, capsys):
    fss = write_fss(tmp_path / "fss")
    out = tmp_path / "out"
    argv = ["--out-dir", str(out), "--root", f"fss={fss}", "--benchmarks", "fss", "--baselines", "persam_f",
            "--seeds", "42", "--episodes", "2",
            "--evaluate-args", "--backend tiny --steps 1 --persam-f-iters 5 --device cpu"]
    assert paper_table.main(argv) == 0
    accs = accumulate(read_table(out / "cells" / "persam_f" / "fss-fold0-seed42.csv"))
    with open(out / "table.csv", newline="") as f:
        table = {(r["metric"], r["variant"]): r for r in csv.DictReader(f) if r["benchmark"] == "fss"}
    for variant in ("baseline", "top1", "oracle"):
        assert float(table["miou", variant]["mean"]) == round(accs[variant].miou(), 2)
        assert float(table["episode_fb_miou", variant]["mean"]) == round(accs[variant].episode_fb_miou(), 2)
    assert "| PerSAM-F | " in (out / "table.md").read_text()
    # Complete cells are not run again: a launcher that cannot start proves it.
    before = (out / "table.csv").read_text()
    assert paper_table.main(argv + ["--launcher", str(tmp_path / "no-such-python")]) == 0
    assert (out / "table.csv").read_text() == before


def test_shapeworld_episodes_come_at_the_image_size_from_the_fold(tmp_path, monkeypatch):
    from prmagic_core.data import shapeworld

    out = tmp_path / "results.csv"
    code, summary, _ = run_cli("evaluate", "--backend", "tiny", "--baseline", "persam", "--episodes", "3", "--steps", "0",
                               "--image-size", "64", "--fold", "3", "--device", "cpu", "--out", str(out), "--json")
    assert code == 0 and summary["settings"]["image_size"] == 64 and summary["settings"]["fold"] == 3
    assert {row["class"] for row in read_table(out)} <= set(shapeworld.novel_classes(3))
    # Matcher and GF-SAM with DINO-Tiny refuse a fold none ships for (every other fold's saw its novel classes)
    from prmagic_core.baselines.matcher import features
    from prmagic_core.models import dino_tiny

    monkeypatch.setattr(dino_tiny, "WEIGHTS_DIR", tmp_path)
    for baseline in ("matcher", "gfsam"):
        code, _, err = run_cli("evaluate", "--backend", "tiny", "--baseline", baseline, "--matching-encoder",
                               "dino-tiny", "--episodes", "1", "--image-size", "64", "--fold", "3", "--device", "cpu")
        assert code == 2 and "no DINO-Tiny ships for fold 3" in err and len(err.strip().splitlines()) == 1
    # with fold 3's network (and no other) in place, they match with it
    torch.save(dino_tiny.build_dino_tiny().state_dict(), dino_tiny.dino_tiny_files(3)[0])
    code, summary, _ = run_cli("evaluate", "--backend", "tiny", "--baseline", "gfsam", "--matching-encoder", "dino-tiny",
                               "--episodes", "1", "--steps", "0", "--image-size", "64", "--fold", "3", "--device", "cpu",
                               "--json")
    features._dino_tiny.cache_clear()  # it holds the network just saved under tmp_path
    assert code == 0 and summary["settings"]["matching_encoder"] == "dino-tiny"


@pytest.mark.parametrize("selector", ["guarded", "vote", "oracle", "random"])
def test_evaluate_takes_any_selector_of_the_family(selector):
    run = ["evaluate", "--backend", "tiny", "--baseline", "persam", "--episodes", "2", "--steps", "2", "--eta", "0.5",
           "--device", "cpu", "--selector", selector, "--json"]
    code, summary, _ = run_cli(*run)
    assert code == 0 and summary["settings"]["selector"] == selector and summary["episodes"] == 2
    if selector == "oracle":
        assert summary["top1_miou"] == summary["oracle_miou"]


def test_an_unknown_selector_is_one_line():
    code, _, err = run_cli("evaluate", "--selector", "best-of-all", "--episodes", "1")
    assert code == 2 and "selector must be one of" in err and len(err.strip().splitlines()) == 1
