"""Environments: one YAML file per place the kit can deploy, validated by one strict model.

Two release tracks, as data (``release``): ``guide`` (the default) is the helmfile-era guide the kit was
built on (llm-d-infra / inferencepool / llm-d-modelservice shapes, EPP llm-d-inference-scheduler v0.7.0);
``llm-d-v0.10`` is today's optimized-baseline guide on llm-d-router v0.10.0 (its standalone and gateway
charts and the guide's kustomize model servers; ``router`` says which mode). The release also names the
picker release whose plugins and strictness apply to the environment's scheduler config.

Names follow the guide: the namespace comes from ``-n``, else ``$NAMESPACE``, else
``vllm-k8s-inference-scheduler``; the release postfix from ``--postfix``, else
``$RELEASE_NAME_POSTFIX``, else ``inference-scheduling``. ``--set a.b=c`` overrides any field
(values parsed as YAML) and is validated like the file itself.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from kit import paths
from kit.config import StrictModel, parse
from kit.errors import ConfigError, UnknownChoiceError

DEFAULT_NAMESPACE = "vllm-k8s-inference-scheduler"
DEFAULT_POSTFIX = "inference-scheduling"
Release = Literal["guide", "llm-d-v0.10"]
# The picker release (kit.picker.load_picker_config's ``release``) each environment release deploys.
PICKER_RELEASE: dict[str, str] = {"guide": "v0.7", "llm-d-v0.10": "v0.10"}
# The endpoint-picker image family each release deploys (a guide environment with today's EPP, or the
# reverse, is a mistake the loader names).
EPP_IMAGE = {"guide": "llm-d-inference-scheduler", "llm-d-v0.10": "llm-d-router-endpoint-picker"}
# Gateway providers llm-d-router v0.10's optimized-baseline guide lists for gateway mode.
ROUTER_PROVIDERS = ("istio", "gke", "agentgateway")
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class LocalVllmSettings(StrictModel):
    """Real ``vllm serve`` processes as the local stack's model servers (docs/how-to/run-on-real-vllm.md)."""

    python: str | None = Field(None, description="interpreter of vLLM's environment (default: $KIT_VLLM_PYTHON, "
                               "else .venv-vllm/bin/python in the kit's folder (make vllm), else the `vllm` command's)")
    model: str | None = Field(None, description="what vLLM loads, a folder or a Hugging Face name (default: the kit's "
                              "tiny model, made offline); clients use the environment's model name")
    block_size: int = Field(32, ge=1, description="--block-size (vLLM on a CPU needs a multiple of 32)")
    max_model_len: int | None = Field(None, ge=16, description="--max-model-len (default: the model's)")
    max_num_seqs: int | None = Field(None, ge=1, description="--max-num-seqs (default: vLLM's)")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="--max-num-batched-tokens (default: vLLM's)")
    kv_cache_bytes: int | None = Field(None, ge=1, description="--kv-cache-memory-bytes per server (default: vLLM's "
                                       "share of the device's memory)")
    pin_cores: bool = Field(False, description="CPU build: bind server i's threads to core i "
                            "(VLLM_CPU_OMP_THREADS_BIND), instead of vLLM's default, which binds them all to core 0")
    args: list[str] = Field(default_factory=list, description="more vllm serve arguments, passed as given")
    env: dict[str, str] = Field(default_factory=dict, description="more environment variables for the servers")
    startup_timeout: float = Field(900, gt=0, description="seconds a server may take to answer /health")


class LocalSettings(StrictModel):
    host: str = Field("127.0.0.1", description="address the gateway and simulators bind")
    gateway_port: int = Field(8000, ge=1, le=65535, description="gateway port; simulators take the ports after it")
    refresh_interval: float = Field(0.05, gt=0, description="seconds between metric scrapes of each simulator")
    picker_replicas: int = Field(1, ge=1, le=16, description="kit-only: endpoint pickers in the gateway splitting "
                                 "the requests, each with its own prefix index (kit gateway --picker-replicas)")
    model_servers: Literal["sim", "vllm"] = Field("sim", description="the simulator (kit sim), or real vLLM "
                                                  "(vllm serve)")
    simulator: dict[str, Any] = Field(default_factory=dict, description="kit sim settings (SimConfig fields)")
    vllm: LocalVllmSettings = Field(default_factory=LocalVllmSettings, description="settings of real vLLM servers")

    @field_validator("simulator")
    @classmethod
    def _sim_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from kit.sim.config import SimConfig

        SimConfig.model_validate(v)  # errors name the simulator field
        return v


