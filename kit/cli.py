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
    from kit.gateway import Gateway, endpoints_from_urls, serve
    from kit.paths import default_scheduler_config
    from kit.picker import load_picker_file

    config = load_picker_file(args.config or default_scheduler_config())
    endpoints = endpoints_from_urls(args.endpoints.split(","))
    if not endpoints:
        raise KitError("--endpoints: give at least one model-server URL")
    gw = Gateway(config, endpoints, args.model, objectives=_objectives(args.objective),
                 refresh_interval=args.refresh_interval)
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

    rendered = render(_env(args), args.scheduler_config)
    if args.out:
        for f in write(rendered, args.out):
            print(f"wrote {f}")
    else:
        print(to_yaml(rendered.objects), end="")
    print(f"kit render: {len(rendered.objects)} objects: " + ", ".join(summary(rendered)), file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kit.manifests import checked_render
    from kit.manifests.validate import CrdSchemas

    env = _env(args)
    crds = None
    if args.schemas == "cluster":
        from kit.targets.cluster.client import Cluster

        crds = Cluster(kubeconfig=args.kubeconfig, context=args.context).crd_schemas()
    elif args.schemas:
        crds = CrdSchemas.from_dir(str(Path(args.schemas).resolve()))
    rendered, notes = checked_render(env, args.scheduler_config, crds)
    for n in notes:
        print(f"note: {n}")
    print(f"kit validate: {len(rendered.objects)} objects for {env.name} are valid"
          + (f" ({len(notes)} not checked)" if notes else ""))
    return 0


def _envs(args: argparse.Namespace) -> int:
    from kit.manifests.environments import available

    for name, desc in available().items():
        print(f"{name:14} {desc}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    kwargs = {"timeout": args.timeout} if args.timeout else {}
    _target(args).deploy(args.scheduler_config, dry_run=args.dry_run, **kwargs)
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


def _bench(args: argparse.Namespace) -> int:
    import json

    from kit.experiments.loadgen import run_workload
    from kit.experiments.workloads import Load, SharedPrefix

    if args.workload != "shared-prefix":
        raise KitError(f"unknown workload {args.workload!r}; valid choices: shared-prefix")
    w = model_from_args(SharedPrefix, args, "kit bench")
    if args.rate is None and args.concurrency is None:
        args.concurrency = 8
    load = model_from_args(Load, args, "kit bench")
    print(f"kit bench: {args.workload} ({w.groups} groups × {w.prompts_per_group} prompts, system "
          f"{w.system_prompt_len} + question {w.question_len} → {w.output_len} tokens) against {args.url}",
          file=sys.stderr)
    summary = run_workload(args.url, w, load).summary()
    text = json.dumps(summary.to_dict(), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"kit bench: wrote {args.out}", file=sys.stderr)
    return 0 if summary.ok else 1


def _bench_picker(args: argparse.Namespace) -> int:
    import json

    from kit.picker.bench import bench_picker

    print(json.dumps(bench_picker(args.endpoints, args.prompt_chars, args.requests, args.config), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kit.demo import run_demo

    return run_demo(args.out)


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
    g.add_argument("--refresh-interval", type=float, default=0.05, help="seconds between metric scrapes")
    g.add_argument("--objective", action="append", default=[], metavar="NAME=PRIORITY",
                   help="priority of requests naming this objective in x-gateway-inference-objective "
                        "(negative = sheddable)")
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
    rd.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the EPP ConfigMap")
    rd.set_defaults(func=_render)

    va = sub.add_parser("validate", help="render and validate; exit 1 listing every problem")
    env_flags(va)
    va.add_argument("--schemas", help="folder of CRD YAML files to validate custom resources against, "
                                      "or 'cluster' for the CRDs installed in the cluster")
    cluster_flags(va)
    va.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the EPP ConfigMap")
    va.set_defaults(func=_validate)

    dp = sub.add_parser("deploy", help="start the local stack or apply to the cluster; waits until ready")
    env_flags(dp)
    dp.add_argument("--replicas", type=int, help="model-server replicas (default: the environment's)")
    dp.add_argument("--scheduler-config", help="EndpointPickerConfig YAML for the endpoint picker")
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
    b.add_argument("--workload", default="shared-prefix", help="workload (shared-prefix)")
    b.add_argument("--out", help="also write the JSON summary here")
    if command in (None, "bench"):
        from kit.experiments.workloads import Load, SharedPrefix

        add_model_flags(b, SharedPrefix)
        add_model_flags(b, Load)
    b.set_defaults(func=_bench)

    bp = sub.add_parser("bench-picker", help="time the endpoint picker alone (in process); print JSON")
    bp.add_argument("--endpoints", type=int, default=16, help="number of endpoints")
    bp.add_argument("--prompt-chars", type=int, default=32_000, help="prompt length in characters")
    bp.add_argument("--requests", type=int, default=2000, help="picks to time")
    bp.add_argument("--config", help="EndpointPickerConfig YAML (default: the guide's)")
    bp.set_defaults(func=_bench_picker)

    d = sub.add_parser("demo", help="the main job: bring up the local stack, show scheduling, tear it down")
    d.add_argument("--out", default="out", help="folder for what the demo writes (default: out)")
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
