"""Outside traffic reaches every model server at the asked pace and fills their caches."""

import time

import pytest

from kit.experiments.outside import outside_traffic
from kit.targets import Status
from tests.helpers import metrics


class Target:
    def __init__(self, urls):
        self.urls = urls

    def status(self) -> Status:
        return Status(True, "", [{"role": "simulator", "url": u} for u in self.urls], {})


@pytest.mark.slow
def test_it_sends_to_each_server_in_turn(sim_factory):
    sims = [sim_factory("--num-gpu-blocks", "512", "--max-model-len", "8192") for _ in range(2)]
    with outside_traffic(Target([s.url for s in sims]), rate=20, prompt_tokens=300) as counts:
        time.sleep(1.0)
    time.sleep(0.5)
    assert counts["failed"] == 0 and 10 <= counts["sent"] <= 22
    for s in sims:
        m = metrics(s.url)
        assert m.prompt_tokens >= 5 * 300 * 0.9 and m.prefix_hits == 0  # fresh prompts: nothing to hit


def test_rate_zero_sends_nothing():
    with outside_traffic(Target(["http://127.0.0.1:9"]), rate=0) as counts:
        time.sleep(0.2)
    assert counts == {"sent": 0, "failed": 0}
