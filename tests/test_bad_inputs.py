"""A census of bad inputs a user can produce, each fed through ``prmagic_core.cli.main``.

Every refused input must give exit code 2 and one line on stderr naming the file or argument,
with nothing on disk changed; a booby-trapped file must not run its code. Inputs that can be used
(16-bit, CMYK, RGBA images; grey-level masks; damaged results tables) must be read correctly,
with a warning naming the file where the input looks unintended.
"""
import contextlib
import csv
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prmagic_core import evaluation
from prmagic_core.cli import TINY_ONLY_SHAPEWORLD, main
from prmagic_core.data import shapeworld
from prmagic_core.data.benchmarks._pickles import DataUnpickler, RefusedGlobal
from prmagic_core.data.folder import load_episode, save_episode
from prmagic_core.models.tiny import TINY_WEIGHTS

# One ShapeWorld episode at 64 px, PerSAM (no fine-tuning), no flow step: the plumbing is under test.
EVALUATE = ["evaluate", "--baseline", "persam", "--steps", "0", "--device", "cpu"]
MARKER = "code-ran.txt"


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


PROGRESS = re.compile(r"\d+%\|")


def run(argv) -> tuple:
    """(exit code, stderr lines) of an in-process ``prmagic``, warnings printed as outside pytest."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = print_warning
        code = main([str(a) for a in argv])
    # Progress bars and the note that SAM-Tiny knows only ShapeWorld (about the backend, not the input) are not messages.
    return code, [line for line in err.getvalue().splitlines()
                  if line.strip() and not PROGRESS.search(line) and line != TINY_ONLY_SHAPEWORLD]


def snapshot(root: Path) -> dict:
    """Every file and link under ``root`` with its content hash (or link target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = "dir"
    return state


def episode_root(tmp_path: Path, episodes: int = 1) -> Path:
    root = tmp_path / "data"
    for i, episode in enumerate(shapeworld.episodes(episodes, seed=0, size=64)):
        save_episode(episode, root / f"ep{i}")
    return root


def folder_case(edit):
    """A case: one good folder episode changed by ``edit(episode_folder)``; returns (argv, named path)."""
    def build(tmp_path):
        root = episode_root(tmp_path)
        named = edit(root / "ep0")
        return [*EVALUATE, "--data", root], named
    return build


def write_bytes(name, data):
    def edit(folder):
        path, contents = folder / name, data(folder) if callable(data) else data
        for old in folder.glob(Path(name).stem + ".*"):
            old.unlink()
        path.write_bytes(contents)
        return path
    return edit


def truncated_png(folder):
    return (folder / "query.png").read_bytes()[:200]


def dangling_link(folder):
    (folder / "query.png").unlink()
    (folder / "query.png").symlink_to(folder / "nowhere.png")
    return folder / "query.png"


def folder_named_like_an_image(folder):
    (folder / "query.png").unlink()
    (folder / "query.png").mkdir()
    return folder / "query.png"


def link_loop(folder):
    loop = folder.parent / "loop"
    loop.symlink_to(loop)
    return loop


def second_query_image(folder):
    Image.open(folder / "query.png").convert("RGB").save(folder / "query.jpg")
    return folder / "query"


def resized_mask(folder):
    Image.new("L", (10, 10), 255).save(folder / "support_mask.png")
    return folder / "support_mask.png"


def empty_mask(folder):
    Image.new("L", (64, 64), 0).save(folder / "support_mask.png")
    return folder / "support_mask.png"


def thin_query(folder):
    Image.new("RGB", (3000, 4)).save(folder / "query.png")
    Image.new("L", (3000, 4)).save(folder / "query_mask.png")
    return ["episode ep0", "3000x4"]


def unlink(name):
    def edit(folder):
        (folder / name).unlink()
        return folder / name
    return edit


def argument_case(*extra):
    def build(tmp_path):
        return [*EVALUATE, "--data", episode_root(tmp_path), *extra], extra[0]
    return build


def checkpoint_case(write):
    def build(tmp_path):
        path = tmp_path / "model.pt"
        write(path)
        return [*EVALUATE, "--data", episode_root(tmp_path), "--checkpoint", path], path
    return build


def nan_weights(path):
    state = torch.load(TINY_WEIGHTS, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    torch.save(state, path)


def code_running_pickle(path):
    path.write_bytes(pickle.dumps({"model": RunsCode(path.parent / MARKER)}))


def train_case(*flags, checkpoint=None):
    def build(tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        if checkpoint is not None:
            checkpoint(out / "checkpoint.pt")
        argv = ["train-tiny", "--out-dir", out, "--steps", "1", "--scenes", "8", "--eval-episodes", "1", *flags]
        return argv, out / "checkpoint.pt" if checkpoint is not None else flags[0]
    return build


def unfinished_run(path):
    torch.save({"step": 100, "config": {}}, path)


def results_case(edit_settings):
    def build(tmp_path):
        out = tmp_path / "out" / "results.csv"
        out.parent.mkdir()
        out.write_text("episode,class,kind,status\n")
        named = edit_settings(out)
        return [*EVALUATE, "--data", episode_root(tmp_path), "--out", out], named
    return build


def settings_file(text):
    def edit(out):
        path = out.with_name(out.name + ".settings.json")
        path.write_bytes(text)
        return path
    return edit


def garbage_table(tmp_path):
    root, out, _ = completed_run(tmp_path, episodes=1)
    out.write_bytes(bytes(range(256)) * 4)
    return [*EVALUATE, "--data", root, "--out", out], out


def out_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    return [*EVALUATE, "--data", episode_root(tmp_path), "--out", tmp_path / "notes.txt" / "results.csv"], "notes.txt"


def benchmark_pickle(relative, dataset):
    def build(tmp_path):
        root = tmp_path / dataset
        path = root / relative
        path.parent.mkdir(parents=True)
        path.write_bytes(pickle.dumps({0: [RunsCode(root / MARKER)]}))
        return [*EVALUATE, "--dataset", dataset, "--data-root", root], path
    return build


def fss_split_not_utf8(tmp_path):
    root = tmp_path / "fss"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test.txt").write_bytes(b"cat\n\xff\xfe dog\n")
    return [*EVALUATE, "--dataset", "fss", "--data-root", root], root / "splits" / "test.txt"


REFUSED = {
    # folder episodes
    "truncated-png": folder_case(write_bytes("query.png", truncated_png)),
    "text-as-jpg": folder_case(write_bytes("query.jpg", b"this is not a JPEG\n")),
    "zero-byte-image": folder_case(write_bytes("query.png", b"")),
    "dangling-link-image": folder_case(dangling_link),
    "folder-named-query.png": folder_case(folder_named_like_an_image),
    "two-query-images": folder_case(second_query_image),
    "mask-of-another-size": folder_case(resized_mask),
    "empty-support-mask": folder_case(empty_mask),
    "missing-support-mask": folder_case(unlink("support_mask.png")),
    "image-too-thin-for-the-encoder": folder_case(thin_query),
    "no-query-mask": folder_case(lambda folder: unlink("query_mask.png")(folder) and ["episode ep0", "query_mask.png"]),
    "class.txt-not-utf8": folder_case(write_bytes("class.txt", b"caf\xe9\n")),
    "class.txt-empty": folder_case(write_bytes("class.txt", b"\n")),
    "kind.txt-unknown": folder_case(write_bytes("kind.txt", b"objet\n")),
    "link-loop-under-data": folder_case(link_loop),
    "data-missing": lambda tmp_path: ([*EVALUATE, "--data", tmp_path / "nothing"], tmp_path / "nothing"),
    # arguments
    "eta-nan": argument_case("--eta", "nan"),
    "eta-negative": argument_case("--eta", "-1"),
    "gamma-inf": argument_case("--gamma", "inf"),
    "clip-nan": argument_case("--clip", "nan"),
    "episodes-0": argument_case("--episodes", "0"),
    "steps-negative": argument_case("--steps", "-1"),
    "episode-seed-negative": argument_case("--episode-seed", "-1"),
    "shots-0": argument_case("--shots", "0"),
    "device-unknown": argument_case("--device", "tpu"),
    "device-cuda-absent": argument_case("--device", "cuda:7"),
    # checkpoints
    "zero-byte-checkpoint": checkpoint_case(lambda path: path.write_bytes(b"")),
    "text-checkpoint": checkpoint_case(lambda path: path.write_text("weights\n")),
    "nan-weights": checkpoint_case(nan_weights),
    "code-running-checkpoint": checkpoint_case(code_running_pickle),
    "train-over-an-unfinished-run": train_case(checkpoint=unfinished_run),
    "train-resume-code-running-checkpoint": train_case("--resume", checkpoint=code_running_pickle),
    "train-resume-zero-byte-checkpoint": train_case("--resume", checkpoint=lambda path: path.write_bytes(b"")),
    "train-resume-foreign-checkpoint": train_case("--resume", checkpoint=lambda p: torch.save({"a": 1}, p)),
    "train-resume-and-overwrite": train_case("--resume", "--overwrite"),
    "train-threads-0": train_case("--threads", "0"),
    # results files
    "settings-json-corrupt": results_case(settings_file(b'{"baseline": "pers')),
    "settings-json-binary": results_case(settings_file(bytes(range(256)))),
    "settings-json-a-list": results_case(settings_file(b"[1, 2]")),
    "results-csv-binary-garbage": garbage_table,
    "out-under-a-file": out_under_a_file,
    "out-is-a-folder": lambda tmp_path: ([*EVALUATE, "--data", episode_root(tmp_path), "--out", tmp_path], tmp_path),
    "results-without-settings": results_case(lambda out: out.with_name(out.name + ".settings.json")),
    # benchmark trees
    "coco-pickle-runs-code": benchmark_pickle("splits/val/fold0.pkl", "coco"),
    "lvis-pickle-runs-code": benchmark_pickle("lvis_val.pkl", "lvis"),
    "paco-pickle-runs-code": benchmark_pickle("paco/paco_part_train.pkl", "paco"),
    "fss-split-not-utf8": fss_split_not_utf8,
    "benchmark-root-missing": lambda tmp_path: ([*EVALUATE, "--dataset", "dis5k", "--data-root", tmp_path / "no"],
                                               tmp_path / "no"),
}


@pytest.mark.parametrize("build", REFUSED.values(), ids=REFUSED.keys())
def test_refused_input_is_one_line_exit_2_and_changes_nothing(tmp_path, build, monkeypatch):
    argv, named = build(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    computed = []
    real_run_episode = evaluation.run_episode
    monkeypatch.setattr(evaluation, "run_episode", lambda *a, **k: computed.append(1) or real_run_episode(*a, **k))
    code, lines = run(argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"prmagic {argv[0]}: error: ")
    assert all(str(name) in lines[0] for name in (named if isinstance(named, list) else [named])), (named, lines)
    assert not computed, "the input should have been refused before the first episode"
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob(MARKER)), "a file ran code"


def read_only(folder: Path):
    """Make ``folder`` refuse new files, even to root (chattr +i); skip where that is impossible."""
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        return lambda: folder.chmod(0o755)
    probe.unlink()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("cannot make a folder read-only here")
    return lambda: (subprocess.run(["chattr", "-i", str(folder)]), folder.chmod(0o755))


def test_a_read_only_out_folder_is_refused_before_any_episode(tmp_path, monkeypatch):
    root = episode_root(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    restore = read_only(out)
    try:
        before = snapshot(tmp_path)
        monkeypatch.setattr(evaluation, "run_episode", lambda *a, **k: pytest.fail("computed an episode"))
        code, lines = run([*EVALUATE, "--data", root, "--out", out / "results.csv"])
        assert snapshot(tmp_path) == before
    finally:
        restore()
    assert code == 2 and len(lines) == 1 and str(out) in lines[0] and "cannot write" in lines[0], lines


def test_train_tiny_overwrite_starts_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    unfinished_run(out / "checkpoint.pt")
    code, _ = run(["train-tiny", "--out-dir", out, "--steps", "1", "--scenes", "8", "--eval-episodes", "1",
                   "--threads", "1", "--overwrite"])
    assert code == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1


# -- inputs that are used: read correctly, with a warning naming the file where they look unintended

def test_a_benchmark_tree_without_masks_prints_why_every_episode_failed_and_exits_1(tmp_path):
    root = tmp_path / "fss"
    for n in range(1, 11):
        (root / "data" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(RGB).save(root / "data" / "cat" / f"{n}.jpg")
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("cat\n")
    code, lines = run([*EVALUATE, "--dataset", "fss", "--data-root", root, "--episodes", "2"])
    assert code == 1
    failed = [line for line in lines if line.startswith("prmagic evaluate: episode ")]
    assert len(failed) == 2 and all("failed: BenchmarkError: " in line and ".png: no such file" in line
                                    for line in failed), lines


def test_many_failures_print_the_first_five_then_a_count(tmp_path):
    rows = [{"episode": f"e{i}", "status": "failed", "reason": "ValueError: x"} for i in range(8)]
    rows.insert(3, {"episode": "ok", "status": "ok", "reason": ""})
    lines = evaluation.failure_lines(rows)
    assert [line.split()[1] for line in lines[:5]] == ["e0", "e1", "e2", "e3", "e4"]
    assert lines[5].startswith("... and 3 more failed episodes")


def mask_with_grey_levels(folder):
    mask = np.asarray(Image.open(folder / "support_mask.png").convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "JPEG", quality=50)
    Image.open(buffer).save(folder / "support_mask.png")  # JPEG noise stored as PNG
    return mask > 127


@pytest.mark.parametrize("what", ["grey-levels", "all-foreground"])
def test_questionable_masks_are_used_with_a_warning_naming_the_file(tmp_path, what):
    root = episode_root(tmp_path)
    folder = root / "ep0"
    if what == "grey-levels":
        expected = mask_with_grey_levels(folder)
    else:
        expected = np.ones((64, 64), dtype=bool)
        Image.new("1", (64, 64), 1).save(folder / "support_mask.png")
    code, lines = run([*EVALUATE, "--data", root])
    assert code == 0
    printed = [line for line in lines if line.startswith("prmagic evaluate: warning: ")]
    assert len(printed) == 1 and str(folder / "support_mask.png") in printed[0], lines
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(load_episode(folder).support_masks[0], expected)


def completed_run(tmp_path, episodes=3) -> tuple:
    root = episode_root(tmp_path, episodes)
    out = tmp_path / "out" / "results.csv"
    assert run([*EVALUATE, "--data", root, "--out", out])[0] == 0
    with open(out, newline="") as f:
        return root, out, list(csv.DictReader(f))


def as_a_spreadsheet_saves_it(text: bytes) -> bytes:
    """The table with a byte-order mark, ``;`` between fields and CRLF line ends."""
    rows = list(csv.reader(io.StringIO(text.decode(), newline="")))
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";", lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8-sig")


DAMAGE = {
    "truncated-last-row": (lambda text: text[: text.rindex(b"\n", 0, len(text) - 1) + 30], 1),
    "garbage-in-a-row": (lambda text: text.replace(b"{", b"\xff\x00", 1), 1),
    "garbage-appended": (lambda text: text + bytes(range(256)), 0),
    "saved-by-a-spreadsheet": (as_a_spreadsheet_saves_it, 0),
}


@pytest.mark.parametrize("damage,lost", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_results_table_keeps_its_complete_rows_and_resumes(tmp_path, damage, lost, monkeypatch):
    root, out, rows = completed_run(tmp_path)
    damaged = damage(out.read_bytes())
    out.write_bytes(damaged)
    computed = []
    real_run_episode = evaluation.run_episode
    monkeypatch.setattr(evaluation, "run_episode", lambda *a, **k: computed.append(1) or real_run_episode(*a, **k))
    code, lines = run([*EVALUATE, "--data", root, "--out", out])
    assert code == 0, lines
    assert len(computed) == lost
    printed = [line for line in lines if line.startswith("prmagic evaluate: warning: ")]
    assert len(printed) == 1 and str(out) in printed[0], lines
    assert (out.parent / "results.csv.damaged").read_bytes() == damaged  # nothing lost
    with open(out, newline="") as f:
        again = list(csv.DictReader(f))
    strip = lambda table: sorted((r["episode"], r["counts_top1"]) for r in table)  # noqa: E731
    assert strip(again) == strip(rows)


# -- image modes: 16-bit, CMYK, RGBA and friends give the right arrays

def png_16_bit(values: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG (Pillow writes 16 bits only for grey): colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    import struct
    import zlib

    height, width = values.shape[:2]
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
WIDE = RGB.astype(np.uint16) * 256 + np.random.default_rng(1).integers(0, 256, RGB.shape).astype(np.uint16)
ALPHA = np.random.default_rng(2).integers(0, 65536, (6, 8, 1)).astype(np.uint16)


def write_query(folder, name, data_or_image):
    if isinstance(data_or_image, bytes):
        (folder / name).write_bytes(data_or_image)
    else:
        data_or_image.save(folder / name, **({"quality": 100, "subsampling": 0} if name.endswith(".jpg") else {}))


IMAGE_MODES = {
    # name: (file name, contents, expected RGB, tolerance)
    "16-bit-grey": ("query.png", Image.fromarray(WIDE[..., 0]), np.repeat(RGB[..., :1], 3, axis=2), 0),
    "16-bit-rgb": ("query.png", png_16_bit(WIDE, 2), RGB, 0),
    "16-bit-rgba": ("query.png", png_16_bit(np.concatenate([WIDE, ALPHA], axis=2), 6), RGB, 0),
    "16-bit-grey-alpha": ("query.png", png_16_bit(np.concatenate([WIDE[..., :1], ALPHA], axis=2), 4),
                          np.repeat(RGB[..., :1], 3, axis=2), 0),
    "rgba": ("query.png", Image.fromarray(np.dstack([RGB, RGB[..., :1]]), "RGBA"), RGB, 0),
    "cmyk-jpeg": ("query.jpg", Image.fromarray(RGB).convert("CMYK"), RGB, 3),
}


@pytest.mark.parametrize("name,contents,expected,tolerance", IMAGE_MODES.values(), ids=IMAGE_MODES.keys())
def test_image_modes_give_the_right_rgb(tmp_path, name, contents, expected, tolerance):
    folder = tmp_path / "ep"
    folder.mkdir()
    Image.fromarray(RGB).save(folder / "support.png")
    Image.fromarray(np.eye(6, 8, dtype=np.uint8) * 255).save(folder / "support_mask.png")
    write_query(folder, name, contents)
    image = load_episode(folder).query_image
    assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
    assert np.abs(image.astype(int) - expected).max() <= tolerance


def test_a_class_name_saved_with_a_byte_order_mark_reads_without_it(tmp_path):
    folder = save_episode(shapeworld.episodes(1, seed=0, size=64)[0], tmp_path / "ep")
    (folder / "class.txt").write_bytes("\ufeffcafé\n".encode("utf-8"))
    assert load_episode(folder).class_name == "café"


def test_a_16_bit_grey_mask_is_read_at_half_range(tmp_path):
    folder = save_episode(shapeworld.episodes(1, seed=0, size=64)[0], tmp_path / "ep")
    truth = load_episode(folder).support_masks[0]
    Image.fromarray((truth * 40000 + (~truth) * 30000).astype(np.uint16)).save(folder / "support_mask.png")
    np.testing.assert_array_equal(load_episode(folder).support_masks[0], truth)


# -- benchmark pickles: data loads, code never runs

def test_the_data_in_benchmark_pickles_loads_in_every_protocol():
    data = {np.int64(3): {"val2017/1.jpg": {"annotations": [{"segmentation": np.eye(3, dtype=np.uint8),
                                                              "area": np.float32(2.5), "bbox": (1, 2, 3, 4)}]}},
            "names": ["a", b"b", {1, 2}, frozenset([3])], "counts": [1.5, 2 + 1j, None, True]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = DataUnpickler(io.BytesIO(pickle.dumps(data, protocol=protocol))).load()
        annotation = loaded[3]["val2017/1.jpg"]["annotations"][0]
        np.testing.assert_array_equal(annotation["segmentation"], np.eye(3))
        assert annotation["area"] == np.float32(2.5) and loaded["names"] == data["names"]
        assert loaded["counts"] == data["counts"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, protocol):
    marker = tmp_path / MARKER
    crafted = pickle.dumps({0: ["ok", RunsCode(marker)]}, protocol=protocol)
    pickle.loads(crafted)  # the plain unpickler does run it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(RefusedGlobal, match=r"io\.open"):
        DataUnpickler(io.BytesIO(crafted)).load()
    assert not marker.exists()  # ... the restricted one does not
