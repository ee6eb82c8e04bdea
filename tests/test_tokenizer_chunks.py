"""Long text is tokenized in cached chunks cut where a piece must start: the ids are exactly those of
tokenizing it whole."""

import itertools
import random

from kit import tokenizer


def whole(text: str) -> list[int]:
    return list(itertools.chain.from_iterable(map(tokenizer._piece_ids, tokenizer._PIECE_RE.findall(text))))


def test_chunked_encoding_equals_whole_encoding_on_random_text():
    rng = random.Random(0)
    alphabet = "ab Z9 ,.\n\t  é!?-_xyz"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3000)))
        assert tokenizer.encode(text) == whole(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_a_shared_prefix_is_split_the_same_way_whatever_follows():
    system = " ".join(f"word{i % 37} and more" for i in range(400))
    a, b = tokenizer.encode(system + " first question?"), tokenizer.encode(system + " another one!")
    n = len(tokenizer.encode(system))
    assert a[: n - 1] == b[: n - 1] == tokenizer.encode(system)[: n - 1]
