"""Load an ``EndpointPickerConfig`` (the upstream EPP's YAML) in upstream's phases.

1. strict decode: unknown fields are errors, with the field path;
2. instantiate every plugin through the registry (name defaults to type; parameters typed);
3. system defaults: no profiles → one ``default`` profile using every filter, scorer and picker;
   one profile and no handler → ``single-profile-handler``; a profile without a picker →
   ``max-score-picker``; a scorer without a weight → 1.0;
4. validate the profiles' references and build the scheduler.

Unknown plugin parameters and ignored sections are accepted, as upstream accepts them, and listed
in ``LoadedConfig.warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from kit.config import StrictModel, parse
from kit.errors import ConfigError
from kit.picker import registry as registries
from kit.picker.framework import Duration, Filter, Picker, ProfileHandler, Scorer
from kit.picker.registry import Registry
from kit.picker.scheduler import Profile, SaturationDetector, Scheduler

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
SOURCE = "EndpointPickerConfig"
KNOWN_GATES = {"dataLayer", "flowControl", "prepareDataPlugins"}


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
    queueDepthThreshold: int = Field(5, gt=0)
    kvCacheUtilThreshold: float = Field(0.8, gt=0, le=1)
    metricsStalenessThreshold: Duration = Field(0.2, gt=0)
    headroom: float = Field(0.0, ge=0)


class PickerConfigSpec(StrictModel):
    apiVersion: Literal["inference.networking.x-k8s.io/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    featureGates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(min_length=1)
    schedulingProfiles: list[ProfileSpec] | None = None
    saturationDetector: SaturationSpec | None = None
    data: dict[str, Any] | None = None
    flowControl: dict[str, Any] | None = None


@dataclass
class LoadedConfig:
    scheduler: Scheduler
    effective: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    source: str = SOURCE


def _kind(plugin: object) -> str:
    for kind, proto in (("filter", Filter), ("scorer", Scorer), ("picker", Picker), ("handler", ProfileHandler)):
        if isinstance(plugin, proto):
            return kind
    return "other"


def load_picker_config(text: str, source: str = SOURCE, registry: Registry | None = None) -> LoadedConfig:
    """Parse, default, validate and build; raise ConfigError naming the field for anything invalid."""
    registry = registry or registries.default()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["expected a mapping with apiVersion, kind, plugins and schedulingProfiles"])
    spec = parse(PickerConfigSpec, raw, source)
    warnings: list[str] = []
    for i, gate in enumerate(spec.featureGates):
        if gate not in KNOWN_GATES:
            warnings.append(f"featureGates[{i}]: unknown feature gate {gate!r}, ignored")
    for section in ("data", "flowControl"):
        if getattr(spec, section) is not None:
            warnings.append(f"{section}: accepted but not used by the kit's picker")

    plugins: dict[str, Any] = {}
    errors: list[str] = []
    for i, p in enumerate(spec.plugins):
        name = p.name or p.type
        if name in plugins:
            errors.append(f"plugins[{i}].name: duplicate plugin name {name!r}")
            continue
        try:
            plugins[name] = registry.create(p.type, name, p.parameters, f"plugins[{i}]", warnings)
        except ConfigError as err:
            errors.extend(err.problems)
    if errors:
        raise ConfigError(source, errors)

    profiles_spec = spec.schedulingProfiles
    if profiles_spec is None:
        refs = [PluginRef(pluginRef=n) for n, pl in plugins.items() if _kind(pl) in ("filter", "scorer", "picker")]
        profiles_spec = [ProfileSpec(name="default", plugins=refs)]
    if not profiles_spec:
        raise ConfigError(source, ["schedulingProfiles: at least one profile is required"])
    handlers = [pl for pl in plugins.values() if _kind(pl) == "handler"]
    if not handlers:
        if len(profiles_spec) > 1:
            raise ConfigError(source, ["plugins: several schedulingProfiles need a profile handler plugin"])
        handlers = [registry.create("single-profile-handler")]
        plugins.setdefault(handlers[0].name, handlers[0])
    if len(handlers) > 1:
        raise ConfigError(source, ["plugins: only one profile handler may be configured"])

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
            kind = _kind(pl)
            if kind == "scorer":
                scorers.append((pl, 1.0 if ref.weight is None else ref.weight))
            else:
                if ref.weight is not None:
                    warnings.append(f"{here}.weight: {ref.pluginRef} is a {kind}, its weight is ignored")
                if kind == "filter":
                    filters.append(pl)
                elif kind == "picker":
                    pickers.append(pl)
                else:
                    errors.append(f"{here}.pluginRef: {ref.pluginRef} is a {kind}, not a filter, scorer or picker")
        if len(pickers) > 1:
            errors.append(f"{where}.plugins: a profile has exactly one picker, found {len(pickers)}")
        if not pickers:
            pickers = [plugins.get("max-score-picker") or registry.create("max-score-picker")]
            if _kind(pickers[0]) != "picker":
                pickers = [registry.create("max-score-picker")]
        profiles.append(Profile(ps.name, filters, scorers, pickers[0]))
    if errors:
        raise ConfigError(source, errors)

    sat = spec.saturationDetector or SaturationSpec()
    scheduler = Scheduler(profiles, handlers[0], SaturationDetector(
        sat.queueDepthThreshold, sat.kvCacheUtilThreshold, sat.metricsStalenessThreshold, sat.headroom),
        plugins=list(plugins.values()))
    effective = {
        "apiVersion": API_VERSION, "kind": "EndpointPickerConfig",
        "plugins": [{"name": n, "type": p.type} for n, p in plugins.items()],
        "schedulingProfiles": [{"name": p.name, "plugins":
                                [{"pluginRef": f.name} for f in p.filters]
                                + [{"pluginRef": s.name, "weight": w} for s, w in p.scorers]
                                + [{"pluginRef": p.picker.name}]} for p in profiles],
        "saturationDetector": sat.model_dump(),
    }
    return LoadedConfig(scheduler, effective, warnings, source)


def load_picker_file(path: str | Path) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(str(p), [f"cannot read the scheduler config: {err.strerror}"]) from None
    return load_picker_config(text, str(p))
