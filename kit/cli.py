"""The ``kit`` command: a thin layer that parses arguments and calls one library function each."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable, Sequence

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
        else:
            parser.add_argument(flag, dest=name, type=ann, default=None, help=help_, metavar=name.upper())


def model_from_args(model: type[BaseModel], args: argparse.Namespace, source: str) -> BaseModel:
    values = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    return parse(model, values, source)


def _sim(args: argparse.Namespace) -> int:
    from kit.sim import SimConfig, serve

    cfg = model_from_args(SimConfig, args, "kit sim")
    serve(cfg, args.host, args.port)
    return 0


def _request(args: argparse.Namespace) -> int:
    from kit.client import request

    res = request(args.url, args.prompt, chat=args.chat, stream=args.stream, model=args.model,
                  max_tokens=args.max_tokens)
    if not res.ok:
        raise KitError(f"request to {args.url} failed ({res.status}): {res.error}")
    print(res.text.strip())
    print("---")
    if res.endpoint:
        print(f"served by:   {res.endpoint}")
    itl = f", inter-token {1000 * sum(res.itls) / len(res.itls):.1f} ms mean" if res.itls else ""
    print(f"timings:     first token {1000 * (res.ttft or 0):.1f} ms, total {1000 * res.e2e:.1f} ms{itl}")
    print(f"tokens:      {res.prompt_tokens} prompt ({res.cached_tokens} from prefix cache), "
          f"{res.completion_tokens} generated, finish reason {res.finish_reason}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kit.demo import run_demo

    return run_demo(args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kit", description="Learn, deploy and study inference scheduling for vLLM.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from kit.sim.config import SimConfig

    s = sub.add_parser("sim", help="run one simulated vLLM model server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8001, help="port to bind (default: 8001)")
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

    d = sub.add_parser("demo", help="the main job: bring up the local stack, show scheduling, tear it down")
    d.add_argument("--out", default="out", help="folder for what the demo writes (default: out)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KitError as err:
        print(f"kit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
