"""Plotly figures of routing and cache behaviour. Interactive in JupyterLab, and still there in exported HTML.

Call ``setup()`` once per notebook: figures are stored as plotly's JupyterLab mimetype only (the figure's
JSON, drawn by the plotly extension JupyterLab ships with), so a saved notebook stays small. HTML is
made at export time: the kit's report and its ``kit_html`` nbconvert exporter (in JupyterLab: File →
Save and Export Notebook As → Kit_html) draw each figure and embed plotly.js once, so the page works
offline. ``PLOTLY_RENDERER`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from kit.experiments.results import Comparison, Sweep, is_stale

# Showing a figure imports plotly's renderers, which import nbformat, whose jsonschema builds some forty parsers
# for an optional IRI format check when rfc3987-syntax is installed (JupyterLab's dependencies install it):
# 1 to 3 s before a kernel's first figure, for a check no figure makes. A kernel that draws the kit's figures
# goes without that check (jsonschema then accepts any IRI); one that imported jsonschema first keeps it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6")
# One colour per scheduler profile and per scorer in every figure of every notebook, so a reader who has
# learned that the guide's default is blue never has to read a legend again. Names not listed get a colour
# from their name (the same one everywhere, not the next in line).
PROFILE_COLORS = {"random": "#9D9D9D", "round-robin": "#BAB0AC", "load-only": "#F58518", "prefix-only": "#72B7B2",
                  "prefix-active": "#B279A2", "default-plugins": "#4C78A8", "precise": "#54A24B"}
SCORER_COLORS = {"prefix-cache-scorer": "#4C78A8", "precise-prefix-cache-scorer": "#54A24B",
                 "queue-scorer": "#F58518", "kv-cache-utilization-scorer": "#E45756",
                 "active-request-scorer": "#B279A2", "running-requests-scorer": "#EECA3B",
                 "load-aware-scorer": "#FF9DA6"}


def _color(name: str, known: dict[str, str]) -> str:
    return known.get(name) or PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def profile_color(profile: str) -> str:
    """The colour of a scheduler profile (a template name) in every figure."""
    return _color(profile, PROFILE_COLORS)


def scorer_color(scorer: str) -> str:
    """The colour of a scorer (its plugin name in the config) in every figure."""
    return _color(scorer, SCORER_COLORS)


def setup() -> str:
    pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype")
    pio.templates.default = "plotly_white"
    return pio.renderers.default


def _short(name: str) -> str:
    return name.rsplit(":", 1)[-1] if name.count(":") == 1 else name


def requests_heatmap(cmp: Comparison) -> go.Figure:
    """Requests per endpoint per prefix group, one panel per profile: prefix-aware routing is a diagonal."""
    eps = cmp.endpoints()
    groups = sorted({r.group for run in cmp.runs for r in run.requests if r.group is not None})
    fig = make_subplots(rows=1, cols=len(cmp.runs), subplot_titles=[r.profile for r in cmp.runs],
                        shared_yaxes=True, horizontal_spacing=0.03)
    top = 1
    for i, run in enumerate(cmp.runs, start=1):
        counts = defaultdict(int)
        for r in run.requests:
            if r.ok and r.endpoint:
                counts[(r.group, r.endpoint)] += 1
        z = [[counts[(g, e)] for e in eps] for g in groups]
        top = max([top, *(v for row in z for v in row)])
        fig.add_trace(go.Heatmap(z=z, x=[_short(e) for e in eps], y=[f"group {g}" for g in groups],
                                 coloraxis="coloraxis", hovertemplate="%{y} → port %{x}: %{z} requests<extra></extra>"),
                      row=1, col=i)
    fig.update_layout(title="Requests per prefix group and endpoint", coloraxis={"colorscale": "Blues", "cmin": 0,
                                                                                 "cmax": top},
                      height=380, margin={"t": 80})
    fig.update_xaxes(title_text="endpoint (port)")
    return fig


def hit_rate_over_time(cmp: Comparison) -> go.Figure:
    """Cumulative prefix-cache hit rate of each endpoint during each profile's run."""
    eps = cmp.endpoints()
    color = {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(eps)}
    fig = make_subplots(rows=1, cols=len(cmp.runs), subplot_titles=[r.profile for r in cmp.runs], shared_yaxes=True,
                        horizontal_spacing=0.03)
    for i, run in enumerate(cmp.runs, start=1):
        first: dict[str, tuple[float, float]] = {}
        series: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for s in run.samples:
            e = s.endpoint
            h0, q0 = first.setdefault(e, (s.prefix_hits, s.prefix_queries))
            dq = s.prefix_queries - q0
            if dq > 0:
                series[e][0].append(s.t)
                series[e][1].append((s.prefix_hits - h0) / dq)
        for e, (t, v) in sorted(series.items()):
            fig.add_trace(go.Scatter(x=t, y=v, mode="lines", name=_short(e), legendgroup=e, showlegend=i == 1,
                                     line={"color": color[e]}), row=1, col=i)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_xaxes(title_text="seconds into the run")
    fig.update_layout(title="Prefix-cache hit rate per endpoint over time (cumulative, from the servers' counters)",
                      height=380, legend_title_text="endpoint", margin={"t": 80})
    return fig


