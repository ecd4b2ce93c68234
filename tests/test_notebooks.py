import ast
import fnmatch
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.compare import NotebookDifference, compare_notebooks

from prmagic_core import figures

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def load(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module", params=list(figures.FIGURES))
def notebook(request):
    return request.param, load(request.param)


def test_every_notebook_is_a_registered_jupytext_pair():
    ipynb = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    text = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")}
    assert ipynb == text == set(figures.FIGURES), "each notebook is NN_name.py + NN_name.ipynb, listed in figures.FIGURES"


def test_pair_is_in_sync(notebook):
    """The .py (py:percent) and the .ipynb hold the same cells: edit one, then `jupytext --sync` (or save in JupyterLab)."""
    name, _ = notebook
    text = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert text.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    try:
        compare_notebooks(text, jupytext.read(NOTEBOOKS / f"{name}.ipynb"), fmt="py:percent")
    except NotebookDifference as err:
        pytest.fail(f"{name}.py and {name}.ipynb differ (run: jupytext --sync notebooks/{name}.py): {err}")


def test_sync_check_sees_an_edit_on_one_side():
    text = jupytext.read(NOTEBOOKS / "01_walkthrough.py")
    edited = jupytext.read(NOTEBOOKS / "01_walkthrough.ipynb")
    edited.cells[-1].source += "\nprint('edited')"
    with pytest.raises(NotebookDifference):
        compare_notebooks(text, edited, fmt="py:percent")


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
    defaults = {s.targets[0].id: ast.literal_eval(s.value) for s in tree.body}
    assert defaults["out_dir"] is None and defaults["cache_dir"] is None, f"{name}: a hand run writes under notebooks/build"
    setup = nb.cells[2].source  # paths resolved from the repository, by notebook_dirs or open_notebook (which calls it)
    assert "notebook_dirs(out_dir, cache_dir)" in setup or "out_dir=out_dir, cache_dir=cache_dir" in setup, name


def test_code_cells_parse(notebook):
    name, nb = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                ast.parse(cell.source)
            except SyntaxError as err:
                pytest.fail(f"{name} cell {index}: {err}")


# Committed with the outputs of a run, so they read on the code host without running; the others without.
WITH_OUTPUTS = ("00_theory", "01_walkthrough")


def test_outputs_are_committed_only_where_they_help_a_reader(notebook):
    name, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is None for c in code), f"{name}: strip execution counts (nbstripout --keep-output)"
    assert all(o.get("execution_count") is None for c in code for o in c.outputs), name
    if name not in WITH_OUTPUTS:
        assert all(c.outputs == [] for c in code), f"{name}: strip outputs (nbstripout)"
        return
    # every code cell after the parameters shows something: a figure, a table or a printed shape
    silent = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i > 1 and not c.outputs]
    assert not silent, f"{name}: cells {silent} have no output; re-run it and commit the outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert not errors, f"{name}: committed outputs hold errors or warnings: {errors[:1]}"


def test_walkthrough_shows_every_step_of_the_method_in_its_own_cell():
    """Each idea's call first appears in a cell of its own, in the method's order."""
    cells = [c.source for c in load("01_walkthrough").cells if c.cell_type == "code"]
    ideas = ("encode_episode(", "prepared_target(", "similarity_map(target, z0", "sample_prompts(", "prompter.decode(z0, P0",
             "d_phi(", "flow_step(", "similarity_map(target, z0 + delta1", "refine(", "select(")
    first = []
    for call in ideas:
        holding = [i for i, source in enumerate(cells) if call in source]
        assert holding, f"no cell calls {call}"
        first.append(holding[0])
    assert first == sorted(set(first)), dict(zip(ideas, first))


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


def test_only_selects_by_name_or_number():
    assert figures.selected(["04"]) == ["04_oracle_vs_top1"]
    assert figures.selected(["06_main_results", "00"]) == ["00_theory", "06_main_results"]
    with pytest.raises(ValueError, match="no notebook"):
        figures.selected(["99"])
    assert figures.selected(["studies", "01"]) == ["01_walkthrough", "05_drift_vs_noise", "07_selector_study",
                                                   "08_gradient_direction"]
    assert sorted(figures.selected(["paper"]) + figures.selected(["studies"])) == list(figures.FIGURES)
    assert figures.parse_value("[1e-3, 1e-2]") == [1e-3, 1e-2] and figures.parse_value("/a/b.pth") == "/a/b.pth"


