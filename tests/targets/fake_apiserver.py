"""A fake Kubernetes API server over real HTTP, implementing what the kit uses.

Discovery (/version, /api, /apis, group-version resource lists), bearer-token auth, GET/LIST with
equality label selectors, DELETE, server-side apply (``application/apply-patch+yaml`` with
``fieldManager``, ``force`` and ``dryRun=All``) with per-manager field ownership, ``managedFields``,
conflicts (409) and removal of fields a manager stops applying, generation and resourceVersion.
Names and labels are checked as the API server checks them (422 Invalid).
Custom resources are served once their CRD is installed. Simple controllers play the cluster's
part: Deployments roll out (pods appear, status counts), Gateways become Programmed when their class
exists, HTTPRoutes and InferencePools are Accepted when what they reference exists. The pod proxy
forwards ``/api/v1/namespaces/NS/pods/NAME:PORT/proxy/...`` to a URL the test chooses.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from kit.manifests.validate import FAST_YAML_LOADER
from kit.targets.processes import free_port


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN = [
    Kind("", "v1", "namespaces", "Namespace", False), Kind("", "v1", "pods", "Pod"),
    Kind("", "v1", "services", "Service"), Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "secrets", "Secret"), Kind("", "v1", "serviceaccounts", "ServiceAccount"),
    Kind("apps", "v1", "deployments", "Deployment"),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    Kind("resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate"),
]


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_RBAC = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _invalid(kind: str, md: dict[str, Any]) -> list[str]:
    """What the API server's validation would refuse in an object's name and labels."""
    out = []
    name = md.get("name", "")
    if kind in ("Service", "Namespace"):
        if len(name) > 63 or not _DNS_LABEL.match(name):
            out.append(f"metadata.name: Invalid value: {name!r}: must be a DNS label of at most 63 characters")
    elif kind in _RBAC:
        if name in (".", "..") or "/" in name or "%" in name:
            out.append(f"metadata.name: Invalid value: {name!r}: may not contain '/' or '%'")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        out.append(f"metadata.name: Invalid value: {name!r}: must be a DNS subdomain of at most 253 characters")
    for key, value in (md.get("labels") or {}).items():
        prefix, _, local = key.rpartition("/")
        if len(local) > 63 or not _LABEL_PART.match(local) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            out.append(f"metadata.labels: Invalid value: {key!r}: not a valid label key")
        if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_PART.match(value)):
            out.append(f"metadata.labels: Invalid value: {value!r}: a label value must be at most 63 characters "
                       "of letters, digits, '-', '_' or '.', beginning and ending with a letter or digit")
    return out


def _leaves(obj: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Leaf paths of an applied config (lists are atomic)."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, (*prefix, k)))
        return out
    return {prefix: obj}


def _fields_v1(paths: list[tuple]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def _set(obj: dict, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        obj = obj.setdefault(part, {})
    obj[path[-1]] = copy.deepcopy(value)


def _matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@functools.cache
def _crds(folder: str) -> tuple[dict[str, Any], ...]:
    """The CRDs in a folder's YAML files, parsed once per process."""
    docs = (doc for f in sorted(Path(folder).glob("*.yaml"))
            for doc in yaml.load_all(f.read_text(), Loader=FAST_YAML_LOADER))
    return tuple(d for d in docs if d and d.get("kind") == "CustomResourceDefinition")


