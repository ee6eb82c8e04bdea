"""The simulator's HTTP face: what ``vllm serve`` answers, over the simulated engine.

Routes, shapes and errors follow vLLM 0.32 as ``tests/contract`` checks them against a real server; the
differences kept on purpose are listed in docs/explanation/simulator.md.
"""

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
from kit.sim.protocol import (
    ChatRequest,
    CompletionRequest,
    RequestValidationError,
    TokenizeRequest,
    check_sampling,
    invalid,
    read_object,
    too_long,
    validate,
)

MAX_BODY = 64 * 1024 * 1024
OFFLOAD_CHARS = 32 * 1024  # longer texts are tokenized in a worker thread, so the server keeps answering
VLLM_VERSION = "0.32.0"  # the vLLM release whose API the simulator answers as
VERSION = f"{VLLM_VERSION}-kit-sim"
COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions


def natural_length(prompt: list[int]) -> int:
    """Where the simulated model would stop on its own: 8..128 tokens, fixed per prompt."""
    return 8 + zlib.crc32(repr(prompt[-64:]).encode()) % 121


def _request_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]  # vLLM's form


@web.middleware
async def _route_errors(request: web.Request, handler) -> web.StreamResponse:
    """An unknown route or method is answered as vLLM's FastAPI answers it: ``{"detail": ...}``."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        return web.json_response({"detail": exc.reason}, status=exc.status)


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
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors(MAX_BODY), _route_errors])
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

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """vLLM's answer: ``{"success": bool}``; refused while requests hold blocks, unless
        ``?reset_running_requests=true`` (they are preempted first, and recompute)."""
        if request.query.get("reset_running_requests", "").lower() == "true":
            self.engine.preempt_all()
        success = self.engine.pool.reset()
        self.engine.flush_events()
        return web.json_response({"success": success})

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.cfg.model:
            raise HTTPError(f"The model `{name}` does not exist. Valid aliases: {self.cfg.model}.", status=404,
                            param="model")

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

    async def _prompt_ids(self, text: str, *, allow_special: bool) -> list[int]:
        """A prompt's ids; a prompt longer than the model's context is refused without tokenizing all of it,
        and, as vLLM does, without tokenizing at all when it has more characters than that many tokens can hold."""
        limit = self.cfg.max_model_len
        if len(text) > limit * tokenizer.MAX_ID_CHARS:
            raise invalid(f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                          f"{len(text)} characters (more than {limit * tokenizer.MAX_ID_CHARS} characters, which is "
                          f"the upper bound for {limit} input tokens). Please reduce the length of the input prompt.",
                          "input_text", len(text))
        ids = await self._encode(text, allow_special=allow_special, limit=limit)
        if len(ids) > limit:
            raise too_long(limit, limit + 1)
        return ids

    async def tokenize(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        if data.get("prompt") is None and data.get("messages") is None:  # vLLM reports the prompt's first
            raise RequestValidationError("give either 'prompt' (a string) or 'messages' (a list of messages)",
                                         param="body.prompt")
        req = validate(data, TokenizeRequest)
        if req.messages is None:  # vLLM counts a prompt of any length here; given both, it reads the messages
            ids = await self._encode(req.prompt, allow_special=req.add_special_tokens, limit=None)
        else:
            text = tokenizer.apply_chat_template([m.model_dump() for m in req.messages or []],
                                                 add_generation_prompt=req.add_generation_prompt)
            ids = await self._encode(text, allow_special=True, limit=None)
        strs = [tokenizer.decode([t]) for t in ids] if req.return_token_strs else None
        return web.json_response({"count": len(ids), "max_model_len": self.cfg.max_model_len, "tokens": ids,
                                  "token_strs": strs})

    async def detokenize(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        ids = data.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise RequestValidationError("tokens: must be a list of token ids", param="body.tokens")
        _no_negative(ids, "body.tokens")
        if not all(tokenizer.valid_id(t) for t in ids):  # kit-only: vLLM answers "" for an unknown id
            raise HTTPError("'tokens' must be a list of token ids from this model's vocabulary", param="tokens")
        return web.json_response({"prompt": tokenizer.decode(ids)})

    # ---------------------------------------------------------------- generation
    def _max_tokens(self, asked: int | None, prompt_len: int, default: int | None) -> int:
        """vLLM's ``get_max_tokens``: what was asked (or the default), at most what the context leaves."""
        room = self.cfg.max_model_len - prompt_len
        wanted = asked if asked is not None else default
        n = room if wanted is None else min(wanted, room)
        if n < 1:
            raise invalid(f"max_tokens must be at least 1, got {n}.", "max_tokens", n)
        return n

    async def _completion_input(self, request: web.Request) -> tuple[CompletionRequest, list[int], int]:
        data = await self._body(request)
        prompt, limit = data.get("prompt"), self.cfg.max_model_len
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, list) and len(prompt) > limit and all(isinstance(t, int) for t in prompt[:8]):
            raise too_long(limit, len(prompt))  # before validating a long list of ids
        req = validate(data, CompletionRequest)
        check_sampling(req, limit)
        p = req.prompt
        if p is None or p == "":
            raise invalid("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        if isinstance(p, list) and not p:
            raise HTTPError("You must pass at least one prompt")
        if isinstance(p, list) and isinstance(p[0], str | list):
            if len(p) != 1:  # kit-only: vLLM serves a batch of prompts in one request
                raise invalid("the simulator serves one prompt per request.", "prompt")
            p = req.prompt = p[0]
        if isinstance(p, str):
            ids = await self._prompt_ids(p, allow_special=False)
        else:
            if len(p) > limit:
                raise too_long(limit, len(p))
            _no_negative(p, "body.prompt")
            bad = [t for t in p if not tokenizer.valid_id(t)]
            if bad:
                raise HTTPError(f"Token id {bad[0]} is out of vocabulary")
            ids = list(p)
        return req, ids, self._max_tokens(req.max_tokens, len(ids), COMPLETION_MAX_TOKENS)

    async def _chat_input(self, request: web.Request) -> tuple[ChatRequest, list[int], int]:
        req = validate(await self._body(request), ChatRequest)
        check_sampling(req, self.cfg.max_model_len)
        if not req.messages:
            raise HTTPError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        text = tokenizer.apply_chat_template([m.model_dump() for m in req.messages],
                                             add_generation_prompt=req.add_generation_prompt)
        ids = await self._prompt_ids(text, allow_special=True)
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return req, ids, self._max_tokens(asked, len(ids), None)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req, ids, limit = await self._completion_input(request)
        return await self._generate(request, req, ids, limit, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req, ids, limit = await self._chat_input(request)
        return await self._generate(request, req, ids, limit, chat=True)

    def _rendered(self, req: CompletionRequest | ChatRequest, ids: list[int], limit: int, chat: bool) -> dict:
        """vLLM's render answer (a ``GenerateRequest``): what the engine would be given, without running it.
        As vLLM's, sampling parameters left at their defaults are omitted, but ``max_tokens``."""
        params: dict = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                        "temperature": 1.0 if req.temperature is None else float(req.temperature),
                        "top_p": 1.0 if req.top_p is None else float(req.top_p), "min_p": 0.0, "stop": [],
                        "stop_token_ids": [], "max_tokens": limit, "output_kind": 2, "skip_clone": True,
                        "bad_words": [], "skip_reading_prefix_cache": False}
        if req.seed is not None:
            params["seed"] = req.seed
        if req.ignore_eos:
            params["ignore_eos"] = True
        return {"request_id": _request_id(chat), "token_ids": ids, "token_offsets": None, "features": None,
                "content_parts": None, "sampling_params": params, "model": self.cfg.model, "reasoning_ended": None,
                "reasoning_parser_kwargs": None, "return_token_ids": None, "output_mode": "tokens",
                "stream": req.stream, "stream_options": req.stream_options.model_dump() if req.stream_options else None,
                "cache_salt": None, "priority": 0, "kv_transfer_params": None, "ec_transfer_params": None}

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
        return {"id": _request_id(chat),
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


def _no_negative(ids: list[int], where: str) -> None:
    """A token id below 0 does not fit vLLM's request schema (its ids are ``int >= 0``)."""
    for i, t in enumerate(ids):
        if t < 0:
            raise RequestValidationError(f"{where.removeprefix('body.')}[{i}]: must be greater than or equal to 0, "
                                         f"got {t}", param=f"{where}.{i}")


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
