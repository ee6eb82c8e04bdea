"""How both kit servers (``start_app`` in kit/http.py) treat connections, malformed HTTP and malformed bodies,
over real sockets to real ``kit sim`` and ``kit gateway`` processes: bad input gets a clear answer and
never takes a server down."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kit import tokenizer
from kit.http import INSTANCE_ENV, INSTANCE_HEADER, json_errors, start_app
from kit.targets.processes import Proc, free_port, healthy, stop
from tests.helpers import post


@pytest.fixture
def servers(sim_factory, gateway_factory):
    """A simulator and a gateway in front of it: the two kinds of kit server."""
    sim = sim_factory()
    return {"sim": sim, "gateway": gateway_factory([sim.url])}


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def port_of(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


# ------------------------------------------------------------------------ protocol errors (item 10)
PROTOCOL_ERRORS = {
    "long-header-line": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
                         "longer than 8190 bytes"),
    "bad-content-length": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                           "Content-Length"),
    "too-many-headers": (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
                         + b"\r\n", "Too many headers"),
}


@pytest.mark.parametrize("role", ["sim", "gateway"])
def test_protocol_errors_get_a_json_400_and_one_log_line(servers, role):
    proc = servers[role]
    for data, what in PROTOCOL_ERRORS.values():
        status, headers, body = exchange(port_of(proc), data)
        assert status == 400 and headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert error["code"] == 400 and what in error["message"] and "b'" not in error["message"]
        assert headers[INSTANCE_HEADER] == proc.instance  # the process token survives protocol errors
    for _ in range(20):  # the same error again and again is logged once
        exchange(port_of(proc), PROTOCOL_ERRORS["bad-content-length"][0])
    assert healthy(proc.url)
    log = Path(proc.log).read_text()
    assert "Traceback" not in log
    lines = [ln for ln in log.splitlines() if "malformed HTTP request" in ln]
    assert len(lines) == 3, lines  # one per kind: the 20 repeats are rate-limited


@pytest.mark.parametrize("role", ["sim", "gateway"])
def test_an_expectation_other_than_100_continue_gets_a_json_417(servers, role):
    """Found by the fuzz test: aiohttp answered text, or 500 for a value that is not UTF-8."""
    proc = servers[role]
    body = b'{"prompt": "x", "max_tokens": 1}'
    for expect in (b"gzip", b"\x80\xff"):
        status, headers, answer = exchange(port_of(proc), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: "
                                           + expect + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                                           % len(body) + body)
        assert status == 417 and json.loads(answer)["error"]["code"] == 417
        assert headers[INSTANCE_HEADER] == proc.instance
    status, _, answer = exchange(port_of(proc), b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue"
                                 b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status == 100 and answer.startswith(b"HTTP/1.1 200")  # "continue", then the answer
    assert "Traceback" not in Path(proc.log).read_text()


# ------------------------------------------------------------------------ malformed bodies (item 9)
MALFORMED_BODIES = {
    "deeply-nested": ("/v1/completions", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {},
                      "nests JSON deeper than"),
    "lone-surrogate": ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', {}, "lone UTF-16 surrogate"),
    "surrogate-in-chat": ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\udfffb"}]}', {},
                          "lone UTF-16 surrogate"),
    "bogus-gzip": ("/v1/completions", b'{"prompt": "x"}', {"Content-Encoding": "gzip"}, "content-encoding: gzip"),
    "text-part-not-text": ("/v1/chat/completions",
                           b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', {},
                           "messages[0].content.parts[0].text"),
    "not-utf8": ("/v1/completions", b'{"prompt": "\xff\xfe"}', {}, "not UTF-8"),
    "encoded-surrogate": ("/v1/completions", b'{"prompt": "\xed\xa0\x80"}', {}, "not UTF-8"),
}


@pytest.mark.parametrize("role", ["sim", "gateway"])
@pytest.mark.parametrize("case", list(MALFORMED_BODIES))
def test_malformed_bodies_get_a_clear_400(servers, role, case):
    proc = servers[role]
    path, raw, headers, what = MALFORMED_BODIES[case]
    status, body, _ = post(proc.url, path, raw=raw, headers=headers)
    assert status == 400 and what in body["error"]["message"], body
    assert post(proc.url, "/v1/completions", {"prompt": "still fine", "max_tokens": 1})[0] == 200
    assert "Traceback" not in Path(proc.log).read_text()


def test_a_valid_surrogate_pair_is_text_not_an_error(servers):
    for proc in servers.values():
        status, body, _ = post(proc.url, "/v1/completions", raw=b'{"prompt": "smile \\ud83d\\ude00", "max_tokens": 1}')
        assert status == 200 and body["usage"]["prompt_tokens"] == len(tokenizer.encode("smile \U0001F600"))


def test_an_unexpected_error_is_a_500_without_its_text_and_one_logged_traceback(caplog):
    """A handler bug: the client sees that it happened, the log says what and where (in process: no
    input makes the kit's own servers fail this way)."""

    async def broken(_request: web.Request) -> web.Response:
        raise ValueError("secret internals")

    async def scenario():
        app = web.Application(middlewares=[json_errors(1024)])
        app.router.add_get("/broken", broken)
        port = free_port()
        runner = await start_app(app, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/broken") as r:
                return r.status, await r.json()
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING):
        status, body = asyncio.run(scenario())
    assert status == 500 and body["error"]["code"] == 500
    assert "secret" not in json.dumps(body) and "ValueError" not in json.dumps(body)
    [record] = [r for r in caplog.records if r.exc_info]
    assert "GET /broken" in record.getMessage() and record.exc_info[0] is ValueError


# ------------------------------------------------------------------------ connections (item 3)
def spawn_limited(args: list[str], log: Path, nofile: int) -> Proc:
    """``python -m kit ARGS`` with at most ``nofile`` open files (soft and hard), as under ``ulimit -n``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    instance = uuid.uuid4().hex
    with open(log, "ab") as fh:
        p = subprocess.Popen([sys.executable, "-m", "kit", *args, "--port", str(port)], stdout=fh,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**__import__("os").environ, INSTANCE_ENV: instance},
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
    proc = Proc(p.pid, url, str(log), args[0], (*args, "--port", str(port)), instance)
    deadline = time.monotonic() + 30
    while not healthy(url, instance=instance):
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("role", ["sim", "gateway"])
def test_idle_connections_cannot_starve_a_server_of_file_descriptors(sim_factory, tmp_path, role):
    """300 connections that send nothing, against a server limited to 256 open files: ordinary
    requests still succeed (the longest-idle connections are closed to make room), and the log stays small."""
    args = ["sim"] if role == "sim" else ["gateway", "--endpoints", sim_factory().url]
    proc = spawn_limited(args, tmp_path / f"{role}.log", nofile=256)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port_of(proc)), timeout=5))
        statuses = [post(proc.url, "/v1/completions", {"prompt": f"q{i}", "max_tokens": 1})[0] for i in range(23)]
        assert statuses == [200] * 23
        time.sleep(0.5)
        assert healthy(proc.url)
    finally:
        for s in idle:
            s.close()
        stop(proc)
    log = Path(proc.log).read_text()
    assert len(log) < 20_000 and "Traceback" not in log, log[-2000:]


def test_idle_connections_are_closed_after_the_idle_timeout(sim_factory, gateway_factory):
    gw = gateway_factory([sim_factory().url], "--idle-timeout", "1")
    silent = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5)
    used = socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5)
    used.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert used.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive after its answer
    time.sleep(1.6)
    for s in (silent, used):
        assert s.recv(65536) == b""  # closed by the server
        s.close()


def test_past_the_connection_cap_with_none_idle_a_new_client_gets_a_json_503(sim_factory, gateway_factory):
    gw = gateway_factory([sim_factory("--extra-latency-ms", "1500").url], "--max-connections", "3")

    async def scenario():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one(i):
                async with s.post(gw.url + "/v1/completions", json={"prompt": f"busy {i}", "max_tokens": 1}) as r:
                    return r.status, await r.json(), r.headers.get("Retry-After")

            busy = [asyncio.create_task(one(i)) for i in range(3)]
            await asyncio.sleep(0.5)  # three connections now hold requests in progress
            extra = await one(3)
            return extra, await asyncio.gather(*busy)

    (status, body, retry_after), busy = asyncio.run(scenario())
    assert status == 503 and "connections open" in body["error"]["message"] and retry_after == "1"
    assert [b[0] for b in busy] == [200, 200, 200]
    assert post(gw.url, "/v1/completions", {"prompt": "room again", "max_tokens": 1})[0] == 200
