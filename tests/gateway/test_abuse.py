"""The gateway's own HTTP server and client under abuse: real sockets on loopback, a real ``kit gateway`` in front
of real ``kit sim`` processes (or of a misbehaving endpoint in this process), bounded in time and traffic.

Each case runs an abusive client, checks that it gets the intended answer, that a normal client is served
within its usual latency meanwhile, and that the gateway's resident memory returns to within 10% of where it
was once the abusive client has left. Deadlines are set short here (``--request-timeout``, ``--idle-timeout``,
``--inter-token-timeout``), so the cases take seconds.

``KIT_GATEWAY_SERVER`` (default ``front``, the gateway's own server) runs the same suite against the gateway on
another HTTP server (``bench/gateway_servers.py``: ``granian``, ``uvicorn``), for the server comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kit.http import INSTANCE_ENV
from kit.targets.processes import Proc, end_child, free_port, healthy, spawn, stop

# A normal client's latency beside the abuse is the measure here, and another test's load would move it.
pytestmark = pytest.mark.exclusive

ZERO_LATENCY = ["--step-overhead-ms", "0", "--prefill-us-per-token", "0", "--decode-us-per-seq", "0",
                "--decode-ns-per-context-token", "0"]
REQUEST_TIMEOUT, IDLE_TIMEOUT = 2.0, 3.0
DEADLINES = ["--request-timeout", str(REQUEST_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT)]
BODY = json.dumps({"prompt": "hello", "max_tokens": 1}).encode()
SERVER = os.environ.get("KIT_GATEWAY_SERVER", "front")
_OTHER_SERVERS: dict[int, subprocess.Popen] = {}  # the gateway on another server, by pid (not a `kit` process)


# ------------------------------------------------------------------------------------------------ processes
def start_gateway(endpoints: list[str], log_dir: Path, *flags: str) -> Proc:
    """``kit gateway`` (or the gateway on another server, see the module docstring) in front of ``endpoints``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--endpoints", ",".join(endpoints), *flags]
    if SERVER == "front":
        return spawn(["gateway", *args], url, log_dir / f"gateway-{port}.log", role="gateway")
    script = Path(__file__).parents[2] / "bench" / "gateway_servers.py"
    log = log_dir / f"gateway-{SERVER}-{port}.log"
    instance = uuid.uuid4().hex
    with open(log, "ab") as fh:
        p = subprocess.Popen([sys.executable, str(script), "serve", "--server", SERVER, *args], stdout=fh,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, INSTANCE_ENV: instance})
    proc = Proc(p.pid, url, str(log), "gateway", ("gateway", *args), instance)
    _OTHER_SERVERS[p.pid] = p
    deadline = time.monotonic() + 30
    while not healthy(url, timeout=0.5, instance=instance):
        if p.poll() is not None or time.monotonic() > deadline:
            stop_gateway(proc)
            raise AssertionError(log.read_text()[-2000:])
        time.sleep(0.05)
    return proc


def stop_gateway(proc: Proc) -> None:
    other = _OTHER_SERVERS.pop(proc.pid, None)
    if other is not None:
        end_child(other)
    else:
        stop(proc)


def start_sim(log_dir: Path, *flags: str) -> Proc:
    port = free_port()
    return spawn(["sim", "--port", str(port), *ZERO_LATENCY, *flags], f"http://127.0.0.1:{port}",
                 log_dir / f"sim-{port}.log", role="sim")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    """Two simulators and a gateway with short deadlines, shared by the cases that do not stop any of them."""
    logs = tmp_path_factory.mktemp("abuse")
    started: list[Proc] = []
    try:
        started += [start_sim(logs), start_sim(logs)]
        started.append(start_gateway([p.url for p in started], logs, *DEADLINES))
        yield {"gateway": started[-1], "sims": started[:2]}
    finally:
        for proc in reversed(started):
            (stop_gateway if proc.role == "gateway" else stop)(proc)


@pytest.fixture
def logs(tmp_path) -> Path:
    return tmp_path


