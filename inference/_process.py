"""The inference process: one InferenceEngine fed only through a shared-memory channel.

Layer: inference. Spawned and supervised by the supervisor. It reacts to
records only: K_INF_INIT (load models), then per tick a run of K_INF_REQUEST
records closed by K_INF_EXECUTE(tick), answered by K_INF_RESULT records
closed by K_INF_DONE(tick), whose payload carries each model's counters so
far (MODEL_STATS_DTYPE; docs/INFERENCE.md "The inference process's records").
Requests are executed in the order received —
the supervisor sends them in canonical order — and a request's id is
(agent << 32 | agent's sequence number), derived from the request itself, so a
restarted inference process can be fed the same requests again safely.
"""
from __future__ import annotations

import gc
import json
import logging
import struct
import weakref
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ..shm_protocol import RECORD_DTYPE, RecordBatch, serve_channel
from ._payloads import Status
from ._rows import COPY, DST_BASE, EQUAL, FILL, SRC_BASE, RowProgram, address

LOGGER = logging.getLogger("wasm_engine.inference")

K_INF_INIT = 64       # payload: JSON {"models": [...], "provider": str}
K_INF_READY = 65      # payload: JSON list of per-model info (provider used, memory)
K_INF_REQUEST = 66    # source=agent, destination=model index, tick, seq=agent's seq; payload=request
K_INF_EXECUTE = 67    # execute the requests received since the last EXECUTE; tick=their tick
K_INF_RESULT = 68     # destination=agent, source=model index, tick, seq, flags=status; payload=result
K_INF_DONE = 69       # all results of EXECUTE(tick) sent
K_INF_ERROR = 70      # payload: UTF-8 message (model load failure, internal error)
K_INF_SHUTDOWN = 71

#: K_INF_DONE's payload, layout version MODEL_STATS_VERSION (in the record's
#: flags): one 24-byte entry per model, in model order, each model's
#: cumulative RunStats.  Timing, so never logged or hashed.
MODEL_STATS_VERSION = 1
MODEL_STATS_DTYPE = np.dtype([("requests", "<u8"), ("runs", "<u8"), ("run_ns", "<u8")])
_STATS_ENTRY = struct.Struct("<QQQ")


def _check_stats_layout() -> None:
    offsets = [MODEL_STATS_DTYPE.fields[name][1] for name in ("requests", "runs", "run_ns")]
    if MODEL_STATS_DTYPE.itemsize != 24 or offsets != [0, 8, 16] or _STATS_ENTRY.size != 24:
        raise ImportError(f"MODEL_STATS_DTYPE does not match docs/INFERENCE.md: {MODEL_STATS_DTYPE}")


_check_stats_layout()


def encode_model_stats(engine) -> bytes:
    """K_INF_DONE's payload: ``engine``'s per-model counters."""
    return b"".join(_STATS_ENTRY.pack(s.requests, s.runs, s.run_ns) for s in engine.stats)


def decode_model_stats(payload: bytes, flags: int, n_models: int) -> np.ndarray:
    """A K_INF_DONE payload as a MODEL_STATS_DTYPE array; ValueError if it is not one for n_models models."""
    if flags != MODEL_STATS_VERSION or len(payload) != n_models * MODEL_STATS_DTYPE.itemsize:
        raise ValueError(f"K_INF_DONE payload of {len(payload)} bytes, layout version {flags}: expected "
                         f"{n_models} x {MODEL_STATS_DTYPE.itemsize} bytes, version {MODEL_STATS_VERSION}")
    return np.frombuffer(payload, MODEL_STATS_DTYPE).copy()


def stats_report(stats: np.ndarray) -> list[dict]:
    """Per model: requests, runs (session.run calls) and run_s (seconds inside them)."""
    return [{"requests": int(r), "runs": int(n), "run_s": int(ns) / 1e9}
            for r, n, ns in zip(stats["requests"], stats["runs"], stats["run_ns"])]


def request_id(agent: int, seq: int) -> int:
    return (agent << 32) | seq


def build_engine(config: dict, max_result_bytes: int):
    from ._engine import InferenceEngine
    from ._models import ModelSpec

    specs = [ModelSpec(id=m["id"], path=m["path"], kind=m["kind"], tokenizer_path=m.get("tokenizer"),
                       provider=m.get("provider"), max_context=m.get("max_context") or None,
                       batch=m.get("batch", True))
             for m in config["models"]]
    return InferenceEngine(specs, provider=config.get("provider", "auto"), max_result_bytes=max_result_bytes)


