"""Loading EndpointPickerConfig: upstream's defaults, every error path, warnings, and docstring examples."""

import inspect
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from kit.errors import ConfigError
from kit.picker import load_picker_config, load_picker_file
from kit.picker.registry import default

registry = default()

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load(body: str):
    return load_picker_config(HEAD + textwrap.dedent(body))


def test_the_guide_default_profile():
    cfg = load_picker_file(ROOT / "templates/scheduler/default-plugins.yaml")
    [profile] = cfg.scheduler.profiles.values()
    assert {s.type: w for s, w in profile.scorers} == {
        "queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    assert profile.picker.type == "max-score-picker"  # implicit
    assert cfg.scheduler.handler.type == "single-profile-handler"  # implicit
    assert cfg.warnings == []
    sat = cfg.scheduler.saturation
    assert (sat.queue_depth_threshold, sat.kv_cache_util_threshold, sat.metrics_staleness_threshold) == (5, 0.8, 0.2)


def test_without_profiles_every_plugin_joins_one_default_profile_with_weight_one():
    cfg = load("plugins:\n- type: decode-filter\n- type: queue-scorer\n- type: random-picker\n")
    profile = cfg.scheduler.profiles["default"]
    assert [f.type for f in profile.filters] == ["decode-filter"]
    assert [(s.type, w) for s, w in profile.scorers] == [("queue-scorer", 1.0)]
    assert profile.picker.type == "random-picker"


def test_same_type_twice_under_different_names():
    cfg = load("""
        plugins:
        - {type: queue-scorer, name: q1}
        - {type: queue-scorer, name: q2}
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: q1, weight: 1}, {pluginRef: q2, weight: 4}]
        """)
    assert [(s.name, w) for s, w in cfg.scheduler.profiles["p"].scorers] == [("q1", 1.0), ("q2", 4.0)]


BROKEN = [
    ("not-yaml", "plugins: [", "not valid YAML"),
    ("not-mapping", "- just a list", "expected a mapping"),
    ("unknown-top-level", "plugins: [{type: queue-scorer}]\nscheduling: []", "scheduling: Extra inputs"),
    ("no-plugins", "plugins: []", "plugins: List should have at least 1 item"),
    ("unknown-type", "plugins: [{type: queue-scorrer}]", "plugins[0].type: unknown plugin type 'queue-scorrer'; "
                                                         "valid choices: active-request-scorer"),
    ("missing-type", "plugins: [{name: x}]", "plugins[0].type: Field required"),
    ("duplicate-name", "plugins: [{type: queue-scorer}, {type: queue-scorer}]", "plugins[1].name: duplicate"),
    ("bad-parameter-type", "plugins: [{type: load-aware-scorer, parameters: {threshold: lots}}]",
     "plugins[0].parameters.threshold: Input should be a valid integer"),
    ("bad-parameter-value", "plugins: [{type: load-aware-scorer, parameters: {threshold: 0}}]",
     "plugins[0].parameters.threshold: Input should be greater than 0"),
    ("legacy-block-size", "plugins: [{type: prefix-cache-scorer, parameters: {blockSize: 64}}]",
     "plugins[0].parameters.blockSize: deprecated"),
    ("bad-duration", "plugins: [{type: active-request-scorer, parameters: {requestTimeout: soon}}]",
     "plugins[0].parameters.requestTimeout: expected a duration"),
    ("by-label-needs-label", "plugins: [{type: by-label}]", "plugins[0].parameters.label: Field required"),
    ("unknown-ref", "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins: [{pluginRef: kv}]",
     "schedulingProfiles[0].plugins[0].pluginRef: no plugin named 'kv'; defined: queue-scorer"),
    ("missing-ref", "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins: [{weight: 2}]",
     "schedulingProfiles[0].plugins[0].pluginRef: Field required"),
    ("negative-weight", "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n  plugins: "
                        "[{pluginRef: queue-scorer, weight: -1}]", "weight: Input should be greater than or equal"),
    ("two-pickers", "plugins: [{type: random-picker}, {type: max-score-picker}]\nschedulingProfiles:\n- name: p\n"
                    "  plugins: [{pluginRef: random-picker}, {pluginRef: max-score-picker}]", "exactly one picker"),
    ("two-profiles-no-handler", "plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- {name: a}\n- {name: b}",
     "several schedulingProfiles need a profile handler"),
    ("duplicate-profile", "plugins: [{type: single-profile-handler}, {type: queue-scorer}]\nschedulingProfiles:\n"
                          "- {name: a}\n- {name: a}", "schedulingProfiles[1].name: duplicate profile name"),
    ("handler-in-profile", "plugins: [{type: single-profile-handler}]\nschedulingProfiles:\n- name: a\n"
                           "  plugins: [{pluginRef: single-profile-handler}]", "is a handler, not a filter"),
    ("bad-saturation", "plugins: [{type: queue-scorer}]\nsaturationDetector: {kvCacheUtilThreshold: 2}",
     "saturationDetector.kvCacheUtilThreshold: Input should be less than or equal to 1"),
]


@pytest.mark.parametrize(("body", "needle"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_invalid_configs_name_the_field(body, needle):
    with pytest.raises(ConfigError) as err:
        load_picker_config(HEAD + body if not body.startswith("- ") else body)
    assert needle in str(err.value)


def test_wrong_api_version_and_kind():
    with pytest.raises(ConfigError, match="apiVersion"):
        load_picker_config("apiVersion: v1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]")
    with pytest.raises(ConfigError, match="kind"):
        load_picker_config("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Pod\nplugins: []")


def test_unknown_parameters_are_accepted_like_upstream_but_warned():
    cfg = load("plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeToken: 32}\n")
    [w] = cfg.warnings
    assert w.startswith("plugins[0].parameters.blockSizeToken: unknown parameter of prefix-cache-scorer")
    assert "blockSizeTokens" in w  # the message lists what is known


def test_ignored_sections_and_gates_are_warned():
    cfg = load("featureGates: [flowControl, teleport]\nflowControl: {maxBytes: 1}\nplugins: [{type: queue-scorer}]\n")
    assert any("featureGates[1]" in w for w in cfg.warnings)
    assert any(w.startswith("flowControl:") for w in cfg.warnings)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the scheduler config"):
        load_picker_file(tmp_path / "nope.yaml")


def _examples():
    for t in registry.types():
        cls = registry.plugin_class(t)
        doc = inspect.getdoc(inspect.getmodule(cls)) or ""
        for block in re.findall(r"::\n\n((?:    .*\n?|\n)+)", doc + "\n"):
            yield t, textwrap.dedent(block)


@pytest.mark.parametrize(("plugin_type", "example"), list(_examples()), ids=lambda v: v if len(v) < 40 else "")
def test_every_documented_example_loads(plugin_type, example):
    data = yaml.safe_load(example)
    cfg = load_picker_config(HEAD + yaml.safe_dump(data))
    assert cfg.warnings == []


def test_every_plugin_type_has_a_documented_example():
    documented = {yaml.safe_load(ex)["plugins"][0]["type"] for _, ex in _examples()}
    canonical = {registry.plugin_class(t).type for t in registry.types()}
    assert canonical <= documented


def test_every_shipped_profile_loads_cleanly():
    for f in sorted((ROOT / "templates/scheduler").glob("*.yaml")):
        assert load_picker_file(f).warnings == [], f.name
