"""Load an ``EndpointPickerConfig`` as llm-d-router v0.10.0's loader does (``pkg/epp/config/loader``, the runner).

Phases, as upstream's, each refusing what upstream refuses with the field's path:

1. **strict decode**: ``apiVersion`` ``llm-d.ai/v1alpha1`` (or the deprecated ``inference.networking.x-k8s.io/
   v1alpha1``, with upstream's deprecation message), ``kind: EndpointPickerConfig``; only v0.10.0's sections
   (``featureGates``, ``plugins``, ``schedulingProfiles``, ``dataLayer``, ``flowControl``, ``requestHandler``, and
   the deprecated ``saturationDetector`` and ``parser``, moved to ``flowControl.saturationDetector`` and
   ``requestHandler.parsers`` with upstream's deprecation message); unknown fields at any depth are errors (so
   GIE v1.4's ``data:`` section and the thresholds under ``saturationDetector`` are refused); duplicate keys
   are errors. An empty document is upstream's default config (queue 2, KV cache 2, prefix 3);
2. **feature gates**: ``name`` or ``name=<bool>``; v0.10.0 registers ``flowControl`` (off by default) and
   ``haPopulateNonLeaderDatastore`` (on); any other name is an error;
3. **plugins**: a type (required) the kit implements (an error names the missing type, and says whether
   v0.10.0 registers it), unique names (the type when unnamed), parameters decoded strictly
   (``kit.picker.strict``: unknown fields at any depth are errors; a plugin whose factory reads no parameters
   ignores them, with a warning); deprecated types work, with upstream's deprecation warning; an Alpha plugin
   is accepted with a warning (the EPP needs ``--allow-experimental-plugins``); a kit-only type is accepted
   with a warning (a cluster EPP refuses it);
4. **system defaults**: no profiles → a ``default`` profile with every filter, scorer and picker; one profile
   and no handler → ``single-profile-handler``; a profile without a picker → the first configured picker, else
   ``max-score-picker``; a scorer without a weight → 1.0; no parsers → ``openai-parser``, ``anthropic-parser``,
   ``vllmhttp-parser`` (a parser reference without a plugin creates one of that type); no saturation detector
   → ``utilization-detector``; unless ``dataLayer.injectDefaults`` is false, ``metrics-data-source`` with
   ``core-metrics-extractor`` join the data layer's sources;
5. **default producers**: a data key a plugin requires and nobody produces gets its type's default producer
   (``token-producer``, ``approx-prefix-cache-producer``, ``inflight-load-producer``, created with no
   parameters), repeatedly; a required key without a default producer is an error. Producers run in data
   dependency order (ties: configured order, then creation order; upstream leaves ties to map order);
6. **checks**: profile names and references, one profile handler (``single-profile-handler`` with one profile),
   one picker per profile, the saturation detector and parser references, data-layer sources and extractors;
   ``crossReplicaSyncerPluginRef`` names a syncer (the kit has none).

Kit-only behaviour, warned about: ``flowControl`` settings are accepted and not used (the kit has no flow
control: requests are never queued in the picker); ``dataLayer.discovery`` needs a discovery plugin the kit
lacks (an error names it); the gateway scrapes every endpoint whatever the data layer says.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import Field, ValidationError

from kit.config import StrictModel, describe, dotted
from kit.errors import ConfigError
from kit.picker.framework import (
    Clock,
    DataSource,
    Extractor,
    Filter,
    Params,
    Picker,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from kit.picker.plugins.router.data import DEFAULT_PRODUCERS, kind_of
from kit.picker.plugins.router.parsers import DEFAULT_PARSERS, Parser, Parsers
from kit.picker.registry import Registry
from kit.picker.scheduler import Profile, Scheduler
from kit.picker.strict import conform

API_VERSION, DEPRECATED_API_VERSION = "llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"
GATES = {"flowControl": False, "haPopulateNonLeaderDatastore": True}  # v0.10.0's registered gates, defaults
DETECTOR, PICKER, HANDLER = "utilization-detector", "max-score-picker", "single-profile-handler"
METRICS_SOURCE, METRICS_EXTRACTOR = "metrics-data-source", "core-metrics-extractor"
LATENCY_PRODUCER = "predicted-latency-producer"
_GO_BOOL = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")

DEFAULT_CONFIG: dict[str, Any] = {  # v0.10.0's loadDefaultConfig
    "apiVersion": API_VERSION, "kind": "EndpointPickerConfig",
    "plugins": [{"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"}, {"type": "prefix-cache-scorer"},
                {"type": METRICS_SOURCE}, {"type": METRICS_EXTRACTOR}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
        {"pluginRef": "prefix-cache-scorer", "weight": 3}]}],
    "dataLayer": {"sources": [{"pluginRef": METRICS_SOURCE, "extractors": [{"pluginRef": METRICS_EXTRACTOR}]}]},
}

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- the config's shape
class PluginSpec(StrictModel):
    name: str = ""
    type: str = ""
    parameters: Any = None


class ProfilePlugin(StrictModel):
    pluginRef: str = ""
    weight: float | None = None


class ProfileSpec(StrictModel):
    name: str = ""
    plugins: list[ProfilePlugin] = Field(default_factory=list)


class Ref(StrictModel):
    pluginRef: str = ""


class SourceSpec(StrictModel):
    pluginRef: str = ""
    extractors: list[Ref] = Field(default_factory=list)


def _duration(value: Any) -> Any:
    from kit.picker.framework import parse_duration

    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '1s', got {value!r}")
    parse_duration(value)
    return value


class DataLayerSpec(StrictModel):
    injectDefaults: bool | None = None
    sources: list[SourceSpec] = Field(default_factory=list)
    discovery: Ref | None = None
    crossReplicaSyncerPluginRef: str = ""
    crossReplicaSyncInterval: str | None = None


def _quantity(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _QUANTITY.match(value.strip()):
        return value
    raise ValueError(f"expected a Kubernetes quantity such as '100' or '1Gi', got {value!r}")


class BandSpec(StrictModel):
    priority: int = 0
    maxBytes: Any = None
    maxRequests: Any = None
    fairnessPolicyRef: str = ""
    orderingPolicyRef: str = ""


class FlowControlSpec(StrictModel):
    maxBytes: Any = None
    maxRequests: Any = None
    defaultRequestTTL: str | None = None
    defaultPriorityBand: BandSpec | None = None
    defaultNegativePriorityBand: BandSpec | None = None
    priorityBands: list[BandSpec] = Field(default_factory=list)
    usageLimitPolicyPluginRef: str = ""
    saturationDetector: Ref | None = None
    enableEviction: bool = False

    def settings(self) -> bool:
        return any(v not in (None, "", []) for v in (
            self.maxBytes, self.maxRequests, self.defaultRequestTTL, self.defaultPriorityBand,
            self.defaultNegativePriorityBand, self.priorityBands, self.usageLimitPolicyPluginRef))


class RequestHandlerSpec(StrictModel):
    parsers: list[Ref] = Field(default_factory=list)


class ConfigSpec(StrictModel):
    apiVersion: str = ""
    kind: str = ""
    featureGates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    schedulingProfiles: list[ProfileSpec] = Field(default_factory=list)
    dataLayer: DataLayerSpec | None = None
    flowControl: FlowControlSpec | None = None
    requestHandler: RequestHandlerSpec | None = None
    saturationDetector: Ref | None = None
    parser: Ref | None = None


class _UniqueKeys(yaml.SafeLoader):
    """YAML where a mapping repeating a key is an error (the strict decoder refuses duplicate fields)."""


def _mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        k = loader.construct_object(key_node, deep=deep)
        if k in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {k!r}", key_node.start_mark)
        seen.add(k)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass
class Built:
    scheduler: Scheduler
    effective: dict[str, Any]
    warnings: list[str]


# ---------------------------------------------------------------------------------- the loader
def _decode(text: str, source: str) -> tuple[ConfigSpec, list[str]]:
    warnings: list[str] = []
    try:
        raw = yaml.load(text, Loader=_UniqueKeys) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from None
    if raw is None:
        raw = DEFAULT_CONFIG
        warnings.append("no configuration given: llm-d-router v0.10.0's default config is used (queue 2, KV "
                        "cache 2, prefix 3)")
    if not isinstance(raw, dict):
        raise ConfigError(source, ["expected a mapping with apiVersion, kind, plugins and schedulingProfiles"])
    problems = []
    api, kind = raw.get("apiVersion"), raw.get("kind")
    if not api:
        problems.append("apiVersion: Object 'apiVersion' is missing")
    elif api not in (API_VERSION, DEPRECATED_API_VERSION):
        problems.append(f"apiVersion: {api!r} is not registered in llm-d-router v0.10.0 (no kind "
                        f"EndpointPickerConfig for that version); use {API_VERSION}")
    if not kind:
        problems.append("kind: Object 'Kind' is missing")
    elif kind != "EndpointPickerConfig":
        problems.append(f"kind: {kind!r}: expected EndpointPickerConfig")
    try:
        spec = ConfigSpec.model_validate(raw)
    except ValidationError as err:
        problems += [line.replace("Extra inputs are not permitted", "unknown field (llm-d-router v0.10.0's strict "
                                  "decoder refuses it)") for line in describe(err)]
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    if api == DEPRECATED_API_VERSION:
        warnings.append(f"apiVersion: DEPRECATION: apiVersion {DEPRECATED_API_VERSION}/EndpointPickerConfig is "
                        f"deprecated; replacement {API_VERSION}/EndpointPickerConfig")
    if spec.saturationDetector is not None:
        warnings.append("saturationDetector: DEPRECATION: top-level saturationDetector is deprecated, use "
                        "flowControl.saturationDetector instead. If both are set, the new field is used.")
        spec.flowControl = spec.flowControl or FlowControlSpec()
        if spec.flowControl.saturationDetector is None:
            spec.flowControl.saturationDetector = spec.saturationDetector
    if spec.parser is not None:
        warnings.append("parser: DEPRECATION: top-level parser is deprecated, use requestHandler.parsers instead. "
                        "If both are set, the new field is used.")
        spec.requestHandler = spec.requestHandler or RequestHandlerSpec()
        if not spec.requestHandler.parsers:
            spec.requestHandler.parsers = [spec.parser]
    fc = spec.flowControl
    if fc is not None:
        try:
            for band in [fc.defaultPriorityBand, fc.defaultNegativePriorityBand, *fc.priorityBands]:
                if band is not None:
                    _quantity(band.maxBytes) if band.maxBytes is not None else None
                    _quantity(band.maxRequests) if band.maxRequests is not None else None
            for q in (fc.maxBytes, fc.maxRequests):
                if q is not None:
                    _quantity(q)
            if fc.defaultRequestTTL is not None:
                _duration(fc.defaultRequestTTL)
        except ValueError as err:
            raise ConfigError(source, [f"flowControl: {err}"]) from None
    if spec.dataLayer and spec.dataLayer.crossReplicaSyncInterval is not None:
        try:
            _duration(spec.dataLayer.crossReplicaSyncInterval)
        except ValueError as err:
            raise ConfigError(source, [f"dataLayer.crossReplicaSyncInterval: {err}"]) from None
    return spec, warnings


def _gates(gates: list[str], source: str) -> dict[str, bool]:
    out = dict(GATES)
    problems = []
    for i, gate in enumerate(gates):
        name, _, value = gate.partition("=")
        if name not in GATES:
            problems.append(f"featureGates[{i}]: feature gate {name!r} is unknown or unregistered in llm-d-router "
                            f"v0.10.0; known: {', '.join(GATES)}")
            continue
        if "=" in gate:
            parsed = _GO_BOOL.get(value.strip().lower())
            if parsed is None:
                problems.append(f"featureGates[{i}]: {value} is not a valid value for the feature gate {name} "
                                "(expected true or false)")
                continue
            out[name] = parsed
        else:
            out[name] = True
    if problems:
        raise ConfigError(source, problems)
    return out


class _Loader:
    def __init__(self, spec: ConfigSpec, registry: Registry, clock: Clock, source: str, warnings: list[str]):
        self.spec, self.registry, self.clock, self.source = spec, registry, clock, source
        self.warnings = warnings
        self.errors: list[str] = []
        self.plugins: dict[str, Any] = {}  # name → instance, in creation order
        self.configured: list[str] = []  # names from the config, in its order

    def fail(self) -> None:
        if self.errors:
            raise ConfigError(self.source, self.errors)

    def missing(self, plugin_type: str, where: str) -> str:
        known = ", ".join(self.registry.types())
        if plugin_type in self.registry.upstream:
            return (f"{where}: unknown plugin type {plugin_type!r}: llm-d-router v0.10.0 registers it, but the kit's "
                    f"picker does not implement it; implemented: {known}")
        return (f"{where}: unknown plugin type {plugin_type!r}: not registered in llm-d-router v0.10.0 either (the "
                f"EPP refuses it too); implemented: {known}")

    def create(self, plugin_type: str, name: str, raw: Any, where: str, **extra: Any) -> Any:
        info = self.registry.info.get(plugin_type)
        if info is None:
            self.errors.append(self.missing(plugin_type, f"{where}.type"))
            return None
        model: type[Params] = info.cls.Params or Params
        notes: list[tuple[str, str]] = []
        if raw is not None and info.reads_params:
            if not isinstance(raw, dict):
                self.errors.append(f"{where}.parameters: must be a mapping, got {type(raw).__name__}")
                return None
            raw, unknown = conform(model, raw, f"{where}.parameters", plugin_type)
            if unknown:
                self.errors += unknown
                return None
        elif raw not in (None, {}):
            self.warnings.append(f"{where}.parameters: ignored: {plugin_type}'s factory reads no parameters in "
                                 "llm-d-router v0.10.0")
            raw = None
        try:
            params = model.model_validate(raw or {}, context={"notes": notes}) if info.cls.Params else None
        except ValidationError as err:
            for e in err.errors():
                msg = e["msg"].removeprefix("Value error, ")
                self.errors.append(f"{where}.parameters.{dotted(e['loc'])}: {msg}" if e["loc"]
                                   else f"{where}.parameters: {msg}")
            return None
        alias = {n: f.alias or n for n, f in model.model_fields.items()}
        self.warnings += [f"{where}.parameters.{alias.get(field, field)}: {msg}" if field else
                          f"{where}.parameters: {msg}" for field, msg in notes]
        if info.deprecated:
            since, removal, replacement = info.deprecated
            self.warnings.append(f"{where}: DEPRECATION warning: plugin is deprecated (plugin {name}, type "
                                 f"{plugin_type}; deprecated in {since}, removal planned for {removal}; use "
                                 f"{replacement})")
        if plugin_type == "precise-prefix-cache-scorer":
            self.warnings.append(f"{where}: DEPRECATION: precise-prefix-cache-scorer is deprecated; configure "
                                 "precise-prefix-cache-producer + prefix-cache-scorer with "
                                 "prefixMatchInfoProducerName: precise-prefix-cache-producer")
        if info.stability == "Alpha":
            self.warnings.append(f"{where}: {plugin_type} has Alpha stability: llm-d-router v0.10.0 refuses it unless "
                                 "the EPP runs with --allow-experimental-plugins")
        if info.kit_only:
            self.warnings.append(f"{where}: {plugin_type} is kit-only: llm-d-router v0.10.0 does not register it, so "
                                 "a cluster EPP refuses this config")
        plugin = info.cls(name, params, **extra)
        plugin.clock = self.clock
        return plugin

    # ------------------------------------------------------------------ phase 3: the configured plugins
    def instantiate(self) -> None:
        seen: set[str] = set()
        for i, p in enumerate(self.spec.plugins):
            where = f"plugins[{i}]"
            name = p.name or p.type
            if not p.type:
                self.errors.append(f"{where}.type: plugin {name!r} is missing a type")
                continue
            if name in seen:
                self.errors.append(f"{where}.name: duplicate plugin name {name!r}")
                continue
            seen.add(name)
            extra = {}
            if p.type == "precise-prefix-cache-scorer":
                producers = [pl for pl in self.plugins.values() if pl.type == "precise-prefix-cache-producer"]
                if len(producers) > 1:
                    self.errors.append(f"{where}: multiple precise-prefix-cache-producer instances configured "
                                       f"({', '.join(pl.name for pl in producers)}); precise-prefix-cache-scorer "
                                       "cannot disambiguate; configure prefix-cache-scorer with an explicit "
                                       "prefixMatchInfoProducerName")
                    continue
                if producers:
                    extra["existing"] = producers[0]
                    if p.parameters:
                        self.warnings.append(f"{where}.parameters: ignored: precise-prefix-cache-scorer defers to "
                                             f"the configured producer {producers[0].name}")
            plugin = self.create(p.type, name, p.parameters, where, **extra)
            if plugin is not None:
                self.plugins[name] = plugin
                self.configured.append(name)
        self.fail()

    def default_plugin(self, plugin_type: str, where: str) -> Any:
        if plugin_type in self.plugins:
            return self.plugins[plugin_type]
        plugin = self.create(plugin_type, plugin_type, None, where)
        if plugin is not None:
            self.plugins[plugin_type] = plugin
        return plugin

    # ------------------------------------------------------------------ phase 4: system defaults
    def system_defaults(self) -> list[ProfileSpec]:
        spec = self.spec
        profiles = spec.schedulingProfiles
        if not profiles:
            profiles = [ProfileSpec(name="default", plugins=[
                ProfilePlugin(pluginRef=n) for n in self.configured
                if isinstance(self.plugins[n], Filter | Scorer | Picker)])]
        if len(profiles) == 1 and not any(isinstance(p, ProfileHandler) for p in self.plugins.values()):
            self.default_plugin(HANDLER, "system default")
        picker = next((n for n in self.plugins if isinstance(self.plugins[n], Picker)), None)
        if picker is None:
            self.default_plugin(PICKER, "system default")
            picker = PICKER
        for prof in profiles:
            refs = [self.plugins.get(r.pluginRef) for r in prof.plugins]
            for r, pl in zip(prof.plugins, refs, strict=True):
                if isinstance(pl, Scorer) and r.weight is None:
                    r.weight = 1.0
            if not any(isinstance(pl, Picker) for pl in refs):
                prof.plugins.append(ProfilePlugin(pluginRef=picker))
        handler = spec.requestHandler = spec.requestHandler or RequestHandlerSpec()
        if not handler.parsers:
            handler.parsers = [Ref(pluginRef=t) for t in DEFAULT_PARSERS]
        for i, ref in enumerate(handler.parsers):
            if ref.pluginRef not in self.plugins:
                self.default_plugin(ref.pluginRef, f"requestHandler.parsers[{i}]")
        fc = spec.flowControl = spec.flowControl or FlowControlSpec()
        if fc.saturationDetector is None:
            fc.saturationDetector = Ref(pluginRef=DETECTOR)
        if not fc.saturationDetector.pluginRef:
            fc.saturationDetector.pluginRef = DETECTOR
        if fc.saturationDetector.pluginRef == DETECTOR:
            self.default_plugin(DETECTOR, "system default")
        dl = spec.dataLayer
        if not (dl is not None and dl.injectDefaults is False) and \
                not (dl is not None and any(s.pluginRef == METRICS_SOURCE for s in dl.sources)):
            self.default_plugin(METRICS_SOURCE, "system default")
            self.default_plugin(METRICS_EXTRACTOR, "system default")
            spec.dataLayer = dl = dl or DataLayerSpec()
            dl.sources.append(SourceSpec(pluginRef=METRICS_SOURCE, extractors=[Ref(pluginRef=METRICS_EXTRACTOR)]))
        self.fail()
        return profiles

    # ------------------------------------------------------------------ phase 5: default producers
    def default_producers(self) -> None:
        while True:
            produced = {k for p in self.plugins.values() if hasattr(p, "data_produced") for k in p.data_produced()}
            missing: dict[str, str] = {}
            for p in self.plugins.values():
                if hasattr(p, "data_consumed"):
                    for k in sorted(p.data_consumed()[0]):
                        if k not in produced:
                            missing.setdefault(k, p.name)
            if not missing:
                return
            for k, consumer in missing.items():
                kind = kind_of(k)
                default = DEFAULT_PRODUCERS.get(kind) or (LATENCY_PRODUCER if kind.startswith("LatencyPrediction")
                                                          else None)
                if default is None:
                    self.errors.append(f"plugins: no default producer found for missing data key {k}, consumed by "
                                       f"{consumer} (configure the plugin that produces it, e.g. an "
                                       f"{k.split('/', 1)[1]})")
            self.fail()
            created = 0
            for k, consumer in missing.items():
                default = DEFAULT_PRODUCERS.get(kind_of(k)) or LATENCY_PRODUCER
                if default in self.plugins:
                    continue
                plugin = self.default_plugin(default, f"default producer of {k} (consumed by {consumer})")
                if plugin is not None:
                    created += 1
                    log.info("%s: auto-created default producer %s with no parameters: %s requires %s and no "
                             "configured plugin produces it (as llm-d-router v0.10.0 does)", self.source, default,
                             consumer, k)
            self.fail()
            if not created:
                return

    def producers_in_order(self) -> list[Any]:
        """Every data producer, dependencies first (ties: configured, then created, order)."""
        producers = [p for p in self.plugins.values() if hasattr(p, "data_produced") and p.data_produced()]
        by_key = {k: p for p in producers for k in p.data_produced()}
        ordered: list[Any] = []
        state: dict[int, int] = {}

        def visit(p: Any, path: list[str]) -> None:
            if state.get(id(p)) == 2:
                return
            if state.get(id(p)) == 1:
                self.errors.append(f"plugins: data dependency cycle: {' → '.join([*path, p.name])}")
                return
            state[id(p)] = 1
            required, optional = p.data_consumed() if hasattr(p, "data_consumed") else (set(), set())
            for k in sorted(required | optional):
                dep = by_key.get(k)
                if dep is not None and dep is not p:
                    visit(dep, [*path, p.name])
            state[id(p)] = 2
            ordered.append(p)

        for p in producers:
            visit(p, [])
        self.fail()
        return ordered

    # ------------------------------------------------------------------ phase 6: checks and build
    def profiles(self, specs: list[ProfileSpec]) -> list[Profile]:
        out, seen = [], set()
        for pi, ps in enumerate(specs):
            where = f"schedulingProfiles[{pi}]"
            if not ps.name:
                self.errors.append(f"{where}.name: schedulingProfiles[{pi}] is missing a name")
                continue
            if ps.name in seen:
                self.errors.append(f"{where}.name: schedulingProfiles[{pi}] has duplicate name {ps.name!r}")
            seen.add(ps.name)
            filters, scorers, pickers = [], [], []
            for ri, ref in enumerate(ps.plugins):
                here = f"{where}.plugins[{ri}].pluginRef"
                if not ref.pluginRef:
                    self.errors.append(f"{here}: schedulingProfiles[{ps.name}].plugins[{ri}] is missing a 'pluginRef'")
                    continue
                pl = self.plugins.get(ref.pluginRef)
                if pl is None:
                    self.errors.append(f"{here}: schedulingProfiles[{ps.name}] references undefined plugin "
                                       f"{ref.pluginRef!r}; defined: {', '.join(self.plugins)}")
                    continue
                if isinstance(pl, Scorer):
                    scorers.append((pl, 1.0 if ref.weight is None else ref.weight))
                elif ref.weight is not None:
                    self.warnings.append(f"{where}.plugins[{ri}].weight: {ref.pluginRef} is not a scorer, its "
                                         "weight is ignored")
                if isinstance(pl, Filter):
                    filters.append(pl)
                if isinstance(pl, Picker):
                    if pickers:
                        self.errors.append(f"{here}: failed to set {ref.pluginRef!r} as picker, already have a "
                                           f"registered picker plugin {pickers[0].name!r}")
                    pickers.append(pl)
                if not isinstance(pl, Filter | Scorer | Picker):
                    self.warnings.append(f"{here}: {ref.pluginRef} is not a filter, scorer or picker; ignored in "
                                         "the profile, as llm-d-router v0.10.0 does")
            if pickers:
                out.append(Profile(ps.name, filters, scorers, pickers[0]))
        return out

    def handler(self, profiles: list[Profile]) -> Any:
        handlers = [p for p in self.plugins.values() if isinstance(p, ProfileHandler)]
        if not handlers:
            self.errors.append("plugins: no profile handler configured")
            return None
        if len(handlers) > 1:
            self.errors.append(f"plugins: multiple profile handlers found ({', '.join(h.name for h in handlers)}); "
                               "only one is allowed")
        h = handlers[0]
        if (h.type == HANDLER or getattr(h, "single", False)) and len(profiles) > 1:
            self.errors.append(f"plugins: {h.type} cannot support multiple scheduling profiles")
        return h

    def detector(self) -> Any:
        ref = self.spec.flowControl.saturationDetector.pluginRef  # type: ignore[union-attr]
        pl = self.plugins.get(ref)
        if pl is None:
            self.errors.append(f"flowControl.saturationDetector.pluginRef: saturation detector references undefined "
                               f"plugin {ref!r}")
        elif not isinstance(pl, SaturationDetector):
            self.errors.append(f"flowControl.saturationDetector.pluginRef: plugin {ref!r} is not a saturation "
                               "detector")
        return pl

    def parsers(self) -> Parsers:
        found = []
        for i, ref in enumerate(self.spec.requestHandler.parsers):  # type: ignore[union-attr]
            pl = self.plugins.get(ref.pluginRef)
            if pl is None:
                self.errors.append(f"requestHandler.parsers[{i}].pluginRef: the configured parser {ref.pluginRef!r} "
                                   "is not loaded")
            elif not isinstance(pl, Parser):
                self.errors.append(f"requestHandler.parsers[{i}].pluginRef: the plugin {ref.pluginRef!r} is not a "
                                   "parser plugin")
            else:
                found.append(pl)
        registry = Parsers(found)
        self.warnings += [f"requestHandler.parsers: skipped: {why}" for why in registry.skipped]
        return registry

    def data_layer(self) -> None:
        dl = self.spec.dataLayer
        if dl is None:
            return
        for si, src in enumerate(dl.sources):
            here = f"dataLayer.sources[{si}]"
            sp = self.plugins.get(src.pluginRef)
            if not isinstance(sp, DataSource):
                self.errors.append(f"{here}.pluginRef: the plugin {src.pluginRef} is not a fwkdl.DataSource")
                continue
            for ei, ext in enumerate(src.extractors):
                ep = self.plugins.get(ext.pluginRef)
                if ep is None:
                    self.errors.append(f"{here}.extractors[{ei}].pluginRef: the plugin {ext.pluginRef} is not "
                                       "registered")
                elif not isinstance(ep, Extractor) or ep.consumes() != sp.produces():
                    self.errors.append(f"{here}.extractors[{ei}].pluginRef: {ext.pluginRef} cannot extract what "
                                       f"{src.pluginRef} produces ({sp.produces()})")
                elif hasattr(ep, "wired"):
                    ep.wired = True  # the precise producer subscribes to each endpoint it is told of
        if dl.discovery is not None:
            self.errors.append(f"dataLayer.discovery.pluginRef: {dl.discovery.pluginRef!r}: endpoint discovery "
                               "plugins are not in the kit (its gateway is given its endpoints)")
        if dl.crossReplicaSyncerPluginRef:
            self.errors.append(f"dataLayer.crossReplicaSyncerPluginRef: the plugin {dl.crossReplicaSyncerPluginRef} "
                               "is not a fwkdl.CrossReplicaSyncer (the kit has none)")
        if dl.injectDefaults is False and not any(s.pluginRef == METRICS_SOURCE for s in dl.sources):
            self.warnings.append("dataLayer.injectDefaults: false: upstream then scrapes no metrics; kit-only: the "
                                 "kit's gateway scrapes every endpoint regardless")


def load(text: str, source: str, registry: Registry, clock: Clock = time.monotonic) -> Built:
    """Decode, default, check and build ``text`` as llm-d-router v0.10.0 does (the module docstring)."""
    spec, warnings = _decode(text, source)
    gates = _gates(spec.featureGates, source)
    ld = _Loader(spec, registry, clock, source, warnings)
    ld.instantiate()
    profile_specs = ld.system_defaults()
    ld.default_producers()
    producers = ld.producers_in_order()
    profiles = ld.profiles(profile_specs)
    handler = ld.handler(profiles)
    detector = ld.detector()
    parsers = ld.parsers()
    ld.data_layer()
    ld.fail()
    fc = spec.flowControl
    if gates["flowControl"]:
        warnings.append("featureGates: flowControl: kit-only: the kit has no flow control; requests are never "
                        "queued in the picker (sheddable requests are refused at saturation, as without the gate)")
    elif fc is not None and fc.settings():
        warnings.append("flowControl: WARNING: the flowControl config section is set but the flowControl feature "
                        "gate is disabled; its settings (other than saturationDetector) are ignored")
    plugins = list(ld.plugins.values())
    ordered = producers + [p for p in plugins if all(p is not q for q in producers)]
    scheduler = Scheduler(profiles, handler, detector, plugins=ordered, clock=clock, parsers=parsers,
                          release="v0.10")
    effective = {
        "apiVersion": spec.apiVersion, "kind": "EndpointPickerConfig", "release": "v0.10",
        "featureGates": [f"{g}={str(v).lower()}" for g, v in gates.items()],
        "plugins": [{"name": n, "type": p.type} for n, p in ld.plugins.items()],
        "schedulingProfiles": [{"name": p.name, "plugins":
                                [{"pluginRef": f.name} for f in p.filters]
                                + [{"pluginRef": s.name, "weight": w} for s, w in p.scorers]
                                + [{"pluginRef": p.picker.name}]} for p in profiles],
        "dataProducers": [p.name for p in producers],
        "requestHandler": {"parsers": [{"pluginRef": p.name} for p in
                                       [*parsers.entries, *([parsers.fallback] if parsers.fallback else [])]]},
        "flowControl": {"saturationDetector": {"pluginRef": detector.name, "type": detector.type,
                                               **(detector.p.model_dump(by_alias=True)
                                                  if hasattr(detector, "p") else {})}},
    }
    if spec.dataLayer is not None:
        effective["dataLayer"] = spec.dataLayer.model_dump(exclude_none=True, exclude_defaults=True)
    return Built(scheduler, effective, warnings)
