"""The supervisor: sequences every tick's commits. The heart of determinism.

Layer: orchestrator. Each pass of the loop has a fixed order of phases:

    for tick t, for each stage s (one stage unless the scheduler is "dag"):
      1. deliver  — hand each group the messages committed for its agents of
                    stage s (sorted by recipient, sender, sender's seq);
      2. run      — every group steps its agents of stage s, in isolation;
      3. gather   — collect all outputs; order them canonically by (source, seq);
      4. admit    — the scheduler applies the tick's message budget;
      5. route    — committed messages go to (t, later stage) under "dag",
                    else to (t + 1, recipient's stage);
    then: log the tick (records, fuel, digests), fold it into the run hash.

Nothing here depends on wall-clock time, process count, which group ran
which agent, or the order in which groups answered: every input to a
decision is sorted first. See docs/RUNTIME.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..shm_protocol import LAYOUT_VERSION, RECORD_DTYPE, RecordBatch
from ..worker import (
    ABI_VERSION,
    HOST_PATHS,
    FLAG_COMMITTED,
    FLAG_DEFERRED,
    FLAG_DROPPED,
    FUEL_DTYPE,
    INFERENCE_SENDER,
    K_DELIVER,
    K_FUEL,
    K_HALT,
    K_INFER,
    K_MSG,
    K_STATE,
    K_TRAP,
    STATE_DTYPE,
    AgentStatus,
    GroupSpec,
    KindSpec,
    unchunk,
)
from ..worker import AgentLoadError as _WorkerLoadError
from ..worker import check_module as _check_module
from . import _runlog
from ._errors import AgentLoadError, RunError
from ._inference import InlineInference, ProcessInference, model_config
from ._links import InlineLink, ProcessLink
from ._scenario import Scenario
from ._scheduler import admit, backlog_keep

#: Record kinds are below this (np.bincount of a stage's kinds has this many entries at least).
_N_KINDS = 256

#: Undelivered messages an agent may have waiting (deferred by the budget),
#: as a multiple of its per-tick send quota. Beyond it they are dropped and counted.
BACKLOG_QUOTA_MULTIPLE = 4


@dataclass
class RunSummary:
    run_hash: str
    ticks: int
    agents: int
    agent_steps: int
    messages: int
    deferred: int
    dropped: int
    traps: int
    wall_s: float
    agent_steps_per_s: float
    workers: int
    restarts: int
    log_path: str | None
    transport: str
    quarantined: int = 0
    halted: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d


def assign_groups(n_agents: int, n_groups: int, how: str | np.ndarray) -> np.ndarray:
    """Group index of every agent: "block" (contiguous), "round_robin", or an explicit array."""
    if isinstance(how, np.ndarray):
        if how.shape != (n_agents,) or how.min(initial=0) < 0 or how.max(initial=0) >= n_groups:
            raise ValueError("explicit assignment must give each agent a group in [0, groups)")
        return how.astype(np.int64)
    if how == "round_robin":
        return np.arange(n_agents, dtype=np.int64) % n_groups
    if how == "block":
        return (np.arange(n_agents, dtype=np.int64) * n_groups) // max(n_agents, 1)
    raise ValueError(f"unknown assignment {how!r}")


def module_table(scenario: Scenario) -> tuple[list[KindSpec], dict[str, bytes]]:
    """Read, hash and ABI-check every module before any process starts."""
    import wasmtime

    engine = wasmtime.Engine()
    specs, blobs = [], {}
    for k in scenario.kinds:
        try:
            data = Path(k.module_path).read_bytes()
        except OSError as e:
            raise AgentLoadError(f"{k.module_path}: cannot read agent module of kind '{k.name}': {e.strerror}") from None
        sha = hashlib.sha256(data).hexdigest()
        try:
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as e:
            raise AgentLoadError(f"{k.module_path}: not a valid WebAssembly module: {str(e).splitlines()[0]}") from None
        try:
            _check_module(module, str(k.module_path), k.name, k.capabilities)
        except _WorkerLoadError as e:
            raise AgentLoadError(str(e)) from None
        blobs[sha] = data
        specs.append(KindSpec(
            name=k.name, module_path=str(Path(k.module_path).resolve()), module_sha256=sha,
            capabilities=tuple(sorted(k.capabilities)), fuel_per_tick=k.fuel_per_tick,
            memory_limit_bytes=k.memory_limit_bytes, max_sends_per_tick=k.max_sends_per_tick,
            max_infers_per_tick=k.max_infers_per_tick, stage=k.stage, config_hex=k.config.hex(),
            first_agent_id=k.first_agent_id, count=k.count,
        ))
    return specs, blobs


class Supervisor:
    """Runs one scenario. ``transport`` is "process" (one OS process per group) or "inline"."""

    def __init__(self, scenario: Scenario, *, groups: int | None = None,
                 assignment: str | np.ndarray | None = None, transport: str = "process",
                 log_path: str | os.PathLike | None = None, expected=None, progress=None,
                 provider: str | None = None, inference=None, host: str = "fast") -> None:
        self.sc = scenario
        n = scenario.total_agents
        g = groups if groups is not None else (scenario.groups or os.cpu_count() or 1)
        if not 1 <= g <= 4096:
            raise ValueError("groups must be in [1, 4096]")
        how = assignment if assignment is not None else scenario.assignment
        # More groups than agents would only start idle processes; an explicit
        # assignment is taken as given (empty groups allowed).
        self.n_groups = g if isinstance(how, np.ndarray) else min(g, max(n, 1))
        self.group_of = assign_groups(n, self.n_groups, how)
        if transport not in ("process", "inline"):
            raise ValueError(f"unknown transport {transport!r}")
        self.transport = transport
        self.log_path = Path(log_path) if log_path is not None else None
        self.expected = expected  # a LogReader for verify: compare instead of trusting
        self.progress = progress
        self.kind_specs, self.module_blobs = module_table(scenario)
        self.stage_of = np.zeros(n, np.int64)
        self.priority_of = np.ones(n, np.int64)
        self.backlog_limit = np.zeros(n, np.int64)
        for k in scenario.kinds:
            sl = slice(k.first_agent_id, k.first_agent_id + k.count)
            self.stage_of[sl] = k.stage if scenario.scheduler == "dag" else 0
            self.priority_of[sl] = k.priority
            self.backlog_limit[sl] = max(1, k.max_sends_per_tick) * BACKLOG_QUOTA_MULTIPLE
        self.stages = sorted(set(self.stage_of.tolist())) or [0]
        self.infer_limit = np.zeros(n, np.int64)
        for k in scenario.kinds:
            self.infer_limit[k.first_agent_id:k.first_agent_id + k.count] = max(1, k.max_infers_per_tick) * BACKLOG_QUOTA_MULTIPLE
        self.provider = provider
        if host not in HOST_PATHS:
            raise ValueError(f"unknown host path {host!r} (one of {', '.join(HOST_PATHS)})")
        self.host = host  # how groups call agents (same results)
        self._inference = inference  # a source given by the caller (verify: the log)

    # -- header / identity -------------------------------------------------------
    def header(self) -> dict:
        import wasmtime

        return {
            "format": "wasm-engine-run",
            "abi_version": ABI_VERSION,
            "layout_version": LAYOUT_VERSION,
            "seed": self.sc.seed,
            "ticks": self.sc.ticks,
            "agents": self.sc.total_agents,
            "scenario_name": self.sc.name,
            "scenario_text": self.sc.source_text,
            "scenario_path": str(self.sc.path),
            "scenario_sha256": hashlib.sha256(self.sc.canonical_bytes()).hexdigest(),
            "modules": [{"kind": k.name, "sha256": k.module_sha256,
                         "file": os.path.relpath(self.sc.kinds[i].module_path, Path(self.sc.path).parent)}
                        for i, k in enumerate(self.kind_specs)],
            "wasmtime_version": getattr(wasmtime, "__version__", "50.0.1"),
            "log_sections": _runlog.SECTION_NAMES,
            "digest_function": _runlog.DIGEST_FUNCTION,
        }

    def identity_digest(self) -> bytes:
        """What the run hash starts from: everything that defines the run, nothing about placement."""
        h = _runlog.new_digest("run identity")
        h.update(self.sc.canonical_bytes())
        h.update(ABI_VERSION.to_bytes(4, "little"))
        for k in self.kind_specs:
            h.update(bytes.fromhex(k.module_sha256))
        return h.digest()

    # -- links -------------------------------------------------------------------
    def _make_inference(self):
        if self._inference is not None or not self.sc.models:
            return self._inference
        cfg = model_config(self.sc, self.provider)
        if self.transport == "inline":
            return InlineInference(cfg)
        return ProcessInference(cfg, multiprocessing.get_context("spawn"))

    def _make_links(self):
        specs = []
        for g in range(self.n_groups):
            ids = np.flatnonzero(self.group_of == g)
            specs.append(GroupSpec(group_index=g, run_seed=self.sc.seed, total_agents=self.sc.total_agents,
                                   max_message_bytes=self.sc.max_message_bytes, n_models=len(self.sc.models),
                                   kinds=tuple(self.kind_specs), agent_ids=tuple(ids.tolist()), host=self.host))
        if self.transport == "inline":
            return [InlineLink(s, self.module_blobs) for s in specs]
        ctx = multiprocessing.get_context("spawn")
        links = []
        try:
            for s in specs:
                links.append(ProcessLink(s, ctx))
        except BaseException:
            for link in links:
                link.close()
            raise
        return links

    # -- the run -----------------------------------------------------------------
    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        links = self._make_links()
        writer = None
        try:
            self.inference = self._make_inference()
        except BaseException:
            for link in links:
                link.close()
            raise
        try:
            if self.inference is not None:
                self.inference.start()
            for link in links:
                link.start()
            if self.inference is not None:
                self.inference.wait_ready()
            for link in links:
                link.wait_ready()
            if self.log_path is not None:
                writer = _runlog.open_writer(self.log_path, self.header(), self.module_blobs, self.kind_specs,
                                             self.sc.fsync_every_ticks)
            summary = self._loop(links, writer, t0)
            if writer is not None:
                writer.close()
            return summary
        finally:
            if writer is not None and not writer.closed:
                writer.close()
            if self.inference is not None:
                try:
                    self.inference.close()
                except Exception:  # noqa: BLE001
                    pass
            for link in links:
                try:
                    link.close()
                except Exception:  # noqa: BLE001 - close every link whatever happens
                    pass

    def _loop(self, links, writer, t0) -> RunSummary:
        sc, n = self.sc, self.sc.total_agents
        run_hash = _runlog.new_digest("run hash")
        run_hash.update(self.identity_digest())
        pending: dict[tuple[int, int], list[RecordBatch]] = {}
        backlog: dict[int, RecordBatch] = {}
        status = np.zeros(n, np.uint8)
        stats = {"agent_steps": 0, "messages": 0, "deferred": 0, "dropped": 0, "traps": 0, "inference_requests": 0}
        budget = sc.message_budget_per_tick
        inf_backlog: dict[int, RecordBatch] = {}
        submitted: set[int] = set()
        latency = sc.inference_latency_ticks
        for tick in range(sc.ticks):
            fuel = np.zeros(n, np.uint32)
            logged, inputs_digest = [], _runlog.new_digest("tick inputs")
            remaining = budget
            inf_remaining = sc.inference_budget_per_tick
            tick_requests = []
            # 0. inference results due now (requests of tick - latency); wait if late
            inf_results = RecordBatch.empty()
            if tick - latency in submitted:
                submitted.discard(tick - latency)
                inf_results = self.inference.results(tick - latency)
                inf_results.headers["check"] = 0
                self._deliver_results(inf_results, tick, pending)
            for stage in self.stages:
                deliveries = RecordBatch.concat(pending.pop((tick, stage), []), copy=False)
                deliveries = deliveries.sorted_by(("destination", "source", "seq"))
                _runlog.hash_records(inputs_digest, deliveries)
                # 1-2. deliver + run, every group at once
                if self.n_groups == 1:
                    bounds = (0, len(deliveries))
                elif len(deliveries):
                    by_group = self.group_of[deliveries.headers["destination"].astype(np.int64)]
                    order = np.argsort(by_group, kind="stable")
                    deliveries = deliveries.take(order)
                    bounds = np.searchsorted(by_group[order], np.arange(self.n_groups + 1))
                else:
                    bounds = np.zeros(self.n_groups + 1, np.int64)
                for g, link in enumerate(links):
                    link.run_stage(tick, stage, deliveries.slice(bounds[g], bounds[g + 1]))
                # 3. gather, then canonical order: nothing depends on which group answered first
                outs = RecordBatch.concat([link.collect() for link in links], copy=False)
                kinds = outs.headers["kind"]
                # How many records of each kind: the checks below that find
                # nothing to do are skipped (each costs microseconds per stage).
                n_of = np.bincount(kinds, minlength=_N_KINDS).tolist()
                outs, f = _split_fuel(outs, kinds, n_of[K_FUEL])
                fuel[f["agent"]] += f["fuel"]
                stats["agent_steps"] += len(f)
                outs.headers["check"] = 0
                outs = outs.sorted_by(("source", "seq"))
                h = outs.headers
                if n_of[K_TRAP]:
                    status[h["source"][h["kind"] == K_TRAP]] = AgentStatus.QUARANTINED
                    stats["traps"] += n_of[K_TRAP]
                if n_of[K_HALT]:
                    status[h["source"][h["kind"] == K_HALT]] = AgentStatus.HALTED
                # 4. admit messages under the tick's budget (backlog first: older seqs)
                n_msg, n_inf = n_of[K_MSG], n_of[K_INFER]
                is_msg = h["kind"] == K_MSG if n_msg else None
                committed, deferred, dropped, remaining = self._admit(
                    _pick(outs, is_msg, n_msg), backlog, stage, remaining, budget, self.backlog_limit, tick)
                stats["deferred"] += len(deferred)
                stats["dropped"] += len(dropped)
                # 5. route
                self._route(committed, tick, stage, pending)
                stats["messages"] += len(committed)
                # 4b. admit inference requests under the tick's inference budget
                is_inf = h["kind"] == K_INFER if n_inf else None
                iadm, idef, idrop, inf_remaining = self._admit(
                    _pick(outs, is_inf, n_inf), inf_backlog, stage, inf_remaining,
                    sc.inference_budget_per_tick, self.infer_limit, tick)
                stats["dropped"] += len(idrop)
                tick_requests.append(iadm)
                n_others = len(outs) - n_msg - n_inf
                others = _pick(outs, (h["kind"] != K_MSG) & (h["kind"] != K_INFER) if n_others else None, n_others)
                logged.append(_flagged([(others, None), (committed, FLAG_COMMITTED), (deferred, FLAG_DEFERRED),
                                        (dropped, FLAG_DROPPED), (iadm, FLAG_COMMITTED), (idef, FLAG_DEFERRED),
                                        (idrop, FLAG_DROPPED)]))
            # 6. submit this tick's admitted requests; results are due at tick + latency
            # (one stage's admitted requests are in canonical order already)
            requests = RecordBatch.concat(tick_requests, copy=False)
            if len(tick_requests) > 1:
                requests = requests.sorted_by(("source", "seq"))
            if len(requests) and tick + latency < sc.ticks:
                self.inference.submit(tick, requests)
                submitted.add(tick)
                stats["inference_requests"] += len(requests)
            records = RecordBatch.concat(logged, copy=False).sorted_by(("source", "seq", "flags"))
            final = None
            if tick == sc.ticks - 1:
                final = self._final_states(links)
            sections, digest = _runlog.tick_sections(records, fuel, status, inputs_digest.digest(), final,
                                                     inf_results if len(inf_results) else None,
                                                     encode=writer is not None or self.expected is not None)
            run_hash.update(tick.to_bytes(8, "little") + digest)
            if final is not None:
                run_hash.update(final.tobytes())
                sections[_runlog.S_RUN_HASH] = run_hash.digest()
            if self.expected is not None:
                from ._verify import _compare

                _compare(self.expected, tick, sections)
            if writer is not None:
                writer.append_tick(tick, sections)
            if self.progress is not None:
                self.progress(tick + 1, sc.ticks, stats["agent_steps"], time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        return RunSummary(
            run_hash=run_hash.hexdigest(), ticks=sc.ticks, agents=n, agent_steps=stats["agent_steps"],
            messages=stats["messages"], deferred=stats["deferred"], dropped=stats["dropped"],
            traps=stats["traps"], wall_s=wall, agent_steps_per_s=stats["agent_steps"] / wall if wall else 0.0,
            workers=self.n_groups if self.transport == "process" else 0, restarts=0,
            log_path=str(self.log_path) if self.log_path else None, transport=self.transport,
            quarantined=int((status == AgentStatus.QUARANTINED).sum()),
            halted=int((status == AgentStatus.HALTED).sum()),
            extra={"inference_requests": stats["inference_requests"],
                   "models": self.inference.report() if self.inference is not None else []},
        )

    def _admit(self, fresh: RecordBatch, held: dict, stage: int, remaining: int, budget_per_tick: int,
               held_limit: int, tick: int) -> tuple[RecordBatch, RecordBatch, RecordBatch, int]:
        """Admit a stage's candidates under a per-tick budget (0 = unlimited),
        held-back ones first (older seqs), in canonical order.

        Returns (admitted, deferred, dropped, remaining budget). Deferred
        records stay in ``held[stage]`` for the next tick; what exceeds
        ``held_limit`` per source is dropped (``backlog_keep``).
        """
        older = held.pop(stage, None)
        if older is None:
            cands = fresh  # a stage's outputs, already in canonical order
        else:
            cands = RecordBatch.concat([older, fresh], copy=False).sorted_by(("source", "seq"))
        if not len(cands):
            return cands, cands, cands, remaining
        if budget_per_tick <= 0 or len(cands) <= remaining:
            # Unlimited, or room for all: what admit() would say, without asking it.
            if budget_per_tick > 0:
                remaining -= len(cands)
            return cands, RecordBatch.empty(), RecordBatch.empty(), remaining
        if budget_per_tick > 0 and remaining <= 0:
            # The tick's budget is spent (by an earlier stage): admit none.
            # (admit() reads a budget of 0 as unlimited.)
            ok = np.zeros(len(cands), bool)
        else:
            ok = admit(self.sc.scheduler, cands.headers["source"].astype(np.int64), remaining, tick,
                       self.sc.total_agents, self.priority_of)
        if budget_per_tick > 0:
            remaining = max(0, remaining - int(ok.sum()))
        if ok.all():
            return cands, RecordBatch.empty(), RecordBatch.empty(), remaining
        admitted = cands.take(np.flatnonzero(ok))
        rest = cands.take(np.flatnonzero(~ok))
        if not len(rest):
            return admitted, rest, rest, remaining
        keep = backlog_keep(rest.headers["source"], held_limit)
        deferred = rest.take(np.flatnonzero(keep))
        held[stage] = deferred
        return admitted, deferred, rest.take(np.flatnonzero(~keep)), remaining

    def _deliver_results(self, results: RecordBatch, tick: int, pending) -> None:
        """Inference results become inbox messages from INFERENCE_SENDER (docs/ABI.md):
        payload = u64 request id (the agent's seq) + u32 status + u32 zero + result bytes."""
        if not len(results):
            return
        msgs = _result_messages(results, tick)
        mh = msgs.headers
        if len(self.stages) == 1:
            pending.setdefault((tick, self.stages[0]), []).append(msgs)
            return
        dst_stage = self.stage_of[mh["destination"].astype(np.int64)]
        for s in sorted(set(dst_stage.tolist())):
            pending.setdefault((tick, s), []).append(msgs.take(np.flatnonzero(dst_stage == s)))

    def _route(self, committed: RecordBatch, tick: int, stage: int, pending) -> None:
        if not len(committed):
            return
        committed = committed.take(np.arange(len(committed)))  # private copy
        committed.headers["kind"] = K_DELIVER
        committed.headers["tick"] = tick
        dst = committed.headers["destination"].astype(np.int64)
        dst_stage = self.stage_of[dst]
        when = np.where(dst_stage > stage, tick, tick + 1)
        for (t, s) in sorted(set(zip(when.tolist(), dst_stage.tolist()))):
            sel = np.flatnonzero((when == t) & (dst_stage == s))
            if t < self.sc.ticks:
                pending.setdefault((t, s), []).append(committed.take(sel))

    def _final_states(self, links) -> np.ndarray:
        for link in links:
            link.request_final()
        st = np.concatenate([unchunk(link.collect(), K_STATE, STATE_DTYPE) for link in links])
        return np.sort(st, order="agent")


def _split_fuel(outs: RecordBatch, kinds: np.ndarray, n_fuel: int) -> tuple[RecordBatch, np.ndarray]:
    """``outs`` without its K_FUEL records, and the FUEL_DTYPE items they carry.

    A group sends its K_FUEL records last (GroupHost._take_outputs): with one
    group they are the batch's tail, which is sliced off (views, no copy).
    """
    if not n_fuel:
        return outs, np.zeros(0, FUEL_DTYPE)
    keep = len(outs) - n_fuel
    if kinds[keep:].tobytes() == _FUEL_KIND * n_fuel:  # the tail holds all n_fuel of them
        cut = outs.payload.size - int(outs.headers["payload_len"][keep:].sum())
        return RecordBatch._trusted(outs.headers[:keep], outs.payload[:cut]), np.frombuffer(outs.payload[cut:],
                                                                                               FUEL_DTYPE)
    return outs.take(np.flatnonzero(kinds != K_FUEL)), unchunk(outs, K_FUEL, FUEL_DTYPE)


_FUEL_KIND = K_FUEL.to_bytes(2, "little")


def _result_messages(results: RecordBatch, tick: int) -> RecordBatch:
    """Inference results as K_DELIVER records from INFERENCE_SENDER at ``tick``
    (docs/ABI.md): each payload behind u64 request id (the agent's seq),
    u32 status (the result's flags), u32 zero."""
    h = results.headers
    n = len(h)
    lens = h["payload_len"]
    size = int(lens[0])
    if lens.tobytes() == lens[:1].tobytes() * n:  # every result one length (the usual tick): one row per message
        rows = np.empty(n, _envelope(size))
        rows["id"] = h["seq"]
        rows["status"] = h["flags"]
        rows["zero"] = 0
        rows["body"] = results.payload.reshape(n, size)
        payload = rows.view(np.uint8)
    else:
        prefix = np.zeros((n, 16), np.uint8)
        prefix[:, 0:8] = h["seq"].astype("<u8").view(np.uint8).reshape(-1, 8)
        prefix[:, 8:12] = h["flags"].astype("<u4").view(np.uint8).reshape(-1, 4)
        payload = results.with_prefix(prefix).payload
    headers = np.zeros(n, RECORD_DTYPE)
    headers["kind"] = K_DELIVER
    headers["payload_len"] = lens + 16
    headers["source"] = INFERENCE_SENDER
    headers["destination"] = h["destination"]
    headers["tick"] = tick
    headers["seq"] = h["seq"]
    return RecordBatch._trusted(headers, payload)


def _envelope(size: int) -> np.dtype:
    """One result message's payload as a record: 16-byte envelope, then ``size`` bytes."""
    dt = _ENVELOPES.get(size)
    if dt is None:
        if len(_ENVELOPES) >= 64:
            _ENVELOPES.clear()
        dt = _ENVELOPES[size] = np.dtype([("id", "<u8"), ("status", "<u4"), ("zero", "<u4"),
                                          ("body", np.uint8, (size,))])
    return dt


_ENVELOPES: dict[int, np.dtype] = {}


def _pick(batch: RecordBatch, mask: np.ndarray | None, count: int) -> RecordBatch:
    """The ``count`` records where mask is true (mask None: count is 0);
    ``batch`` itself when that is all of them (so, like ``concat(copy=False)``,
    only for batches nobody modifies afterwards)."""
    if count == len(batch):
        return batch
    if not count:
        return RecordBatch.empty()
    return batch.take(np.flatnonzero(mask))


def _flagged(parts) -> RecordBatch:
    """The parts' records as one batch, each part's records flagged as given
    (None: flags kept). The parts themselves are not modified: a lone
    non-empty part that already carries its flag is returned itself."""
    full = [(b, flag) for b, flag in parts if len(b)]
    if len(full) == 1:
        b, flag = full[0]
        if flag is None or not (b.headers["flags"] != flag).any():
            return b
    out = RecordBatch.concat([b for b, _ in parts])
    flags = out.headers["flags"]
    start = 0
    for b, flag in parts:
        if flag is not None:
            flags[start:start + len(b)] = flag
        start += len(b)
    return out
