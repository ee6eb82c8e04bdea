"""The connection to a cluster, on the official ``kubernetes`` client: discovery and typed access to any kind.

``Cluster`` keeps the kubeconfig and context it was made from (port-forwards reuse them), resolves
kinds through discovery, and offers the few verbs the target needs, shaped like kubectl's: ``get``,
``list`` (by label selector), server-side ``apply`` (field manager ``kit``, optional dry run),
``delete``, the cluster's own CRD schemas, and GETs through the API server's pod proxy.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from kit.errors import KitError
from kit.manifests.validate import CrdSchemas

FIELD_MANAGER = "kit"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "GatewayClass", "Namespace", "CustomResourceDefinition"}
API_VERSIONS = {  # where each kind the kit renders lives, for listing by label
    "ServiceAccount": "v1", "Secret": "v1", "ConfigMap": "v1", "Service": "v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ResourceClaimTemplate": "resource.k8s.io/v1", "AgentgatewayParameters": "agentgateway.dev/v1alpha1",
    "Deployment": "apps/v1", "Gateway": "gateway.networking.k8s.io/v1",
    "InferencePool": "inference.networking.k8s.io/v1", "DestinationRule": "networking.istio.io/v1beta1",
    "HealthCheckPolicy": "networking.gke.io/v1", "GCPBackendPolicy": "networking.gke.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1", "PodMonitor": "monitoring.coreos.com/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}
def ref(obj: dict[str, Any]) -> str:
    """``Kind/name``, as kubectl prints it."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class Cluster:
    """A connection to the API server: typed access to any kind through discovery."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 api_client: k8s.ApiClient | None = None):
        self.kubeconfig, self.context = kubeconfig, context
        try:
            self.api = api_client or k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
        except (k8s_config.ConfigException, OSError) as err:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise KitError(f"cannot load a kubeconfig ({where}): {err}") from None
        self._dyn: DynamicClient | None = None
        self._discovery_dir: tempfile.TemporaryDirectory | None = None

    @property
    def dyn(self) -> DynamicClient:
        """The dynamic client, discovering afresh. The kubernetes client's default discovery cache is a file per
        API server address in the shared temp folder, read back by any later process: it would answer for a
        cluster recreated at the same address (kind, minikube) or with CRDs removed since. Each ``Cluster``
        keeps its own, in a folder of its own that goes with it."""
        if self._dyn is None:
            self._discovery_dir = tempfile.TemporaryDirectory(prefix="kit-discovery-")
            try:
                self._dyn = DynamicClient(self.api, cache_file=str(Path(self._discovery_dir.name) / "discovery.json"))
            except Exception as err:  # urllib3 / API errors: the server is not reachable
                raise KitError(f"the Kubernetes API at {self.api.configuration.host} is not reachable: {err}") from None
        return self._dyn

    def resource(self, api_version: str, kind: str):
        try:
            return self.dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return None

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        res = self.resource(obj["apiVersion"], obj["kind"])
        if res is None:
            return None
        try:
            ns = obj["metadata"].get("namespace") if res.namespaced else None
            return _dict(res.get(name=obj["metadata"]["name"], namespace=ns))
        except NotFoundError:
            return None

    def apply(self, obj: dict[str, Any], dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        if res is None:
            raise KitError(f"{ref(obj)}: the cluster does not serve {obj['apiVersion']} {obj['kind']}")
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER}
        if dry_run:
            kwargs["dry_run"] = "All"
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        return _dict(res.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=ns,
                                           force_conflicts=force or None, **kwargs))

    def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        res = self.resource(api_version, kind)
        if res is None:
            return []
        items = res.get(namespace=namespace if res.namespaced else None, label_selector=selector)
        return [_dict(i) for i in _dict(items).get("items", [])]

    def delete(self, obj: dict[str, Any]) -> None:
        res = self.resource(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace") if res.namespaced else None
        with contextlib.suppress(NotFoundError):
            res.delete(name=obj["metadata"]["name"], namespace=ns, body={"propagationPolicy": "Foreground"})

    def crd_schemas(self) -> CrdSchemas:
        """The cluster's own CRDs, to validate custom resources against what it will accept."""
        out = CrdSchemas()
        for crd in self.list("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, ""):
            out.add_crd(crd)
        return out

    def pod_get(self, namespace: str, pod: str, port: int, path: str, timeout: float = 10.0) -> str:
        """GET ``path`` on a pod's port through the API server's pod proxy."""
        resp = k8s.CoreV1Api(self.api).connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{port}", namespace, path.lstrip("/"), _preload_content=False, _request_timeout=timeout)
        return resp.data.decode()
