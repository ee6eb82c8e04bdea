"""The floor of each HTTP stack the gateway could be built on: minimal proxies that only pass a request on.

Run: ``.venv/bin/python bench/proxy_floor.py [--seconds 5] [--rounds 2]`` (needs ``wrk``). Each proxy below
forwards ``POST /v1/completions`` to one zero-latency upstream (``bench/upstream.py``) and passes the answer
back, with no picker, no checks and no metrics; ``wrk`` measures it with 64 connections (requests/s and
the proxy's CPU µs per request) and with one (p50 latency). What the kit gateway costs above the floor
of its stack is its own work; the floor itself is what choosing the stack costs.

* ``aiohttp+aiohttp``: aiohttp's server and client (the gateway's first stack);
* ``aiohttp+kit``: aiohttp's server and the gateway's own client (``kit.gateway.upstream``), as the gateway
  was served until its own server replaced aiohttp's;
* ``front+kit``: the gateway's own server (``kit.gateway.front``: routing, limits, error handling) and its
  client, as now;
* ``httptools+kit``: a bare asyncio protocol parsing requests with httptools, and the gateway's client:
  no routing, limits or error handling at all, so the least a Python proxy can cost.

All run on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httptools
import psutil
import uvloop
from aiohttp import ClientSession, TCPConnector, web

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import LOG_DIR, MODEL, PROMPT, start_upstreams, wrk

from kit.gateway.front import Front, Request, Response, Router
from kit.gateway.upstream import Pool
from kit.http import ServerLimits
from kit.targets.processes import free_port, healthy

STACKS = ("aiohttp+aiohttp", "aiohttp+kit", "front+kit", "httptools+kit")


async def _serve_aiohttp(port: int, upstream: str, own_client: bool) -> None:
    session = ClientSession(connector=TCPConnector(limit=0))
    pool = Pool(connect_timeout=2.0)

    async def proxy(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if own_client:
            answer = await pool.post(upstream, request.path, raw)
            try:
                return web.Response(status=answer.status, body=await answer.read(),
                                    content_type=answer.headers.get("content-type", "application/json"))
            finally:
                answer.close()
        async with session.post(upstream + request.path, data=raw,
                                headers={"Content-Type": "application/json"}) as up:
            return web.Response(status=up.status, body=await up.read(), content_type=up.content_type)

    async def health(_r: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.add_routes([web.post("/v1/completions", proxy), web.get("/health", health)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


class _Bare(asyncio.Protocol):
    """One client connection: parse requests with httptools, pass each on, write the answer back."""

    def __init__(self, pool: Pool, upstream: str):
        self.pool, self.upstream = pool, upstream
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self.answer(raw))

    async def answer(self, raw: bytes) -> None:
        if self.url == b"/health":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        answer = await self.pool.post(self.upstream, "/v1/completions", raw)
        try:
            body = await answer.read()
        finally:
            answer.close()
        self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (answer.status, len(body), body))


async def _serve_bare(port: int, upstream: str) -> None:
    pool = Pool(connect_timeout=2.0)
    await asyncio.get_running_loop().create_server(lambda: _Bare(pool, upstream), "127.0.0.1", port)
    await asyncio.Event().wait()


async def _serve_front(port: int, upstream: str) -> None:
    pool = Pool(connect_timeout=2.0)

    async def proxy(request: Request) -> Response:
        answer = await pool.post(upstream, request.path, request.body)
        try:
            return Response(answer.status, await answer.read(),
                            {"Content-Type": answer.headers.get("content-type", "application/json")})
        finally:
            answer.close()

    async def health(_r: Request) -> Response:
        return Response()

    router = Router()
    router.add("POST", "/v1/completions", proxy)
    router.add("GET", "/health", health)
    await Front(router, ServerLimits(), 16 * 2**20).start("127.0.0.1", port)
    await asyncio.Event().wait()


def serve(stack: str, port: int, upstream: str) -> None:
    main = {"httptools+kit": _serve_bare, "front+kit": _serve_front}.get(stack)
    uvloop.run(main(port, upstream) if main else _serve_aiohttp(port, upstream, own_client=stack == "aiohttp+kit"))


def measure(stack: str, upstream: str, seconds: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (LOG_DIR / f"floor-{port}.log").open("ab")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", stack, "--port", str(port), "--upstream", upstream],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not healthy(url, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{stack} did not start: see {log.name}")
            time.sleep(0.05)
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1}
        wrk(url + "/v1/completions", 64, 1, body)
        p = psutil.Process(proc.pid)
        cpu0 = sum(p.cpu_times()[:2])
        many = wrk(url + "/v1/completions", 64, seconds, body)
        cpu = sum(p.cpu_times()[:2]) - cpu0
        one = wrk(url + "/v1/completions", 1, seconds, body)
    finally:
        proc.terminate()
        proc.wait()
        log.close()
    n = many["requests"]
    return {"stack": stack, "rate_64": round(n / (many["duration_us"] / 1e6)),
            "cpu_us_per_req": round(1e6 * cpu / n, 1), "p50_us_1": one["p50_us"],
            "errors": many["errors"] + many["non2xx"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return
    upstream, workers = start_upstreams()
    rows = []
    try:
        for rnd in range(1, args.rounds + 1):
            for stack in STACKS:
                rows.append({"round": rnd, **measure(stack, workers[0], args.seconds)})
                print(f"proxy_floor: {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
    print("| round | stack | req/s at 64 | CPU µs/req | p50 µs at 1 | errors |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['stack']} | {r['rate_64']:,} | {r['cpu_us_per_req']} | {r['p50_us_1']} | "
              f"{r['errors']} |")
    print(f"proxy_floor: logs in {LOG_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
