"""GroupHost: runs one group of WebAssembly agents, one stage of a tick at a time.

Layer: worker. Transport-agnostic on purpose: it takes deliveries as a
RecordBatch and returns outputs as a RecordBatch, so the same object serves
the shared-memory group process, the in-process link used by tests, and a
future remote (Ray) backend.

Isolation: every agent has its own wasmtime Store (its own fuel, memory
limit and trap state) and its own Instance. Agents of a group run one after
another; an agent's outputs are buffered here and only leave as this stage's
result, so no agent can see another's output of the same tick.

Python reference path: this module calls agents through wasmtime-py and
implements the host functions in Python. A later issue moves the per-agent
loop to C over wasmtime's C API; this path stays as the cross-check.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
from ctypes import POINTER, byref, c_uint64, c_void_p, cast
from dataclasses import asdict, dataclass, field

import numpy as np
import wasmtime
# wasmtime-py's ctypes bindings of wasmtime's C API (the "FFI loader" layer of
# wasmtime-py). The fast host path calls the *_unchecked entry points through
# them; the version is pinned in pyproject.toml and checked in make_engine().
from wasmtime import _ffi as wt_ffi

from ..shm_protocol import RECORD_DTYPE, RecordBatch
from . import _rng
from ._abi import ABI_VERSION, IMPORTS, AgentLoadError, I32, I64, check_module
from ._messages import (
    CHUNK_AGENTS,
    INIT_TICK,
    K_FUEL,
    K_HALT,
    K_INFER,
    K_LOG,
    K_MSG,
    K_PUBLISH,
    K_STATE,
    K_TRAP,
    AgentStatus,
    TrapCode,
)

#: Final-state record per agent (payload of K_STATE), 48 bytes.
STATE_DTYPE = np.dtype([("agent", "<u4"), ("status", "<u4"), ("seq", "<u4"), ("fuel_total_lo", "<u4"),
                        ("digest", "V32")])
#: Per-agent fuel record (payload of K_FUEL).
FUEL_DTYPE = np.dtype([("agent", "<u4"), ("fuel", "<u4")])

WASM_PAGE = 65536


@dataclass(frozen=True)
class KindSpec:
    """What a group needs to know of one agent kind (plain data, JSON-able)."""

    name: str
    module_path: str
    module_sha256: str
    capabilities: tuple[str, ...]
    fuel_per_tick: int
    memory_limit_bytes: int
    max_sends_per_tick: int
    max_infers_per_tick: int
    stage: int
    config_hex: str
    first_agent_id: int
    count: int


@dataclass(frozen=True)
class GroupSpec:
    """Configuration of one agent group; sent to its process as K_INIT."""

    group_index: int
    run_seed: int
    total_agents: int
    max_message_bytes: int
    n_models: int
    kinds: tuple[KindSpec, ...]
    max_log_bytes: int = 256
    max_logs_per_tick: int = 16
    max_publish_bytes: int = 4096
    #: "fast": host functions and we_step through wasmtime's *_unchecked C API
    #: (raw value slots); "reference": through wasmtime-py's checked wrappers.
    #: Both must give identical runs; tests cross-check them.
    host: str = "fast"
    agent_ids: tuple[int, ...] = field(default=())

    def to_json(self, with_ids: bool = True) -> bytes:
        d = asdict(self)
        if not with_ids:
            d["agent_ids"] = []
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, agent_ids=None) -> "GroupSpec":
        d = json.loads(data)
        d["kinds"] = tuple(KindSpec(**{**k, "capabilities": tuple(k["capabilities"])}) for k in d["kinds"])
        d["agent_ids"] = tuple(int(x) for x in (agent_ids if agent_ids is not None else d["agent_ids"]))
        return cls(**d)


class _HostFault(Exception):
    """Raised inside a host function: traps the calling agent (never the worker)."""

    def __init__(self, code: TrapCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


_TRAP_CODES = {
    wasmtime.TrapCode.OUT_OF_FUEL: TrapCode.OUT_OF_FUEL,
    wasmtime.TrapCode.UNREACHABLE: TrapCode.UNREACHABLE,
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: TrapCode.MEMORY_OUT_OF_BOUNDS,
    wasmtime.TrapCode.HEAP_MISALIGNED: TrapCode.MEMORY_OUT_OF_BOUNDS,
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: TrapCode.DIVISION_BY_ZERO,
    wasmtime.TrapCode.STACK_OVERFLOW: TrapCode.STACK_OVERFLOW,
    wasmtime.TrapCode.INTEGER_OVERFLOW: TrapCode.INTEGER_OVERFLOW,
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: TrapCode.INTEGER_OVERFLOW,
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: TrapCode.BAD_INDIRECT_CALL,
    wasmtime.TrapCode.BAD_SIGNATURE: TrapCode.BAD_INDIRECT_CALL,
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: TrapCode.BAD_INDIRECT_CALL,
}


def _classify(exc: BaseException) -> tuple[TrapCode, str]:
    """Deterministic (code, one-line detail) for anything a guest call raised."""
    if isinstance(exc, _HostFault):
        return exc.code, exc.detail
    cause = exc
    # wasmtime-py re-raises a host function's exception; look through chains.
    while cause is not None and not isinstance(cause, _HostFault):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, _HostFault):
        return cause.code, cause.detail
    if isinstance(exc, wasmtime.Trap):
        code = _TRAP_CODES.get(exc.trap_code, TrapCode.OTHER_TRAP)
        return code, exc.message.split("\n", 1)[0][:200]
    return TrapCode.OTHER_TRAP, str(exc).split("\n", 1)[0][:200]


class _Agent:
    __slots__ = (
        "id", "kind", "store", "memory", "base", "step", "status", "seq", "fuel", "sends", "logs",
        "infers", "in_lo", "in_hi", "rng_key", "rng_n", "pub", "quota", "infer_quota", "fuel_total",
        "ctx", "mem_ref", "step_ref", "globals",
    )


WASMTIME_VERSION = "50.0.1"
_RAW = wt_ffi.wasmtime_val_raw_t
_UNCHECKED_CB = wt_ffi.wasmtime_func_unchecked_callback_t
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)(lambda _env: None)


def check_wasmtime_version() -> None:
    import importlib.metadata

    have = importlib.metadata.version("wasmtime")
    if have != WASMTIME_VERSION:
        raise RuntimeError(
            f"wasm-engine needs wasmtime=={WASMTIME_VERSION} (fuel accounting and the C entry points it calls "
            f"are pinned), found {have}; reinstall with `pip install wasmtime=={WASMTIME_VERSION}`"
        )


def make_engine(kinds) -> wasmtime.Engine:
    """One engine per group, configured for determinism and many small instances."""
    check_wasmtime_version()
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    # NaN bit patterns are the one place where wasm floats may differ across
    # hosts; canonicalise them so runs hash the same on every machine.
    cfg.cranelift_nan_canonicalization = True
    cfg.wasm_threads = False
    cfg.wasm_relaxed_simd_deterministic = True
    # Reserve exactly the largest memory limit (page-rounded) so a memory never
    # moves on growth and 10,000+ instances fit in the address space.
    limit = max(k.memory_limit_bytes for k in kinds)
    cfg.memory_reservation = -(-limit // WASM_PAGE) * WASM_PAGE
    cfg.memory_reservation_for_growth = 0
    cfg.memory_guard_size = WASM_PAGE
    cfg.memory_may_move = False
    cfg.parallel_compilation = False
    return wasmtime.Engine(cfg)


class GroupHost:
    """Hosts the agents listed in a GroupSpec. Not thread-safe (one per process)."""

    def __init__(self, spec: GroupSpec, module_bytes: dict[str, bytes] | None = None) -> None:
        self.spec = spec
        if spec.host not in ("fast", "reference"):
            raise ValueError(f"unknown host path {spec.host!r}")
        self.fast = spec.host == "fast"
        self._pending: BaseException | None = None
        self._callbacks: list = []  # keep ctypes callbacks alive as long as the linkers
        self._step_args = (_RAW * 1)()
        self._fuel_out = c_uint64(0)
        self._fuel_ref = byref(self._fuel_out)
        self.engine = make_engine(spec.kinds)
        self.tick = INIT_TICK
        self.cur: _Agent | None = None
        self._in = RecordBatch.empty()
        self._in_payload_addr = 0
        self._reset_outputs()
        self._kind_of_stage: dict[int, list[_Agent]] = {}
        self.agents: list[_Agent] = []
        ids = np.asarray(spec.agent_ids, dtype=np.int64)
        if len(ids) and (np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= spec.total_agents):
            raise ValueError("group agent ids must be strictly increasing and < total_agents")
        self._ids = ids
        for kind in spec.kinds:
            lo, hi = kind.first_agent_id, kind.first_agent_id + kind.count
            mine = ids[(ids >= lo) & (ids < hi)]
            if not len(mine):
                continue
            module, linker = self._load_kind(kind, module_bytes)
            for agent_id in mine.tolist():
                self._instantiate(kind, module, linker, agent_id)
        self._stage_ids = {s: np.array([a.id for a in lst], np.int64) for s, lst in self._kind_of_stage.items()}

    # -- loading ---------------------------------------------------------------
    def _load_kind(self, kind: KindSpec, module_bytes):
        data = (module_bytes or {}).get(kind.module_sha256)
        if data is None:
            try:
                with open(kind.module_path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise AgentLoadError(f"{kind.module_path}: cannot read agent module of kind '{kind.name}': {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != kind.module_sha256:
            raise AgentLoadError(f"{kind.module_path}: module changed since the run started (sha256 mismatch)")
        try:
            module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as e:
            raise AgentLoadError(f"{kind.module_path}: not a valid WebAssembly module: {str(e).splitlines()[0]}") from None
        check_module(module, kind.module_path, kind.name, frozenset(kind.capabilities))
        linker = wasmtime.Linker(self.engine)
        granted = set(kind.capabilities)
        for name, (params, results, cap) in IMPORTS.items():
            if cap is None or cap in granted:
                ty = wasmtime.FuncType(list(params), list(results))
                if self.fast:
                    self._define_unchecked(linker, name, ty, len(params), str(results[0]) == "i64")
                else:
                    linker.define_func("we", name, ty, getattr(self, "_h_" + name))
        return module, linker

    # -- the fast path: raw value slots, no per-call type objects -----------------
    def _guest_trap(self, exc: BaseException) -> int:
        """Turn a host function's exception into a trap of the calling agent."""
        self._pending = exc
        msg = b"host function fault"
        return cast(wt_ffi.wasmtime_trap_new(msg, len(msg)), c_void_p).value

    def _define_unchecked(self, linker, name: str, ty, nparams: int, res_i64: bool) -> None:
        method = getattr(self, "_h_" + name)
        trap = self._guest_trap
        if nparams == 0:
            if res_i64:
                def cb(env, caller, args, n):
                    try:
                        args[0].i64 = method()
                        return 0
                    except BaseException as e:  # noqa: BLE001 - becomes a guest trap
                        return trap(e)
            else:
                def cb(env, caller, args, n):
                    try:
                        args[0].i32 = method()
                        return 0
                    except BaseException as e:  # noqa: BLE001
                        return trap(e)
        elif nparams == 2:
            def cb(env, caller, args, n):
                try:
                    args[0].i32 = method(args[0].i32, args[1].i32)
                    return 0
                except BaseException as e:  # noqa: BLE001
                    return trap(e)
        elif nparams == 3:
            if res_i64:
                def cb(env, caller, args, n):
                    try:
                        args[0].i64 = method(args[0].i32, args[1].i32, args[2].i32)
                        return 0
                    except BaseException as e:  # noqa: BLE001
                        return trap(e)
            else:
                def cb(env, caller, args, n):
                    try:
                        args[0].i32 = method(args[0].i32, args[1].i32, args[2].i32)
                        return 0
                    except BaseException as e:  # noqa: BLE001
                        return trap(e)
        else:  # pragma: no cover - the ABI has no other arity
            raise AssertionError(name)
        c_cb = _UNCHECKED_CB(cb)
        self._callbacks.append(c_cb)
        mod, nm = b"we", name.encode()
        err = wt_ffi.wasmtime_linker_define_func_unchecked(linker.ptr(), mod, len(mod), nm, len(nm), ty.ptr(), c_cb,
                                                           None, _NO_FINALIZER)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _call_step(self, a: _Agent, tick: int) -> int:
        if not self.fast:
            return a.step(a.store, tick)
        args = self._step_args
        args[0].i64 = tick
        trap = POINTER(wt_ffi.wasm_trap_t)()
        err = wt_ffi.wasmtime_func_call_unchecked(a.ctx, a.step_ref, args, 1, byref(trap))
        if err or trap:
            exc = wasmtime.WasmtimeError._from_ptr(err) if err else wasmtime.Trap._from_ptr(trap)
            pending, self._pending = self._pending, None
            raise pending if pending is not None else exc
        return args[0].i32

    def _set_fuel(self, a: _Agent) -> None:
        if self.fast:
            err = wt_ffi.wasmtime_context_set_fuel(a.ctx, a.fuel)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
        else:
            a.store.set_fuel(a.fuel)

    def _fuel_left(self, a: _Agent) -> int:
        if self.fast:
            err = wt_ffi.wasmtime_context_get_fuel(a.ctx, self._fuel_ref)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
            return self._fuel_out.value
        return a.store.get_fuel()

    def _mem_len(self, a: _Agent) -> int:
        return wt_ffi.wasmtime_memory_data_size(a.ctx, a.mem_ref)

    def _instantiate(self, kind: KindSpec, module, linker, agent_id: int) -> None:
        a = _Agent()
        a.id, a.kind = agent_id, kind
        a.store = wasmtime.Store(self.engine)
        a.store.set_limits(memory_size=kind.memory_limit_bytes)
        a.fuel = kind.fuel_per_tick
        a.quota, a.infer_quota = kind.max_sends_per_tick, kind.max_infers_per_tick
        a.status, a.seq, a.fuel_total = AgentStatus.RUNNING, 0, 0
        a.sends = a.logs = a.infers = 0
        a.in_lo = a.in_hi = 0
        a.rng_key, a.rng_n, a.pub = None, 0, None
        a.store.set_fuel(a.fuel)
        try:
            inst = linker.instantiate(a.store, module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise AgentLoadError(
                f"{kind.module_path}: cannot instantiate agent {agent_id} of kind '{kind.name}' "
                f"(memory limit {kind.memory_limit_bytes} bytes?): {str(e).splitlines()[0]}"
            ) from None
        ex = inst.exports(a.store)
        a.memory = ex["memory"]
        a.base = ctypes.cast(a.memory.data_ptr(a.store), ctypes.c_void_p).value or 0
        a.step = ex["we_step"]
        a.ctx = a.store._context()
        a.mem_ref = byref(a.memory._memory)
        a.step_ref = byref(a.step._func)
        names = sorted(e.name for e in module.exports if isinstance(e.type, wasmtime.GlobalType))
        a.globals = [(name, ex[name]) for name in names]
        if len(self.agents) == 0 or self.agents[-1].kind is not kind:
            version = ex["we_abi_version"](a.store)
            if version != ABI_VERSION:
                raise AgentLoadError(
                    f"{kind.module_path}: we_abi_version() returned {version}, this runtime speaks ABI v{ABI_VERSION}"
                )
        self.agents.append(a)
        self._kind_of_stage.setdefault(kind.stage, []).append(a)
        # we_init runs now; its outputs are committed with the first stage of tick 0.
        self.cur = a
        self._begin_step(a, INIT_TICK)
        init = ex["we_init"]
        seed = _rng.as_i64(_rng.stream_key(self.spec.run_seed, agent_id, INIT_TICK))
        mark = self._mark()
        try:
            rc = init(a.store, agent_id, seed, len(kind.config_hex) // 2)
        except Exception as e:  # noqa: BLE001 - any guest failure quarantines the agent
            self._fault(a, mark, *_classify(e))
        else:
            self._end_step(a)
            if rc != 0:
                self._rollback(a, mark)
                self._emit(K_TRAP, a, 0, int(TrapCode.INIT_FAILED).to_bytes(4, "little")
                           + f"we_init returned {rc}".encode())
                a.status = AgentStatus.QUARANTINED
        a.fuel_total += a.fuel - self._fuel_left(a)
        self.cur = None

    # -- output buffer -----------------------------------------------------------
    def _reset_outputs(self) -> None:
        self._o_kind: list[int] = []
        self._o_src: list[int] = []
        self._o_dst: list[int] = []
        self._o_seq: list[int] = []
        self._o_pay: list[bytes] = []

    def _mark(self):
        return len(self._o_kind)

    def _emit(self, kind: int, a: _Agent, dst: int, payload: bytes) -> int:
        if a.seq >= 0xFFFFFFFF:
            raise _HostFault(TrapCode.ABI_VIOLATION, "agent exceeded 2^32-1 outputs in one run")
        seq = a.seq
        a.seq += 1
        self._o_kind.append(kind)
        self._o_src.append(a.id)
        self._o_dst.append(dst)
        self._o_seq.append(seq)
        self._o_pay.append(payload)
        return seq

    def _rollback(self, a: _Agent, mark: int) -> None:
        """Discard an agent's effects of the current step (it trapped)."""
        removed = len(self._o_kind) - mark
        for lst in (self._o_kind, self._o_src, self._o_dst, self._o_seq, self._o_pay):
            del lst[mark:]
        a.seq -= removed
        a.pub = None

    def _fault(self, a: _Agent, mark: int, code: TrapCode, detail: str) -> None:
        self._rollback(a, mark)
        a.status = AgentStatus.QUARANTINED
        self._emit(K_TRAP, a, 0, int(code).to_bytes(4, "little") + detail.encode("utf-8", "replace"))

    def _take_outputs(self, tick: int) -> RecordBatch:
        n = len(self._o_kind)
        pay = b"".join(self._o_pay)
        batch = RecordBatch.from_arrays(
            kind=np.array(self._o_kind, np.uint16), source=np.array(self._o_src, np.uint32),
            destination=np.array(self._o_dst, np.uint32), tick=tick, seq=np.array(self._o_seq, np.uint32),
            payload_len=np.fromiter((len(p) for p in self._o_pay), np.uint32, n),
            payload=np.frombuffer(pay, np.uint8),
        )
        self._reset_outputs()
        return batch

    # -- stepping ------------------------------------------------------------
    def _begin_step(self, a: _Agent, tick: int) -> None:
        a.sends = a.logs = a.infers = 0
        a.rng_key, a.rng_n, a.pub = None, 0, None
        self._set_fuel(a)

    def _end_step(self, a: _Agent) -> None:
        if a.pub is not None:
            self._emit(K_PUBLISH, a, 0, a.pub)
            a.pub = None

    def run_stage(self, tick: int, stage: int, deliveries: RecordBatch) -> RecordBatch:
        """Step every running agent of ``stage``; return their outputs (+ a K_FUEL record).

        ``deliveries`` must be sorted by (destination, source, seq) — the
        canonical inbox order — and address only this group's agents.
        """
        if tick < 0 or tick >= INIT_TICK:
            raise ValueError(f"bad tick {tick}")
        self.tick = tick
        self._in = deliveries
        self._in_dst = deliveries.headers["destination"].astype(np.int64)
        self._in_src = deliveries.headers["source"]
        self._in_off = deliveries.offsets
        self._in_payload_addr = deliveries.payload.ctypes.data if len(deliveries.payload) else 0
        agents = self._kind_of_stage.get(stage, [])
        ids = self._stage_ids.get(stage, np.zeros(0, np.int64))
        lo = np.searchsorted(self._in_dst, ids, "left").tolist()
        hi = np.searchsorted(self._in_dst, ids, "right").tolist()
        fuel_ids, fuel_used = [], []
        for i, a in enumerate(agents):
            if a.status != AgentStatus.RUNNING:
                continue
            a.in_lo, a.in_hi = lo[i], hi[i]
            self.cur = a
            self._begin_step(a, tick)
            mark = self._mark()
            try:
                rc = self._call_step(a, tick)
            except Exception as e:  # noqa: BLE001 - any guest failure quarantines the agent
                self._fault(a, mark, *_classify(e))
            else:
                self._end_step(a)
                if rc != 0:
                    a.status = AgentStatus.HALTED
                    self._emit(K_HALT, a, 0, int(rc & 0xFFFFFFFF).to_bytes(4, "little"))
            used = a.fuel - self._fuel_left(a)
            a.fuel_total += used
            fuel_ids.append(a.id)
            fuel_used.append(used)
        self.cur = None
        out = self._take_outputs(tick)
        fuel = np.zeros(len(fuel_ids), FUEL_DTYPE)
        fuel["agent"] = fuel_ids
        fuel["fuel"] = fuel_used
        return RecordBatch.concat([out, _chunked(K_FUEL, fuel, tick, stage)])

    def final_state(self) -> RecordBatch:
        """K_STATE records: each agent's status, output count and a digest of its
        linear memory, exported globals and host-side state. (Globals a module
        does not export are not reachable through wasmtime's API; the
        crash-recovery issue will snapshot them through the C API.)"""
        st = np.zeros(len(self.agents), STATE_DTYPE)
        for i, a in enumerate(self.agents):
            h = hashlib.blake2b(digest_size=32)
            n = self._mem_len(a)
            h.update(n.to_bytes(8, "little"))
            h.update(ctypes.string_at(a.base, n))
            for name, glob in a.globals:
                h.update(f"{name}={glob.value(a.store)!r};".encode())
            h.update(f"status={int(a.status)} seq={a.seq} fuel={a.fuel_total}".encode())
            st[i] = (a.id, int(a.status), a.seq, a.fuel_total & 0xFFFFFFFF, h.digest())
        return _chunked(K_STATE, st, 0, 0)

    # -- host functions (ABI v1, docs/ABI.md) -------------------------------------
    def _span(self, a: _Agent, ptr: int, n: int, fn: str) -> int:
        ptr &= 0xFFFFFFFF
        size = wt_ffi.wasmtime_memory_data_size(a.ctx, a.mem_ref)
        if n < 0 or ptr + n > size:
            raise _HostFault(
                TrapCode.HOST_OUT_OF_BOUNDS,
                f"we.{fn}: range [{ptr}, {ptr + n}) outside linear memory of {size} bytes",
            )
        return a.base + ptr

    def _h_recv(self, src_ptr: int, buf_ptr: int, buf_cap: int) -> int:
        a = self.cur
        if a.in_lo >= a.in_hi:
            return -1
        i = a.in_lo
        src_addr = self._span(a, src_ptr, 4, "recv")
        dst_addr = self._span(a, buf_ptr, buf_cap, "recv")
        a.in_lo = i + 1
        off, end = int(self._in_off[i]), int(self._in_off[i + 1])
        n = end - off
        ctypes.memmove(src_addr, int(self._in_src[i]).to_bytes(4, "little"), 4)
        if n and buf_cap:
            ctypes.memmove(dst_addr, self._in_payload_addr + off, min(n, buf_cap))
        return n

    def _h_inbox_count(self) -> int:
        a = self.cur
        return a.in_hi - a.in_lo

    def _h_send(self, dst: int, ptr: int, n: int) -> int:
        a = self.cur
        addr = self._span(a, ptr, n, "send")
        if n > self.spec.max_message_bytes:
            return -3
        if a.sends >= a.quota:
            return -1
        dst &= 0xFFFFFFFF
        if dst >= self.spec.total_agents:
            return -2
        a.sends += 1
        self._emit(K_MSG, a, dst, ctypes.string_at(addr, n))
        return 0

    def _h_rand_u64(self) -> int:
        a = self.cur
        if a.rng_key is None:
            a.rng_key = _rng.stream_key(self.spec.run_seed, a.id, self.tick)
        v = _rng.nth(a.rng_key, a.rng_n)
        a.rng_n += 1
        return _rng.as_i64(v)

    def _h_tick(self) -> int:
        return _rng.as_i64(self.tick)

    def _h_log(self, ptr: int, n: int) -> int:
        a = self.cur
        addr = self._span(a, ptr, n, "log")
        if a.logs >= self.spec.max_logs_per_tick:
            return -1
        a.logs += 1
        self._emit(K_LOG, a, 0, ctypes.string_at(addr, min(n, self.spec.max_log_bytes)))
        return 0

    def _h_publish(self, ptr: int, n: int) -> int:
        a = self.cur
        addr = self._span(a, ptr, n, "publish")
        if n > self.spec.max_publish_bytes:
            return -3
        a.pub = ctypes.string_at(addr, n)
        return 0

    def _h_infer(self, model: int, ptr: int, n: int) -> int:
        a = self.cur
        addr = self._span(a, ptr, n, "infer")
        if a.infers >= a.infer_quota:
            return -1
        if not 0 <= model < self.spec.n_models:
            return -2
        if n > 65536:
            return -3
        a.infers += 1
        return self._emit(K_INFER, a, model, ctypes.string_at(addr, n))

    def _h_config_read(self, ptr: int, cap: int) -> int:
        a = self.cur
        cfg = bytes.fromhex(a.kind.config_hex)
        addr = self._span(a, ptr, cap, "config_read")
        if cap and cfg:
            ctypes.memmove(addr, cfg, min(cap, len(cfg)))
        return len(cfg)

    def _h_agent_count(self) -> int:
        return self.spec.total_agents


def _chunked(kind: int, arr: np.ndarray, tick: int, flags: int) -> RecordBatch:
    """Split a structured array into records of at most CHUNK_AGENTS entries."""
    n = len(arr)
    if n == 0:
        return RecordBatch.empty()
    starts = list(range(0, n, CHUNK_AGENTS))
    lens = [min(CHUNK_AGENTS, n - s) * arr.dtype.itemsize for s in starts]
    return RecordBatch.from_arrays(kind=kind, source=0, destination=0, tick=tick, seq=np.arange(len(starts)),
                                   payload_len=np.array(lens), payload=np.frombuffer(arr.tobytes(), np.uint8),
                                   flags=flags)


def unchunk(batch: RecordBatch, kind: int, dtype: np.dtype) -> np.ndarray:
    sel = np.nonzero(batch.headers["kind"] == kind)[0]
    if not len(sel):
        return np.zeros(0, dtype)
    return np.frombuffer(batch.take(sel).payload.tobytes(), dtype)
