"""The walkthrough as a workshop participant meets it: JupyterLab started as ``make lab`` starts it, in a real
browser (Debian's chromium driven by Playwright, no browser download): pickers clicked, figures drawn, the
notebook saved small and reopened whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill
import pytest

from kit.targets.processes import free_port_block

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUT = ".jp-OutputArea-output"  # what a cell printed (not its source)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="chromium is not installed (apt-get install chromium)")
MAKEFILE = (ROOT / "Makefile").read_text()
# What `make lab` adds to `jupyter lab` for the kit's settings (the test below checks the Makefile says the same).
LAB_SETTINGS = [f"--LabApp.app_settings_dir={ROOT / 'jupyter'}",
                f"--config={ROOT / 'jupyter' / 'jupyter_server_config.json'}"]


def test_make_lab_starts_jupyterlab_with_the_kits_settings():
    recipe = MAKEFILE.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "--LabApp.app_settings_dir=jupyter" in recipe and "--config=jupyter/jupyter_server_config.json" in recipe
    settings = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    assert settings["@jupyter-widgets/jupyterlab-manager:plugin"] == {"saveState": True}  # widgets reopen drawn


def _set_parameters(nb_path: Path, values: dict[str, object]) -> None:
    """Rewrite the parameters cell of a copy, as a participant would edit it."""
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    for name, value in values.items():
        lines = [f"{name} = {value!r}" if line.startswith(f"{name}:") else line for line in lines]
    cell["source"] = "\n".join(lines)
    nb_path.write_text(json.dumps(nb))


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free loopback port over a copy of the notebooks, with `make lab`'s settings; stopped
    afterwards."""
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KIT_STATE_DIR": str(tmp_path / "state"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "jset"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={work}", "--IdentityProvider.token=kit-test", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.allow_root=True", *LAB_SETTINGS]  # as `make lab` starts it
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token=kit-test", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.3)
    yield url, work, env
    subprocess.run([sys.executable, "-m", "kit", "destroy", "-e", "local", "--postfix", "lab-test"], env=env,
                   capture_output=True, timeout=120)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _run(page, command: str, cell: int | None = None, timeout: float = 300_000) -> None:
    """Run a notebook command and wait until the cells it started have run; fail with any error raised."""
    first = page.evaluate("""async ([command, cell]) => {
        const nb = window.jupyterapp.shell.currentWidget;
        if (cell !== null) { nb.content.activeCellIndex = cell; }
        const from = nb.content.activeCellIndex;
        await window.jupyterapp.commands.execute(command);
        return command === 'notebook:run-all-cells' ? 0 : from;
    }""", [command, cell])
    page.wait_for_function("""(first) => {
        const nb = window.jupyterapp.shell.currentWidget;
        const code = nb.content.widgets.slice(first).filter(c => c.model.type === 'code');
        const failed = code.some(c => { for (let i = 0; i < c.model.outputs.length; i++) {
            if (c.model.outputs.get(i).toJSON().output_type === 'error') return true; } return false; });
        const done = code.every(c => c.model.executionCount !== null && c.model.executionState !== 'running');
        const session = nb.sessionContext.session;
        return !!session && !!session.kernel && session.kernel.status === 'idle' && (done || failed);
    }""", arg=first, timeout=timeout, polling=500)
    errors = page.evaluate("""() => {
        const out = [];
        for (const c of window.jupyterapp.shell.currentWidget.content.widgets) {
            if (c.model.type !== 'code') continue;
            for (let i = 0; i < c.model.outputs.length; i++) {
                const o = c.model.outputs.get(i).toJSON();
                if (o.output_type === 'error') out.push(o.ename + ': ' + o.evalue);
            }
        }
        return out;
    }""")
    assert not errors, errors


def _open(page, url: str, name: str) -> None:
    page.goto(f"{url}/lab/tree/{name}?token=kit-test")
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=60_000)  # other tabs may be hidden
    # The reloaded lab may restore the previously open notebook first: wait for this one to be current.
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path.endsWith(name) && w.sessionContext &&"
                           " w.sessionContext.session && w.sessionContext.session.kernel &&"
                           " w.sessionContext.session.kernel.status === 'idle'; }", arg=name, timeout=60_000)


