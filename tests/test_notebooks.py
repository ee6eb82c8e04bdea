"""The walkthrough notebooks under papermill on the local environment, and the report they produce."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from kit.experiments import report
from tests.helpers import running

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = report.notebooks()
REQUIRED = {"environment", "namespace", "release_postfix", "model", "replicas", "interactive"}


def test_each_notebook_has_one_parameters_cell_with_the_shared_parameters():
    assert [nb.stem for nb in NOTEBOOKS] == ["01-prerequisites", "02-deploy", "03-inference",
                                            "04-routing-and-cache", "05-cleanup", "06-capacity",
                                            "07-precise-routing"]
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb.name
        params = papermill.inspect_notebook(str(nb))
        assert set(params) >= REQUIRED, nb.name
        assert params["environment"]["default"] == '"local"' and params["interactive"]["default"] == "False"
        assert all(p["help"] for p in params.values()), nb.name  # every parameter explains itself


def test_code_cells_stay_short():
    for nb in NOTEBOOKS:
        for c in json.loads(nb.read_text())["cells"]:
            if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", []):
                assert len("".join(c["source"]).splitlines()) <= 8, (nb.name, c["source"])


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """``make demo``'s job, once: every notebook executed, the report written, everything stopped."""
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "KIT_STATE_DIR": str(out / "state"), "PYTHONUNBUFFERED": "1"}
    from kit.targets.processes import free_port_block

    port = free_port_block(8)  # the gateway, four simulators, 07's event port: beside other stacks on the machine
    try:
        res = subprocess.run([sys.executable, "-m", "kit", "demo", "--out", str(out), "--port", str(port)],
                             capture_output=True, text=True, timeout=840, env=env)
    finally:  # a demo cut short cannot clean up after itself
        subprocess.run([sys.executable, "-m", "kit", "destroy", "-e", "local"], capture_output=True, env=env,
                       timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res


@pytest.mark.slow
@pytest.mark.timeout(900)  # the whole walkthrough runs first: allow a busy machine
def test_the_walkthrough_writes_notebooks_results_and_report(walkthrough):
    out, res = walkthrough
    assert sorted(p.name for p in (out / "executed").glob("*.ipynb")) == [nb.name for nb in NOTEBOOKS]
    assert f"report:             {out / 'report.html'}" in res.stdout
    assert "notebooks: 100%" in res.stderr  # progress was shown
    results = json.loads((out / "results.json").read_text())
    profiles = results["profiles"]
    assert set(profiles) == {"random", "load-only", "prefix-only", "default-plugins"}
    assert all(p["errors"] == 0 for p in profiles.values())
    default, rnd = profiles["default-plugins"], profiles["random"]
    assert default["prefix_cache_hit_rate"] > rnd["prefix_cache_hit_rate"] + 0.25, (default, rnd)
    assert default["ttft_p90_s"] < rnd["ttft_p90_s"]
    assert results["scale"].startswith("virtual clock") and "How the profiles rank" in res.stdout
    # Saved notebooks stay small: figures are stored as JSON, and plotly.js is added only on export. Headless runs
    # (interactive = False) leave no progress widget behind, nor a frozen text bar.
    for nb in (out / "executed").glob("*.ipynb"):
        text = nb.read_text()
        assert nb.stat().st_size < 600_000, (nb.name, nb.stat().st_size)
        assert "Plotly.newPlot" not in text and "image/png" not in text
        assert "application/vnd.jupyter.widget-view+json" not in text and "0%|" not in text, nb.name
    report_html = (out / "report.html").read_text()
    assert report_html.count("plotly.js v") >= 1  # embedded once, for offline reading
    assert f"<title>{report.TITLE}</title>" in report_html and "0%|" not in report_html


@pytest.mark.slow
@pytest.mark.timeout(900)  # the whole walkthrough runs first: allow a busy machine
def test_the_walkthrough_leaves_nothing_running(walkthrough):
    out, _ = walkthrough
    assert not list((out / "state").glob("*.json"))
    executed = json.loads((out / "executed" / "02-deploy.ipynb").read_text())
    pids = {int(m) for m in re.findall(r"pid (\d+)", json.dumps(executed))}
    pids |= {int(m) for m in re.findall(r'"pid": (\d+)', json.dumps(executed))}
    assert pids and not [pid for pid in pids if running(pid)]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.timeout(900)  # the whole walkthrough runs first: allow a busy machine
def test_every_figure_shows_in_a_real_browser(walkthrough):
    out, _ = walkthrough
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium must be installed in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    html = out / "report.html"
    figures = len(re.findall(r'class="plotly-graph-div"', html.read_text()))
    assert figures >= 6  # summary table, heatmap, hit rate, TTFT, queue/KV, decision
    from playwright.sync_api import sync_playwright

    asked: list[str] = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-background-networking"])
        page = chromium.new_page(viewport={"width": 1280, "height": 4000})
        page.on("request", lambda r: asked.append(r.url))
        page.goto(html.as_uri(), wait_until="load", timeout=120_000)
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}",
                               timeout=120_000)
        rendered = page.evaluate("document.querySelectorAll('.plotly-graph-div.js-plotly-plot').length")
        assert page.title() == report.TITLE
        shot = out / "report.png"
        page.screenshot(path=str(shot))
        chromium.close()
    assert rendered == figures, f"{rendered} of {figures} figures rendered"
    assert shot.exists() and shot.stat().st_size > 50_000
    # Fully offline: the page asks for nothing beyond itself (no CDN for require.js, MathJax or anything else).
    away = [u for u in asked if not u.startswith(("file://", "data:", "blob:", "about:"))
            and not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", u)]
    assert not away, away


@pytest.mark.slow
def test_notebooks_run_alone_after_the_first(tmp_path):
    from kit.targets.processes import free_port_block

    env = {"release_postfix": "solo", "replicas": 2, "gateway_port": free_port_block(3)}
    os.environ["KIT_STATE_DIR"] = str(tmp_path / "state")
    try:
        for name in ("01-prerequisites", "03-inference", "05-cleanup"):
            papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                                       parameters=env, kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    finally:
        from kit.notebook import session

        session("local", release_postfix="solo", gateway_port=env["gateway_port"]).destroy(say=lambda _m: None)
        del os.environ["KIT_STATE_DIR"]
    inference = (tmp_path / "03-inference.ipynb").read_text()
    assert "requests served; the repeated prompt went to" in inference
    assert "using the stack just deployed: local/solo: default-plugins, guide release, 2 simulators" in inference


def test_a_bad_parameter_fails_with_the_valid_choices(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / "01-prerequisites.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"environment": "ist1o"}, kernel_name="python3", progress_bar=False)
    assert "unknown environment 'ist1o'; valid choices: agentgateway" in str(err.value)


def test_the_profile_a_stack_runs_is_named_by_its_template(tmp_path):
    from kit import paths
    from kit.notebook import profile_name, routes_by_prefix
    from kit.targets import kv_events

    assert {p: routes_by_prefix(paths.scheduler_profile(p)) for p in paths.scheduler_profiles()} == {
        "default-plugins": True, "load-only": False, "precise": True, "prefix-active": True, "prefix-only": True,
        "random": False, "round-robin": False, "optimized-baseline": True, "optimized-baseline-output-aware": True,
        "precise-prefix-cache-routing": True}
    assert profile_name(paths.scheduler_profile("load-only")) == "load-only"
    # The local target runs the precise profile from a copy wired to the stack's event port.
    wired = kv_events.wire(paths.scheduler_profile("precise"), "127.0.0.1", 9000, 2, "m", tmp_path / "s.yaml")
    assert wired.config == str(tmp_path / "s.yaml") and profile_name(wired.config) == "precise"
    own = tmp_path / "mine.yaml"
    own.write_text((paths.SCHEDULER_CONFIGS / "random.yaml").read_text())
    assert profile_name(str(own)) == str(own) and not routes_by_prefix(str(own))
    # A prefix scorer declared but weighted 0 in every profile does not route by prefix.
    zero = tmp_path / "zero.yaml"
    zero.write_text((paths.SCHEDULER_CONFIGS / "default-plugins.yaml").read_text().replace("weight: 3", "weight: 0"))
    assert not routes_by_prefix(str(zero))


def test_a_session_says_what_is_deployed(tmp_path, monkeypatch):
    from kit.notebook import session
    from kit.targets import Status

    s = session("local", release_postfix="told")
    monkeypatch.setattr(s.target, "status", lambda: Status(False, "nothing", [], {}))
    assert s.describe() == "local/told: nothing deployed" and s.profile() is None
    rows = [{"role": "gateway"}, {"role": "simulator"}, {"role": "simulator"}]
    up = Status(True, "up", rows, {"scheduler_config": str(ROOT / "templates/scheduler/load-only.yaml")}, replicas=2)
    assert s.describe(up) == "local/told: load-only, guide release, 2 simulators"
    today = session("local-llm-d", release_postfix="told")  # today's llm-d release, named as such
    assert today.describe(up) == "local-llm-d/told: load-only, llm-d-v0.10 release, 2 simulators"
    cluster = Status(False, "up", [{"object": "Pod/a"}], {}, replicas=3)
    assert s.describe(cluster) == ("local/told: scheduler profile not reported (the EPP's ConfigMap holds it), "
                                   "guide release, 3 model servers (not ready)")
