import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wasm_engine.shm_protocol import (
    Channel, Record, RecordBatch, RecordTooLargeError, Ring, RingClosedError,
    RingCorruptError, RingFullError, create_ring_segment,
)
from wasm_engine.shm_protocol._reference import ReferenceRing, encode_record

CAP = 4096
MAXREC = 1024


@pytest.fixture
def ring():
    seg = create_ring_segment([(CAP, MAXREC)])
    try:
        yield Ring(seg, 0)
    finally:
        seg.close()
        seg.unlink()


def data_image(ring) -> bytes:
    off = ring.offset + 256
    return bytes(ring.segment._shm.buf[off : off + ring.capacity_bytes])


def test_single_roundtrip_and_wire_bytes(ring):
    ring.push(5, b"hello", source=1, destination=2, tick=3, seq=4, flags=6, timeout_s=0)
    assert data_image(ring)[:40] == encode_record(5, b"hello", 1, 2, 3, 4, 6)
    assert ring.pop(timeout_s=0) == Record(5, b"hello", 1, 2, 3, 4, 6)
    assert ring.pop(timeout_s=0) is None


def test_batch_roundtrip_preserves_order(ring):
    recs = [Record(1 + i % 7, bytes([i]) * (i % 50), i, i + 1, i * 3, i) for i in range(40)]
    ring.push_batch(RecordBatch.from_records(recs), timeout_s=0)
    got = ring.pop_batch(timeout_s=0)
    assert got.records() == recs


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 0xFFFE), st.integers(0, MAXREC - 32)),
        st.tuples(st.just("pop"), st.just(0), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_wraparound_matches_reference_model(ring, ops):
    """Native ring == pure-Python model, byte for byte, over random op sequences."""
    # fresh ring state per example
    Ring.initialize(ring.segment, 0, ring.offset, CAP, MAXREC)
    ref = ReferenceRing(CAP, MAXREC)
    seq = 0
    for op, kind, size in ops:
        if op == "push":
            payload = bytes((seq * 31 + j) & 0xFF for j in range(size))
            accepted = ref.push(kind, payload, seq, seq + 1, seq, seq)
            if accepted:
                ring.push(kind, payload, source=seq, destination=seq + 1, tick=seq, seq=seq, timeout_s=0)
            else:
                with pytest.raises(RingFullError):
                    ring.push(kind, payload, source=seq, destination=seq + 1, tick=seq, seq=seq, timeout_s=0)
            seq += 1
        else:
            want = ref.pop()
            got = ring.pop(timeout_s=0)
            if want is None:
                assert got is None
            else:
                assert tuple(got) == (want[0], want[1], want[2], want[3], want[4], want[5], want[6])
        assert ring.stats()["used_bytes"] == ref.w - ref.r
    assert data_image(ring) == ref.image()


def test_full_ring_never_drops(ring):
    payload = b"x" * 200
    n = 0
    while True:
        try:
            ring.push(1, payload, seq=n, timeout_s=0)
        except RingFullError:
            break
        n += 1
    assert n == CAP // (32 + 200)
    with pytest.raises(RingFullError):
        ring.push(1, payload, timeout_s=0.01)  # waits, then says so
    got = [ring.pop(timeout_s=0).seq for _ in range(n)]
    assert got == list(range(n))


def test_batch_push_reports_partial_progress(ring):
    recs = RecordBatch.from_records([Record(1, b"y" * 100, seq=i) for i in range(100)])
    with pytest.raises(RingFullError) as ei:
        ring.push_batch(recs, timeout_s=0)
    pushed = ei.value.pushed
    assert 0 < pushed < 100
    assert [r.seq for r in ring.pop_batch(timeout_s=0).records()] == list(range(pushed))


def test_too_large_record_is_rejected_whole(ring):
    with pytest.raises(RecordTooLargeError):
        ring.push(1, b"z" * MAXREC, timeout_s=0)
    batch = RecordBatch.from_records([Record(1, b"a"), Record(1, b"z" * MAXREC)])
    with pytest.raises(RecordTooLargeError):
        ring.push_batch(batch, timeout_s=0)
    assert ring.pop(timeout_s=0) is None  # nothing of the bad batch went in


@pytest.mark.parametrize("kind", [0, 0xFFFF, 70000, -1])
def test_reserved_kinds_rejected(ring, kind):
    with pytest.raises((ValueError, OverflowError)):
        ring.push(kind, b"", timeout_s=0)


# ---- corrupt or hostile shared bytes -----------------------------------------
def _poke(ring, rel_offset: int, data: bytes) -> None:
    off = ring.offset + rel_offset
    ring.segment._shm.buf[off : off + len(data)] = data


def test_bad_magic_named_with_ring_and_offset(ring):
    _poke(ring, 0, b"XXXX")
    with pytest.raises(RingCorruptError) as ei:
        ring.pop(timeout_s=0)
    assert ei.value.ring == ring.name and ei.value.offset == ring.offset
    assert ring.name in str(ei.value) and "magic" in str(ei.value)


def test_bad_version(ring):
    _poke(ring, 4, (9).to_bytes(2, "little"))
    with pytest.raises(RingCorruptError, match="version"):
        ring.push(1, b"", timeout_s=0)


def test_indices_out_of_range(ring):
    _poke(ring, 64, (CAP * 3).to_bytes(8, "little"))  # write index way past read + capacity
    with pytest.raises(RingCorruptError, match="indices"):
        ring.pop(timeout_s=0)


def test_length_running_past_the_ring(ring):
    ring.push(1, b"abc", timeout_s=0)
    _poke(ring, 256 + 4, (CAP * 2).to_bytes(4, "little"))  # payload_len of record 0
    with pytest.raises(RingCorruptError) as ei:
        ring.pop(timeout_s=0)
    assert ei.value.offset == ring.offset + 256


def test_checksum_mismatch(ring):
    ring.push(1, b"abcdefgh", timeout_s=0)
    _poke(ring, 256 + 32, b"X")
    with pytest.raises(RingCorruptError, match="checksum"):
        ring.pop(timeout_s=0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=600), where=st.integers(0, 256 + CAP - 1),
       prefill=st.integers(0, 10))
