"""One contract, two servers: the same tests run against ``kit sim`` and against real vLLM 0.32.

The real servers are the ``local-vllm`` environment's, deployed once for this package by the local target
(two ``vllm serve`` processes and the kit's gateway, on free ports, with their own state folder) and shared by
every test marked ``vllm``; the simulator is one ``kit sim`` configured like them (block size 32, 256 blocks,
8,192 tokens of context, vLLM's ``sha256`` block hash seeded with ``PYTHONHASHSEED=42``).

Without vLLM (``make vllm``) the real-vLLM tests are skipped, unless ``$KIT_REQUIRE_VLLM`` is set (CI sets it):
then they fail. ``make quick`` deselects them (``-m "not vllm"``). ``$KIT_TEST_VLLM_STATE_DIR`` reuses a stack
already deployed with that state folder (and leaves it running), to iterate on the tests without restarting vLLM.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from kit.errors import KitError
from kit.manifests.environments import LocalVllmSettings, load_environment
from kit.targets.local import LocalTarget
from kit.targets.processes import Proc, free_port, free_port_block, start, stop, wait_ready
from kit.targets.vllm import python as vllm_python

MODEL = "Qwen/Qwen3-0.6B"
MAX_MODEL_LEN = 8192
BLOCK_SIZE = 32
HASH_SEED = "42"
REQUIRE_ENV = "KIT_REQUIRE_VLLM"
# The first real-vLLM test also waits for the session's servers to start (a minute; several on a busy machine).
VLLM_TIMEOUT = 1200
REUSE_ENV = "KIT_TEST_VLLM_STATE_DIR"


class Subscriber(threading.Thread):
    """A SUB socket bound where servers publish their KV-cache events (as the picker binds it), receiving
    all the time in a thread; ``batches()`` returns what arrived for one topic."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.messages: queue.Queue[list[bytes]] = queue.Queue()
        self.ready, self.done = threading.Event(), threading.Event()

    def run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.bind(f"tcp://127.0.0.1:{self.port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.ready.set()
        while not self.done.is_set():
            if sub.poll(20):
                self.messages.put(sub.recv_multipart())
        sub.close(linger=0)

    def take(self, topic: str, quiet: float = 1.0, wait: float = 10.0) -> list[tuple[int, bytes]]:
        """(seq, payload) of the batches for ``topic`` received until none came for ``quiet`` seconds (waiting
        up to ``wait`` for the first)."""
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + wait
        while True:
            try:
                t, seq, payload = self.messages.get(timeout=quiet if out else max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                return out
            if t.decode() == topic:
                out.append((int.from_bytes(seq, "big"), payload))

    def close(self) -> None:
        self.done.set()
        self.join(5)


@dataclass
class Server:
    """One model server under contract."""

    kind: str  # "sim" or "vllm"
    url: str
    topic: str  # its KV-cache events' topic
    events_port: int  # where it publishes them (a test binds it)

    @contextlib.contextmanager
    def events(self) -> Iterator[Subscriber]:
        """A subscriber to this server's events while the block runs (the port is free again after it)."""
        sub = Subscriber(self.events_port)
        sub.start()
        assert sub.ready.wait(5)
        time.sleep(1.5)  # the server's PUB socket (re)connects; messages before that are dropped
        try:
            yield sub
        finally:
            sub.close()


@dataclass
class Stack:
    """The package's real-vLLM stack."""

    target: LocalTarget
    state_dir: Path
    port: int
    servers: list[Proc]

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_port(self) -> int:
        return self.port + len(self.servers) + 1


def require_vllm() -> None:
    """Skip when vLLM is not installed, or fail when ``$KIT_REQUIRE_VLLM`` says it must be."""
    try:
        vllm_python(LocalVllmSettings())
    except KitError as err:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"${REQUIRE_ENV} is set and vLLM cannot be found: {err}")
        pytest.skip(f"real vLLM is not installed (make vllm): {err}")


@pytest.fixture(scope="package")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``kit deploy -e local-vllm`` once for this package's tests, on free ports; destroyed after the last of them
    (idle vLLM servers still cost CPU the rest of the suite needs), and then nothing of it may be left running."""
    require_vllm()
    reuse = os.environ.get(REUSE_ENV)
    state_dir = Path(reuse) if reuse else tmp_path_factory.mktemp("vllm-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIT_STATE_DIR", str(state_dir))
        if reuse:
            recorded = json.loads(next(state_dir.glob("local-*.json")).read_text())
            port = int(recorded["gateway"]["url"].rsplit(":", 1)[1])
        else:
            port = free_port_block(4)
        target = LocalTarget(load_environment("local-vllm", overrides={"local": {"gateway_port": port}}))
        target.deploy(timeout=60)
        stack = Stack(target, state_dir, port, target._load().sims)
        try:
            yield stack
        finally:
            if not reuse:
                mp.setenv("KIT_STATE_DIR", str(state_dir))  # as deployed, whatever a test left in the environment
                target.destroy()
                left = _marked_anywhere(str(target.state_file))
                assert not left, f"processes of the stack still run after destroy: {left}"


def _marked_anywhere(stack: str) -> list[str]:
    """Every process (children too: vLLM's engine cores) whose environment carries the stack's marker."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            if f"KIT_STACK={stack}".encode() in env.split(b"\0"):
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{d.name}: {cmdline!r}")
        except OSError:
            continue
    return found


@pytest.fixture(scope="package")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``kit sim`` shaped like the local-vllm servers."""
    port, events_port = free_port(), free_port()
    topic = f"kv@127.0.0.1:{port}@{MODEL}"
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{events_port}",
              "topic": topic}
    args = ["sim", "--port", str(port), "--model", MODEL, "--max-model-len", str(MAX_MODEL_LEN), "--block-size",
            str(BLOCK_SIZE), "--num-gpu-blocks", "256", "--max-num-seqs", "16", "--prefix-caching-hash-algo", "sha256",
            "--kv-events-config", json.dumps(events)]
    launched = start(args, f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("sim") / "sim.log", role="simulator",
                     env={"PYTHONHASHSEED": HASH_SEED})
    [proc] = wait_ready([launched], 30)
    yield Server("sim", proc.url, topic, events_port)
    stop(proc)


@pytest.fixture(scope="package")
def vllm_server(vllm_stack: Stack) -> Server:
    """The first real vLLM server of the session's stack."""
    proc = vllm_stack.servers[0]
    return Server("vllm", proc.url, f"kv@{proc.url.split('://')[1]}@{MODEL}", vllm_stack.events_port)


@pytest.fixture(params=["sim", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.timeout(VLLM_TIMEOUT)])])
def server(request: pytest.FixtureRequest) -> Server:
    """Each contract test runs once against the simulator and once against real vLLM."""
    return request.getfixturevalue(f"{request.param}_server")
