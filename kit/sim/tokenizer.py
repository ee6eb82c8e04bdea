"""A deterministic, reversible tokenizer that needs no download, and a ChatML chat template.

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
import re
from collections.abc import Iterable, Sequence

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
SPECIAL = {"<|endoftext|>": ENDOFTEXT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
SPECIAL_TEXT = {v: k for k, v in SPECIAL.items()}
BYTE_BASE = 1 << 30

MAX_ID_CHARS = max(len(s) for s in SPECIAL)  # the most characters one id stands for
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL) + ")")
_PIECE_RE = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


@functools.lru_cache(maxsize=1 << 16)
def _piece_ids(piece: str) -> tuple[int, ...]:
    """A short piece's ids, remembered: real text repeats its words, so most pieces are looked up, not packed."""
    out: list[int] = []
    _encode_piece(piece, out, len(piece.encode("utf-8")))
    return tuple(out)


def _encode_piece(piece: str, out: list[int], room: int) -> None:
    """Append the ids of ``piece``, at most ``room`` of them (each id holds at most four characters
    or one byte, so only the piece's start is looked at when room is short)."""
    if piece.isascii():
        for start in range(0, min(len(piece), 4 * room), 4):
            chunk = piece[start : start + 4]
            packed = 0
            for i, ch in enumerate(chunk):
                packed |= ord(ch) << (7 * i)
            out.append(((len(chunk) - 1) << 28) | packed if len(chunk) > 1 else packed)
    else:
        out.extend(BYTE_BASE + b for b in piece[:room].encode("utf-8")[:room])


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
    if limit is None:
        cap = 4 * len(text) + 1  # more ids than the text can make
    else:
        cap = limit + 1
        text = text[: MAX_ID_CHARS * cap + 8]
    pos = 0
    markers = _SPECIAL_RE.finditer(text) if allow_special else iter(())
    while len(out) < cap:
        marker = next(markers, None)
        end = marker.start() if marker else len(text)
        for piece in _PIECE_RE.finditer(text, pos, end):
            p, room = piece.group(), cap - len(out)
            if len(p) <= 32 and room >= 32:  # a word: remembered
                out += _piece_ids(p)
            else:
                _encode_piece(p, out, room)
            if len(out) >= cap:
                return out
        if marker is None:
            break
        out.append(SPECIAL[marker.group()])
        pos = marker.end()
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
