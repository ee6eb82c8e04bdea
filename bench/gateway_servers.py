"""The gateway on its own HTTP server and on well-kept ones, side by side: cost of the hop, and the abuse suite.

Run: ``.venv/bin/python bench/gateway_servers.py [--rounds 2] [--seconds 5] [--servers front granian uvicorn]
[--baseline DIR] [--abuse] [--out FILE] [--record]`` (needs ``wrk``, and ``pip install granian==2.8.7
uvicorn==0.54.0`` in the venv: neither is a dependency of the kit). docs/explanation/gateway-http-server.md has the
decision.

The same gateway (``kit.gateway.Gateway``: its handlers, picker, datastore and upstream client, unchanged) is
served by each server, in one uvloop process (``serve`` below, with the ``kit gateway`` flags):

* ``front``: the gateway's own server (``kit.gateway.front``), i.e. ``kit gateway`` itself;
* ``granian``: granian (Rust: hyper for HTTP/1.1, tokio) embedded in the process (``granian.server.embed``),
  calling the gateway through its RSGI interface on the same event loop; ``--request-timeout`` becomes hyper's
  header read timeout, the only request deadline it has;
* ``uvicorn``: uvicorn's httptools protocol calling the gateway through ASGI, on the same loop;
  ``--idle-timeout`` becomes its keep-alive timeout and ``--max-connections`` its concurrency limit;
* with ``--baseline DIR``, ``front (before)``: ``kit gateway`` from another checkout, for ratios within one run.

Per round each server starts fresh in front of ``gateway_bench``'s four zero-latency upstreams and gets
``gateway_bench.measure``: added p50 at one connection, the first streamed token added, requests/s at 64
connections and the server process's CPU µs per request. With ``--abuse``, ``tests/gateway/test_abuse.py`` then
runs against each server (``KIT_GATEWAY_SERVER``): which abuse cases it passes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import LOG_DIR, MODEL, Router, _wait_healthy, measure, start_upstreams
from record import write_record

from kit.gateway.front import Request, Response, Stream, error
from kit.http import INSTANCE_ENV, INSTANCE_HEADER, HTTPError
from kit.targets.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("front", "granian", "uvicorn")
BEFORE = "front (before)"


# --------------------------------------------------------------------------- the gateway on another server
class _Stream:
    """What a gateway handler streams into, for a server that does the HTTP framing itself."""

    def __init__(self, status: int, headers: dict[str, str]):
        self.status, self.headers, self.ended = status, headers, False
        self.pieces: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def write(self, data: bytes) -> None:
        if data:
            if not self.started.done():
                self.started.set_result(None)
            await self.sender(data)

    async def end(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)
        self.ended = True

    def abort(self) -> None:
        raise ConnectionResetError("the answer broke midway")

    async def sender(self, data: bytes) -> None:  # set by the server adapter
        raise NotImplementedError


class _Request(Request):
    __slots__ = ("start_stream",)

    def stream(self, status: int, headers: dict[str, str]) -> Stream:
        s = _Stream(status, headers)
        s.sender = lambda data: self.start_stream(s, data)
        return s  # type: ignore[return-value]


async def _handle(router: Any, request: _Request) -> Response | _Stream:
    """The gateway's routing and error handling, as ``kit.gateway.front.Connection._answer`` does it."""
    found = router.find(request)
    if isinstance(found, Response):
        return found
    try:
        return await found(request)
    except HTTPError as err:
        return error(err.status, str(err), err.param)


def _headers(resp_headers: dict[str, str], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*resp_headers.items(), *extra]


class RSGIApp:
    """The gateway as a granian RSGI application."""

    def __init__(self, router: Any):
        self.router = router
        instance = os.environ.get(INSTANCE_ENV)
        self.extra = [(INSTANCE_HEADER, instance)] if instance else []

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        body = await proto()
        headers = {k.lower(): v for k, v in scope.headers.items()}
        request = _Request(None, scope.method, scope.path, scope.query_string, headers, body,  # type: ignore[arg-type]
                           scope.http_version, True)
        transport: list[Any] = []

        async def start_stream(s: _Stream, data: bytes) -> None:
            if not transport:
                transport.append(proto.response_stream(s.status, _headers(s.headers, self.extra)))
            await transport[0].send_bytes(data)

        request.start_stream = start_stream
        resp = await _handle(self.router, request)
        if isinstance(resp, Response):
            proto.response_bytes(resp.status, _headers(resp.headers, self.extra),
                                 resp.body if request.method != "HEAD" else b"")
        elif not transport:  # a stream that ended without a piece
            proto.response_bytes(resp.status, _headers(resp.headers, self.extra), b"")
        else:  # granian ends a stream when its transport is freed: drop it now (the stream's closures form a cycle)
            resp.sender = None  # type: ignore[assignment]
            transport.clear()