class GatewaySettings(StrictModel):
    provider: Literal["istio", "kgateway", "agentgateway", "gke"] = Field(description="gateway implementation")
    class_name: str = Field(description="GatewayClass the Gateway uses")
    service_type: Literal["ClusterIP", "LoadBalancer", "NodePort"] | None = Field(
        None, description="type of the Service the provider creates for the Gateway (none on GKE)")
    log_level: str = Field("warn", description="proxy log level")
    resources: dict[str, Any] = Field(default_factory=dict, description="proxy resources (requests/limits)")
    destination_rule: bool = Field(False, description="Istio DestinationRule for TLS to the endpoint picker")
    listener_port: int = Field(80, ge=1, le=65535, description="Gateway listener port")


class HardwareSettings(StrictModel):
    backend: Literal["cuda", "rocm", "xpu", "tpu", "cpu", "sim"] = Field(description="accelerator family")
    vendor: str = Field(description="value of the llm-d.ai/accelerator-vendor label")
    accelerator_resource: str | None = Field(None, description="device-plugin resource, e.g. nvidia.com/gpu")
    accelerators_per_replica: int = Field(1, ge=0, description="devices per model-server pod")
    dra_device_class: str | None = Field(None, description="DRA device class (instead of a device-plugin resource)")
    tensor_parallel: int = Field(1, ge=1, description="vLLM --tensor-parallel-size")
    cpu: str | None = Field(None, description="CPU request and limit of each model server")
    memory: str | None = Field(None, description="memory request and limit of each model server")
    shm_size: str = Field("20Gi", description="size of /dev/shm")
    node_selector: dict[str, str] = Field(default_factory=dict, description="model-server node selector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="model-server tolerations")
    security_context: dict[str, Any] = Field(
        default_factory=dict, description="model-server container securityContext fields, merged over the kit's "
                                          "hardened defaults (docs/how-to/deploy-to-a-cluster.md)")
    pod_security_context: dict[str, Any] = Field(default_factory=dict, description="model-server pod securityContext "
                                                 "(e.g. the XPU overlay's fsGroup 107)")
    limits: dict[str, str] = Field(default_factory=dict, description="model-server resource limits that differ from "
                                                                     "the requests (cpu, memory), e.g. {cpu: '20'}")


class ModelServerSettings(StrictModel):
    engine: Literal["vllm", "sim"] = Field("vllm", description="vLLM, or upstream's vLLM simulator image")
    image: str = Field(description="model-server image, pinned")
    served_model_name: str | None = Field(None, description="name clients use (default: the model)")
    args: list[str] = Field(default_factory=list, description="extra engine arguments")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (no secrets)")
    hf_token: bool = Field(True, description="mount the HF token (secret vllm-k8s-hf-token; llm-d-hf-token for "
                                             "release llm-d-v0.10; false: a public model)")
    pod_monitor: bool = Field(True, description="render a PodMonitor for the servers' /metrics")
    startup_failure_threshold: int = Field(60, ge=1, description="startup probe failures allowed (30 s apart)")
    termination_grace_seconds: int | None = Field(None, ge=0, description="model-server pods' termination grace "
                                                                          "period (none: Kubernetes' 30 s)")
    security_waivers: list[Literal["run-as-non-root", "capabilities", "seccomp"]] = Field(
        default_factory=list, description="hardening rules this server's image cannot meet, e.g. run-as-non-root "
                                          "for an image that runs as root; kit validate lists them "
                                          "(docs/how-to/deploy-to-a-cluster.md)")


class EppSettings(StrictModel):
    image: str = Field("ghcr.io/llm-d/llm-d-inference-scheduler:v0.7.0", description="endpoint picker image")
    service_monitor: bool = Field(True, description="render the EPP ServiceMonitor and its token Secret")
    cpu: str = Field("4", description="EPP CPU request")
    memory: str = Field("8Gi", description="EPP memory request")
    memory_limit: str = Field("16Gi", description="EPP memory limit")


class RouterSettings(StrictModel):
    """Release llm-d-v0.10: how llm-d-router's charts deploy the endpoint picker."""

    mode: Literal["standalone", "gateway"] = Field(
        "standalone", description="standalone: the EPP pod carries a proxy and its Service is the entry point (no "
                                  "Gateway API); gateway: an InferencePool behind a Gateway and HTTPRoute")
    proxy: Literal["envoy", "agentgateway"] = Field("envoy", description="standalone: the proxy beside the EPP")
    envoy_image: str = Field("docker.io/envoyproxy/envoy:distroless-v1.33.2", description="standalone Envoy proxy")
    agentgateway_image: str = Field("cr.agentgateway.dev/agentgateway:v1.1.0",
                                    description="standalone agentgateway proxy")
    proxy_resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
        description="standalone proxy resources (the guide's base values)")
    service_port: int = Field(80, ge=1, le=65535, description="standalone: the EPP Service's port for clients")
    proxy_port: int = Field(8081, ge=1, le=65535, description="standalone: the proxy's listener port")
    guide: str = Field("optimized-baseline", description="value of the llm-d.ai/guide label the pool selects")
    epp_verbosity: int = Field(2, ge=0, description="EPP --v (the guide's base values: 2)")
    request_timeout: str = Field("300s", description="gateway mode: the HTTPRoute's request timeout (not on GKE)")