def ttft_distributions(cmp: Comparison) -> go.Figure:
    """Time to first token per profile (box: quartiles; points: every request)."""
    fig = go.Figure()
    for run in cmp.runs:
        ttfts = [1000 * r.ttft for r in run.requests if r.ok and r.ttft is not None]
        fig.add_trace(go.Box(y=ttfts, name=run.profile, boxpoints="all", jitter=0.4, pointpos=0,
                             marker={"size": 3, "color": profile_color(run.profile)}, boxmean=True))
    fig.update_layout(title=f"Time to first token by scheduler profile ({cmp.scale})", yaxis_title="TTFT (ms)",
                      showlegend=False, height=420)
    return fig


def queue_and_kv(cmp: Comparison, profile: str) -> go.Figure:
    """Waiting queue and KV-cache usage of each endpoint over one profile's run."""
    run = cmp.run(profile)
    eps = sorted({s.endpoint for s in run.samples})
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["requests waiting (vllm:num_requests_waiting)",
                                        "KV-cache usage (vllm:kv_cache_usage_perc)"])
    for i, e in enumerate(eps):
        rows = [s for s in run.samples if s.endpoint == e]
        c = PALETTE[i % len(PALETTE)]
        t = [s.t for s in rows]
        fig.add_trace(go.Scatter(x=t, y=[s.waiting for s in rows], name=_short(e), legendgroup=e,
                                 line={"color": c}), row=1, col=1)
        fig.add_trace(go.Scatter(x=t, y=[s.kv_usage for s in rows], name=_short(e), legendgroup=e,
                                 showlegend=False, line={"color": c}), row=2, col=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="seconds into the run", row=2, col=1)
    fig.update_layout(title=f"Queue depth and KV usage over time ({profile})", height=520,
                      legend_title_text="endpoint")
    return fig


def decision_breakdown(decision: dict[str, Any], template: str | None = None) -> go.Figure:
    """Why the picker chose this endpoint: each scorer's weighted contribution to every endpoint's total.

    ``template``: the scheduler profile (templates/scheduler) the picker ran, named in the title; without it the
    title names the scheduling profile inside the config, which is "default" in most templates."""
    cands = [c for c in decision["candidates"] if not c["filtered_by"]]
    names = [_short(c["endpoint"]) + (" ← picked" if c["endpoint"] in decision["picked"] else "") for c in cands]
    fig = go.Figure()
    for scorer, weight in decision["weights"].items():
        vals = [weight * c["scores"].get(scorer, 0.0) for c in cands]
        raw = [c["scores"].get(scorer, 0.0) for c in cands]
        fig.add_trace(go.Bar(y=names, x=vals, name=f"{scorer} ×{weight:g}", orientation="h",
                             marker={"color": scorer_color(scorer)}, customdata=raw,
                             hovertemplate="score %{customdata:.2f} × weight = %{x:.2f}<extra>" + scorer + "</extra>"))
    decided = f"scheduler profile {template}" if template else f"scheduling profile {decision['profile']}"
    fig.update_layout(barmode="stack", title=f"Why request {decision['request_id'][:12]} went where it went "
                      f"({decided})", xaxis_title="weighted score", height=140 + 60 * len(cands),
                      legend={"title": {"text": "scorer × weight"}})  # beside the bars, clear of both axes
    return fig


