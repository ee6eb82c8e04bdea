"""Figures from a known comparison, and the results file they can be redrawn from."""

import re

import pytest

from kit.experiments import plots
from kit.experiments.results import Comparison, MetricSample, ProfileRun, RequestResult, summarize


def run(profile, assign):
    requests = [RequestResult(200, endpoint=e, ttft=t, e2e=0.2, prompt_tokens=10, request_id=f"{profile}{i}", group=g)
                for i, (g, e, t) in enumerate(assign)]
    samples = [MetricSample(t, e, waiting=t, running=1, kv_usage=0.1 * t, prefix_hits=10 * t, prefix_queries=20 * t)
               for t in (0, 1, 2) for e in ("h:1", "h:2")]
    decision = {"request_id": "abc", "profile": "default", "picked": ["h:1"],
                "weights": {"queue-scorer": 2.0, "prefix-cache-scorer": 3.0},
                "candidates": [{"endpoint": "h:1", "scores": {"queue-scorer": 1.0, "prefix-cache-scorer": 1.0},
                                "total": 5.0, "filtered_by": None},
                               {"endpoint": "h:2", "scores": {"queue-scorer": 0.5, "prefix-cache-scorer": 0.0},
                                "total": 1.0, "filtered_by": None}]}
    summary = summarize(requests, 1.0, {"h:1": (5, 10), "h:2": (5, 10)})
    return ProfileRun(profile, summary, requests, samples, decision)


@pytest.fixture
def cmp():
    c = Comparison({}, {}, "local")
    c.runs = [run("random", [(0, "h:1", 0.1), (0, "h:2", 0.2), (1, "h:1", 0.3)]),
              run("default", [(0, "h:1", 0.05), (0, "h:1", 0.06), (1, "h:2", 0.07)])]
    return c


def test_heatmap_counts_requests_per_group_and_endpoint(cmp):
    fig = plots.requests_heatmap(cmp)
    assert [[list(row) for row in t.z] for t in fig.data] == [[[1, 1], [1, 0]], [[2, 0], [0, 1]]]
    assert list(fig.data[0].x) == ["1", "2"]


def test_hit_rate_series_are_cumulative_from_the_counters(cmp):
    fig = plots.hit_rate_over_time(cmp)
    assert len(fig.data) == 4 and list(fig.data[0].y) == [0.5, 0.5]


def test_ttft_boxes_one_per_profile_in_ms(cmp):
    fig = plots.ttft_distributions(cmp)
    assert [t.name for t in fig.data] == ["random", "default"]
    assert list(fig.data[1].y) == pytest.approx([50, 60, 70])


def test_decision_breakdown_stacks_weighted_scores(cmp):
    fig = plots.decision_breakdown(cmp.run("default").decision)
    assert [list(t.x) for t in fig.data] == [[2.0, 1.0], [3.0, 0.0]]
    assert fig.data[0].y[0].endswith("← picked")
    assert fig.layout.title.text.endswith("(scheduling profile default)")  # without the template: the config's name


def test_the_decision_title_names_the_template_and_the_legend_stays_off_the_axes(cmp):
    fig = plots.decision_breakdown(cmp.run("default").decision, "precise")
    assert fig.layout.title.text.endswith("(scheduler profile precise)")
    legend = fig.layout.legend
    assert legend.y is None and legend.orientation in (None, "v")  # plotly's place: right of the plot area


def test_each_profile_and_each_scorer_has_one_colour_everywhere(cmp):
    box = {t.name: t.marker.color for t in plots.ttft_distributions(cmp).data}
    assert box["random"] == plots.profile_color("random") == plots.PROFILE_COLORS["random"]
    assert plots.profile_color("default-plugins") != plots.profile_color("random")
    assert plots.profile_color("my-own") == plots.profile_color("my-own")  # unknown names: stable, from the name
    bars = {t.name.split(" ×")[0]: t.marker.color for t in plots.decision_breakdown(cmp.run("default").decision).data}
    reordered = dict(cmp.run("default").decision, weights={"prefix-cache-scorer": 3.0, "queue-scorer": 2.0})
    again = {t.name.split(" ×")[0]: t.marker.color for t in plots.decision_breakdown(reordered).data}
    assert bars == again == {"queue-scorer": plots.SCORER_COLORS["queue-scorer"],
                             "prefix-cache-scorer": plots.SCORER_COLORS["prefix-cache-scorer"]}