def engine_info(engine) -> list[dict]:
    out = []
    for info in engine.models:
        out.append({"id": info.id, "kind": info.kind, "provider": info.provider,
                    "file_bytes": info.file_bytes, "rss_delta_bytes": info.rss_delta_bytes})
    return out


def execute_batch(engine, requests: RecordBatch, max_result_bytes: int, *,
                  done_tick: int | None = None) -> RecordBatch:
    """Run a tick's requests (canonical order) and encode results as K_INF_RESULT records.

    The usual tick (one tensor model, one payload length and header, batching
    verified) goes from the request payloads to the result payloads as byte
    matrices (`InferenceEngine.execute_uniform`); any other, or one it cannot
    serve whole, takes the general path.  Both give the same bytes.

    done_tick: also end the batch with K_INF_DONE(done_tick), carrying the
    engine's counters after this run (the inference process's whole reply to
    one K_INF_EXECUTE, built in one piece: the same bytes as the results
    followed by ``done_record(engine, done_tick)``).
    """
    h = requests.headers
    n = len(h)
    with_done = done_tick is not None
    last = _last_tick
    if last is not None and last.program.rows == n and last.engine() is engine and requests.payload.size == n * last.size:
        # The previous tick's shape again: its reply program checks every
        # request's model and length while it writes the result headers, and
        # the engine serves the requests through the previous tick's plan, if
        # it still applies (the same bytes as below, in a few native calls).
        out = np.empty(n + with_done, RECORD_DTYPE)
        if last.program.run(np.ascontiguousarray(h), out) == n:
            payload = np.empty(n * last.width + last.stats_bytes * with_done, np.uint8)
            if engine.run_plan(last.model, last.plan, requests.payload.reshape(n, last.size),
                               payload[:n * last.width].reshape(n, last.width), max_result_bytes):
                return _finish(engine, out, payload, n, done_tick)
    results = _execute_uniform(engine, requests, max_result_bytes) if n else None
    if results is not None:
        # What from_arrays builds (flags = status OK = 0), without its re-checks
        # of what is consistent by construction: n payloads of results.shape[1]
        # bytes.  The headers are one native row program (the constant fields,
        # then each request's source, tick and seq): this runs right after
        # session.run, with the caches cold, where every numpy call costs
        # several times its usual time.
        model, size, width = int(h["destination"][0]), requests.payload.size // n, results.shape[1]
        program = _reply_program(n, width, model, size)
        out = np.empty(n + with_done, RECORD_DTYPE)
        program.run(np.ascontiguousarray(h), out)
        _remember_tick(engine, model, program, size, width)
        if not with_done:
            return RecordBatch._trusted(out, results.reshape(-1))
        payload = np.empty(n * width + _stats_bytes(engine), np.uint8)
        payload[:n * width] = results.reshape(-1)
        return _finish(engine, out, payload, n, done_tick)
    out = _execute_general(engine, requests, max_result_bytes)
    return out if done_tick is None else RecordBatch.concat([out, done_record(engine, done_tick)])


def _finish(engine, out: np.ndarray, payload: np.ndarray, n: int, done_tick: int | None) -> RecordBatch:
    """A uniform reply from its n result headers and payloads (already in out
    and payload), ending with K_INF_DONE(done_tick) if asked for."""
    if done_tick is not None:
        stats = encode_model_stats(engine)
        out[n] = (K_INF_DONE, MODEL_STATS_VERSION, len(stats), 0, 0, done_tick, 0, 0)
        payload[len(payload) - len(stats):] = np.frombuffer(stats, np.uint8)
    return RecordBatch._trusted(out, payload)


def _stats_bytes(engine) -> int:
    return len(engine.stats) * MODEL_STATS_DTYPE.itemsize


@dataclass(frozen=True)
class _Tick:
    """What served the last uniform tick: the engine (weakly), the model, its
    plan (None: the numpy path served it), the reply program, the request
    and result lengths."""

    engine: weakref.ref
    model: int
    plan: object
    program: RowProgram  # its rows: the tick's request count
    size: int
    width: int
    stats_bytes: int


_last_tick: _Tick | None = None


def _remember_tick(engine, model: int, program: RowProgram, size: int, width: int) -> None:
    global _last_tick
    plan = engine.uniform_plan(model)
    _last_tick = None if plan is None else _Tick(weakref.ref(engine), model, plan, program, size, width,
                                                 _stats_bytes(engine))


