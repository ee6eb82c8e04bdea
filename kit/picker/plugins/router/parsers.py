"""Request parsers of llm-d-router v0.10.0 (``requesthandling/parsers``): how the EPP reads a request's body.

The config's ``requestHandler.parsers`` lists parser plugins in order; when it lists none the loader adds
``openai-parser``, ``anthropic-parser`` and ``vllmhttp-parser``. A request goes to the first parser that
claims a suffix of its path (``chat/completions`` claims ``/v1/chat/completions``); a parser that claims no
path (``passthrough-parser``) takes every request no earlier parser claimed, and parsers listed after it are
never used; a second parser of the same type is skipped. A path no parser claims is refused. None of them
reads parameters (any given are ignored, as upstream ignores them).

* ``openai-parser``: the OpenAI API (``chat/completions``, ``completions``, ``embeddings``, ``responses``,
  ``conversations``, both ``/render`` paths, ``images/generations``): the prompt, or the chat messages, as the
  kit's gateway reads them (``InferenceRequest.from_body``).
* ``anthropic-parser``: ``messages`` and ``messages/count_tokens``: the system prompt and messages, read as a
  chat (text content only).
* ``vllmhttp-parser``: ``inference/v1/generate``: pre-tokenized ``token_ids`` (required) become the request's
  tokens.
* ``passthrough-parser``: reads nothing; the request has no prompt, so prefix-aware plugins have nothing to
  match and load-based ones decide.
* ``vllmgrpc-parser`` and ``vertexai-parser`` claim gRPC methods (``vllm.grpc.engine.VllmEngine/Generate`` and
  ``/Embed``; ``PredictionService/ChatCompletions``, ``/RawPredict``, ``/StreamRawPredict``), which the kit's
  HTTP gateway does not serve: they only take part in choosing the parser.

Example::

    plugins:
    - type: passthrough-parser
    requestHandler:
      parsers:
      - pluginRef: passthrough-parser
"""

from __future__ import annotations

import json
from typing import Any

from kit.picker.framework import InferenceRequest, PluginBase

DEFAULT_PARSERS = ("openai-parser", "anthropic-parser", "vllmhttp-parser")


def matches(path: str, suffix: str) -> bool:
    """Upstream's ``MatchPathSuffix``: the path (trailing ``/`` dropped) ends with the suffix (``/``-trimmed)."""
    return path.strip().removesuffix("/").endswith(suffix.strip().strip("/"))


class Parser(PluginBase):
    paths: tuple[str, ...] = ()

    def parse(self, path: str, body: Any, model: str, headers: dict[str, str], priority: int,
              request_id: str) -> InferenceRequest:
        raise ValueError(f"{self.type}: the kit's gateway serves HTTP/JSON only; {path} is not parsed")


class OpenAIParser(Parser):
    """``openai-parser`` of llm-d-router v0.10.0: the OpenAI API's bodies (module docstring). No parameters."""

    type = "openai-parser"
    paths = ("chat/completions", "completions", "embeddings", "responses", "conversations",
             "chat/completions/render", "completions/render", "images/generations")

    def parse(self, path: str, body: Any, model: str, headers: dict[str, str], priority: int,
              request_id: str) -> InferenceRequest:
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        req = InferenceRequest.from_body(body, model, headers=headers, priority=priority, request_id=request_id)
        req.path = path
        return req


class AnthropicParser(Parser):
    """``anthropic-parser`` of llm-d-router v0.10.0: Anthropic Messages bodies, read as a chat (module docstring).
    No parameters."""

    type = "anthropic-parser"
    paths = ("messages", "messages/count_tokens")

    def parse(self, path: str, body: Any, model: str, headers: dict[str, str], priority: int,
              request_id: str) -> InferenceRequest:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ValueError("invalid messages request: must have a messages list")
        messages: list[dict[str, Any]] = []
        system = body.get("system")
        if isinstance(system, list):
            system = "".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text"
                             and not str(b.get("text", "")).startswith("x-anthropic-billing-header"))
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        messages += [m for m in body["messages"] if isinstance(m, dict)]
        text = json.dumps(messages, separators=(",", ":"), ensure_ascii=False)
        salt = body.get("cache_salt")
        return InferenceRequest(body.get("model") or model, text, headers, priority, request_id,
                                salt if isinstance(salt, str) else "", messages, None, body, path)


class VllmHTTPParser(Parser):
    """``vllmhttp-parser`` of llm-d-router v0.10.0: vLLM's ``/inference/v1/generate`` (token ids in). No
    parameters."""

    type = "vllmhttp-parser"
    paths = ("inference/v1/generate",)

    def parse(self, path: str, body: Any, model: str, headers: dict[str, str], priority: int,
              request_id: str) -> InferenceRequest:
        ids = body.get("token_ids") if isinstance(body, dict) else None
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids)):
            raise ValueError("invalid generate request: must have non-empty token_ids field")
        return InferenceRequest(body.get("model") or model, "", headers, priority, request_id, "", None, list(ids),
                                body, path)


class PassthroughParser(Parser):
    """``passthrough-parser`` of llm-d-router v0.10.0: claims every path no earlier parser claimed and reads
    nothing of the body. No parameters."""

    type = "passthrough-parser"

    def parse(self, path: str, body: Any, model: str, headers: dict[str, str], priority: int,
              request_id: str) -> InferenceRequest:
        return InferenceRequest(model, "", headers, priority, request_id, "", None, None, None, path)


class VllmGRPCParser(Parser):
    """``vllmgrpc-parser`` of llm-d-router v0.10.0: vLLM's gRPC API (not served by the kit's gateway)."""

    type = "vllmgrpc-parser"
    paths = ("vllm.grpc.engine.VllmEngine/Generate", "vllm.grpc.engine.VllmEngine/Embed")


class VertexAIParser(Parser):
    """``vertexai-parser`` of llm-d-router v0.10.0: Vertex AI's gRPC API (not served by the kit's gateway)."""

    type = "vertexai-parser"
    paths = ("PredictionService/ChatCompletions", "PredictionService/StreamRawPredict", "PredictionService/RawPredict")


class Parsers:
    """The parser registry built from ``requestHandler.parsers`` (upstream's ``ParserRegistry``)."""

    def __init__(self, parsers: list[Parser]):
        self.entries: list[Parser] = []
        self.fallback: Parser | None = None
        self.skipped: list[str] = []
        seen: set[str] = set()
        for i, p in enumerate(parsers):
            if p.type in seen:
                self.skipped.append(f"{p.name}: a {p.type} is listed already")
                continue
            seen.add(p.type)
            if not p.paths:
                self.fallback = p
                self.skipped += [f"{q.name}: listed after the fallback parser {p.name}" for q in parsers[i + 1:]]
                break
            self.entries.append(p)

    def resolve(self, path: str) -> Parser:
        for p in self.entries:
            if any(matches(path, suffix) for suffix in p.paths):
                return p
        if self.fallback is not None:
            return self.fallback
        raise ValueError(f"no parser registered matching path suffix for: {path}")
