"""ServeStep (native we_serve_step): reply, pop and, for the steady batch, row-program calls, in one call."""
import threading
import time

import numpy as np
import pytest

from wasm_engine.inference._rows import COPY, DST_BASE, EQUAL, FILL, SRC_BASE, RowProgram, address
from wasm_engine.shm_protocol import RECORD_DTYPE, Channel, RecordBatch, RingCorruptError, ServeStep

REQ, REP = 20, 21


def _reply(n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    h = np.zeros(n, RECORD_DTYPE)
    h["kind"], h["payload_len"], h["seq"] = REP, width, np.arange(n)
    return h, np.zeros(n * width, np.uint8)


def _requests(n: int, size: int, value: int) -> RecordBatch:
    return RecordBatch.from_arrays(kind=REQ, source=np.arange(n), destination=0, tick=7, seq=np.arange(n) + 10,
                                   payload_len=np.full(n, size, np.uint32),
                                   payload=(np.arange(n * size) + value).astype(np.uint8))


@pytest.fixture
def pair():
    sup = Channel.create(capacity_bytes=1 << 14, max_record_bytes=1 << 10, tag="step")
    child = Channel.attach(sup.name)
    yield sup, child
    child.close()
    sup.close()


def _step(child, headers, payload, n=3, size=8, timeout_s=0.05):
    return ServeStep(child, headers, payload, expect_records=n, expect_payload_bytes=n * size, timeout_s=timeout_s,
                     still_there=lambda: None)


def test_steady_batch_runs_the_calls_after_the_reply_went_out(pair):
    sup, child = pair
    headers, payload = _reply(3, 8)
    step = _step(child, headers, payload)
    # Before the push: fill the reply payload with 0xAB; after a steady pop: copy each request's
    # seq into the reply's seq, and its payload into `inputs`.
    fill = np.full(1, 0xAB, np.uint8)
    before = RowProgram([(FILL, DST_BASE, address(fill), 0, 0, 1, 1)], [fill], 24).bind(None, payload)
    inputs = np.zeros((3, 8), np.uint8)
    seq = RECORD_DTYPE.fields["seq"][1]
    copy_seq = RowProgram([(COPY, SRC_BASE | DST_BASE, seq, 32, seq, 32, 4)], [], 3).bind(step.received_headers, headers)
    gather = RowProgram([(COPY, SRC_BASE, 0, 8, address(inputs), 8, 8)], [inputs], 3).bind(step.received_payload)
    step.set_calls(before=[before], after=[copy_seq, gather])
    sup.send.push_batch(_requests(3, 8, 5), timeout_s=1)
    assert step() == ServeStep.STEADY
    got = sup.recv.pop_batch(timeout_s=1)
    assert (got.headers["kind"] == REP).all() and list(got.headers["seq"]) == [0, 1, 2]  # pushed before the pop
    assert (got.payload == 0xAB).all()
    assert list(headers["seq"]) == [10, 11, 12]  # the next reply, from the requests
    assert inputs.tobytes() == (np.arange(24) + 5).astype(np.uint8).tobytes()


def test_other_batches_and_failed_checks_are_left_to_the_caller(pair):
    sup, child = pair
    headers, payload = _reply(3, 8)
    step = _step(child, headers, payload)
    want = np.full(8, 5, np.uint8)  # every request's payload must equal this
    check = RowProgram([(EQUAL, SRC_BASE, 0, 8, address(want), 0, 8)], [want], 3).bind(step.received_payload)
    step.set_calls(after=[check])
    for batch, why in [(_requests(2, 8, 0), "count"), (_requests(3, 7, 0), "payload bytes"),
                       (_requests(3, 8, 0), "a failed check")]:
        sup.send.push_batch(batch, timeout_s=1)
        assert step() == ServeStep.OTHER, why
        left = step.popped().copy()
        left.headers["check"] = 0  # the ring's checksum
        assert left.headers.tobytes() == batch.headers.tobytes(), why
        assert left.payload.tobytes() == batch.payload.tobytes(), why
    ok = RecordBatch.from_arrays(kind=REQ, source=0, destination=0, tick=0, seq=0, payload_len=np.full(3, 8),
                                 payload=np.full(24, 5, np.uint8))
    sup.send.push_batch(ok, timeout_s=1)
    assert step() == ServeStep.STEADY
    assert len(sup.recv.pop_batch(timeout_s=1)) == 4 * 3  # one reply per call


def test_a_pop_takes_at_most_one_steady_batch(pair):
    sup, child = pair
    headers, payload = _reply(3, 8)
    step = _step(child, headers, payload)
    for v in range(3):
        sup.send.push_batch(_requests(3, 8, v), timeout_s=1)
    for v in range(3):
        assert step() == ServeStep.STEADY
        assert step.popped().payload.tobytes() == _requests(3, 8, v).payload.tobytes()
    t0 = time.monotonic()
    assert step() == ServeStep.TIMEOUT and len(step.popped()) == 0
    assert time.monotonic() - t0 < 5


def test_a_full_ring_is_waited_out_and_nothing_of_the_reply_is_lost(pair):
    sup, child = pair
    headers, payload = _reply(3, 200)
    step = _step(child, headers, payload, n=1, size=8)
    filler = RecordBatch.from_arrays(kind=REP, source=0, destination=0, tick=0, seq=0, payload_len=np.full(1, 900),
                                     payload=np.zeros(900, np.uint8))
    pushed = 0
    while True:  # fill the reply ring
        try:
            child.send.push_batch(filler, timeout_s=0)
            pushed += 1
        except Exception:
            break
    sup.send.push_batch(_requests(1, 8, 1), timeout_s=1)

    def drain():
        time.sleep(0.2)  # several step timeouts
        for _ in range(pushed):
            sup.recv.pop_batch(1, timeout_s=5)

    t = threading.Thread(target=drain)
    t.start()
    try:
        assert step() == ServeStep.OTHER  # the reply the slow way; the pop that followed is not checked
    finally:
        t.join(10)
    assert len(step.popped()) == 1
    got = sup.recv.pop_batch(timeout_s=1)
    assert list(got.headers["seq"]) == [0, 1, 2] and (got.headers["kind"] == REP).all()


def test_a_corrupt_record_raises_naming_the_receiving_ring(pair):
    sup, child = pair
    headers, payload = _reply(1, 8)
    step = _step(child, headers, payload, n=1)
    sup.send.push_batch(_requests(1, 8, 1), timeout_s=1)
    # Flip a payload byte in place, under the checksum.
    ring = sup.send
    ring.segment.store_u32(ring.offset + 256 + 32, 0xDEAD)
    with pytest.raises(RingCorruptError, match="checksum") as ei:
        step()
    assert child.recv.name in str(ei.value)


def test_bad_setups_are_refused(pair):
    _, child = pair
    headers, payload = _reply(2, 8)
    with pytest.raises(ValueError):
        ServeStep(child, headers, payload.astype(np.int8), expect_records=1, expect_payload_bytes=8, timeout_s=1,
                  still_there=lambda: None)
    with pytest.raises(ValueError):
        ServeStep(child, headers, payload, expect_records=0, expect_payload_bytes=8, timeout_s=1,
                  still_there=lambda: None)
    with pytest.raises(ValueError):  # the reply's payload disagrees with its headers
        ServeStep(child, headers, payload[:8], expect_records=1, expect_payload_bytes=8, timeout_s=1,
                  still_there=lambda: None)
    step = _step(child, headers, payload, n=1)
    calls = [RowProgram([(COPY, 0, 0, 0, 0, 0, 0)], [], 1).bind()] * 5
    with pytest.raises(ValueError, match="at most"):
        step.set_calls(before=calls)
