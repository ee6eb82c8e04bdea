"""What the instruction-counting children share: the kit's gateway in front of zero-latency upstreams, all in one
process, and a raw keep-alive HTTP/1.1 client, so that callgrind counts the gateway and little else.

Imported by the snippets ``bench/request_path.py`` and ``bench/gateway_servers.py`` run under callgrind
(``bench/callgrind.py``), with the checkout being counted on ``PYTHONPATH`` and this folder on ``sys.path``.
Importing it turns off the datastore's watchdog ticks, which would otherwise land inside the counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
import upstream as fake

from kit import paths
from kit.gateway import Gateway, GatewaySettings, datastore, endpoints_from_urls
from kit.picker import load_picker_file
from kit.targets.processes import free_port

datastore.LOOP_TICK = 3600.0
BODY = orjson.dumps({"model": fake.MODEL, "prompt": "How long does the gateway take to pass this request on? " * 4,
                     "max_tokens": 1})


class Client(asyncio.Protocol):
    """One connection that sends ``BODY`` to ``/v1/completions``; ``send`` returns when the whole answer is in."""

    def __init__(self, port: int):
        self.req = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (port, len(BODY), BODY))
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.done.set_result(None)

    async def send(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(self.req)
        await self.done
        assert self.parser.get_status_code() == 200, self.parser.get_status_code()


async def connect(port: int, wait: bool = False) -> Client:
    """A client connected to ``port``; with ``wait``, retried until something listens there."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return (await loop.create_connection(lambda: Client(port), "127.0.0.1", port))[1]
        except OSError:
            if not wait:
                raise
            await asyncio.sleep(0.2)


async def gateway_over_upstreams(profile: str, n: int = 4, **settings: Any) -> tuple[Gateway, list[int]]:
    """A gateway (not yet started) with scheduler profile ``profile`` over ``n`` upstreams listening in this loop."""
    loop = asyncio.get_running_loop()
    ports = [free_port() for _ in range(n)]
    for p in ports:
        await loop.create_server(lambda: fake.Upstream(4, 0.001), "127.0.0.1", p)
    gw = Gateway(load_picker_file(paths.scheduler_profile(profile)),
                 endpoints_from_urls([f"http://127.0.0.1:{p}" for p in ports]), fake.MODEL,
                 settings=GatewaySettings(refresh_interval=3600, **settings))
    return gw, ports


async def warm(through: Client, direct: Client, requests: int = 200) -> None:
    """Requests through the gateway and straight to an upstream, before anything is counted."""
    for _ in range(requests):
        await through.send()
        await direct.send()
