"""``token-producer`` (llm-d-router v0.10.0; deprecated alias ``tokenizer``): the prompt's tokens, once per request.

Upstream's package ``requestcontrol/dataproducer/tokenizer``. The producer writes the request's token ids
(``InferenceRequest.tokens``, upstream's ``TokenizedPrompt``) for the producers that hash tokens (the
approximate and precise prefix producers, the in-flight load producer). A request whose tokens are already
set is skipped. One backend, chosen by the parameters:

* ``vllm`` (selected by ``vllm`` or ``modelName``): the model server's render endpoint, so the tokens are the
  served model's. ``POST {url}/v1/completions/render`` with the request body and ``model`` set to
  ``modelName`` (the answer is a list whose items carry ``token_ids``; the first prompt's are used) or, for a
  chat, ``POST {url}/v1/chat/completions/render`` (an object with ``token_ids``). ``url`` defaults to
  ``http://localhost:8000``; ``timeout`` (``5s``) bounds a text request, ``mmTimeout`` (``30s``) one whose
  messages carry content parts. The picker opens no connection itself: the render is an ``async`` method
  that its caller awaits with a ``post`` (the gateway's own HTTP client; ``Scheduler.produce``), before
  scheduling. A failure (timeout, HTTP error, unreadable answer) leaves the tokens unset, is counted and
  logged (at most once every 10 seconds), and scheduling goes on, as upstream logs and continues.
* ``estimate`` (also what an unconfigured, auto-created producer uses): no tokenizer. The request's bytes
  are packed four to a pseudo-token (little-endian, zero-padded): a completion's prompt; for a chat, the
  tools as JSON, then each message's role and text, with each image, video or audio part folded in as a run
  of placeholder pseudo-tokens (its content hash, aligned to a token boundary; images count
  width × height / 1024 tokens, 640×360 when the size cannot be read from a base64 PNG, GIF or JPEG; videos
  frames × tokens per frame, from the ``x-llm-d-video-*`` headers or the ``estimate.video`` settings).
  Pre-tokenized prompts pass through. The pseudo-tokens never match a model server's blocks: they serve
  content locality only (the approximate prefix producer).
* ``udsTokenizerConfig`` (deprecated: a tokenizer sidecar over a Unix socket): v0.10.0 selects it by its
  ``socketFile``, requires ``modelName`` with it, and refuses ``modelName`` beside it (``modelName`` selects the
  render backend, and only one backend may be set), so a config that sets it is refused, as the EPP refuses
  it. The section's other contents are not checked (llm-d-kv-cache v0.9.0's ``UdsTokenizerConfig`` was not
  available to read).

Only one of ``vllm``/``modelName``, ``estimate`` and ``udsTokenizerConfig`` may be set; the render backend
needs ``modelName``. **Kit-only** limits: a completion whose prompt is a list of several strings is
not tokenized (upstream keeps one token list per prompt); multimodal features from the render answer are not
kept.

Example::

    plugins:
    - type: token-producer
      parameters:
        modelName: Qwen/Qwen3-0.6B
        vllm:
          url: http://127.0.0.1:8001
          timeout: 5s
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
from typing import Any, Literal

import xxhash
from pydantic import Field, field_validator, model_validator

from kit import tokenizer
from kit.picker.framework import CycleState, Endpoint, InferenceRequest, Params, PluginBase, Post, parse_duration
from kit.picker.plugins.router.data import TOKENIZED_PROMPT, key

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT, DEFAULT_MM_TIMEOUT = 5.0, 30.0
COMPLETIONS_RENDER, CHAT_RENDER = "/v1/completions/render", "/v1/chat/completions/render"
BYTES_PER_TOKEN = 4
LOG_EVERY = 10.0  # seconds between two logged render failures
VIDEO_HEADERS = ("x-llm-d-video-fps", "x-llm-d-video-duration-seconds", "x-llm-d-video-resolution")


class VLLMParams(Params):
    url: str = Field("", description="base URL of the render endpoint; empty means http://localhost:8000 (or "
                                     "the gateway's --render-url)")
    timeout: str = Field("", description="per-request timeout for text requests, a Go duration; empty means 5s")
    mm_timeout: str = Field("", alias="mmTimeout", description="per-request timeout when messages carry content "
                                                              "parts, a Go duration; empty means 30s")

    @field_validator("timeout", "mm_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        if value:
            parse_duration(value)
        return value


class Resolution(Params):
    width: int = Field(0, description="pixels")
    height: int = Field(0, description="pixels")


class StaticImage(Params):
    static_token: int = Field(0, alias="staticToken", description="placeholder tokens per image")


class Factor(Params):
    factor: int = Field(0, description="pixels per placeholder token (1024 when 0)")


class ImageEstimate(Params):
    mode: Literal["", "dynamic", "static"] = Field("", description="dynamic (width × height / factor) or static")
    default_resolution: Resolution | None = Field(None, alias="defaultResolution",
                                                  description="when an image's size cannot be read (640×360)")
    static: StaticImage | None = Field(None, description="static mode's count")
    dynamic: Factor | None = Field(None, description="dynamic mode's factor")


class StaticFrame(Params):
    num_tokens_per_frame: int = Field(0, alias="numTokensPerFrame", description="placeholder tokens per frame")


class TokensPerFrame(Params):
    mode: Literal["", "dynamic", "static"] = Field("", description="dynamic (width × height / factor) or static")
    static: StaticFrame | None = Field(None, description="static mode's count")
    dynamic: Factor | None = Field(None, description="dynamic mode's factor")


class Sampled(Params):
    sample_fps: float = Field(0.0, alias="sampleFPS", description="frames sampled per second (2 when 0)")
    temporal_patch_size: int = Field(0, alias="temporalPatchSize", description="frames merged into one group")


class Strided(Params):
    default_source_fps: float = Field(0.0, alias="defaultSourceFPS", description="source frame rate (24 when 0)")
    frame_stride: int = Field(0, alias="frameStride", description="keep every Nth frame")


class Frames(Params):
    mode: Literal["", "sampled", "strided"] = Field("", description="sampled or strided frame counting")
    min_frames: int = Field(0, alias="minFrames", description="floor on the frame count (0: none)")
    max_frames: int = Field(0, alias="maxFrames", description="cap on the frame count (0: none)")
    sampled: Sampled | None = Field(None, description="sampled mode's settings")
    strided: Strided | None = Field(None, description="strided mode's settings")


class VideoEstimate(Params):
    default_resolution: Resolution | None = Field(None, alias="defaultResolution", description="frame size (640×360)")
    default_duration: float = Field(0.0, alias="defaultDuration", description="seconds (10 when 0)")
    tokens_per_frame: TokensPerFrame | None = Field(None, alias="tokensPerFrame", description="per-frame count")
    frames: Frames | None = Field(None, description="how frames are counted")
    max_video_tokens: int = Field(0, alias="maxVideoTokens", description="cap on a video's tokens (0: none)")


class EstimateParams(Params):
    image: ImageEstimate | None = Field(None, description="image placeholder estimation")
    video: VideoEstimate | None = Field(None, description="video placeholder estimation")


class TokenProducerParams(Params):
    model_name: str = Field("", alias="modelName", description="the served model's base name (the render "
                                                               "endpoint's `model`); required by vllm and uds")
    vllm: VLLMParams | None = Field(None, description="the model server's render endpoint backend")
    estimate: EstimateParams | None = Field(None, description="the tokenizer-free byte-packing backend (the "
                                                              "default when no backend is set)")
    uds_tokenizer_config: dict[str, Any] | None = Field(
        None, alias="udsTokenizerConfig", description="deprecated: a tokenizer sidecar over a Unix socket (refused "
                                                      "beside modelName, which it needs)")

    @model_validator(mode="after")
    def _one_backend(self) -> TokenProducerParams:
        uds = bool(self.uds_tokenizer_config and self.uds_tokenizer_config.get("socketFile"))
        vllm = self.vllm is not None or bool(self.model_name)
        if (self.estimate is not None and (uds or vllm)) or (uds and vllm):
            raise ValueError("only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set")
        if (uds or vllm) and not self.model_name:
            raise ValueError("modelName: must be specified for the vllm and udsTokenizerConfig backends")
        return self

    @property
    def backend(self) -> str:
        return "vllm" if self.vllm is not None or self.model_name else "estimate"


# ------------------------------------------------------------------------------------------ estimate
def go_json(value: Any) -> bytes:
    """``value`` as Go's ``json.Marshal`` writes a decoded JSON value: compact, map keys sorted, ``<``, ``>``
    and ``&`` escaped (the estimate backend folds a chat's tools in this form)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def align(raw: bytearray) -> None:
    """Zero-pad ``raw`` to a whole number of pseudo-tokens."""
    raw.extend(b"\0" * (-len(raw) % BYTES_PER_TOKEN))


def pack(raw: bytes | bytearray) -> list[int]:
    """Bytes as little-endian uint32 pseudo-tokens (the tail zero-padded)."""
    if not raw:
        return []
    data = bytes(raw) + b"\0" * (-len(raw) % BYTES_PER_TOKEN)
    return list(struct.unpack(f"<{len(data) // BYTES_PER_TOKEN}I", data))


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height of a base64 PNG, GIF or JPEG data URL, or None."""
    if not url.startswith("data:image/") or "base64," not in url:
        return None
    try:
        data = base64.b64decode(url.split("base64,", 1)[1][:65536], validate=False)
    except ValueError:
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"\xff\xd8":
        i, w, h = 2, 0, 0
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                break
            i += 2 + length
    else:
        return None
    return (w, h) if w > 0 and h > 0 else None


class Estimator:
    """Placeholder counts for multimodal parts (upstream's image and video estimators)."""

    def __init__(self, p: EstimateParams | None):
        self.img = (p.image if p else None) or ImageEstimate()
        self.vid = (p.video if p else None) or VideoEstimate()

    def image(self, url: str) -> int:
        img = self.img
        if img.mode == "static":
            return img.static.static_token if img.static and img.static.static_token > 0 else 1
        res = img.default_resolution or Resolution()
        w, h = res.width if res.width > 0 else 640, res.height if res.height > 0 else 360
        w, h = image_size(url) or (w, h)
        factor = img.dynamic.factor if img.dynamic and img.dynamic.factor > 0 else 1024
        return max(w * h // factor, 1)

    def video(self, headers: dict[str, str]) -> int:
        v, lower = self.vid, {k.lower(): val for k, val in headers.items()}
        fps = _positive(lower.get(VIDEO_HEADERS[0]))
        duration = _positive(lower.get(VIDEO_HEADERS[1])) or v.default_duration or 10.0
        size = lower.get(VIDEO_HEADERS[2], "")
        width = height = 0
        if "x" in size.lower():
            a, _, b = size.lower().partition("x")
            if a.strip().isdigit() and b.strip().isdigit():
                width, height = int(a), int(b)
        frames = v.frames or Frames()
        if frames.mode == "strided":
            st = frames.strided or Strided()
            n = int(duration * (fps or st.default_source_fps or 24.0)) // max(st.frame_stride, 1)
        else:
            sm = frames.sampled or Sampled()
            n = int(duration * (sm.sample_fps or 2.0))
        if frames.min_frames > 0:
            n = max(n, frames.min_frames)
        if frames.max_frames > 0:
            n = min(n, frames.max_frames)
        if frames.mode != "strided" and frames.sampled and frames.sampled.temporal_patch_size > 1:
            n //= frames.sampled.temporal_patch_size
        tpf = v.tokens_per_frame or TokensPerFrame()
        if tpf.mode == "static":
            per = tpf.static.num_tokens_per_frame if tpf.static and tpf.static.num_tokens_per_frame > 0 else 1
        else:
            res = v.default_resolution or Resolution()
            w, h = (width, height) if width > 0 and height > 0 else (res.width, res.height)
            factor = tpf.dynamic.factor if tpf.dynamic and tpf.dynamic.factor > 0 else 1024
            per = max((w if w > 0 else 640) * (h if h > 0 else 360) // factor, 1)
        tokens = n * per
        if v.max_video_tokens > 0:
            tokens = min(tokens, v.max_video_tokens)
        return max(tokens, 1)


def _positive(value: str | None) -> float:
    try:
        f = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return f if f > 0 and math.isfinite(f) else 0.0


def _asset(out: bytearray, content: str, count: int) -> None:
    align(out)
    token = struct.pack("<I", xxhash.xxh64_intdigest(content.encode()) & 0xFFFFFFFF)
    out.extend(token * count)


def estimate(req: InferenceRequest, est: Estimator) -> list[int] | None:
    """The estimate backend's pseudo-tokens for ``req`` (None: not a request it handles, or several prompts)."""
    body = req.body or {}
    if req.messages is not None:
        out = bytearray()
        if body.get("tools"):
            out += go_json(body["tools"])
        for msg in req.messages:
            if not isinstance(msg, dict):
                continue
            role, content = msg.get("role"), msg.get("content")
            if isinstance(role, str):
                out += role.encode()
            if isinstance(content, str):
                out += content.encode()
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        _part(out, part, est, req.headers)
        return pack(out)
    prompt = body.get("prompt", req.prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)  # pre-tokenized: passed through
        strings = [s for s in prompt if isinstance(s, str)]
        if len(strings) != 1:
            return None
        prompt = strings[0]
    return pack(prompt.encode()) if isinstance(prompt, str) else None


def _part(out: bytearray, part: dict, est: Estimator, headers: dict[str, str]) -> None:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        out += part["text"].encode()
    elif kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "") if isinstance(part.get("image_url"), dict) else ""
        _asset(out, url, est.image(url))
    elif kind == "video_url":
        url = (part.get("video_url") or {}).get("url", "") if isinstance(part.get("video_url"), dict) else ""
        _asset(out, url, est.video(headers))
    elif kind in ("input_audio", "audio_url"):
        audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
        data = f"{audio.get('data', '')}{audio.get('format', '')}"
        _asset(out, data, max(-(-len(data) // BYTES_PER_TOKEN), 1))


def kit_tokens(req: InferenceRequest) -> list[int] | None:
    """The tokens ``kit.tokenizer`` gives the request (the simulator's own tokenizer: the kit's stand-in for a
    tokenizer pool)."""
    if req.messages is not None:
        text = tokenizer.apply_chat_template([m for m in req.messages if isinstance(m, dict)])
        return tokenizer.encode(text, allow_special=True)
    prompt = (req.body or {}).get("prompt", req.prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return tokenizer.encode(prompt) if isinstance(prompt, str) else None


# ------------------------------------------------------------------------------------------ the plugin
class TokenProducer(PluginBase):
    """``token-producer`` of llm-d-router v0.10.0 (the ``tokenizer`` type is its deprecated alias, removal planned
    for v0.11): the request's token ids, from the model server's render endpoint or the tokenizer-free estimate.
    Parameters: ``modelName``, ``vllm`` (``url``, ``timeout``,
    ``mmTimeout``), ``estimate`` (``image``, ``video``), ``udsTokenizerConfig`` (deprecated)."""

    type = "token-producer"
    Params = TokenProducerParams

    def __init__(self, name: str | None = None, params: TokenProducerParams | None = None):
        super().__init__(name, params)
        self.p = params or TokenProducerParams()
        self.backend = self.p.backend
        v = self.p.vllm or VLLMParams()
        self.url = v.url.rstrip("/")  # empty: the default (or the gateway's --render-url)
        self.timeout = parse_duration(v.timeout) if v.timeout else DEFAULT_TIMEOUT
        self.mm_timeout = parse_duration(v.mm_timeout) if v.mm_timeout else DEFAULT_MM_TIMEOUT
        self.estimator = Estimator(self.p.estimate)
        self.failures = 0
        self._last_log = -math.inf
        self._dropped = 0

    def data_produced(self) -> set[str]:
        return {key(TOKENIZED_PROMPT, self.name)}

    def data_consumed(self) -> tuple[set[str], set[str]]:
        return set(), set()

    @property
    def renders(self) -> bool:
        """Whether the tokens come over HTTP (the caller must await ``produce`` before scheduling)."""
        return self.backend == "vllm"

    def render_url(self, default: str = "") -> str:
        """Where render requests go: ``vllm.url``, else ``default`` (the gateway's --render-url), else upstream's
        default ``http://localhost:8000``."""
        return self.url or default.rstrip("/") or DEFAULT_URL

    async def produce(self, req: InferenceRequest, post: Post, default_url: str = "") -> bool:
        """The render backend: ask the model server for ``req``'s tokens (nothing if they are set already). False
        when the render failed (counted and logged; the request goes on without tokens)."""
        if not self.renders or req.tokens is not None:
            return True
        body = dict(req.body or ({"prompt": req.prompt} if req.messages is None else {"messages": req.messages}))
        body["model"] = self.p.model_name
        base = self.render_url(default_url)
        try:
            if req.messages is not None:
                timeout = self.mm_timeout if _has_parts(req.messages) else self.timeout
                answer = await post(base + CHAT_RENDER, body, timeout)
                ids = answer.get("token_ids") if isinstance(answer, dict) else None
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                    req.tokens = list(prompt)  # pre-tokenized: no render needed
                    return True
                answer = await post(base + COMPLETIONS_RENDER, body, self.timeout)
                if isinstance(answer, list) and len(answer) > 1:
                    return True  # several prompts: not tokenized by the kit (see the module docstring)
                ids = answer[0].get("token_ids") if isinstance(answer, list) and answer and \
                    isinstance(answer[0], dict) else None
            if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
                raise ValueError(f"the answer has no token_ids list: {str(answer)[:200]}")
            if ids:
                req.tokens = ids
            return True
        except Exception as err:  # upstream logs and continues: scheduling goes on without tokens
            self._failed(base, err)
            return False

    def _failed(self, base: str, err: Exception) -> None:
        self.failures += 1
        now = self.clock()
        if now - self._last_log >= LOG_EVERY:
            more = f" ({self._dropped} more since the last message)" if self._dropped else ""
            log.warning("%s: rendering at %s failed, the request is scheduled without tokens: %s%s",
                        self.name, base, err or type(err).__name__, more)
            self._last_log, self._dropped = now, 0
        else:
            self._dropped += 1

    def prepare_request_data(self, state: CycleState, req: InferenceRequest, eps: list[Endpoint]) -> None:
        """The estimate backend, at the start of the cycle."""
        if req.tokens is not None or self.backend != "estimate":
            return
        tokens = estimate(req, self.estimator)
        if tokens:
            req.tokens = tokens

    def gauges(self) -> dict[str, float]:
        return {"kit_token_producer_render_failures": float(self.failures)} if self.renders else {}


class LegacyTokenizer(TokenProducer):
    """``tokenizer``: llm-d-router v0.10.0's deprecated name of ``token-producer`` (deprecated in v0.9.0, removal
    planned for v0.11.0); the same plugin with the same parameters."""

    type = "tokenizer"


def _has_parts(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and isinstance(m.get("content"), list) and m["content"] for m in messages)