class ASGIApp:
    """The gateway as an ASGI application (uvicorn)."""

    def __init__(self, router: Any):
        self.router = router
        instance = os.environ.get(INSTANCE_ENV)
        self.extra = [(INSTANCE_HEADER.encode(), instance.encode())] if instance else []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        parts, more = [], True
        while more:
            msg = await receive()
            parts.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = _Request(None, scope["method"], scope["path"], scope["query_string"].decode("latin-1"),  # type: ignore[arg-type]
                           headers, b"".join(parts), scope["http_version"], True)

        def head(status: int, hs: dict[str, str]) -> dict:
            return {"type": "http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hs.items()] + self.extra}

        started: list[bool] = []

        async def start_stream(s: _Stream, data: bytes) -> None:
            if not started:
                started.append(True)
                await send(head(s.status, s.headers))
            await send({"type": "http.response.body", "body": data, "more_body": True})

        request.start_stream = start_stream
        resp = await _handle(self.router, request)
        if isinstance(resp, Response):
            await send(head(resp.status, {**resp.headers, "Content-Length": str(len(resp.body))}))
            await send({"type": "http.response.body", "body": resp.body if scope["method"] != "HEAD" else b""})
        else:
            if not started:
                await send(head(resp.status, resp.headers))
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_on(server: str, gw: Any, host: str, port: int, signals: bool = False) -> None:
    """Serve ``gw``'s routes with granian or uvicorn in the running loop until stopped."""
    settings = gw.settings
    if server == "granian":
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        head_timeout_ms = int(1000 * min(60, settings.request_timeout))  # (granian's range: 1 ms to 60 s)
        srv = Server(RSGIApp(gw.router), address=host, port=port, interface="rsgi", http="1", websockets=False,
                     log_enabled=False, backlog=1024, http1_settings=HTTP1Settings(header_read_timeout=head_timeout_ms))
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, srv.stop)
        await srv.serve()
    else:
        import uvicorn

        srv = uvicorn.Server(uvicorn.Config(
            ASGIApp(gw.router), host=host, port=port, http="httptools", loop="none", lifespan="off", ws="none",
            access_log=False, log_level="warning", timeout_keep_alive=int(settings.idle_timeout),
            limit_concurrency=settings.max_connections or None, server_header=False))
        await srv.serve()


def serve(argv: list[str]) -> None:
    """``serve --server NAME`` and the ``kit gateway`` flags: the gateway on that server until SIGTERM."""
    from kit.cli import add_model_flags, model_from_args
    from kit.gateway import Gateway, GatewaySettings, endpoints_from_urls
    from kit.gateway.server import GC_THRESHOLD, event_loop_factory
    from kit.paths import default_scheduler_config
    from kit.picker import load_picker_file

    ap = argparse.ArgumentParser(prog="gateway_servers.py serve")
    ap.add_argument("--server", choices=SERVERS, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--config")
    ap.add_argument("--model", default=MODEL)
    add_model_flags(ap, GatewaySettings)
    args = ap.parse_args(argv)
    settings = model_from_args(GatewaySettings, args, "gateway_servers.py serve")
    config = load_picker_file(args.config or default_scheduler_config())
    gw = Gateway(config, endpoints_from_urls(args.endpoints.split(",")), args.model, settings=settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        if args.server == "front":
            front = await gw.start(args.host, args.port)
        else:
            await gw.datastore.start()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)  # as `kit gateway` does
        print(f"gateway_servers: the gateway on {args.server} at http://{args.host}:{args.port}", flush=True)
        if args.server == "front":
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopped.set)
            await stopped.wait()
            await front.close()
            return
        await serve_on(args.server, gw, args.host, args.port, signals=True)
        await gw.datastore.stop()
        await gw.upstream.close()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())


