"""The ``kit`` command: a thin layer that parses arguments and calls one library function each."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from kit.config import parse
from kit.errors import KitError


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per field of ``model``; the field description is the help text."""
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        ann = f.annotation
        if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        help_ = f"{f.description} (default: {f.default})"
        if ann is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):  # a nested settings object, given as JSON
            parser.add_argument(flag, dest=name, default=None, help=help_, metavar="JSON")
        else:
            parser.add_argument(flag, dest=name, type=ann, default=None, help=help_, metavar=name.upper())


def model_from_args(model: type[BaseModel], args: argparse.Namespace, source: str) -> BaseModel:
    values = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    return parse(model, values, source)


def _sim(args: argparse.Namespace) -> int:
    from kit.sim.config import SimConfig
    from kit.sim.server import serve

    cfg = model_from_args(SimConfig, args, "kit sim")
    serve(cfg, args.host, args.port)
    return 0


def _request(args: argparse.Namespace) -> int:
    from kit.experiments.client import request

    res = request(args.url, args.prompt, chat=args.chat, stream=args.stream, model=args.model,
                  max_tokens=args.max_tokens)
    if not res.ok:
        raise KitError(f"request to {args.url} failed ({res.status}): {res.error}")
    print(res.text.strip())
    print("---")
    if res.endpoint:
        print(f"served by:   {res.endpoint}")
    itl = f", inter-token {1000 * sum(res.itls) / len(res.itls):.1f} ms mean" if res.itls else ""
    first = f"first token {1000 * res.ttft:.1f} ms, " if res.ttft is not None else "not streamed: "
    print(f"timings:     {first}total {1000 * res.e2e:.1f} ms{itl}")
    print(f"tokens:      {res.prompt_tokens} prompt ({res.cached_tokens} from prefix cache), "
          f"{res.completion_tokens} generated, finish reason {res.finish_reason}")
    return 0