def _printed(page) -> str:
    """Everything the notebook's cells printed or showed as text, from the notebook model (off-screen cells are
    not drawn)."""
    return page.evaluate("""() => {
        const out = [];
        const text = (t) => Array.isArray(t) ? t.join('') : t;
        for (const c of window.jupyterapp.shell.currentWidget.content.widgets) {
            if (c.model.type !== 'code') continue;
            for (let i = 0; i < c.model.outputs.length; i++) {
                const o = c.model.outputs.get(i).toJSON();
                if (o.output_type === 'stream') out.push(text(o.text));
                else if (o.data && o.data['text/plain'] && !o.data['application/vnd.jupyter.widget-view+json'])
                    out.push(text(o.data['text/plain']) + '\\n');
            }
        }
        return out.join('');
    }""")


def _save(page) -> None:
    """File → Save, and wait until the file on disk is the notebook on screen."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=60_000)


def _fresh_page(browser, url: str, name: str):
    """The notebook reopened as the next day would: its kernel shut down, in a new browser session."""
    sessions = json.loads(urllib.request.urlopen(f"{url}/api/sessions?token=kit-test", timeout=10).read())
    for sess in sessions:
        req = urllib.request.Request(f"{url}/api/sessions/{sess['id']}?token=kit-test", method="DELETE")
        urllib.request.urlopen(req, timeout=30)
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{url}/lab/tree/{name}?token=kit-test")
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path.endsWith(name) && w.context.isReady"
                           " && w.content.widgets.length > 0; }", arg=name, timeout=120_000)
    page.wait_for_timeout(3000)  # let every output render (widget views, figures)
    return page


def _figures_drawn(page) -> int:
    """Scroll every cell holding a plotly figure into view and wait until plotly has drawn it."""
    cells = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets.map((c, i) => {
        if (c.model.type !== 'code') return -1;
        for (let k = 0; k < c.model.outputs.length; k++) {
            if ('application/vnd.plotly.v1+json' in c.model.outputs.get(k).data) return i;
        }
        return -1; }).filter(i => i >= 0)""")
    for i in cells:
        page.evaluate("(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node.scrollIntoView()", i)
        page.wait_for_function("""(i) => {
            const node = window.jupyterapp.shell.currentWidget.content.widgets[i].node;
            return node.querySelectorAll('.js-plotly-plot .main-svg').length > 0; }""", arg=i, timeout=30_000)
    return len(cells)


def _cell_index(page, text: str) -> int:
    return page.evaluate("""(text) => {
        const cells = window.jupyterapp.shell.currentWidget.content.widgets;
        return cells.findIndex(c => c.model.sharedModel.getSource().includes(text));
    }""", text)


