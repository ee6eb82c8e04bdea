"""A deterministic, reversible tokenizer that needs no download, and a ChatML chat template.

Shared by the simulator (what the simulated model reads) and the endpoint picker (the precise prefix
scorer tokenizes requests in process, as upstream tokenizes with the model's tokenizer), so it lives
below both. It imports nothing of the kit.

Text is split GPT-style into pieces (an optional leading space plus a word, a digit, a run of
punctuation, or whitespace). Each ASCII piece is cut into chunks of up to four characters and each
chunk is packed into one integer id, so English text averages close to the four characters per
token that the endpoint picker assumes. Bytes outside ASCII become one token each. Decoding packs
the ids back into bytes, so ``decode(encode(text)) == text`` for any string.

Id layout (all ids fit in a signed 32-bit int):

* ``0 .. 127``                    one ASCII character
* ``151643 .. 151645``            special tokens (the Qwen ids: end-of-text, im_start, im_end)
* ``(n-1) << 28 | packed``        an ASCII chunk of n = 2..4 characters, 7 bits each
* ``BYTE_BASE + b``               one raw byte of a non-ASCII character
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Sequence

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
SPECIAL = {"<|endoftext|>": ENDOFTEXT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
SPECIAL_TEXT = {v: k for k, v in SPECIAL.items()}
BYTE_BASE = 1 << 30

MAX_ID_CHARS = max(len(s) for s in SPECIAL)  # the most characters one id stands for
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL) + ")")
_PIECE_RE = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _pack(piece: str) -> tuple[int, ...]:
    """The ids of one piece: ASCII in chunks of up to four characters, other text byte by byte."""
    if not piece.isascii():
        return tuple(BYTE_BASE + b for b in piece.encode("utf-8"))
    out = []
    for start in range(0, len(piece), 4):
        chunk = piece[start : start + 4]
        packed = 0
        for i, ch in enumerate(chunk):
            packed |= ord(ch) << (7 * i)
        out.append(((len(chunk) - 1) << 28) | packed if len(chunk) > 1 else packed)
    return tuple(out)


_pack_word = functools.lru_cache(maxsize=1 << 16)(_pack)  # text repeats its words


def _piece_ids(piece: str) -> tuple[int, ...]:
    """A piece's ids, memoised for words (a prompt is tokenized by the server and, for precise prefix
    routing, by the picker too); a long run without spaces is packed without being remembered."""
    return _pack_word(piece) if len(piece) <= 64 else _pack(piece)


# A space between a non-space and a letter always starts a piece (" word"), so text split there encodes
# to the concatenation of its halves; long text is encoded in chunks cut at such places, and a chunk seen
# before (a shared system prompt, sent again and again) is not split into pieces again.
_SAFE_CUT = re.compile(r"(?<=\S) (?=[A-Za-z])")
_CHUNK = 256


@functools.lru_cache(maxsize=1 << 14)
def _chunk_ids(chunk: str) -> tuple[int, ...]:
    return tuple(itertools.chain.from_iterable(map(_piece_ids, _PIECE_RE.findall(chunk))))


def _encode_text(text: str, out: list[int]) -> None:
    if len(text) <= 2 * _CHUNK:
        out.extend(_chunk_ids(text))
        return
    start = 0
    while (cut := _SAFE_CUT.search(text, start + _CHUNK)) is not None:
        out.extend(_chunk_ids(text[start : cut.start()]))
        start = cut.start()
    out.extend(_chunk_ids(text[start:]))


def encode(text: str, *, allow_special: bool = False, limit: int | None = None) -> list[int]:
    """Token ids for ``text``; with ``allow_special`` the ChatML markers become single tokens.

    With ``limit``, return at most ``limit + 1`` ids: enough to tell that a text is too long, at a
    cost bounded by the limit rather than by the text. An id covers one UTF-8 byte of a character
    outside ASCII, up to four ASCII characters, or one special marker (at most ``MAX_ID_CHARS``
    characters), so the count lies between the text's length / ``MAX_ID_CHARS`` and its UTF-8 length,
    and the first ``limit + 1`` ids come from the text's first ``MAX_ID_CHARS × (limit + 1)``
    characters (the slack covers the one piece the cut shortens).
    """
    out: list[int] = []
    if limit is not None:
        text = text[: MAX_ID_CHARS * (limit + 1) + 8]  # all the first limit + 1 ids can come from
    parts = _SPECIAL_RE.split(text) if allow_special else [text]
    for part in parts:
        if allow_special and part in SPECIAL:
            out.append(SPECIAL[part])
            continue
        _encode_text(part, out)
    if limit is not None:
        del out[limit + 1 :]
    return out


@functools.lru_cache(maxsize=1 << 16)
def _id_bytes(tid: int) -> bytes:
    if tid in SPECIAL_TEXT:
        return SPECIAL_TEXT[tid].encode()
    if tid >= BYTE_BASE:
        if tid - BYTE_BASE > 255:
            raise ValueError(f"token id {tid} is out of range")
        return bytes([tid - BYTE_BASE])
    if tid < 0:
        raise ValueError(f"token id {tid} is negative")
    if tid < 128:
        return bytes([tid])
    n = (tid >> 28) + 1
    if n < 2 or n > 4:
        raise ValueError(f"token id {tid} is not in the vocabulary")
    packed = tid & ((1 << 28) - 1)
    return bytes((packed >> (7 * i)) & 0x7F for i in range(n))


def decode(ids: Iterable[int]) -> str:
    """Text for token ids; raises ValueError for an id outside the vocabulary."""
    return b"".join(_id_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")


def valid_id(tid: int) -> bool:
    """Whether ``tid`` decodes."""
    try:
        _id_bytes(tid)
    except ValueError:
        return False
    return True


def apply_chat_template(messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
    """Render chat messages as ChatML (Qwen's format), so a shared system prompt is a shared prefix."""
    parts = []
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p["text"] for p in content
                              if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
        parts.append(f"<|im_start|>{m.get('role', 'user')}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# Output vocabulary for generated text: each word with its leading space is one token.
_WORDS = (
    "the", "cat", "sat", "on", "a", "mat", "and", "ran", "to", "see", "why", "our", "map", "of",
    "old", "hot", "sun", "had", "one", "red", "box", "but", "not", "the", "big", "owl", "who",
    "can", "fly", "far", "as", "we", "go", "by", "its", "new", "way", "so", "all", "may", "win",
    "yet", "few", "do", "it", "at", "sea", "or", "in", "air", "now",
)
OUTPUT_TOKENS: tuple[int, ...] = tuple(encode(" " + w)[0] for w in _WORDS)
