import pytest

from kit import tokenizer as tok


@pytest.mark.parametrize("text", [
    "Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "numbers 12345 and 3.14",
    "unicode: naïve café 東京 🚀", "", "<|im_start|>not special here", "a" * 1000,
], ids=["plain", "spaces", "whitespace", "digits", "unicode", "empty", "markers-as-text", "long"])
def test_round_trip(text):
    assert tok.decode(tok.encode(text)) == text


def test_english_is_about_four_characters_per_token():
    text = "The endpoint picker routes each request by load and by prefix cache locality. " * 20
    ratio = len(text) / len(tok.encode(text))
    assert 3.0 <= ratio <= 4.5


def test_ids_fit_int32_and_are_deterministic():
    ids = tok.encode("Deterministic tokens — même ici.")
    assert ids == tok.encode("Deterministic tokens — même ici.")
    assert all(0 <= i < 2**31 for i in ids)


def test_special_tokens_only_when_allowed():
    assert tok.encode("<|im_start|>", allow_special=True) == [tok.IM_START]
    assert tok.IM_START not in tok.encode("<|im_start|>")


def test_chats_with_the_same_system_prompt_share_a_token_prefix():
    system = {"role": "system", "content": "You are a helpful assistant for a large retailer. " * 10}
    a = tok.encode(tok.apply_chat_template([system, {"role": "user", "content": "Where is my order?"}]),
                   allow_special=True)
    b = tok.encode(tok.apply_chat_template([system, {"role": "user", "content": "Can I return shoes?"}]),
                   allow_special=True)
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared > 100


@pytest.mark.parametrize("bad", [-1, 2**31 - 1, tok.BYTE_BASE + 256], ids=["negative", "unpacked", "byte"])
def test_invalid_ids_are_rejected(bad):
    assert not tok.valid_id(bad)
    with pytest.raises(ValueError):
        tok.decode([bad])


def test_output_vocabulary_is_one_token_per_word():
    for t in tok.OUTPUT_TOKENS:
        assert tok.encode(tok.decode([t])) == [t]