def _cond(kind: str, ok: bool, reason: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": reason,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


class FakeCluster:
    """Start with ``with FakeCluster() as fake:``; ``fake.kubeconfig(path)`` points a client at it."""

    def __init__(self, rollout_seconds: float = 0.3, port: int | None = None):
        self.token = uuid.uuid4().hex
        self.kinds: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in BUILTIN}
        self.store: dict[tuple[str, str, str, str], dict[str, Any]] = {}  # (apiVersion, kind, ns, name)
        self.applied: dict[tuple[str, str, str, str], dict[str, dict[tuple, Any]]] = {}  # owner → leaves
        self.rollout_seconds = rollout_seconds
        self.failing_images: set[str] = set()  # Deployments using these never become available
        self.gateway_addresses: dict[str, str] = {}  # Gateway name → status address
        self.pod_backends: dict[str, str] = {}  # pod name prefix → URL for the pod proxy
        self.requests: list[tuple[str, str]] = []
        self._rv = 1
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # ------------------------------------------------------------------ test-side helpers
    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return path

    def install_crds(self, folder: str | Path, only: tuple[str, ...] = ()) -> None:
        for doc in _crds(str(folder)):
            if not only or doc["spec"]["group"] in only:
                self.create(doc)  # a copy: the parsed documents are shared between fakes

    def serve_kind(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True) -> None:
        """Serve a custom kind without its CRD document (for CRDs the kit does not ship in kit/manifests/schemas)."""
        self.kinds[(group, version, plural)] = Kind(group, version, plural, kind, namespaced)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            obj = copy.deepcopy(obj)
            md = obj.setdefault("metadata", {})
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("generation", 1)
            md["resourceVersion"] = self._next_rv()
            self.store[self._key(obj)] = obj
            if obj["kind"] == "CustomResourceDefinition":
                spec = obj["spec"]
                for v in spec["versions"]:
                    if v.get("served", True):
                        k = Kind(spec["group"], v["name"], spec["names"]["plural"], spec["names"]["kind"],
                                 spec.get("scope", "Namespaced") == "Namespaced")
                        self.kinds[(k.group, k.version, k.plural)] = k
            self._reconcile()
            return obj

    def objects(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (_, k, _, _), o in self.store.items() if k == kind]

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self._lock:
            for (_, k, ns, n), o in self.store.items():
                if k == kind and n == name and ns == namespace:
                    return copy.deepcopy(o)
        return None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeCluster:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            controllers = self._loop.create_task(self._controllers())
            ready.set()
            self._loop.run_forever()
            controllers.cancel()
            self._loop.run_until_complete(asyncio.gather(controllers, return_exceptions=True))
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    # ------------------------------------------------------------------ internals
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
        md = obj["metadata"]
        return obj["apiVersion"], obj["kind"], md.get("namespace", ""), md["name"]

    async def _controllers(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            with self._lock:
                self._reconcile()

    def _reconcile(self) -> None:
        now = time.monotonic()
        objs = list(self.store.values())
        classes = {o["metadata"]["name"] for o in objs if o["kind"] == "GatewayClass"}
        gateways = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == "Gateway"}
        pools = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == "InferencePool"}
        routed: dict[tuple, list[str]] = {}
        for o in objs:
            kind, md, st = o["kind"], o["metadata"], o.setdefault("status", {})
            ns = md.get("namespace")
            if kind == "Deployment":
                self._rollout(o, now)
            elif kind == "Gateway":
                ok = o["spec"]["gatewayClassName"] in classes
                st["conditions"] = [_cond("Accepted", ok, "Accepted" if ok else "NoSuchGatewayClass"),
                                    _cond("Programmed", ok, "Programmed" if ok else "Pending")]
                if ok and md["name"] in self.gateway_addresses:
                    st["addresses"] = [{"type": "IPAddress", "value": self.gateway_addresses[md["name"]]}]
            elif kind == "HTTPRoute":
                parents = []
                for p in o["spec"].get("parentRefs", []):
                    gw_ok = (ns, p["name"]) in gateways
                    refs_ok = all((ns, b["name"]) in pools for r in o["spec"].get("rules", [])
                                  for b in r.get("backendRefs", []))
                    parents.append({"parentRef": p, "controllerName": "fake.example/gateway", "conditions": [
                        _cond("Accepted", gw_ok, "Accepted" if gw_ok else "NoMatchingParent"),
                        _cond("ResolvedRefs", refs_ok, "ResolvedRefs" if refs_ok else "BackendNotFound")]})
                    if gw_ok:
                        for r in o["spec"].get("rules", []):
                            for b in r.get("backendRefs", []):
                                routed.setdefault((ns, b["name"]), []).append(p["name"])
                st["parents"] = parents
        for o in objs:
            if o["kind"] == "InferencePool":
                key = (o["metadata"].get("namespace"), o["metadata"]["name"])
                o["status"] = {"parents": [{"parentRef": {"kind": "Gateway", "name": g},
                                            "conditions": [_cond("Accepted", True, "Accepted")]}
                                           for g in routed.get(key, [])]}

    def _rollout(self, dep: dict[str, Any], now: float) -> None:
        md, spec, st = dep["metadata"], dep["spec"], dep.setdefault("status", {})
        started = md.setdefault("annotations", {}).setdefault("fake/rollout-started", str(now))
        if md["generation"] != st.get("observedGeneration"):
            md["annotations"]["fake/rollout-started"] = started = str(now)
            st.update(observedGeneration=md["generation"], replicas=spec.get("replicas", 1), updatedReplicas=0,
                      availableReplicas=0, readyReplicas=0)
        images = {c["image"] for c in spec["template"]["spec"]["containers"]}
        if images & self.failing_images:
            st["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                 "message": f"ReplicaSet of {md['name']} has timed out progressing: ImagePullBackOff"}]
            return
        if now - float(started) < self.rollout_seconds:
            return
        n = spec.get("replicas", 1)
        st.update(replicas=n, updatedReplicas=n, availableReplicas=n, readyReplicas=n,
                  conditions=[{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}])
        ns = md.get("namespace", "")
        labels = spec["template"]["metadata"].get("labels", {})
        wanted = {f"{md['name']}-{md['generation']}-{i}" for i in range(n)}
        for key, o in list(self.store.items()):
            owned = o["kind"] == "Pod" and o["metadata"].get("ownerName") == md["name"]
            if owned and o["metadata"]["name"] not in wanted:
                del self.store[key]
        for name in sorted(wanted):
            if ("v1", "Pod", ns, name) not in self.store:
                self.store[("v1", "Pod", ns, name)] = {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerName": md["name"],
                                 "uid": str(uuid.uuid4()), "resourceVersion": self._next_rv()},
                    "spec": copy.deepcopy(spec["template"]["spec"]),
                    "status": {"phase": "Running", "podIP": "127.0.0.1",
                               "conditions": [{"type": "Ready", "status": "True"}]}}

    def _status(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                  "reason": reason, "code": code}, status=code)

    def _resolve(self, parts: list[str]) -> tuple[Kind | None, str, str, str, list[str]]:
        """URL path parts → (kind, namespace, name, subresource, rest)."""
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        ns = ""
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        plural = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return self.kinds.get((group, version, plural)), ns, name, sub, rest[3:]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        parts = [p for p in request.path.split("/") if p]
        if request.path.rstrip("/") == "/version":
            return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "fake",
                                      "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                                      "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
        with self._lock:
            disco = self._discovery(parts)
        if disco is not None:
            return web.json_response(disco)
        if not parts or parts[0] not in ("api", "apis") or len(parts) < 3:
            return self._status(404, "NotFound", f"the server could not find {request.path}")
        kind, ns, name, sub, rest = self._resolve(parts)
        if kind is None:
            return self._status(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        if sub == "proxy" and kind.kind == "Pod":
            return await self._proxy(name, rest, request)
        with self._lock:
            if request.method == "GET":
                return self._get(kind, ns, name, request.query.get("labelSelector", ""))
            if request.method == "DELETE":
                return self._delete(kind, ns, name)
            if request.method == "PATCH":
                if request.content_type != "application/apply-patch+yaml":
                    return self._status(415, "UnsupportedMediaType", f"{request.content_type} is not supported")
                body = yaml.safe_load(await request.text())
                return self._apply(kind, ns, name, body, request.query)
        return self._status(405, "MethodNotAllowed", f"{request.method} is not supported by the fake")

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        kinds = list(self.kinds.values())
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for k in kinds:
                if k.group:
                    groups.setdefault(k.group, [])
                    if k.version not in groups[k.group]:
                        groups[k.group].append(k.version)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
        gv = None
        if len(parts) == 2 and parts[0] == "api":
            gv = ("", parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            gv = (parts[1], parts[2])
        if gv is None:
            return None
        res = [{"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced, "kind": k.kind,
                "verbs": ["get", "list", "patch", "delete"]} for k in kinds if (k.group, k.version) == gv]
        res += [{"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced, "kind": k.kind,
                 "verbs": ["get", "patch"]} for k in kinds if (k.group, k.version) == gv]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "/".join(filter(None, gv)),
                "resources": res}

    def _get(self, kind: Kind, ns: str, name: str, selector: str) -> web.Response:
        if name:
            obj = self.store.get((kind.api_version, kind.kind, ns, name))
            if obj is None:
                return self._status(404, "NotFound", f'{kind.plural} "{name}" not found')
            return web.json_response(obj)
        items = [o for (av, k, ons, _), o in self.store.items()
                 if av == kind.api_version and k == kind.kind and (not ns or ons == ns)
                 and _matches(selector, o["metadata"].get("labels") or {})]
        return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                  "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    def _delete(self, kind: Kind, ns: str, name: str) -> web.Response:
        key = (kind.api_version, kind.kind, ns, name)
        if key not in self.store:
            return self._status(404, "NotFound", f'{kind.plural} "{name}" not found')
        del self.store[key]
        self.applied.pop(key, None)
        if kind.kind == "Deployment":
            for k, o in list(self.store.items()):
                if o["kind"] == "Pod" and o["metadata"].get("ownerName") == name and k[2] == ns:
                    del self.store[k]
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def _apply(self, kind: Kind, ns: str, name: str, body: Any, query: Any) -> web.Response:
        manager = query.get("fieldManager")
        if not manager:
            return self._status(400, "BadRequest", "PATCH with apply requires a fieldManager")
        if not isinstance(body, dict) or body.get("kind") != kind.kind or body.get("apiVersion") != kind.api_version:
            return self._status(400, "BadRequest", "the body's apiVersion and kind do not match the URL")
        md = body.get("metadata") or {}
        if md.get("name") != name:
            return self._status(400, "BadRequest", "the body's metadata.name does not match the URL")
        invalid = _invalid(kind.kind, md)
        if invalid:
            return self._status(422, "Invalid", f'{kind.kind} "{name}" is invalid: ' + "; ".join(invalid))
        if kind.namespaced:
            if md.get("namespace", ns) != ns:
                return self._status(400, "BadRequest", "the body's namespace does not match the URL")
            if ("v1", "Namespace", "", ns) not in self.store:
                return self._status(404, "NotFound", f'namespaces "{ns}" not found')
        key = (kind.api_version, kind.kind, ns, name)
        leaves = {p: v for p, v in _leaves(body).items() if p[:1] != ("status",)}
        owners = copy.deepcopy(self.applied.get(key, {}))
        force = query.get("force") == "true"
        conflicts = []
        for other, their in owners.items():
            if other == manager:
                continue
            for path, value in list(their.items()):
                if path in leaves and leaves[path] != value and path[:2] != ("metadata", "name"):
                    if force:
                        del their[path]
                    else:
                        conflicts.append(f'.{".".join(map(str, path))} (owned by "{other}")')
        if conflicts:
            return self._status(409, "Conflict", f"Apply failed with {len(conflicts)} conflicts: "
                                                 + "; ".join(conflicts))
        owners[manager] = leaves
        old = self.store.get(key)
        new: dict[str, Any] = {}
        for mgr_leaves in owners.values():
            for path, value in mgr_leaves.items():
                _set(new, path, value)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        meta = new.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = ns
        old_md = (old or {}).get("metadata", {})
        meta["uid"] = old_md.get("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = old_md.get("creationTimestamp", "2026-01-01T00:00:00Z")
        spec_changed = old is None or json.dumps(old.get("spec"), sort_keys=True) != json.dumps(new.get("spec"),
                                                                                                sort_keys=True)
        meta["generation"] = old_md.get("generation", 0) + (1 if spec_changed else 0)
        if old_md.get("annotations", {}).get("fake/rollout-started") and not spec_changed:
            meta.setdefault("annotations", {})["fake/rollout-started"] = old_md["annotations"]["fake/rollout-started"]
        meta["managedFields"] = [{"manager": m, "operation": "Apply", "apiVersion": kind.api_version,
                                  "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(list(ls))}
                                 for m, ls in owners.items()]
        if old and "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        if query.get("dryRun") == "All":
            meta["resourceVersion"] = old_md.get("resourceVersion", "0")
            return web.json_response(new)
        meta["resourceVersion"] = self._next_rv()
        self.store[key] = new
        self.applied[key] = owners
        if kind.kind == "CustomResourceDefinition":
            self.create(new)
        self._reconcile()
        return web.json_response(self.store[key], status=201 if old is None else 200)

    async def _proxy(self, name_port: str, rest: list[str], request: web.Request) -> web.StreamResponse:
        name = name_port.split(":")[0]
        target = next((url for prefix, url in self.pod_backends.items() if name.startswith(prefix)), None)
        if target is None:
            return self._status(503, "ServiceUnavailable", f"no backend for pod {name}")
        async with aiohttp.ClientSession() as s, s.get(target + "/" + "/".join(rest)) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)