def done_record(engine, tick: int) -> RecordBatch:
    """K_INF_DONE(tick): the end of a tick's results, carrying ``engine``'s counters so far."""
    return RecordBatch.single(K_INF_DONE, encode_model_stats(engine), tick=tick, flags=MODEL_STATS_VERSION)


#: Header programs of uniform replies, by (n, width, model, request length); at most this many.
_REPLY_PROGRAMS_MAX = 16
_reply_programs: dict[tuple[int, int, int, int], RowProgram] = {}
# Each reply header's fields copied from its request's header (source becomes destination).
_FROM_REQUEST = (("source", "destination"), ("tick", "tick"), ("seq", "seq"))


def _reply_program(n: int, width: int, model: int, size: int) -> RowProgram:
    """The row program that checks that n requests (src headers) are each for
    ``model`` with ``size`` payload bytes, stopping at the first that is not,
    and writes the headers of their OK results of ``width`` bytes (dst)."""
    key = (n, width, model, size)
    prog = _reply_programs.get(key)
    if prog is None:
        if len(_reply_programs) >= _REPLY_PROGRAMS_MAX:
            _reply_programs.clear()
        ops, keep = _reply_ops(width, model, size)
        prog = _reply_programs[key] = RowProgram(ops, keep, n)
    return prog


def _reply_ops(width: int, model: int, size: int) -> tuple[list[tuple], list[bytes]]:
    """_reply_program's ops, and the bytes they point into."""
    row = np.zeros(1, RECORD_DTYPE)
    row[0] = (K_INF_RESULT, 0, width, model, 0, 0, 0, 0)
    row = row.tobytes()
    want = struct.pack("<II", size, model)
    step, fields = RECORD_DTYPE.itemsize, RECORD_DTYPE.fields
    ops = [(EQUAL, SRC_BASE, fields["payload_len"][1], step, address(want), 0, 4),
           (EQUAL, SRC_BASE, fields["destination"][1], step, address(want) + 4, 0, 4),
           (FILL, DST_BASE, address(row), 0, 0, step, step)]
    ops += [(COPY, SRC_BASE | DST_BASE, fields[a][1], step, fields[b][1], step, fields[a][0].itemsize)
            for a, b in _FROM_REQUEST]
    return ops, [row, want]


def _execute_general(engine, requests: RecordBatch, max_result_bytes: int) -> RecordBatch:
    """execute_batch's general path: any mix of models, lengths and outcomes."""
    h = requests.headers
    n = len(h)
    # A request's outcome does not depend on its id, so none is built: (model index, payload) pairs go to the engine directly.
    data = requests.payload.tobytes()
    off = requests.offsets.tolist()
    outcomes = engine.outcomes(h["destination"].tolist(), [data[a:b] for a, b in pairwise(off)])
    status = [int(st) for st, _ in outcomes]
    pays = [p if type(p) is bytes else bytes(p) for _, p in outcomes]
    lens = list(map(len, pays))
    if n and max(lens) > max_result_bytes:
        for i, size in enumerate(lens):
            if size > max_result_bytes:
                pays[i] = f"result of {size} bytes exceeds the transport limit {max_result_bytes}".encode()
                lens[i] = len(pays[i])
                status[i] = Status.TOO_LARGE
    return RecordBatch.from_arrays(kind=K_INF_RESULT, source=h["destination"], destination=h["source"],
                                   tick=h["tick"], seq=h["seq"], payload_len=np.array(lens, np.uint32),
                                   payload=np.frombuffer(b"".join(pays), np.uint8),
                                   flags=np.array(status, np.uint16))


def _execute_uniform(engine, requests: RecordBatch, max_result_bytes: int) -> np.ndarray | None:
    """The usual tick's results as an (n, size) uint8 matrix, or None (see InferenceEngine.execute_uniform).

    Applies when every request is for one model and all payloads have one
    length: the payload buffer is then an (n, size) matrix, viewed, not copied.
    """
    h = requests.headers
    n = len(h)
    dest, lens = h["destination"], h["payload_len"]
    # Bytes comparisons: cheaper than numpy's == and .all() for a tick's few records.
    if dest.tobytes() != dest[:1].tobytes() * n or lens.tobytes() != lens[:1].tobytes() * n:
        return None
    size = int(lens[0])
    if requests.payload.size != n * size:  # a batch whose payload disagrees with its headers
        return None
    return engine.execute_uniform(int(dest[0]), requests.payload.reshape(n, size), max_result_bytes)


