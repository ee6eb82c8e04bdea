"""Data-layer plugins: what upstream's EPP collects about endpoints, which the kit's gateway does itself.

Upstream (from GIE v1.4 behind the ``dataLayer`` gate, by default from v1.5) configures metric
collection as plugins wired in the config's ``dataLayer`` (older: ``data``) section: sources, each
with extractors. In the kit this work is the gateway's datastore (``kit.gateway.datastore``): it
scrapes every endpoint's ``/metrics`` every ``refresh_interval`` (50 ms) and parses vLLM's names with
``kit.vllm_metrics``. These plugins therefore hold no logic: they let upstream's configs load, are
checked where the config wires them, and warn when a parameter asks for something the datastore
does not do.

``metrics-data-source``: polls each endpoint's Prometheus metrics. In the kit: the datastore's
scrape of ``http://<endpoint>/metrics``. Parameters: ``scheme`` ("http"), ``path`` ("/metrics"),
``insecureSkipVerify`` (true).

``core-metrics-extractor``: reads queue, running, KV usage, LoRA and cache-config values from the
scraped metrics. In the kit: ``kit.vllm_metrics.parse_vllm_metrics`` (vLLM's names only).
Parameters: ``engineLabelKey`` ("llm-d.ai/engine-type"), ``defaultEngine`` ("vllm"),
``engineConfigs`` (custom metric names; not supported by the kit).

``endpoint-notification-source``: tells its extractors when endpoints join or leave. In the kit:
the datastore's endpoint list (fixed for the gateway's lifetime). No parameters.

Example::

    plugins:
    - type: metrics-data-source
    - type: core-metrics-extractor
    - type: endpoint-notification-source
    dataLayer:
      sources:
      - pluginRef: metrics-data-source
        extractors:
        - pluginRef: core-metrics-extractor
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from kit.picker.framework import Params, PluginBase, note

METRICS, ENDPOINTS = "prometheus metrics", "endpoint notifications"


class MetricsSourceParams(Params):
    scheme: str = Field("http", description="scheme of the metrics URL")
    path: str = Field("/metrics", description="path of the metrics URL")
    insecure_skip_verify: bool = Field(True, alias="insecureSkipVerify",
                                       description="skip TLS verification (https)")

    @field_validator("scheme", "path")
    @classmethod
    def _datastore_scrapes_http_metrics(cls, value: str, info: ValidationInfo) -> str:
        default = {"scheme": "http", "path": "/metrics"}[info.field_name or ""]
        if value != default:
            note(info, f"{value!r} is accepted but not used: the kit's gateway scrapes http://<endpoint>/metrics")
        return value


class MetricsDataSource(PluginBase):
    """``metrics-data-source`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): in the kit the gateway
    datastore's scraping (module docstring). Parameters: ``scheme`` (http), ``path`` (/metrics),
    ``insecureSkipVerify`` (true)."""

    type = "metrics-data-source"
    Params = MetricsSourceParams

    def produces(self) -> str:
        return METRICS


class EngineParams(Params):
    engine_label_key: str = Field("llm-d.ai/engine-type", alias="engineLabelKey",
                                  description="the endpoint label naming its engine")
    default_engine: str = Field("vllm", alias="defaultEngine", description="the engine when unlabelled")
    engine_configs: list[dict[str, Any]] = Field(default_factory=list, alias="engineConfigs",
                                                 description="per-engine metric names")

    @field_validator("default_engine", "engine_configs")
    @classmethod
    def _vllm_names_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in ("vllm", []):
            note(info, "accepted but not used: the kit reads vLLM's metric names only")
        return value


class CoreMetricsExtractor(PluginBase):
    """``core-metrics-extractor`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): reads the scrape
    (module docstring). Parameters: ``engineLabelKey`` (llm-d.ai/engine-type), ``defaultEngine`` (vllm),
    ``engineConfigs`` ([])."""

    type = "core-metrics-extractor"
    Params = EngineParams

    def consumes(self) -> str:
        return METRICS


class EndpointNotificationSource(PluginBase):
    """``endpoint-notification-source`` of GIE v1.4.0 (the guide's EPP, llm-d-inference-scheduler v0.7.0): endpoint
    add/remove notifications for its extractors (module docstring). No parameters."""

    type = "endpoint-notification-source"

    def produces(self) -> str:
        return ENDPOINTS
