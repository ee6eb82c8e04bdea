"""The notebook API: validated parameters, and one target's verbs.

``kit.session(environment="local", ...)`` checks every parameter (a typo fails loudly, which papermill
itself does not), loads the environment, and returns a ``Session`` holding its target (the local
processes or a cluster). Its methods deploy, report, reach the gateway, read every model server's
metrics, run experiments and clean up; none of them asks which target it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from kit import paths
from kit.errors import ConfigError, UnknownChoiceError
from kit.experiments.compare import DEFAULT_PROFILES, compare_profiles
from kit.experiments.results import picked_prefix_score
from kit.manifests.environments import Environment, available, load_environment
from kit.targets import Status, Target, target_for
from kit.vllm_metrics import EndpointMetrics

if TYPE_CHECKING:
    from kit.experiments.results import Comparison, ProfileRun
    from kit.experiments.workloads import Load, Workload
    from kit.fleet import Fleet

Say = Callable[[str], None]
# Scorers that follow where a prompt's prefix is cached (approximately, or from the servers' KV-cache events), and
# today's llm-d filter that keeps only the servers holding most of the prompt (disabled by a threshold ≤ 0).
PREFIX_SCORERS = {"prefix-cache-scorer", "precise-prefix-cache-scorer"}
PREFIX_FILTERS = {"prefix-cache-affinity-filter"}
PREFIX_PROFILE = "default-plugins"  # the guide's default: what a demonstration of prefix routing switches to


def profile_name(config: str | None) -> str | None:
    """The scheduler profile a gateway's config file is: a template's name (``default-plugins``), else the path.

    The local target runs a precise profile from a copy with the stack's KV-event port, whose first line names
    the template it came from (kit.targets.kv_events)."""
    if not config:
        return None
    path = Path(config)
    if path.parent.resolve() == paths.SCHEDULER_CONFIGS.resolve():
        return path.stem
    try:
        first = path.read_text().split("\n", 1)[0]
    except OSError:
        return config
    source = first[2:].split(",", 1)[0] if first.startswith("# ") and ", with the KV-event endpoint" in first else ""
    return profile_name(source) if source else config


def routes_by_prefix(config: str) -> bool:
    """Whether a scheduler config follows where the prompt's prefix is cached: a prefix scorer weighted in a
    profile, or a prefix-affinity filter in one."""
    doc = yaml.safe_load(Path(config).read_text()) or {}
    plugins = [p for p in doc.get("plugins") or [] if isinstance(p, dict)]
    scorers = {p.get("name") or p.get("type") for p in plugins if p.get("type") in PREFIX_SCORERS}
    filters = {p.get("name") or p.get("type") for p in plugins if p.get("type") in PREFIX_FILTERS
               and (p.get("parameters") or {}).get("affinityThreshold", 0.8) > 0}
    return any((ref.get("pluginRef") in scorers and ref.get("weight", 1) != 0) or ref.get("pluginRef") in filters
               for prof in doc.get("schedulingProfiles") or [] for ref in prof.get("plugins") or [])


@dataclass
class Session:
    env: Environment
    target: Target
    replicas_asked: bool = True  # False: use what is deployed (the notebook's replicas parameter is 0)
    port_asked: bool = True  # False: a local stack that is up keeps its gateway port (gateway_port is 0)
    kubeconfig: str | None = None
    context: str | None = None

    # -------------------------------------------------------------- lifecycle
    def plan(self, profile: str | None = None) -> list[dict[str, Any]]:
        """What deploy will create: the processes (local) or the validated objects (cluster)."""
        return self.target.plan(paths.scheduler_profile(profile) if profile else None)

    def check(self) -> list[str]:
        """What is missing before this environment can be deployed, each with its fix."""
        return self.target.check()

    def deploy(self, scheduler_config: str | None = None, say: Say = print) -> Status:
        """Deploy (idempotent); ``scheduler_config`` may be a profile name from templates/scheduler."""
        return self.target.deploy(paths.scheduler_profile(scheduler_config) if scheduler_config else None, say=say)

    def ensure(self, say: Say = print) -> Status:
        """Use the stack that is up, or deploy it (so each notebook can run on its own); says which.

        A stack that is up is used as it is (its replica count too) unless a replica count was asked for and
        differs; then it is redeployed with that count."""
        st = self.target.status()
        where = f"{self.env.name}/{self.env.release_postfix}"
        if st.ready and st.replicas and (not self.replicas_asked or st.replicas == self.env.replicas):
            self._use(st)
            say(f"using the stack that is up: {self.describe(st)} (as deployed)")
            return st
        why = ("as asked" if self.replicas_asked else "the environment's default; nothing was up")
        if st.ready and st.replicas:
            why = f"as asked; {st.replicas} were up"
        say(f"deploying {where} with {self.env.replicas} model servers ({why})")
        st = self.deploy(say=say)
        say(f"using the stack just deployed: {self.describe(st)}")
        return st

    def profile(self, st: Status | None = None) -> str | None:
        """The scheduler profile the deployed gateway runs (a template's name, or a file's path); None when it
        cannot be told (nothing deployed, or a cluster: the EPP reads its config from a ConfigMap)."""
        st = st or self.target.status()
        return profile_name(st.detail.get("scheduler_config")) if st.deployed else None

    def describe(self, st: Status | None = None) -> str:
        """What is deployed, in one line: ``local/p01: default-plugins, guide release, 4 simulators``."""
        st = st or self.target.status()
        where = f"{self.env.name}/{self.env.release_postfix}"
        if not st.deployed:
            return f"{where}: nothing deployed"
        profile = self.profile(st) or "scheduler profile not reported (the EPP's ConfigMap holds it)"
        release = self.env.release  # which upstream release the environment deploys
        roles = [r.get("role") for r in st.rows if r.get("role") not in (None, "gateway")]
        servers = (f"{len(roles)} {roles[0]}s" if roles and len(set(roles)) == 1
                   else f"{st.replicas or 0} model servers")
        return f"{where}: {profile}, {release} release, {servers}{'' if st.ready else ' (not ready)'}"

    @contextmanager
    def prefix_routing(self, say: Say = print) -> Iterator[str | None]:
        """Run the block under a profile that routes by prefix: the deployed one if it does, else the guide's
        default for the block's duration (the deployed profile is put back after it). Says which, and yields
        the profile that routes (None on a cluster, where the deployed profile cannot be read)."""
        st = self.target.status()
        current = st.detail.get("scheduler_config")
        if not current:
            say(f"{self.describe(st)}: whether its picker routes by prefix cannot be read here; the repeat "
                "finds its prefix cached only if it does")
            yield None
            return
        name = profile_name(current)
        if routes_by_prefix(current):
            say(f"the stack runs {name}, whose picker weighs where each prompt's prefix is cached")
            yield name
            return
        say(f"the stack runs {name}, whose picker does not look at prefixes: a repeated prompt may go to any "
            f"server and find nothing cached. For this demonstration the gateway runs {PREFIX_PROFILE} (the guide's "
            f"default), then goes back to {name}")
        self.target.deploy(paths.scheduler_profile(PREFIX_PROFILE), say=lambda _m: None)
        try:
            yield PREFIX_PROFILE
        finally:
            self.target.deploy(current, say=lambda _m: None)
            say(f"back on {name}")

    def _use(self, st: Status) -> None:
        """Follow the deployed stack's replica count, and locally its gateway port unless one was asked for, so
        later deploys (profile switches) reshape that stack where it is rather than start one elsewhere."""
        update: dict[str, Any] = {}
        if st.replicas and st.replicas != self.env.replicas:
            update["replicas"] = st.replicas
        url = st.detail.get("gateway")
        if self.env.local and not self.port_asked and isinstance(url, str):
            port = urlsplit(url).port
            if port and port != self.env.local.gateway_port:
                update["local"] = self.env.local.model_copy(update={"gateway_port": port})
        if update:
            self.env = self.env.model_copy(update=update)
            self.target = target_for(self.env, kubeconfig=self.kubeconfig, context=self.context)

    def with_pickers(self, n: int) -> Session:
        """This session with ``n`` endpoint pickers in the local gateway (kit-only, ``local.picker_replicas``):
        they split the requests, each with its own prefix index. The next deploy (a profile switch) restarts
        the gateway with them; the simulators and their caches stay."""
        if self.env.local is None:
            raise ConfigError("picker replicas", [f"{self.env.name} is a cluster environment; picker replicas "
                                                  "apply to the local gateway only"])
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
            raise ConfigError("picker replicas", [f"expected 1 to 16 endpoint pickers, got {n!r}"])
        env = self.env.model_copy(update={"local": self.env.local.model_copy(update={"picker_replicas": n})})
        return replace(self, env=env, target=target_for(env, kubeconfig=self.kubeconfig, context=self.context))

    def status(self) -> Status:
        return self.target.status()

    def status_rows(self) -> list[dict[str, Any]]:
        """One row per process (local) or object (cluster), with its state, for a table."""
        return self.target.status().rows

    def destroy(self, say: Say = print) -> list[str]:
        return self.target.destroy(say=say)

    # --------------------------------------------------------------- reaching
    def gateway(self) -> AbstractContextManager[str]:
        """The gateway's URL while the ``with`` block runs (a port-forward on a cluster if needed)."""
        return self.target.gateway()

    def metrics(self) -> dict[str, EndpointMetrics]:
        """Every model server's metrics, keyed by endpoint (local) or pod (cluster) name."""
        return self.target.metrics()

    def reset_caches(self) -> bool:
        """Empty every model server's prefix cache so an experiment starts cold (where the target can)."""
        return self.target.reset_caches()

    def decision(self, request_id: str) -> dict[str, Any] | None:
        """Why the picker chose an endpoint for one request (the kit's gateway keeps recent decisions)."""
        return self.target.decision(request_id)

    def prefix_beliefs(self, run: ProfileRun) -> dict[str, float]:
        """Request id → the prefix score of the endpoint the picker chose: what its prefix index believed that
        server held. Read from the gateway's recent decisions, so call it while that profile's gateway runs."""
        out = {}
        for r in run.requests:
            score = picked_prefix_score(self.decision(r.request_id)) if r.request_id else None
            if score is not None:
                out[r.request_id] = score
        return out

    # ------------------------------------------------------------- experiments
    def compare_profiles(self, workload: Workload, load: Load, profiles: tuple[str, ...] | None = None,
                         progress: bool = True, virtual: bool = False, seed: int = 0,
                         reuse: Comparison | None = None) -> Comparison:
        """The same workload under each scheduler profile, caches cold for each: live on the deployed stack,
        or with ``virtual`` on the fleet simulator's virtual clock with servers like this environment's
        (``fleet()``): the same picker and engine code, no noise from the machine, the same result every time.

        ``reuse`` (live only): an earlier live comparison on this environment; a profile it ran with this very
        workload and load is taken from it rather than run again (and says so). Virtual runs are never reused:
        they are cheap, and depend on the seed."""
        profiles = profiles or DEFAULT_PROFILES
        kept = {r.profile: r for r in reuse.runs} if (reuse is not None and not virtual
                                                      and reuse.environment == self.env.name
                                                      and reuse.workload == workload.model_dump()
                                                      and reuse.load == load.model_dump()) else {}
        fresh = tuple(p for p in profiles if p not in kept)
        if virtual:
            from kit.fleet import compare_profiles as simulated

            out = simulated(workload, load, fresh, self.fleet(seed), progress)
        else:
            out = compare_profiles(self.target, workload, load, fresh, progress)
        for p in profiles:
            if p in kept:
                s = kept[p].summary
                print(f"profile {p}: as run above (same workload and load), hit rate "
                      f"{100 * s.prefix_cache_hit_rate:.1f}%, TTFT p90 {1000 * (s.ttft_p90_s or 0):.1f} ms", flush=True)
        out.runs = [kept[p] if p in kept else out.run(p) for p in profiles]
        return out

    def fleet(self, seed: int = 0, replicas: int | None = None) -> Fleet:
        """A simulated fleet like this environment's: its replica count (or ``replicas``, if given and not 0) and
        model, and locally the very simulator settings the local stack runs (so virtual times match its
        wall-clock times) and its picker replicas."""
        from kit.fleet import Fleet, SimConfig

        settings = self.env.local.simulator if self.env.local else {}
        pickers = self.env.local.picker_replicas if self.env.local else 1
        return Fleet(replicas=replicas or self.env.replicas, sim=SimConfig(model=self.env.model, **settings),
                     seed=seed, picker_replicas=pickers)


