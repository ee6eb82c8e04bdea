"""The data-layer plugins with llm-d-router v0.10.0's parameters (``datalayer/source/metrics``,
``datalayer/extractor/metrics``). As in the guide's release the kit's gateway does this work itself (it scrapes
``http://<endpoint>/metrics`` and reads vLLM's names: ``kit.picker.plugins.datalayer``); these plugins check
the parameters v0.10.0 takes and warn about those the gateway does not honour.

``metrics-data-source``: ``scheme`` (http), ``path`` (/metrics), ``port`` (the endpoint's), ``insecureSkipVerify``
(true), ``caCertPath``, ``clientCertPath``, ``clientKeyPath``, ``interval`` (the scrape interval; the gateway's
``--refresh-interval`` sets the kit's).

``core-metrics-extractor``: ``engineLabelKey`` (llm-d.ai/engine-type), ``defaultEngine`` (vllm), ``engineConfigs``
(per engine: ``name``, ``queuedRequestsSpec``, ``runningRequestsSpec``, ``kvUsageSpec``, ``loraSpec``,
``cacheInfoSpec``, ``cacheBlockSizeLabelName``, ``cacheNumBlocksLabelName``, ``cacheBlockSizeSpec``,
``cacheNumBlocksSpec``, ``customMetrics`` of ``attributeKey`` and ``metricSpec``; the kit reads vLLM's names).

Example::

    plugins:
    - type: metrics-data-source
      parameters:
        path: /metrics
    - type: core-metrics-extractor
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, model_validator

from kit.picker.framework import Params, note
from kit.picker.plugins.datalayer import CoreMetricsExtractor, MetricsDataSource


class SourceParams(Params):
    scheme: str = Field("http", description="http or https")
    path: str = Field("/metrics", description="the metrics path")
    port: int | None = Field(None, description="the metrics port (default: the endpoint's)")
    insecure_skip_verify: bool = Field(True, alias="insecureSkipVerify", description="skip TLS verification")
    ca_cert_path: str = Field("", alias="caCertPath", description="CA bundle for https")
    client_cert_path: str = Field("", alias="clientCertPath", description="client certificate for https")
    client_key_path: str = Field("", alias="clientKeyPath", description="client key for https")
    interval: str = Field("", alias="interval", description="this source's scrape interval, a Go duration")

    @model_validator(mode="after")
    def _honoured(self, info: ValidationInfo) -> SourceParams:
        unused = [name for name, value, default in (
            ("scheme", self.scheme, "http"), ("path", self.path, "/metrics"), ("port", self.port, None),
            ("caCertPath", self.ca_cert_path, ""), ("clientCertPath", self.client_cert_path, ""),
            ("clientKeyPath", self.client_key_path, ""), ("interval", self.interval, "")) if value != default]
        if unused:
            note(info, f"{', '.join(unused)}: accepted but not used: the kit's gateway scrapes "
                       "http://<endpoint>/metrics every --refresh-interval")
        return self


class RouterMetricsDataSource(MetricsDataSource):
    """``metrics-data-source`` of llm-d-router v0.10.0 (in the kit: the gateway's scrape). Parameters: ``scheme``,
    ``path``, ``port``, ``insecureSkipVerify``, ``caCertPath``, ``clientCertPath``, ``clientKeyPath``, ``interval``."""

    Params = SourceParams


class CustomMetric(Params):
    attribute_key: str = Field("", alias="attributeKey", description="the endpoint attribute written")
    metric_spec: str = Field("", alias="metricSpec", description="the metric read, name{label=value}")


class EngineConfig(Params):
    name: str = Field("", description="the engine type")
    queued_requests_spec: str = Field("", alias="queuedRequestsSpec", description="waiting queue metric")
    running_requests_spec: str = Field("", alias="runningRequestsSpec", description="running requests metric")
    kv_usage_spec: str = Field("", alias="kvUsageSpec", description="KV-cache usage metric")
    lora_spec: str = Field("", alias="loraSpec", description="LoRA info metric")
    cache_info_spec: str = Field("", alias="cacheInfoSpec", description="cache config info metric")
    cache_block_size_label_name: str = Field("", alias="cacheBlockSizeLabelName", description="its block size label")
    cache_num_blocks_label_name: str = Field("", alias="cacheNumBlocksLabelName", description="its block count label")
    cache_block_size_spec: str = Field("", alias="cacheBlockSizeSpec", description="block size metric")
    cache_num_blocks_spec: str = Field("", alias="cacheNumBlocksSpec", description="block count metric")
    custom_metrics: list[CustomMetric] = Field(default_factory=list, alias="customMetrics",
                                               description="more attributes from metrics")


class ExtractorParams(Params):
    engine_label_key: str = Field("llm-d.ai/engine-type", alias="engineLabelKey",
                                  description="the pod label naming the engine")
    default_engine: str = Field("vllm", alias="defaultEngine", description="the engine of unlabelled pods")
    engine_configs: list[EngineConfig] = Field(default_factory=list, alias="engineConfigs",
                                               description="metric names per engine")

    @model_validator(mode="after")
    def _vllm(self, info: ValidationInfo) -> ExtractorParams:
        if self.default_engine != "vllm" or self.engine_configs:
            note(info, "defaultEngine/engineConfigs: accepted but not used: the kit reads vLLM's metric names only")
        return self


class RouterCoreMetricsExtractor(CoreMetricsExtractor):
    """``core-metrics-extractor`` of llm-d-router v0.10.0 (in the kit: ``kit.vllm_metrics``). Parameters:
    ``engineLabelKey``, ``defaultEngine``, ``engineConfigs``."""

    Params = ExtractorParams
