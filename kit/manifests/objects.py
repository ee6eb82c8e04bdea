"""What both release tracks' renders share: the kit's labels and names, the hardened defaults, the
resources and security of a model server, and the ``Rendered`` result. ``kit.manifests.render`` renders
the guide's releases, ``kit.manifests.router`` today's llm-d; both build on this.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from kit.manifests.environments import Environment, merge

MODEL_PORT = 8000
EPP_PORT = 9002
HF_SECRET = "vllm-k8s-hf-token"
MANAGED_BY = "app.kubernetes.io/managed-by"
STACK = "kit.llm-d.ai/stack"
NAMESPACE = "kit.llm-d.ai/namespace"
RELEASE = "kit.llm-d.ai/release"
WAIVERS = "kit.llm-d.ai/security-waivers"
# Every container the kit renders: the Pod Security Standards' "restricted" profile, container by container.
HARDENED: dict[str, Any] = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
RELEASES = ("infra", "gaie", "ms", "route")  # the guide's; kit.manifests.router has today's
KIND_ORDER = ("Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding", "ResourceClaimTemplate", "AgentgatewayParameters", "Service", "Deployment", "Gateway",
              "InferencePool", "DestinationRule", "HealthCheckPolicy", "GCPBackendPolicy", "ServiceMonitor",
              "PodMonitor", "HTTPRoute")

def release_name(release: str, postfix: str) -> str:
    """The release label value: ``infra-<rn>`` and friends; the HTTPRoute ``llm-d-<rn>``; today's router
    chart is helm release ``<rn>`` itself."""
    if release == "route":
        return f"llm-d-{postfix}"
    return postfix if release == "router" else f"{release}-{postfix}"


def hf_secret(env: Environment) -> str:
    """The secret holding the Hugging Face token (key HF_TOKEN) that ``env``'s model servers reference."""
    return HF_SECRET if env.release == "guide" else "llm-d-hf-token"


def fit(stem: str, suffix: str, limit: int, key: tuple[str, ...], always: bool = False) -> str:
    """``stem + suffix`` in at most ``limit`` characters. A stem that is cut (every stem, with ``always``)
    ends in 8 hex digits of a hash of ``key``, so names that differ only past the cut stay distinct."""
    if not always and len(stem) + len(suffix) <= limit:
        return stem + suffix
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:8]
    return f"{stem[: limit - len(suffix) - len(digest) - 1].rstrip('-')}-{digest}{suffix}"


def _label_value(v: str) -> str:
    """A valid label value from free text (model names contain '/')."""
    v = re.sub(r"[^A-Za-z0-9._-]", "-", v)[-63:]
    return v.strip("-._") or "x"


@dataclass
class Rendered:
    env: Environment
    objects: list[dict[str, Any]]
    plugins_config: str

    def by_release(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for obj in self.objects:
            out.setdefault(obj["metadata"]["labels"][RELEASE], []).append(obj)
        return out


def _resources(env: Environment) -> dict[str, Any]:
    hw = env.hardware
    assert hw is not None
    amounts: dict[str, Any] = {}
    if hw.cpu:
        amounts["cpu"] = hw.cpu
    if hw.memory:
        amounts["memory"] = hw.memory
    if hw.accelerator_resource and hw.accelerators_per_replica:
        amounts[hw.accelerator_resource] = str(hw.accelerators_per_replica)
    out: dict[str, Any] = {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}
    if hw.dra_device_class:
        out["claims"] = [{"name": "accelerator"}]
    return out


def model_server_security(env: Environment) -> dict[str, Any]:
    """The model-server container's securityContext: the hardened defaults less what the environment waives,
    with the environment's own fields merged over them."""
    assert env.hardware is not None and env.model_server is not None
    base = {k: v for k, v in HARDENED.items()
            if not (k == "runAsNonRoot" and "run-as-non-root" in env.model_server.security_waivers)}
    return merge(base, env.hardware.security_context)
