"""The step explorer where it lives: JupyterLab in a real (headless) browser.

Debian's chromium (/usr/bin/chromium; `apt-get install -y chromium`) driven by Playwright's Python
package; nothing is downloaded at run time. JupyterLab serves a copy of the walkthrough with
``interactive = True``, the browser runs every cell, moves the slider one step with the keyboard
and checks that the explorer now shows step 1. The screenshot stays in notebooks/build/browser/.
"""
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = REPO / "notebooks" / "build" / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install -y chromium")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interactive_copy(folder: Path) -> Path:
    """The walkthrough with interactive = True, writing its figures and tables into ``folder``."""
    notebook = nbformat.read(REPO / "notebooks" / "01_walkthrough.ipynb", as_version=4)
    parameters = notebook.cells[1]
    for name, value in (("interactive", True), ("out_dir", str(folder / "figures")), ("cache_dir", str(folder / "cache"))):
        parameters.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", parameters.source, flags=re.M)
        assert count == 1, name
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    path = folder / "walkthrough.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port, its state in ``tmp_path``: (base URL, token, root)."""
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=str(REPO), JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_DATA_DIR=str(state / "data"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"))
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],  # nothing reaches the network
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_the_step_slider_changes_the_shown_step(lab):
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    notebook = interactive_copy(root)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTEFACTS / "step_explorer.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{notebook.name}?token={token}")
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                                   timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            shown = page.locator(".jp-OutputArea-output", has_text=re.compile(r"^step \d+ of \d+:"))
            shown.first.wait_for(timeout=480_000)  # the whole walkthrough runs first
            assert shown.first.inner_text().startswith("step 0 of ")
            handle = page.locator(".widget-hslider .noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.locator(".jp-OutputArea-output", has_text=re.compile(r"^step 1 of \d+:")).first.wait_for(timeout=60_000)
            assert page.locator(".widget-readout").first.inner_text().strip() == "1"
            explorer = page.locator(".widget-interact").first
            explorer.locator("img").first.wait_for(timeout=60_000)  # step 1's similarity map and candidate
            assert "step 0 of" not in explorer.inner_text()
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
