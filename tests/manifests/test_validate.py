"""Validation catches what would break on a cluster: schema errors and broken links between objects."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from kit.manifests.environments import load_environment
from kit.manifests.render import render
from kit.manifests.validate import CrdSchemas, checked_render, validate, validate_objects
from tests.conftest import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base():
    return render(load_environment("istio")).objects


def find(objs, kind, suffix=""):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))


def pod(objs, suffix):
    return find(objs, "Deployment", suffix)["spec"]["template"]["spec"]


def broken(base, change):
    objs = copy.deepcopy(base)
    change(objs)
    problems, _ = validate_objects(objs, CrdSchemas.from_dir(str(SCHEMAS)))
    return problems


CASES = [
    ("pool-port", lambda o: find(o, "InferencePool")["spec"]["targetPorts"].__setitem__(0, {"number": 9000}),
     "target port 9000 is not a container port of Deployment/ms-inference-scheduling-llm-d-modelservice-decode"),
    ("epp-port", lambda o: find(o, "InferencePool")["spec"]["endpointPickerRef"]["port"].__setitem__("number", 9100),
     "endpointPickerRef port 9100 is not a port of Service/gaie-inference-scheduling-epp"),
    ("epp-name", lambda o: find(o, "InferencePool")["spec"]["endpointPickerRef"].__setitem__("name", "elsewhere"),
     "endpointPickerRef names Service elsewhere, which is not rendered"),
    ("selector-none", lambda o: find(o, "InferencePool")["spec"]["selector"]["matchLabels"].__setitem__(
        "llm-d.ai/guide", "other"), "matches no model-server pods"),
    ("selector-too-wide", lambda o: find(o, "Deployment", "-epp")["spec"]["template"]["metadata"]["labels"].update(
        {"llm-d.ai/guide": "inference-scheduling", "llm-d.ai/inference-serving": "true"}),
     "selector also matches pods of Deployment/gaie-inference"),
    ("route-gateway", lambda o: find(o, "HTTPRoute")["spec"]["parentRefs"][0].__setitem__("name", "other-gw"),
     "parentRef Gateway other-gw is not rendered"),
    ("route-pool", lambda o: find(o, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0].__setitem__("name", "p"),
     "backendRef InferencePool p is not rendered"),
    ("route-port", lambda o: find(o, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0].__setitem__("port", 80),
     "backendRef port 80 is not a target port of the pool"),
    ("secret-literal", lambda o: find(o, "Deployment", "-decode")["spec"]["template"]["spec"]["containers"][0][
        "env"].append({"name": "HF_TOKEN", "value": "x"}), "env HF_TOKEN of container vllm has a literal value"),
    ("secret-data", lambda o: find(o, "Secret").__setitem__("data", {"token": "c2VjcmV0"}), "carries secret data"),
    ("hf-token-text", lambda o: find(o, "ConfigMap", "-epp")["data"].__setitem__(
        "note", "hf_" + "a" * 34), "looks like a Hugging Face token"),
    ("builtin-unknown-field", lambda o: find(o, "Deployment", "-decode")["spec"].__setitem__("replica", 3),
     "Deployment/ms-inference-scheduling-llm-d-modelservice-decode: spec: Additional properties are not allowed"),
    ("builtin-wrong-type", lambda o: find(o, "Service")["spec"]["ports"][0].__setitem__("port", "ninety"),
     "Service/gaie-inference-scheduling-epp: spec.ports.0.port"),
    ("crd-unknown-field", lambda o: find(o, "InferencePool")["spec"].__setitem__("targetPort", 8000),
     "InferencePool/gaie-inference-scheduling: spec: Additional properties are not allowed ('targetPort'"),
    ("crd-enum", lambda o: find(o, "InferencePool")["spec"]["endpointPickerRef"].__setitem__("failureMode", "Open"),
     "spec.endpointPickerRef.failureMode: 'Open' is not one of"),
    ("long-service-name", lambda o: find(o, "Service")["metadata"].__setitem__("name", "s" * 70),
     "a Service name must be a DNS label of at most 63 characters"),
    ("no-security-context", lambda o: pod(o, "-decode")["containers"][0].pop("securityContext"),
     "Deployment/ms-inference-scheduling-llm-d-modelservice-decode: container vllm: allowPrivilegeEscalation is not "
     "false"),
    ("no-capability-drop", lambda o: pod(o, "-decode")["containers"][0]["securityContext"].pop("capabilities"),
     "container vllm: does not drop ALL capabilities (rule capabilities, waivable)"),
    ("added-capability", lambda o: pod(o, "-decode")["containers"][0]["securityContext"]["capabilities"].__setitem__(
        "add", ["SYS_NICE"]), "container vllm: adds capabilities SYS_NICE"),
    ("no-seccomp", lambda o: pod(o, "-decode")["containers"][0]["securityContext"].pop("seccompProfile"),
     "container vllm: seccomp profile is not set (RuntimeDefault or Localhost needed)"),
    ("unconfined", lambda o: pod(o, "-epp")["containers"][0]["securityContext"].__setitem__(
        "seccompProfile", {"type": "Unconfined"}), "container epp: seccomp profile is Unconfined"),
    ("root", lambda o: pod(o, "-decode")["containers"][0]["securityContext"].pop("runAsNonRoot"),
     "container vllm: runAsNonRoot is not true (rule run-as-non-root, waivable)"),
    ("root-uid", lambda o: pod(o, "-epp")["containers"][0]["securityContext"].__setitem__("runAsUser", 0),
     "container epp: runAsUser is 0 (root)"),
    ("escalation", lambda o: pod(o, "-epp")["containers"][0]["securityContext"].__setitem__(
        "allowPrivilegeEscalation", True), "Deployment/gaie-inference-scheduling-epp: container epp: "
                                           "allowPrivilegeEscalation is not false"),
    ("privileged", lambda o: pod(o, "-epp")["containers"][0]["securityContext"].__setitem__("privileged", True),
     "container epp: runs privileged"),
    ("token", lambda o: (pod(o, "-decode").pop("automountServiceAccountToken"),
                         find(o, "ServiceAccount", "-modelservice").pop("automountServiceAccountToken")),
     "mounts the token of ServiceAccount ms-inference-scheduling-llm-d-modelservice, which no rendered RoleBinding"),
    ("unwaivable", lambda o: find(o, "Deployment", "-decode")["metadata"].__setitem__(
        "annotations", {"kit.llm-d.ai/security-waivers": "privileged"}), "names 'privileged', which cannot be waived"),
    ("long-label-value", lambda o: find(o, "Gateway")["metadata"]["labels"].__setitem__("app.kubernetes.io/gateway",
                                                                                      "g" * 64),
     "Gateway/infra-inference-scheduling-inference-gateway: label app.kubernetes.io/gateway='gggg"),
]


@pytest.mark.parametrize(("change", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_break_is_reported(base, change, needle):
    problems = broken(base, change)
    assert any(needle in p for p in problems), problems


def test_the_unbroken_render_is_clean(base):
    assert broken(base, lambda o: None) == []


def test_a_waived_rule_is_a_note_not_a_problem(base):
    objs = copy.deepcopy(base)
    pod(objs, "-decode")["containers"][0]["securityContext"].pop("runAsNonRoot")
    waiver = {"kit.llm-d.ai/security-waivers": "run-as-non-root"}
    find(objs, "Deployment", "-decode")["metadata"]["annotations"] = waiver
    problems, notes = validate_objects(objs, CrdSchemas.shipped())
    assert problems == []
    assert notes == ["Deployment/ms-inference-scheduling-llm-d-modelservice-decode: container vllm: rule "
                     "run-as-non-root waived by its kit.llm-d.ai/security-waivers annotation (runAsNonRoot is not "
                     "true); not checked"]


def test_the_epp_keeps_its_token_because_its_service_account_is_bound(base):
    objs = copy.deepcopy(base)
    assert pod(objs, "-epp")["automountServiceAccountToken"] is True
    objs = [o for o in objs if o["kind"] not in ("RoleBinding", "ClusterRoleBinding")]
    problems, _ = validate_objects(objs, CrdSchemas.shipped())
    assert problems == ["Deployment/gaie-inference-scheduling-epp: mounts the token of ServiceAccount "
                        "gaie-inference-scheduling-epp, which no rendered RoleBinding or ClusterRoleBinding names; "
                        "set automountServiceAccountToken: false"]


def test_custom_resources_are_checked_offline_against_the_shipped_crds_by_default():
    rendered, notes = checked_render(load_environment("istio"))
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Gateway", "HTTPRoute", "InferencePool", "DestinationRule", "PodMonitor", "ServiceMonitor"} <= kinds
    assert notes == []  # every custom resource had a schema
    problems, _ = validate(rendered)
    assert problems == []
    _, without = validate_objects(rendered.objects, CrdSchemas())
    assert any("InferencePool/gaie-inference-scheduling: no schema" in n for n in without)


def test_the_shipped_crds_are_package_data_with_their_provenance():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kit.manifests"]
    files = sorted(p for p in SCHEMAS.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".yaml"]) == 10
    readme = (SCHEMAS / "README.md").read_text()
    for f in files:
        assert any(f.relative_to(SCHEMAS.parent).match(glob) for glob in data), f"{f.name} is not package data"
        if f.suffix == ".yaml":
            name = f.relative_to(SCHEMAS).as_posix()
            assert f"`{name}`" in readme, f"{name} has no provenance line in schemas/README.md"


@pytest.mark.slow
def test_validate_cli_lists_every_problem_and_exits_1(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "kit", "validate", "-e", "gke"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "objects for gke are valid (2 not checked)" in ok.stdout
    assert ok.stdout.count("note:") == 2 and "HealthCheckPolicy" in ok.stdout and "GCPBackendPolicy" in ok.stdout
    empty = subprocess.run([sys.executable, "-m", "kit", "validate", "-e", "gke", "--schemas", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0 and "note: InferencePool/gaie-inference-scheduling: no schema" in empty.stdout
    bad = subprocess.run([sys.executable, "-m", "kit", "validate", "-e", "istio", "--set", "replicas=-1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "replicas: Input should be greater than or equal to 1" in bad.stderr


def test_the_validator_starts_without_jsonschemas_iri_checker_and_leaves_it_importable():
    """That checker compiles a grammar at import (a second of every `kit` command's start-up); the kit checks no
    string formats. Anything that wants the module later still gets it."""
    code = ("import sys, kit.manifests.validate as v; assert 'rfc3987_syntax' not in sys.modules; "
            "assert v.jsonschema.Draft202012Validator({'type': 'object'}).is_valid({})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
