"""``tokenizer`` (llm-d-inference-scheduler v0.7.0): tokenize each request once, for the precise prefix scorer.

Upstream this plugin asks a tokenizer sidecar over a Unix socket to render and tokenize the request,
writes the token ids into the cycle state and scores every endpoint 0 (it only produces data). The kit
tokenizes in process with ``kit.tokenizer``, the tokenizer the simulator itself uses, so the tokens
are exactly those the model servers compute: a completion's ``prompt`` as text, a chat request's
messages through the ChatML template with special tokens. ``udsTokenizerConfig`` is accepted and not
used. ``modelName`` is required, as upstream.

Example::

    plugins:
    - type: tokenizer
      parameters:
        modelName: Qwen/Qwen3-0.6B
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from kit import tokenizer
from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, note

STATE_KEY = "tokenizer.TokenizedPrompt"  # upstream's cycle-state key


def tokenize(req: InferenceRequest) -> list[int]:
    """The token ids a model server computes for ``req``."""
    if req.messages is not None:
        text = tokenizer.apply_chat_template([m for m in req.messages if isinstance(m, dict)])
        return tokenizer.encode(text, allow_special=True)
    return tokenizer.encode(req.prompt)


class TokenizerParams(Params):
    model_name: str = Field(alias="modelName", min_length=1, description="the model whose tokenizer is used")
    uds_tokenizer_config: dict[str, Any] | None = Field(None, alias="udsTokenizerConfig",
                                                        description="upstream's tokenizer sidecar (accepted, unused)")

    @field_validator("uds_tokenizer_config")
    @classmethod
    def _unused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            note(info, "accepted but not used: the kit tokenizes in process (kit.tokenizer)")
        return value


class TokenizerPlugin(PluginBase):
    """``tokenizer`` of llm-d-inference-scheduler v0.7.0: tokenizes the request once per cycle, in process (module
    docstring). Parameters: ``modelName`` (required), ``udsTokenizerConfig``."""

    type = "tokenizer"
    Params = TokenizerParams

    def __init__(self, name: str | None = None, params: TokenizerParams | None = None):
        super().__init__(name, params)
        self.p = params

    def score(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> dict[Endpoint, float]:
        if STATE_KEY not in state:
            state[STATE_KEY] = tokenize(req)
        return dict.fromkeys(eps, 0.0)
