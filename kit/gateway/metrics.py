"""The gateway's own Prometheus metrics: counters kept as plain numbers, and the pool's gauges read at scrape time.

The endpoint picker's own series are named as the picker's release names them (``EPP_NAMES``): the guide's
v0.7 as the Gateway API Inference Extension did (``inference_extension_*``); llm-d-router v0.10.0 under its
``llm_d_epp`` subsystem, still emitting the ``inference_extension_*`` names as deprecated twins (help text
``[Deprecated: Use ...]``), as v0.10.0 does. The kit keeps one label, ``status``, on the attempts counter
(upstream adds the model and the endpoint).

prometheus_client's counters and histograms take a lock (and look their labels up) on every update; the
gateway counts on every request from one event loop, so ``Tally`` keeps a dict of numbers and
``Buckets`` a list, handed to the registry only when ``/metrics`` is read (exposed as prometheus_client
exposes its counters and histograms, without the ``_created`` series).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from kit.picker import Endpoint

# release → (scheduling attempts counter, its deprecated twins), (latency histogram, twins), latency buckets
EPP_NAMES: dict[str, tuple[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]], tuple[float, ...]]] = {
    "v0.7": (("inference_extension_scheduler_attempts", ()),
             ("inference_extension_scheduler_e2e_duration_seconds", ()),
             (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)),
    "v0.10": (("llm_d_epp_scheduler_attempts", ("inference_extension_scheduler_attempts",)),
              ("llm_d_epp_scheduler_e2e_duration_seconds", ("inference_extension_scheduler_e2e_duration_seconds",)),
              (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)),
}


def _deprecated(name: str, suffix: str, documentation: str) -> str:
    return f"[Deprecated: Use {name}{suffix}] {documentation}"


class Tally(Collector):
    """A counter by label values, for one thread; ``aliases``: the same counts under deprecated names."""

    def __init__(self, name: str, documentation: str, labels: list[str], aliases: tuple[str, ...] = ()):
        self.name, self.documentation, self.labels, self.aliases = name, documentation, labels, aliases
        self.counts: dict[tuple[str, ...], float] = {}

    def inc(self, *values: str) -> None:
        counts = self.counts
        counts[values] = counts.get(values, 0.0) + 1.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = list(self.counts.items())
        for name in (self.name, *self.aliases):
            doc = self.documentation if name == self.name else _deprecated(self.name, "_total", self.documentation)
            family = CounterMetricFamily(name, doc, labels=self.labels)
            for values, n in counts:
                family.add_metric(list(values), n)
            yield family


class Buckets(Collector):
    """A histogram without labels, for one thread (exposed as a prometheus_client histogram is, without
    ``_created``); ``aliases``: the same histogram under deprecated names."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], aliases: tuple[str, ...] = ()):
        self.name, self.documentation, self.bounds, self.aliases = name, documentation, buckets, aliases
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            cumulative.append((bound, float(total)))
        for name in (self.name, *self.aliases):
            doc = self.documentation if name == self.name else _deprecated(self.name, "", self.documentation)
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], cumulative, self.sum)
            yield family


class PoolGauges(Collector):
    """Each endpoint's requests in flight and health, and the scheduling plugins' gauges."""

    def __init__(self, endpoints: list[Endpoint], plugin_gauges: Callable[[], dict[str, float]]):
        self.endpoints, self.plugin_gauges = endpoints, plugin_gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily("kit_gateway_in_flight", "Requests proxied and not finished.",
                                      labels=["endpoint"])
        healthy = GaugeMetricFamily("kit_gateway_endpoint_healthy", "1 if the endpoint is in rotation.",
                                    labels=["endpoint"])
        for ep in self.endpoints:
            in_flight.add_metric([ep.name], ep.in_flight)
            healthy.add_metric([ep.name], 1.0 if ep.healthy else 0.0)
        yield in_flight
        yield healthy
        for name, value in sorted(self.plugin_gauges().items()):
            g = GaugeMetricFamily(name, "Reported by a scheduling plugin.")
            g.add_metric([], value)
            yield g
