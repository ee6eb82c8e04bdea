"""The simulator over real HTTP, as a separate ``kit sim`` process, the way clients and the picker see it."""

from __future__ import annotations

import collections
import statistics
import threading
import time

import openai
import pytest

from kit.experiments.client import make_body
from kit.targets.processes import free_port, healthy, spawn, stop
from tests.helpers import burst, metrics, post

LONG = "Our support policy covers refunds, repairs and replacements for every product we sell. " * 45


class Sampler:
    """Polls /metrics in a thread while load runs."""

    def __init__(self, url: str):
        self.url, self.samples, self._stop = url, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(metrics(self.url))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def test_a_repeated_long_prompt_hits_the_prefix_cache_and_starts_sooner(sim_factory):
    # A cold prefill of ~1.2 s, and the median of three repeats: one request stalled on a busy machine (a few
    # hundred milliseconds, seen under three test workers) cannot blur the gap.
    sim = sim_factory("--prefill-us-per-token", "1000")
    body = make_body(LONG, chat=False, stream=True, max_tokens=4)
    cold = burst(sim.url, [body])[0]
    warm = [burst(sim.url, [body])[0] for _ in range(3)]
    assert cold.ok and all(w.ok for w in warm)
    assert cold.cached_tokens == 0
    assert all(w.cached_tokens >= 0.9 * w.prompt_tokens for w in warm)
    assert statistics.median(w.ttft for w in warm) < cold.ttft / 4, (cold.ttft, [w.ttft for w in warm])
    m = metrics(sim.url)
    assert m.prefix_hits == sum(w.cached_tokens for w in warm)
    assert m.prefix_queries == cold.prompt_tokens + sum(w.prompt_tokens for w in warm)


@pytest.mark.slow
def test_concurrency_beyond_max_num_seqs_queues_and_delays_first_tokens(sim_factory):
    sim = sim_factory("--max-num-seqs", "4", "--step-overhead-ms", "10", "--num-gpu-blocks", "1000",
                      "--max-model-len", "16000")
    bodies = [make_body(f"user {i}: " + LONG[:2000], chat=False, stream=True, max_tokens=30,
                        ignore_eos=True) for i in range(12)]
    with Sampler(sim.url) as sampler:
        results = burst(sim.url, bodies)
    assert all(r.ok for r in results), [r.error for r in results]
    waiting = max(s.waiting for s in sampler.samples)
    running = max(s.running for s in sampler.samples)
    assert running == 4 and waiting >= 4
    ttfts = sorted(r.ttft for r in results)
    # The last four waited for two batches of 30 steps of at least 10 ms each (0.6 s; without the queue, all twelve
    # start together). A difference, not a ratio: a busy machine can delay the whole burst (by 0.9 s once under
    # three workers), which a ratio would take for a shorter queue.
    assert min(ttfts[-4:]) - max(ttfts[:4]) > 0.3, ttfts
    # KV usage follows load: ~4 prompts of ~520 tokens in 16-token blocks out of 1000 blocks.
    kv = max(s.kv_usage for s in sampler.samples)
    assert 0.1 <= kv <= 0.2, kv
    assert metrics(sim.url).kv_usage == 0.0


@pytest.mark.slow
def test_counters_agree_with_what_was_served(sim_factory):
    sim = sim_factory("--max-num-seqs", "8")
    shared = "You are a meticulous assistant. " * 40
    bodies = [make_body(shared + f"Question {i}?", chat=i % 2 == 0, stream=i % 3 != 0, max_tokens=10 + i)
              for i in range(20)]
    results = burst(sim.url, bodies)
    assert all(r.ok for r in results)
    m = metrics(sim.url)
    assert m.prompt_tokens == sum(r.prompt_tokens for r in results)
    assert m.generation_tokens == sum(r.completion_tokens for r in results)
    assert m.prefix_hits == sum(r.cached_tokens for r in results) > 0
    assert m.prefix_queries == m.prompt_tokens
    assert m.requests_ok == 20 == m.ttft_count
    reasons = collections.Counter(r.finish_reason for r in results)
    assert {k: v for k, v in m.finished.items() if v} == {k: float(v) for k, v in reasons.items()}
    assert set(m.finished) == {"stop", "length", "abort", "error", "repetition"}  # created up front, as vLLM
    assert m.block_size == 16 and m.num_gpu_blocks == 40000


