"""serve_channel: control records reach the handler with every data record before them, in order."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from wasm_engine.shm_protocol import Channel, Record, RecordBatch, serve_channel

DATA, CONTROL, STOP, ERROR = 10, 11, 12, 13


def _batch(records):
    return RecordBatch.from_records(records)


def _data(tag: int, n: int):
    return [Record(DATA, bytes([tag, i]) * (3 + i), seq=i) for i in range(n)]


def _recording(seen: list):
    """An on_control that stops at STOP and records (kind, seqs of the pending records) for the rest."""

    def on_control(batch, c, pending, reply):
        kind = int(batch.headers[c]["kind"])
        if kind == STOP:
            return False
        seen.append((kind, [int(h["seq"]) for p in pending for h in p.headers]))
        pending.clear()
        return True

    return on_control


def _wait_popped(ch: Channel, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ch.send.stats()["records_popped"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the serve loop did not pop in time")
        time.sleep(0.001)


@pytest.mark.parametrize("views", [False, True])
def test_pending_records_survive_later_pops(views):
    """Data records popped before their control record (one pop) are intact when
    it arrives (a later pop, which reuses the ring's receive buffer with views=True)."""
    ch = Channel.create(capacity_bytes=1 << 16, max_record_bytes=1 << 12)
    first, second, third = _data(1, 4), _data(2, 5), _data(3, 2)
    seen = []

    def on_control(batch, c, pending, reply):
        kind = int(batch.headers[c]["kind"])
        if kind == STOP:
            return False
        got = RecordBatch.concat(pending)
        seen.append([(int(h["seq"]), got.payload_of(i)) for i, h in enumerate(got.headers)])
        pending.clear()
        return True

    def produce():
        ch.send.push_batch(_batch(first), timeout_s=5)
        _wait_popped(ch, 4)  # popped alone: pending until the control record comes
        ch.send.push_batch(_batch(second + [Record(CONTROL, b"")] + third), timeout_s=5)
        _wait_popped(ch, 4 + 5 + 1 + 2)  # the trailing data is pending across the next pop
        ch.send.push_batch(_batch(_data(4, 1)), timeout_s=5)
        _wait_popped(ch, 13)
        ch.send.push_batch(_batch([Record(CONTROL, b""), Record(STOP, b"")]), timeout_s=5)

    old = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=produce)
    t.start()
    try:
        serve_channel(ch.name, os.getppid(), data_kind=DATA, error_kind=ERROR, label="test", on_control=on_control,
                      views=views)
    finally:
        signal.signal(signal.SIGINT, old)
        t.join(10)
        ch.close()
    assert seen == [[(r.seq, r.payload) for r in first + second], [(r.seq, r.payload) for r in third + _data(4, 1)]]


def test_record_batch_copy_owns_its_arrays():
    b = RecordBatch.from_records(_data(7, 3))
    c = b.copy()
    assert c == b
    b.payload[:] = 0
    b.headers["seq"] = 99
    assert c != b and np.array_equal(c.headers["seq"], [0, 1, 2])


def test_on_batch_serves_whole_batches_only_while_nothing_is_pending():
    """on_batch sees each popped batch first while nothing is pending; what it
    takes never reaches on_control, what it declines is served as usual."""
    ch = Channel.create(capacity_bytes=1 << 16, max_record_bytes=1 << 12)
    offered, seen = [], []
    SHORT = 14  # a batch on_batch takes: one SHORT record alone

    def on_batch(batch, reply):
        offered.append([int(k) for k in batch.headers["kind"]])
        return len(batch) == 1 and int(batch.headers["kind"][0]) == SHORT

    on_control = _recording(seen)

    def produce():
        ch.send.push_batch(_batch([Record(SHORT, b"")]), timeout_s=5)
        _wait_popped(ch, 1)
        ch.send.push_batch(_batch(_data(1, 2)), timeout_s=5)  # declined, then pending
        _wait_popped(ch, 3)
        ch.send.push_batch(_batch([Record(SHORT, b"")]), timeout_s=5)  # pending: not offered, a control record
        _wait_popped(ch, 4)
        ch.send.push_batch(_batch([Record(SHORT, b"")]), timeout_s=5)  # offered and taken again
        _wait_popped(ch, 5)
        ch.send.push_batch(_batch([Record(STOP, b"")]), timeout_s=5)

    old = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=produce)
    t.start()
    try:
        serve_channel(ch.name, os.getppid(), data_kind=DATA, error_kind=ERROR, label="test", on_control=on_control,
                      views=True, on_batch=on_batch)
    finally:
        signal.signal(signal.SIGINT, old)
        t.join(10)
        ch.close()
    assert offered == [[SHORT], [DATA, DATA], [SHORT], [STOP]]
    assert seen == [(SHORT, [0, 1])]


def test_on_batch_may_leave_the_next_batch_and_batch_limit_bounds_each_pop():
    """A RecordBatch from on_batch is served as if just popped, without being
    offered again; batch_limit() bounds each pop made while nothing is pending."""
    ch = Channel.create(capacity_bytes=1 << 16, max_record_bytes=1 << 12)
    SHORT = 14
    offered, seen, limits = [], [], []

    def on_batch(batch, reply):
        offered.append([int(k) for k in batch.headers["kind"]])
        if [int(k) for k in batch.headers["kind"]] != [SHORT]:
            return False
        # Served; now pop on our own, as a steady loop does, and leave what came to the loop.
        return ch_child.recv.pop_batch(timeout_s=5, copy=False)

    on_control = _recording(seen)

    def batch_limit():
        limits.append(1)
        return 1

    # All queued before the loop starts: the first pop takes one record (the limit), on_batch
    # takes it and pops the rest itself, which reaches on_control unoffered.
    ch.send.push_batch(_batch([Record(SHORT, b"")] + _data(1, 2) + [Record(CONTROL, b"")]), timeout_s=5)
    ch.send.push_batch(_batch([Record(STOP, b"")]), timeout_s=5)
    ch_child = Channel.attach(ch.name)
    old = signal.getsignal(signal.SIGINT)
    try:
        serve_channel(ch.name, os.getppid(), data_kind=DATA, error_kind=ERROR, label="test", on_control=on_control,
                      views=True, on_batch=on_batch, batch_limit=batch_limit)
    finally:
        signal.signal(signal.SIGINT, old)
        ch_child.close()
        ch.close()
    assert offered == [[SHORT]]  # the leftover (DATA, DATA, CONTROL, STOP) was never offered
    assert seen == [(CONTROL, [0, 1])]
    assert limits == [1]  # asked once: the loop popped nothing itself after the leftover
