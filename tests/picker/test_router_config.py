"""Loading as llm-d-router v0.10.0 (release v0.10): sections, gates, strictness, defaults, checks.

Cases follow upstream's pkg/epp/config/loader tests (configloader_test.go, testdata_test.go), rewritten with the
kit's plugins in place of upstream's test plugins, plus the strictness the kit must match.
"""

import logging

import pytest

from kit.errors import ConfigError
from kit.picker import load_picker_config
from kit.picker.plugins.router.scorers import PrefixCacheScorer, TokenLoadScorer

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def load(body: str, head: str = HEAD):
    return load_picker_config(head + body, release="v0.10")


def refused(body: str, head: str = HEAD) -> str:
    with pytest.raises(ConfigError) as err:
        load(body, head)
    return str(err.value)


def plugin_types(cfg) -> list[str]:
    return [p["type"] for p in cfg.effective["plugins"]]


def profile(cfg, name: str = "default") -> list[dict]:
    return next(p for p in cfg.effective["schedulingProfiles"] if p["name"] == name)["plugins"]


# ------------------------------------------------------------------------------------------- success cases
def test_a_full_config_loads_with_the_deprecated_group_and_says_so():
    cfg = load("""
plugins:
- name: first
  type: queue-scorer
- name: profileHandler
  type: single-profile-handler
- type: load-aware-scorer
  parameters:
    threshold: 32
- name: testPicker
  type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: first
  - pluginRef: load-aware-scorer
    weight: 50
  - pluginRef: testPicker
featureGates:
- flowControl
flowControl:
  saturationDetector:
    pluginRef: utilization-detector
""", "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n")
    assert profile(cfg) == [{"pluginRef": "first", "weight": 1.0}, {"pluginRef": "load-aware-scorer", "weight": 50},
                            {"pluginRef": "testPicker"}]
    assert any("DEPRECATION: apiVersion inference.networking.x-k8s.io/v1alpha1" in w for w in cfg.warnings)
    assert any("featureGates: flowControl: kit-only" in w for w in cfg.warnings)
    assert cfg.release == "v0.10"


def test_no_profiles_gives_a_default_profile_of_every_filter_scorer_and_picker():
    cfg = load("plugins:\n- type: queue-scorer\n- type: decode-filter\nfeatureGates:\n- flowControl=false\n")
    assert profile(cfg) == [{"pluginRef": "decode-filter"}, {"pluginRef": "queue-scorer", "weight": 1.0},
                            {"pluginRef": "max-score-picker"}]


def test_an_empty_document_is_v0_10s_default_config():
    cfg = load_picker_config("", release="v0.10")
    assert profile(cfg) == [{"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "kv-cache-utilization-scorer",
                                                                         "weight": 2},
                            {"pluginRef": "prefix-cache-scorer", "weight": 3}, {"pluginRef": "max-score-picker"}]
    assert cfg.effective["dataProducers"] == ["token-producer", "approx-prefix-cache-producer"]
    assert cfg.effective["dataLayer"]["sources"] == [{"pluginRef": "metrics-data-source",
                                                      "extractors": [{"pluginRef": "core-metrics-extractor"}]}]


def test_the_deprecated_top_level_saturation_detector_moves_to_flow_control():
    cfg = load("""
plugins:
- type: utilization-detector
  parameters: {queueDepthThreshold: 7}
- type: max-score-picker
saturationDetector:
  pluginRef: utilization-detector
""")
    assert cfg.effective["flowControl"]["saturationDetector"]["queueDepthThreshold"] == 7
    assert any("DEPRECATION: top-level saturationDetector is deprecated" in w for w in cfg.warnings)


def test_the_deprecated_top_level_parser_moves_to_the_request_handler():
    cfg = load("plugins:\n- type: passthrough-parser\n- type: max-score-picker\n"
               "parser:\n  pluginRef: passthrough-parser\n")
    assert cfg.effective["requestHandler"]["parsers"] == [{"pluginRef": "passthrough-parser"}]
    assert any("DEPRECATION: top-level parser is deprecated" in w for w in cfg.warnings)


