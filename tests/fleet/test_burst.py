"""``burst-prefix-cache-producer`` on the virtual clock: the fleet simulator holds each request until its batch
window seals, as the gateway does on its event loop, so a burst's prompt-sharing requests are placed together and
the wait is part of every request's TTFT."""

from collections import defaultdict

from kit.experiments.workloads import Load, SharedPrefix
from kit.fleet import Fleet, simulate
from kit.sim.config import SimConfig

PROFILE = """\
# release: v0.10
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
  parameters: {windowDurationMs: 100, minColocateBlocks: 2}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: burst-prefix-cache-producer}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
"""
SIM = SimConfig(max_num_seqs=16, num_gpu_blocks=512, max_model_len=4096)


def test_a_burst_waits_for_its_window_and_each_group_shares_one_server(tmp_path):
    path = tmp_path / "burst.yaml"
    path.write_text(PROFILE)
    work = SharedPrefix(groups=4, prompts_per_group=4, system_prompt_len=600, question_len=8, output_len=8, seed=3)
    run = simulate(work, Load(concurrency=16, requests=16), Fleet(replicas=4, profile=str(path), sim=SIM))
    assert run.summary.ok == 16
    servers = defaultdict(set)
    for r in run.requests:
        servers[r.group].add(r.endpoint)
        assert r.started == 0.0 and r.ttft >= 0.1, "held for the window from its arrival"
    assert all(len(s) == 1 for s in servers.values()), servers
    assert len({next(iter(s)) for s in servers.values()}) == 4, "the fair share spreads the groups"
