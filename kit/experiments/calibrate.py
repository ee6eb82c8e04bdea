"""Measure a running model server's engine step times through its API and fit the simulator's latency model.

    kit calibrate --url http://127.0.0.1:8001 [--url http://127.0.0.1:8002] --out cpu.yaml

The result is a hardware profile: the six coefficients of the simulator's step model
(``kit.sim.config.SimConfig.step_seconds``) with the points they were fitted to, which ``kit sim --hardware FILE``
and ``kit simulate --hardware FILE`` load beside the shipped ``h100`` and ``h200``.

What is measured, with requests only (any vLLM-compatible server: real vLLM, or ``kit sim`` to check the method),
streamed as the kit's workloads stream them:

* **prefill**: one request at a time, a prompt of N fresh token ids (no prefix-cache hit), one token asked:
  its end-to-end time is one engine step that prefills N tokens (N within the server's batch budget,
  ``--max-prefill``), plus the request's round trip, which a user's time to first token includes too;
* **decode**: B prompts of L fresh tokens are sent once to be cached, then again asking for T1 and then for T2
  tokens (``ignore_eos``): both runs prefill the same cached prompts, so the slowest request's end-to-end time
  grows by exactly (T2 - T1) decode steps of B sequences with about L + T tokens of context, and the step time is
  the difference over T2 - T1. Streamed token gaps are not used: a busy vLLM sends several tokens in one chunk,
  and a token that ends inside a UTF-8 character in none.

Given several servers (``--url`` more than once), each shape runs on all of them at once, so the step times
include what servers sharing a machine cost each other (on a CPU they share its cores), as they will when
they serve a workload together; every server's points enter the fit.

Each point is the median of ``repeat`` runs. The fit minimises the squared relative error of every point: the
decode points give the fixed step cost, the per-sequence cost and the attention read costs (bandwidth-bound in
large batches, latency-bound in small ones, each regime assigned by the fit itself); the prefill points the
per-token and per-token-pair prefill costs and what a request costs outside the engine's steps (HTTP, tokenizing,
handing over: ``request_overhead_ms``, reported beside the coefficients); no coefficient is negative.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from kit.errors import KitError
from kit.experiments.client import models
from kit.sim.config import COEFFICIENTS, SimConfig
from kit.targets.processes import scrape

Say = Callable[[str], None]
PREFILL_N = (16, 64, 256, 512, 1024, 2048)
DECODE_B = (1, 2, 4, 8, 16)
DECODE_L = (64, 512, 2048)
DECODE_T = (8, 64)


@dataclass
class Point:
    """One measured shape: what it is, and its step time (seconds)."""

    kind: str  # "prefill" or "decode"
    tokens: int  # prefill: N; decode: the context of each sequence
    seqs: int  # prefill: 1; decode: B
    seconds: float
    runs: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"prefill {self.tokens}" if self.kind == "prefill" else f"decode B={self.seqs} L={self.tokens}"


def _load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes (the machine may be shared)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


class Calibrator:
    """Sends the measuring requests to one server."""

    def __init__(self, url: str, model: str, vocabulary: list[int], seed: int = 0):
        self.url, self.model, self.vocabulary = url.rstrip("/"), model, vocabulary
        self.rng = random.Random(seed)

    def prompt(self, n: int) -> list[int]:
        """``n`` token ids drawn at random: no two prompts share a block, so nothing hits the prefix cache."""
        return [self.rng.choice(self.vocabulary) for _ in range(n)]

    async def _one(self, session: aiohttp.ClientSession, prompt: list[int], max_tokens: int) -> float:
        """One streamed request's end-to-end time (checking it generated what it asked)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        usage = None
        async with session.post(self.url + "/v1/completions", json=body) as r:
            if r.status != 200:
                raise KitError(f"{self.url} answered {r.status} to a calibration request: {await r.text()}")
            async for line in r.content:
                if line.startswith(b"data: {"):
                    usage = json.loads(line[6:]).get("usage") or usage
        took = time.perf_counter() - start
        if not usage or usage["completion_tokens"] != max_tokens:
            raise KitError(f"{self.url} generated {usage and usage['completion_tokens']} tokens, not {max_tokens}")
        return took

    async def prefill(self, session: aiohttp.ClientSession, n: int) -> float:
        return await self._one(session, self.prompt(n), 1)

    async def decode(self, session: aiohttp.ClientSession, batch: int, context: int) -> float:
        """The step time of ``batch`` sequences decoding with about ``context`` tokens each."""
        prompts = [self.prompt(context) for _ in range(batch)]
        await asyncio.gather(*(self._one(session, p, 1) for p in prompts))  # now cached: both runs prefill alike
        t1, t2 = DECODE_T
        times = []
        for tokens in (t1, t2):
            done = await asyncio.gather(*(self._one(session, p, tokens) for p in prompts))
            times.append(max(done))
        return (times[1] - times[0]) / (t2 - t1)