def _objectives(pairs: list[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        name, _, prio = pair.partition("=")
        try:
            out[name] = int(prio)
        except ValueError:
            raise KitError(f"--objective {pair!r}: expected NAME=PRIORITY with an integer priority") from None
    return out


def _gateway(args: argparse.Namespace) -> int:
    from kit.gateway import Gateway, GatewaySettings, endpoints_from_urls, serve
    from kit.paths import default_scheduler_config
    from kit.picker import load_picker_file

    path = args.config or default_scheduler_config()
    config = load_picker_file(path, release=args.release)
    if args.picker_replicas < 1:
        raise KitError(f"--picker-replicas: need at least one endpoint picker, got {args.picker_replicas}")
    if args.picker_replicas > 1:  # kit-only: replicas splitting the requests, each with its own state
        from kit.picker.replicas import ReplicatedScheduler

        more = [load_picker_file(path, release=args.release).scheduler for _ in range(args.picker_replicas - 1)]
        config.scheduler = ReplicatedScheduler([config.scheduler, *more])
    endpoints = endpoints_from_urls(args.endpoints.split(","))
    if not endpoints:
        raise KitError("--endpoints: give at least one model-server URL")
    if config.scheduler.renders:  # kit-only: not upstream's localhost:8000, which is this gateway on a local stack
        config.scheduler.default_render_url((args.render_url or endpoints[0].url).rstrip("/"))
    settings = model_from_args(GatewaySettings, args, "kit gateway")
    gw = Gateway(config, endpoints, args.model, objectives=_objectives(args.objective), settings=settings)
    config.scheduler.start()  # plugins' background work, e.g. the precise scorer's KV-event subscriber
    try:
        serve(gw, args.host, args.port)
    finally:
        config.scheduler.close()
    return 0


def _env(args: argparse.Namespace):
    from kit.manifests.environments import load_environment, parse_set

    overrides = parse_set(getattr(args, "set", []) or [])
    if getattr(args, "replicas", None):
        overrides["replicas"] = args.replicas
    if getattr(args, "port", None):
        overrides.setdefault("local", {})["gateway_port"] = args.port
    return load_environment(args.env, namespace=args.namespace, postfix=args.postfix, overrides=overrides)


def _target(args: argparse.Namespace):
    from kit.targets import target_for

    return target_for(_env(args), kubeconfig=getattr(args, "kubeconfig", None), context=getattr(args, "context", None))


def _render(args: argparse.Namespace) -> int:
    from kit.manifests.render import render, summary, to_yaml, write

    rendered = render(_env(args), _scheduler_config(args))
    if args.out:
        for f in write(rendered, args.out):
            print(f"wrote {f}")
    else:
        print(to_yaml(rendered.objects), end="")
    print(f"kit render: {len(rendered.objects)} objects: " + ", ".join(summary(rendered)), file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kit.manifests.validate import CrdSchemas, checked_render

    env = _env(args)
    crds = None
    if args.schemas == "cluster":
        from kit.targets.cluster.client import Cluster

        crds = Cluster(kubeconfig=args.kubeconfig, context=args.context).crd_schemas()
    elif args.schemas:
        crds = CrdSchemas.from_dir(str(Path(args.schemas).resolve()))
    rendered, notes = checked_render(env, _scheduler_config(args), crds)
    for n in notes:
        print(f"note: {n}")
    print(f"kit validate: {len(rendered.objects)} objects for {env.name} are valid"
          + (f" ({len(notes)} not checked)" if notes else ""))
    return 0


def _envs(args: argparse.Namespace) -> int:
    from kit.manifests.environments import available, releases

    follows = releases()
    width = max(map(len, follows), default=0)
    for name, desc in available().items():
        print(f"{name:{width}}  {follows[name]:11}  {desc}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    kwargs = {"timeout": args.timeout} if args.timeout else {}
    _target(args).deploy(_scheduler_config(args), dry_run=args.dry_run, **kwargs)
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from kit.experiments.results import table

    st = _target(args).status()
    if args.json:
        print(json.dumps(st.detail, indent=2))
    else:
        print(st.headline)
        if st.rows:
            print(table(st.rows))
    return 0 if st.ready or not st.deployed else 1


def _destroy(args: argparse.Namespace) -> int:
    _target(args).destroy()
    return 0


def add_workload_flags(parser: argparse.ArgumentParser, rate_list: bool = False) -> None:
    """``--workload`` and every workload's fields (each flag once), and the load's (``--rate`` as a
    comma-separated list when ``rate_list``)."""
    from kit.experiments.workloads import WORKLOADS, Load

    parser.add_argument("--workload", default="shared-prefix",
                        help=f"what to send: {', '.join(WORKLOADS)} (default: shared-prefix)")
    seen: set[str] = set()
    for model in WORKLOADS.values():
        add_model_flags(parser, model, skip=seen)
        seen |= set(model.model_fields)
    add_model_flags(parser, Load, skip=("stages", "rate") if rate_list else ("stages",))
    if rate_list:
        parser.add_argument("--rate", default=None, metavar="RATE[,RATE...]",
                            help="requests (conversations) per second; several, comma-separated, for a sweep")
    parser.add_argument("--stages", default=None, metavar="RATE:SECONDS,...",
                        help="rate stages instead of one rate, e.g. 10:30,20:30")


def workload_from_args(args: argparse.Namespace, source: str):
    """The workload ``--workload`` names, from the flags that belong to it (a flag of another workload is an error)."""
    from kit.errors import UnknownChoiceError
    from kit.experiments.workloads import WORKLOADS

    if args.workload not in WORKLOADS:
        raise UnknownChoiceError("workload", args.workload, WORKLOADS)
    model = WORKLOADS[args.workload]
    others = {f for m in WORKLOADS.values() for f in m.model_fields} - set(model.model_fields)
    stray = sorted(f for f in others if getattr(args, f, None) is not None)
    if stray:
        raise KitError(f"--{stray[0].replace('_', '-')} does not apply to --workload {args.workload}")
    return model_from_args(model, args, source)


def _describe(w) -> str:
    from kit.experiments.workloads import MultiTurn

    if isinstance(w, MultiTurn):
        return (f"multi-turn ({w.conversations} conversations × {w.turns} turns, system {w.system_prompt_len} "
                f"+ question {w.question_len} → {w.output_len} tokens per turn)")
    return (f"{type(w).__name__} ({w.groups} groups × {w.prompts_per_group} prompts, system "
            f"{w.system_prompt_len} + question {w.question_len} → {w.output_len} tokens)")


def _bench(args: argparse.Namespace) -> int:
    import json

    from kit.experiments.loadgen import run_workload
    from kit.experiments.workloads import Load

    w = workload_from_args(args, "kit bench")
    if args.rate is None and args.concurrency is None and args.stages is None:
        args.concurrency = 8
    load = model_from_args(Load, args, "kit bench")
    print(f"kit bench: {_describe(w)}, {load.describe()}, against {args.url}", file=sys.stderr)
    summary = run_workload(args.url, w, load).summary()
    text = json.dumps(summary.to_dict(), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"kit bench: wrote {args.out}", file=sys.stderr)
    return 0 if summary.ok else 1


def _floats(text: str, flag: str, kind: type = float) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KitError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise KitError(f"{flag}: expected positive numbers, got {text!r}")
    return values


def _scenario(fleet) -> str:
    """The kit-only scenario knobs a simulation uses, for its first line."""
    parts = []
    if fleet.picker_replicas > 1:
        parts.append(f"{fleet.picker_replicas} picker replicas")
    if fleet.outside_rate:
        parts.append(f"outside traffic {fleet.outside_rate:g}/s ({fleet.outside_prompt_len} → "
                     f"{fleet.outside_output_len} tokens)")
    return "".join(f", {p}" for p in parts)


def _simulate(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from kit import paths
    from kit.experiments.results import table
    from kit.experiments.workloads import Load
    from kit.fleet import Fleet, compare_profiles, sweep
    from kit.sim.config import SimConfig

    w = workload_from_args(args, "kit simulate")
    rates = _floats(args.rate, "--rate") if args.rate else []
    replicas = _floats(args.replicas, "--replicas", int)
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    for p in profiles:
        if not Path(paths.scheduler_profile(p)).is_file():
            raise KitError(f"--profile {p}: no such file or shipped profile; shipped: "
                           + ", ".join(paths.scheduler_profiles()))
    sim = model_from_args(SimConfig, args, "kit simulate")
    fleet = Fleet(replicas=replicas[0], profile=profiles[0], sim=sim, refresh_interval=args.refresh_interval,
                  sample_interval=args.sample_interval, seed=w.seed, event_lag=args.event_lag,
                  picker_replicas=args.picker_replicas, outside_rate=args.outside_rate,
                  outside_prompt_len=args.outside_prompt_len, outside_output_len=args.outside_output_len)
    if args.rate is None and args.concurrency is None and args.stages is None:
        raise KitError("give --rate (comma-separated for a sweep), --stages or --concurrency")
    args.rate = rates[0] if len(rates) == 1 else None
    if len(rates) > 1 or len(replicas) > 1:
        if not rates:
            raise KitError("a sweep over replicas needs --rate")
        load = model_from_args(Load, argparse.Namespace(**{**vars(args), "rate": rates[0]}), "kit simulate")
        print(f"kit simulate: sweep of {_describe(w)}: rates {rates}, replicas {replicas}, profiles "
              f"{', '.join(profiles)} ({len(rates) * len(replicas) * len(profiles)} points){_scenario(fleet)}",
              file=sys.stderr)
        result = sweep(w, load, rates, replicas, profiles, fleet, jobs=args.jobs)
        print(table(result.table()))
        if args.slo_ttft_p90:
            print(f"\ncapacity: highest rate meeting TTFT p90 <= {args.slo_ttft_p90:g} s")
            print(table(result.capacity(args.slo_ttft_p90)))
        if args.out:
            print(f"kit simulate: wrote {result.save(args.out)}", file=sys.stderr)
        return 0
    load = model_from_args(Load, args, "kit simulate")
    print(f"kit simulate: {_describe(w)}, {load.describe()}, {fleet.replicas} simulated replicas, "
          f"profile {', '.join(profiles)}, virtual clock{_scenario(fleet)}", file=sys.stderr)
    cmp = compare_profiles(w, load, profiles, fleet, progress=True,
                           say=lambda m: print(f"kit simulate: {m}", file=sys.stderr))
    if len(cmp.runs) == 1:
        text = json.dumps(cmp.runs[0].summary.to_dict(), indent=2)
    else:
        text = json.dumps({r.profile: asdict(r.summary) for r in cmp.runs}, indent=2)
    print(text)
    if args.out:
        print(f"kit simulate: wrote {cmp.save(args.out)} (summaries, every request, metric samples)", file=sys.stderr)
    return 0 if all(r.summary.ok for r in cmp.runs) else 1


def _bench_picker(args: argparse.Namespace) -> int:
    import json

    from kit.picker.bench import bench_picker

    print(json.dumps(bench_picker(args.endpoints, args.prompt_chars, args.requests, args.config), indent=2))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit.experiments.calibrate import calibrate

    calibrate(args.url, Path(args.out), name=args.name, repeat=args.repeat, max_prefill=args.max_prefill,
              max_seqs=args.max_seqs)
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit import tiny_model

    if args.python:
        python = args.python
    else:
        from kit.manifests.environments import LocalVllmSettings
        from kit.targets.vllm import python as vllm_python

        python = vllm_python(LocalVllmSettings())
    print(tiny_model.ensure(python, out=Path(args.out) if args.out else None))
    return 0


def _scheduler_config(args: argparse.Namespace) -> str | None:
    """``--scheduler-config``: a file, or the name of a shipped profile (``templates/scheduler/<name>.yaml``)."""
    from kit import paths

    return paths.scheduler_profile(args.scheduler_config) if args.scheduler_config else None


def _plugins(args: argparse.Namespace) -> int:
    from kit.picker import catalog

    entries = catalog.catalog(args.release)
    print(catalog.markdown(entries, args.release) if args.markdown else catalog.text(entries),
          end="" if args.markdown else "\n")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kit.demo import run_demo

    return run_demo(args.out, port=args.port)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``kit`` parser. Flags generated from a settings model are added only to ``command``'s
    subparser (all of them when None), so a server process imports only the models it runs."""
    p = argparse.ArgumentParser(prog="kit", description="Learn, deploy and study inference scheduling for vLLM.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sim", help="run one simulated vLLM model server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8001, help="port to bind (default: 8001)")
    if command in (None, "sim"):
        from kit.sim.config import SimConfig

        add_model_flags(s, SimConfig)
    s.set_defaults(func=_sim)

    r = sub.add_parser("request", help="send one request; print the reply, the serving endpoint and timings")
    r.add_argument("prompt")
    r.add_argument("--url", default="http://127.0.0.1:8000", help="gateway or server URL")
    r.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    r.add_argument("--stream", action="store_true", help="stream the reply (server-sent events)")
    r.add_argument("--model", default=None, help="model name (default: the server's)")
    r.add_argument("--max-tokens", type=int, default=32)
    r.set_defaults(func=_request)

    g = sub.add_parser("gateway", help="run the gateway with the endpoint picker in front of model servers")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    g.add_argument("--endpoints", required=True, help="model-server URLs, comma-separated")
    g.add_argument("--config", help="EndpointPickerConfig YAML (default: templates/scheduler/default-plugins.yaml)")
    g.add_argument("--model", default="Qwen/Qwen3-0.6B", help="model name the pool serves")
    g.add_argument("--objective", action="append", default=[], metavar="NAME=PRIORITY",
                   help="priority of requests naming this objective in x-gateway-inference-objective "
                        "(negative = sheddable)")
    g.add_argument("--picker-replicas", type=int, default=1,
                   help="kit-only: endpoint pickers splitting the requests at random, each with its own state "
                        "(prefix index); precise indexes all read every KV event (default: 1)")
    g.add_argument("--release", choices=["v0.7", "v0.10"], default=None,
                   help="the upstream release the picker follows: v0.7 (the guide's llm-d-inference-scheduler) or "
                        "v0.10 (llm-d-router v0.10.0); default: the one the config declares (# release: ...), "
                        "else v0.7. The picker's metric names follow it")
    g.add_argument("--render-url", default=None,
                   help="where a token-producer whose config leaves vllm.url unset renders prompts (default: "
                        "the first of --endpoints; upstream's default, http://localhost:8000, is the gateway "
                        "itself on a local stack)")
    if command in (None, "gateway"):
        from kit.gateway.settings import GatewaySettings

        add_model_flags(g, GatewaySettings)
    g.set_defaults(func=_gateway)

    e = sub.add_parser("envs", help="list environments")
    e.set_defaults(func=_envs)

    def env_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-e", "--env", default="istio", help="environment (see `kit envs`; default: istio)")
        parser.add_argument("-n", "--namespace", help="namespace (default: $NAMESPACE or the guide's)")
        parser.add_argument("--postfix", help="release postfix (default: $RELEASE_NAME_POSTFIX or the guide's)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override an environment field, e.g. --set replicas=4")

    def cluster_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        parser.add_argument("--context", help="kubeconfig context (default: the current one)")

    rd = sub.add_parser("render", help="render the manifests (one YAML file per release with -o)")
    env_flags(rd)
    rd.add_argument("-o", "--out", help="folder to write infra-<rn>.yaml, gaie-<rn>.yaml, ms-<rn>.yaml, httproute.yaml")
    rd.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the EPP ConfigMap, or a shipped "
                                                "profile's name (e.g. optimized-baseline)")
    rd.set_defaults(func=_render)

    va = sub.add_parser("validate", help="render and validate; exit 1 listing every problem")
    env_flags(va)
    va.add_argument("--schemas", help="folder of CRD YAML files to validate custom resources against, or "
                                      "'cluster' for the CRDs installed in the cluster (default: the pinned CRDs "
                                      "the kit ships, kit/manifests/schemas)")
    cluster_flags(va)
    va.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the EPP ConfigMap, or a shipped "
                                                "profile's name (e.g. optimized-baseline)")
    va.set_defaults(func=_validate)

    dp = sub.add_parser("deploy", help="start the local stack or apply to the cluster; waits until ready")
    env_flags(dp)
    dp.add_argument("--replicas", type=int, help="model-server replicas (default: the environment's)")
    dp.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the endpoint picker, or a shipped "
                                               "profile's name (e.g. precise-prefix-cache-routing)")
    dp.add_argument("--port", type=int, help="local: gateway port (simulators take the ports after it)")
    dp.add_argument("--dry-run", action="store_true",
                    help="check everything (server side on a cluster); change nothing")
    dp.add_argument("--timeout", type=float, help="seconds to wait for readiness (default: 900 on a cluster, "
                                                  "30 per process locally)")
    cluster_flags(dp)
    dp.set_defaults(func=_deploy)

    st = sub.add_parser("status", help="what is deployed, with readiness")
    env_flags(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    cluster_flags(st)
    st.set_defaults(func=_status)

    ds = sub.add_parser("destroy", help="remove exactly what deploy created")
    env_flags(ds)
    cluster_flags(ds)
    ds.set_defaults(func=_destroy)

    b = sub.add_parser("bench", help="drive a workload through a gateway (or one server); print a JSON summary")
    b.add_argument("--url", default="http://127.0.0.1:8000", help="gateway or server URL")
    b.add_argument("--out", help="also write the JSON summary here")
    if command in (None, "bench"):
        add_workload_flags(b)
    b.set_defaults(func=_bench)

    sm = sub.add_parser("simulate", help="the picker over N simulated servers on a virtual clock (no HTTP); "
                                         "a sweep when given several rates or replica counts")
    sm.add_argument("--profile", default="default-plugins",
                    help="scheduler profile(s), comma-separated: shipped names or YAML files "
                         "(default: default-plugins)")
    sm.add_argument("--replicas", default="4", help="simulated servers; comma-separated for a sweep (default: 4)")
    sm.add_argument("--refresh-interval", type=float, default=0.05,
                    help="seconds between the picker's metric scrapes (default: 0.05, as the gateway)")
    sm.add_argument("--sample-interval", type=float, default=0.25,
                    help="seconds between the metric samples kept for plots (default: 0.25)")
    sm.add_argument("--event-lag", type=float, default=0.003,
                    help="seconds from a server's engine step to the precise prefix index having its KV-cache events "
                         "(default: 0.003, the median measured on the local stack)")
    sm.add_argument("--picker-replicas", type=int, default=1,
                    help="kit-only scenario: endpoint pickers splitting the traffic at random, each with its own "
                         "state (default: 1)")
    sm.add_argument("--outside-rate", type=float, default=0.0,
                    help="kit-only scenario: requests per second sent straight to the servers, around the picker "
                         "(default: 0)")
    sm.add_argument("--outside-prompt-len", type=int, default=1000,
                    help="outside traffic: tokens of each fresh prompt (default: 1000)")
    sm.add_argument("--outside-output-len", type=int, default=1,
                    help="outside traffic: tokens each asks for (default: 1)")
    sm.add_argument("--slo-ttft-p90", type=float, help="sweep: report the capacity at this TTFT p90 (seconds)")
    sm.add_argument("--jobs", type=int, help="sweep: processes in parallel (default: one per core)")
    sm.add_argument("--out", help="write the results here (a comparison, or the sweep)")
    if command in (None, "simulate"):
        from kit.sim.config import SimConfig

        add_workload_flags(sm, rate_list=True)
        add_model_flags(sm, SimConfig, skip=("seed", "time_scale", "fail_rate", "fail_status", "extra_latency_ms",
                                             "drop_rate"))
    sm.set_defaults(func=_simulate)

    bp = sub.add_parser("bench-picker", help="time the endpoint picker alone (in process); print JSON")
    bp.add_argument("--endpoints", type=int, default=16, help="number of endpoints")
    bp.add_argument("--prompt-chars", type=int, default=32_000, help="prompt length in characters")
    bp.add_argument("--requests", type=int, default=2000, help="picks to time")
    bp.add_argument("--config", help="EndpointPickerConfig YAML (default: the guide's)")
    bp.set_defaults(func=_bench_picker)

    ca = sub.add_parser("calibrate", help="measure a running model server's step times through its API; write a "
                                          "hardware profile for kit sim/simulate --hardware FILE")
    ca.add_argument("--url", required=True, action="append",
                    help="a model server (vLLM or kit sim, not a gateway); several are measured at once")
    ca.add_argument("--out", required=True, help="the profile file to write (YAML)")
    ca.add_argument("--name", help="the profile's name (default: the file's)")
    ca.add_argument("--repeat", type=int, default=3, help="runs per shape; the median counts (default: 3)")
    ca.add_argument("--max-prefill", type=int, default=2048,
                    help="longest prompt measured, within the server's batch budget (vLLM on a CPU: 2048)")
    ca.add_argument("--max-seqs", type=int, default=16, help="largest decode batch measured (default: 16)")
    ca.set_defaults(func=_calibrate)

    tm = sub.add_parser("tiny-model", help="build the tiny Qwen3-shaped model real vLLM serves locally "
                                           "(offline, deterministic, cached); print its folder")
    tm.add_argument("--python", help="interpreter with numpy, safetensors and tokenizers (default: vLLM's, "
                                     "from make vllm)")
    tm.add_argument("--out", help="folder to write (default: the cache, ~/.cache/kit/models)")
    tm.set_defaults(func=_tiny_model)

    pl = sub.add_parser("plugins", help="every scheduler plugin the picker implements: kind, upstream release, "
                                        "parameters and defaults")
    pl.add_argument("--release", default="v0.7", choices=("v0.7", "v0.10"),
                    help="the picker release whose plugins to list (default: v0.7, the guide's EPP)")
    pl.add_argument("--markdown", action="store_true", help="print the reference page (docs/reference/plugins*.md)")
    pl.set_defaults(func=_plugins)

    d = sub.add_parser("demo", help="the main job: bring up the local stack, show scheduling, tear it down")
    d.add_argument("--out", default="out", help="folder for what the demo writes (default: out)")
    d.add_argument("--port", type=int, default=0,
                   help="the gateway's port (default 0: the local environment's, 8000); simulators take the next ones")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KitError as err:
        print(f"kit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