@pytest.mark.parametrize("gates", [["flowControl=true"], ["flowControl=false"], ["haPopulateNonLeaderDatastore=F"],
                                   ["flowControl", "haPopulateNonLeaderDatastore=1"]], ids=str)
def test_feature_gates_are_names_or_name_equals_a_bool(gates):
    cfg = load("plugins:\n- type: max-score-picker\nfeatureGates: " + str(gates).replace("'", '"') + "\n")
    assert cfg.effective["featureGates"][0].startswith("flowControl=")


def test_a_scorer_without_weight_gets_1_and_a_handler_is_injected():
    cfg = load("plugins:\n- type: max-score-picker\n- type: queue-scorer\nschedulingProfiles:\n- name: default\n"
               "  plugins:\n  - pluginRef: max-score-picker\n  - pluginRef: queue-scorer\n")
    assert profile(cfg) == [{"pluginRef": "queue-scorer", "weight": 1.0}, {"pluginRef": "max-score-picker"}]
    assert "single-profile-handler" in plugin_types(cfg)


def test_flow_control_settings_without_the_gate_are_reported_ignored():
    cfg = load("plugins:\n- type: max-score-picker\nflowControl:\n  maxBytes: \"1024\"\n  defaultRequestTTL: 1m\n")
    assert any("flowControl feature gate is disabled; its settings (other than saturationDetector) are ignored" in w
               for w in cfg.warnings)
    quiet = load("plugins:\n- type: max-score-picker\nfeatureGates: [\"flowControl=false\"]\n"
                 "saturationDetector:\n  pluginRef: utilization-detector\n")
    assert not any("ignored" in w for w in quiet.warnings)


def test_parsers_default_to_openai_anthropic_vllmhttp_and_a_named_one_is_used():
    cfg = load("plugins:\n- type: max-score-picker\n")
    assert cfg.effective["requestHandler"]["parsers"] == [
        {"pluginRef": "openai-parser"}, {"pluginRef": "anthropic-parser"}, {"pluginRef": "vllmhttp-parser"}]
    named = load("plugins:\n- type: max-score-picker\n- name: openaiParser\n  type: openai-parser\n"
                 "requestHandler:\n  parsers:\n  - pluginRef: openaiParser\n")
    assert named.effective["requestHandler"]["parsers"] == [{"pluginRef": "openaiParser"}]


def test_a_parser_reference_without_a_plugin_creates_one_of_that_type():
    cfg = load("plugins:\n- type: max-score-picker\nrequestHandler:\n  parsers:\n  - pluginRef: passthrough-parser\n")
    assert "passthrough-parser" in plugin_types(cfg)


def test_the_data_layer_gets_the_metrics_source_unless_told_not_to():
    extra = load("plugins:\n- type: max-score-picker\n- type: endpoint-notification-source\n"
                 "dataLayer:\n  sources:\n  - pluginRef: endpoint-notification-source\n")
    assert [s["pluginRef"] for s in extra.effective["dataLayer"]["sources"]] == ["endpoint-notification-source",
                                                                                 "metrics-data-source"]
    off = load("plugins:\n- type: max-score-picker\ndataLayer:\n  injectDefaults: false\n")
    assert "metrics-data-source" not in plugin_types(off)
    assert any("injectDefaults: false" in w for w in off.warnings)


