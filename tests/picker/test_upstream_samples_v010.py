"""llm-d-router v0.10.0's sample configs and today's guides' scheduler configs, loaded as release v0.10.

Every file under tests/fixtures/upstream_epp_configs/v0.10.0 (deploy/config, the test configs, the charts'
default configs, the optimized-baseline and precise-prefix-cache-routing guides' values; a Helm values file
holds its config under ``router.epp.pluginsCustomConfig``) either loads and schedules a request over a few
endpoints, or is refused with a kit error that names why, in one of two groups:

* **missing, allowed**: a plugin for P/D or E/P/D disaggregation, multimodal caches, GPU telemetry (dcgm),
  latency prediction / SLO tiers, or flow-control fairness and usage-limit policies;
* **refused upstream too**: llm-d-router v0.10.0's own loader refuses the file (an unknown field, an
  unregistered type or apiVersion, a parameter combination its factory refuses), and the kit says so.

The counts are the ones docs/explanation/scheduling.md publishes.
"""

import asyncio
from pathlib import Path

import pytest
import yaml

from kit import tokenizer
from kit.errors import ConfigError
from kit.picker import Endpoint, KVEventsConsumer, load_picker_config
from kit.vllm_metrics import EndpointMetrics

ROOT = Path(__file__).resolve().parents[1] / "fixtures/upstream_epp_configs/v0.10.0"

# Plugin types the kit may lack, by what they are for (the families the kit leaves out on purpose).
ALLOWED_MISSING = {
    "disagg-profile-handler": "P/D", "prefix-based-pd-decider": "P/D", "always-disagg-pd-decider": "P/D",
    "always-disagg-multimodal-decider": "E/P/D", "topology-extractor": "P/D (prefill placed near its decode)",
    "topology-affinity-filter": "P/D (prefill placed near its decode)",
    "topology-affinity-scorer": "P/D (prefill placed near its decode)",
    "mm-embeddings-cache-producer": "multimodal cache", "mm-embeddings-cache-scorer": "multimodal cache",
    "dcgm-data-source": "GPU telemetry", "dcgm-extractor": "GPU telemetry",
    "endpoint-attribute-filter": "GPU telemetry (reads the dcgm extractor's attribute)",
    "endpoint-attribute-scorer": "GPU telemetry (reads the dcgm extractor's attribute)",
    "predicted-latency-producer": "latency prediction", "latency-scorer": "latency prediction",
    "slo-headroom-tier-filter": "SLO tiers", "latency-slo-admitter": "SLO tiers",
    "program-aware-fairness": "fairness policy", "soft-reflective-ceiling-policy": "flow-control usage-limit policy",
}

# Files llm-d-router v0.10.0 refuses as well, and the words of the kit's error that say why.
REFUSED_UPSTREAM = {
    "guides/optimized-baseline/router/npu.rbln.values.yaml": "'llm-d.ai/v1' is not registered in llm-d-router v0.10.0",
    "guides/optimized-baseline/router/optimized-baseline-trtllm.values.yaml":
        "'llm-d.ai/v1' is not registered in llm-d-router v0.10.0",
    "guides/optimized-baseline/router/optimized-baseline.values.yaml":
        "plugins[3].parameters.maxTokensInFlightPenalty: unknown field of prefix-cache-affinity-filter",
    "guides/precise-prefix-cache-routing/router/lmetric.values.yaml":
        "'lmetric-scorer': not registered in llm-d-router v0.10.0 either",
    "guides/precise-prefix-cache-routing/router/precise-prefix-cache-routing.values.yaml":
        "plugins[0].parameters: only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set",
    "guides/precise-prefix-cache-routing/router/sglang.values.yaml":
        "plugins[2].parameters.tokenProcessorConfig.hashAlgorithm: unknown field of precise-prefix-cache-producer",
    "test/integration/epp/testdata/datalayer-config.yaml":
        "'mock-metrics-source': not registered in llm-d-router v0.10.0 either",
    "test/integration/epp/testdata/request-attribute-reporter-config.yaml":
        "'mock-metrics-source': not registered in llm-d-router v0.10.0 either",
    "test/testdata/configloader_1_test.yaml":
        "flowControl.saturationDetector.metricsStalenessThreshold: unknown field",
}


def configs(path: Path) -> list[tuple[str, str]]:
    """The scheduler configs in a fixture: the file itself, or a Helm values file's custom plugin configs."""
    data = yaml.safe_load(path.read_text())
    rel = str(path.relative_to(ROOT))
    if isinstance(data, dict) and "router" in data:
        return [(f"{rel}#{name}", text) for name, text in data["router"]["epp"]["pluginsCustomConfig"].items()]
    return [(rel, path.read_text())]


SAMPLES = [c for p in sorted(ROOT.rglob("*.yaml")) for c in configs(p)]


def missing_types(text: str) -> list[str]:
    from kit.picker.registry import default

    implemented = set(default("v0.10").types())
    return [p["type"] for p in yaml.safe_load(text).get("plugins") or [] if p.get("type") not in implemented]


def group(name: str, text: str) -> str:
    if name.split("#")[0] in REFUSED_UPSTREAM:
        return "refused upstream too"
    missing = missing_types(text)
    if not missing:
        return "loads"
    return "missing, allowed"


