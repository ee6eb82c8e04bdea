"""``burst-prefix-cache-producer`` through the gateway over real HTTP: a ``kit gateway`` process in front of ``kit
sim`` processes holds each request on its event loop until the batch window seals, then places the samples of one
prompt on one server."""

from collections import defaultdict

import pytest

from kit.experiments.client import make_body
from tests.helpers import burst

PROFILE = """\
# release: v0.10
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
  parameters: {windowDurationMs: 300}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: burst-prefix-cache-producer}
- type: load-aware-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: load-aware-scorer}]
"""


@pytest.mark.slow
def test_the_gateway_holds_a_burst_and_places_each_prompts_samples_together(tmp_path, sim_factory, gateway_factory):
    config = tmp_path / "burst.yaml"
    config.write_text(PROFILE)
    sims = [sim_factory() for _ in range(3)]
    gw = gateway_factory([s.url for s in sims], "--config", str(config))
    prompts = {"one": "Grade this proof of the first lemma, step by step. " * 20,
               "two": "Summarise the second chapter of the report for a reader in a hurry. " * 20}
    bodies = [make_body(text, chat=False, stream=True, max_tokens=2) for text in prompts.values() for _ in range(4)]
    results = burst(gw.url, bodies)
    assert all(r.status == 200 for r in results), [r.error for r in results]
    where = defaultdict(set)
    for body, r in zip(bodies, results, strict=True):
        where[body["prompt"]].add(r.endpoint)
        assert r.ttft >= 0.25, "every request waited for the window"
    assert [len(s) for s in where.values()] == [1, 1] and len(set.union(*where.values())) == 2, where