# --------------------------------------------------------------------------------------------- error cases
@pytest.mark.parametrize(("body", "words"), [
    ("plugins: [", "not valid YAML"),
    ("plugins:\n- type: max-score-picker\nfeatureGates: [unknownGate]\n",
     "featureGates[0]: feature gate 'unknownGate' is unknown or unregistered in llm-d-router v0.10.0"),
    ("plugins:\n- type: max-score-picker\nfeatureGates: [\"flowControl=maybe\"]\n",
     "featureGates[0]: maybe is not a valid value for the feature gate flowControl"),
    ("plugins:\n- type: max-score-picker\nfeatureGates: [dataLayer]\n", "feature gate 'dataLayer' is unknown"),
    ("plugins:\n- name: nameless\n", "plugins[0].type: plugin 'nameless' is missing a type"),
    ("plugins:\n- type: no-such-plugin\n", "plugins[0].type: unknown plugin type 'no-such-plugin': not registered in "
     "llm-d-router v0.10.0 either"),
    ("plugins:\n- type: disagg-profile-handler\n", "unknown plugin type 'disagg-profile-handler': llm-d-router "
     "v0.10.0 registers it, but the kit's picker does not implement it"),
    ("plugins:\n- type: load-aware-scorer\n  parameters: {threshold: many}\n", "plugins[0].parameters.threshold:"),
    ("plugins:\n- type: queue-scorer\n- type: queue-scorer\n", "plugins[1].name: duplicate plugin name 'queue-scorer'"),
    ("plugins:\n- type: max-score-picker\nschedulingProfiles:\n- plugins: []\n",
     "schedulingProfiles[0] is missing a name"),
    ("plugins:\n- type: max-score-picker\nschedulingProfiles:\n- name: a\n  plugins:\n  - weight: 1\n",
     "schedulingProfiles[a].plugins[0] is missing a 'pluginRef'"),
    ("plugins:\n- type: max-score-picker\nschedulingProfiles:\n- name: a\n  plugins:\n  - pluginRef: ghost\n",
     "schedulingProfiles[a] references undefined plugin 'ghost'"),
    ("plugins:\n- type: max-score-picker\n- type: single-profile-handler\nschedulingProfiles:\n"
     "- name: a\n  plugins: []\n- name: a\n  plugins: []\n", "has duplicate name 'a'"),
    ("plugins:\n- type: max-score-picker\n- type: random-picker\nschedulingProfiles:\n- name: a\n  plugins:\n"
     "  - pluginRef: max-score-picker\n  - pluginRef: random-picker\n", "already have a registered picker plugin"),
    ("plugins:\n- type: max-score-picker\n- type: single-profile-handler\n- type: data-parallel-profile-handler\n",
     "multiple profile handlers found"),
    ("plugins:\n- type: max-score-picker\nschedulingProfiles:\n- name: a\n  plugins: []\n- name: b\n  plugins: []\n",
     "no profile handler configured"),
    ("plugins:\n- type: max-score-picker\n- type: single-profile-handler\nschedulingProfiles:\n"
     "- name: a\n  plugins: []\n- name: b\n  plugins: []\n",
     "single-profile-handler cannot support multiple scheduling profiles"),
    ("plugins:\n- type: max-score-picker\ndataLayer:\n  sources:\n  - pluginRef: max-score-picker\n",
     "dataLayer.sources[0].pluginRef: the plugin max-score-picker is not a fwkdl.DataSource"),
    ("plugins:\n- type: max-score-picker\n- type: metrics-data-source\ndataLayer:\n  sources:\n  - pluginRef: "
     "metrics-data-source\n    extractors:\n    - pluginRef: ghost\n", "the plugin ghost is not registered"),
    ("plugins:\n- type: max-score-picker\nrequestHandler:\n  parsers:\n  - pluginRef: max-score-picker\n",
     "the plugin 'max-score-picker' is not a parser plugin"),
    ("plugins:\n- type: max-score-picker\nrequestHandler:\n  parsers:\n  - pluginRef: myParser\n",
     "unknown plugin type 'myParser'"),
    ("plugins:\n- type: max-score-picker\nflowControl:\n  saturationDetector:\n    pluginRef: ghost\n",
     "saturation detector references undefined plugin 'ghost'"),
], ids=lambda v: v if " " in v and len(v) < 60 else None)
def test_v0_10_refuses_with_the_reason_and_path(body, words):
    assert words in refused(body)


