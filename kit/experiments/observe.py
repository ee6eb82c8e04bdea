"""Sample every model server's metrics while a workload runs: queue, running, KV usage, prefix cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kit.experiments.results import MetricSample
from kit.vllm_metrics import EndpointMetrics

Source = Callable[[], dict[str, EndpointMetrics]]


class Sampler:
    """A background thread polling ``source`` every ``interval`` seconds; use as a context manager.

    ``rows`` holds one ``MetricSample`` per endpoint and sample.
    """

    def __init__(self, source: Source, interval: float = 0.25):
        self.source, self.interval = source, interval
        self.rows: list[MetricSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def _sample(self) -> None:
        now = time.monotonic() - self._t0
        try:
            snapshot = self.source()
        except OSError:
            return  # a server going away mid-run is not the sampler's business
        for name, m in sorted(snapshot.items()):
            self.rows.append(MetricSample(round(now, 3), name, m.waiting, m.running, m.kv_usage, m.prefix_hits,
                                          m.prefix_queries))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # one last sample after the run
