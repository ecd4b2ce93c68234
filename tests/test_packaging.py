import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_installs_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    listed = {_name(line.strip()[2:]) for line in (ROOT / "environment.yml").read_text().splitlines()
              if line.strip().startswith("- ") and not line.strip().startswith("- -e")}
    missing = wanted - listed
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def _readme_commands() -> list:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    return [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_a_test_command():
    commands = _readme_commands()
    assert len(commands) == 3, commands
    assert "pytest" in commands[2]


def test_ci_runs_exactly_readmes_setup_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    setup, _, test = _readme_commands()
    assert setup in ci
    assert ci[-1] == test


def test_no_committed_file_over_20_mb():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    big = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 20 * 2**20]
    assert not big


def test_readme_method_example_runs():
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["trajectory"].candidates) == 6
    assert namespace["final_mask"].shape == namespace["episode"].query_image.shape[:2]
    assert namespace["best"].scores[namespace["best"].index] >= namespace["best"].scores[0]
