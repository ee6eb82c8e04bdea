"""Validate rendered manifests offline: Kubernetes schemas, CRD schemas, and the rules that tie objects together.

* Built-in kinds are checked against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict:
  unknown fields are errors).
* Custom resources are checked against the ``openAPIV3Schema`` of their CRD: by default the pinned
  upstream CRDs shipped in ``kit/manifests/schemas/`` (its README names each one; release llm-d-v0.10
  takes its newer ones from ``schemas/llm-d-v0.10/`` and the rest from there), else a folder of
  CRD YAML files (``--schemas DIR``) or the cluster's own. Unknown fields are errors here too, except
  where the CRD preserves unknown fields.
* Cross-object rules: the pool selects the model-server pods and nothing else; its target port is a
  container port of those pods; the EPP Service name and port match the pool's endpoint-picker
  reference and select the EPP pods; the HTTPRoute routes to this pool through this Gateway; Service
  names fit DNS labels and label values fit Kubernetes' rules; and no secret value appears anywhere.
* Pod hardening, for every container of every pod template (the Pod Security Standards' "restricted"
  profile, plus one rule of the kit's): not privileged; ``allowPrivilegeEscalation: false``;
  capabilities dropped (``ALL``, nothing added but ``NET_BIND_SERVICE``); seccomp ``RuntimeDefault``
  or ``Localhost``; ``runAsNonRoot: true``; and no service-account token mounted into a pod whose
  service account no rendered (Cluster)RoleBinding names. A workload may waive ``run-as-non-root``,
  ``capabilities`` or ``seccomp`` in its ``kit.llm-d.ai/security-waivers`` annotation (from the
  environment's ``model_server.security_waivers``); a waived rule is a note, not a problem.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kit.errors import NotReadyError
from kit.manifests.environments import Environment
from kit.manifests.render import RELEASE, WAIVERS, Rendered, render

# jsonschema registers its format checkers at import, and the IRI one (rfc3987-syntax, when installed: JupyterLab
# brings it) compiles a Lark grammar, a second or more of every `kit` command's start-up. The kit validates no
# string formats, so that module is kept from loading here (unless something loaded it already).
_IRI = "rfc3987_syntax"
_block_iri = _IRI not in sys.modules
if _block_iri:
    sys.modules[_IRI] = None  # type: ignore[assignment]  # makes its import fail, as if it were not installed
try:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
finally:
    if _block_iri and sys.modules.get(_IRI, 0) is None:
        del sys.modules[_IRI]

K8S_VERSION = "1.34.0"
# libyaml's parser where PyYAML was built with it (its wheels are): the CRDs are megabytes, ten times faster to read
FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SHIPPED_SCHEMAS = Path(__file__).resolve().parent / "schemas"
# CRDs a release pins at other versions than the guide's (GAIE v1.6.0's InferencePool for llm-d-v0.10).
RELEASE_SCHEMAS = {"llm-d-v0.10": SHIPPED_SCHEMAS / "llm-d-v0.10"}
_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)", re.I)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties (as ``kubectl --validate=strict`` would)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


class CrdSchemas:
    """``(apiVersion, kind) → schema`` from CRD documents."""

    def __init__(self) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}

    def add_crd(self, crd: dict[str, Any]) -> None:
        if crd.get("kind") != "CustomResourceDefinition":
            return
        spec = crd["spec"]
        for v in spec.get("versions", []):
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                schema = copy.deepcopy(schema)
                props = schema.setdefault("properties", {})
                props["metadata"] = {"type": "object"}
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                self.schemas[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = _strict(schema)

    @classmethod
    @functools.lru_cache(maxsize=8)
    def from_dir(cls, folder: str | Path) -> CrdSchemas:
        out = cls()
        for f in sorted(Path(folder).glob("*.y*ml")):
            for doc in yaml.load_all(f.read_text(), Loader=FAST_YAML_LOADER):
                if isinstance(doc, dict):
                    out.add_crd(doc)
        return out

    @classmethod
    def shipped(cls, release: str = "guide") -> CrdSchemas:
        """The pinned upstream CRDs the kit ships for ``release`` (``kit/manifests/schemas/``)."""
        base = cls.from_dir(str(SHIPPED_SCHEMAS))
        own = RELEASE_SCHEMAS.get(release)
        return cls.from_dir(str(own)).with_fallback(base) if own else base

    def with_fallback(self, other: CrdSchemas) -> CrdSchemas:
        """These schemas, and ``other``'s for the kinds these do not define (a new object; neither changes)."""
        out = CrdSchemas()
        out.schemas = {**other.schemas, **self.schemas}
        return out

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return self.schemas.get((obj["apiVersion"], obj["kind"]))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _schema_problems(obj: dict[str, Any], crds: CrdSchemas | None, notes: list[str]) -> list[str]:
    ref = _ref(obj)
    schema = crds.get(obj) if crds else None
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{ref}: {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except SchemaNotFoundError:
        notes.append(f"{ref}: no schema for {obj['apiVersion']} {obj['kind']} (give --schemas with its CRD); "
                     "not validated")
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(top level)"
        return [f"{ref}: {path}: {err.message}"]
    return []


def _pods(objs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Deployment."""
    return [(o, o["spec"]["template"]) for o in objs if o["kind"] == "Deployment"]


def _cross_object(objs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    pods = _pods(objs)
    pools = by_kind.get("InferencePool", [])
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for pool in pools:
        ref = _ref(pool)
        sel = pool["spec"]["selector"]["matchLabels"]
        selected = [(w, t) for w, t in pods if _matches(sel, t["metadata"].get("labels", {}))]
        # Model servers are the workloads of the ms-<postfix> release; anything else selected is a mistake.
        serving = [(w, t) for w, t in selected
                   if w["metadata"].get("labels", {}).get(RELEASE, "").startswith("ms-")]
        if not serving:
            problems.append(f"{ref}: selector {sel} matches no model-server pods")
        for w, _ in selected:
            if (w, _) not in serving:
                problems.append(f"{ref}: selector also matches pods of {_ref(w)}, which do not serve the model")
        ports = {p["number"] for p in pool["spec"]["targetPorts"]}
        for w, t in serving:
            container_ports = {p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for port in ports - container_ports:
                problems.append(f"{ref}: target port {port} is not a container port of {_ref(w)} "
                                f"(it has {sorted(container_ports)})")
        epp = pool["spec"]["endpointPickerRef"]
        svc = services.get(epp["name"])
        if svc is None:
            problems.append(f"{ref}: endpointPickerRef names Service {epp['name']}, which is not rendered")
        else:
            if epp["port"]["number"] not in {p["port"] for p in svc["spec"]["ports"]}:
                problems.append(f"{ref}: endpointPickerRef port {epp['port']['number']} is not a port of "
                                f"Service/{svc['metadata']['name']}")
            if not any(_matches(svc["spec"]["selector"], t["metadata"].get("labels", {})) for _, t in pods):
                problems.append(f"Service/{svc['metadata']['name']}: selector matches no endpoint-picker pods")
    problems += _endpoint_selectors(pods)
    gateways = {g["metadata"]["name"] for g in by_kind.get("Gateway", [])}
    pool_ports = {p["metadata"]["name"]: {t["number"] for t in p["spec"]["targetPorts"]} for p in pools}
    for route in by_kind.get("HTTPRoute", []):
        ref = _ref(route)
        for parent in route["spec"].get("parentRefs", []):
            if parent.get("kind", "Gateway") == "Gateway" and parent["name"] not in gateways:
                problems.append(f"{ref}: parentRef Gateway {parent['name']} is not rendered")
        for rule in route["spec"].get("rules", []):
            for b in rule.get("backendRefs", []):
                if b.get("kind") != "InferencePool" or b.get("group") != "inference.networking.k8s.io":
                    problems.append(f"{ref}: backendRef {b.get('kind')}/{b.get('name')} is not an InferencePool")
                elif b["name"] not in pool_ports:
                    problems.append(f"{ref}: backendRef InferencePool {b['name']} is not rendered")
                elif "port" in b and b["port"] not in pool_ports[b["name"]]:
                    problems.append(f"{ref}: backendRef port {b['port']} is not a target port of the pool")
    for name in services:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            problems.append(f"Service/{name}: a Service name must be a DNS label of at most 63 characters")
    for o in objs:
        templates = [t["metadata"] for _, t in _pods([o])]
        for md in (o["metadata"], *templates):
            for key, value in (md.get("labels") or {}).items():
                if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                    problems.append(f"{_ref(o)}: label {key}={value!r} is not a valid label value (at most 63 "
                                    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")
    problems += _secret_values(objs)
    return problems


def _endpoint_selectors(pods: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """An EPP without a pool (llm-d-router's standalone mode, ``--endpoint-selector``) must select the
    model-server pods and nothing else, on a port they serve."""
    problems = []
    for w, t in pods:
        for c in t["spec"]["containers"]:
            args = c.get("args") or []
            if "--endpoint-selector" not in args:
                continue
            ref = f"{_ref(w)}: container {c['name']}: --endpoint-selector"
            i = args.index("--endpoint-selector")
            text = args[i + 1] if i + 1 < len(args) else ""
            sel = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
            if not sel:
                problems.append(f"{ref} is empty; the EPP refuses to start without one")
                continue
            selected = [(pw, pt) for pw, pt in pods if _matches(sel, pt["metadata"].get("labels", {}))]
            if not any(pw["metadata"].get("labels", {}).get(RELEASE, "").startswith("ms-") for pw, _ in selected):
                problems.append(f"{ref} {text} matches no model-server pods")
            for pw, _ in selected:
                if not pw["metadata"].get("labels", {}).get(RELEASE, "").startswith("ms-"):
                    problems.append(f"{ref} {text} also matches pods of {_ref(pw)}, which do not serve the model")
            if "--endpoint-target-ports" in args:
                ports = {int(p) for p in args[args.index("--endpoint-target-ports") + 1].split(",")}
                for pw, pt in selected:
                    served = {p["containerPort"] for cc in pt["spec"]["containers"] for p in cc.get("ports", [])}
                    for port in sorted(ports - served):
                        problems.append(f"{ref}: target port {port} is not a container port of {_ref(pw)}")
    return problems


WAIVABLE = ("run-as-non-root", "capabilities", "seccomp")


def _container_rules(pod: dict[str, Any], sc: dict[str, Any]) -> dict[str, str]:
    """rule → what is wrong, for one container's securityContext ``sc`` in pod spec ``pod``."""
    pod_sc = pod.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    added = sorted(set(caps.get("add") or []) - {"NET_BIND_SERVICE"})
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    wrong = {}
    if sc.get("privileged"):
        wrong["privileged"] = "runs privileged"
    if sc.get("allowPrivilegeEscalation") is not False:
        wrong["privilege-escalation"] = "allowPrivilegeEscalation is not false"
    if "ALL" not in (caps.get("drop") or []) or added:
        wrong["capabilities"] = f"adds capabilities {', '.join(added)}" if added else "does not drop ALL capabilities"
    if seccomp not in ("RuntimeDefault", "Localhost"):
        wrong["seccomp"] = f"seccomp profile is {seccomp or 'not set'} (RuntimeDefault or Localhost needed)"
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        wrong["run-as-non-root"] = "runAsNonRoot is not true"
    elif sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        wrong["run-as-non-root"] = "runAsUser is 0 (root)"
    return wrong


def _pod_security(objs: list[dict[str, Any]], notes: list[str]) -> list[str]:
    problems = []
    bound = {(s.get("namespace"), s["name"]) for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
             for s in o.get("subjects") or [] if s.get("kind") == "ServiceAccount"}
    accounts = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs
                if o["kind"] == "ServiceAccount"}
    for w, t in _pods(objs):
        ref, pod, ns = _ref(w), t["spec"], w["metadata"].get("namespace")
        waived = [r for r in ((w["metadata"].get("annotations") or {}).get(WAIVERS) or "").split(",") if r]
        problems += [f"{ref}: {WAIVERS} names {r!r}, which cannot be waived (only {', '.join(WAIVABLE)})"
                     for r in waived if r not in WAIVABLE]
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            for rule, what in _container_rules(pod, c.get("securityContext") or {}).items():
                if rule in waived:
                    notes.append(f"{ref}: container {c['name']}: rule {rule} waived by its {WAIVERS} annotation "
                                 f"({what}); not checked")
                else:
                    hint = f" (rule {rule}, waivable)" if rule in WAIVABLE else ""
                    problems.append(f"{ref}: container {c['name']}: {what}{hint}")
        account = pod.get("serviceAccountName", "default")
        automount = pod.get("automountServiceAccountToken",
                            accounts.get((ns, account), {}).get("automountServiceAccountToken", True))
        if automount and (ns, account) not in bound:
            problems.append(f"{ref}: mounts the token of ServiceAccount {account}, which no rendered RoleBinding or "
                            "ClusterRoleBinding names; set automountServiceAccountToken: false")
    return problems


def _secret_values(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        ref = _ref(o)
        if o["kind"] == "Secret" and (o.get("data") or o.get("stringData")):
            problems.append(f"{ref}: carries secret data; the kit only references secrets")
        for _, t in _pods([o]):
            for c in t["spec"].get("containers", []):
                for e in c.get("env", []):
                    if _SECRETISH.search(e["name"]) and "value" in e:
                        problems.append(f"{ref}: env {e['name']} of container {c['name']} has a literal value; "
                                        "use valueFrom.secretKeyRef")
        if _HF_TOKEN.search(yaml.safe_dump(o)):
            problems.append(f"{ref}: contains what looks like a Hugging Face token")
    return problems


def validate_objects(objs: list[dict[str, Any]], crds: CrdSchemas | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes): every schema and cross-object problem; notes list what could not be checked."""
    problems: list[str] = []
    notes: list[str] = []
    for obj in objs:
        problems += _schema_problems(obj, crds, notes)
    problems += _cross_object(objs)
    problems += _pod_security(objs, notes)
    return problems, notes


def validate(rendered: Rendered, schemas: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Validate against the CRDs in folder ``schemas``, or the shipped ones."""
    crds = CrdSchemas.from_dir(str(Path(schemas).resolve())) if schemas else CrdSchemas.shipped(rendered.env.release)
    return validate_objects(rendered.objects, crds)


def checked_render(env: Environment, scheduler_config: str | None = None,
                   crds: CrdSchemas | None = None) -> tuple[Rendered, list[str]]:
    """Render and validate (custom resources against ``crds``, by default the pinned CRDs the kit ships for
    the environment's release); return the manifests and the notes on what could not be checked; raise
    NotReadyError listing every problem."""
    rendered = render(env, scheduler_config)
    crds = CrdSchemas.shipped(env.release) if crds is None else crds
    problems, notes = validate_objects(rendered.objects, crds)
    if problems:
        raise NotReadyError(problems, f"{len(problems)} problem(s) in the {len(rendered.objects)} objects "
                                      f"rendered for {env.name}")
    return rendered, notes