def test_fuzz_decoder_never_crashes(ring, garbage, where, prefill):
    """Random bytes anywhere in the ring: pop returns records or raises RingCorruptError."""
    Ring.initialize(ring.segment, 0, ring.offset, CAP, MAXREC)
    for i in range(prefill):
        ring.push(1, bytes([i]) * (i * 13), seq=i, timeout_s=0)
    garbage = garbage[: 256 + CAP - where]
    _poke(ring, where, garbage)
    for _ in range(20):
        try:
            if not len(ring.pop_batch(timeout_s=0)):
                break
        except RingCorruptError as e:
            assert e.ring == ring.name
            assert ring.offset <= e.offset < ring.offset + 256 + CAP or e.offset < 2**32
            break


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.binary(min_size=256, max_size=256))
def test_fuzz_header_never_crashes(ring, headers):
    _poke(ring, 0, headers)
    try:
        Ring(ring.segment, 0)
    except RingCorruptError:
        pass
    try:
        ring.pop_batch(timeout_s=0)
        ring.push(1, b"abc", timeout_s=0)
    except (RingCorruptError, RingFullError):
        pass


def test_record_batch_take_gathers_payloads():
    recs = [Record(1, bytes([i]) * i, seq=i) for i in range(10)]
    b = RecordBatch.from_records(recs)
    idx = np.array([9, 0, 3, 3, 5])
    assert b.take(idx).records() == [recs[i] for i in idx]
    assert RecordBatch.concat([b.take(idx[:2]), b.take(idx[2:])]) == b.take(idx)


def test_closed_channel_raises():
    ch = Channel.create(capacity_bytes=4096, max_record_bytes=512)
    ch.close()
    with pytest.raises(RingClosedError):
        ch.send.push(1, b"", timeout_s=0)
    with pytest.raises(RingClosedError):
        ch.call(1, b"", timeout_s=0)