def test_a_saved_notebook_keeps_its_figures_as_json_and_drops_their_png_snapshots(lab):
    """What JupyterLab's plotly renderer adds on save (a PNG of every figure it drew) does not reach the file."""
    url, work, _env = lab
    figure = {"data": [{"type": "bar", "y": [1, 2]}], "layout": {}}
    outputs = [{"output_type": "display_data", "metadata": {},
                "data": {"application/vnd.plotly.v1+json": figure, "image/png": "iVBORw0KGgo=" * 5000}},
               {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo="}}]
    nb = {"cells": [{"cell_type": "code", "execution_count": 1, "id": "a", "metadata": {}, "outputs": outputs,
                     "source": "fig.show()"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    body = json.dumps({"type": "notebook", "format": "json", "content": nb}).encode()
    req = urllib.request.Request(f"{url}/api/contents/saved.ipynb?token=kit-test", data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30)
    saved = json.loads((work / "saved.ipynb").read_text())["cells"][0]["outputs"]
    assert saved[0]["data"] == {"application/vnd.plotly.v1+json": figure}  # the figure's JSON, no snapshot
    assert saved[1]["data"] == {"image/png": "iVBORw0KGgo="}  # an image that is only an image stays


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_participant_picks_deploys_and_sees_figures(lab, monkeypatch, tmp_path):
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("Debian's chromium must be installed in CI (.ci/run installs it)")
    url, work, env = lab
    port = free_port_block(6)
    common = {"release_postfix": "lab-test", "gateway_port": port}
    _set_parameters(work / "02-deploy.ipynb", {**common, "interactive": True, "replicas": 4})
    _set_parameters(work / "03-inference.ipynb", {**common, "replicas": 0})
    _set_parameters(work / "04-routing-and-cache.ipynb", {**common, "replicas": 0, "requests": 24, "rate": 20.0,
                                                           "profiles": "random,default-plugins"})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda d: d.accept())  # "leave the page?" when going on to the next notebook
        _open(page, url, "02-deploy.ipynb")
        page.wait_for_timeout(2000)
        assert page.locator("text=official Jupyter news").count() == 0  # the kit's settings silence the pop-up
        _run(page, "notebook:run-all-cells")
        page.wait_for_selector(f"{OUT}:has-text('Deployed local with scheduler profile')", timeout=120_000)
        # The pickers render as widgets, not as text.
        assert page.locator(".jp-OutputArea .widget-dropdown select").count() == 2
        slider = page.locator(".jp-OutputArea .widget-slider .noUi-handle")
        assert slider.count() == 1
        assert page.locator(".jp-OutputArea .widget-label:has-text('environment')").count() >= 1
        # Three replicas and load-only, by interacting: step the slider down once, pick the profile; then Deploy.
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector(".widget-readout:has-text('3')", timeout=10_000)
        page.locator(".jp-OutputArea .widget-dropdown select").nth(1).select_option("load-only")
        page.locator("button:has-text('Deploy')").click()
        page.wait_for_selector(f"{OUT}:has-text('deployed local with 3 model servers and profile load-only')",
                               timeout=120_000)
        # The cells below that describe the stack now describe this one, without running them again.
        page.wait_for_selector(f"{OUT}:has-text('the cells below that describe the stack now show this one')",
                               timeout=120_000)
        printed = _printed(page)
        assert "Deployed local with scheduler profile load-only: 3 model servers, ready: True" in printed
        assert "up: local/lab-test: load-only, guide release, 3 simulators" in printed
        assert "scheduler profile default-plugins" not in printed.split("deployed local with 3 model servers")[-1]
        status = json.loads(subprocess.run([sys.executable, "-m", "kit", "status", "-e", "local", "--postfix",
                                            "lab-test", "--json"], env=env, capture_output=True, text=True,
                                           timeout=60).stdout)
        assert [p["role"] for p in status["processes"]].count("simulator") == 3 and status["ready"]
        _save(page)
        # 03 on the load-only stack: it says the profile does not route by prefix, and still shows the hit.
        _open(page, url, "03-inference.ipynb")
        _run(page, "notebook:run-all-cells")
        printed = _printed(page)
        assert "using the stack that is up: local/lab-test: load-only, guide release, 3 simulators" in printed
        assert "load-only, whose picker does not look at prefixes" in printed and "back on load-only" in printed
        assert re.search(r"the same server, with \d{3,} of \d+ prompt tokens from the prefix cache", printed), printed
        _save(page)
        # 04 uses what is deployed, draws its figures, and leaves no widget behind headless progress.
        _open(page, url, "04-routing-and-cache.ipynb")
        _run(page, "notebook:run-all-cells")
        printed = _printed(page)
        assert "using the stack that is up: local/lab-test: load-only, guide release, 3 simulators" in printed
        assert "results in" in printed
        assert _figures_drawn(page) >= 7  # heatmap, hit rate, queue/KV, decision, ranking, TTFT, hot groups
        _save(page)
        saved = (work / "04-routing-and-cache.ipynb").read_text()
        # Small and clean: no PNG snapshot of any figure, no widget.
        assert "image/png" not in saved and "application/vnd.jupyter.widget-view+json" not in saved
        # Reopened the next day, nothing says "Error displaying widget": not 04, not 02 with its pickers.
        for name, widgets in (("04-routing-and-cache.ipynb", 0), ("02-deploy.ipynb", 1)):
            again = _fresh_page(browser, url, name)
            assert again.locator("text=Error displaying widget").count() == 0, name
            # Counted in this notebook's panel: the lab may restore other notebooks' tabs beside it.
            in_panel = ("() => window.jupyterapp.shell.currentWidget.node"
                        ".querySelectorAll('.jp-OutputArea .widget-dropdown').length")
            if widgets:  # a busy machine may take a while to draw them
                again.wait_for_function(f"({in_panel})() > 0", timeout=60_000)
            assert (again.evaluate(in_panel) > 0) == bool(widgets), name
        browser.close()
    # Within 20% of papermill's executed copy of the same notebook, with the same parameters, on the same stack.
    monkeypatch.setenv("KIT_STATE_DIR", env["KIT_STATE_DIR"])
    headless = tmp_path / "04-papermill.ipynb"
    papermill.execute_notebook(str(work / "04-routing-and-cache.ipynb"), str(headless), kernel_name="python3",
                               cwd=str(work), progress_bar=False)
    lab_size, pm_size = len(saved.encode()), headless.stat().st_size
    print(f"04 saved in JupyterLab: {lab_size:,} bytes; papermill's copy: {pm_size:,} bytes")
    assert abs(lab_size - pm_size) <= 0.2 * pm_size, (lab_size, pm_size)