# ------------------------------------------------------------------------------- instructions, with valgrind
COUNT_CHILD = r"""
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
import uvloop
import gateway_servers
from counted_gateway import connect, gateway_over_upstreams, warm
from kit.targets.processes import free_port

server, k = sys.argv[2], int(sys.argv[3])

async def main():
    loop = asyncio.get_running_loop()
    gw, ports = await gateway_over_upstreams("default-plugins", scrape_timeout=60, connect_timeout=60)  # (slow)
    port = free_port()
    if server == "front":
        await gw.start("127.0.0.1", port)
    else:
        await gw.datastore.start()
        serving = loop.create_task(gateway_servers.serve_on(server, gw, "127.0.0.1", port))
    through, direct = await connect(port, wait=True), await connect(ports[0])
    await warm(through, direct)
    os.getppid()
    for _ in range(k):
        await through.send()
    os.getppid()
    for _ in range(k):
        await direct.send()
    os.getppid()
    os._exit(0)

uvloop.run(main())
"""


def count(names: list[str], k: int) -> dict[str, dict[str, int]]:
    """Instructions per request through the gateway on each server, and straight to an upstream (valgrind)."""
    from callgrind import count_parts, require_valgrind

    require_valgrind()
    out = {}
    for name in names:
        print(f"counting the gateway on {name} under callgrind, {k} requests ...", file=sys.stderr, flush=True)
        c = count_parts(COUNT_CHILD, [str(Path(__file__).parent), name, str(k)], ROOT,
                        ["through the gateway", "straight to an upstream"], k)
        out[name] = {**c, "the gateway's share": c["through the gateway"] - c["straight to an upstream"]}
    return out


# ------------------------------------------------------------------------------------------ measuring
def start(name: str, workers: list[str], baseline: str | None) -> Router:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = LOG_DIR / f"servers-{name.split()[0]}-{port}.log"
    args = ["--port", str(port), "--endpoints", ",".join(workers), "--model", MODEL,
            "--config", str(ROOT / "templates" / "scheduler" / "default-plugins.yaml")]
    env = {**os.environ, INSTANCE_ENV: ""}
    if name == BEFORE:
        assert baseline
        cmd, cwd = [sys.executable, "-m", "kit", "gateway", *args], baseline
        env["PYTHONPATH"] = baseline
    else:
        cmd, cwd = [sys.executable, __file__, "serve", "--server", name, *args], None
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    _wait_healthy(proc, url, name, log)
    return Router(name, url, proc.pid, proc)


