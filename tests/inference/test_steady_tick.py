"""The inference process's steady-state shortcut (_Server.on_batch / _FastTick).

Ticks are fed to a `_Server` exactly as serve_channel feeds it: each popped
batch is first offered to `on_batch`, and only if that declines are its
requests gathered and the K_INF_EXECUTE record handed to the handler.  Every
reply must be byte for byte what `execute_batch(..., done_tick=tick)` gives
on a second engine fed the same ticks (the K_INF_DONE counters compared
without their timing), whichever path served it; and the shortcut must
actually serve the usual tick.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from wasm_engine.inference import K_INF_EXECUTE, K_INF_INIT, K_INF_REQUEST, build_engine, encode_tensors, execute_batch
from wasm_engine.inference import _process
from wasm_engine.shm_protocol import Channel, RecordBatch
from wasm_engine.shm_protocol import _serve

LIMIT = 1 << 20


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record) -> None:
        self.records.append(record)


def _requests(tick: int, payloads: list[bytes], *, model: int = 0, kind: int = K_INF_REQUEST) -> RecordBatch:
    n = len(payloads)
    return RecordBatch.from_arrays(kind=kind, source=np.arange(n) * 3 + 1, destination=model, tick=tick,
                                   seq=np.arange(n) + 100 * tick,
                                   payload_len=np.array([len(p) for p in payloads], np.uint32),
                                   payload=np.frombuffer(b"".join(payloads), np.uint8))


def _execute(tick: int, payload: bytes = b"") -> RecordBatch:
    return RecordBatch.single(K_INF_EXECUTE, payload, tick=tick)


class Harness:
    """The supervisor's side of a real channel, and serve_channel's loop body.

    ``feed`` pushes a batch as the supervisor would and serves what is in
    the ring exactly as serve_channel does: each popped batch is offered to
    on_batch first (whose steady loop may serve several and leave the next
    one to the general path), the rest goes record by record to the handler.
    Its steady step waits only `STEP_TIMEOUT_S` for a next batch.
    """

    STEP_TIMEOUT_S = 0.02

    def __init__(self, model_path, monkeypatch) -> None:
        monkeypatch.setattr(_serve, "PARENT_CHECK_S", self.STEP_TIMEOUT_S)
        self.sup = Channel.create(capacity_bytes=1 << 23, max_record_bytes=LIMIT + 64, tag="steady")
        self.child = Channel.attach(self.sup.name)
        self.reply = _serve._Reply(self.child, os.getppid())
        cfg = {"models": [{"id": "mlp", "path": str(model_path), "kind": "tensor", "provider": "cpu", "batch": True}],
               "provider": "cpu"}
        self.server = _process._Server()
        self.feed(RecordBatch.single(K_INF_INIT, json.dumps(cfg).encode()))
        self.replies()
        self.ref = build_engine(cfg, self.server.max_result)
        self.fast = 0  # batches served by on_batch (and its steady loop)

    def close(self) -> None:
        self.child.close()
        self.sup.close()

    def feed(self, *batches: RecordBatch) -> None:
        for b in batches:
            self.sup.send.push_batch(b, timeout_s=5)
        pending: list[RecordBatch] = []
        left = None
        while True:
            if left is None:
                limit = self.server.batch_limit() if not pending else None
                batch, offer = self.child.recv.pop_batch(limit, timeout_s=0, copy=False), True
            else:
                batch, left, offer = left, None, False
            if not len(batch):
                return
            if offer and not pending:
                served = self.server.on_batch(batch, self.reply)
                if served is not False:
                    self.fast += 1
                    if served is not True:
                        left = served
                    continue
            start = 0
            for c in np.flatnonzero(batch.headers["kind"] != K_INF_REQUEST).tolist():
                if c > start:
                    pending.append(batch.slice(start, c).copy())
                start = c + 1
                assert self.server(batch, c, pending, self.reply)
            if start < len(batch):
                pending.append(batch.slice(start, len(batch)).copy())

    def replies(self) -> list[RecordBatch]:
        """Every reply pushed so far, one batch per K_INF_DONE (which ends it)."""
        got = self.child.send.stats()["records_pushed"] - self.sup.recv.stats()["records_popped"]
        out, parts = [], []
        while got > 0:
            b = self.sup.recv.pop_batch(timeout_s=5)
            got -= len(b)
            parts.append(b)
        if not parts:
            return out
        allb = RecordBatch.concat(parts)
        start = 0
        for d in np.flatnonzero(allb.headers["kind"] == _process.K_INF_DONE).tolist() + [len(allb)]:
            if d >= start and (d < len(allb) or start < len(allb)):
                out.append(allb.slice(start, min(d + 1, len(allb))))
            start = d + 1
        return out

    def check(self, got: RecordBatch, requests: RecordBatch, tick: int) -> None:
        want = execute_batch(self.ref, requests, self.server.max_result, done_tick=tick)
        got.headers["check"] = 0  # the ring's checksum, filled in by the push
        assert got.headers.tobytes() == want.headers.tobytes()
        stats_bytes = _process.MODEL_STATS_DTYPE.itemsize
        assert got.payload[:-stats_bytes].tobytes() == want.payload[:-stats_bytes].tobytes()
        g = np.frombuffer(got.payload[-stats_bytes:].tobytes(), _process.MODEL_STATS_DTYPE)
        w = np.frombuffer(want.payload[-stats_bytes:].tobytes(), _process.MODEL_STATS_DTYPE)
        assert (g["requests"], g["runs"]) == (w["requests"], w["runs"])

    def tick(self, requests: RecordBatch, execute: RecordBatch | None = None, *, fast: bool | None = None) -> None:
        tick = int(requests.headers["tick"][0]) if len(requests) else 0
        execute = execute if execute is not None else _execute(tick)
        before = self.fast
        self.feed(RecordBatch.concat([requests, execute]))
        if fast is not None:
            assert (self.fast > before) == fast
        (got,) = self.replies()
        self.check(got, requests, int(execute.headers["tick"][0]))


@pytest.fixture
def harness(tensor_model_path, monkeypatch):
    errors = _Errors()
    logger = logging.getLogger("wasm_engine.inference")
    logger.addHandler(errors)
    h = Harness(tensor_model_path, monkeypatch)
    try:
        yield h
    finally:
        h.close()
        logger.removeHandler(errors)
    assert not errors.records, errors.records[0].getMessage()


def _row(i: int) -> bytes:
    return encode_tensors([np.full((1, 16), i * 0.25 - 1.0, np.float32)])


def test_usual_ticks_take_the_shortcut_with_the_same_bytes(harness):
    for t in range(12):
        # Different values every tick: the shortcut must not replay an old result.
        harness.tick(_requests(t, [_row(t + i) for i in range(6)]))
    # The first ticks verify batching and build the plan; every later one is served whole by the shortcut.
    assert harness.fast >= 6
    harness.tick(_requests(12, [_row(i) for i in range(6)]), fast=True)


@pytest.mark.parametrize("change", ["count", "kind", "model", "length", "execute_payload", "execute_kind"])
def test_any_other_tick_takes_the_general_path_and_the_shortcut_resumes(harness, change):
    for t in range(10):
        harness.tick(_requests(t, [_row(i) for i in range(4)]))
    harness.tick(_requests(10, [_row(i) for i in range(4)]), fast=True)
    rows = [_row(i) for i in range(4)]
    execute = None
    if change == "count":
        reqs = _requests(11, rows[:3])
    elif change == "kind":  # a record the shortcut must not take for a request
        reqs = _requests(11, rows, kind=K_INF_REQUEST + 40)
        with pytest.raises(RuntimeError, match="unexpected record kind"):
            harness.feed(RecordBatch.concat([reqs, _execute(11)]))
        assert harness.replies() == []
        return
    elif change == "model":  # no such model: error results, from the general path
        reqs = _requests(11, rows, model=5)
    elif change == "length":  # one request one element short: an error result for it alone
        rows[2] = encode_tensors([np.zeros((1, 15), np.float32)])
        reqs = _requests(11, rows)
    elif change == "execute_payload":
        reqs, execute = _requests(11, rows[:4]), _execute(11, b"x")
    else:  # the tail is not K_INF_EXECUTE: nothing may be served for it
        batch = RecordBatch.concat([_requests(11, rows), RecordBatch.single(_process.K_INF_SHUTDOWN, tick=11)])
        assert not harness.server.on_batch(batch, harness.reply)
        assert harness.replies() == []
        return
    harness.tick(reqs, execute, fast=False)
    for t in range(12, 16):
        harness.tick(_requests(t, [_row(i + t) for i in range(4)]))
    harness.tick(_requests(16, [_row(i) for i in range(4)]), fast=True)


def _shape_changed(i: int) -> bytes:
    """Same length as _row(i), other tensor header: only the gather's own checks can tell."""
    return encode_tensors([np.full((2, 8), i * 0.25, np.float32)])


