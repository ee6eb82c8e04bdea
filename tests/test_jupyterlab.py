"""The walkthrough as a workshop participant meets it: JupyterLab in a real browser (Debian's chromium driven
by Playwright, no browser download), pickers clicked, figures drawn."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kit.targets.processes import free_port_block

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUT = ".jp-OutputArea-output"  # what a cell printed (not its source)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed (apt-get install chromium)")]


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
    """JupyterLab on a free loopback port over a copy of the notebooks; stopped afterwards."""
    if CHROMIUM is None:
        pytest.fail("Debian's chromium must be installed in CI (.ci/run installs it)")
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
           "--ServerApp.allow_root=True", f"--LabApp.app_settings_dir={ROOT / 'jupyter'}"]  # as `make lab` starts it
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
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The reloaded lab may restore the previously open notebook first: wait for this one to be current.
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path.endsWith(name) && w.sessionContext &&"
                           " w.sessionContext.session && w.sessionContext.session.kernel &&"
                           " w.sessionContext.session.kernel.status === 'idle'; }", arg=name, timeout=60_000)


def _printed(page) -> str:
    """Everything the notebook's cells printed, from the notebook model (off-screen cells are not drawn)."""
    return page.evaluate("""() => {
        const out = [];
        for (const c of window.jupyterapp.shell.currentWidget.content.widgets) {
            if (c.model.type !== 'code') continue;
            for (let i = 0; i < c.model.outputs.length; i++) {
                const o = c.model.outputs.get(i).toJSON();
                if (o.output_type === 'stream') out.push(Array.isArray(o.text) ? o.text.join('') : o.text);
            }
        }
        return out.join('');
    }""")


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


@pytest.mark.timeout(900)
def test_a_participant_picks_deploys_and_sees_figures(lab):
    from playwright.sync_api import sync_playwright

    url, work, env = lab
    port = free_port_block(6)
    common = {"release_postfix": "lab-test", "gateway_port": port}
    _set_parameters(work / "02-deploy.ipynb", {**common, "interactive": True, "replicas": 4})
    _set_parameters(work / "04-routing-and-cache.ipynb", {**common, "replicas": 0, "requests": 24, "rate": 20.0,
                                                           "profiles": "random,default-plugins"})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
        # Three replicas, by interacting: focus the slider and step it down once; then Deploy.
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector(".widget-readout:has-text('3')", timeout=10_000)
        page.locator("button:has-text('Deploy')").click()
        page.wait_for_selector(f"{OUT}:has-text('deployed local with 3 model servers')", timeout=120_000)
        # Run the rest, as the prose says one may.
        _run(page, "notebook:run-all-below", _cell_index(page, "s = choice.session()"))
        assert "3 model servers, ready: True" in _printed(page)
        status = json.loads(subprocess.run([sys.executable, "-m", "kit", "status", "-e", "local", "--postfix",
                                            "lab-test", "--json"], env=env, capture_output=True, text=True,
                                           timeout=60).stdout)
        assert [p["role"] for p in status["processes"]].count("simulator") == 3 and status["ready"]
        # 04 uses what is deployed and draws its figures.
        _open(page, url, "04-routing-and-cache.ipynb")
        _run(page, "notebook:run-all-cells")
        printed = _printed(page)
        assert "using the stack that is up: local/lab-test with 3 model servers (as deployed)" in printed
        assert "results in" in printed
        assert _figures_drawn(page) >= 7  # heatmap, hit rate, queue/KV, decision, ranking, TTFT, hot groups
        browser.close()