class _FastTick:
    """The inference process's steady state: a popped batch that is the last
    uniform tick's shape again (its n requests, then K_INF_EXECUTE), served
    whole with a few native calls and no allocation per tick.

    The same checks and bytes as ``execute_batch(..., done_tick=tick)``'s
    first branch (each request's model and length, the reply headers, the
    plan), plus what serve_channel would have checked: every request is a
    K_INF_REQUEST and the batch ends with one K_INF_EXECUTE without payload.
    Anything else -- or a plan that no longer serves -- is left to the
    general loop, with nothing changed but these scratch arrays (and, as
    for run_plan, the counters of a bound run that failed).

    __call__ serves one such batch from Python; steady() then serves the
    ones that follow with one native ServeStep call each (the same row
    programs, run in C) until one is not that shape.
    """

    __slots__ = ("last", "n", "request_bytes", "_check", "_tail", "_serve", "_stats", "_out", "_payload", "_programs",
                 "step")

    def __init__(self, engine, last: _Tick, serve, payload: np.ndarray) -> None:
        n, step, fields = last.program.rows, RECORD_DTYPE.itemsize, RECORD_DTYPE.fields
        self.last, self.n, self.request_bytes, self._serve = last, n, n * last.size, serve
        kinds, zero = struct.pack("<HH", K_INF_REQUEST, K_INF_EXECUTE), bytes(4)
        out = np.zeros(n + 1, RECORD_DTYPE)
        out[n] = (K_INF_DONE, MODEL_STATS_VERSION, last.stats_bytes, 0, 0, 0, 0, 0)
        ops, keep = _reply_ops(last.width, last.model, last.size)
        check = RowProgram([(EQUAL, SRC_BASE, fields["kind"][1], step, address(kinds), 0, 2)] + ops, keep + [kinds], n)
        # Row n: K_INF_EXECUTE without payload; its tick becomes K_INF_DONE's.
        t = n * step
        tail = RowProgram([(EQUAL, SRC_BASE, t + fields["kind"][1], 0, address(kinds) + 2, 0, 2),
                           (EQUAL, SRC_BASE, t + fields["payload_len"][1], 0, address(zero), 0, 4),
                           (COPY, SRC_BASE | DST_BASE, t + fields["tick"][1], 0, t + fields["tick"][1], 0, 8)],
                          [kinds, zero], 1)
        self._check, self._tail, self._programs = check.runner(out), tail.runner(out), (tail, check)
        self._out, self._payload = out, payload
        self._stats = [(s, n * last.width + i * _STATS_ENTRY.size) for i, s in enumerate(engine.stats)]
        self.step = None  # the ServeStep of steady(), bound on first use

    @classmethod
    def build(cls, engine, last: _Tick, max_result: int) -> "_FastTick | None":
        n = last.program.rows
        payload = np.zeros(n * last.width + last.stats_bytes, np.uint8)
        serve = engine.plan_tick(last.model, last.plan, payload[:n * last.width].reshape(n, last.width), max_result)
        if serve is None:
            return None
        return cls(engine, last, serve, payload)

    def __call__(self, batch: RecordBatch) -> RecordBatch | None:
        """The whole reply to ``batch``, or None (nothing done that matters).

        The reply's arrays are this object's: valid until the next call (the
        ring copies them when they are pushed)."""
        h, n = batch.headers, self.n
        if len(h) != n + 1 or batch.payload.size != self.request_bytes:
            return None
        if self._tail(h) != 1 or self._check(h) != n or not self._serve(batch.payload):
            return None
        self._pack_stats()
        return RecordBatch._trusted(self._out, self._payload)

    def _pack_stats(self) -> None:
        """The models' counters into the reply's K_INF_DONE payload."""
        payload = self._payload
        for s, off in self._stats:
            _STATS_ENTRY.pack_into(payload, off, s.requests, s.runs, s.run_ns)

    def bind(self, reply) -> None:
        """The ServeStep that serves ticks like this one in native calls
        (reply: serve_channel's): after each model run, write the results,
        push the reply, pop the next batch and, if it is this shape, check it
        and gather it into the model's inputs -- the work __call__ does in
        Python, in one call."""
        step = reply.steady_step(self._out, self._payload, expect_records=self.n + 1,
                                 expect_payload_bytes=self.request_bytes)
        tail, check = self._programs
        scatter, gather = self._serve.calls(step.received_payload)
        step.set_calls(before=[scatter], after=[tail.bind(step.received_headers, self._out),
                                               check.bind(step.received_headers, self._out), gather])
        self.step = step

    def steady(self) -> RecordBatch:
        """After __call__ served a batch: push its reply and serve every
        following batch of the same shape, until one that is not (or none
        within the step's timeout) is popped; that batch (views) is returned,
        unserved.  The same bytes as __call__ would send for each."""
        step, run, pack_stats = self.step, self._serve.run, self._pack_stats
        while True:
            if step() or not run():
                return step.popped()
            pack_stats()