def test_paths_come_from_the_repository_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert figures.notebook_dirs() == (REPO / "notebooks/build/figures", REPO / "notebooks/build/cache")
    assert figures.notebook_dirs("../figures", "x/cache") == (REPO.parent / "figures", REPO / "x/cache")
    assert figures.notebook_dirs(str(tmp_path / "f"), None)[0] == tmp_path / "f"


def test_open_notebook_builds_the_lab_figures_and_record_from_the_parameters(tmp_path, monkeypatch):
    from prmagic_core.notebook import open_notebook

    monkeypatch.chdir(tmp_path)
    figure_set, lab, available, settings = open_notebook(
        "04_oracle_vs_top1", backend="tiny", checkpoint=None, model_type="vit_b", dinov2_checkpoint=None,
        dataset="shapeworld", data_root=None, device="cpu", out_dir=None, cache_dir="x/cache", image_size=256,
        fold=1, baselines=["persam_f", "no_such_baseline"], n_episodes=7, seeds=[0, 1])
    assert figure_set.out_dir == REPO / "notebooks/build/figures" and figure_set.prefix == "04"
    assert lab.cache_dir == REPO / "x/cache" and lab.image_size == 256 and lab.setup.fold == 1
    assert available == ["persam_f"]
    assert settings == dict(backend="tiny", checkpoint=None, model_type="tiny", dataset="shapeworld", kind="object",
                            image_size=256, fold=1, baselines=["persam_f"], matching_encoder=None, device="cpu",
                            n_episodes=7, seeds=[0, 1])
    # with Matcher the record names the encoder it matches with, and the lab matches with it
    _, lab, _, settings = open_notebook(
        "04_oracle_vs_top1", backend="tiny", checkpoint=None, model_type="vit_b", dinov2_checkpoint=None,
        matching_encoder="sam-tiny", dataset="shapeworld", data_root=None, device="cpu", out_dir=None,
        cache_dir="x/cache", baselines=["matcher"])
    assert settings["matching_encoder"] == "sam-tiny" == lab.setup.matching_encoder


def test_only_the_full_profile_writes_the_committed_figures(tmp_path):
    assert figures.default_out_dir("full", tmp_path) == REPO / "figures"
    assert figures.default_out_dir("smoke", tmp_path) == tmp_path / "figures"


def test_figure_set_records_the_absolute_paths_it_wrote(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from prmagic_core import viz

    monkeypatch.chdir(tmp_path)
    saved = viz.FigureSet("rel", prefix="09")
    saved.save(plt.figure(), "empty")
    assert saved.names == ["09_empty"]
    assert saved.paths == [tmp_path / "rel/09_empty.png", tmp_path / "rel/09_empty.pdf"]
    assert all(p.is_absolute() and p.is_file() for p in saved.paths)


def _git_status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", path], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.notebooks
def test_a_hand_run_from_elsewhere_writes_under_notebooks_build(tmp_path, monkeypatch):
    """papermill started in another folder, no out_dir given: the figures land in notebooks/build/figures."""
    import papermill

    before = _git_status(".")
    written = NOTEBOOKS / "build" / "figures" / "00_theory.json"
    written.unlink(missing_ok=True)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel inherits it
    monkeypatch.setenv("MPLBACKEND", "agg")
    papermill.execute_notebook(str(NOTEBOOKS / "00_theory.ipynb"), str(tmp_path / "00.ipynb"), cwd=str(tmp_path),
                               parameters=dict(toy_steps=20, toy_train_steps=30, toy_particles=50), progress_bar=False)
    assert written.is_file() and not list(tmp_path.glob("**/*.png"))
    printed = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "00.ipynb", as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert f"Wrote\n  {written}" in printed
    assert _git_status(".") == before


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
    """The CI check: `prmagic figures --profile smoke` end to end, then every figure and headline; the
    committed figures/ stay untouched (smoke writes beside its build, here a temporary folder)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="agg")
    build = tmp_path / "build"
    out = build / "figures"  # the smoke profile's default out dir
    before = _git_status("figures")
    done = subprocess.run([sys.executable, "-m", "prmagic_core.cli", "figures", "--profile", "smoke",
                           "--build-dir", str(build)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _git_status("figures") == before == "", "the smoke profile changed the committed figures/"
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
