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
    sat = cfg.scheduler.saturation.p
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
    ("unknown-type", "plugins: [{type: queue-scorrer}]", "plugins[0].type: unknown plugin type 'queue-scorrer': "
                                                         "the kit's picker does not implement it; implemented: "
                                                         "active-request-scorer, approx-prefix-cache-producer"),
    ("unknown-gate", "featureGates: [flowControl, teleport]\nplugins: [{type: queue-scorer}]",
     "featureGates[1]: unknown feature gate 'teleport'; known: dataLayer"),
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
     "no profile handler configured; 2 scheduling profiles need one"),
    ("single-handler-two-profiles", "plugins: [{type: single-profile-handler}]\nschedulingProfiles:\n- {name: a}\n"
                                    "- {name: b}", "single-profile-handler cannot run 2 scheduling profiles"),
    ("duplicate-profile", "plugins: [{type: single-profile-handler}, {type: queue-scorer}]\nschedulingProfiles:\n"
                          "- {name: a}\n- {name: a}", "schedulingProfiles[1].name: duplicate profile name"),
    ("saturation-both-forms", "plugins: [{type: utilization-detector}]\nsaturationDetector: "
                              "{pluginRef: utilization-detector, queueDepthThreshold: 3}", "either pluginRef or"),
    ("saturation-unknown-ref", "plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: sd}",
     "saturationDetector.pluginRef: no plugin named 'sd'"),
    ("saturation-not-a-detector", "plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: queue-scorer}",
     "queue-scorer is not a saturation detector"),
    ("bad-detector-parameter", "plugins: [{type: utilization-detector, parameters: {kvCacheUtilThreshold: 2}}]",
     "plugins[0].parameters.kvCacheUtilThreshold: Input should be less than or equal to 1"),
    ("data-and-dataLayer", "plugins: [{type: queue-scorer}]\ndata: {}\ndataLayer: {}", "give the data layer once"),
    ("data-gate-without-sources", "featureGates: [dataLayer]\nplugins: [{type: queue-scorer}]",
     "the dataLayer gate needs the data layer's sources"),
    ("bad-source", "plugins: [{type: queue-scorer}]\ndataLayer:\n  sources: [{pluginRef: queue-scorer}]",
     "dataLayer.sources[0].pluginRef: 'queue-scorer' is not a configured data source"),
    ("bad-extractor", "plugins: [{type: metrics-data-source}, {type: queue-scorer}]\ndata:\n  sources:\n"
                      "  - pluginRef: metrics-data-source\n    extractors: [{pluginRef: queue-scorer}]",
     "data.sources[0].extractors[0].pluginRef: 'queue-scorer' is not a configured extractor"),
    ("mismatched-extractor", "plugins: [{type: endpoint-notification-source}, {type: core-metrics-extractor}]\n"
                             "dataLayer:\n  sources:\n  - pluginRef: endpoint-notification-source\n"
                             "    extractors: [{pluginRef: core-metrics-extractor}]",
     "core-metrics-extractor reads prometheus metrics, but endpoint-notification-source produces endpoint"),
]