def test_channel_call_and_geometry_errors():
    with Channel.create(capacity_bytes=4096, max_record_bytes=512) as ch:
        ch.send.push(2, b"req", timeout_s=0)
        # the owner's send ring is the peer's recv ring; loop it back by hand
        assert ch.send.pop(timeout_s=0).payload == b"req"
        assert ch.call(3, b"x", timeout_s=0.01) is None
    with pytest.raises(ValueError, match="power of two"):
        Channel.create(capacity_bytes=5000)
    with pytest.raises(ValueError, match="max_record_bytes"):
        Channel.create(capacity_bytes=4096, max_record_bytes=4096)


def test_call_bytes_header_and_errors():
    with Channel.create(capacity_bytes=4096, max_record_bytes=512) as ch:
        peer = Channel.attach(ch.name)
        try:
            ch.set_call_header(7, source=1, destination=2, tick=3, seq=4)
            peer.send.push(8, b"reply", timeout_s=0)
            assert ch.call_bytes(b"req", timeout_s=0) == b"reply"
            got = peer.recv.pop(timeout_s=0)
            assert tuple(got) == (7, b"req", 1, 2, 3, 4, 0)
            assert ch.call_bytes(b"again", timeout_s=0.01) is None  # no reply: timeout
            with pytest.raises(ValueError):
                ch.set_call_header(0)
            with pytest.raises(ValueError):
                ch.call(0xFFFF, b"", timeout_s=0)
        finally:
            peer.close()
        ch.close()
        with pytest.raises(RingClosedError):
            ch.call_bytes(b"", timeout_s=0)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=0, max_size=40), data=st.data())
def test_native_take_matches_numpy_reference(sizes, data):
    recs = [Record(1 + i % 5, bytes((i * 7 + j) & 0xFF for j in range(n)), seq=i) for i, n in enumerate(sizes)]
    b = RecordBatch.from_records(recs)
    # Negative indices count from the end, as in numpy.
    idx = np.array(data.draw(st.lists(st.integers(-len(recs), len(recs) - 1), max_size=60)) if recs else [],
                   dtype=np.int64)
    fast, ref = b.take(idx), b.take_reference(idx)
    assert fast == ref and fast.records() == [recs[i] for i in idx]


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_split_last_and_whole_slices_are_the_slices_they_shortcut(sizes):
    recs = [Record(1 + i % 5, bytes((i * 3 + j) & 0xFF for j in range(n)), seq=i) for i, n in enumerate(sizes)]
    b = RecordBatch.from_records(recs)
    body, last = b.split_last()
    assert body.records() == recs[:-1] and last.records() == recs[-1:]
    assert body == b.slice(0, len(b) - 1) and last == b.slice(len(b) - 1, len(b))
    assert b.slice(0, len(b)).records() == recs
    with pytest.raises(IndexError):
        RecordBatch.empty().split_last()


_FIELD = st.integers(0, 3) | st.integers(0, 2**32 - 1)  # few distinct values (ties) or many


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_FIELD, _FIELD, _FIELD, st.integers(0, 3), st.integers(0, 4)), max_size=70),
       presorted=st.booleans())
@pytest.mark.parametrize("keys", [("source", "seq"), ("destination", "source", "seq"), ("source", "seq", "flags")])
def test_native_canonical_order_matches_lexsort(keys, rows, presorted):
    recs = [Record(1, bytes([i & 0xFF]) * n, source=src, destination=dst, seq=seq, flags=flags)
            for i, (src, dst, seq, flags, n) in enumerate(rows)]
    b = RecordBatch.from_records(recs)
    if presorted:
        b = b.sorted_by_reference(keys)
    fast, ref = b.sorted_by(keys), b.sorted_by_reference(keys)
    assert fast.headers.tobytes() == ref.headers.tobytes() and fast.payload.tobytes() == ref.payload.tobytes()
    assert (fast is b) == (ref is b)  # a batch already in order is returned itself, not copied


def test_sorted_by_other_keys_uses_lexsort():
    b = RecordBatch.from_records([Record(1, b"a", tick=2), Record(1, b"b", tick=1)])
    assert [r.payload for r in b.sorted_by(("tick",)).records()] == [b"b", b"a"]