@pytest.mark.parametrize("change", ["none", "model", "shape", "count", "length"])
def test_ticks_queued_together_are_served_one_step_each(harness, change):
    """Ticks waiting in the ring together: the steady loop serves each usual one
    in a native step, leaves the odd one to the general path, and resumes."""
    for t in range(10):
        harness.tick(_requests(t, [_row(i + t) for i in range(5)]))
    ticks = []
    for t in range(10, 20):
        rows = [_row(i * t) for i in range(5)]
        model = 0
        if t == 14 and change == "model":
            model = 5
        elif t == 14 and change == "shape":
            rows[3] = _shape_changed(3)
        elif t == 14 and change == "count":
            rows = rows[:4]
        elif t == 14 and change == "length":
            rows[1] = encode_tensors([np.zeros((1, 15), np.float32)]) + bytes(4)
        ticks.append(_requests(t, rows, model=model))
    before = harness.fast
    harness.feed(*[RecordBatch.concat([r, _execute(int(r.headers["tick"][0]))]) for r in ticks])
    got = harness.replies()
    assert len(got) == len(ticks)
    for r, g in zip(ticks, got):
        harness.check(g, r, int(r.headers["tick"][0]))
    # One on_batch call served the run up to the odd tick (every tick through the step), and another
    # the rest -- but where the odd tick has fewer records, the pop that took it took part of the next
    # too: the general path served the rest.
    assert harness.fast - before == {"none": 1, "count": 1}.get(change, 2)
