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

import numpy as np
import pytest

from wasm_engine.inference import K_INF_EXECUTE, K_INF_INIT, K_INF_REQUEST, build_engine, encode_tensors, execute_batch
from wasm_engine.inference import _process
from wasm_engine.shm_protocol import RecordBatch

LIMIT = 1 << 20


class _Reply:
    """serve_channel's reply: records to the parent (kept here as copies, as the ring would)."""

    max_record_bytes = LIMIT + 64

    def __init__(self) -> None:
        self.got: list[RecordBatch] = []

    def __call__(self, batch: RecordBatch) -> None:
        self.got.append(batch.copy())


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
    def __init__(self, model_path) -> None:
        cfg = {"models": [{"id": "mlp", "path": str(model_path), "kind": "tensor", "provider": "cpu", "batch": True}],
               "provider": "cpu"}
        self.server = _process._Server()
        self.reply = _Reply()
        assert self.server(RecordBatch.single(K_INF_INIT, json.dumps(cfg).encode()), 0, [], self.reply)
        self.reply.got.clear()
        self.ref = build_engine(cfg, self.server.max_result)
        self.fast = 0

    def feed(self, batch: RecordBatch) -> None:
        """One popped batch, as serve_channel hands it over (requests then EXECUTE, or other records)."""
        if self.server.on_batch(batch, self.reply):
            self.fast += 1
            return
        start, pending = 0, []
        for c in np.flatnonzero(batch.headers["kind"] != K_INF_REQUEST).tolist():
            if c > start:
                pending.append(batch.slice(start, c))
            start = c + 1
            assert self.server(batch, c, pending, self.reply)
        assert start == len(batch), "a test batch ends with its control record"

    def tick(self, requests: RecordBatch, execute: RecordBatch | None = None, *, fast: bool | None = None) -> None:
        tick = int(requests.headers["tick"][0]) if len(requests) else 0
        execute = execute if execute is not None else _execute(tick)
        before = self.fast
        self.reply.got.clear()
        self.feed(RecordBatch.concat([requests, execute]))
        if fast is not None:
            assert (self.fast > before) == fast
        (got,) = self.reply.got
        want = execute_batch(self.ref, requests, self.server.max_result, done_tick=int(execute.headers["tick"][0]))
        assert got.headers.tobytes() == want.headers.tobytes()
        stats_bytes = _process.MODEL_STATS_DTYPE.itemsize
        assert got.payload[:-stats_bytes].tobytes() == want.payload[:-stats_bytes].tobytes()
        g = np.frombuffer(got.payload[-stats_bytes:].tobytes(), _process.MODEL_STATS_DTYPE)
        w = np.frombuffer(want.payload[-stats_bytes:].tobytes(), _process.MODEL_STATS_DTYPE)
        assert (g["requests"], g["runs"]) == (w["requests"], w["runs"])


@pytest.fixture
def harness(tensor_model_path):
    errors = _Errors()
    logger = logging.getLogger("wasm_engine.inference")
    logger.addHandler(errors)
    try:
        yield Harness(tensor_model_path)
    finally:
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
        before = len(harness.reply.got)
        with pytest.raises(RuntimeError, match="unexpected record kind"):
            harness.feed(RecordBatch.concat([reqs, _execute(11)]))
        assert len(harness.reply.got) == before
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
        harness.reply.got.clear()
        assert not harness.server.on_batch(batch, harness.reply)
        assert harness.reply.got == []
        return
    harness.tick(reqs, execute, fast=False)
    for t in range(12, 16):
        harness.tick(_requests(t, [_row(i + t) for i in range(4)]))
    harness.tick(_requests(16, [_row(i) for i in range(4)]), fast=True)