def _batch_of(sizes, kind_base=1):
    recs = [Record(kind_base + i % 5, bytes((i * 7 + j) & 0xFF for j in range(n)), source=i % 3,
                   destination=i, tick=i * 11, seq=i, flags=i % 2) for i, n in enumerate(sizes)]
    return recs, RecordBatch.from_records(recs)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=20), uniform=st.booleans(), k=st.integers(0, 20))
def test_with_prefix_matches_record_by_record(sizes, uniform, k):
    # Equal payload lengths take a block-copy path, others a scatter: both
    # must give what prefixing each record's payload by hand gives.
    if uniform and sizes:
        sizes = [sizes[0]] * len(sizes)
    recs, b = _batch_of(sizes)
    prefix = np.arange(len(recs) * k, dtype=np.int64).astype(np.uint8).reshape(len(recs), k)
    out = b.with_prefix(prefix)
    assert out.records() == [r._replace(payload=bytes(prefix[i]) + r.payload) for i, r in enumerate(recs)]
    assert b.records() == recs  # the input is untouched


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.lists(st.integers(0, 30), max_size=6), max_size=5))
def test_concat_matches_records_and_never_aliases(parts):
    batches = [_batch_of(sizes, kind_base=1 + j)[1] for j, sizes in enumerate(parts)]
    out = RecordBatch.concat(batches)
    assert out.records() == [r for b in batches for r in b.records()]
    if len(out):
        # Always a new batch, even of a single non-empty part: callers modify it.
        out.headers["flags"] = 0xFFFF
        out.payload[...] = 0xAA
        assert all(not (b.headers["flags"] == 0xFFFF).any() for b in batches if len(b))


def test_take_accepts_negative_indices_like_numpy():
    recs, b = _batch_of([3, 0, 5, 2])
    assert b.take(np.array([-1, 0, -2])).records() == [recs[-1], recs[0], recs[-2]]
    with pytest.raises(IndexError):
        b.take(np.array([4]))


def test_take_refuses_a_payload_shorter_than_its_headers_say():
    # The native gather trusts no offset: a batch whose payload buffer is
    # shorter than its headers declare (only _trusted can build one) raises
    # instead of reading past the buffer.
    recs, b = _batch_of([8, 8, 8])
    short = RecordBatch._trusted(b.headers, b.payload[:12])
    with pytest.raises(IndexError, match="outside the payload buffer"):
        short.take(np.array([0, 2]))
    assert short.take(np.array([0])).records() == [recs[0]]


def test_slices_are_views_that_take_like_the_whole():
    recs, b = _batch_of([3, 0, 5, 2, 7])
    s = b.slice(1, 4)
    assert s.records() == recs[1:4]
    assert s.take(np.array([2, 0, -1])).records() == [recs[3], recs[1], recs[3]]
    assert np.shares_memory(s.payload, b.payload)


def test_single_checks_kind_and_copies_payload():
    buf = bytearray(b"abc")
    b = RecordBatch.single(9, bytes(buf), tick=5, flags=2)
    assert b.records() == [Record(9, b"abc", tick=5, flags=2)]
    for kind in (0, 0xFFFF):
        with pytest.raises(ValueError):
            RecordBatch.single(kind)


def test_push_all_waits_while_the_peer_lives_and_stops_when_it_goes(ring):
    calls = []
    big = RecordBatch.from_records([Record(1, b"p" * 200, seq=i) for i in range(40)])  # > one ring's worth

    def gone():
        calls.append(1)
        return len(calls) < 3  # alive twice, then gone

    with pytest.raises(RingClosedError, match="peer went away"):
        ring.push_all(big, poll_s=0.001, still_there=gone)
    assert len(calls) == 3
    got = ring.pop_batch(timeout_s=0).records()
    assert [r.seq for r in got] == list(range(len(got))) and 0 < len(got) < 40  # nothing reordered or lost


