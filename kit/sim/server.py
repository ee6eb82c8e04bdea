"""The simulator's HTTP face: what ``vllm serve`` answers, over the simulated engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator

from aiohttp import web

from kit import tokenizer
from kit.http import HTTPError, error, json_errors, run_app, start_app
from kit.sim import kv_publisher
from kit.sim.config import SimConfig
from kit.sim.engine import DONE, Engine, EngineFull, Sequence
from kit.sim.metrics import SimMetrics
from kit.sim.protocol import ChatRequest, CompletionRequest, TokenizeRequest, read_object, validate

MAX_BODY = 64 * 1024 * 1024
OFFLOAD_CHARS = 32 * 1024  # longer texts are tokenized in a worker thread, so the server keeps answering
VERSION = "0.11.0-kit-sim"


def natural_length(prompt: list[int]) -> int:
    """Where the simulated model would stop on its own: 8..128 tokens, fixed per prompt."""
    return 8 + zlib.crc32(repr(prompt[-64:]).encode()) % 121


def _usage(seq: Sequence) -> dict:
    return {"prompt_tokens": seq.prompt_len, "completion_tokens": seq.output_len,
            "total_tokens": seq.prompt_len + seq.output_len,
            "prompt_tokens_details": {"cached_tokens": seq.cached_tokens}}


class SimServer:
    """One simulated vLLM server: engine, metrics, fault injection and the OpenAI routes."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.metrics = SimMetrics(self.engine, cfg.model)
        self.engine.observer = self.metrics
        self.rng = random.Random(cfg.seed)
        self.started = int(time.time())
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors(MAX_BODY)])
        self.app.add_routes([
            web.get("/health", self.health),
            web.get("/ping", self.health),
            web.get("/version", self.version),
            web.get("/v1/models", self.models),
            web.get("/metrics", self.prometheus),
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions/render", self.render_completion),
            web.post("/v1/chat/completions/render", self.render_chat),
            web.post("/tokenize", self.tokenize),
            web.post("/detokenize", self.detokenize),
            web.post("/reset_prefix_cache", self.reset_prefix_cache),
        ])
        self.app.cleanup_ctx.append(self._engine_task)
        self.app.cleanup_ctx.append(kv_publisher.lifecycle(self.engine, cfg))

    async def _engine_task(self, _app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.engine.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --------------------------------------------------------------- simple routes
    async def health(self, _r: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, _r: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def models(self, _r: web.Request) -> web.Response:
        m = self.cfg.model
        return web.json_response({"object": "list", "data": [{
            "id": m, "object": "model", "created": self.started, "owned_by": "vllm", "root": m,
            "parent": None, "max_model_len": self.cfg.max_model_len}]})

    async def prometheus(self, _r: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def reset_prefix_cache(self, _r: web.Request) -> web.Response:
        self.engine.pool.reset()
        self.engine.flush_events()
        return web.Response(status=200)

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.cfg.model:
            raise HTTPError(f"The model `{name}` does not exist.", status=404, param="model")

    async def _body(self, request: web.Request) -> dict:
        data = await read_object(request)
        self._check_model(data.get("model") if isinstance(data.get("model"), str) else None)
        return data

    async def _encode(self, text: str, *, allow_special: bool, limit: int | None) -> list[int]:
        """Token ids of ``text`` (at most ``limit + 1``: enough to refuse it); a long text is tokenized
        in a worker thread, so the event loop keeps serving other requests and /health."""
        if len(text) <= OFFLOAD_CHARS:
            return tokenizer.encode(text, allow_special=allow_special, limit=limit)
        return await asyncio.to_thread(tokenizer.encode, text, allow_special=allow_special, limit=limit)

    def _too_long(self, tokens: str) -> HTTPError:
        return HTTPError(f"This model's maximum context length is {self.cfg.max_model_len} tokens. However, your "
                         f"request has {tokens} input tokens. Please reduce the length of the input.")

    async def _prompt_ids(self, text: str, *, allow_special: bool) -> list[int]:
        """A prompt's ids; a prompt longer than the model's context is refused without tokenizing all of it."""
        limit = self.cfg.max_model_len
        ids = await self._encode(text, allow_special=allow_special, limit=limit)
        if len(ids) > limit:
            raise self._too_long(f"more than {limit}")
        return ids

    async def tokenize(self, request: web.Request) -> web.Response:
        req = validate(await self._body(request), TokenizeRequest)
        if req.prompt is not None:  # vLLM counts a prompt of any length here
            ids = await self._encode(req.prompt, allow_special=req.add_special_tokens, limit=None)
        else:
            text = tokenizer.apply_chat_template([m.model_dump() for m in req.messages or []],
                                                 add_generation_prompt=req.add_generation_prompt)
            ids = await self._encode(text, allow_special=True, limit=None)
        return web.json_response({"count": len(ids), "max_model_len": self.cfg.max_model_len, "tokens": ids})

    async def detokenize(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        ids = data.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and tokenizer.valid_id(t) for t in ids):
            raise HTTPError("'tokens' must be a list of token ids from this model's vocabulary", param="tokens")
        return web.json_response({"prompt": tokenizer.decode(ids)})

    # ---------------------------------------------------------------- generation
    async def _completion_input(self, request: web.Request) -> tuple[CompletionRequest, list[int], int]:
        data = await self._body(request)
        prompt, limit = data.get("prompt"), self.cfg.max_model_len
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, list) and len(prompt) > limit and all(isinstance(t, int) for t in prompt[:8]):
            raise self._too_long(str(len(prompt)))  # before validating a long list of ids
        req = validate(data, CompletionRequest)
        if isinstance(req.prompt, str):
            ids = await self._prompt_ids(req.prompt, allow_special=False)
        else:
            bad = [t for t in req.prompt if not tokenizer.valid_id(t)]
            if bad:
                raise HTTPError(f"token id {bad[0]} is out of vocabulary", param="prompt")
            ids = list(req.prompt)
        return req, ids, req.max_tokens or 16

    async def _chat_input(self, request: web.Request) -> tuple[ChatRequest, list[int], int]:
        req = validate(await self._body(request), ChatRequest)
        text = tokenizer.apply_chat_template([m.model_dump() for m in req.messages],
                                             add_generation_prompt=req.add_generation_prompt)
        ids = await self._prompt_ids(text, allow_special=True)
        return req, ids, req.max_completion_tokens or req.max_tokens or max(1, self.cfg.max_model_len - len(ids))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req, ids, limit = await self._completion_input(request)
        return await self._generate(request, req, ids, limit, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req, ids, limit = await self._chat_input(request)
        return await self._generate(request, req, ids, limit, chat=True)

    def _rendered(self, req: CompletionRequest | ChatRequest, ids: list[int], limit: int, chat: bool) -> dict:
        """vLLM's render answer (a GenerateRequest): what the engine would be given, without running it."""
        params = {"max_tokens": limit, "temperature": 1.0 if req.temperature is None else req.temperature,
                  "top_p": 1.0 if req.top_p is None else req.top_p, "ignore_eos": req.ignore_eos, "seed": req.seed}
        return {"request_id": self._head(chat)["id"], "token_ids": ids, "features": None, "sampling_params": params}

    async def render_completion(self, request: web.Request) -> web.Response:
        req, ids, limit = await self._completion_input(request)
        return web.json_response([self._rendered(req, ids, limit, chat=False)])

    async def render_chat(self, request: web.Request) -> web.Response:
        req, ids, limit = await self._chat_input(request)
        return web.json_response(self._rendered(req, ids, limit, chat=True))

    async def _generate(self, request: web.Request, req: CompletionRequest | ChatRequest, ids: list[int],
                        max_tokens: int, chat: bool) -> web.StreamResponse:
        cfg = self.cfg
        if cfg.fail_rate and self.rng.random() < cfg.fail_rate:
            return error(cfg.fail_status, "injected failure (simulator --fail-rate)")
        drop = bool(cfg.drop_rate) and self.rng.random() < cfg.drop_rate
        if cfg.extra_latency_ms:
            await asyncio.sleep(cfg.extra_latency_ms * 1e-3 * cfg.time_scale)
        try:
            seq = self.engine.submit(ids, max_tokens, None if req.ignore_eos else natural_length(ids))
        except EngineFull as err:
            raise HTTPError(str(err)) from None
        try:
            if req.stream:
                return await self._stream(request, req, seq, chat, drop)
            if drop:
                _drop(request)
                return web.Response(status=500)
            out = []
            while (tok := await seq.out.get()) != DONE:
                out.append(tok)
            return web.json_response(self._full_body(req, seq, tokenizer.decode(out), chat))
        finally:
            self.engine.abort(seq)  # no-op unless the client left early

    def _head(self, chat: bool) -> dict:
        return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.cfg.model}

    def _full_body(self, req: CompletionRequest | ChatRequest, seq: Sequence, text: str, chat: bool) -> dict:
        body = self._head(chat)
        if chat:
            body["object"] = "chat.completion"
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": seq.finish_reason, "stop_reason": None}
        else:
            if getattr(req, "echo", False) and isinstance(req.prompt, str):
                text = req.prompt + text
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": seq.finish_reason, "stop_reason": None}
        body["choices"] = [choice]
        body["usage"] = _usage(seq)
        return body

    async def _stream(self, request: web.Request, req: CompletionRequest | ChatRequest, seq: Sequence,
                      chat: bool, drop: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = self._head(chat)
        opts = req.stream_options
        every_usage = bool(opts and opts.continuous_usage_stats)

        async def send(choice: dict | None) -> None:
            body = dict(head, choices=[choice] if choice else [])
            if every_usage or choice is None:
                body["usage"] = _usage(seq)
            await resp.write(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")

        if chat:
            await send({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None})
        sent = 0
        while (tok := await seq.out.get()) != DONE:
            last = seq.finished and seq.out.qsize() == 1
            reason = seq.finish_reason if last else None
            text = tokenizer.decode([tok])
            if chat:
                await send({"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason})
            else:
                await send({"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                            "stop_reason": None})
            sent += 1
            if drop and sent * 2 >= seq.target_len:
                _drop(request)
                return resp
        if opts and opts.include_usage:
            await send(None)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _drop(request: web.Request) -> None:
    """Cut the connection without a proper end, as a crashing server would."""
    if request.transport is not None:
        request.transport.abort()


async def start(cfg: SimConfig, host: str = "127.0.0.1", port: int = 8001) -> web.AppRunner:
    """Start a simulator in the running loop; ``await runner.cleanup()`` stops it."""
    return await start_app(SimServer(cfg).app, host, port)


def serve(cfg: SimConfig, host: str, port: int) -> None:
    """Run a simulator until SIGTERM or SIGINT (the ``kit sim`` command)."""
    banner = [f"serving {cfg.model} on http://{host}:{port} ({cfg.num_gpu_blocks} KV blocks of {cfg.block_size} "
              f"tokens, max {cfg.max_num_seqs} seqs, time scale {cfg.time_scale})"]
    run_app(SimServer(cfg).app, host, port, "kit sim", lambda: banner)
