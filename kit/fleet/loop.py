"""The fleet on one virtual clock: a workload, the endpoint picker, N simulated servers.

A plain event heap orders five kinds of event: a node may finish a request (each node's lower bound,
``Node.next_event``), a held request is released, a request arrives, a metrics sample is due, an outside request
arrives (a kit-only scenario, ``kit.fleet.scenario``). At equal times finishes come first. With a precise prefix
scorer the servers' KV-cache events reach its index after ``event_lag`` (``kit.fleet.events``).

The picker is the gateway's: built from the same scheduler config file (``Fleet.release``: the upstream release
it follows, by default the one the profile declares), asked to read each request as the gateway asks
(``Scheduler.request``: release v0.10's parsers) and to ``schedule`` it, told ``pre_request`` (the prefix index
learns), ``response_start`` when the request's first token is out (release v0.10's in-flight load lets the
prompt's tokens go; told at the next decision, before it is taken) and ``response_complete``, with each
endpoint's ``in_flight`` kept as the gateway keeps it. A request a producer holds for a batch window
(``burst-prefix-cache-producer``) is scheduled when its window seals (``Scheduler.hold``), its wait counted in
its TTFT. A token producer that renders (``vllm`` backend) gets the prompt's tokens from the simulated server's
tokenizer, as the server's ``/render`` routes would give them; the ``estimate`` backend runs as it is. It sees
each server's metrics as the gateway's datastore scrapes them: as they were at the last scrape tick (every
``refresh_interval`` seconds of virtual time), so load signals lag as they do in reality. A node is advanced to
a tick only when a request is routed in that tick's interval, and an idle node that was already idle at its last
scrape is not scraped again.

Times are the model's seconds (times ``time_scale``, as ``replay()`` charges them); the run starts at 0.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from kit import paths, tokenizer
from kit.errors import KitError
from kit.experiments.results import MetricSample, ProfileRun, RequestResult, Summary, summarize
from kit.experiments.workloads import Job, Load, MultiTurn, Workload, body, plan
from kit.fleet import events, scenario
from kit.fleet.node import Node
from kit.picker import Endpoint, InferenceRequest, load_picker_file
from kit.sim.config import SimConfig
from kit.sim.engine import EngineFull, Sequence
from kit.sim.kvcache import chain_hashes
from kit.vllm_metrics import EndpointMetrics

NODE, RELEASE, ARRIVAL, SAMPLE, OUTSIDE = 0, 1, 2, 3, 4

# Kept across runs in one process (a sweep runs many points of one workload): the jobs of a workload and
# load, each distinct prompt's tokens, and their block hashes per (block size, model).
_PLANS: dict[str, tuple[list[Job], list[float] | None]] = {}
_TOKENS: dict[str, list[int]] = {}
_HASHES: dict[tuple[int, int], dict[int, tuple[list[int], list[int]]]] = {}
_MAX_PROMPTS = 50_000


def _plan(w: Workload, load: Load) -> tuple[list[Job], list[float] | None]:
    key = f"{type(w).__name__}{w.model_dump_json()}{load.model_dump_json()}"
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = plan(w, load)
    return _PLANS[key]


@dataclass
class _Request:
    rid: int
    job: Job
    turn: int
    answers: list[str]
    at: float
    endpoint: Endpoint
    req: InferenceRequest
    sched: Any  # the picker (replica) that routed it


@dataclass
class Fleet:
    """What is simulated besides the workload: servers, their settings, the picker and how it sees them."""

    replicas: int = 4
    profile: str = "default-plugins"
    sim: SimConfig = field(default_factory=SimConfig)
    refresh_interval: float = 0.05
    sample_interval: float = 0.25
    seed: int = 0
    fast: bool = True
    # KV-cache events reach a precise prefix scorer this many seconds after the step (kit.fleet.events)
    event_lag: float = events.DEFAULT_LAG
    # Kit-only scenarios (kit.fleet.scenario, docs/explanation/fleet-simulator.md): pickers splitting the traffic,
    # and outside traffic
    picker_replicas: int = 1
    # The upstream release the picker follows ("v0.7", "v0.10"; None: the one the profile declares, else v0.7)
    release: str | None = None
    outside_rate: float = 0.0
    outside_prompt_len: int = 1000
    outside_output_len: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise KitError(f"replicas: need at least one server, got {self.replicas}")
        if self.refresh_interval <= 0 or self.sample_interval <= 0:
            raise KitError("refresh_interval and sample_interval must be positive")
        if self.event_lag < 0:
            raise KitError(f"event_lag: a delay cannot be negative, got {self.event_lag}")
        if self.picker_replicas < 1:
            raise KitError(f"picker_replicas: need at least one endpoint picker, got {self.picker_replicas}")
        if self.outside_rate < 0:
            raise KitError(f"outside_rate: requests per second cannot be negative, got {self.outside_rate}")
        if self.outside_rate and (self.outside_prompt_len < 1 or self.outside_output_len < 1
                                  or self.outside_prompt_len + self.outside_output_len > self.sim.max_model_len):
            raise KitError(f"outside traffic: prompt {self.outside_prompt_len} + output {self.outside_output_len} "
                           f"tokens must be at least 1 each and fit max_model_len ({self.sim.max_model_len})")


class _Run:
    def __init__(self, fleet: Fleet, w: Workload, load: Load, progress: bool, trace: scenario.Trace | None = None):
        self.fleet, self.w, self.load = fleet, w, load
        cfg = fleet.sim
        self.t = 0.0  # virtual now: the picker's clock (staleness, saturation, time-to-live)
        self.loaded = self.load_picker()
        self.sched = self.loaded.scheduler
        self.renders = self.sched.renders  # the server's render routes give the prompt's tokens
        self.starts = self.sched.starts  # some plugin wants each answer's first token
        self.holds = self.sched.holds  # a producer holds requests for a batch window: scheduled when it seals
        scenario.seed_picker(self.sched, str(fleet.seed))
        if len(_TOKENS) > _MAX_PROMPTS:
            _TOKENS.clear()
            _HASHES.clear()
        root = Node("probe", cfg.model_copy(update={"num_gpu_blocks": 2})).engine.root
        self.hashes = _HASHES.setdefault((cfg.block_size, root), {})
        self.root = root
        self.nodes = [Node(f"sim-{i:02d}", cfg, self.hashes, fleet.fast) for i in range(fleet.replicas)]
        self.eps = [Endpoint(name=n.name, url=f"sim://{n.name}", metrics=EndpointMetrics(
            block_size=cfg.block_size, num_gpu_blocks=cfg.num_gpu_blocks)) for n in self.nodes]
        self.index = {ep.name: i for i, ep in enumerate(self.eps)}
        self.replicas = (scenario.Replicas(fleet.picker_replicas, lambda: self.load_picker().scheduler, self.eps,
                                           fleet.seed) if fleet.picker_replicas > 1 else None)
        self.feed = events.attach([self.sched, *(self.replicas.schedulers if self.replicas else [])], self.nodes,
                                  fleet.event_lag)
        self.outside = (scenario.Outside(fleet.outside_rate, fleet.outside_prompt_len, fleet.outside_output_len,
                                         fleet.seed) if fleet.outside_rate else None)
        self.trace = trace
        self.cache_tokens = not isinstance(w, MultiTurn)  # conversations never repeat a prompt
        self.heap: list[tuple[float, int, int, Any]] = []
        self.count = itertools.count()
        self.bound = [math.inf] * len(self.nodes)
        self.version = [0] * len(self.nodes)
        self.pending: dict[int, _Request] = {}  # id(seq) → request
        self.awaiting: list[dict[int, tuple[Sequence, _Request]]] = [{} for _ in self.nodes]  # before first token
        self.seqs: dict[int, Sequence] = {}
        self.results: list[RequestResult] = []
        self.samples: list[MetricSample] = []
        self.rid = itertools.count()
        self.last_tick = -math.inf
        self.decision: Any = None
        self.decision_at = 0.0
        self.jobs, self.times = _plan(w, load)
        self.left = len(self.jobs)  # jobs not yet finished
        self.next_job = 0
        self.end = 0.0
        self.bar = tqdm(total=sum(len(j.questions) for j in self.jobs), desc=f"{fleet.profile} ×{fleet.replicas}",
                        unit="req", disable=not progress, leave=False, mininterval=0.5)

    def load_picker(self) -> Any:
        return load_picker_file(paths.scheduler_profile(self.fleet.profile), clock=lambda: self.t,
                                release=self.fleet.release)

    # ------------------------------------------------------------ events
    def push(self, t: float, kind: int, data: Any) -> None:
        heapq.heappush(self.heap, (t, kind, next(self.count), data))

    def rebound(self, i: int) -> None:
        b = self.nodes[i].next_event()
        if b != self.bound[i]:
            self.bound[i] = b
            self.version[i] += 1
            if b < math.inf:
                self.push(b, NODE, (i, self.version[i]))

    def start_job(self, t: float) -> None:
        job = self.jobs[self.next_job]
        self.next_job += 1
        self.push(t, ARRIVAL, (job, 0, []))

    # ------------------------------------------------------ scraping, time
    def sync(self, i: int, t: float) -> None:
        """Advance node ``i`` to ``t``, taking its scrape at the last tick on the way."""
        node, interval = self.nodes[i], self.fleet.refresh_interval
        s = math.floor(t / interval) * interval
        if node.snap_tick < s:
            node.advance(s)
            self.snapshot(i, s)
        node.advance(t)
        if node.finished:
            self.finish(i)

    def snapshot(self, i: int, s: float) -> None:
        node, m = self.nodes[i], self.eps[i].metrics
        m.waiting, m.running, m.kv_usage = node.waiting, node.running, node.kv_usage
        m.prefix_hits, m.prefix_queries = node.prefix_hits, node.prefix_queries
        self.eps[i].updated = max(s, 1e-9)  # 0 means "never scraped" to the picker
        node.snap_tick = s
        node.snap_idle = node.idle

    def scrape_all(self, t: float) -> None:
        """Every endpoint's metrics as of the last scrape tick before ``t``."""
        s = math.floor(t / self.fleet.refresh_interval) * self.fleet.refresh_interval
        if s <= self.last_tick:
            return
        self.last_tick = s
        for i, node in enumerate(self.nodes):
            if node.snap_tick >= s:
                continue
            if node.idle and node.snap_idle:
                node.snap_tick = s  # idle then and now: the same numbers
                self.eps[i].updated = max(s, 1e-9)
                continue
            self.sync(i, s)
            self.rebound(i)

    # ------------------------------------------------------------ requests
    def prompt_tokens(self, body_: dict) -> list[int]:
        if "messages" in body_:
            text = tokenizer.apply_chat_template(body_["messages"], add_generation_prompt=True)
            special = True
        else:
            text, special = body_["prompt"], False
        if not self.cache_tokens:
            return tokenizer.encode(text, allow_special=special)
        ids = _TOKENS.get(text)
        if ids is None:
            ids = _TOKENS[text] = tokenizer.encode(text, allow_special=special)
        if self.fleet.sim.enable_prefix_caching and id(ids) not in self.hashes:
            self.hashes[id(ids)] = (ids, chain_hashes(ids, self.fleet.sim.block_size, self.root))
        return ids

    def first_tokens(self, t: float) -> None:
        """Tell the pickers of every request whose first token is out by ``t`` (its server brought to ``t``)."""
        for i, waiting in enumerate(self.awaiting):
            if not waiting:
                continue
            if self.nodes[i].now < t:
                self.sync(i, t)
                self.rebound(i)
            for k, (seq, r) in list(waiting.items()):
                if seq.first_token_at is not None:
                    del waiting[k]
                    r.sched.response_start(r.req, r.endpoint)

    def arrive(self, t: float, job: Job, turn: int, answers: list[str]) -> None:
        rid = next(self.rid)
        b = body(job.prompt(turn, answers), self.w.output_len, self.load)
        path = "/v1/chat/completions" if "messages" in b else "/v1/completions"
        req = self.sched.request(b, path, self.fleet.sim.model, request_id=f"req-{rid}")
        prompt = self.prompt_tokens(b)
        if self.renders:
            req.tokens = prompt
        held = None
        if self.holds:
            held = self.replicas.choose(self.sched) if self.replicas else (self.sched, self.eps)
            until = held[0].hold(req)
            if until is not None and until > t:
                self.push(until, RELEASE, (t, rid, job, turn, answers, req, prompt, held))
                return
        self.dispatch(t, t, rid, job, turn, answers, req, prompt, held)

    def dispatch(self, t: float, at: float, rid: int, job: Job, turn: int, answers: list[str], req: InferenceRequest,
                 prompt: list[int], held: tuple[Any, list[Endpoint]] | None) -> None:
        """Schedule a request that arrived at ``at`` (held until ``t`` by a batch window) and submit it."""
        self.scrape_all(t)
        if self.feed is not None:
            self.feed.catch_up(self, t)
        if self.starts:
            self.first_tokens(t)
        if held is None:
            sched, eps = self.replicas.choose(self.sched) if self.replicas else (self.sched, self.eps)
        else:
            sched, eps = held
            if self.replicas:
                self.replicas.refresh(eps)
        decision, state = sched.schedule(req, eps)
        ep = eps[self.index[decision.picked[0]]]
        sched.pre_request(state, req, ep)
        if self.trace is not None and (belief := scenario.believed(state, ep.name)) is not None:
            self.trace.beliefs[req.request_id] = belief
        self.decision, self.decision_at = decision, t
        ep.in_flight += 1
        i = self.index[ep.name]
        self.sync(i, t)
        try:
            seq = self.nodes[i].submit(t, prompt, self.w.output_len)
        except EngineFull as err:
            ep.in_flight -= 1
            sched.response_complete(req, ep)
            self.results.append(RequestResult(status=400, started=at, endpoint=ep.name, request_id=req.request_id,
                                              error=str(err), group=job.group))
            self.bar.update()
            self.job_done(t)
            return
        self.pending[id(seq)] = r = _Request(rid, job, turn, answers, at, ep, req, sched)
        if self.starts:
            self.awaiting[i][id(seq)] = (seq, r)
        self.rebound(i)

    def finish(self, i: int) -> None:
        node = self.nodes[i]
        done, node.finished = node.finished, []
        for seq in done:
            r = self.pending.pop(id(seq), None)
            if r is None:
                continue  # outside traffic
            if self.starts and self.awaiting[i].pop(id(seq), None) is not None:
                r.sched.response_start(r.req, r.endpoint)  # first and last token before a decision saw them
            r.endpoint.in_flight -= 1
            r.sched.response_complete(r.req, r.endpoint)
            end = seq.last_token_at
            self.end = max(self.end, end)
            self.results.append(RequestResult(
                status=200, started=r.at, endpoint=r.endpoint.name, request_id=r.req.request_id,
                ttft=seq.first_token_at - r.at, e2e=end - r.at, prompt_tokens=seq.prompt_len,
                completion_tokens=seq.output_len, cached_tokens=seq.cached_tokens,
                finish_reason=seq.finish_reason, group=r.job.group))
            self.bar.update()
            if r.turn + 1 < len(r.job.questions):
                answer = tokenizer.decode(seq.tokens[seq.prompt_len:])
                self.push(end + r.job.think_time, ARRIVAL, (r.job, r.turn + 1, [*r.answers, answer]))
            else:
                self.job_done(end)

    def job_done(self, t: float) -> None:
        self.left -= 1
        if self.times is None and self.next_job < len(self.jobs):
            self.start_job(t)

    # ----------------------------------------------------------------- run
    def sample(self, t: float) -> None:
        for i, node in enumerate(self.nodes):
            self.sync(i, t)
            self.rebound(i)
            self.samples.append(MetricSample(round(t, 6), node.name, node.waiting, node.running,
                                             round(node.kv_usage, 6), node.prefix_hits, node.prefix_queries))

    def run(self) -> ProfileRun:
        if self.times is None:
            for _ in range(min(self.load.concurrency or 1, len(self.jobs))):
                self.start_job(0.0)
        else:
            for job, at in zip(self.jobs, self.times, strict=True):
                self.push(at, ARRIVAL, (job, 0, []))
            self.next_job = len(self.jobs)
        self.push(0.0, SAMPLE, None)
        if self.outside is not None:
            self.push(self.outside.first(), OUTSIDE, None)
        last_t = 0.0
        while self.heap:
            t, kind, _, data = heapq.heappop(self.heap)
            last_t = self.t = t
            if kind == NODE:
                i, version = data
                if version != self.version[i]:
                    continue
                self.bound[i] = math.inf
                self.sync(i, t)
                self.rebound(i)
            elif kind == ARRIVAL:
                self.arrive(t, *data)
            elif kind == RELEASE:
                self.dispatch(t, *data)
            elif kind == OUTSIDE:
                assert self.outside is not None
                nxt = self.outside.send(self, t)
                if nxt is not None:
                    self.push(nxt, OUTSIDE, None)
            elif self.left > 0:
                self.sample(t)
                self.push(t + self.fleet.sample_interval, SAMPLE, None)
        self.sample(max(self.end, last_t))
        self.bar.close()
        if self.trace is not None:
            self.trace.outside = self.outside.sent if self.outside else 0
            self.trace.event_batches = self.feed.delivered if self.feed else 0
        return self.profile_run()

    def profile_run(self) -> ProfileRun:
        self.results.sort(key=lambda r: (r.started, int(r.request_id.rsplit("-", 1)[1]) if r.request_id else 0))
        itl: dict[float, int] = {}
        for n in self.nodes:
            for gap, k in n.itl.items():
                itl[gap] = itl.get(gap, 0) + k
        cache = {n.name: (float(n.prefix_hits), float(n.prefix_queries)) for n in self.nodes}
        summary = summarize(self.results, self.end, cache, itl_counts=itl)
        decision = None
        if self.decision is not None:
            decision = self.decision.to_dict()
            decision["at"], decision["duration_s"] = round(self.decision_at, 6), None  # virtual time; not timed
        return ProfileRun(self.fleet.profile, summary, self.results, self.samples, decision)


def simulate(workload: Workload, load: Load, fleet: Fleet | None = None, progress: bool = False,
             trace: scenario.Trace | None = None) -> ProfileRun:
    """Run ``workload`` under ``load`` through the picker and ``fleet.replicas`` simulated servers on a virtual
    clock; the same inputs give the same result, to the byte. ``trace`` collects what the pickers believed
    (stale picks) and the scenario's counts."""
    enabled = gc.isenabled()
    gc.disable()  # millions of long-lived blocks and tokens: the cyclic collector would rescan them all
    try:
        return _Run(fleet or Fleet(), workload, load, progress, trace).run()
    finally:
        if enabled:
            gc.enable()


def summary(workload: Workload, load: Load, fleet: Fleet | None = None) -> Summary:
    """Only the summary (what a sweep keeps of each point)."""
    return simulate(workload, load, fleet).summary