# ---- latency path: native fast call vs the cffi reference ------------------
def _ring_images(ch):
    return [bytes(ch.segment._shm.buf[r.offset:r.offset + 256 + r.capacity_bytes])
            for r in (ch.send, ch.recv)]


_header = st.tuples(st.integers(1, 0xFFFE), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300), _header,
                                st.booleans(), st.sampled_from([bytes, bytearray, memoryview])),
                      min_size=1, max_size=30))
def test_fast_latency_path_matches_cffi_reference_byte_for_byte(steps):
    """Both paths run the same exchange: same replies, same ring bytes, wraps included."""
    pairs = []
    for path in ("fast", "reference"):
        ch = Channel.create(capacity_bytes=2048, max_record_bytes=512, latency_path=path)
        pairs.append((ch, Channel.attach(ch.name)))
    try:
        for req, rep, (kind, src, dst, tick, seq), lean, typ in steps:
            got = []
            for ch, peer in pairs:
                peer.send.push(kind, rep, source=dst, destination=src, tick=tick, seq=seq, timeout_s=0)
                if lean:
                    ch.set_call_header(kind, source=src, destination=dst, tick=tick, seq=seq)
                    out = ch.call_bytes(typ(req), timeout_s=0)
                else:
                    out = ch.call(kind, typ(req), source=src, destination=dst, tick=tick, seq=seq,
                                  timeout_s=0)
                got.append((out, peer.recv.pop(timeout_s=0)))
            assert got[0] == got[1]
            assert got[0][1] == Record(kind, req, src, dst, tick, seq)
            assert (got[0][0] == rep) if lean else (got[0][0] == Record(kind, rep, dst, src, tick, seq))
        assert _ring_images(pairs[0][0]) == _ring_images(pairs[1][0])
    finally:
        for ch, peer in pairs:
            peer.close()
            ch.close()


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_latency_path_errors_are_the_same(path):
    with Channel.create(capacity_bytes=1024, max_record_bytes=128, latency_path=path) as ch:
        with pytest.raises(TypeError):
            ch.call_bytes("not bytes", timeout_s=0)
        with pytest.raises(RecordTooLargeError):
            ch.call_bytes(bytes(200), timeout_s=0)
        with pytest.raises(ValueError, match="out of range"):
            ch.call(1 << 16, b"", timeout_s=0)
        while True:  # fill the send ring: nobody reads it
            try:
                ch.send.push(1, bytes(64), timeout_s=0)
            except RingFullError:
                break
        with pytest.raises(RingFullError):
            ch.call_bytes(bytes(64), timeout_s=0.01)
    with pytest.raises(ValueError, match="latency_path"):
        Channel.create(capacity_bytes=1024, max_record_bytes=128, latency_path="turbo")


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_latency_path_releases_the_gil_while_it_blocks(path):
    """A reply (or room) that comes from another thread of this process after the
    spin phase must arrive: the waiting call may not hold the GIL while it sleeps."""
    import threading

    with Channel.create(capacity_bytes=1024, max_record_bytes=128, latency_path=path) as ch:
        peer = Channel.attach(ch.name)
        try:
            t = threading.Timer(0.05, lambda: peer.send.push(1, b"late", timeout_s=1))
            t.start()
            assert ch.call_bytes(b"q", timeout_s=5) == b"late"
            t.join()
            assert peer.recv.pop(timeout_s=0).payload == b"q"
            while True:
                try:
                    ch.send.push(1, bytes(64), timeout_s=0)
                except RingFullError:
                    break
            n_full = len(peer.recv.pop_batch(timeout_s=0))
            for _ in range(n_full):
                ch.send.push(1, bytes(64), timeout_s=0)

            def drain_then_reply():
                peer.recv.pop_batch(timeout_s=1)
                peer.send.push(1, b"room", timeout_s=1)

            t = threading.Timer(0.05, drain_then_reply)
            t.start()
            assert ch.call_bytes(bytes(64), timeout_s=5) == b"room"
            t.join()
        finally:
            peer.close()