def check_profiles(text: str) -> tuple[str, ...]:
    """``"random,default-plugins"`` → the profile names, each checked against templates/scheduler."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for n in names:
        if n not in paths.scheduler_profiles():
            raise UnknownChoiceError("scheduler profile", n, paths.scheduler_profiles())
    if not names:
        raise ConfigError("profiles", ["give at least one scheduler profile"])
    return names


def session(environment: str = "local", namespace: str | None = None, release_postfix: str | None = None,
            model: str | None = None, replicas: int | None = None, gateway_port: int = 0,
            kubeconfig: str | None = None, context: str | None = None) -> Session:
    """Validate notebook parameters and open a session; errors name the parameter and the valid choices.

    ``replicas`` None or 0: use what is deployed (``ensure``), else the environment's default.
    ``gateway_port`` (local environments only; 0 keeps the environment's, 8000) moves the gateway, and the
    simulators take the ports after it."""
    if not isinstance(environment, str) or environment not in available():
        raise UnknownChoiceError("environment", str(environment), available())
    problems = []
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
        problems.append(f"replicas: expected a whole number (0: what is deployed), got {replicas!r}")
    if not isinstance(gateway_port, int) or isinstance(gateway_port, bool) or not 0 <= gateway_port <= 65535:
        problems.append(f"gateway_port: expected 0 (the environment's) or a port number, got {gateway_port!r}")
    for name, value in (("namespace", namespace), ("release_postfix", release_postfix), ("model", model)):
        if value is not None and not isinstance(value, str):
            problems.append(f"{name}: expected text, got {value!r}")
    if problems:
        raise ConfigError("notebook parameters", problems)
    overrides: dict[str, Any] = {}
    if model:
        overrides["model"] = model
    if replicas:
        overrides["replicas"] = replicas
    env = load_environment(environment, namespace=namespace or None, postfix=release_postfix or None,
                           overrides=overrides)
    if gateway_port:
        if env.local is None:
            raise ConfigError("notebook parameters", [f"gateway_port: {environment} is a cluster environment; the "
                                                      "gateway port applies to the local environment only"])
        env = env.model_copy(update={"local": env.local.model_copy(update={"gateway_port": gateway_port})})
    return Session(env, target_for(env, kubeconfig=kubeconfig, context=context), replicas_asked=bool(replicas),
                   port_asked=bool(gateway_port), kubeconfig=kubeconfig, context=context)