def summary_table(cmp: Comparison) -> go.Figure:
    runs = [(r.profile, r.summary) for r in cmp.runs]
    cols = ["profile", "hit rate", "TTFT p50 (ms)", "TTFT p90 (ms)", "E2E p90 (s)", "req/s", "errors"]
    cells = [[p for p, _ in runs], [f"{100 * s.prefix_cache_hit_rate:.1f}%" for _, s in runs],
             [f"{1000 * (s.ttft_p50_s or 0):.1f}" for _, s in runs],
             [f"{1000 * (s.ttft_p90_s or 0):.1f}" for _, s in runs],
             [f"{s.e2e_p90_s or 0:.2f}" for _, s in runs], [f"{s.requests_per_s or 0:.1f}" for _, s in runs],
             [s.errors for _, s in runs]]
    fig = go.Figure(go.Table(header={"values": cols, "fill_color": "#4C78A8", "font": {"color": "white"}},
                             cells={"values": cells}))
    fig.update_layout(title=f"Scheduler profiles compared ({cmp.scale})", height=120 + 30 * len(runs),
                      margin={"t": 50, "b": 10})
    return fig


def _sweep_panels(sweep: Sweep, title: str, ytitle: str, value, objective: float | None = None,
                  log: bool = False) -> go.Figure:
    reps = sweep.replicas()
    fig = make_subplots(rows=1, cols=len(reps), subplot_titles=[f"{n} replicas" for n in reps], shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, n in enumerate(reps, start=1):
        for profile in sweep.profiles():
            pts = [p for p in sweep.series(profile, n) if value(p) is not None]
            fig.add_trace(go.Scatter(x=[p.rate for p in pts], y=[value(p) for p in pts], mode="lines+markers",
                                     name=profile, legendgroup=profile, showlegend=col == 1,
                                     line={"color": profile_color(profile)},
                                     hovertemplate=profile + ": %{x:g} req/s → %{y:.3g}<extra></extra>"),
                          row=1, col=col)
        if objective is not None:
            fig.add_hline(y=objective, line_dash="dot", line_color="gray", row=1, col=col,
                          annotation_text=f"objective {objective:g} s", annotation_position="top left")
    fig.update_xaxes(title_text="offered rate (requests/s)")
    fig.update_yaxes(title_text=ytitle, row=1, col=1)
    if log:
        fig.update_yaxes(type="log")
    fig.update_layout(title=f"{title} ({sweep.scale})", height=420, legend_title_text="profile")
    return fig


def ttft_vs_rate(sweep: Sweep, objective_s: float | None = None) -> go.Figure:
    """TTFT p90 against the offered rate, one line per profile, one panel per replica count (log scale)."""
    return _sweep_panels(sweep, "Time to first token (p90) as the load grows", "TTFT p90 (s)",
                         lambda p: p.summary.ttft_p90_s, objective_s, log=True)


def hit_rate_vs_rate(sweep: Sweep) -> go.Figure:
    """Pool-wide prefix-cache hit rate against the offered rate."""
    fig = _sweep_panels(sweep, "Prefix-cache hit rate as the load grows", "hit rate",
                        lambda p: p.summary.prefix_cache_hit_rate)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def capacity_label(row: dict[str, Any], rates: list[float]) -> str:
    """Where a capacity measured at ``rates`` lies: ``"250–350"`` (met the objective at 250, missed it at 350), or
    at the edges of the rates tried ``"≥ 550"`` (even the highest met it) and ``"< 150"`` (even the lowest missed)."""
    best, rates = row["capacity_rps"], sorted(rates)
    if best is None:
        return f"< {rates[0]:g}"
    above = [r for r in rates if r > best]
    return f"{best:g}–{above[0]:g}" if above else f"≥ {best:g}"


def capacity_bars(sweep: Sweep, objective_s: float) -> go.Figure:
    """The highest rate meeting the TTFT p90 objective, per profile and replica count; each bar says when it
    sits at an edge of the rates tried."""
    rows = sweep.capacity(objective_s)
    rates = sorted({p.rate for p in sweep.points})
    fig = go.Figure()
    for profile in sweep.profiles():
        mine = [r for r in rows if r["profile"] == profile]
        labels = [capacity_label(r, rates) for r in mine]
        fig.add_trace(go.Bar(x=[f"{r['replicas']} replicas" for r in mine], y=[r["capacity_rps"] or 0 for r in mine],
                             name=profile, marker={"color": profile_color(profile)}, text=labels,
                             textposition="outside", customdata=labels,
                             hovertemplate=profile + ": capacity %{customdata} req/s<extra></extra>"))
    top = max(rates) if rates else 1
    fig.update_layout(barmode="group", yaxis_title="requests/s", height=420, legend_title_text="profile",
                      yaxis_range=[0, 1.15 * top],
                      title=f"Capacity: highest rate tried with TTFT p90 ≤ {objective_s:g} s ({sweep.scale})<br>"
                            f"<sup>rates tried: {', '.join(f'{r:g}' for r in rates)} requests/s</sup>")
    return fig


def stale_picks(cmp: Comparison, beliefs: dict[str, dict[str, float]], believed: float = 0.9,
                found: float = 0.5) -> go.Figure:
    """Does the picker's prefix index match the servers' caches? Left: per request, the prefix score of the
    endpoint it chose (what the index believed) against the share of the prompt that endpoint really had
    cached. Right: the running count of *stale* picks, chosen for a prefix the index believed held (score
    ≥ ``believed``) that the server no longer had (< ``found`` of the prompt cached).

    ``beliefs``: profile → request id → the chosen endpoint's prefix score (from the decisions).
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
        "believed vs really cached, per request", "stale picks so far"))
    for run in (r for r in cmp.runs if r.profile in beliefs):
        color, seen = profile_color(run.profile), beliefs[run.profile]
        rows = sorted((r.started, seen[r.request_id], r.cached_tokens / r.prompt_tokens)
                      for r in run.requests if r.ok and r.request_id in seen and r.prompt_tokens)
        if not rows:
            continue
        t0 = rows[0][0]
        fig.add_trace(go.Scatter(x=[b for _, b, _ in rows], y=[c for _, _, c in rows], mode="markers",
                                 name=run.profile, legendgroup=run.profile, marker={"color": color, "opacity": 0.6},
                                 hovertemplate="believed %{x:.2f}, cached %{y:.2f}<extra>" + run.profile + "</extra>"),
                      row=1, col=1)
        stale, ys = 0, []
        for _, b, c in rows:
            stale += is_stale(b, c, believed, found)
            ys.append(stale)
        fig.add_trace(go.Scatter(x=[t - t0 for t, _, _ in rows], y=ys, mode="lines", name=run.profile,
                                 legendgroup=run.profile, showlegend=False, line={"color": color}),
                      row=1, col=2)
    fig.update_xaxes(title_text="prefix score of the chosen endpoint", range=[-0.05, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="share of the prompt found cached", range=[-0.05, 1.05], row=1, col=1)
    fig.update_xaxes(title_text="seconds into the run", row=1, col=2)
    fig.update_yaxes(title_text="stale picks", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="The prefix index against the servers' real caches", height=420, margin={"t": 80})
    return fig