def test_fast_call_bytes_argument_handling_timeouts_and_close():
    import gc
    import threading
    import weakref

    with Channel.create(capacity_bytes=1024, max_record_bytes=128) as ch:
        peer = Channel.attach(ch.name)
        try:
            with pytest.raises(TypeError):
                ch.call_bytes(b"a", b"b")
            with pytest.raises(TypeError):
                ch.call_bytes(b"a", timeout=1)
            with pytest.raises(ValueError, match="timeout_s"):
                ch.call_bytes(b"a", timeout_s=-1)
            assert peer.recv.pop(timeout_s=0) is None  # a rejected call sends nothing
            assert ch.call_bytes(b"a", timeout_s=0) is None  # sent; no reply yet
            assert ch.call(1, b"b", timeout_s=0.001) is None
            # Back to the default (30 s): a reply 50 ms late must still arrive,
            # whichever of call / call_bytes last changed the context's timeout.
            t = threading.Timer(0.05, lambda: peer.send.push(1, b"late", timeout_s=1))
            t.start()
            assert ch.call_bytes(b"c") == b"late"
            t.join()
            assert [r.payload for r in peer.recv.pop_batch(timeout_s=0).records()] == [b"a", b"b", b"c"]
        finally:
            peer.close()
        held = ch.call_bytes
    with pytest.raises(RingClosedError):
        held(b"x")
    # The channel <-> exchanger cycle is collectable.
    ch2 = Channel.create(capacity_bytes=1024, max_record_bytes=128)
    ref = weakref.ref(ch2)
    ch2.close()
    del ch2
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("latency_path", ["fast", "reference"])
def test_exchange_read_cache_across_wraps_and_a_full_ring(latency_path):
    """The exchange path pushes against a cached read index (docs/PROTOCOL.md):
    it must never overwrite unread records, must notice space the consumer
    freed, and must agree with plain pushes on the same ring."""
    with Channel.create(capacity_bytes=1024, max_record_bytes=256, latency_path=latency_path) as ch:
        peer = Channel.attach(ch.name)
        try:
            ch.set_call_header(5)
            sent = []
            for i in range(400):  # ~60 wraps of the 1 KiB ring
                payload = bytes((i + j) & 0xFF for j in range(i % 97))
                peer.send.push(6, b"r%d" % i, timeout_s=0)
                assert ch.call_bytes(payload, timeout_s=0) == b"r%d" % i
                sent.append(payload)
                if i % 7 == 0:  # a plain push in between, from the same side
                    ch.send.push(9, b"p%d" % i, timeout_s=0)
                    sent.append(b"p%d" % i)
                if i % 3 == 2:  # let requests pile up, then drain them all
                    got = [r.payload for r in peer.recv.pop_batch(timeout_s=0).records()]
                    assert got == sent
                    sent.clear()
            assert [r.payload for r in peer.recv.pop_batch(timeout_s=0).records()] == sent
            # Fill the ring through the exchange path: it reports full, never overwrites.
            big = bytes(200)
            n = 0
            with pytest.raises(RingFullError):
                while n < 10:
                    ch.call_bytes(big, timeout_s=0)
                    n += 1
            assert 0 < n < 10
            assert len(peer.recv.pop_batch(timeout_s=0)) == n
            # The consumer freed everything: the next call must see it.
            peer.send.push(6, b"ok", timeout_s=0)
            assert ch.call_bytes(big, timeout_s=0) == b"ok"
            assert peer.recv.pop(timeout_s=0).payload == big
        finally:
            peer.close()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_then_appends_one_control_record(n):
    b = RecordBatch.from_records([Record(3, bytes([i]) * i, source=i, destination=9, tick=4, seq=i, flags=1)
                                  for i in range(n)])
    got = b.then(7, tick=2**40 + 3, flags=5)
    want = RecordBatch.concat([b, RecordBatch.single(7, tick=2**40 + 3, flags=5)])
    assert got.headers.tobytes() == want.headers.tobytes() and got.payload.tobytes() == want.payload.tobytes()
    got.headers["kind"][:n] = 8  # its own header array: the batch it came from is unchanged
    assert (b.headers["kind"] == 3).all()
    with pytest.raises(ValueError, match="outside"):
        b.then(0)
