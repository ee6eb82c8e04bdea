"""OpenAI request models (tolerant like vLLM: unknown fields are ignored) and vLLM-style errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from kit.config import describe, dotted
from kit.http import HTTPError, read_json

M = TypeVar("M", bound=BaseModel)


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


class ContentPart(_Tolerant):
    """One OpenAI content part; the simulator reads the text of ``text`` parts and ignores the others."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("text: a part of type 'text' needs a 'text' string")
        return self


def _content_kind(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "parts" if isinstance(value, list) else None


# A message's content: text, or a list of parts (tagged, so an error names the one shape that applies).
Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentPart], Tag("parts")],
    Discriminator(_content_kind, custom_error_type="content",
                  custom_error_message="content must be a string or a list of content parts"),
]


class ChatMessage(_Tolerant):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True


class TokenizeRequest(_Tolerant):
    """vLLM's ``/tokenize`` body: a prompt, or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' (a string) or 'messages' (a list of messages)")
        return self


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object a request carries; HTTPError for anything else."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise HTTPError("the request body must be a JSON object")
    return data


def validate(data: dict[str, Any], model: type[M]) -> M:
    """``data`` as ``model``; HTTPError naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        raise HTTPError("; ".join(describe(err)), param=dotted(first) or None) from None