# -------------------------------------------------------------------------------------------- strictness
@pytest.mark.parametrize(("body", "words"), [
    # GIE v1.4's name of the data layer section, and thresholds under saturationDetector
    ("plugins:\n- type: max-score-picker\ndata:\n  sources: []\n", "data: unknown field"),
    ("plugins:\n- type: max-score-picker\nsaturationDetector:\n  queueDepthThreshold: 5\n",
     "saturationDetector.queueDepthThreshold: unknown field"),
    # only later releases know peer discovery
    ("plugins:\n- type: max-score-picker\ndataLayer:\n  peerDiscovery: {}\n", "dataLayer.peerDiscovery: unknown field"),
    ("plugins:\n- type: max-score-picker\nschedulingProfiles:\n- name: a\n  plugins:\n  - pluginRef: max-score-picker"
     "\n    weigth: 2\n", "schedulingProfiles[0].plugins[0].weigth: unknown field"),
    # an unknown parameter at any depth, with its path
    ("plugins:\n- type: precise-prefix-cache-producer\n  parameters:\n    tokenProcessorConfig:\n"
     "      blockSizeToken: 64\n",
     "plugins[0].parameters.tokenProcessorConfig.blockSizeToken: unknown field of precise-prefix-cache-producer"),
    ("plugins:\n- type: precise-prefix-cache-producer\n  parameters:\n    indexerConfig:\n      kvBlockIndexConfig:\n"
     "        inMemoryConfig: {size: 10, podCache: 2}\n",
     "plugins[0].parameters.indexerConfig.kvBlockIndexConfig.inMemoryConfig.podCache: unknown field"),
    ("plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 64}\n",
     "plugins[0].parameters.blockSizeTokens: unknown field of prefix-cache-scorer"),
    ("plugins:\n- type: precise-prefix-cache-scorer\n  parameters: {scoreNormalization: absolute}\n",
     "plugins[0].parameters.scoreNormalization: unknown field"),
    ("plugins:\n- type: precise-prefix-cache-producer\n  parameters:\n    indexerConfig:\n      tokenizersPoolConfig:"
     " {modelName: m}\n", "tokenizersPoolConfig is not supported; configure a token-producer plugin instead"),
    ("plugins:\n- type: max-score-picker\n- type: max-score-picker\n  name: b\n"
     "  parameters: {maxNumOfEndpoints: 1, x: 2}\n",
     "plugins[1].parameters.x: unknown field of max-score-picker"),
], ids=lambda v: v if " " in v and len(v) < 70 else None)
def test_unknown_fields_are_refused_at_any_depth(body, words):
    assert words in refused(body)


@pytest.mark.parametrize(("head", "words"), [
    ("apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n",
     "'llm-d.ai/v1' is not registered in llm-d-router v0.10.0"),
    ("kind: EndpointPickerConfig\n", "apiVersion: Object 'apiVersion' is missing"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: SchedulerConfig\n",
     "kind: 'SchedulerConfig': expected EndpointPickerConfig"),
])
def test_api_versions_and_kinds_as_v0_10_registers_them(head, words):
    assert words in refused("plugins:\n- type: max-score-picker\n", head)


def test_a_duplicate_key_is_refused():
    assert "duplicate key 'plugins'" in refused("plugins: []\nplugins: []\n")


def test_keys_match_case_insensitively_as_go_json_does():
    cfg = load("plugins:\n- type: approx-prefix-cache-producer\n  parameters: {MaxPrefixTokensToMatch: 64000}\n"
               "- type: prefix-cache-scorer\n")
    producer = next(p for p in cfg.scheduler.plugins if p.type == "approx-prefix-cache-producer")
    assert producer.p.max_prefix_tokens_to_match == 64000


def test_a_plugin_that_reads_no_parameters_ignores_them_with_a_warning():
    cfg = load("plugins:\n- type: queue-scorer\n  parameters: {anything: 1}\n")
    assert any("plugins[0].parameters: ignored: queue-scorer's factory reads no parameters" in w for w in cfg.warnings)


