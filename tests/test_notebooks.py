import ast
import fnmatch
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from prmagic_core import figures

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def load(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module", params=list(figures.FIGURES))
def notebook(request):
    return request.param, load(request.param)


def test_notebooks_are_exactly_what_the_generator_writes(tmp_path):
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import _build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    written = _build.build(tmp_path)
    # Jupytext pairs (notebooks/NN_name.py beside the .ipynb) are written by hand, not by the generator.
    assert sorted(p.stem for p in written) == sorted(n for n in figures.FIGURES if not (NOTEBOOKS / f"{n}.py").exists())
    for path in written:
        assert path.read_text() == (NOTEBOOKS / path.name).read_text(), f"{path.name}: run python notebooks/_build.py"


def test_opens_with_markdown_saying_what_and_how_long(notebook):
    name, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "CPU" in first.source and "GPU" in first.source


def test_parameters_cell_holds_literal_assignments_only(notebook):
    name, nb = notebook
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1], f"{name}: one parameters cell, right after the opening markdown"
    tree = ast.parse(nb.cells[1].source)
    names = []
    for statement in tree.body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.dump(statement)
        assert isinstance(statement.targets[0], ast.Name)
        ast.literal_eval(statement.value)  # raises on anything but a literal
        names.append(statement.targets[0].id)
    for required in ("backend", "checkpoint", "model_type", "dataset", "data_root", "n_episodes", "etas", "steps",
                     "seeds", "device", "out_dir", "cache_dir"):
        assert required in names, f"{name} lacks parameter {required}"


def test_code_cells_parse(notebook):
    name, nb = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                ast.parse(cell.source)
            except SyntaxError as err:
                pytest.fail(f"{name} cell {index}: {err}")


def test_committed_without_outputs(notebook):
    name, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs"


def test_profiles_only_set_declared_parameters():
    import papermill

    declared, own = set(), {}
    for name in figures.FIGURES:
        own[name] = set(papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb")))
        declared |= own[name]
    for profile, parameters in figures.PROFILES.items():
        assert set(parameters) <= declared, profile
    for name, profiles in figures.NOTEBOOK_PROFILES.items():
        for profile, parameters in profiles.items():
            assert profile in figures.PROFILES and set(parameters) <= own[name], (name, profile)


@pytest.mark.parametrize("name", [n for n in figures.FIGURES if (NOTEBOOKS / f"{n}.py").exists()])
def test_jupytext_pairs_are_in_sync(name):
    jupytext = pytest.importorskip("jupytext")
    paired = jupytext.read(NOTEBOOKS / f"{name}.py")
    committed = load(name)
    assert [(c.cell_type, c.source) for c in paired.cells] == [(c.cell_type, c.source) for c in committed.cells], (
        f"{name}: run jupytext --sync notebooks/{name}.py")


def test_only_selects_by_name_or_number():
    assert figures.selected(["04"]) == ["04_oracle_vs_top1"]
    assert figures.selected(["06_main_results", "00"]) == ["00_theory", "06_main_results"]
    with pytest.raises(ValueError, match="no notebook"):
        figures.selected(["99"])
    assert figures.parse_value("[1e-3, 1e-2]") == [1e-3, 1e-2] and figures.parse_value("/a/b.pth") == "/a/b.pth"


def _no_nan(constant):
    raise ValueError(f"non-finite number {constant} in a headline JSON")


def _numbers(value, path=""):
    """(path, number) of every number in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


STEPS = figures.PROFILES["smoke"]["steps"]
# (headline number path pattern, low, high): every pattern must match some number, and each match lie in range.
RANGES = [
    ("00_theory/drift_weight_at_0/*", 0, 1),
    ("00_theory/toy_*", 0, math.inf),
    ("00_theory/noise_to_max_drift_ratio/*", 1, math.inf),
    ("01_walkthrough/iou/*", 0, 1),
    ("01_walkthrough/*_step", 0, STEPS),
    ("01_walkthrough/mean_*_norm", 0, math.inf),
    ("02_eta_sensitivity/miou_per_step/*", 0, 100),
    ("02_eta_sensitivity/mean_iou_per_step/*", 0, 100),
    ("03_optimal_step_histograms/*/mean", 0, STEPS),
    ("03_optimal_step_histograms/*/std", 0, STEPS),
    ("03_optimal_step_histograms/*/flat_fraction", 0, 1),
    ("04_oracle_vs_top1/miou/*", 0, 100),
    ("04_oracle_vs_top1/mean_iou/*", 0, 100),
    ("04_oracle_vs_top1/paired_mean_iou_gains/*/T-B*", -100, 100),
    ("04_oracle_vs_top1/paired_mean_iou_gains/*/O-T", 0, 100),  # the oracle is never below the selector
    ("05_drift_vs_noise/miou/*", 0, 100),
    ("05_drift_vs_noise/mean_iou/*", 0, 100),
    ("05_drift_vs_noise/gains/*/O-B", 0, 100),
    ("05_drift_vs_noise/gains/*/T-B", -100, 100),
    ("05_drift_vs_noise/noise_to_drift_norm_ratio", 1, math.inf),
    ("06_main_results/rows/*/[BTO]_*", 0, 100),
    ("06_main_results/rows/*/episodes", 1, math.inf),
]


@pytest.mark.notebooks
def test_smoke_profile_regenerates_every_figure(tmp_path):
    """The CI check: `prmagic figures --profile smoke` end to end, then every figure and headline."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="agg")
    out, build = tmp_path / "figures", tmp_path / "build"
    done = subprocess.run([sys.executable, "-m", "prmagic_core.cli", "figures", "--profile", "smoke",
                           "--out-dir", str(out), "--build-dir", str(build)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    numbers = {}
    for name, expected in figures.FIGURES.items():
        for figure in expected:
            for ext in ("png", "pdf"):
                path = out / f"{figure}.{ext}"
                assert path.is_file() and path.stat().st_size > 1000, path
        record = json.loads((out / f"{name}.json").read_text(), parse_constant=_no_nan)
        assert record["notebook"] == name and record["figures"] == list(expected)
        assert record["settings"]["steps"] == STEPS and record["settings"]["backend"] == "tiny"
        numbers.update(_numbers(record["numbers"], name))
        assert (build / f"{name}.ipynb").is_file()
    for path, value in numbers.items():
        assert math.isfinite(value), path
    for pattern, low, high in RANGES:
        matched = {p: v for p, v in numbers.items() if fnmatch.fnmatchcase(p, pattern)}
        assert matched, f"no headline number matches {pattern}"
        for path, value in matched.items():
            assert low <= value <= high, (path, value, low, high)
    runtimes = json.loads((build / "runtimes-smoke.json").read_text())
    assert set(runtimes["seconds"]) == set(figures.FIGURES)
