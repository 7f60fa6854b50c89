"""Single-producer single-consumer rings inside a segment, and duplex channels.

Layer: shm_protocol. All ring logic (space accounting, wrap-around, record
validation, spin-then-futex waiting) runs in native C; this module converts
arguments once per call and maps status codes to exceptions. One Python call
moves a whole batch.
"""
from __future__ import annotations

import struct

import numpy as np

from ..native import Exchanger as _Exchanger, ffi, lib
from ._errors import ProtocolError, RingClosedError, RingFullError, raise_for_status
from ._layout import (
    KIND_MAX,
    KIND_MIN,
    MAX_RINGS,
    RECORD_DTYPE,
    RECORD_HEADER_BYTES,
    RING_HEADER_BYTES,
    RING_MAX_CAPACITY,
    RING_MIN_CAPACITY,
    SEGMENT_HEADER_BYTES,
)
from ._records import Record, RecordBatch, _copy_headers
from ._segment import Segment, _timeout_ns

#: Default wait for push (ring full) and pop (ring empty): every wait has a limit.
DEFAULT_TIMEOUT_S = 30.0
#: Spin iterations (CPU pause each, ~10–40 ns) before a waiter blocks in the
#: kernel: long enough to catch a busy peer, short enough that idle waiters
#: do not burn a core when processes outnumber cores.
DEFAULT_SPIN_ITERS = 2000
#: Most records one pop_batch returns.
DEFAULT_MAX_BATCH_RECORDS = 65536

_we_exchange = lib.we_exchange
_HDR = struct.Struct("<HHIIIQII")  # we_record_header, field for field
_HDR_UNPACK = _HDR.unpack_from
_HDR_PACK = _HDR.pack


def _check_header_struct() -> None:
    """The struct above and the declared RECORD_DTYPE must lay a header out alike."""
    fields = (3, 4, 5, 6, 7, 8, 9, 10)
    a = np.zeros(1, RECORD_DTYPE)
    for name, v in zip(RECORD_DTYPE.names, fields):
        a[name] = v
    if _HDR.size != RECORD_HEADER_BYTES or _HDR.pack(*fields) != a.tobytes():
        raise ImportError("shm_protocol: record header struct disagrees with RECORD_DTYPE")


_check_header_struct()


def ring_bytes(capacity_bytes: int) -> int:
    return RING_HEADER_BYTES + capacity_bytes


def _check_geometry(capacity_bytes: int, max_record_bytes: int) -> None:
    if not isinstance(capacity_bytes, int) or capacity_bytes & (capacity_bytes - 1) or not (
        RING_MIN_CAPACITY <= capacity_bytes <= RING_MAX_CAPACITY
    ):
        raise ValueError(
            f"capacity_bytes must be a power of two in [{RING_MIN_CAPACITY}, {RING_MAX_CAPACITY}], got {capacity_bytes!r}"
        )
    if not isinstance(max_record_bytes, int) or max_record_bytes % 8 or not (
        RECORD_HEADER_BYTES + 8 <= max_record_bytes <= capacity_bytes // 2
    ):
        raise ValueError(
            f"max_record_bytes must be a multiple of 8 in [{RECORD_HEADER_BYTES + 8}, capacity/2], got {max_record_bytes!r}"
        )