def port_of(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB (Linux)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


# ------------------------------------------------------------------------------------------ a normal client
def normal_request(proc: Proc, timeout: float = 5.0) -> float:
    """One completion on a new connection, as a new client would send it; its latency in seconds."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port_of(proc), timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", BODY, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, body[:300])
    return time.perf_counter() - start


class Bystander(threading.Thread):
    """A normal client sending a request every 50 ms until stopped: its latencies, and any failure."""

    def __init__(self, proc: Proc):
        super().__init__(daemon=True)
        self.proc, self.latencies, self.failures = proc, [], []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.latencies.append(normal_request(self.proc))
            except Exception as exc:  # reported by the test
                self.failures.append(repr(exc))
            self.done.wait(0.05)

    def finish(self) -> None:
        self.done.set()
        self.join(10)


@contextlib.contextmanager
def abused(proc: Proc, limit_mb: float | None = None) -> Iterator[dict]:
    """Around an abusive client: the gateway's memory and a normal client's latency before, a normal client served
    throughout, and afterwards memory back within 10% (waited for up to 5 s). ``limit_mb``: RSS never above."""
    for _ in range(20):  # warm up: the first requests allocate what every request reuses
        normal_request(proc)
    before = rss_mb(proc.pid)
    usual = statistics.median(normal_request(proc) for _ in range(15))
    bystander = Bystander(proc)
    seen = {"peak_mb": before}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            seen["peak_mb"] = max(seen["peak_mb"], rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    bystander.start()
    sampler.start()
    try:
        yield seen
    finally:
        bystander.finish()
        sampling.set()
        sampler.join(5)
    assert proc.alive() and healthy(proc.url)
    assert not bystander.failures, bystander.failures[:3]
    assert bystander.latencies, "the normal client was never served"
    during = statistics.median(bystander.latencies)
    print(f"normal client: usual {1000 * usual:.1f} ms, during {1000 * during:.1f} ms (max "
          f"{1000 * max(bystander.latencies):.0f} ms, {len(bystander.latencies)} requests); RSS {before:.0f} MiB "
          f"before, {seen['peak_mb']:.0f} MiB at most")
    assert during < max(4 * usual, usual + 0.05), (usual, during)
    assert max(bystander.latencies) < 1.0, sorted(bystander.latencies)[-5:]
    if limit_mb is not None:
        assert seen["peak_mb"] < limit_mb, seen
    deadline = time.monotonic() + 5
    while (after := rss_mb(proc.pid)) > 1.1 * before and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"RSS after the abusive client left: {after:.0f} MiB")
    assert after <= 1.1 * before, (before, after)


def no_traceback(proc: Proc) -> None:
    assert "Traceback" not in Path(proc.log).read_text()


# ------------------------------------------------------------------------------------------ raw connections
def exchange(proc: Proc, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body of the first answer, everything)."""
    with socket.create_connection(("127.0.0.1", port_of(proc)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return (*parse_answer(out), out)


def parse_answer(out: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, rest[:int(headers.get("content-length", len(rest)))]


def answers_in(everything: bytes) -> int:
    return len(re.findall(rb"HTTP/1\.1 \d{3} ", everything))


def json_error(status: int, headers: dict[str, str], body: bytes, expected: int, what: str) -> None:
    assert status == expected, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == expected and what in error["message"], error


class Trickler:
    """Many connections, each sending ``head`` and then one byte of ``drip`` every ``gap`` seconds, in one thread
    (a selector): what each received, and when its connection closed."""

    def __init__(self, proc: Proc, n: int, head: bytes, drip: bytes = b"a", gap: float = 0.25):
        self.proc, self.n, self.head, self.drip, self.gap = proc, n, head, drip, gap
        self.received: list[bytes] = [b""] * n
        self.opened: list[float] = [0.0] * n
        self.closed: list[float | None] = [None] * n
        self.socks: list[socket.socket] = []

    def open(self) -> None:
        for i in range(self.n):
            s = socket.create_connection(("127.0.0.1", port_of(self.proc)), timeout=5)
            s.sendall(self.head)
            s.setblocking(False)
            self.socks.append(s)
            self.opened[i] = time.monotonic()

    def run(self, seconds: float, stop_when_closed: bool = True) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        deadline, next_drip, k = time.monotonic() + seconds, 0.0, 0
        while time.monotonic() < deadline and (not stop_when_closed or None in self.closed):
            now = time.monotonic()
            if now >= next_drip:
                byte = self.drip[k % len(self.drip):k % len(self.drip) + 1]
                k += 1
                for i, s in enumerate(self.socks):
                    if self.closed[i] is None:
                        with contextlib.suppress(OSError):
                            s.send(byte)
                next_drip = now + self.gap
            for key, _ in sel.select(timeout=0.05):
                i = key.data
                try:
                    data = self.socks[i].recv(65536)
                except OSError:
                    data = b""
                self.received[i] += data
                if not data:
                    self.closed[i] = time.monotonic()
                    sel.unregister(self.socks[i])
        sel.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------------------------ D1: slowloris
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "


def test_slowloris_heads_get_408_once_the_request_deadline_passes(stack):
    """Connections that send a head one byte at a time never go idle; each is answered 408 and closed
    ``--request-timeout`` after its first byte, however steadily it sends."""
    gw = stack["gateway"]
    trickler = Trickler(gw, 50, SLOW_HEAD)
    with abused(gw):
        trickler.open()
        trickler.run(REQUEST_TIMEOUT + 4)
        trickler.close()
    for received, opened, closed in zip(trickler.received, trickler.opened, trickler.closed, strict=True):
        assert closed is not None, "still open past the request deadline"
        assert closed - opened < REQUEST_TIMEOUT + 2.0, closed - opened
        json_error(*parse_answer(received), 408, f"not received within {REQUEST_TIMEOUT:g} s")


def test_a_body_sent_too_slowly_gets_408(stack):
    gw = stack["gateway"]
    trickler = Trickler(gw, 5, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    with abused(gw):
        trickler.open()
        trickler.run(REQUEST_TIMEOUT + 4)
        trickler.close()
    for received, closed in zip(trickler.received, trickler.closed, strict=True):
        assert closed is not None
        json_error(*parse_answer(received), 408, "not received within")


@pytest.mark.slow
def test_with_every_connection_slowly_sending_a_head_a_new_client_is_still_served(sim_factory, logs):
    """At the connection cap, connections still sending their heads are closed to make room, the longest-waiting
    first (as idle ones are), so slow heads cannot lock new clients out until their deadline."""
    gw = start_gateway([sim_factory(*ZERO_LATENCY).url], logs, "--max-connections", "20", "--request-timeout", "30")
    try:
        trickler = Trickler(gw, 20, SLOW_HEAD)
        trickler.open()
        thread = threading.Thread(target=trickler.run, args=(4.0, False), daemon=True)
        thread.start()
        time.sleep(0.5)
        latencies = [normal_request(gw) for _ in range(5)]
        thread.join()
        trickler.close()
        assert max(latencies) < 1.0, latencies
        assert any(c is not None for c in trickler.closed)  # closed to make room
    finally:
        stop_gateway(gw)


# --------------------------------------------------------------------------------- D2: unfinished headers
def test_an_unfinished_header_line_is_refused_once_over_the_line_limit(stack):
    """200 connections each sending a header value that never ends: each is answered 400 once its line passes
    8190 bytes (before, each could hold up to ~1 MB until the head budget ran out), and memory comes back."""
    gw = stack["gateway"]
    piece = b"a" * 4096
    with abused(gw):
        socks = []
        for _ in range(200):  # each sends its head and 128 KiB of one header line, and never ends it
            s = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5)
            socks.append(s)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            with contextlib.suppress(OSError):
                for _ in range(32):  # (the old head budget let each hold up to ~1 MB)
                    s.sendall(piece)
        answers = [b""] * len(socks)
        deadline = time.monotonic() + 10  # for all the answers (were the fix undone, none would come)
        for i, s in enumerate(socks):
            s.settimeout(max(0.01, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    answers[i] += chunk
            s.close()
    for answer in answers:
        json_error(*parse_answer(answer), 400, "longer than 8190 bytes")


def test_a_head_larger_than_its_limit_in_all_gets_a_400(stack):
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(9))  # 72 kB of complete lines
    status, headers, body, _ = exchange(stack["gateway"], b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    json_error(status, headers, body, 400, "larger than 65536 bytes")


# ----------------------------------------------------------------------------------- D3: pipelining flood
def flood(proc: Proc, request: bytes, seconds: float) -> tuple[int, float | None]:
    """Pipeline ``request`` on one connection for ``seconds`` without reading any answer: (bytes the server took,
    seconds after the flood began that the server closed the connection, or None)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up at once
    s.connect(("127.0.0.1", port_of(proc)))
    s.settimeout(0.2)
    blob = request * max(1, 65536 // len(request))
    sent, start, closed = 0, time.monotonic(), None
    try:
        while time.monotonic() - start < seconds:
            try:
                sent += s.send(blob)
            except TimeoutError:
                continue  # the server stopped reading: good; keep the connection, never read
            except OSError:
                closed = time.monotonic() - start
                break
    finally:
        s.close()
    return sent, closed


@pytest.mark.parametrize("path", ["/health", pytest.param("/v1/completions", marks=pytest.mark.slow),
                                  pytest.param("/metrics", marks=pytest.mark.slow)])
def test_a_pipelining_client_that_never_reads_is_held_to_a_bounded_buffer(stack, path):
    """Requests pipelined on one connection whose client reads nothing: the gateway stops reading once answers
    wait, so its memory stays flat, and other clients are served meanwhile (the serving loop yields between
    pipelined answers, which ``/health`` answers without ever waiting)."""
    gw = stack["gateway"]
    request = (b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() if path != "/v1/completions" else
               b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d"
               b"\r\n\r\n%s" % (len(BODY), BODY))
    with abused(gw) as seen:
        before = seen["peak_mb"]
        sent, _ = flood(gw, request, 4.0)
    print(f"flood of {path}: {sent / 2**20:.1f} MiB sent")
    assert seen["peak_mb"] < before + 30, seen


@pytest.mark.slow
def test_a_client_that_reads_none_of_its_answers_is_closed_after_the_idle_timeout(stack):
    """Once nothing of its answers has been read for ``--idle-timeout`` (the kernel's buffers full, then the
    server's own), the connection is closed."""
    sent, closed = flood(stack["gateway"], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", IDLE_TIMEOUT + 8)
    assert closed is not None and closed < IDLE_TIMEOUT + 8, (sent, closed)


# -------------------------------------------------------------------------------------------- D6: CONNECT
def test_connect_gets_a_json_405_and_no_traceback(stack):
    gw = stack["gateway"]
    status, headers, body, _ = exchange(gw, b"CONNECT host:22 HTTP/1.1\r\nHost: host:22\r\n\r\n")
    json_error(status, headers, body, 405, "CONNECT is not supported")
    assert headers["connection"] == "close"
    assert healthy(gw.url)
    no_traceback(gw)


# -------------------------------------------------------------------------- RFC 9112: framing and Host
def get(version: bytes = b"1.1", *headers: bytes, line: bytes = b"GET /health HTTP/%s") -> bytes:
    return line % version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


CHUNKED = b"POST /v1/completions HTTP/%s\r\nHost: x\r\nTransfer-Encoding: %s\r\nConnection: keep-alive\r\n\r\n" \
          b"%x\r\n%s\r\n0\r\n\r\n"
REFUSED = {
    "repeated-header": (get(b"1.1", b"Host: x", *[b"X-Same: 1"] * 200), 400, "Too many headers"),
    "no-host": (get(b"1.1"), 400, "no Host header"),
    "two-hosts": (get(b"1.1", b"Host: a", b"Host: b"), 400, "more than one Host header"),
    "two-hosts-1.0": (get(b"1.0", b"Host: a", b"Host: a"), 400, "more than one Host header"),
    "bad-host": (get(b"1.1", b"Host: a b/c"), 400, "Host header is not"),
    "double-space-before-target": (get(b"1.1", b"Host: x", line=b"GET  /health HTTP/%s"), 400, "one space apart"),
    "double-space-before-version": (get(b"1.1", b"Host: x", line=b"GET /health  HTTP/%s"), 400, "one space apart"),
    "gzip-chunked": (CHUNKED % (b"1.1", b"gzip, chunked", len(BODY), BODY), 501, "gzip, chunked is not supported"),
    "gzip-then-chunked": (CHUNKED.replace(b"Transfer-Encoding: %s", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: %s")
                          % (b"1.1", b"chunked", len(BODY), BODY), 501, "gzip, chunked is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_requests_rfc_9112_refuses_get_a_json_error_and_a_close(stack, case):
    data, expected, what = REFUSED[case]
    follow_up = get(b"1.1", b"Host: x")  # pipelined behind it: never answered
    status, headers, body, everything = exchange(stack["gateway"], data + follow_up)
    json_error(status, headers, body, expected, what)
    assert headers["connection"] == "close" and answers_in(everything) == 1


def test_http_1_0_rules(stack):
    """HTTP/1.0 needs no Host; a chunked HTTP/1.0 request is answered, then the connection closes even though it
    asked to be kept alive (RFC 9112 §6.1: its framing cannot be trusted)."""
    gw = stack["gateway"]
    status, _, _, _ = exchange(gw, get(b"1.0"))
    assert status == 200
    status, headers, body, everything = exchange(gw, CHUNKED % (b"1.0", b"chunked", len(BODY), BODY)
                                                 + get(b"1.1", b"Host: x"))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 1
    assert headers["connection"] == "close" and answers_in(everything) == 1
    no_traceback(gw)


# ------------------------------------------------------------------------------------ misbehaving endpoints
METRICS = (b"vllm:num_requests_waiting{model_name=\"m\"} 0.0\nvllm:num_requests_running{model_name=\"m\"} 0.0\n"
           b"vllm:kv_cache_usage_perc{model_name=\"m\"} 0.0\n")


class Endpoint(asyncio.Protocol):
    """A model server that answers its scrapes properly and its completions with ``server.reply(body)``: a list of
    byte strings written ``gap`` seconds apart (for at most ``server.seconds``)."""

    def __init__(self, server: Misbehaving):
        self.server, self.buf = server, b""
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                           if ln.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return
            body, self.buf = rest[:length], rest[length:]
            if head.startswith(b"GET /metrics"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(METRICS), METRICS))
            elif head.startswith(b"GET"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            else:
                task = asyncio.ensure_future(self.answer(self.server.reply(body)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def answer(self, pieces: list[bytes]) -> None:
        deadline = asyncio.get_running_loop().time() + self.server.seconds
        for piece in pieces:
            if self.transport.is_closing() or asyncio.get_running_loop().time() > deadline:
                return
            self.transport.write(piece)
            await asyncio.sleep(self.server.gap)


class Misbehaving:
    """``Endpoint`` served on a free port from a thread of this process."""

    def __init__(self, reply: Callable[[bytes], list[bytes]], gap: float = 0.0, seconds: float = 10.0):
        self.reply, self.gap, self.seconds = reply, gap, seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Misbehaving:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(lambda: Endpoint(self), "127.0.0.1", self.port), self.loop).result(5)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def echo(body: bytes) -> bytes:
    answer = json.dumps({"choices": [{"text": json.loads(body)["prompt"]}]}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)


def test_an_endpoints_early_hints_never_become_the_clients_answer(logs):
    """An endpoint answering ``103 Early Hints`` before each answer: every client request on one kept-alive
    connection gets its own final answer (before, the 103 went out as the answer, and every later answer on
    the connection belonged to the previous request)."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n"
    with Misbehaving(lambda body: [early, echo(body)], gap=0.01) as endpoint:
        gw = start_gateway([endpoint.url], logs)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port_of(gw), timeout=10)
            got = []
            for i in range(3):
                conn.request("POST", "/v1/completions", json.dumps({"prompt": f"request {i}"}).encode(),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                got.append((resp.status, json.loads(resp.read())["choices"][0]["text"]))
            conn.close()
            assert got == [(200, "request 0"), (200, "request 1"), (200, "request 2")]
        finally:
            stop_gateway(gw)


def test_an_endpoints_endless_headers_are_cut_off(logs):
    """An endpoint sending one header that never ends (8 KiB every 10 ms): the gateway gives up once the head
    passes 64 KiB, answers the client at once, and keeps its memory (before, it read on until the first-byte
    timeout; 205 MB in 60 s in the probe)."""
    endless = [b"HTTP/1.1 200 OK\r\nX-Big: "] + [b"a" * 8192] * 1000
    with Misbehaving(lambda body: endless, gap=0.01, seconds=8.0) as endpoint:
        gw = start_gateway([endpoint.url], logs, "--first-byte-timeout", "30")
        try:
            before = rss_mb(gw.pid)
            start = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port_of(gw), timeout=5)
            conn.request("POST", "/v1/completions", BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            took = time.monotonic() - start
            assert resp.status == 503 and took < 2.0, (resp.status, body, took)
            assert rss_mb(gw.pid) < 1.1 * before
            no_traceback(gw)
        finally:
            stop_gateway(gw)


# ---------------------------------------------------------------------------- streams in flight that stall
@pytest.mark.slow
def test_a_stream_whose_endpoint_stops_mid_answer_ends_cleanly_with_an_error_event(logs):
    """The endpoint is SIGSTOPped after the first tokens of a stream: after ``--inter-token-timeout`` the client's
    stream ends cleanly (chunked end), its last events an error and ``[DONE]`` (before, it hung)."""
    sim = start_sim(logs, "--step-overhead-ms", "50")
    gw = start_gateway([sim.url], logs, "--inter-token-timeout", "1")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(gw), timeout=10)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hello", "max_tokens": 200, "stream": True,
                                                             "ignore_eos": True}).encode(),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read1(65536)
        assert first.startswith(b"data: {")
        os.kill(sim.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            rest = resp.read()  # to the end of the chunked body: a clean end
            took = time.monotonic() - start
        finally:
            os.kill(sim.pid, signal.SIGCONT)
        events = [e for e in (first + rest).decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["code"] == 504 and "stalled mid-stream" in error["message"], error
        assert 0.5 < took < 4.0, took
        assert healthy(gw.url)
        no_traceback(gw)
    finally:
        stop_gateway(gw)
        stop(sim)


# ------------------------------------------------------------------------------------------- all at once
@pytest.mark.slow
def test_200_slowloris_connections_and_a_pipelining_flood_at_once(stack):
    """The issue's combined case: a normal client's requests still succeed within 1 s each, and the gateway's
    memory stays under 400 MB."""
    gw = stack["gateway"]
    trickler = Trickler(gw, 200, SLOW_HEAD)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with abused(gw, limit_mb=400):
        trickler.open()
        slow = threading.Thread(target=trickler.run, args=(REQUEST_TIMEOUT + 4,), daemon=True)
        slow.start()
        flood(gw, request, REQUEST_TIMEOUT + 3)
        slow.join()
        trickler.close()
    assert all(c is not None for c in trickler.closed)


# ------------------------------------------------------------------------- memory comes back at once
@pytest.mark.skipif(SERVER != "front", reason="in process: the gateway's own server and client")
def test_a_closed_connection_is_freed_without_waiting_for_the_cycle_collector():
    """The gateway runs Python's cycle collector rarely (``kit.gateway.server.GC_THRESHOLD``), so a connection
    must not sit in a reference cycle once closed: each held its parser's buffers (up to a whole head) until the
    next full collection, which is why memory did not come back after 200 abusive connections had left. In
    process, with the collector off: the server's connection and the client's are freed when they close."""
    import gc
    import weakref

    from kit.gateway.front import Connection, Front, Response, Router
    from kit.gateway.upstream import Pool, _Connection
    from kit.http import ServerLimits

    async def scenario() -> list[weakref.ref]:
        seen: list[weakref.ref] = []
        real_made, real_lost = Connection.connection_made, _Connection.connection_made

        def note(conn, transport):
            seen.append(weakref.ref(conn))
            return (real_made if isinstance(conn, Connection) else real_lost)(conn, transport)

        async def health(_r):
            return Response(200, b"{}")

        router = Router()
        router.add("POST", "/v1/completions", health)
        front = Front(router, ServerLimits(), 2**20)
        port = free_port()
        Connection.connection_made, _Connection.connection_made = note, note  # type: ignore[method-assign]
        try:
            await front.start("127.0.0.1", port)
            pool = Pool(connect_timeout=1.0)
            answer = await pool.post(f"http://127.0.0.1:{port}", "/v1/completions", b"{}")
            assert answer.status == 200 and await answer.read() == b"{}"
            answer.close()
            await pool.close()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000)  # an unfinished head
            await asyncio.sleep(0.1)
            writer.close()
            await asyncio.sleep(0.2)
            await front.close()
            await asyncio.sleep(0.1)
        finally:
            Connection.connection_made, _Connection.connection_made = real_made, real_lost  # type: ignore[method-assign]
        return seen

    gc.disable()
    try:
        refs = asyncio.run(scenario())
        assert len(refs) == 3 and [r() for r in refs] == [None] * 3
    finally:
        gc.enable()
