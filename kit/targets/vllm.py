"""Real vLLM as the local stack's model servers: which interpreter, which model, which flags, and startup progress.

The local target starts each server as ``<python> -m vllm.entrypoints.cli.main serve MODEL ...`` with the
interpreter of vLLM's own environment (``make vllm``; ``local.vllm.python``), and adds the flags the kit's
features need; the environment adds the rest (``local.vllm.args``):

* ``--served-model-name <model>``: clients, the gateway and the metrics use the environment's model name
  (``Qwen/Qwen3-0.6B``) whatever folder is loaded;
* ``--host``, ``--port``: the ports after the gateway's, as the simulators';
* ``--enable-prefix-caching``, ``--block-size`` (32 by default: vLLM's CPU attention needs a multiple of 32);
* ``--enable-prompt-tokens-details``: without it ``usage.prompt_tokens_details.cached_tokens`` is null, and the
  kit's per-request hit figures are empty;
* ``--enable-scale-out``: vLLM 0.32 answers ``/v1/completions/render`` and ``/v1/chat/completions/render``
  (which routers use to tokenize as the model does) only with it, else 403;
* ``--kv-events-config``: always, publishing to the port the precise profile's picker binds (so changing the
  scheduler profile restarts the gateway only, not the servers); nothing listens with other profiles, and the
  events are dropped;
* ``--shutdown-timeout``: the drain grace, so a stopped server lets open requests finish as the simulator does;
* ``VLLM_SERVER_DEV_MODE=1``: ``/reset_prefix_cache`` (``kit.session(...).reset_caches()``) is a development
  route in vLLM.

Startup takes a minute or more (torch.compile warms up; the cache in ``~/.cache/vllm`` makes later starts
faster); ``StartupProgress`` shows it as a progress bar, stage by stage, read from the servers' logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from kit import paths, tiny_model
from kit.errors import KitError
from kit.manifests.environments import Environment, LocalVllmSettings
from kit.targets.processes import Starting

PYTHON_ENV = "KIT_VLLM_PYTHON"
DEFAULT_VENV = ".venv-vllm"


def python(settings: LocalVllmSettings) -> str:
    """The interpreter of vLLM's environment: the setting, ``$KIT_VLLM_PYTHON``, the kit's ``.venv-vllm``, or the
    interpreter of a ``vllm`` command on PATH; MissingDependencyError naming the fix when there is none."""
    for candidate in (settings.python, os.environ.get(PYTHON_ENV), str(paths.ROOT / DEFAULT_VENV / "bin" / "python")):
        if candidate:
            path = Path(candidate).expanduser()
            if path.exists():
                return str(path)
            if candidate != str(paths.ROOT / DEFAULT_VENV / "bin" / "python"):
                raise KitError(f"vLLM's interpreter {candidate} (local.vllm.python or ${PYTHON_ENV}) does not exist; "
                               f"install vLLM with `make vllm` in the kit's folder, or point it at an environment "
                               "that has vLLM")
    script = shutil.which("vllm")
    if script:
        first = Path(script).read_bytes()[:512].split(b"\n")[0]
        if first.startswith(b"#!"):
            return first[2:].decode().strip()
    raise KitError(f"this environment runs real vLLM, which is not installed (no {DEFAULT_VENV} in {paths.ROOT}, no "
                   f"${PYTHON_ENV}, no vllm on PATH): run `make vllm` in the kit's folder (on a GPU machine: "
                   "`make vllm VLLM_GPU=1`), docs/how-to/run-on-real-vllm.md")


def model_path(settings: LocalVllmSettings) -> str:
    """What vLLM loads: the setting, else the tiny model's cache folder (built by ``ensure_model``)."""
    return settings.model or str(tiny_model.cache_dir() / f"tiny-qwen3-{tiny_model.fingerprint()}")


def ensure_model(settings: LocalVllmSettings, say=print) -> str:
    """Build the tiny model if the environment uses it and it is not cached yet."""
    if settings.model:
        return settings.model
    return str(tiny_model.ensure(python(settings), say=say))


def serve_args(env: Environment, port: int, events: dict | None, grace: float) -> list[str]:
    """The arguments after ``serve`` for the server on ``port``."""
    assert env.local is not None
    v, host = env.local.vllm, env.local.host
    args = [model_path(v), "--served-model-name", env.model, "--host", host, "--port", str(port),
            "--enable-prefix-caching", "--block-size", str(v.block_size), "--enable-prompt-tokens-details",
            "--enable-scale-out", "--shutdown-timeout", f"{grace:g}", "--disable-uvicorn-access-log"]
    for flag, value in (("--max-model-len", v.max_model_len), ("--max-num-seqs", v.max_num_seqs),
                        ("--max-num-batched-tokens", v.max_num_batched_tokens),
                        ("--kv-cache-memory-bytes", v.kv_cache_bytes)):
        if value is not None:
            args += [flag, str(value)]
    if events is not None:
        args += ["--kv-events-config", json.dumps(events, separators=(",", ":"))]
    return args + list(v.args)


def serve_env(settings: LocalVllmSettings, index: int) -> dict[str, str]:
    """The environment the server with this index runs with (the settings' own variables win)."""
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if settings.pin_cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(index % (os.cpu_count() or 1))
    return {**env, **settings.env}


# What a server's log says as it starts, in order (vLLM 0.32; a line not seen is skipped, not waited for).
STAGES = (
    ("arguments read", re.compile(r"non-default args")),
    ("engine starting", re.compile(r"Initializing a V1 LLM engine")),
    ("weights loaded", re.compile(r"Loading weights took")),
    ("warming up (torch.compile)", re.compile(r"Warming up model|torch\.compile takes|Compiling a graph")),
    ("KV cache ready", re.compile(r"KV cache size|init engine .* took")),
    ("HTTP server starting", re.compile(r"Starting vLLM (API )?server")),
)


def stage(text: str) -> int:
    """How many of ``STAGES`` a server's log has reached (the last one seen counts)."""
    reached = 0
    for i, (_, pattern) in enumerate(STAGES, 1):
        if pattern.search(text):
            reached = i
    return reached


class StartupProgress:
    """A progress bar over starting vLLM servers: one step per stage per server, plus one when it answers.
    Redrawn when a stage is reached, and once a second for the clock."""

    def __init__(self, starting: list[Starting], enabled: bool = True):
        from tqdm.auto import tqdm

        self.starting = starting
        self.steps = len(STAGES) + 1
        self.bar = tqdm(total=self.steps * len(starting), desc=f"starting {len(starting)} vLLM server(s)",
                        unit="step", disable=not enabled, mininterval=1.0,
                        bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed}] {postfix}")
        self.shown: tuple[int, str] = (0, "")
        self.drawn = time.monotonic()

    def __call__(self, pending: list[Starting]) -> None:
        done, slowest = 0, None
        for s in self.starting:
            if s in pending:
                reached = stage(s.log_text())
                done += reached
                slowest = reached if slowest is None else min(slowest, reached)
            else:
                done += self.steps
        label = "all answering" if slowest is None else STAGES[slowest - 1][0] if slowest else "launching"
        if (done, label) != self.shown:
            self.shown = (done, label)
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(done - self.bar.n)
            self.bar.refresh()
            self.drawn = time.monotonic()
        elif time.monotonic() - self.drawn >= 1.0:
            self.bar.refresh()
            self.drawn = time.monotonic()

    def close(self) -> None:
        self.bar.close()