def test_streaming_with_the_official_openai_client(sim_factory):
    sim = sim_factory()
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["Qwen/Qwen3-0.6B"]

    chunks = list(client.completions.create(model="Qwen/Qwen3-0.6B", prompt="Once upon a time", max_tokens=7,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) == 7
    assert chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    stream = client.chat.completions.create(
        model="Qwen/Qwen3-0.6B", messages=[{"role": "user", "content": "Hi"}], stream=True,
        max_completion_tokens=5, stream_options={"include_usage": True})
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices).split().__len__() == 5
    assert parts[-1].usage.prompt_tokens > 0

    reply = client.chat.completions.create(model="Qwen/Qwen3-0.6B", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].finish_reason == "stop"  # stops on its own without max_tokens
    assert 8 <= reply.usage.completion_tokens <= 128


@pytest.fixture(scope="module")
def short_sim(tmp_path_factory):
    """One simulator for the whole table (a short model length, so 'too long' is easy to hit)."""
    port = free_port()
    proc = spawn(["sim", "--port", str(port), "--max-model-len", "256"], f"http://127.0.0.1:{port}",
                 tmp_path_factory.mktemp("sim") / "sim.log", role="sim")
    yield proc
    stop(proc)


BAD_REQUESTS = [
    ("not-json", "/v1/completions", None, b"{not json", 400),
    ("array-body", "/v1/completions", [1, 2], None, 400),
    ("missing-prompt", "/v1/completions", {"max_tokens": 3}, None, 400),
    ("prompt-number", "/v1/completions", {"prompt": 42}, None, 400),
    ("empty-prompt", "/v1/completions", {"prompt": ""}, None, 400),
    ("negative-max-tokens", "/v1/completions", {"prompt": "hi", "max_tokens": -1}, None, 400),
    ("max-tokens-text", "/v1/completions", {"prompt": "hi", "max_tokens": "many"}, None, 400),
    ("unknown-model", "/v1/completions", {"prompt": "hi", "model": "gpt-9"}, None, 404),
    ("n-two", "/v1/completions", {"prompt": "hi", "n": 2}, None, 400),
    ("bad-token-id", "/v1/completions", {"prompt": [1, -5]}, None, 400),
    ("too-long", "/v1/completions", {"prompt": "word " * 400, "max_tokens": 10}, None, 400),
    ("stream-options-alone", "/v1/completions", {"prompt": "hi", "stream_options": {}}, None, 400),
    ("no-messages", "/v1/chat/completions", {"messages": []}, None, 400),
    ("messages-not-list", "/v1/chat/completions", {"messages": "hello"}, None, 400),
    ("role-not-text", "/v1/chat/completions", {"messages": [{"role": 5, "content": "x"}]}, None, 400),
    ("chat-unknown-model", "/v1/chat/completions",
     {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, None, 404),
    ("detokenize-junk", "/detokenize", {"tokens": ["a"]}, None, 400),
]


@pytest.mark.parametrize(("path", "body", "raw", "status"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_json_error_and_the_server_stays_up(short_sim, path, body, raw, status):
    sim = short_sim
    got, payload, _ = post(sim.url, path, body, raw=raw)
    assert got == status
    assert payload["error"]["code"] == status and payload["error"]["message"]
    assert healthy(sim.url)
    ok, reply, _ = post(sim.url, "/v1/completions", {"prompt": "still alive?", "max_tokens": 2})
    assert ok == 200 and reply["usage"]["completion_tokens"] == 2


def test_oversized_body_gets_413(sim_factory):
    sim = sim_factory()
    status, payload, _ = post(sim.url, "/v1/completions", None, raw=b'{"prompt": "' + b"a" * (65 * 2**20) + b'"}')
    assert status == 413 and payload["error"]["code"] == 413
    assert healthy(sim.url)


def test_unknown_routes_and_methods_are_answered_as_vllms_fastapi_does(sim_factory):
    sim = sim_factory()
    status, payload, _ = post(sim.url, "/v1/completions", None, method="GET")
    assert (status, payload) == (405, {"detail": "Method Not Allowed"})
    status, payload, _ = post(sim.url, "/v1/engines", {})
    assert (status, payload) == (404, {"detail": "Not Found"})
    assert healthy(sim.url)


def test_a_role_outside_openais_is_written_into_the_template_as_vllm_does(sim_factory):
    sim = sim_factory()
    status, tok, _ = post(sim.url, "/tokenize", {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 200
    assert "<|im_start|>wizard" in post(sim.url, "/detokenize", {"tokens": tok["tokens"]})[1]["prompt"]


def test_tokenize_and_detokenize_round_trip(sim_factory):
    sim = sim_factory()
    status, tok, _ = post(sim.url, "/tokenize", {"prompt": "Hello tokenizer"})
    assert status == 200 and tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 40960
    status, detok, _ = post(sim.url, "/detokenize", {"tokens": tok["tokens"]})
    assert detok["prompt"] == "Hello tokenizer"
    _, chat, _ = post(sim.url, "/tokenize", {"messages": [{"role": "user", "content": "Hello tokenizer"}]})
    assert chat["count"] > tok["count"]  # the chat template adds its markers


def test_render_endpoints_return_what_the_engine_would_get(sim_factory):
    sim = sim_factory()
    status, [rendered], _ = post(sim.url, "/v1/completions/render", {"prompt": "Hello tokenizer", "max_tokens": 5})
    _, tok, _ = post(sim.url, "/tokenize", {"prompt": "Hello tokenizer"})
    assert status == 200 and rendered["token_ids"] == tok["tokens"]
    assert rendered["sampling_params"]["max_tokens"] == 5 and rendered["request_id"].startswith("cmpl-")
    messages = [{"role": "user", "content": "Hi"}]
    status, chat, _ = post(sim.url, "/v1/chat/completions/render", {"messages": messages})
    _, chat_tok, _ = post(sim.url, "/tokenize", {"messages": messages})
    assert status == 200 and chat["token_ids"] == chat_tok["tokens"] and chat["features"] is None
    assert post(sim.url, "/v1/chat/completions/render", {"messages": []})[0] == 400
    assert metrics(sim.url).requests_ok == 0  # nothing was generated


def test_injected_failures(sim_factory):
    failing = sim_factory("--fail-rate", "1", "--fail-status", "503")
    status, payload, _ = post(failing.url, "/v1/completions", {"prompt": "hi"})
    assert status == 503 and "injected" in payload["error"]["message"]

    dropping = sim_factory("--drop-rate", "1")
    [res] = burst(dropping.url, [make_body("hi", chat=False, stream=True, max_tokens=20, ignore_eos=True)])
    assert not res.ok and res.text  # some tokens arrived, then the connection was cut
    assert healthy(dropping.url)

    slow = sim_factory("--extra-latency-ms", "300")
    [res] = burst(slow.url, [make_body("hi", chat=False, stream=True, max_tokens=2)])
    assert res.ok and res.ttft >= 0.3


def test_reset_prefix_cache_makes_prompts_cold_again(sim_factory):
    sim = sim_factory()
    body = make_body(LONG, chat=False, stream=False, max_tokens=1)
    burst(sim.url, [body])
    post(sim.url, "/reset_prefix_cache", {})
    [res] = burst(sim.url, [body])
    assert res.cached_tokens == 0
