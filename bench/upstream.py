"""A zero-latency OpenAI-style upstream for timing routers: it answers at once, so the router is what is measured.

Run: ``.venv/bin/python bench/upstream.py --ports 8101 8102 ...`` (one process serves every port, so N
"workers" cost one process). A raw asyncio protocol with a canned answer (uvloop when installed): it
does in a few microseconds what ``kit sim`` does in about a millisecond.

* ``POST /v1/completions`` and ``/v1/chat/completions``: a fixed completion; with ``"stream": true`` an
  SSE stream whose first event is written at once with the headers, then ``--tokens - 1`` more events
  ``--itl-ms`` apart, then ``data: [DONE]``.
* ``POST /tokenize`` (vllm-router's ``cache_aware`` asks every worker): a few token ids.
* ``GET /metrics``: an idle vLLM's gauges (the kit gateway scrapes them); ``GET /v1/models``: the model;
  any other ``GET`` (``/health``, ``/get_server_info``, ...): ``{}``.

Only what routers send is understood: HTTP/1.1 with ``Content-Length`` bodies and keep-alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal

MODEL = "Qwen/Qwen3-0.6B"
METRICS = (b"vllm:num_requests_waiting{model_name=\"m\"} 0.0\nvllm:num_requests_running{model_name=\"m\"} 0.0\n"
           b"vllm:kv_cache_usage_perc{model_name=\"m\"} 0.0\n"
           b"vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"40000\"} 1.0\n")
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm",
                                                 "root": MODEL}]}).encode()
COMPLETION = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0, "model": MODEL,
                         "choices": [{"index": 0, "text": " ok", "logprobs": None, "finish_reason": "length"}],
                         "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}).encode()
TOKENS = json.dumps({"tokens": [1, 2, 3, 4, 5, 6, 7, 8], "count": 8, "max_model_len": 40960}).encode()


def _event(text: str, finish: str | None = None) -> bytes:
    body = json.dumps({"id": "cmpl-0", "object": "text_completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})
    data = f"data: {body}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def _answer(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status.encode(), content_type, len(body), body))


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
_DONE_DATA = b"data: [DONE]\n\n"
DONE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_DONE_DATA), _DONE_DATA)


class Upstream(asyncio.Protocol):
    """One client connection: parse each request, answer it at once."""

    def __init__(self, tokens: int, itl: float):
        self.tokens, self.itl = tokens, itl
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written: later requests wait in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, path, *_ = lines[0].split(" ")
            path = path.split("?")[0]
            if method == "POST" and path.endswith("/completions"):
                if b'"stream":true' in body.replace(b" ", b""):
                    self.busy = True
                    asyncio.get_running_loop().create_task(self._stream())
                    return
                self.transport.write(_answer("200 OK", COMPLETION))
            elif method == "POST" and path == "/tokenize":
                self.transport.write(_answer("200 OK", TOKENS))
            elif method == "GET" and path == "/metrics":
                self.transport.write(_answer("200 OK", METRICS, b"text/plain; version=0.0.4"))
            elif method == "GET" and path == "/v1/models":
                self.transport.write(_answer("200 OK", MODELS))
            elif method == "GET":
                self.transport.write(_answer("200 OK", b"{}"))
            else:
                self.transport.write(_answer("404 Not Found", b'{"error":"not found"}'))

    async def _stream(self) -> None:
        t = self.transport
        t.write(STREAM_HEAD + _event(" tok0"))
        for i in range(1, self.tokens):
            await asyncio.sleep(self.itl)
            if t.is_closing():
                return
            t.write(_event(f" tok{i}", "length" if i == self.tokens - 1 else None))
        t.write(DONE)
        self.busy = False
        self._serve()


async def serve(ports: list[int], host: str, tokens: int, itl: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: Upstream(tokens, itl), host, p, backlog=1024) for p in ports]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream: serving on {', '.join(f'http://{host}:{p}' for p in ports)}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, nargs="+", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tokens", type=int, default=4, help="events per streamed answer")
    ap.add_argument("--itl-ms", type=float, default=1.0, help="milliseconds between streamed events")
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.ports, args.host, args.tokens, args.itl_ms / 1000))


if __name__ == "__main__":
    main()