def vocabulary(url: str, model: str) -> list[int]:
    """Ordinary token ids of the server's tokenizer: those of a plain English text (no special tokens)."""
    import urllib.request

    text = ("The quick brown fox jumps over the lazy dog while the support team answers every customer question "
            "about billing, shipping, refunds and warranty with care, 1234567890 times a day.")
    req = urllib.request.Request(url.rstrip("/") + "/tokenize", data=json.dumps({"model": model, "prompt": text})
                                 .encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        ids = sorted(set(json.loads(r.read())["tokens"]))
    if len(ids) < 16:
        raise KitError(f"{url}/tokenize gave only {len(ids)} distinct ids for a plain sentence")
    return ids


async def measure(cals: list[Calibrator], prefill_n: list[int], decode: list[tuple[int, int]], repeat: int,
                  say: Say) -> list[Point]:
    """Each shape on every server at once; one point per shape and server."""
    points = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        await asyncio.gather(*(c.prefill(s, 16) for c in cals))  # warm the connections and the servers

        async def runs(shape) -> list[list[float]]:  # per server, ``repeat`` runs
            out: list[list[float]] = [[] for _ in cals]
            for _ in range(repeat):
                for i, t in enumerate(await asyncio.gather(*(shape(c) for c in cals))):
                    out[i].append(t)
            return out

        for n in prefill_n:
            per = await runs(lambda c, n=n: c.prefill(s, n))
            points += [Point("prefill", n, 1, statistics.median(r), r) for r in per]
            say(f"prefill {n:>5} tokens: " + ", ".join(f"{1e3 * statistics.median(r):8.2f}" for r in per) + " ms")
        for b, length in decode:
            per = await runs(lambda c, b=b, length=length: c.decode(s, b, length))
            context = length + sum(DECODE_T) // 2
            points += [Point("decode", context, b, statistics.median(r), r) for r in per]
            say(f"decode B={b:>2} L={length:>5}: " + ", ".join(f"{1e3 * statistics.median(r):8.2f}" for r in per)
                + " ms per step")
    return points


# ------------------------------------------------------------------------------------------------------ fit
UNKNOWNS = 7  # the step model's six coefficients, and the request's own cost outside the engine


def _row(p: Point, latency_bound: bool) -> list[float]:
    """The point's coefficients in seconds per unit of (step overhead, prefill token, token pair, decoding sequence,
    context token read, longest context token, request): a prefill point is one request's round trip, so it also
    pays what the server does outside engine steps (HTTP, tokenizing, handing over to the engine)."""
    if p.kind == "prefill":
        return [1.0, p.tokens, p.tokens**2, 0.0, 0.0, 0.0, 1.0]
    return [1.0, 0.0, 0.0, p.seqs, 0.0 if latency_bound else p.seqs * p.tokens, p.tokens if latency_bound else 0.0,
            0.0]


def _solve(rows: list[list[float]], rhs: list[float], free: list[int]) -> list[float]:
    """Least squares over the ``free`` columns: normal equations of the columns scaled to 1 (their magnitudes
    differ by twelve orders), Gaussian elimination with partial pivoting."""
    scale = {c: max(abs(r[c]) for r in rows) or 1.0 for c in free}
    cols = [[r[c] / scale[c] for c in free] for r in rows]
    k = len(free)
    a = [[sum(r[i] * r[j] for r in cols) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(cols, rhs, strict=True)) for i in range(k)]
    for c in range(k):
        piv = max(range(c, k), key=lambda i: abs(a[i][c]))
        a[c], a[piv], b[c], b[piv] = a[piv], a[c], b[piv], b[c]
        if abs(a[c][c]) < 1e-12:
            continue
        for i in range(k):
            if i != c and a[i][c]:
                f = a[i][c] / a[c][c]
                a[i] = [x - f * y for x, y in zip(a[i], a[c], strict=True)]
                b[i] -= f * b[c]
    x = [0.0] * UNKNOWNS
    for c, col in enumerate(free):
        x[col] = b[c] / a[c][c] / scale[col] if abs(a[c][c]) >= 1e-12 else 0.0
    return x


def _model(x: list[float], p: Point) -> float:
    """The step model (and request cost) at ``x``, with attention the larger of its two regimes."""
    return sum(v * w for v, w in zip(x, _row(p, x[5] * p.tokens > x[4] * p.seqs * p.tokens), strict=True))


def fit(points: list[Point]) -> list[float]:
    """The coefficients (seconds per unit, ``UNKNOWNS`` of them), non-negative, minimising the squared relative
    errors. A decode step is latency-bound when the longest context costs more than all contexts' reads, which
    happens in batches below some size: each such size is tried, and the best fit kept."""
    best, best_err = [0.0] * UNKNOWNS, float("inf")
    for threshold in [0, *sorted({p.seqs for p in points if p.kind == "decode"})]:
        latency = [p.kind == "decode" and p.seqs <= threshold for p in points]
        rows = [[v / p.seconds for v in _row(p, lat)] for p, lat in zip(points, latency, strict=True)]
        rhs = [1.0] * len(points)
        free = [c for c in range(UNKNOWNS) if any(r[c] for r in rows)]
        while True:  # drop a column whose coefficient comes out negative, and solve again
            x = _solve(rows, rhs, free)
            negative = [c for c in free if x[c] < 0]
            if not negative:
                break
            free.remove(min(negative, key=lambda c: x[c]))
        err = sum((_model(x, p) / p.seconds - 1) ** 2 for p in points)
        if err < best_err:
            best, best_err = x, err
    return best


def coefficients(x: list[float]) -> dict[str, float]:
    """The step model's coefficients in SimConfig's units (ms, µs, ns)."""
    scale = (1e3, 1e6, 1e9, 1e6, 1e9, 1e9)
    return {name: round(v * s, 6) for name, v, s in zip(COEFFICIENTS, x[:6], scale, strict=True)}


def predicted(cfg: SimConfig, p: Point, request_s: float = 0.0) -> float:
    """What the fit says the point takes: the simulator's step time for its shape (plus the request's own cost,
    for a prefill point)."""
    if p.kind == "prefill":
        return request_s + cfg.step_seconds(p.tokens, 0, 0, p.tokens**2)
    return cfg.step_seconds(0, p.seqs, p.seqs * p.tokens, 0, p.tokens)


def calibrate(urls: str | list[str], out: Path, *, name: str | None = None, repeat: int = 3,
              max_prefill: int = 2048, max_seqs: int = 16, say: Say = print) -> dict:
    """Measure the servers at ``urls`` (one, or several at once), fit, and write the profile to ``out``; returns
    what was written."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    url = urls[0]
    served = models(url)
    if not served:
        raise KitError(f"{url}/v1/models lists no model")
    model = served[0]
    info = scrape([url]).get(url.split("://", 1)[-1].rstrip("/"))
    capacity = (info.num_gpu_blocks or 0) * (info.block_size or 0) if info else 0
    prefill_n = [n for n in PREFILL_N if n <= max_prefill]
    # Each decode shape whose sequences fit the KV cache together (a preempted one would recompute).
    decode = [(b, length) for length in DECODE_L for b in DECODE_B
              if b <= max_seqs and (not capacity or b * (length + max(DECODE_T) + 32) <= capacity)]
    if not decode:
        raise KitError(f"{url}'s KV cache ({capacity} tokens) cannot hold one sequence of "
                       f"{DECODE_L[0] + max(DECODE_T)} tokens")
    load_before = _load()
    started = time.monotonic()
    say(f"kit calibrate: measuring {', '.join(urls)} ({model}): prefill of {prefill_n} tokens, decode of "
        f"{', '.join(f'{b}×{length}' for b, length in decode)} (sequences × context), median of {repeat}")
    words = vocabulary(url, model)
    cals = [Calibrator(u, model, words, seed=i) for i, u in enumerate(urls)]
    points = asyncio.run(measure(cals, prefill_n, decode, repeat, say))
    noise = [p for p in points if p.seconds <= 0]
    if noise:  # a step cannot take no time: the machine's noise was larger than what was measured
        say(f"kit calibrate: left out {len(noise)} point(s) the noise swamped: " + ", ".join(p.name for p in noise))
        points = [p for p in points if p.seconds > 0]
    x = fit(points)
    coeffs, request_s = coefficients(x), x[6]
    cfg = SimConfig(hardware="h100", **coeffs)
    rows = {}
    for p in points:  # one row per shape: the median over the servers
        rows.setdefault(p.name, []).append(p)
    rows = {name: {"measured_ms": round(1e3 * statistics.median(p.seconds for p in ps), 3),
                   "runs_ms": [round(1e3 * r, 3) for p in ps for r in p.runs],
                   "model_ms": round(1e3 * predicted(cfg, ps[0], request_s), 3),
                   "error": round(predicted(cfg, ps[0], request_s) / statistics.median(p.seconds for p in ps) - 1, 4)}
            for name, ps in rows.items()}
    worst = max(abs(r["error"]) for r in rows.values())
    profile = {
        "name": name or out.stem,
        "description": f"step times of {model} measured through the API of {', '.join(urls)}",
        "measured": {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "urls": urls,
                     "model": model, "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
                     "load_before": load_before, "load_after": _load(), "seconds": round(time.monotonic() - started),
                     "block_size": info.block_size if info else None,
                     "num_gpu_blocks": info.num_gpu_blocks if info else None, "repeat": repeat},
        "coefficients": coeffs,
        # Outside the engine: what one request costs the server on top of its steps (HTTP, tokenizing, handing
        # over). The simulator's own HTTP server has a cost of its own; kit simulate has none.
        "request_overhead_ms": round(1e3 * request_s, 3),
        "largest_error": worst,
        "points": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# A hardware profile for kit sim --hardware {out} (and kit simulate), written by kit calibrate\n"
                   + yaml.safe_dump(profile, sort_keys=False))
    say(f"kit calibrate: wrote {out}: " + ", ".join(f"{k} {v:g}" for k, v in coeffs.items())
        + f"; request overhead {1e3 * request_s:.2f} ms; largest error of the fit {100 * worst:.1f}%")
    return profile