def abuse_suite(name: str) -> dict:
    """``tests/gateway/test_abuse.py`` against the gateway on ``name``: each case passed or failed (and why)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "abuse.xml"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "pytest", "tests/gateway/test_abuse.py", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", "-o", "junit_family=xunit1"], cwd=ROOT,
                       env={**os.environ, "KIT_GATEWAY_SERVER": name}, capture_output=True, text=True)
        cases = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            failed = case.find("failure") if case.find("failure") is not None else case.find("error")
            skipped = case.find("skipped")
            cases[case.get("name")] = ("skipped" if skipped is not None else
                                       "passed" if failed is None else
                                       "failed: " + (failed.get("message") or "")[:160])
    passed = sum(v == "passed" for v in cases.values())
    ran = sum(v != "skipped" for v in cases.values())
    return {"server": name, "passed": passed, "ran": ran, "seconds": round(time.monotonic() - t0), "cases": cases}


def record(result: dict, names: list[str]) -> None:
    """The comparison as a record of the gateway family: rounds as 'a / b', medians in the notes."""
    def cells(name: str, key: str) -> str:
        return " / ".join(f"{r[key]:,.0f}" for r in result["hop"] if r["server"] == name)

    abuse = {a["server"]: f"{a['passed']} of {a['ran']}" for a in result.get("abuse", [])}
    rows = [["direct (p50 µs)", cells("direct", "p50_us"), None, cells("direct", "rate_64"), None, None]]
    rows += [[name, cells(name, "added_p50_us"), cells(name, "added_first_p50_us"), cells(name, "rate_64"),
              cells(name, "router_cpu_us_per_req"), abuse.get(name)] for name in names]
    loads = [la[0] for la in result["load_average"]]
    write_record("gateway", "http-servers", "The gateway on its own HTTP server and on well-kept ones", table={
        "columns": ["server", "added p50 µs", "added first token µs", "req/s at 64", "CPU µs per request",
                    "abuse cases passed"], "rows": rows},
        load=f"{min(loads):.1f}–{max(loads):.1f}", notes=(
            "The same gateway (default profile; handlers, picker, datastore and upstream client unchanged) served by "
            "its own server (`front`, i.e. `kit gateway`), by granian 2.8.7 (Rust: hyper, tokio) embedded through "
            "RSGI, and by uvicorn 0.54.0's httptools protocol through ASGI, each in one uvloop process started fresh "
            "per round in front of four zero-latency upstreams; `front (before)` is `kit gateway` before the abuse "
            "fixes. Cells are round 1 / round 2; *abuse cases passed* is `tests/gateway/test_abuse.py` run against "
            "that server (`KIT_GATEWAY_SERVER`). The machine was shared: read CPU per request and ratios within a "
            "round. docs/explanation/gateway-http-server.md has the decision."))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--streams", type=int, default=1000, help="streamed requests per first-token measurement")
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    ap.add_argument("--baseline", metavar="DIR", help="also `kit gateway` from the checkout in DIR (before a change)")
    ap.add_argument("--abuse", action="store_true", help="also run the abuse suite against each server")
    ap.add_argument("--count", type=int, metavar="N", default=0,
                    help="only count instructions per request on each server (valgrind), over N requests")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--record", action="store_true",
                    help="also write a record for the results pages (bench/results/gateway/, then make results)")
    args = ap.parse_args()
    if args.count:
        counts = count(args.servers, args.count)
        print(json.dumps(counts, indent=1))
        if args.record:
            write_record("gateway", "http-servers-instructions", "The gateway's servers, instruction by instruction",
                         table={"columns": ["server", "through the gateway", "straight to an upstream",
                                            "the gateway's share"],
                                "rows": [[n, c["through the gateway"], c["straight to an upstream"],
                                          c["the gateway's share"]] for n, c in counts.items()]},
                         notes=("Instructions per request (valgrind's callgrind: the same on a busy machine as on a "
                                "quiet one), all threads counted, in one process holding four zero-latency "
                                "upstreams, the gateway (default profile) on each server, and a client on one "
                                "kept-alive connection; the gateway's share is a request through it minus the same "
                                "request straight to an upstream."))
        return
    names = [*([BEFORE] if args.baseline else []), *args.servers]
    load = [os.getloadavg()]
    rows = []
    upstream, workers = start_upstreams()
    try:
        for rnd in range(1, args.rounds + 1):
            direct = measure(workers[0], None, upstream, args)
            rows.append({"round": rnd, "server": "direct", **direct})
            print(f"servers: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
            for name in names:
                r = start(name, workers, args.baseline)
                try:
                    time.sleep(0.5)
                    m = measure(r.url, r, upstream, args)
                finally:
                    r.stop()
                m["added_p50_us"] = round(m["p50_us"] - direct["p50_us"], 1)
                m["added_first_p50_us"] = round(m["first_p50_us"] - direct["first_p50_us"], 1)
                rows.append({"round": rnd, "server": name, **m})
                print(f"servers: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
            load.append(os.getloadavg())
    finally:
        upstream.terminate()
        upstream.wait()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.node()}, "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "command": " ".join(["bench/gateway_servers.py", *sys.argv[1:]]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "load_average": [[round(x, 2) for x in la] for la in load], "hop": rows,
        "medians": {name: {k: statistics.median(r[k] for r in rows if r["server"] == name)
                           for k in ("added_p50_us", "added_first_p50_us", "rate_64", "router_cpu_us_per_req")}
                    for name in names}}
    if args.abuse:
        result["abuse"] = [abuse_suite(name) for name in args.servers]
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    print("\n| server | added p50 µs | added first token µs | req/s at 64 | CPU µs per request |")
    print("|---|---|---|---|---|")
    for name, m in result["medians"].items():
        print(f"| {name} | {m['added_p50_us']} | {m['added_first_p50_us']} | {m['rate_64']:,.0f} | "
              f"{m['router_cpu_us_per_req']} |")
    for a in result.get("abuse", []):
        print(f"\nabuse suite on {a['server']}: {a['passed']} of {a['ran']} passed ({a['seconds']} s)")
        for case, outcome in a["cases"].items():
            if outcome != "passed":
                print(f"  {case}: {outcome}")
    if args.record:
        record(result, names)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"gateway_servers: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
