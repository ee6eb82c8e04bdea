"""Typed results, shared by everything that produces or reads them: the client, workloads, sampling,
comparisons, the results file and the plots. Standard library only.

* ``RequestResult``: what one request returned and how long it took.
* ``MetricSample``: one model server's metrics at one moment of a run.
* ``Summary``: the figures ``kit bench`` prints (``to_dict`` gives its JSON keys).
* ``ProfileRun`` and ``Comparison``: one workload under several scheduler profiles, saved as JSON.
* ``SweepPoint`` and ``Sweep``: one summary per (profile, replicas, rate), and the capacity they show.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class RequestResult:
    """One request (seconds; ``started`` is a perf_counter stamp, ``group`` the workload's prompt group)."""

    status: int
    started: float = 0.0
    text: str = ""
    endpoint: str | None = None
    request_id: str | None = None
    ttft: float | None = None
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    group: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class MetricSample:
    """A model server's gauges and cumulative prefix-cache counters, ``t`` seconds into a run."""

    t: float
    endpoint: str
    waiting: float
    running: float
    kv_usage: float
    prefix_hits: float
    prefix_queries: float


@dataclass
class EndpointSummary:
    requests: int = 0
    hit_rate: float = 0.0


@dataclass
class Summary:
    """A run's figures; ``to_dict()`` is the JSON ``kit bench`` prints (times in seconds)."""

    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    prefix_cache_hit_rate: float
    duration_s: float
    per_endpoint: dict[str, EndpointSummary]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in known})
        out.per_endpoint = {k: EndpointSummary(**v) for k, v in data.get("per_endpoint", {}).items()}
        return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in [0, 1]); None for no values."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def counted_percentile(counts: dict[float, int], q: float) -> float | None:
    """``percentile`` of a list given as value → how many times it occurs (the fleet simulator's inter-token
    gaps: millions of tokens share a few thousand distinct gaps)."""
    total = sum(counts.values())
    if not total:
        return None
    k = (total - 1) * q
    lo_rank, frac = int(k), k - int(k)
    seen = 0
    lo = None
    for v in sorted(counts):
        seen += counts[v]
        if lo is None and seen > lo_rank:
            lo = v
        if seen > lo_rank + (1 if frac else 0):
            return lo + (v - lo) * frac
    return lo