@pytest.mark.parametrize(("body", "words"), [
    ("- type: tokenizer\n", "DEPRECATION warning: plugin is deprecated (plugin tokenizer, type tokenizer; deprecated "
     "in v0.9.0, removal planned for v0.11.0; use token-producer)"),
    ("- type: by-label\n  parameters: {label: x, validValues: [y]}\n", "use label-selector-filter"),
    ("- type: by-label-selector\n  parameters: {matchLabels: {a: b}}\n", "use label-selector-filter"),
    ("- type: precise-prefix-cache-scorer\n", "DEPRECATION: precise-prefix-cache-scorer is deprecated"),
    ("- type: session-affinity-scorer\n", "has Alpha stability: llm-d-router v0.10.0 refuses it unless the EPP runs "
     "with --allow-experimental-plugins"),
    ("- type: round-robin-picker\n", "round-robin-picker is kit-only"),
    ("- type: active-request-scorer\n  parameters: {requestTimeout: 2m}\n", "DEPRECATED: requestTimeout is deprecated "
     "and ignored"),
])
def test_deprecated_alpha_and_kit_only_types_load_with_the_warning(body, words):
    cfg = load("plugins:\n" + body)
    assert any(words in w for w in cfg.warnings), cfg.warnings


# -------------------------------------------------------------------------------------- default producers
def test_a_consumer_gets_its_default_producers_created_in_dependency_order(caplog):
    with caplog.at_level(logging.INFO, logger="kit.picker.router_config"):
        cfg = load("plugins:\n- type: prefix-cache-scorer\n")
    assert cfg.effective["dataProducers"] == ["token-producer", "approx-prefix-cache-producer"]
    assert any("auto-created default producer approx-prefix-cache-producer" in r.getMessage() for r in caplog.records)
    assert cfg.warnings == []  # upstream logs it at info level
    token = next(p for p in cfg.scheduler.plugins if p.type == "token-producer")
    assert token.backend == "estimate"  # created with no parameters: the tokenizer-free estimate


def test_uncached_request_tokens_have_no_default_producer():
    words = ("no default producer found for missing data key UncachedRequestTokensDataKey/inflight-load-producer, "
             "consumed by token-load-scorer")
    assert words in refused("plugins:\n- type: token-load-scorer\n")


def test_the_latency_predictor_source_names_the_missing_producer():
    assert "unknown plugin type 'predicted-latency-producer'" in refused(
        "plugins:\n- type: prefix-cache-affinity-filter\n  parameters: {ttftSource: latencyPredictor}\n")


def test_a_named_producer_is_read_only_by_consumers_that_name_it():
    cfg = load("plugins:\n- type: token-producer\n  name: render\n  parameters: {modelName: m}\n"
               "- type: inflight-load-producer\n- type: token-load-scorer\n")
    # consumers read TokenizedPrompt/token-producer: a default (estimate) one is created beside 'render'
    assert cfg.effective["dataProducers"][:2] == ["render", "token-producer"]
    assert isinstance(next(p for p in cfg.scheduler.plugins if p.name == "token-load-scorer"), TokenLoadScorer)


# ------------------------------------------------------------------------------------------------ releases
def test_a_profile_declares_its_release_and_a_mismatch_is_refused():
    text = "# release: v0.10\n" + HEAD + "plugins:\n- type: prefix-cache-scorer\n"
    cfg = load_picker_config(text)
    assert cfg.release == "v0.10" and isinstance(cfg.scheduler.profiles["default"].scorers[0][0], PrefixCacheScorer)
    with pytest.raises(ConfigError) as err:
        load_picker_config(text, release="v0.7")
    assert "needs release v0.10" in str(err.value) and "kit gateway --release v0.10" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_picker_config(HEAD, release="v0.9")
    assert "unknown release 'v0.9'; valid choices: v0.7, v0.10" in str(err.value)


def test_the_same_file_loads_differently_per_release():
    text = HEAD + "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 64}\n"
    v07 = load_picker_config(text)
    assert v07.release == "v0.7" and v07.scheduler.profiles["default"].scorers[0][0].producer.p.block_size_tokens == 64
    with pytest.raises(ConfigError) as err:
        load_picker_config(text, release="v0.10")
    assert "plugins[0].parameters.blockSizeTokens: unknown field" in str(err.value)