class Environment(StrictModel):
    name: str = Field(description="the environment's name (its file name)")
    description: str = Field(description="one line shown by `kit envs`")
    target: Literal["local", "cluster"] = Field(description="processes on loopback, or a Kubernetes cluster")
    release: Release = Field("guide", description="upstream release deployed: guide (the helmfile-era guide, EPP "
                                                  "v0.7) or llm-d-v0.10 (today's optimized-baseline guide, "
                                                  "llm-d-router v0.10)")
    model: str = Field("Qwen/Qwen3-0.6B", min_length=1, description="model served")
    replicas: int = Field(2, ge=1, le=64, description="decode replicas")
    namespace: str = Field(DEFAULT_NAMESPACE, description="Kubernetes namespace")
    release_postfix: str = Field(DEFAULT_POSTFIX, description="suffix of the release names")
    scheduler_config: str = Field("templates/scheduler/default-plugins.yaml",
                                  description="EndpointPickerConfig file, relative to the kit's root")
    local: LocalSettings | None = Field(None, description="settings of the local target")
    gateway: GatewaySettings | None = Field(None, description="cluster: gateway provider")
    hardware: HardwareSettings | None = Field(None, description="cluster: accelerator backend")
    model_server: ModelServerSettings | None = Field(None, description="cluster: model-server image and args")
    epp: EppSettings = Field(default_factory=EppSettings, description="cluster: endpoint picker")
    router: RouterSettings | None = Field(None, description="cluster, release llm-d-v0.10: standalone or gateway "
                                                            "mode, and the standalone proxy")

    @model_validator(mode="after")
    def _target_sections(self) -> Environment:
        if self.target == "local" and self.local is None:
            raise ValueError("local: a local environment needs its local settings")
        if self.router is not None and self.release != "llm-d-v0.10":
            raise ValueError(f"router: only release llm-d-v0.10 deploys llm-d-router's charts (release is "
                             f"{self.release!r})")
        if self.target == "cluster":
            needed = ("hardware", "model_server") if self.standalone else ("gateway", "hardware", "model_server")
            missing = [k for k in needed if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{', '.join(missing)}: a cluster environment needs these sections")
            family = EPP_IMAGE[self.release]
            if family not in self.epp.image:
                raise ValueError(f"epp.image: release {self.release} deploys the {family} image, not "
                                 f"{self.epp.image!r}; pick an environment of that release (kit envs) or set epp.image")
            if self.release == "llm-d-v0.10" and not self.standalone:
                assert self.gateway is not None
                if self.gateway.provider not in ROUTER_PROVIDERS:
                    raise ValueError(f"gateway.provider: llm-d-router v0.10's gateway mode lists "
                                     f"{', '.join(ROUTER_PROVIDERS)}, not {self.gateway.provider!r}")
        return self

    @property
    def picker_release(self) -> str:
        """The picker release (``kit.picker.load_picker_config``'s ``release``) this environment deploys."""
        return PICKER_RELEASE[self.release]

    @property
    def standalone(self) -> bool:
        """Release llm-d-v0.10 in standalone mode: no Gateway API objects, the EPP's proxy is the entry point."""
        return self.release == "llm-d-v0.10" and (self.router or RouterSettings()).mode == "standalone"

    @property
    def served_name(self) -> str:
        ms = self.model_server
        return (ms.served_model_name if ms and ms.served_model_name else None) or self.model

    @field_validator("namespace", "release_postfix")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if len(v) > 53 or not _DNS.match(v):
            raise ValueError(f"{v!r} must be a DNS label: lower-case letters, digits and '-', at most 53 characters")
        return v

    def scheduler_path(self) -> str:
        p = paths.ROOT / self.scheduler_config
        return str(p if not os.path.isabs(self.scheduler_config) else self.scheduler_config)


def available() -> dict[str, str]:
    """Environment name → description, from ``environments/*.yaml`` (a file named ``_*.yaml`` is a shared
    base that other files extend, not an environment)."""
    out = {}
    for f in sorted(paths.ENVIRONMENTS.glob("*.yaml")):
        if f.name.startswith("_"):
            continue
        data = yaml.safe_load(f.read_text()) or {}
        out[f.stem] = data.get("description", "")
    return out


def releases() -> dict[str, str]:
    """Environment name → the release it follows (its ``extends`` chain merged; ``guide`` by default)."""
    choices = available()
    return {name: str(_read(name, choices, ()).get("release", "guide")) for name in choices}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}``; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", [f"{item!r}: expected KEY=VALUE, e.g. replicas=4 or local.gateway_port=9000"])
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", [f"{item!r}: {part} is already set to a value"])
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, mapping by mapping (other values, lists too, are replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(name: str, choices: dict[str, str], chain: tuple[str, ...]) -> dict[str, Any]:
    """An environment file with its ``extends`` chain merged in (the file wins over its base)."""
    if name in chain:
        raise ConfigError(f"environments/{name}.yaml", [f"extends: circular ({' → '.join((*chain, name))})"])
    if name not in choices and not (name.startswith("_") and (paths.ENVIRONMENTS / f"{name}.yaml").is_file()):
        raise UnknownChoiceError("environment", name, choices)
    data = yaml.safe_load((paths.ENVIRONMENTS / f"{name}.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"environments/{name}.yaml", ["expected a mapping"])
    base = data.pop("extends", None)
    if base is None:
        return data
    return merge(_read(str(base), choices, (*chain, name)), data)


def load_environment(name: str, *, namespace: str | None = None, postfix: str | None = None,
                     overrides: dict[str, Any] | None = None) -> Environment:
    """Load, merge overrides, apply the naming rules, validate; errors name the file and field."""
    choices = available()
    if name not in choices:
        raise UnknownChoiceError("environment", name, choices)
    data = merge(_read(name, choices, ()), overrides or {})
    data["name"] = name
    data["namespace"] = namespace or os.environ.get("NAMESPACE") or data.get("namespace") or DEFAULT_NAMESPACE
    data["release_postfix"] = (postfix or os.environ.get("RELEASE_NAME_POSTFIX") or data.get("release_postfix")
                               or DEFAULT_POSTFIX)
    source = f"environments/{name}.yaml" + (" with --set" if overrides else "")
    return parse(Environment, data, source)