def _r6(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def summarize(results: list[RequestResult], wall_s: float,
              cache: dict[str, tuple[float, float]] | None = None,
              itl_counts: dict[float, int] | None = None) -> Summary:
    """The figures of a run: latency percentiles, throughput, errors, and prefix-cache hit rates from
    ``cache`` (endpoint → (hit tokens, queried tokens) during the run, from the servers' counters).
    Inter-token gaps come from the requests' ``itls``, or from ``itl_counts`` (gap → tokens) when given."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [g for r in ok for g in r.itls]
    if itl_counts is not None:
        itl_p50, itl_p90 = counted_percentile(itl_counts, 0.5), counted_percentile(itl_counts, 0.9)
    else:
        itl_p50, itl_p90 = percentile(itl, 0.5), percentile(itl, 0.9)
    e2e = [r.e2e for r in ok]
    per: dict[str, EndpointSummary] = {}
    for r in ok:
        if r.endpoint:
            per.setdefault(r.endpoint, EndpointSummary()).requests += 1
    hits = queries = 0.0
    for name, (dh, dq) in (cache or {}).items():
        hits, queries = hits + dh, queries + dq
        per.setdefault(name, EndpointSummary()).hit_rate = round(dh / dq, 4) if dq else 0.0
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = str(r.status) if r.status else "connection"
            errors[key] = errors.get(key, 0) + 1
    return Summary(
        requests=len(results), ok=len(ok), errors=len(results) - len(ok), error_kinds=errors,
        ttft_p50_s=_r6(percentile(ttft, 0.5)), ttft_p90_s=_r6(percentile(ttft, 0.9)),
        ttft_p99_s=_r6(percentile(ttft, 0.99)), itl_p50_s=_r6(itl_p50),
        itl_p90_s=_r6(itl_p90), e2e_p50_s=_r6(percentile(e2e, 0.5)), e2e_p90_s=_r6(percentile(e2e, 0.9)),
        requests_per_s=round(len(ok) / wall_s, 3) if wall_s else None,
        output_tokens_per_s=round(sum(r.completion_tokens for r in ok) / wall_s, 1) if wall_s else None,
        prefix_cache_hit_rate=round(hits / queries, 4) if queries else 0.0, duration_s=round(wall_s, 3),
        per_endpoint=dict(sorted(per.items())))


@dataclass
class ProfileRun:
    """One workload under one scheduler profile: summary, every request, metric samples, one decision."""

    profile: str
    summary: Summary
    requests: list[RequestResult]
    samples: list[MetricSample]
    decision: dict[str, Any] | None = None

    def routed_hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens of this run's own requests (the servers' counters, which
        ``summary.prefix_cache_hit_rate`` reads, also count traffic that did not go through the gateway)."""
        ok = [r for r in self.requests if r.ok and r.prompt_tokens]
        return sum(r.cached_tokens for r in ok) / max(1, sum(r.prompt_tokens for r in ok))

    def top_share(self, group: int) -> float:
        """The share of one prefix group's answered requests that went to the server taking most of them (1.0: the
        whole group on one server); 0.0 if none was answered."""
        counts: dict[str, int] = {}
        for r in self.requests:
            if r.ok and r.group == group and r.endpoint:
                counts[r.endpoint] = counts.get(r.endpoint, 0) + 1
        return max(counts.values()) / sum(counts.values()) if counts else 0.0

    def stale_picks(self, beliefs: dict[str, float], believed: float = 0.9, found: float = 0.5) -> int:
        """Requests sent where the prefix scorer believed the prompt cached (score ≥ ``believed``) and the server
        found less than ``found`` of it; ``beliefs``: request id → the chosen endpoint's prefix score."""
        return sum(1 for r in self.requests if r.request_id in beliefs and r.prompt_tokens
                   and is_stale(beliefs[r.request_id], r.cached_tokens / r.prompt_tokens, believed, found))


def is_stale(belief: float, cached_share: float, believed: float = 0.9, found: float = 0.5) -> bool:
    """A pick the prefix index believed warm (``belief`` ≥ ``believed``) that found less than ``found`` cached."""
    return belief >= believed and cached_share < found


def picked_prefix_score(decision: dict[str, Any] | None) -> float | None:
    """The prefix scorer's score of the endpoint a recorded decision picked (None: no prefix scorer ran)."""
    if not decision:
        return None
    picked = [c for c in decision.get("candidates", []) if c["endpoint"] in decision.get("picked", [])]
    scores = [v for k, v in (picked[0]["scores"] if picked else {}).items() if "prefix" in k]
    return scores[0] if scores else None


@dataclass
class Comparison:
    """The same workload under several profiles; ``scale`` says what produced the figures."""

    workload: dict[str, Any]
    load: dict[str, Any]
    environment: str
    runs: list[ProfileRun] = field(default_factory=list)
    scale: str = "local stack"

    def run(self, profile: str) -> ProfileRun:
        return next(r for r in self.runs if r.profile == profile)

    def endpoints(self) -> list[str]:
        """Every endpoint that served a request or was sampled, sorted."""
        return sorted({r.endpoint for run in self.runs for r in run.requests if r.endpoint}
                      | {s.endpoint for run in self.runs for s in run.samples})

    def table(self) -> list[dict[str, Any]]:
        return [{"profile": r.profile, "hit_rate": r.summary.prefix_cache_hit_rate,
                 "ttft_p50_s": r.summary.ttft_p50_s, "ttft_p90_s": r.summary.ttft_p90_s,
                 "e2e_p90_s": r.summary.e2e_p90_s, "requests_per_s": r.summary.requests_per_s,
                 "errors": r.summary.errors} for r in self.runs]

    def save(self, path: str | Path) -> Path:
        """The machine-readable results file."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"environment": self.environment, "scale": self.scale, "workload": self.workload,
                                 "load": self.load, "profiles": {r.profile: r.summary.to_dict() for r in self.runs},
                                 "table": self.table(), "runs": [asdict(r) for r in self.runs]}, indent=1))
        return p

    @classmethod
    def read(cls, path: str | Path) -> Comparison:
        """A comparison from a results file written by ``save``."""
        data = json.loads(Path(path).read_text())
        runs = [ProfileRun(r["profile"], Summary.from_dict(r["summary"]),
                           [RequestResult(**q) for q in r["requests"]], [MetricSample(**s) for s in r["samples"]],
                           r.get("decision")) for r in data["runs"]]
        return cls(data["workload"], data["load"], data["environment"], runs, data.get("scale", "local stack"))


@dataclass
class SweepPoint:
    """One point of a sweep: a profile, a number of replicas, an offered rate, and what the run measured."""

    profile: str
    replicas: int
    rate: float
    summary: Summary


@dataclass
class Sweep:
    """The same workload at several rates, replica counts and profiles (from the fleet simulator)."""

    workload: dict[str, Any]
    load: dict[str, Any]
    points: list[SweepPoint] = field(default_factory=list)
    scale: str = "virtual clock"

    def profiles(self) -> list[str]:
        return list(dict.fromkeys(p.profile for p in self.points))

    def replicas(self) -> list[int]:
        return sorted({p.replicas for p in self.points})

    def series(self, profile: str, replicas: int) -> list[SweepPoint]:
        """The points of one profile and replica count, by rate."""
        return sorted((p for p in self.points if p.profile == profile and p.replicas == replicas),
                      key=lambda p: p.rate)

    def capacity(self, ttft_p90_s: float) -> list[dict[str, Any]]:
        """Per profile and replica count, the highest rate at which this and every lower rate tried met the
        objective (TTFT p90 at most ``ttft_p90_s`` and no errors); None when even the lowest missed it."""
        rows = []
        for profile in self.profiles():
            for n in self.replicas():
                best = None
                for p in self.series(profile, n):
                    s = p.summary
                    if s.errors or s.ttft_p90_s is None or s.ttft_p90_s > ttft_p90_s:
                        break
                    best = p.rate
                rows.append({"profile": profile, "replicas": n, "capacity_rps": best,
                             "per_replica_rps": None if best is None else round(best / n, 3)})
        return rows

    def table(self) -> list[dict[str, Any]]:
        return [{"profile": p.profile, "replicas": p.replicas, "rate": p.rate,
                 "hit_rate": p.summary.prefix_cache_hit_rate, "ttft_p50_s": p.summary.ttft_p50_s,
                 "ttft_p90_s": p.summary.ttft_p90_s, "e2e_p90_s": p.summary.e2e_p90_s,
                 "requests_per_s": p.summary.requests_per_s, "errors": p.summary.errors} for p in self.points]

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"scale": self.scale, "workload": self.workload, "load": self.load,
                                 "points": [asdict(q) for q in self.points]}, indent=1))
        return p

    @classmethod
    def read(cls, path: str | Path) -> Sweep:
        data = json.loads(Path(path).read_text())
        points = [SweepPoint(q["profile"], q["replicas"], q["rate"], Summary.from_dict(q["summary"]))
                  for q in data["points"]]
        return cls(data["workload"], data["load"], points, data.get("scale", "virtual clock"))


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table (what notebooks and the CLI print, so headless logs read well too)."""
    rows = list(rows)
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])
