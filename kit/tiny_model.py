"""A tiny Qwen3-shaped model made offline, so real vLLM can serve something with no download.

    kit tiny-model [--out DIR]             (runs the builder in vLLM's environment, caches the result)
    python kit/tiny_model.py --out DIR     (the builder itself, in any interpreter with numpy, safetensors, tokenizers)

What it makes (about 10 MB, in a few seconds):

* ``config.json``: Qwen3's architecture (``Qwen3ForCausalLM``) cut down to 2 layers, hidden size 256, 4 query
  and 2 key/value heads of 64, MLP 512, tied embeddings: 2.2M parameters, float32, 8,192 positions.
* ``model.safetensors``: random weights, normal with standard deviation 0.02 (Qwen3's ``initializer_range``),
  norms at one, drawn from a fixed seed: the same bytes on every machine.
* ``tokenizer.json``: a byte-level BPE of 4,096 tokens trained with ``tokenizers`` on ``CORPUS`` (local text:
  the words the kit's workloads and the simulator use), with tokens of at most four characters, like the
  kit's own tokenizer, so a prompt has about as many tokens here as in the simulator. Qwen's three special
  tokens; ``<|im_end|>`` ends a turn.
* ``tokenizer_config.json``: the ChatML chat template (Qwen's format, as ``kit.tokenizer.apply_chat_template``).

The weights are random, so the text it writes is noise; what matters for scheduling is that vLLM runs its real
engine (continuous batching, prefix caching, KV-cache events, metrics) over real tensors.

The builder imports only the standard library at the top, so this file runs as a script in vLLM's environment
(which has numpy, safetensors and tokenizers) while the kit's own environment needs none of them. The cache key
is a hash of everything the model is made from (``fingerprint``): a change builds a new model in a new folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FORMAT = 1  # raise when the builder writes different files from the same inputs
SEED = 0
VOCAB = 4096
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PIECES = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"  # kit.tokenizer's pieces
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "initializer_range": 0.02,
    "rope_theta": 1000000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
    "max_window_layers": 2, "use_cache": True, "dtype": "float32", "torch_dtype": "float32",
}
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Local text: the words the kit's shared-prefix workloads draw prompts from, the words the simulator writes,
# and a few plain sentences about serving, so common English pieces get tokens too.
_WORKLOAD_WORDS = ("system policy customer order return refund shipping warranty account billing support product "
                   "service network cluster request latency token cache model server answer question detail "
                   "context record review update status report result value index memory region").split()
_OUTPUT_WORDS = ("the cat sat on a mat and ran to see why our map of old hot sun had one red box but not big owl who "
                 "can fly far as we go by its new way so all may win yet few do it at sea or in air now").split()
_SENTENCES = (
    "A model server answers each request with tokens, one step at a time.",
    "The gateway asks the endpoint picker where every request should go.",
    "Requests that share a system prompt share a prefix, and a warm cache skips its prefill.",
    "Latency is the time to the first token plus the time between the tokens that follow.",
    "When the queue grows, the server is saturated and every request waits longer.",
    "The scheduler batches running sequences and prefills waiting ones in chunks.",
    "Blocks of sixteen or thirty-two tokens are hashed, stored, evicted and reused.",
    "Please answer the customer's question about the refund for order 12345 in two sentences.",
    "You are a helpful assistant for billing, shipping, warranty and account support.",
    "Report the status of the cluster: memory, network, region and index values.",
    "Hello! How are you today? I would like to know what this is, where it came from and when it will arrive.",
    "Write a short story about a robot that learns to paint, then explain what it means in simple words.",
    "What is the capital of France? Paris is the capital, and it is also the largest city in the country.",
    "Summarize the following text for me, and keep the important numbers: 3, 14, 159, 2026 and 0.5.",
    "They said that there were many good reasons, but he could not find any of them in the report.",
    "The quick brown fox jumps over the lazy dog; the five boxing wizards jump quickly.",
)


def corpus() -> list[str]:
    """The training text: deterministic, a few hundred kilobytes."""
    import random

    rng = random.Random(SEED)
    lines = ["\n".join(_SENTENCES)] * 20
    for _ in range(4000):
        words = rng.choices(_WORKLOAD_WORDS, k=24) + rng.choices(_OUTPUT_WORDS, k=8)
        rng.shuffle(words)
        lines.append(" ".join(words))
    return lines


def _tokenizer(out: Path) -> int:
    """Train the BPE, write tokenizer.json and tokenizer_config.json; returns the vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # The kit tokenizer's pieces, cut into chunks of up to four characters, then bytes: BPE merges within a
    # chunk, so a chunk it has learnt is one token, as in kit.tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[\s\S]{1,4}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": CONFIG["max_position_embeddings"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "add_bos_token": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added, "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    return tok.get_vocab_size()


def _weights(out: Path, vocab: int) -> int:
    """Random float32 weights in Qwen3's tensor names; returns the parameter count."""
    import numpy as np
    from safetensors.numpy import save_file

    c = CONFIG
    h, inter, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter)})
    rng = np.random.default_rng(SEED)
    tensors = {}
    for name in sorted(shapes):  # a fixed order, so the same draws land in the same tensors
        shape = shapes[name]
        tensors[name] = (np.ones(shape, np.float32) if name.endswith("norm.weight")
                         else (rng.standard_normal(shape) * c["initializer_range"]).astype(np.float32))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return sum(int(t.size) for t in tensors.values())


def build(out: Path) -> dict:
    """Write the model into ``out`` (created; files replaced). Returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(out)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    # Embedding rows for every token id, padded to a multiple of 64 as Qwen pads its vocabulary.
    config = {**CONFIG, "vocab_size": -(-vocab // 64) * 64, "bos_token_id": ids["<|endoftext|>"],
              "eos_token_id": ids["<|im_end|>"]}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]},
        indent=2) + "\n")
    params = _weights(out, config["vocab_size"])
    return {"path": str(out), "vocab": vocab, "parameters": params}


# ------------------------------------------------------------------------------ the kit's side (no numpy)
def fingerprint() -> str:
    """A hash of what the model is made from: the format, seed, vocabulary, architecture, template and corpus."""
    made_of = [FORMAT, SEED, VOCAB, SPECIAL_TOKENS, PIECES, CONFIG, CHAT_TEMPLATE, corpus()]
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """``$KIT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/kit/models`` (else ``~/.cache/kit/models``)."""
    if os.environ.get("KIT_MODEL_CACHE"):
        return Path(os.environ["KIT_MODEL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "kit" / "models"


def ensure(python: str | Path, *, out: Path | None = None, say=print) -> Path:
    """The tiny model's folder, built with ``python`` (an interpreter with numpy, safetensors and tokenizers,
    such as vLLM's) unless it is already cached. Built in a temporary folder and renamed into place, so a
    half-written model is never used."""
    target = out or cache_dir() / f"tiny-qwen3-{fingerprint()}"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--out", tmp], capture_output=True,
                              text=True, env={**os.environ, "RAYON_NUM_THREADS": "1"})
        if proc.returncode != 0:
            from kit.errors import KitError

            raise KitError(f"building the tiny model with {python} failed (it needs numpy, safetensors and "
                           f"tokenizers, as vLLM's environment has: make vllm):\n{proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        if target.exists():  # an older build with the same key that lost a file
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
        Path(tmp).mkdir()  # TemporaryDirectory removes it on exit
    say(f"built the tiny model in {target}: Qwen3 architecture, {summary['parameters']:,} parameters, "
        f"{summary['vocab']:,}-token BPE tokenizer")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="build the tiny Qwen3-shaped model into a folder")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    print(json.dumps(build(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
