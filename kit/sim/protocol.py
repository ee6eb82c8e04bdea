"""OpenAI request models (tolerant like vLLM: unknown fields are ignored) and vLLM-style errors."""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kit.config import describe, dotted
from kit.http import HTTPError


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Tolerant):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(_Tolerant):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    ignore_eos: bool = False
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> _Common:
        if self.n != 1:
            raise ValueError("n: the simulator returns exactly one choice (n must be 1)")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise ValueError("prompt: the simulator serves one prompt per request")
            self.prompt = p[0]
        if not self.prompt:
            raise ValueError("prompt: must not be empty")
        return self


class ChatMessage(_Tolerant):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body into ``model``; raise HTTPError for anything malformed."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        raise HTTPError("; ".join(describe(err)), param=dotted(first) or None) from None
