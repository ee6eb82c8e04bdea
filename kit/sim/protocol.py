"""OpenAI request models (tolerant like vLLM: unknown fields are ignored) and vLLM-style errors.

Errors follow vLLM 0.32 (``vllm/entrypoints/serve/exception_handling/error_response.py``,
``vllm/exceptions.py``, ``vllm/renderers/params.py``), checked against a real server by
``tests/contract``:

* a body that does not fit the request schema (a wrong type, a missing field, not JSON, not an object) is
  answered as FastAPI's request validation: ``"type": "Bad Request"`` and ``param`` the field's path under
  ``body`` (``body.max_tokens``); the kit's message names the field in words;
* a value the schema accepts but vLLM refuses (``max_tokens`` below 1, a prompt over ``max_model_len``...) is
  a ``BadRequestError`` whose ``param`` is the parameter and whose message is vLLM's, ending
  ``(parameter=..., value=...)``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError, model_validator

from kit.config import describe
from kit.http import HTTPError, error_body, read_json

M = TypeVar("M", bound=BaseModel)


class RequestValidationError(HTTPError):
    """A body that does not fit the request schema: 400 with vLLM's (FastAPI's) ``"type": "Bad Request"``."""

    def response(self) -> web.Response:
        body = error_body(self.status, str(self), self.param)
        body["error"]["type"] = "Bad Request"
        return web.json_response(body, status=self.status)


def invalid(message: str, parameter: str | None = None, value: Any = None) -> HTTPError:
    """vLLM's ``VLLMValidationError``: a 400 ``BadRequestError`` naming the parameter, as vLLM words it."""
    extras = [f"parameter={parameter}"] if parameter is not None else []
    if value is not None:
        extras.append(f"value={value}")
    return HTTPError(f"{message} ({', '.join(extras)})" if extras else message, param=parameter)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Tolerant):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(_Tolerant):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    ignore_eos: bool = False
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    user: str | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]] | None = None
    echo: bool = False


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
    # vLLM accepts any role (its custom-role message type); the template writes it as given.
    role: str
    content: Content | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True


class TokenizeRequest(_Tolerant):
    """vLLM's ``/tokenize`` body: a prompt, or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True
    return_token_strs: bool = False


def check_sampling(req: CompletionRequest | ChatRequest, max_model_len: int) -> None:
    """What vLLM refuses in a request the schema accepts, in vLLM's order and words (before tokenizing)."""
    if req.stream_options is not None and not req.stream:
        raise invalid("Stream options can only be defined when `stream=True`.", "stream_options")
    name, limit = "max_tokens", req.max_tokens
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        name, limit = "max_completion_tokens", req.max_completion_tokens
    if limit is not None and limit > max_model_len:
        raise invalid(f"{name}={limit} cannot be greater than max_model_len={max_model_len}. Please request fewer "
                      "output tokens.", name, limit)
    if limit is not None and limit < 1:
        raise invalid(f"max_tokens must be at least 1, got {limit}.", "max_tokens", limit)
    if req.n < 1:
        raise HTTPError(f"n must be at least 1, got {req.n}.")
    if req.n > 1:  # kit-only: vLLM returns n choices; the simulator one
        raise invalid(f"the simulator returns exactly one choice; n must be 1, got {req.n}.", "n", req.n)
    if req.temperature is not None and req.temperature < 0:
        raise invalid(f"temperature must be non-negative, got {float(req.temperature)}.", "temperature",
                      float(req.temperature))
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise invalid(f"top_p must be in (0, 1], got {float(req.top_p)}.", "top_p", float(req.top_p))


def too_long(max_model_len: int, count: int) -> HTTPError:
    """vLLM's answer to a prompt longer than the model's context (``count``: its length, or ``max_model_len + 1``
    when tokenizing stopped there)."""
    qualifier = "at least " if count == max_model_len + 1 else ""
    return invalid(f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
                   f"{qualifier}{count} input tokens, which exceeds this limit even without any output tokens. "
                   "Please reduce the length of the input prompt.", "input_tokens", count)


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object a request carries; a RequestValidationError (param ``body``) for anything else."""
    try:
        data = await read_json(request)
    except HTTPError as err:
        raise RequestValidationError(str(err), err.status, "body") from None
    if not isinstance(data, dict):
        raise RequestValidationError("the request body must be a JSON object", param="body")
    return data


def validate(data: dict[str, Any], model: type[M]) -> M:
    """``data`` as ``model``; a RequestValidationError naming every bad field (``param``: the first, under
    ``body``). A bad chat content part is a BadRequestError with no param, as vLLM answers it."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        message = "; ".join(describe(err))
        if "content" in first and first.index("content") < len(first) - 1:
            raise HTTPError(message) from None
        path = [str(p) for p in first if not (isinstance(p, str) and _union_member(p))]
        raise RequestValidationError(message, param=".".join(["body", *path])) from None


def _union_member(part: str) -> bool:
    """A location part naming which type of a union failed (``str``, ``list[int]``), not a field."""
    return not part.isidentifier() or part in {"str", "int", "float", "bool", "list", "dict"}

