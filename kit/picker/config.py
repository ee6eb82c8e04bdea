"""Load an ``EndpointPickerConfig`` (the upstream EPP's YAML) in upstream's phases, for the release asked for.

``release`` (``kit.picker.release``) picks the upstream the picker follows: ``v0.10`` loads with
``kit.picker.router_config`` (llm-d-router v0.10.0); ``v0.7``, the default, is this module. A file may declare
the release it needs in a leading comment line (``# release: v0.10``); with no release asked for, that one
is used, and a different one asked for is refused.

For release v0.7, behaviour follows the version the guide deploys (llm-d-inference-scheduler v0.7.0, built on GIE
v1.4.0); the format also accepts what later versions write (``llm-d.ai/v1alpha1``, ``dataLayer``,
``saturationDetector.pluginRef``, ``parser``), so upstream's current configs load too.

1. strict decode: unknown fields are errors, with the field path; an empty document is upstream's
   built-in default config (queue 2, KV cache 2, prefix 3); unknown feature gates are errors;
2. instantiate every plugin through the registry (name defaults to type; parameters typed; a type
   the kit does not implement is an error listing those it does); each reads time from ``clock``;
3. system defaults: no profiles → one ``default`` profile using every filter, scorer and picker;
   one profile and no handler → ``single-profile-handler``; a profile without a picker → the first
   configured picker, or a new ``max-score-picker`` if none is configured; a scorer without a weight
   → 1.0; no saturation detector → ``utilization-detector`` (from the older format's thresholds,
   where a value out of range means its default, as in v1.4.0);
4. validate the references (profiles, handler, saturation detector, data layer) and build the scheduler.

Unknown plugin parameters, replaced values, ignored profile entries and sections the kit does not
use are accepted, as upstream accepts them, and listed in ``LoadedConfig.warnings``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from kit.config import StrictModel, parse
from kit.errors import ConfigError
from kit.picker import registry as registries
from kit.picker import release as releases
from kit.picker.framework import (
    Clock,
    Consumer,
    DataSource,
    Duration,
    Extractor,
    Filter,
    Picker,
    PrepareData,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from kit.picker.registry import Registry
from kit.picker.scheduler import Profile, Scheduler

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
SOURCE = "EndpointPickerConfig"
# Every gate some supported upstream version registers (GIE v1.4.0 and llm-d-router main).
KNOWN_GATES = ("dataLayer", "enableLegacyMetrics", "flowControl", "prepareDataPlugins")
DETECTOR = "utilization-detector"
# Upstream's built-in config when none is given (GIE v1.4.0 pkg/epp/config/loader/defaults.go).
DEFAULT_CONFIG: dict[str, Any] = {
    "apiVersion": API_VERSIONS[1], "kind": "EndpointPickerConfig",
    "plugins": [{"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"}, {"type": "prefix-cache-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
        {"pluginRef": "prefix-cache-scorer", "weight": 3}]}],
}


class PluginSpec(StrictModel):
    type: str = Field(min_length=1, description="registered plugin type, e.g. queue-scorer")
    name: str | None = Field(None, description="instance name (defaults to the type)")
    parameters: dict[str, Any] | None = Field(None, description="plugin parameters")


class PluginRef(StrictModel):
    pluginRef: str = Field(min_length=1, description="name of a plugin instance")
    weight: float | None = Field(None, ge=0, description="scorer weight (default 1.0)")


class ProfileSpec(StrictModel):
    name: str = Field(min_length=1)
    plugins: list[PluginRef] = Field(default_factory=list)


class SaturationSpec(StrictModel):
    """``pluginRef`` (GIE v1.5 on), or the thresholds of GIE v1.4.0's built-in detector."""

    pluginRef: str | None = Field(None, min_length=1)
    queueDepthThreshold: int | None = None
    kvCacheUtilThreshold: float | None = None
    metricsStalenessThreshold: Duration | None = None


class Ref(StrictModel):
    pluginRef: str = Field(min_length=1)


class SourceSpec(StrictModel):
    pluginRef: str = Field(min_length=1)
    extractors: list[Ref] = Field(default_factory=list)


class DataLayerSpec(StrictModel):
    sources: list[SourceSpec] | None = None
    injectDefaults: bool | None = None
    discovery: Ref | None = None


