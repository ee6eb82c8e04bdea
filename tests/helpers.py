"""Small HTTP helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp

from kit.experiments.client import RequestResult, send
from kit.vllm_metrics import EndpointMetrics, parse_vllm_metrics


def post(url: str, path: str, body: object = None, *, raw: bytes | None = None, method: str = "POST",
         headers: dict[str, str] | None = None):
    """(status, parsed JSON body or None, response headers)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def metrics(url: str) -> EndpointMetrics:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return parse_vllm_metrics(r.read().decode())


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def burst(url: str, bodies: list[dict], headers: dict[str, str] | None = None) -> list[RequestResult]:
    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            return await asyncio.gather(*(send(s, url, b, headers) for b in bodies))

    return asyncio.run(go())


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper has already stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