class _Server:
    """Control-record handler of the inference process (see serve_channel)."""

    def __init__(self) -> None:
        self.engine = None
        self.max_result = 0
        self._fast: _FastTick | None = None
        self._limit: int | None = None

    def on_batch(self, batch: RecordBatch, reply) -> bool:
        """serve_channel's shortcut: the steady-state tick (see _FastTick)."""
        fast = self._fast
        if fast is None:
            return False
        try:
            out = fast(batch)
        except Exception:  # noqa: BLE001 - a bug in the shortcut: the general path still serves the tick
            LOGGER.exception("internal error in the inference process's steady-state path; using the general path")
            out = None
        if out is None:
            self._fast = None  # the general path serves this batch, and decides on the next shortcut
            return False
        # From here on outside the safety net: a failed push or pop is the loop's to report, never
        # a reason to serve a batch twice.
        if fast.step is None:
            try:
                fast.bind(reply)
            except Exception:  # noqa: BLE001 - a bug in binding: this shortcut still serves, one tick at a time
                LOGGER.exception("internal error binding the inference process's steady step; replying per tick")
                fast.step = False
        if fast.step is False:
            reply(out)
            return True
        return fast.steady()

    def batch_limit(self) -> int | None:
        """serve_channel's pop limit: the records of one usual tick (the last
        shortcut's), so that ticks queued together are popped one by one and
        the shortcut can take them (and take over again after an odd tick).
        A tick of another size merely takes more than one pop."""
        return self._limit

    def _next_fast(self) -> None:
        """After a tick served by execute_batch: the shortcut for ticks like it, if it took the plan path."""
        last = _last_tick
        if last is None or last.engine() is not self.engine:
            self._fast = None
        elif self._fast is None or self._fast.last is not last:
            self._fast = _FastTick.build(self.engine, last, self.max_result)
            if self._fast is not None:
                self._limit = self._fast.n + 1

    def __call__(self, batch: RecordBatch, c: int, pending: list[RecordBatch], reply) -> bool:
        kind, tick = int(batch.headers[c]["kind"]), int(batch.headers[c]["tick"])
        if kind == K_INF_INIT:
            self.max_result = reply.max_record_bytes - 64
            try:
                self.engine = build_engine(json.loads(batch.payload_of(c)), self.max_result)
            except Exception as e:  # noqa: BLE001 - reported to the supervisor as one line
                reply(RecordBatch.single(K_INF_ERROR, str(e).encode()[-4000:]))
                return False
            # The loaded models live as long as the process: out of the cyclic
            # collector's sight (as in the group process).
            gc.collect()
            gc.freeze()
            reply(RecordBatch.single(K_INF_READY, json.dumps(engine_info(self.engine)).encode()))
        elif kind == K_INF_EXECUTE:
            # Nothing modifies the requests, and the reply shares no memory with
            # them: no copy, even of views of the ring's buffer.
            reqs = pending[0] if len(pending) == 1 else RecordBatch.concat(pending, copy=False)
            pending.clear()
            reply(execute_batch(self.engine, reqs, self.max_result, done_tick=tick))
            self._next_fast()
        elif kind == K_INF_SHUTDOWN:
            return False
        else:
            raise RuntimeError(f"inference process received unexpected record kind {kind}")
        return True


def inference_main(channel_name: str, parent_pid: int) -> None:
    # _Server keeps nothing it is given (execute_batch builds replies in arrays of their own).
    server = _Server()
    serve_channel(channel_name, parent_pid, data_kind=K_INF_REQUEST, error_kind=K_INF_ERROR,
                  label="the inference process", on_control=server, views=True, on_batch=server.on_batch,
                  batch_limit=server.batch_limit)