class Ring:
    """One SPSC ring. Exactly one process pushes and exactly one pops."""

    __slots__ = (
        "segment", "index", "name", "offset", "capacity_bytes", "max_record_bytes",
        "spin_iters", "_hdr_out", "_hdr_ptr", "_pay_out", "_pay_ptr", "_n_out",
        "_used_out", "_err_out", "_pushed_out", "_max_batch", "_one_hdr", "_one_pay",
    )

    def __init__(self, segment: Segment, index: int, *, spin_iters: int = DEFAULT_SPIN_ITERS,
                 max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS) -> None:
        self.segment = segment
        self.index = index
        self.name = f"{segment.name}#{index}"
        self.offset = segment.ring_offset(index)
        err = ffi.new("uint64_t *")
        rc = lib.we_ring_validate(segment.ptr, segment.size_bytes, self.offset, err)
        if rc:
            raise_for_status(rc, self.name, err[0])
        self.capacity_bytes = segment.load_u64(self.offset + 8)
        self.max_record_bytes = segment.load_u32(self.offset + 16)
        self.spin_iters = spin_iters
        self._max_batch = max_batch_records
        # Pop buffers allocated once: the hot path allocates nothing but the
        # arrays it hands back.
        self._hdr_out = np.zeros(max_batch_records, RECORD_DTYPE)
        self._hdr_ptr = ffi.from_buffer("we_record_header[]", self._hdr_out)
        self._pay_out = np.zeros(self.capacity_bytes, np.uint8)
        self._pay_ptr = ffi.from_buffer("uint8_t[]", self._pay_out)
        self._n_out = ffi.new("uint32_t *")
        self._used_out = ffi.new("uint64_t *")
        self._err_out = ffi.new("uint64_t *")
        self._pushed_out = ffi.new("uint32_t *")
        # Single-record pops read fields from a C struct: far cheaper than
        # numpy structured-scalar access on the latency path.
        self._one_hdr = ffi.new("we_record_header[1]")
        self._one_pay = ffi.new("uint8_t[]", self.max_record_bytes)

    @staticmethod
    def initialize(segment: Segment, index: int, offset: int, capacity_bytes: int,
                   max_record_bytes: int) -> None:
        """Lay out a fresh ring at ``offset`` (creator only, before any peer attaches)."""
        _check_geometry(capacity_bytes, max_record_bytes)
        rc = lib.we_ring_init(segment.ptr, segment.size_bytes, offset, capacity_bytes, max_record_bytes, index)
        if rc:
            raise_for_status(rc, f"{segment.name}#{index}", offset)
        segment.set_ring_offset(index, offset)

    def _base(self):
        seg = self.segment
        if seg._closed:
            raise RingClosedError(f"ring {self.name}: its segment was closed by this process")
        return seg.ptr

    # -- push ---------------------------------------------------------------
    def push(self, kind: int, payload: bytes = b"", *, source: int = 0, destination: int = 0,
             tick: int = 0, seq: int = 0, flags: int = 0,
             timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        """Push one record; wait up to ``timeout_s`` for room (0: do not wait).

        Raises RingFullError on timeout — the record was not written.
        """
        if not KIND_MIN <= kind <= KIND_MAX:
            raise ValueError(f"record kind {kind} outside [{KIND_MIN}, {KIND_MAX}]")
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        rc = lib.we_ring_push_one(
            self._base(), self.segment.size_bytes, self.offset, kind, flags, source, destination,
            tick, seq, payload, len(payload), _timeout_ns(timeout_s), self.spin_iters, self._err_out,
        )
        if rc:
            if rc == lib.WE_TIMEOUT:
                raise RingFullError(f"ring {self.name}: full for {timeout_s} s", 0)
            raise_for_status(rc, self.name, self._err_out[0])

    def push_batch(self, batch: RecordBatch, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        """Push every record of ``batch`` in order, waiting for room as needed.

        Raises RingFullError (with ``.pushed``) if the timeout expires first;
        records before ``.pushed`` are in the ring, the rest are not.
        """
        n = len(batch)
        if n == 0:
            return
        # Reserved kinds (0, 0xFFFF) are rejected by the native side, which
        # validates the whole batch before writing any of it.
        headers = np.ascontiguousarray(batch.headers)
        payload = np.ascontiguousarray(batch.payload)
        rc = lib.we_ring_push(
            self._base(), self.segment.size_bytes, self.offset,
            ffi.from_buffer("we_record_header[]", headers), n,
            ffi.from_buffer("uint8_t[]", payload), len(payload),
            _timeout_ns(timeout_s), self.spin_iters, self._pushed_out, self._err_out,
        )
        if rc:
            if rc == lib.WE_TIMEOUT:
                raise RingFullError(
                    f"ring {self.name}: full for {timeout_s} s after {self._pushed_out[0]} of {n} records",
                    self._pushed_out[0],
                )
            if rc == lib.WE_ERR_RECORD:
                raise ValueError(f"ring {self.name}: record {self._err_out[0]} of the batch has a reserved kind "
                                 f"(allowed: {KIND_MIN}..{KIND_MAX}); nothing was pushed")
            raise_for_status(rc, self.name, self._err_out[0])

    def push_all(self, batch: RecordBatch, *, poll_s: float, still_there) -> None:
        """Push the whole batch, however long it takes, as long as the peer lives.

        Waits in slices of ``poll_s``; between slices calls ``still_there()``,
        which raises (or returns False) when the peer is gone. Nothing is
        dropped: on return every record is in the ring.
        """
        while len(batch):
            try:
                self.push_batch(batch, timeout_s=poll_s)
                return
            except RingFullError as e:
                batch = batch.slice(e.pushed, len(batch))
                if still_there() is False:
                    raise RingClosedError(f"ring {self.name}: the peer went away while the ring was full") from None

    # -- pop ------------------------------------------------------------------
    def _pop(self, max_records: int, timeout_s: float | None) -> int:
        rc = lib.we_ring_pop(
            self._base(), self.segment.size_bytes, self.offset, self._hdr_ptr, max_records,
            self._pay_ptr, self.capacity_bytes, _timeout_ns(timeout_s), self.spin_iters,
            self._n_out, self._used_out, self._err_out,
        )
        if rc == lib.WE_TIMEOUT:
            return 0
        if rc:
            raise_for_status(rc, self.name, self._err_out[0])
        return self._n_out[0]

    def pop(self, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Record | None:
        """The next record, or None if none arrived within ``timeout_s``."""
        rc = lib.we_ring_pop(
            self._base(), self.segment.size_bytes, self.offset, self._one_hdr, 1,
            self._one_pay, self.max_record_bytes, _timeout_ns(timeout_s), self.spin_iters,
            self._n_out, self._used_out, self._err_out,
        )
        if rc:
            if rc == lib.WE_TIMEOUT:
                return None
            raise_for_status(rc, self.name, self._err_out[0])
        h = self._one_hdr[0]
        return Record(h.kind, ffi.buffer(self._one_pay, h.payload_len)[:], h.source,
                      h.destination, h.tick, h.seq, h.flags)

    def pop_batch(self, max_records: int | None = None, *,
                  timeout_s: float | None = DEFAULT_TIMEOUT_S, copy: bool = True) -> RecordBatch:
        """Up to ``max_records`` records (waiting up to ``timeout_s`` for the first).

        Returns an empty batch on timeout. With ``copy=True`` the arrays are the
        caller's to keep; with ``copy=False`` they are views of this ring's
        receive buffers, valid only until the next pop on this ring — for
        consumers that process a batch in place (no per-batch copy).
        """
        limit = self._max_batch if max_records is None else min(max_records, self._max_batch)
        if limit <= 0:
            raise ValueError("max_records must be positive")
        n = self._pop(limit, timeout_s)
        if not n:
            return RecordBatch.empty()
        h, p = self._hdr_out[:n], self._pay_out[: self._used_out[0]]
        return RecordBatch._trusted(_copy_headers(h), p.copy()) if copy else RecordBatch._trusted(h, p)

    def stats(self) -> dict:
        used = ffi.new("uint64_t *")
        pushed = ffi.new("uint64_t *")
        popped = ffi.new("uint64_t *")
        rc = lib.we_ring_stats(self._base(), self.segment.size_bytes, self.offset, used, pushed, popped)
        if rc:
            raise_for_status(rc, self.name, self.offset)
        return {"used_bytes": used[0], "capacity_bytes": self.capacity_bytes,
                "records_pushed": pushed[0], "records_popped": popped[0]}

    def __repr__(self) -> str:
        return f"<Ring {self.name} capacity={self.capacity_bytes}>"


def create_ring_segment(geometries, *, tag: str = "") -> Segment:
    """Create a segment holding one ring per ``(capacity_bytes, max_record_bytes)``."""
    from ._segment import new_segment_name

    geometries = list(geometries)
    if not 1 <= len(geometries) <= MAX_RINGS:
        raise ValueError(f"a segment holds 1..{MAX_RINGS} rings")
    for cap, rec in geometries:
        _check_geometry(cap, rec)
    size = SEGMENT_HEADER_BYTES + sum(ring_bytes(cap) for cap, _ in geometries)
    seg = Segment.create(size, name=new_segment_name(tag), ring_count=len(geometries))
    try:
        off = SEGMENT_HEADER_BYTES
        for i, (cap, rec) in enumerate(geometries):
            Ring.initialize(seg, i, off, cap, rec)
            off += ring_bytes(cap)
    except BaseException:
        seg.close()
        seg.unlink()
        raise
    return seg


class Channel:
    """A duplex link between two processes: one segment, two SPSC rings.

    The creating side (``Channel.create``) sends on ring 0 and receives on
    ring 1; the attaching side (``Channel.attach``) the reverse. The creator
    alone unlinks the segment (``close()`` does it for the owner).

    ``latency_path`` picks how request/response calls (:meth:`call`,
    :meth:`call_bytes` and their serving twins) reach the native exchange:
    ``"fast"`` through native's CPython fast call (spins with the GIL held,
    releases it only to block), ``"reference"`` through cffi. Both run the
    same C and move identical bytes; the tests cross-check them. A channel,
    like its rings, belongs to one thread at a time.
    """

    DEFAULT_CAPACITY_BYTES = 1 << 22
    DEFAULT_MAX_RECORD_BYTES = 1 << 16

    def __init__(self, segment: Segment, *, spin_iters: int = DEFAULT_SPIN_ITERS,
                 latency_path: str = "fast") -> None:
        if segment.ring_count != 2:
            raise ProtocolError(f"segment {segment.name} holds {segment.ring_count} rings, a channel has 2")
        self.segment = segment
        down = Ring(segment, 0, spin_iters=spin_iters)
        up = Ring(segment, 1, spin_iters=spin_iters)
        self.send, self.recv = (down, up) if segment.owner else (up, down)
        self._ctx = self._make_ctx()
        self._ctx_timeout_s = DEFAULT_TIMEOUT_S
        if latency_path not in ("fast", "reference"):
            raise ValueError(f"latency_path must be 'fast' or 'reference', got {latency_path!r}")
        self.latency_path = latency_path
        self._exchanger = None
        if latency_path == "fast":
            # call_bytes / reply_recv_bytes / _exchange become one C callable
            # bound to the context (native/we_fastcall.c): no Python frame on
            # the latency path. It keeps its own record of the timeout the
            # context holds, so the Python timeout cache below is unused.
            self._exchanger = _Exchanger(int(ffi.cast("uintptr_t", self._ctx[0])), self._ctx[0], self._exchange_error, _timeout_ns,
                                         DEFAULT_TIMEOUT_S)
            self.call_bytes = self.reply_recv_bytes = self._exchange = self._exchanger

    @classmethod
    def create(cls, *, capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
               max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, tag: str = "",
               spin_iters: int = DEFAULT_SPIN_ITERS, latency_path: str = "fast") -> "Channel":
        seg = create_ring_segment([(capacity_bytes, max_record_bytes)] * 2, tag=tag)
        try:
            return cls(seg, spin_iters=spin_iters, latency_path=latency_path)
        except BaseException:
            seg.close()
            seg.unlink()
            raise

    @classmethod
    def attach(cls, name: str, *, spin_iters: int = DEFAULT_SPIN_ITERS,
               latency_path: str = "fast") -> "Channel":
        seg = Segment.attach(name)
        try:
            return cls(seg, spin_iters=spin_iters, latency_path=latency_path)
        except BaseException:
            seg.close()
            raise

    @property
    def name(self) -> str:
        return self.segment.name

    def _make_ctx(self):
        """The exchange context (native we_exchange_ctx) and cached views of it."""
        c = ffi.new("we_exchange_ctx *")
        for name, ring in (("out", self.send), ("in", self.recv)):
            ref = ffi.addressof(c[0], name)
            ref.base = ring.segment.ptr
            ref.size = ring.segment.size_bytes
            ref.ring_off = ring.offset
            ref.spin_iters = ring.spin_iters
        cap = self.recv.max_record_bytes
        buf = ffi.new("uint8_t[]", cap)
        c.rep_payload = buf
        c.rep_cap = cap
        c.send_first = 1
        c.timeout_ns = _timeout_ns(DEFAULT_TIMEOUT_S)
        req = ffi.addressof(c[0], "req")
        req.kind = 1
        rep_buf = ffi.buffer(ffi.addressof(c[0], "rep"), RECORD_HEADER_BYTES)
        req_buf = ffi.buffer(req, RECORD_HEADER_BYTES)
        return c, req, buf, ffi.buffer(buf, cap), rep_buf, req_buf

    def _set_timeout(self, timeout_s) -> None:
        self._ctx[0].timeout_ns = _timeout_ns(timeout_s)
        self._ctx_timeout_s = timeout_s

    def _exchange(self, payload, *, timeout_s=DEFAULT_TIMEOUT_S) -> bytes | None:
        """Send ``payload`` under the context's request header, return the
        reply's payload (None on timeout); statuses become exceptions.

        This is the reference (cffi) path; on a "fast" channel the instance
        attribute of the same name, the native Exchanger, replaces it.
        """
        x = self._ctx
        if x is None:
            raise RingClosedError(f"channel {self.name} is closed")
        if timeout_s != self._ctx_timeout_s:
            self._set_timeout(timeout_s)
        if payload.__class__ is not bytes:
            payload = ffi.from_buffer(payload)
        n = _we_exchange(x[0], payload, len(payload))
        return x[3][:n] if n >= 0 else self._exchange_error(n, timeout_s)

    def _exchange_error(self, rc: int, timeout_s) -> None:
        """A negative exchange status as None (timeout) or an exception; 0 = closed."""
        if rc == 0 or self._ctx is None:
            raise RingClosedError(f"channel {self.name} is closed")
        if rc == lib.WE_ERR_EMPTY_TIMEOUT:
            return None
        if rc == lib.WE_ERR_FULL_TIMEOUT:
            raise RingFullError(f"ring {self.send.name}: full for {timeout_s} s", 0)
        if rc == lib.WE_ERR_RECORD:
            raise ValueError(f"record kind {self._ctx[1].kind} is reserved (0 and 0xFFFF)")
        raise_for_status(rc, self.recv.name, self._ctx[0].err_off)
        return None

    def call(self, kind: int, payload: bytes = b"", *, source: int = 0, destination: int = 0,
             tick: int = 0, seq: int = 0, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Record | None:
        """Send one record and wait for the next incoming one, in a single native call.

        The latency path of request/response (and, from the serving side, of
        reply-then-receive — see :meth:`reply_recv`). Returns None if nothing
        arrived within ``timeout_s``; raises RingFullError if the send half
        could not get room in time.
        """
        x = self._ctx
        if x is None:
            raise RingClosedError(f"channel {self.name} is closed")
        try:
            # One pack of the request header, stored only when every field fits (payload_len and check are the
            # native side's to fill): cheaper than five cffi field stores.
            hdr = _HDR_PACK(kind, 0, 0, source, destination, tick, seq, 0)
        except struct.error as e:
            raise ValueError(f"record header field out of range: {e}") from None
        x[5][:] = hdr
        payload = self._exchange(payload, timeout_s=timeout_s)
        if payload is None:
            return None
        k, flags, _n, src, dst, t, sq, _check = _HDR_UNPACK(x[4])
        return Record(k, payload, src, dst, t, sq, flags)

    #: Serving side: reply to the last request and wait for the next one.
    reply_recv = call

    def set_call_header(self, kind: int = 1, *, source: int = 0, destination: int = 0, tick: int = 0,
                        seq: int = 0) -> None:
        """The header that :meth:`call_bytes` / :meth:`reply_recv_bytes` send."""
        x = self._ctx
        if x is None:
            raise RingClosedError(f"channel {self.name} is closed")
        if not KIND_MIN <= kind <= KIND_MAX:
            raise ValueError(f"record kind {kind} outside [{KIND_MIN}, {KIND_MAX}]")
        req = x[1]
        req.kind, req.source, req.destination, req.tick, req.seq = kind, source, destination, tick, seq

    def call_bytes(self, payload: bytes, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bytes | None:
        """Lean request/response: send ``payload`` (bytes or any contiguous
        buffer) under the preset header (:meth:`set_call_header`), return the
        reply's payload (None on timeout).

        One native call; for latency-critical loops that need no
        per-message header fields. On a "fast" channel the instance
        attribute of the same name, a native callable with this signature,
        replaces this method (which is the reference path).
        """
        return self._exchange(payload, timeout_s=timeout_s)

    #: Serving side of call_bytes.
    reply_recv_bytes = call_bytes

    def close(self) -> None:
        """Unmap; the owner also unlinks. Idempotent."""
        # First: the fast path must never see a freed context.
        if self._exchanger is not None:
            self._exchanger.close()
        self._ctx = None
        self.segment.close()
        if self.segment.owner:
            self.segment.unlink()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServeStep:
    """A serving loop's steady tick in one native call (native ``we_serve_step``;
    docs/PROTOCOL.md "Steady step").

    Each call: run the ``before`` row-program calls (say, write results into
    the reply), push the reply -- ``reply_headers`` with ``reply_payload``,
    arrays this object keeps and the caller rewrites between calls -- on the
    channel's send ring, pop the next batch into the receive ring's buffers
    and, when it is the steady batch (``expect_records`` records,
    ``expect_payload_bytes`` of payload; a pop takes no more records than
    that), run the ``after`` calls over it
    (say, check the requests and gather them into a model's inputs), each of
    which must pass on every row.

    A call is an object whose ``native`` is a cffi ``we_rows_call *`` (a
    row program bound to base buffers it checked, and keeps alive as long as
    this object keeps it); :attr:`received_headers`
    and :attr:`received_payload` are the receive buffers (whole) for the
    ``after`` calls to read from.  Returns :data:`STEADY` (the steady batch is
    ready), :data:`OTHER` (a batch arrived that is not: :meth:`popped`) or
    :data:`TIMEOUT` (nothing within ``timeout_s``; :meth:`popped` is empty).
    The reply is always pushed in full first: where the ring stays full, in
    slices of ``timeout_s`` while ``still_there()`` does not raise, as
    Ring.push_all.  Valid while the channel is open; one thread only.
    """

    STEADY, TIMEOUT, OTHER = lib.WE_OK, lib.WE_TIMEOUT, lib.WE_SERVE_OTHER

    __slots__ = ("channel", "received_headers", "received_payload", "_ctx", "_step", "_seg", "_reply", "_keep",
                 "_timeout_s", "_still_there")

    def __init__(self, channel: Channel, reply_headers: np.ndarray, reply_payload: np.ndarray, *,
                 expect_records: int, expect_payload_bytes: int, timeout_s: float, still_there) -> None:
        send, recv = channel.send, channel.recv
        if reply_headers.dtype != RECORD_DTYPE or reply_payload.dtype != np.uint8 \
                or not (reply_headers.flags.c_contiguous and reply_payload.flags.c_contiguous):
            raise ValueError("ServeStep: the reply is a contiguous RECORD_DTYPE array and a contiguous uint8 array")
        if not 0 < expect_records <= len(recv._hdr_out) or not 0 <= expect_payload_bytes <= recv.capacity_bytes:
            raise ValueError(f"ServeStep: a steady batch of {expect_records} records and {expect_payload_bytes} "
                             f"payload bytes cannot arrive in one pop")
        self.channel = channel
        self.received_headers, self.received_payload = recv._hdr_out, recv._pay_out
        c = ffi.new("we_serve_ctx *")
        for name, ring in (("out", send), ("in", recv)):
            ref = ffi.addressof(c[0], name)
            ref.base, ref.size, ref.ring_off, ref.spin_iters = ring._base(), ring.segment.size_bytes, ring.offset, \
                ring.spin_iters
        self._reply = RecordBatch(reply_headers, reply_payload)  # checks the payload lengths once
        c.reply = ffi.from_buffer("we_record_header[]", reply_headers)
        c.reply_payload = ffi.from_buffer("uint8_t[]", reply_payload)
        c.reply_payload_bytes, c.reply_count = reply_payload.size, len(reply_headers)
        # At most one steady batch per pop: where several wait in the ring, each is served by a step of its own.
        c.hdr_out, c.max_count = recv._hdr_ptr, expect_records
        c.pay_out, c.pay_cap = recv._pay_ptr, recv.capacity_bytes
        c.expect_count, c.expect_payload_bytes = expect_records, expect_payload_bytes
        c.timeout_ns = _timeout_ns(timeout_s)
        self._keep = [c.reply, c.reply_payload]
        self._ctx, self._step, self._seg = c, lib.we_serve_step, send.segment
        self._timeout_s, self._still_there = timeout_s, still_there

    def set_calls(self, before=(), after=()) -> None:
        """The row-program calls run before each push and after each steady pop (see the class doc)."""
        before, after = list(before), list(after)
        if len(before) + len(after) > lib.WE_SERVE_MAX_CALLS:
            raise ValueError(f"ServeStep: at most {lib.WE_SERVE_MAX_CALLS} row-program calls")
        c = self._ctx
        for k, call in enumerate(before + after):
            c.calls[k] = call.native[0]
        c.n_before, c.n_after = len(before), len(after)
        self._keep[2:] = before + after

    def __call__(self) -> int:
        if self._seg._closed:
            raise RingClosedError(f"channel {self.channel.name}: closed by this process")
        rc = self._step(self._ctx)
        return rc if rc == 0 else self._other(rc)

    def _other(self, rc: int) -> int:
        c = self._ctx
        if rc == self.OTHER or rc == self.TIMEOUT:
            return rc
        if rc == lib.WE_ERR_FULL_TIMEOUT:
            # The reply did not get room in time: the rest of it the patient way, then a plain pop.
            # (A fresh batch: the caller may have rewritten the headers since the last slice's offsets.)
            rest = RecordBatch(self._reply.headers, self._reply.payload).slice(c.pushed, len(self._reply))
            self.channel.send.push_all(rest, poll_s=self._timeout_s, still_there=self._still_there)
            recv = self.channel.recv
            c.popped = recv._pop(recv._max_batch, self._timeout_s)
            c.used = recv._used_out[0] if c.popped else 0
            return self.OTHER if c.popped else self.TIMEOUT
        # An error of the push (the reply not all in) or else of the pop.
        ring = self.channel.send if c.pushed < len(self._reply) else self.channel.recv
        raise_for_status(rc, ring.name, c.err_off)
        raise AssertionError("unreachable")

    def popped(self) -> RecordBatch:
        """What the last call popped (the steady batch too, for a caller that
        then declines it): views of the receive buffers, valid until the
        next pop on the channel."""
        c = self._ctx
        return RecordBatch._trusted(self.received_headers[:c.popped], self.received_payload[:c.used])