def sample_id(sample: tuple[str, str]) -> str:
    return sample[0]


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def pool(clock: Clock) -> list[Endpoint]:
    return [Endpoint(name=f"127.0.0.1:{8001 + i}", url=f"http://127.0.0.1:{8001 + i}", updated=clock(),
                     metrics=EndpointMetrics(waiting=w, kv_usage=kv, block_size=16, num_gpu_blocks=512))
            for i, (w, kv) in enumerate([(0, 0.1), (4, 0.7), (1, 0.3)])]


async def render(url: str, body: dict, timeout: float) -> object:
    """A model server's render endpoint, in process (the kit's tokenizer, as the simulator's /render answers)."""
    if url.endswith("/v1/chat/completions/render"):
        text = tokenizer.apply_chat_template(body["messages"])
        return {"token_ids": tokenizer.encode(text, allow_special=True)}
    return [{"token_ids": tokenizer.encode(body["prompt"])}]


def test_every_sample_is_classified_and_the_counts_are_the_published_ones():
    counts: dict[str, int] = {}
    for name, text in SAMPLES:
        counts[group(name, text)] = counts.get(group(name, text), 0) + 1
    assert len(SAMPLES) == 38
    assert counts == {"loads": 20, "missing, allowed": 9, "refused upstream too": 9}
    assert set(REFUSED_UPSTREAM) <= {n.split("#")[0] for n, _ in SAMPLES}


@pytest.mark.parametrize("sample", [s for s in SAMPLES if group(*s) == "loads"], ids=sample_id)
def test_a_sample_the_kit_implements_loads_and_schedules(sample):
    name, text = sample
    clock = Clock()
    cfg = load_picker_config(text, name, clock=clock, release="v0.10")
    sched, eps = cfg.scheduler, pool(clock)
    for p in sched.plugins:  # no socket on a shared machine: events would be handed in (none are)
        if isinstance(p, KVEventsConsumer):
            p.in_process = True
    names = {ep.name for ep in eps}
    for i, prompt in enumerate(["system prompt " * 80 + "first question", "system prompt " * 80 + "second"]):
        req = sched.request({"model": "Qwen/Qwen3-0.6B", "prompt": prompt, "max_tokens": 8}, "/v1/completions",
                            "Qwen/Qwen3-0.6B", request_id=str(i))
        if sched.renders or sched.holds:  # a render, a batch window (burst-prefix-cache-producer)
            asyncio.run(sched.produce(req, render))
            assert req.tokens, "the render backend filled the request's tokens"
        assert sched.admit(req, eps) is None
        decision, state = sched.schedule(req, eps)
        assert decision.picked and set(decision.picked) <= names
        ep = state["picked"][0]
        sched.pre_request(state, req, ep)
        sched.response_headers(req, ep)
        sched.response_start(req, ep)
        sched.response_complete(req, ep)
    sched.close()


@pytest.mark.parametrize("sample", [s for s in SAMPLES if group(*s) == "missing, allowed"], ids=sample_id)
def test_a_sample_with_a_plugin_the_kit_lacks_fails_naming_it(sample):
    name, text = sample
    missing = missing_types(text)
    with pytest.raises(ConfigError) as err:
        load_picker_config(text, name, release="v0.10")
    for plugin_type in missing:
        assert f"unknown plugin type {plugin_type!r}: llm-d-router v0.10.0 registers it, but the kit's picker " \
               "does not implement it" in str(err.value)
        assert plugin_type in ALLOWED_MISSING, f"{plugin_type} is not an allowed gap"


@pytest.mark.parametrize("sample", [s for s in SAMPLES if group(*s) == "refused upstream too"], ids=sample_id)
def test_a_sample_v0_10_refuses_is_refused_with_the_reason(sample):
    name, text = sample
    with pytest.raises(ConfigError) as err:
        load_picker_config(text, name, release="v0.10")
    assert REFUSED_UPSTREAM[name.split("#")[0]] in str(err.value)


def test_the_burst_sample_places_a_burst_of_one_prompt_on_one_server():
    """deploy/config/epp-burst-prefix-cache-config.yaml: the samples of one prompt arriving together wait for the
    window, then all go where the window put them, though the load-aware scorer alone would spread them."""
    name, text = next(s for s in SAMPLES if s[0] == "deploy/config/epp-burst-prefix-cache-config.yaml")
    clock = Clock()
    sched = load_picker_config(text, name, clock=clock, release="v0.10").scheduler
    eps = pool(clock)
    prompts = ["rollout step prompt one " * 30] * 4 + ["rollout step prompt two " * 30] * 4

    async def burst() -> list:
        reqs = [sched.request({"model": "Qwen/Qwen3-0.6B", "prompt": p, "max_tokens": 8}, "/v1/completions",
                              "Qwen/Qwen3-0.6B", request_id=str(i)) for i, p in enumerate(prompts)]
        await asyncio.gather(*(sched.produce(r, render) for r in reqs))
        return reqs

    picked = []
    for req in asyncio.run(burst()):
        decision, state = sched.schedule(req, eps)
        sched.pre_request(state, req, state["picked"][0])
        picked.append(decision.picked[0])
    assert len(set(picked[:4])) == 1 and len(set(picked[4:])) == 1 and picked[0] != picked[4]