def test_queue_kv_and_table(cmp):
    assert len(plots.queue_and_kv(cmp, "default").data) == 4
    assert list(plots.summary_table(cmp).data[0].cells.values[1]) == ["50.0%", "50.0%"]


def test_setup_stores_figures_as_json_only(monkeypatch):
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    assert plots.setup() == "plotly_mimetype"  # no plotly.js in saved notebooks


def test_exported_html_draws_every_figure_with_plotly_js_once(cmp):
    import nbformat

    from kit.experiments.report import PLOTLY_MIME, OfflineHTMLExporter

    nb = nbformat.v4.new_notebook()
    for fig in (plots.requests_heatmap(cmp), plots.ttft_distributions(cmp)):
        cell = nbformat.v4.new_code_cell("fig.show()")
        cell.outputs = [nbformat.v4.new_output("display_data", data={PLOTLY_MIME: fig.to_plotly_json()})]
        nb.cells.append(cell)
    html, _ = OfflineHTMLExporter().from_notebook_node(nb)
    assert html.count('class="plotly-graph-div"') == 2
    assert html.count("Plotly.newPlot") >= 2
    # Nothing is fetched from a CDN: no require.js, MathJax, mermaid or widget renderer.
    assert not re.findall(r'<script[^>]+src="https?://', html) and "cdnjs" not in html and "unpkg" not in html
    assert 4_000_000 < len(html) < 6_000_000  # plotly.js (4.8 MB) once, not once per figure
    assert all("text/html" not in c.outputs[0]["data"] for c in nb.cells)  # the notebook itself is untouched


def test_a_comparison_survives_its_results_file(cmp, tmp_path):
    again = Comparison.read(cmp.save(tmp_path / "results.json"))
    assert again == cmp
    assert [[list(row) for row in t.z] for t in plots.requests_heatmap(again).data] == [[[1, 1], [1, 0]],
                                                                                         [[2, 0], [0, 1]]]


@pytest.fixture
def sweep():
    from kit.experiments.results import Sweep, SweepPoint

    def point(profile, n, rate, ttft, hit, errors=0):
        s = summarize([RequestResult(200, ttft=ttft, e2e=1.0)], 1.0)
        s.ttft_p90_s, s.prefix_cache_hit_rate, s.errors = ttft, hit, errors
        return SweepPoint(profile, n, rate, s)

    return Sweep({}, {}, [point("random", 2, 10, 0.1, 0.2), point("random", 2, 20, 0.9, 0.2),
                          point("random", 4, 10, 0.1, 0.2), point("random", 4, 20, 0.2, 0.2),
                          point("default", 2, 10, 0.05, 0.8), point("default", 2, 20, 0.1, 0.8),
                          point("default", 4, 10, 0.05, 0.9), point("default", 4, 20, 0.06, 0.9, errors=1)])


def test_capacity_is_the_highest_rate_meeting_the_objective_from_below(sweep):
    caps = {(r["profile"], r["replicas"]): r["capacity_rps"] for r in sweep.capacity(0.5)}
    assert caps == {("random", 2): 10, ("random", 4): 20, ("default", 2): 20, ("default", 4): 10}  # errors count
    assert {r["capacity_rps"] for r in sweep.capacity(0.01)} == {None}


def test_sweep_figures_have_a_line_per_profile_and_a_panel_per_replica_count(sweep, tmp_path):
    from kit.experiments.results import Sweep

    fig = plots.ttft_vs_rate(sweep, objective_s=0.5)
    assert len(fig.data) == 4 and list(fig.data[0].y) == [0.1, 0.9] and fig.layout.yaxis.type == "log"
    assert [a.text for a in fig.layout.annotations if "objective" in a.text] == ["objective 0.5 s"] * 2  # each panel
    assert not [a for a in fig.layout.annotations if a.text == "new text"]
    assert list(plots.hit_rate_vs_rate(sweep).data[1].y) == [0.8, 0.8]  # default, 2 replicas
    bars = plots.capacity_bars(sweep, 0.5)
    assert [list(b.y) for b in bars.data] == [[10, 20], [20, 10]]
    # Each bar says where the capacity lies among the rates tried, edges included.
    assert [list(b.text) for b in bars.data] == [["10–20", "≥ 20"], ["≥ 20", "10–20"]]
    assert [list(b.text) for b in plots.capacity_bars(sweep, 0.01).data] == [["< 10", "< 10"]] * 2
    again = Sweep.read(sweep.save(tmp_path / "s.json"))
    assert again.capacity(0.5) == sweep.capacity(0.5) and again.table() == sweep.table()