class PickerConfigSpec(StrictModel):
    apiVersion: Literal["llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    featureGates: list[str] | None = None
    plugins: list[PluginSpec] = Field(default_factory=list)
    schedulingProfiles: list[ProfileSpec] | None = None
    saturationDetector: SaturationSpec | None = None
    data: DataLayerSpec | None = None  # GIE v1.4's name of the section
    dataLayer: DataLayerSpec | None = None  # GIE v1.5 on
    flowControl: dict[str, Any] | None = None
    parser: Ref | None = None


@dataclass
class LoadedConfig:
    scheduler: Scheduler
    effective: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    source: str = SOURCE
    release: str = releases.DEFAULT

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock


def _legacy_detector(sat: SaturationSpec, registry: Registry, clock: Clock, warnings: list[str]) -> Any:
    """GIE v1.4.0's detector from the thresholds: a value out of range means its default."""
    params: dict[str, Any] = {}
    checks = (("queueDepthThreshold", sat.queueDepthThreshold, lambda v: v > 0),
              ("kvCacheUtilThreshold", sat.kvCacheUtilThreshold, lambda v: 0 < v < 1),
              ("metricsStalenessThreshold", sat.metricsStalenessThreshold, lambda v: v > 0))
    for key, value, ok in checks:
        if value is None:
            continue
        if ok(value):
            params[key] = value
        else:
            warnings.append(f"saturationDetector.{key}: {value} is out of range; the default applies, "
                            "as upstream falls back")
    return registry.create(DETECTOR, DETECTOR, params, "saturationDetector", clock=clock)


def load_picker_config(text: str, source: str = SOURCE, registry: Registry | None = None,
                       clock: Clock = time.monotonic, release: str | None = None) -> LoadedConfig:
    """Parse, default, validate and build; raise ConfigError naming the field for anything invalid.

    ``clock`` (monotonic seconds) is the time every plugin and the saturation detector read; the
    endpoints' ``updated`` must be on the same clock (a fleet simulator passes its virtual clock).
    ``release`` (``v0.7`` or ``v0.10``; None: the one the file declares, else ``v0.7``) picks the upstream
    release whose loader, plugins and defaults apply.
    """
    release = releases.resolve(release, text, source)
    if release == "v0.10":
        from kit.picker import router_config  # release v0.10 only: v0.7 never imports its plugins

        built = router_config.load(text, source, registry or registries.default(release), clock)
        return LoadedConfig(built.scheduler, built.effective, built.warnings, source, release)
    registry = registry or registries.default()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from None
    if raw is None:  # an empty document: upstream's built-in default
        raw = DEFAULT_CONFIG
    if not isinstance(raw, dict):
        raise ConfigError(source, ["expected a mapping with apiVersion, kind, plugins and schedulingProfiles"])
    spec = parse(PickerConfigSpec, raw, source)
    warnings: list[str] = []
    errors: list[str] = []
    gates = spec.featureGates or []
    for i, gate in enumerate(gates):
        if gate not in KNOWN_GATES:
            errors.append(f"featureGates[{i}]: unknown feature gate {gate!r}; known: {', '.join(KNOWN_GATES)}")
    if spec.data is not None and spec.dataLayer is not None:
        errors.append("data: give the data layer once, as dataLayer (data is GIE v1.4's name for it)")
    if errors:
        raise ConfigError(source, errors)
    if spec.flowControl is not None:
        warnings.append("flowControl: accepted but not used: the kit has no flow control")
    if spec.parser is not None:
        warnings.append("parser: accepted but not used: the kit's gateway parses OpenAI requests itself")

    plugins: dict[str, Any] = {}
    for i, p in enumerate(spec.plugins):
        name = p.name or p.type
        if name in plugins:
            errors.append(f"plugins[{i}].name: duplicate plugin name {name!r}")
            continue
        try:
            plugins[name] = registry.create(p.type, name, p.parameters, f"plugins[{i}]", warnings, clock)
        except ConfigError as err:
            errors.extend(err.problems)
    if errors:
        raise ConfigError(source, errors)

    # Consumers (prefix-cache-scorer) read a configured producer's data (approx-prefix-cache-producer).
    producers = [pl for pl in plugins.values() if isinstance(pl, PrepareData)]
    for i, p in enumerate(spec.plugins):
        consumer = plugins[p.name or p.type]
        if not isinstance(consumer, Consumer):
            continue
        linked = next((prod for prod in producers if consumer.consume(prod)), None)
        if linked is not None and p.parameters:
            warnings.append(f"plugins[{i}].parameters: ignored: {consumer.name} reads the matches of {linked.name}, "
                            "whose parameters apply (upstream's layout from GIE v1.5)")

    configured = list(plugins.values())
    profiles_spec = spec.schedulingProfiles
    if not profiles_spec:
        refs = [PluginRef(pluginRef=n) for n, pl in plugins.items() if isinstance(pl, Filter | Scorer | Picker)]
        profiles_spec = [ProfileSpec(name="default", plugins=refs)]
    handlers = [pl for pl in configured if isinstance(pl, ProfileHandler)]
    if not handlers and len(profiles_spec) == 1:
        handlers = [registry.create("single-profile-handler", clock=clock)]
        plugins.setdefault(handlers[0].name, handlers[0])
    if not handlers:
        errors.append(f"plugins: no profile handler configured; {len(profiles_spec)} scheduling profiles need one")
    elif len(handlers) > 1:
        errors.append(f"plugins: only one profile handler may be configured, found "
                      f"{', '.join(h.name for h in handlers)}")
    elif handlers[0].type == "single-profile-handler" and len(profiles_spec) > 1:
        errors.append(f"plugins: single-profile-handler cannot run {len(profiles_spec)} scheduling profiles")
    default_picker = next((pl for pl in configured if isinstance(pl, Picker)), None)

    profiles = []
    seen: set[str] = set()
    for pi, ps in enumerate(profiles_spec):
        where = f"schedulingProfiles[{pi}]"
        if ps.name in seen:
            errors.append(f"{where}.name: duplicate profile name {ps.name!r}")
        seen.add(ps.name)
        filters, scorers, pickers = [], [], []
        for ri, ref in enumerate(ps.plugins):
            here = f"{where}.plugins[{ri}]"
            pl = plugins.get(ref.pluginRef)
            if pl is None:
                errors.append(f"{here}.pluginRef: no plugin named {ref.pluginRef!r}; defined: {', '.join(plugins)}")
                continue
            if isinstance(pl, Scorer):
                scorers.append((pl, 1.0 if ref.weight is None else ref.weight))
            elif ref.weight is not None:
                warnings.append(f"{here}.weight: {ref.pluginRef} is not a scorer, its weight is ignored")
            if isinstance(pl, Filter):
                filters.append(pl)
            if isinstance(pl, Picker):
                pickers.append(pl)
            if not isinstance(pl, Filter | Scorer | Picker):
                warnings.append(f"{here}.pluginRef: {ref.pluginRef} is not a filter, scorer or picker; "
                                "ignored in the profile, as upstream does")
        if len(pickers) > 1:
            errors.append(f"{where}.plugins: a profile has exactly one picker, found {len(pickers)}")
        if not pickers:
            if default_picker is None:
                default_picker = registry.create("max-score-picker", clock=clock)
                plugins.setdefault(default_picker.name, default_picker)
            pickers = [default_picker]
        profiles.append(Profile(ps.name, filters, scorers, pickers[0]))

    sat = spec.saturationDetector or SaturationSpec()
    legacy = any(v is not None for v in (sat.queueDepthThreshold, sat.kvCacheUtilThreshold,
                                         sat.metricsStalenessThreshold))
    detector: Any = None
    if sat.pluginRef and legacy:
        errors.append("saturationDetector: give either pluginRef or the thresholds (the older format), not both")
    elif sat.pluginRef and sat.pluginRef in plugins:
        detector = plugins[sat.pluginRef]
        if not isinstance(detector, SaturationDetector):
            errors.append(f"saturationDetector.pluginRef: {sat.pluginRef} is not a saturation detector")
    elif sat.pluginRef and sat.pluginRef != DETECTOR:
        errors.append(f"saturationDetector.pluginRef: no plugin named {sat.pluginRef!r}; defined: {', '.join(plugins)}")
    elif legacy:
        detector = _legacy_detector(sat, registry, clock, warnings)
    else:
        detector = registry.create(DETECTOR, clock=clock)

    data = spec.dataLayer or spec.data
    section = "dataLayer" if spec.dataLayer is not None else "data"
    if "dataLayer" in gates and not (data and data.sources):
        errors.append("featureGates: the dataLayer gate needs the data layer's sources configured (dataLayer.sources)")
    for si, src in enumerate((data.sources or []) if data else []):
        here = f"{section}.sources[{si}]"
        source_plugin = plugins.get(src.pluginRef)
        if not isinstance(source_plugin, DataSource):
            errors.append(f"{here}.pluginRef: {src.pluginRef!r} is not a configured data source")
            continue
        for ei, ext in enumerate(src.extractors):
            extractor = plugins.get(ext.pluginRef)
            if not isinstance(extractor, Extractor):
                errors.append(f"{here}.extractors[{ei}].pluginRef: {ext.pluginRef!r} is not a configured extractor")
            elif extractor.consumes() != source_plugin.produces():
                errors.append(f"{here}.extractors[{ei}].pluginRef: {ext.pluginRef} reads {extractor.consumes()}, "
                              f"but {src.pluginRef} produces {source_plugin.produces()}")
    if errors:
        raise ConfigError(source, errors)

    scheduler = Scheduler(profiles, handlers[0], detector, plugins=list(plugins.values()), clock=clock)
    effective = {
        "apiVersion": spec.apiVersion, "kind": "EndpointPickerConfig", "featureGates": gates,
        "plugins": [{"name": n, "type": p.type} for n, p in plugins.items()],
        "schedulingProfiles": [{"name": p.name, "plugins":
                                [{"pluginRef": f.name} for f in p.filters]
                                + [{"pluginRef": s.name, "weight": w} for s, w in p.scorers]
                                + [{"pluginRef": p.picker.name}]} for p in profiles],
        "saturationDetector": {"pluginRef": detector.name, "type": detector.type,
                               **(detector.p.model_dump(by_alias=True) if hasattr(detector, "p") else {})},
    }
    if data is not None:
        effective["dataLayer"] = data.model_dump(exclude_none=True)
    return LoadedConfig(scheduler, effective, warnings, source)


def load_picker_file(path: str | Path, clock: Clock = time.monotonic, release: str | None = None) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(str(p), [f"cannot read the scheduler config: {err.strerror}"]) from None
    return load_picker_config(text, str(p), clock=clock, release=release)