@pytest.mark.parametrize(("body", "needle"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_invalid_configs_name_the_field(body, needle):
    with pytest.raises(ConfigError) as err:
        load_picker_config(HEAD + body if not body.startswith("- ") else body)
    assert needle in str(err.value)


def test_wrong_api_version_and_kind():
    with pytest.raises(ConfigError, match=re.escape("apiVersion: Input should be 'llm-d.ai/v1alpha1' or "
                                                    "'inference.networking.x-k8s.io/v1alpha1'")):
        load_picker_config("apiVersion: v1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]")
    with pytest.raises(ConfigError, match="kind"):
        load_picker_config("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Pod\nplugins: []")


@pytest.mark.parametrize("api_version", ["llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"])
def test_both_api_versions_load(api_version):
    text = f"apiVersion: {api_version}\nkind: EndpointPickerConfig\nplugins: [{{type: queue-scorer}}]"
    cfg = load_picker_config(text)
    assert cfg.effective["apiVersion"] == api_version


@pytest.mark.parametrize("text", ["", "  \n", "# only a comment\n"], ids=["empty", "blank", "comment"])
def test_an_empty_config_is_upstream_builtin_default(text):
    """GIE v1.4.0 loads its default config when given none."""
    cfg = load_picker_config(text)
    [profile] = cfg.scheduler.profiles.values()
    assert profile.name == "default"
    assert {s.type: w for s, w in profile.scorers} == {
        "queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    assert profile.picker.type == "max-score-picker" and cfg.scheduler.handler.type == "single-profile-handler"


def test_a_profile_without_a_picker_gets_the_first_configured_picker():
    """Upstream reuses a configured picker rather than adding max-score-picker."""
    cfg = load("""
        plugins: [{type: queue-scorer}, {type: random-picker}, {type: weighted-random-picker}]
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: queue-scorer}]
        """)
    assert cfg.scheduler.profiles["p"].picker.type == "random-picker"
    assert "max-score-picker" not in [p["type"] for p in cfg.effective["plugins"]]


def test_without_any_picker_a_max_score_picker_is_added():
    cfg = load("plugins: [{type: queue-scorer}]\nschedulingProfiles:\n- name: p\n"
               "  plugins: [{pluginRef: queue-scorer}]")
    assert cfg.scheduler.profiles["p"].picker.type == "max-score-picker"


def test_an_empty_plugin_list_loads_like_upstream():
    cfg = load("plugins: []\n")
    [profile] = cfg.scheduler.profiles.values()
    assert (profile.filters, profile.scorers, profile.picker.type) == ([], [], "max-score-picker")


def test_a_non_scheduling_plugin_in_a_profile_is_ignored_with_a_warning():
    cfg = load("""
        plugins: [{type: single-profile-handler}, {type: metrics-data-source}, {type: queue-scorer}]
        schedulingProfiles:
        - name: a
          plugins: [{pluginRef: single-profile-handler}, {pluginRef: metrics-data-source}, {pluginRef: queue-scorer}]
        """)
    assert [s.type for s, _ in cfg.scheduler.profiles["a"].scorers] == ["queue-scorer"]
    assert sum("ignored in the profile, as upstream does" in w for w in cfg.warnings) == 2


@pytest.mark.parametrize(("section", "expected", "warned"), [
    ("{queueDepthThreshold: 20, kvCacheUtilThreshold: 0.9, metricsStalenessThreshold: 500ms}", (20, 0.9, 0.5), 0),
    ("{}", (5, 0.8, 0.2), 0),
    ("{queueDepthThreshold: -5, kvCacheUtilThreshold: 1.5, metricsStalenessThreshold: -10s}", (5, 0.8, 0.2), 3),
    ("{kvCacheUtilThreshold: 1.0}", (5, 0.8, 0.2), 1),
], ids=["valid", "empty", "invalid-values-fall-back", "kv-must-be-below-one"])
def test_upstream_legacy_saturation_thresholds(section, expected, warned):
    """Ported from GIE v1.4.0 configloader_test.go TestBuildSaturationConfig."""
    cfg = load(f"plugins: [{{type: queue-scorer}}]\nsaturationDetector: {section}\n")
    p = cfg.scheduler.saturation.p
    assert (p.queue_depth_threshold, p.kv_cache_util_threshold, p.metrics_staleness_threshold) == expected
    assert sum(w.startswith("saturationDetector.") for w in cfg.warnings) == warned


def test_saturation_detector_by_plugin_ref():
    cfg = load("""
        plugins:
        - {type: utilization-detector, name: sd, parameters: {queueDepthThreshold: 9, headroom: 0.5}}
        - {type: queue-scorer}
        saturationDetector: {pluginRef: sd}
        """)
    assert cfg.scheduler.saturation.name == "sd" and cfg.scheduler.saturation.p.queue_depth_threshold == 9
    assert load("plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: utilization-detector}\n"
                ).scheduler.saturation.type == "utilization-detector"  # created with defaults, as upstream


def test_todays_data_layer_section_loads():
    cfg = load("""
        plugins:
        - {type: metrics-data-source, parameters: {scheme: https, path: /stats}}
        - {type: core-metrics-extractor}
        - {type: endpoint-notification-source}
        - {type: queue-scorer}
        dataLayer:
          sources:
          - pluginRef: metrics-data-source
            extractors: [{pluginRef: core-metrics-extractor}]
          - pluginRef: endpoint-notification-source
        """)
    assert cfg.effective["dataLayer"]["sources"][0]["pluginRef"] == "metrics-data-source"
    assert [w.split(":")[0] for w in cfg.warnings] == ["plugins[0].parameters.scheme", "plugins[0].parameters.path"]


def test_unknown_parameters_are_accepted_like_upstream_but_warned():
    cfg = load("plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeToken: 32}\n")
    [w] = cfg.warnings
    assert w.startswith("plugins[0].parameters.blockSizeToken: unknown parameter of prefix-cache-scorer")
    assert "blockSizeTokens" in w  # the message lists what is known


def test_ignored_sections_are_warned():
    cfg = load("featureGates: [flowControl]\nflowControl: {maxBytes: 1}\nparser: {pluginRef: openai-parser}\n"
               "plugins: [{type: queue-scorer}]\n")
    assert [w.split(":")[0] for w in cfg.warnings] == ["flowControl", "parser"]


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
    documented = {p["type"] for _, ex in _examples() for p in yaml.safe_load(ex)["plugins"]}
    canonical = {registry.plugin_class(t).type for t in registry.types()}
    assert canonical <= documented


def test_every_shipped_profile_loads_cleanly():
    for f in sorted((ROOT / "templates/scheduler").glob("*.yaml")):
        assert load_picker_file(f).warnings == [], f.name
