"""GroupHost: runs one group of WebAssembly agents, one stage of a tick at a time.

Layer: worker. Transport-agnostic on purpose: it takes deliveries as a
RecordBatch and returns outputs as a RecordBatch, so the same object serves
the shared-memory group process, the in-process link used by tests, and a
future remote (Ray) backend.

Isolation: every agent has its own wasmtime Store (its own fuel, memory
limit and trap state) and its own Instance. Agents of a group run one after
another; an agent's outputs are buffered here and only leave as this stage's
result, so no agent can see another's output of the same tick.

Two host paths (GroupSpec.host). "reference" calls agents through
wasmtime-py and implements every host function as a Python method: the
yardstick. "fast" (the default) calls we_step through wasmtime's unchecked C
API and serves the hottest imports with native/we_host.c, each falling back to
its Python version here for anything but the plain case (docs/RUNTIME.md
"Native host functions"). A later issue moves the per-agent loop itself to C;
the reference path stays as the cross-check.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import struct
from ctypes import POINTER, c_int32, c_int64, c_size_t, c_ubyte, c_uint64, c_void_p, cast
from dataclasses import asdict, dataclass, field

import blake3
import numpy as np
import wasmtime
# wasmtime-py's ctypes bindings of wasmtime's C API (the "FFI loader" layer of
# wasmtime-py). The fast host path calls the *_unchecked entry points through
# them; the version is pinned in pyproject.toml and checked in make_engine().
from wasmtime import _ffi as wt_ffi

from ..native import ffi as _nffi, lib as _nlib
from ..shm_protocol import RECORD_DTYPE, RecordBatch
from . import _rng
from ._abi import ABI_VERSION, IMPORTS, AgentLoadError, I32, I64, check_module
from ._messages import (
    CHUNK_AGENTS,
    INIT_TICK,
    K_DONE,
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

#: Every digest of a run is BLAKE3 in derive-key mode, with a context string
#: of this prefix and its purpose (docs/RUNTIME.md "Digests"); the supervisor's
#: digests take the prefix from here.
DIGEST_CONTEXT_PREFIX = "wasm-engine 2026-11-22 "
#: The context of the digest in each K_STATE record (the agent's memory,
#: exported globals and host-side state).
STATE_DIGEST_CONTEXT = DIGEST_CONTEXT_PREFIX + "agent state"
#: Final-state record per agent (payload of K_STATE), 48 bytes.
STATE_DTYPE = np.dtype([("agent", "<u4"), ("status", "<u4"), ("seq", "<u4"), ("fuel_total_lo", "<u4"),
                        ("digest", "V32")])
#: Per-agent fuel record (payload of K_FUEL).
FUEL_DTYPE = np.dtype([("agent", "<u4"), ("fuel", "<u4")])

WASM_PAGE = 65536
#: Largest request payload ``we.infer`` accepts (docs/ABI.md, result -3).
MAX_INFER_REQUEST_BYTES = 65536


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


#: How a group calls its agents (GroupSpec.host).
HOST_PATHS = ("fast", "python-loop", "reference")


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
    #: (raw value slots), agents stepped by the per-agent loop in C where a
    #: stage allows it; "python-loop": the same, always stepped from Python;
    #: "reference": through wasmtime-py's checked wrappers. All must give
    #: identical runs; tests cross-check them.
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


#: One agent's bookkeeping that the native host functions read and write:
#: native/we_host.h's we_agent_state, layout version AGENT_STATE_VERSION
#: (docs/RUNTIME.md "Native host functions"), checked at import.
AGENT_STATE_VERSION = 2
AGENT_STATE_DTYPE = np.dtype([("base", "<u8"), ("mem_lo", "<u8"), ("id", "<u4"), ("seq", "<u4"),
                              ("in_lo", "<u4"), ("in_hi", "<u4"), ("sends", "<u4"), ("quota", "<u4"),
                              ("infers", "<u4"), ("infer_quota", "<u4"), ("fuel_total", "<u8"),
                              ("reserved", "<u8")])
#: One agent's we_step call for the per-agent loop in C (we_step_row), and the
#: stop report of that loop (we_step_stop): sizes checked at import.
STEP_ROW_DTYPE = np.dtype([("wctx", "<u8"), ("func", "<u8"), ("st", "<u8"), ("fuel", "<u8")])
_STEP_STOP_BYTES = 32
#: Imports served by a native host function (with the Python one of the same
#: name as its fallback); the others are Python callbacks.
NATIVE_IMPORTS = ("recv", "send", "infer", "inbox_count", "tick", "agent_count")
_FALLBACKS = ("recv", "send", "infer", "inbox_count")
#: Imports whose Python versions keep per-step state on the _Agent (log count,
#: random stream, the pending publish), which the Python loop resets and
#: flushes around every step. A stage whose modules import none of them runs
#: its agents in the per-agent loop in C (we_host_step_agents).
_STEP_STATE_IMPORTS = frozenset(("log", "rand_u64", "publish"))


def _check_host_layout() -> None:
    got = _nffi.new("uint64_t[32]")
    _nlib.we_host_layout(got)
    names = ("base", "mem_lo", "id", "seq", "in_lo", "in_hi", "sends", "quota", "infers", "infer_quota",
             "fuel_total")
    want = [AGENT_STATE_VERSION, AGENT_STATE_DTYPE.itemsize] + [AGENT_STATE_DTYPE.fields[n][1] for n in names]
    want_step = [STEP_ROW_DTYPE.itemsize] + [STEP_ROW_DTYPE.fields[n][1] for n in STEP_ROW_DTYPE.names]
    want_step.append(_STEP_STOP_BYTES)
    if (list(got[0:len(want)]) != want or AGENT_STATE_DTYPE.names != names + ("reserved",)
            or list(got[14:20]) != want_step):
        raise ImportError(f"worker's AGENT_STATE_DTYPE or STEP_ROW_DTYPE does not match native/we_host.h: "
                          f"{list(got[0:20])} != {want} + [sizeof(we_host_ctx)] + {want_step}")


_check_host_layout()


def _state_field(name: str) -> property:
    return property(lambda a: getattr(a.st, name), lambda a, v: setattr(a.st, name, v),
                    doc=f"we_agent_state.{name} of the agent's row (native host functions share it)")


class _Agent:
    __slots__ = (
        "id", "kind", "store", "memory", "base", "step", "status", "fuel", "logs",
        "rng_key", "rng_n", "pub", "globals",
        # this agent's row of GroupHost._state (a cffi we_agent_state *): seq, in_lo, in_hi,
        # sends, quota, infers, infer_quota and mem_lo live there (properties below); the
        # row's id is set once, as the id here; fuel_total too lives there
        "st",
        # fast path only: addresses for the C prototypes below, a byte view of all the linear memory
        # can ever hold, and values prepared once
        "ctx_addr", "step_addr", "mem_addr", "mem", "config", "fuel_c", "rng_agent",
    )
    # a lower bound of the memory's current size (see _grown); fast path only
    mem_lo = _state_field("mem_lo")
    seq = _state_field("seq")
    in_lo = _state_field("in_lo")
    in_hi = _state_field("in_hi")
    sends = _state_field("sends")
    quota = _state_field("quota")
    infers = _state_field("infers")
    infer_quota = _state_field("infer_quota")
    fuel_total = _state_field("fuel_total")


_SEQ_OVERFLOW = "agent exceeded 2^32-1 outputs in one run"


WASMTIME_VERSION = "50.0.1"
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)(lambda _env: None)


def _c_fn(name: str, restype, *argtypes):
    """Our own ctypes prototype of a wasmtime C function, for the fast path.

    wasmtime-py's prototypes take typed pointers and return POINTER objects, and
    its bindings wrap each in a Python function: together about 1 us a call on
    the 2-core reference VM, against about 0.5 us for a prototype that takes
    addresses as plain ints and returns an int (or None). It is built from
    (name, dll), so wasmtime-py's own prototypes of the same symbols stay as
    they are.

    PYFUNCTYPE: the call keeps the GIL. A group runs one Python thread, so
    releasing the GIL around each call (and retaking it in every host function
    callback the call makes) only costs time, about 0.1-0.2 us each; a wasm
    step holds the GIL for its duration, which its fuel bounds.
    """
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, wt_ffi.dll))


# Pointers are passed and returned as ints (addresses); a returned error or trap
# pointer is None when there is none.
_C_CALL_UNCHECKED = _c_fn("wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
_C_SET_FUEL = _c_fn("wasmtime_context_set_fuel", c_void_p, c_void_p, c_uint64)
_C_GET_FUEL = _c_fn("wasmtime_context_get_fuel", c_void_p, c_void_p, c_void_p)
_C_MEMORY_DATA_SIZE = _c_fn("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
_C_MEMORY_DATA = _c_fn("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_C_TRAP_NEW = _c_fn("wasmtime_trap_new", c_void_p, ctypes.c_char_p, c_size_t)


def _wasmtime_fns():
    """The entry points of the per-agent loop in C (we_wasmtime_fns), taken
    from the libwasmtime wasmtime-py loaded: the same functions the
    prototypes above call."""
    fns = _nffi.new("we_wasmtime_fns *")
    types = dict(_nffi.typeof("we_wasmtime_fns").fields)
    for field_name, c_name in (("set_fuel", "wasmtime_context_set_fuel"),
                               ("call_unchecked", "wasmtime_func_call_unchecked"),
                               ("get_fuel", "wasmtime_context_get_fuel")):
        addr = cast(getattr(wt_ffi.dll, c_name), c_void_p).value
        setattr(fns, field_name, _nffi.cast(types[field_name].type, addr))
    return fns


_WASMTIME_FNS = _wasmtime_fns()
#: The same C signature as wasmtime_func_unchecked_callback_t (every argument a
#: pointer or size_t, the result a wasm_trap_t*), typed so that ctypes builds
#: no pointer objects per call: the raw value slots come as int32 words (slot k
#: is words 4k..4k+3, an i32 is word 4k, an i64 words 4k and 4k+1, low first)
#: and indexing them yields plain ints; returning None means "no trap".
_FAST_CB = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_void_p, POINTER(c_int32), c_size_t)
_U32 = struct.Struct("<I")
_U32_MASK = 0xFFFFFFFF


def _error_from_addr(err: int) -> wasmtime.WasmtimeError:
    return wasmtime.WasmtimeError._from_ptr(cast(c_void_p(err), POINTER(wt_ffi.wasmtime_error_t)))


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
        if spec.host not in HOST_PATHS:
            raise ValueError(f"unknown host path {spec.host!r} (one of {', '.join(HOST_PATHS)})")
        self.fast = spec.host != "reference"
        # Step a stage's agents in the per-agent loop in C where the stage
        # allows it (see _STEP_STATE_IMPORTS).
        self.native_loop = spec.host == "fast"
        # Kinds (by name) whose module imports a host function that keeps
        # per-step state in Python: their stages use the Python loop.
        self._step_state_kinds: set[str] = set()
        # Bumped whenever an agent stops running: the C loop's per-stage rows
        # (_loop_rows) are rebuilt when it moved.
        self._status_epoch = 0
        self._loop_rows: dict[int, tuple] = {}
        self._stop = _nffi.new("we_step_stop *")
        self._pending: BaseException | None = None
        # Fast path, allocated once: the one raw value slot of we_step (a
        # wasmtime_val_raw_t is 16 bytes: the tick goes in as i64, the result
        # comes back as i32 in the low word), the trap and fuel out-parameters,
        # and their addresses.
        self._step_slot = (c_int64 * 2)()
        self._step_rc = (c_int32 * 4).from_buffer(self._step_slot)
        self._trap_slot = (c_void_p * 1)()
        self._fuel_slot = (c_uint64 * 1)()
        self._slot_addrs = (ctypes.addressof(self._step_slot), ctypes.addressof(self._trap_slot),
                            ctypes.addressof(self._fuel_slot))
        self._n_step_slots = c_size_t(1)  # passed as an object for the reason given at _Agent.fuel_c
        self.engine = make_engine(spec.kinds)
        self.tick = INIT_TICK
        self.cur: _Agent | None = None
        #: The reference path's buffered outputs of the current stage, in emission
        #: order: one (kind, source, destination, seq, payload) tuple each (the
        #: fast path's go to the native arena, _arena_emit).
        self._out: list[tuple[int, int, int, int, bytes]] = []
        # One C callback per import for the whole group, shared by every kind's
        # linker; kept here as long as the linkers may call them.
        self._callbacks: dict[str, _FAST_CB] = (
            {name: _FAST_CB(fn) for name, fn in self._fast_imports().items()} if self.fast else {}
        )
        self._kind_of_stage: dict[int, list[_Agent]] = {}
        self.agents: list[_Agent] = []
        ids = np.asarray(spec.agent_ids, dtype=np.int64)
        if len(ids) and (np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= spec.total_agents):
            raise ValueError("group agent ids must be strictly increasing and < total_agents")
        self._ids = ids
        # Every agent's we_agent_state row, in self.agents order, and the context
        # the native host functions get as their env (fast path; see _init_native).
        self._state = np.zeros(len(ids), AGENT_STATE_DTYPE)
        self._state_ptr = _nffi.cast("we_agent_state *", self._state.ctypes.data)
        self._hctx = _nffi.new("we_host_ctx *")
        self._arena_hdr = np.zeros(0, RECORD_DTYPE)
        self._arena_pay = np.zeros(0, np.uint8)
        if self.fast:
            self._init_native()
        self._set_inbox(RecordBatch.empty())
        for kind in spec.kinds:
            lo, hi = kind.first_agent_id, kind.first_agent_id + kind.count
            mine = ids[(ids >= lo) & (ids < hi)]
            if not len(mine):
                continue
            module, linker = self._load_kind(kind, module_bytes)
            for agent_id in mine.tolist():
                self._instantiate(kind, module, linker, agent_id)
        # Per stage, its agents' ids then each id + 1, in the destination field's
        # dtype: one searchsorted of these gives every agent's inbox bounds
        # ("left" of id + 1 is "right" of id) without converting the field.
        dst_dtype = RECORD_DTYPE["destination"]
        self._stage_bounds = {
            s: np.array([a.id for a in lst] + [a.id + 1 for a in lst], dst_dtype)
            for s, lst in self._kind_of_stage.items()
        }
        # Per stage, its agents' rows in self._state.
        row_of = {a.id: i for i, a in enumerate(self.agents)}
        # A slice where they are consecutive (one stage, or a stage's kinds in
        # id order): per tick, four slice stores instead of four fancy-index ones.
        self._stage_rows = {s: _as_slice(np.array([row_of[a.id] for a in lst], np.intp))
                            for s, lst in self._kind_of_stage.items()}
        # Stages the per-agent loop in C may run.
        self._native_stages = {s for s, lst in self._kind_of_stage.items()
                               if self.native_loop and not any(a.kind.name in self._step_state_kinds for a in lst)}

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
        if any(imp.module == "we" and imp.name in _STEP_STATE_IMPORTS for imp in module.imports):
            self._step_state_kinds.add(kind.name)
        linker = wasmtime.Linker(self.engine)
        granted = set(kind.capabilities)
        for name, (params, results, cap) in IMPORTS.items():
            if cap is None or cap in granted:
                ty = wasmtime.FuncType(list(params), list(results))
                if self.fast:
                    self._define_unchecked(linker, name, ty)
                else:
                    linker.define_func("we", name, ty, getattr(self, "_h_" + name))
        return module, linker

    # -- the fast path: raw value slots, no per-call type objects -----------------
    #
    # What one agent step costs in Python is mostly the number of ctypes
    # crossings (about 0.5 us each on the 2-core reference VM) and of Python
    # frames, so this path makes as few as it can: three C calls per step (set
    # fuel, call we_step, read fuel) through the prototypes above; the hottest
    # host functions in C (native/we_host.c, NATIVE_IMPORTS), the rest and the
    # C ones' fallbacks as closures over prebound locals; linear memory read
    # and written through a memoryview instead of ctypes.memmove/string_at; no
    # query of the memory's size unless a range fails against a cached lower
    # bound of it; outputs buffered in one native arena.
    # The reference path (host="reference") does all of this the plain way through
    # wasmtime-py's API; tests cross-check the two.

    def _guest_trap(self, exc: BaseException) -> int:
        """Turn a host function's exception into a trap of the calling agent."""
        self._pending = exc
        msg = b"host function fault"
        return _C_TRAP_NEW(msg, len(msg))

    def _define_unchecked(self, linker, name: str, ty) -> None:
        mod, nm = b"we", name.encode()
        if name in NATIVE_IMPORTS:
            fn = int(_nffi.cast("uintptr_t", _nffi.addressof(_nlib, "we_host_" + name)))
            c_cb = cast(c_void_p(fn), wt_ffi.wasmtime_func_unchecked_callback_t)
            env = c_void_p(int(_nffi.cast("uintptr_t", self._hctx)))
        else:
            c_cb, env = cast(self._callbacks[name], wt_ffi.wasmtime_func_unchecked_callback_t), None
        err = wt_ffi.wasmtime_linker_define_func_unchecked(linker.ptr(), mod, len(mod), nm, len(nm), ty.ptr(), c_cb,
                                                           env, _NO_FINALIZER)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _init_native(self) -> None:
        """Fill the native host context: limits, record kinds, the Python
        fallbacks and a first output arena."""
        c, spec = self._hctx, self.spec
        c.tick = self.tick
        c.total_agents, c.n_models = spec.total_agents, spec.n_models
        c.max_message_bytes, c.max_infer_bytes = spec.max_message_bytes, MAX_INFER_REQUEST_BYTES
        c.kind_msg, c.kind_infer = K_MSG, K_INFER
        for name in _FALLBACKS:
            setattr(c, "fallback_" + name, _nffi.cast("we_host_cb", cast(self._callbacks[name], c_void_p).value))
        self._grow_arena(max(64, 4 * len(self._ids)), 1 << 16)

    def _set_inbox(self, deliveries: RecordBatch) -> None:
        """The stage's deliveries, as the host functions (native and Python) read
        them; the context points into these arrays, which these attributes keep alive."""
        src = np.ascontiguousarray(deliveries.headers["source"], np.uint32)
        off = np.ascontiguousarray(deliveries.offsets, np.int64)
        pay = np.ascontiguousarray(deliveries.payload, np.uint8)
        self._in_src, self._in_off, self._in_pay = src, off, memoryview(pay)
        if self.fast:
            # from_buffer: a fraction of the cost of .ctypes.data, per tick.
            c = self._hctx
            c.in_src = _nffi.from_buffer("uint32_t[]", src)
            c.in_off = _nffi.from_buffer("int64_t[]", off)
            c.in_pay = _nffi.from_buffer("uint8_t[]", pay)
        else:
            self._in_payload_addr = pay.ctypes.data if len(pay) else 0

    def _grow_arena(self, records: int, payload_bytes: int) -> None:
        """Make room in the output arena for `records` more records of
        `payload_bytes` in all, keeping what it holds (capacities at least double)."""
        c = self._hctx
        n, used = c.out_n, c.out_used
        hdr = np.zeros(max(n + records, 2 * len(self._arena_hdr)), RECORD_DTYPE)
        pay = np.zeros(max(used + payload_bytes, 2 * len(self._arena_pay)), np.uint8)
        hdr[:n] = self._arena_hdr[:n]
        pay[:used] = self._arena_pay[:used]
        self._arena_hdr, self._arena_pay = hdr, pay
        c.out_hdr = _nffi.cast("void *", hdr.ctypes.data)
        c.out_pay = _nffi.cast("uint8_t *", pay.ctypes.data)
        c.out_cap, c.out_pay_cap = len(hdr), len(pay)

    def _arena_emit(self, kind: int, source: int, dst: int, seq: int, payload: bytes) -> None:
        """Append one output record to the arena (fast path), growing it if needed."""
        if _nlib.we_host_emit(self._hctx, kind, source, dst, seq, payload, len(payload)):
            self._grow_arena(1, len(payload))
            if _nlib.we_host_emit(self._hctx, kind, source, dst, seq, payload, len(payload)):
                raise RuntimeError("output arena still full after growing")  # pragma: no cover

    def _take_pending(self, exc: BaseException) -> BaseException:
        """The exception a failed guest call stands for: the host function's own
        exception if one trapped it (its trap only says "host function fault")."""
        pending, self._pending = self._pending, None
        return pending if pending is not None else exc

    def _step_error(self, err: int | None) -> BaseException:
        """The exception for a fast-path we_step call that returned an error or a trap."""
        if err:
            exc = _error_from_addr(err)
        else:
            trap, self._trap_slot[0] = self._trap_slot[0], None
            exc = wasmtime.Trap._from_ptr(cast(c_void_p(trap), POINTER(wt_ffi.wasm_trap_t)))
        return self._take_pending(exc)

    def _call_step(self, a: _Agent, tick: int) -> int:
        """we_step through wasmtime-py (the reference path; run_stage inlines the fast one)."""
        return a.step(a.store, tick)

    def _set_fuel(self, a: _Agent) -> None:
        if self.fast:
            err = _C_SET_FUEL(a.ctx_addr, a.fuel_c)
            if err:
                raise _error_from_addr(err)
        else:
            a.store.set_fuel(a.fuel)

    def _fuel_left(self, a: _Agent) -> int:
        if self.fast:
            err = _C_GET_FUEL(a.ctx_addr, self._slot_addrs[2])
            if err:
                raise _error_from_addr(err)
            return self._fuel_slot[0]
        return a.store.get_fuel()

    def _mem_len(self, a: _Agent) -> int:
        return _C_MEMORY_DATA_SIZE(a.ctx_addr, a.mem_addr)

    def _grown(self, a: _Agent, ptr: int, n: int, fn: str) -> None:
        """Bounds check of [ptr, ptr+n) after it failed against ``a.mem_lo``.

        Why a cached bound is safe: a wasm linear memory never shrinks and
        (make_engine: memory_may_move=False) never moves, so a size read once
        stays a lower bound of the size for the agent's whole life; a range
        inside it is inside the memory now. A range outside it may be inside a
        memory the agent grew during this step, so re-read the real size (and
        keep it as the new bound) before faulting; the fault then names the same
        size as the reference path's check.
        """
        size = _C_MEMORY_DATA_SIZE(a.ctx_addr, a.mem_addr)
        # Neither can happen under make_engine's configuration and the store's
        # limit; if one did, a.mem would no longer cover the memory.
        if size > len(a.mem):
            raise RuntimeError(f"agent {a.id}: linear memory of {size} bytes outgrew its {len(a.mem)}-byte host view")
        if size and _C_MEMORY_DATA(a.ctx_addr, a.mem_addr) != a.base:
            raise RuntimeError(f"agent {a.id}: linear memory moved")
        a.mem_lo = size
        if n < 0 or ptr + n > size:
            raise _HostFault(
                TrapCode.HOST_OUT_OF_BOUNDS,
                f"we.{fn}: range [{ptr}, {ptr + n}) outside linear memory of {size} bytes",
            )

    def _fast_imports(self) -> dict:
        """The host functions of the fast path, as callbacks with _FAST_CB's signature.

        Each one does what the ``_h_*`` method of the same name does (the
        reference path calls those), in the same order of checks, and writes
        its result into the first value slot. Those in NATIVE_IMPORTS run only
        as the fallbacks of their native versions. Any exception traps the calling
        agent through _guest_trap; run_stage re-raises it from the failed call.
        """
        host = self
        spec = self.spec
        trap = self._guest_trap
        grown = self._grown
        emit = self._arena_emit
        pack_u32 = _U32.pack_into
        max_message_bytes, total_agents = spec.max_message_bytes, spec.total_agents
        n_models, max_publish_bytes = spec.n_models, spec.max_publish_bytes
        max_logs, max_log_bytes = spec.max_logs_per_tick, spec.max_log_bytes
        tick_key, nth = _rng.tick_key, _rng.nth
        mask = _U32_MASK

        def recv(env, caller, args, nargs):
            try:
                a = host.cur or host._native_cur()
                i = a.in_lo
                if i >= a.in_hi:
                    args[0] = -1
                    return None
                src_ptr, buf_ptr, cap = args[0] & mask, args[4] & mask, args[8]
                if src_ptr + 4 > a.mem_lo:
                    grown(a, src_ptr, 4, "recv")
                if cap < 0 or buf_ptr + cap > a.mem_lo:
                    grown(a, buf_ptr, cap, "recv")
                a.in_lo = i + 1
                offs = host._in_off
                off = int(offs[i])
                n = int(offs[i + 1]) - off
                mem = a.mem
                pack_u32(mem, src_ptr, int(host._in_src[i]))
                if n and cap:
                    k = n if n < cap else cap
                    mem[buf_ptr:buf_ptr + k] = host._in_pay[off:off + k]
                args[0] = n
                return None
            except BaseException as e:  # noqa: BLE001 - becomes a guest trap
                return trap(e)

        def inbox_count(env, caller, args, nargs):
            try:
                a = host.cur or host._native_cur()
                args[0] = a.in_hi - a.in_lo
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def send(env, caller, args, nargs):
            try:
                a = host.cur or host._native_cur()
                ptr, n = args[4] & mask, args[8]
                if n < 0 or ptr + n > a.mem_lo:
                    grown(a, ptr, n, "send")
                if n > max_message_bytes:
                    args[0] = -3
                    return None
                if a.sends >= a.quota:
                    args[0] = -1
                    return None
                dst = args[0] & mask
                if dst >= total_agents:
                    args[0] = -2
                    return None
                a.sends += 1
                seq = a.seq
                if seq >= 0xFFFFFFFF:
                    raise _HostFault(TrapCode.ABI_VIOLATION, _SEQ_OVERFLOW)
                a.seq = seq + 1
                emit(K_MSG, a.id, dst, seq, a.mem[ptr:ptr + n].tobytes())
                args[0] = 0
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def rand_u64(env, caller, args, nargs):
            try:
                a = host.cur
                if a.rng_key is None:
                    a.rng_key = tick_key(a.rng_agent, host.tick)
                v = nth(a.rng_key, a.rng_n)
                a.rng_n += 1
                args[0] = v  # the int32 words take the low 32 bits of what they are given
                args[1] = v >> 32
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def tick(env, caller, args, nargs):
            try:
                v = host.tick
                args[0] = v
                args[1] = v >> 32
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def log(env, caller, args, nargs):
            try:
                a = host.cur
                ptr, n = args[0] & mask, args[4]
                if n < 0 or ptr + n > a.mem_lo:
                    grown(a, ptr, n, "log")
                if a.logs >= max_logs:
                    args[0] = -1
                    return None
                a.logs += 1
                seq = a.seq
                if seq >= 0xFFFFFFFF:
                    raise _HostFault(TrapCode.ABI_VIOLATION, _SEQ_OVERFLOW)
                a.seq = seq + 1
                emit(K_LOG, a.id, 0, seq, a.mem[ptr:ptr + min(n, max_log_bytes)].tobytes())
                args[0] = 0
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def publish(env, caller, args, nargs):
            try:
                a = host.cur
                ptr, n = args[0] & mask, args[4]
                if n < 0 or ptr + n > a.mem_lo:
                    grown(a, ptr, n, "publish")
                if n > max_publish_bytes:
                    args[0] = -3
                    return None
                a.pub = a.mem[ptr:ptr + n].tobytes()
                args[0] = 0
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def infer(env, caller, args, nargs):
            try:
                a = host.cur or host._native_cur()
                model, ptr, n = args[0], args[4] & mask, args[8]
                if n < 0 or ptr + n > a.mem_lo:
                    grown(a, ptr, n, "infer")
                if a.infers >= a.infer_quota:
                    r = -1
                elif not 0 <= model < n_models:
                    r = -2
                elif n > MAX_INFER_REQUEST_BYTES:
                    r = -3
                else:
                    a.infers += 1
                    r = a.seq
                    if r >= 0xFFFFFFFF:
                        raise _HostFault(TrapCode.ABI_VIOLATION, _SEQ_OVERFLOW)
                    a.seq = r + 1
                    emit(K_INFER, a.id, model, r, a.mem[ptr:ptr + n].tobytes())
                args[0] = r
                args[1] = r >> 32
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def config_read(env, caller, args, nargs):
            try:
                a = host.cur or host._native_cur()
                ptr, cap = args[0] & mask, args[4]
                cfg = a.config
                if cap < 0 or ptr + cap > a.mem_lo:
                    grown(a, ptr, cap, "config_read")
                if cap and cfg:
                    k = min(cap, len(cfg))
                    a.mem[ptr:ptr + k] = cfg[:k]
                args[0] = len(cfg)
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        def agent_count(env, caller, args, nargs):
            try:
                args[0] = total_agents
                return None
            except BaseException as e:  # noqa: BLE001
                return trap(e)

        fns = dict(recv=recv, inbox_count=inbox_count, send=send, rand_u64=rand_u64, tick=tick, log=log,
                   publish=publish, infer=infer, config_read=config_read, agent_count=agent_count)
        if fns.keys() != IMPORTS.keys():  # pragma: no cover - a new import needs its fast version here
            raise RuntimeError(f"fast host path lacks imports {sorted(IMPORTS.keys() - fns.keys())}")
        return fns

    def _instantiate(self, kind: KindSpec, module, linker, agent_id: int) -> None:
        a = _Agent()
        a.st = self._state_ptr + len(self.agents)
        a.id = a.st.id = agent_id
        a.kind = kind
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
        a.ctx_addr = cast(a.store._context(), c_void_p).value
        a.step_addr = ctypes.addressof(a.step._func)
        a.mem_addr = ctypes.addressof(a.memory._memory)
        # A view of every byte the memory can ever hold: it never moves and the
        # store's limit caps its size (make_engine), so the view stays valid for
        # the agent's life. Only bytes inside a range checked against the
        # memory's size (a.mem_lo, _grown) are ever touched through it.
        a.mem = memoryview((c_ubyte * kind.memory_limit_bytes).from_address(a.base)).cast("B")
        a.mem_lo = self._mem_len(a)
        a.st.base = a.base
        a.config = bytes.fromhex(kind.config_hex)
        # ctypes converts a c_uint64 argument given as an int into a new object on
        # every call (about 0.1-0.2 us); an object of the argument's type passes as is.
        a.fuel_c = c_uint64(a.fuel)
        a.rng_agent = _rng.agent_key(self.spec.run_seed, agent_id)
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
        self._hctx.cur = a.st
        self._begin_step(a, INIT_TICK)
        init = ex["we_init"]
        seed = _rng.as_i64(_rng.stream_key(self.spec.run_seed, agent_id, INIT_TICK))
        mark = self._mark()
        try:
            rc = init(a.store, agent_id, seed, len(kind.config_hex) // 2)
        except Exception as e:  # noqa: BLE001 - any guest failure quarantines the agent
            # On the fast path a host function's fault comes back as a bare
            # "host function fault" trap; the fault itself was kept aside.
            self._fault(a, mark, *_classify(self._take_pending(e)))
        else:
            self._end_step(a)
            if rc != 0:
                self._rollback(a, mark)
                self._emit(K_TRAP, a, 0, int(TrapCode.INIT_FAILED).to_bytes(4, "little")
                           + f"we_init returned {rc}".encode())
                self._set_status(a, AgentStatus.QUARANTINED)
        a.fuel_total += a.fuel - self._fuel_left(a)
        self.cur = None
        self._hctx.cur = _nffi.NULL

    # -- output buffer -----------------------------------------------------------
    # The fast path buffers outputs in the native arena (_arena_emit; the
    # native host functions append there too), the reference path in _out.
    def _mark(self) -> int:
        return self._hctx.out_n if self.fast else len(self._out)

    def _emit(self, kind: int, a: _Agent, dst: int, payload: bytes) -> int:
        seq = a.seq
        if seq >= 0xFFFFFFFF:
            raise _HostFault(TrapCode.ABI_VIOLATION, _SEQ_OVERFLOW)
        a.seq = seq + 1
        if self.fast:
            self._arena_emit(kind, a.id, dst, seq, payload)
        else:
            self._out.append((kind, a.id, dst, seq, payload))
        return seq

    def _rollback(self, a: _Agent, mark: int) -> None:
        """Discard an agent's effects of the current step (it trapped)."""
        if self.fast:
            c = self._hctx
            removed = c.out_n - mark
            if removed:
                c.out_used -= int(self._arena_hdr["payload_len"][mark:c.out_n].sum())
                c.out_n = mark
        else:
            removed = len(self._out) - mark
            del self._out[mark:]
        a.seq -= removed
        a.pub = None

    def _set_status(self, a: _Agent, status: AgentStatus) -> None:
        a.status = status
        self._status_epoch += 1

    def _fault(self, a: _Agent, mark: int, code: TrapCode, detail: str) -> None:
        self._rollback(a, mark)
        self._set_status(a, AgentStatus.QUARANTINED)
        self._emit(K_TRAP, a, 0, int(code).to_bytes(4, "little") + detail.encode("utf-8", "replace"))

    def _take_outputs(self, tick: int, stage: int, fuel_ids, fuel_used, done: bool = False) -> RecordBatch:
        """The buffered outputs, then the stage's K_FUEL records (then, if
        ``done``, K_DONE(tick, flags=stage)), as one batch.

        The same records as ``concat([outputs, _chunked(K_FUEL, ...)])``, written
        straight into one header array and one payload array: building and
        concatenating the intermediate batches cost more per stage than a
        dozen agent steps.
        """
        out = self._out
        c = self._hctx
        n_out, n_fuel = (c.out_n if self.fast else len(out)), len(fuel_ids)
        n_chunks = -(-n_fuel // CHUNK_AGENTS)
        out_bytes = c.out_used if self.fast else sum(len(r[4]) for r in out)
        fuel_bytes = n_fuel * FUEL_DTYPE.itemsize
        headers = np.empty(n_out + n_chunks + done, RECORD_DTYPE)
        payload = np.empty(out_bytes + fuel_bytes, np.uint8)
        if self.fast:
            if n_out:
                headers[:n_out] = self._arena_hdr[:n_out]
                payload[:out_bytes] = self._arena_pay[:out_bytes]
                c.out_n = c.out_used = 0
        elif n_out:
            kinds, srcs, dsts, seqs, pays = zip(*out)
            headers[:n_out] = np.zeros(n_out, RECORD_DTYPE)
            h = headers[:n_out]
            h["kind"] = kinds
            h["source"] = srcs
            h["destination"] = dsts
            h["seq"] = seqs
            h["payload_len"] = [len(p) for p in pays]
            payload[:out_bytes] = np.frombuffer(b"".join(pays), np.uint8)
            out.clear()
        if n_chunks:
            # FUEL_DTYPE items (u32 agent, u32 fuel) as a two-column u32 matrix.
            fuel = payload[out_bytes:].view("<u4").reshape(n_fuel, 2)
            fuel[:, 0] = fuel_ids
            fuel[:, 1] = fuel_used
            for k, first in enumerate(range(0, n_fuel, CHUNK_AGENTS)):
                headers[n_out + k] = (K_FUEL, stage, min(CHUNK_AGENTS, n_fuel - first) * FUEL_DTYPE.itemsize,
                                      0, 0, tick, k, 0)
        headers["tick"][:n_out] = tick
        if done:
            headers[-1] = (K_DONE, stage, 0, 0, 0, tick, 0, 0)
        # Consistent by construction: each header's payload_len is its payload's.
        return RecordBatch._trusted(headers, payload)

    # -- stepping ------------------------------------------------------------
    def _begin_step(self, a: _Agent, tick: int) -> None:
        a.sends = a.logs = a.infers = a.rng_n = 0
        a.rng_key = a.pub = None
        self._set_fuel(a)

    def _end_step(self, a: _Agent) -> None:
        if a.pub is not None:
            self._emit(K_PUBLISH, a, 0, a.pub)
            a.pub = None

    def run_stage(self, tick: int, stage: int, deliveries: RecordBatch, *, done: bool = False) -> RecordBatch:
        """Step every running agent of ``stage``; return their outputs (+ a K_FUEL record).

        ``deliveries`` must be sorted by (destination, source, seq) — the
        canonical inbox order — and address only this group's agents.
        done: also end the batch with K_DONE(tick, flags=stage): the group
        process's whole reply, built in one piece.
        """
        if tick < 0 or tick >= INIT_TICK:
            raise ValueError(f"bad tick {tick}")
        self.tick = tick
        self._hctx.tick = tick
        headers = deliveries.headers
        self._set_inbox(deliveries)
        agents = self._kind_of_stage.get(stage, [])
        bounds = np.searchsorted(headers["destination"], self._stage_bounds[stage]) if agents else np.zeros(0, np.int64)
        lo, hi = bounds[:len(agents)], bounds[len(agents):]
        fuel_ids: list[int] = []
        fuel_used: list[int] = []
        if self.fast and agents:
            # Every agent's inbox bounds and per-step send and infer counts, at once.
            rows = self._stage_rows[stage]
            st = self._state
            st["in_lo"][rows] = lo
            st["in_hi"][rows] = hi
            st["sends"][rows] = 0
            st["infers"][rows] = 0
        if stage in self._native_stages:
            fuel_ids, fuel_used = self._run_native(stage, tick)
        elif self.fast:
            self._run_fast(agents, tick, fuel_ids, fuel_used)
        else:
            self._run_reference(agents, lo.tolist(), hi.tolist(), tick, fuel_ids, fuel_used)
        self.cur = None
        self._hctx.cur = _nffi.NULL
        return self._take_outputs(tick, stage, fuel_ids, fuel_used, done)

    def _run_reference(self, agents, lo, hi, tick, fuel_ids, fuel_used) -> None:
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
                    self._set_status(a, AgentStatus.HALTED)
                    self._emit(K_HALT, a, 0, int(rc & 0xFFFFFFFF).to_bytes(4, "little"))
            used = a.fuel - self._fuel_left(a)
            a.fuel_total += used
            fuel_ids.append(a.id)
            fuel_used.append(used)

    def _run_native(self, stage: int, tick: int) -> tuple[np.ndarray, np.ndarray]:
        """_run_fast's loop in C (we_host_step_agents) for a stage whose agents
        keep no per-step state in Python; returns the stepped agents' ids and
        the fuel each used. The loop stops at an agent whose step failed or
        returned non-zero, or at a failed fuel call; this handles it as
        _run_fast does and resumes at the next agent."""
        plan = self._loop_rows.get(stage)
        if plan is None or plan[0] != self._status_epoch:
            running = [a for a in self._kind_of_stage[stage] if a.status == AgentStatus.RUNNING]
            rows = np.zeros(len(running), STEP_ROW_DTYPE)
            if running:
                rows["wctx"] = [a.ctx_addr for a in running]
                rows["func"] = [a.step_addr for a in running]
                rows["st"] = [int(_nffi.cast("uintptr_t", a.st)) for a in running]
                rows["fuel"] = [a.fuel for a in running]
            ids = np.array([a.id for a in running], np.uint32)
            plan = (self._status_epoch, running, rows, _nffi.cast("we_step_row *", rows.ctypes.data), ids)
            self._loop_rows[stage] = plan
        _, running, _, rows_ptr, ids = plan
        n = len(running)
        used = np.zeros(n, np.uint64)
        used_ptr = _nffi.from_buffer("uint64_t[]", used)
        stop, step = self._stop, _nlib.we_host_step_agents
        i = 0
        while i < n:
            i = step(self._hctx, _WASMTIME_FNS, rows_ptr, i, n, tick, used_ptr, stop)
            if i < n:
                self._native_stopped(running[i], stop, used, i)
                i += 1
        return ids, used

    def _native_stopped(self, a: _Agent, stop, used: np.ndarray, i: int) -> None:
        """What _run_fast does for an agent whose step failed or halted, after
        the C loop stopped at it (row i)."""
        why = stop.why
        if why == _nlib.WE_STEP_HALTED:
            self._set_status(a, AgentStatus.HALTED)
            self._emit(K_HALT, a, 0, (stop.rc & _U32_MASK).to_bytes(4, "little"))
            return
        err = int(_nffi.cast("uintptr_t", stop.error))
        if why != _nlib.WE_STEP_FAILED:
            raise _error_from_addr(err)
        self._trap_slot[0] = int(_nffi.cast("uintptr_t", stop.trap)) or None
        exc = self._step_error(err)
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt and the like in a host function: not the agent's fault
        self._fault(a, stop.mark, *_classify(exc))
        spent = a.fuel - self._fuel_left(a)
        used[i] = spent
        a.fuel_total += spent

    def _native_cur(self) -> _Agent:
        """The agent being stepped, for a Python host function called from the
        C loop (which sets only the native context's row pointer)."""
        addr = int(_nffi.cast("uintptr_t", self._hctx.cur))
        return self.agents[(addr - self._state.ctypes.data) // AGENT_STATE_DTYPE.itemsize]

    def _run_fast(self, agents, tick, fuel_ids, fuel_used) -> None:
        """_run_reference's loop with _begin_step, _call_step, _end_step and
        _fuel_left inlined over prebound locals (see "the fast path" above).
        run_stage has set every agent's inbox bounds and zeroed its send and
        infer counts in its we_agent_state row."""
        call, set_fuel, get_fuel = _C_CALL_UNCHECKED, _C_SET_FUEL, _C_GET_FUEL
        slot, rc_words, trap_slot, fuel_slot = self._step_slot, self._step_rc, self._trap_slot, self._fuel_slot
        slot_addr, trap_addr, fuel_addr = self._slot_addrs
        n_slots = self._n_step_slots
        running = AgentStatus.RUNNING
        emit = _nlib.we_host_emit
        add_id, add_used = fuel_ids.append, fuel_used.append
        hctx = self._hctx
        for a in agents:
            if a.status != running:
                continue
            self.cur = a
            hctx.cur = a.st
            a.logs = a.rng_n = 0
            a.rng_key = a.pub = None
            ctx = a.ctx_addr
            err = set_fuel(ctx, a.fuel_c)
            if err:
                raise _error_from_addr(err)
            mark = hctx.out_n
            slot[0] = tick  # the call overwrites the slot with its result
            err = call(ctx, a.step_addr, slot_addr, n_slots, trap_addr)
            if err or trap_slot[0]:
                exc = self._step_error(err)
                if not isinstance(exc, Exception):
                    raise exc  # KeyboardInterrupt and the like in a host function: not the agent's fault
                self._fault(a, mark, *_classify(exc))
            else:
                pub = a.pub
                if pub is not None:
                    # _emit(K_PUBLISH, a, 0, pub), inlined: most agents publish every step
                    a.pub = None
                    st = a.st
                    seq = st.seq
                    if seq >= 0xFFFFFFFF or emit(hctx, K_PUBLISH, a.id, 0, seq, pub, len(pub)):
                        self._emit(K_PUBLISH, a, 0, pub)  # the overflow fault, or a full arena
                    else:
                        st.seq = seq + 1
                rc = rc_words[0]
                if rc:
                    self._set_status(a, AgentStatus.HALTED)
                    self._emit(K_HALT, a, 0, (rc & 0xFFFFFFFF).to_bytes(4, "little"))
            err = get_fuel(ctx, fuel_addr)
            if err:
                raise _error_from_addr(err)
            used = a.fuel - fuel_slot[0]
            a.fuel_total += used
            add_id(a.id)
            add_used(used)

    def final_state(self) -> RecordBatch:
        """K_STATE records: each agent's status, output count and a digest of its
        linear memory, exported globals and host-side state. (Globals a module
        does not export are not reachable through wasmtime's API; the
        crash-recovery issue will snapshot them through the C API.)"""
        st = np.zeros(len(self.agents), STATE_DTYPE)
        for i, a in enumerate(self.agents):
            h = blake3.blake3(derive_key_context=STATE_DIGEST_CONTEXT)
            n = self._mem_len(a)
            h.update(n.to_bytes(8, "little"))
            h.update(ctypes.string_at(a.base, n))
            for name, glob in a.globals:
                h.update(f"{name}={glob.value(a.store)!r};".encode())
            h.update(f"status={int(a.status)} seq={a.seq} fuel={a.fuel_total}".encode())
            st[i] = (a.id, int(a.status), a.seq, a.fuel_total & 0xFFFFFFFF, h.digest())
        return _chunked(K_STATE, st, 0, 0)

    # -- host functions (ABI v1, docs/ABI.md), reference path ----------------------
    # Written plainly, through wasmtime-py's API, as the yardstick of the fast
    # path's versions (_fast_imports): every check re-reads the memory's size.
    def _span(self, a: _Agent, ptr: int, n: int, fn: str) -> int:
        ptr &= 0xFFFFFFFF
        size = a.memory.data_len(a.store)
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
        if n > MAX_INFER_REQUEST_BYTES:
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


def _as_slice(rows: np.ndarray) -> np.ndarray | slice:
    """``rows`` as the equivalent slice where they are consecutive ascending."""
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return rows


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
    """The ``dtype`` items that the records of ``kind`` carry (see _chunked), in record order."""
    sel = np.flatnonzero(batch.headers["kind"] == kind).tolist()
    if not sel:
        return np.zeros(0, dtype)
    # A few records per group (CHUNK_AGENTS items each): slices, not a gather.
    off, pay = batch.offsets, batch.payload
    return np.frombuffer(b"".join([pay[off[i]:off[i + 1]] for i in sel]), dtype)
