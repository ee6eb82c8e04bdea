"""Send OpenAI-style requests and time them: time to first token, inter-token gaps, end to end."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

from kit.experiments.results import RequestResult
from kit.http import ENDPOINT_HEADER, REQUEST_ID_HEADER

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also inside Jupyter's running event loop
    (there it runs on a short-lived thread with its own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def make_body(prompt: str, *, chat: bool, stream: bool, model: str | None = None,
              max_tokens: int | None = None, ignore_eos: bool = False) -> dict:
    body: dict = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    if model:
        body["model"] = model
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if ignore_eos:
        body["ignore_eos"] = True
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _take_usage(res: RequestResult, usage: dict | None) -> None:
    if usage:
        res.prompt_tokens = usage.get("prompt_tokens", 0)
        res.completion_tokens = usage.get("completion_tokens", 0)
        res.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


async def send(session: aiohttp.ClientSession, url: str, body: dict,
               headers: dict[str, str] | None = None) -> RequestResult:
    """POST ``body`` to ``url`` + the completions path its shape implies; stream if it asks to."""
    chat = "messages" in body
    path = "/v1/chat/completions" if chat else "/v1/completions"
    start = time.perf_counter()
    res = RequestResult(status=0, started=start)
    try:
        async with session.post(url.rstrip("/") + path, json=body, headers=headers) as resp:
            res.status, res.endpoint = resp.status, resp.headers.get(ENDPOINT_HEADER)
            res.request_id = resp.headers.get(REQUEST_ID_HEADER)
            if resp.status != 200:
                res.error = await _error_text(resp)
            elif body.get("stream"):
                await _read_stream(resp, res, chat, start)
            else:
                data = await resp.json()
                choice = data["choices"][0]
                res.text = choice["message"]["content"] if chat else choice["text"]
                res.finish_reason = choice.get("finish_reason")  # arrived whole: no first-token time
                _take_usage(res, data.get("usage"))
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.e2e = time.perf_counter() - start
    return res


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    raw = await resp.text()
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw[:500] or resp.reason or "error"


async def _read_stream(resp: aiohttp.ClientResponse, res: RequestResult, chat: bool, start: float) -> None:
    last = None
    res.text = ""
    done = False
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        chunk = json.loads(payload)
        _take_usage(res, chunk.get("usage"))
        for choice in chunk.get("choices") or []:
            # A chunk carries tokens even when its text is empty (vLLM holds back the bytes of a character that a
            # later token completes); the chat's first chunk, the role, carries none.
            delta = choice.get("delta") or {}
            carries = "content" in delta and "role" not in delta if chat else "text" in choice
            piece = delta.get("content") if chat else choice.get("text")
            if choice.get("finish_reason"):
                res.finish_reason = choice["finish_reason"]
            if carries:
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - start
                else:
                    res.itls.append(now - last)
                last = now
            if piece:
                res.text += piece
    if not done:
        res.error = "the stream ended before [DONE]"


def models(url: str, timeout: float = 10.0) -> list[str]:
    """The model ids a server or gateway lists at /v1/models."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout) as r:
        return [m["id"] for m in json.loads(r.read())["data"]]


def describe_result(label: str, r: RequestResult) -> dict:
    """One table row for a request: what came back, who served it, how fast. Time to first token exists only
    for a streamed answer; a non-streamed one arrives whole, so only its total time is shown."""
    itl = f"{1000 * sum(r.itls) / len(r.itls):.1f}" if r.itls else "-"
    return {"request": label, "ok": r.ok, "served by": r.endpoint or "-",
            "first token ms": f"{1000 * r.ttft:.1f}" if r.ttft is not None else "- (not streamed)",
            "total ms": f"{1000 * r.e2e:.1f}", "ITL ms": itl,
            "tokens (cached/prompt → out)": f"{r.cached_tokens}/{r.prompt_tokens} → {r.completion_tokens}",
            "reply": (r.text.strip()[:40] + "…") if len(r.text.strip()) > 40 else r.text.strip()}


def request(url: str, prompt: str, *, chat: bool = False, stream: bool = False, model: str | None = None,
            max_tokens: int | None = None, timeout: float = 300.0) -> RequestResult:
    """One request from synchronous code (the CLI, notebooks)."""

    async def one() -> RequestResult:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            return await send(s, url, make_body(prompt, chat=chat, stream=stream, model=model,
                                                 max_tokens=max_tokens))

    return run_sync(one())
