"""RecordBatch: many records as numpy arrays, so a batch moves in one call.

Layer: shm_protocol. A batch is a structured array of 32-byte record headers
(exactly the wire layout) plus one contiguous payload buffer holding the
payloads back to back, unpadded. Reordering and selecting are numpy gathers,
never per-record Python.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..native import ffi, lib
from ._layout import KIND_MAX, KIND_MIN, RECORD_DTYPE

# The header as an opaque 32-byte item: numpy concatenates and gathers these
# without its per-field promotion of structured dtypes (several times faster
# for the small batches of a tick).
_RAW_HEADER = np.dtype((np.void, RECORD_DTYPE.itemsize))


def _copy_headers(headers: np.ndarray) -> np.ndarray:
    """A copy of a header array, made as opaque 32-byte items (about twice as
    fast as a structured copy, which goes field by field)."""
    return headers.view(_RAW_HEADER).copy().view(RECORD_DTYPE)


def _declared_bytes(headers: np.ndarray) -> int:
    """Payload bytes the headers declare in all (0 for none)."""
    return int(np.add.reduce(headers["payload_len"], dtype=np.uint64))


class Record(NamedTuple):
    """One record, for convenience APIs (``Ring.push``/``Ring.pop``).

    A NamedTuple, not a frozen dataclass: it is built on the latency path and
    a frozen dataclass costs microseconds per instance.
    """

    kind: int
    payload: bytes
    source: int = 0
    destination: int = 0
    tick: int = 0
    seq: int = 0
    flags: int = 0


class RecordBatch:
    """Headers (``RECORD_DTYPE`` array) + concatenated payloads (uint8 array)."""

    __slots__ = ("headers", "payload", "_offsets")

    def __init__(self, headers: np.ndarray, payload: np.ndarray) -> None:
        if headers.dtype != RECORD_DTYPE:
            raise TypeError("headers must use RECORD_DTYPE")
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise TypeError("payload must be a 1-D uint8 array")
        total = _declared_bytes(headers)
        if total != len(payload):
            raise ValueError(f"payload is {len(payload)} bytes, headers declare {total}")
        self.headers = headers
        self.payload = payload
        self._offsets = None

    # -- construction ------------------------------------------------------
    @classmethod
    def _trusted(cls, headers: np.ndarray, payload: np.ndarray) -> "RecordBatch":
        """No checks: for arrays the native ring just filled consistently."""
        b = cls.__new__(cls)
        b.headers, b.payload, b._offsets = headers, payload, None
        return b

    @classmethod
    def empty(cls) -> "RecordBatch":
        """The batch of no records: one shared instance (built per call, it
        cost a supervisor tick ~13 us; nothing can be written into arrays of
        length zero, and nothing reassigns a batch's arrays)."""
        return _EMPTY

    @classmethod
    def single(cls, kind: int, payload: bytes = b"", *, tick: int = 0, flags: int = 0) -> "RecordBatch":
        """One control record (source, destination and seq 0).

        Built every tick by every link, so the header is one tuple store
        rather than a field-by-field ``from_arrays``.
        """
        if not KIND_MIN <= kind <= KIND_MAX:
            raise ValueError(f"record kind {kind} outside [{KIND_MIN}, {KIND_MAX}]")
        headers = np.zeros(1, RECORD_DTYPE)
        headers[0] = (kind, flags, len(payload), 0, 0, tick, 0, 0)
        return cls._trusted(headers, np.frombuffer(payload, np.uint8).copy())

    def then(self, kind: int, *, tick: int = 0, flags: int = 0) -> "RecordBatch":
        """These records followed by one control record without payload
        (source, destination and seq 0): ``concat([self, single(kind, ...)])``
        built as one header array, sharing this batch's payload array (for
        a batch about to be pushed, which copies it)."""
        if not KIND_MIN <= kind <= KIND_MAX:
            raise ValueError(f"record kind {kind} outside [{KIND_MIN}, {KIND_MAX}]")
        n = len(self.headers)
        raw = np.empty(n + 1, _RAW_HEADER)
        raw[:n] = self.headers.view(_RAW_HEADER)
        headers = raw.view(RECORD_DTYPE)
        headers[n] = (kind, flags, 0, 0, 0, tick, 0, 0)
        return RecordBatch._trusted(headers, self.payload)

    @classmethod
    def from_records(cls, records) -> "RecordBatch":
        records = list(records)
        headers = np.zeros(len(records), RECORD_DTYPE)
        for i, r in enumerate(records):
            if not KIND_MIN <= r.kind <= KIND_MAX:
                raise ValueError(f"record kind {r.kind} outside [{KIND_MIN}, {KIND_MAX}]")
            headers[i] = (r.kind, r.flags, len(r.payload), r.source, r.destination, r.tick, r.seq, 0)
        payload = np.frombuffer(b"".join(bytes(r.payload) for r in records), np.uint8).copy()
        return cls(headers, payload)

    @classmethod
    def from_arrays(cls, *, kind, source, destination, tick, seq, payload_len, payload, flags=0) -> "RecordBatch":
        """Vectorised construction; scalars broadcast."""
        n = len(payload_len)
        headers = np.zeros(n, RECORD_DTYPE)
        headers["kind"] = kind
        headers["flags"] = flags
        headers["payload_len"] = payload_len
        headers["source"] = source
        headers["destination"] = destination
        headers["tick"] = tick
        headers["seq"] = seq
        return cls(headers, np.ascontiguousarray(payload, dtype=np.uint8))

    @classmethod
    def concat(cls, batches, *, copy: bool = True) -> "RecordBatch":
        """The batches' records in order, as a new batch.

        copy=False: a lone non-empty batch is returned itself rather than
        copied — for callers that modify neither it nor the result.
        """
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            if not copy:
                return batches[0]
            return cls._trusted(_copy_headers(batches[0].headers), batches[0].payload.copy())
        # Consistent batches concatenate into a consistent one: no re-check.
        return cls._trusted(
            np.concatenate([b.headers.view(_RAW_HEADER) for b in batches]).view(RECORD_DTYPE),
            np.concatenate([b.payload for b in batches]),
        )

    # -- access --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.headers)

    @property
    def offsets(self) -> np.ndarray:
        """Start offset of each payload, plus the total at the end (n+1 entries)."""
        if self._offsets is None:
            off = np.zeros(len(self.headers) + 1, np.int64)
            off[1:] = self.headers["payload_len"]
            np.add.accumulate(off, out=off)
            self._offsets = off
        return self._offsets

    def payload_of(self, i: int) -> bytes:
        off = self.offsets
        return self.payload[off[i] : off[i + 1]].tobytes()

    def record(self, i: int) -> Record:
        h = self.headers[i]
        return Record(
            int(h["kind"]), self.payload_of(i), int(h["source"]), int(h["destination"]),
            int(h["tick"]), int(h["seq"]), int(h["flags"]),
        )

    def records(self) -> list[Record]:
        return [self.record(i) for i in range(len(self))]

    def copy(self) -> "RecordBatch":
        """The same records in arrays of their own (for keeping a batch whose
        arrays are views of a ring's receive buffer)."""
        return RecordBatch._trusted(_copy_headers(self.headers), self.payload.copy())

    def slice(self, lo: int, hi: int) -> "RecordBatch":
        """Records lo..hi-1 as views (no copy): the cheap case of take()."""
        if lo == 0 and hi == len(self.headers):
            return self  # all of it: views of itself are itself
        off = self.offsets
        # Views of a consistent batch are consistent: no re-check.
        return RecordBatch._trusted(self.headers[lo:hi], self.payload[off[lo]:off[hi]])

    def split_last(self) -> tuple["RecordBatch", "RecordBatch"]:
        """(records 0..n-2, record n-1) as views: ``slice(0, n - 1), slice(n - 1, n)``
        without the offsets (where a batch ends with its end marker)."""
        h = self.headers
        n = len(h)
        if not n:
            raise IndexError("split_last of an empty batch")
        cut = self.payload.size - int(h["payload_len"][n - 1])
        return RecordBatch._trusted(h[:n - 1], self.payload[:cut]), RecordBatch._trusted(h[n - 1:], self.payload[cut:])

    def take(self, index: np.ndarray) -> "RecordBatch":
        """Records at ``index`` (any order, repeats allowed, negative counts
        from the end); payloads gathered by one bounds-checked native memcpy
        loop (``take_reference`` is the numpy version it is tested against)."""
        index = np.ascontiguousarray(index, dtype=np.int64)
        headers = self.headers.take(index)  # raises IndexError like numpy
        total = _declared_bytes(headers)
        out = np.empty(total, np.uint8)
        if total:
            src = np.ascontiguousarray(self.payload)
            err = ffi.new("uint64_t *")
            rc = lib.we_gather_records(ffi.from_buffer("uint8_t[]", src), len(src),
                                       ffi.from_buffer("int64_t[]", self.offsets), len(self.headers),
                                       ffi.from_buffer("int64_t[]", index), len(index),
                                       ffi.from_buffer("uint8_t[]", out, require_writable=True), total, err)
            if rc:
                raise IndexError(f"record {err[0]} of the selection lies outside the payload buffer")
        return RecordBatch._trusted(headers, out)

    def sorted_by(self, keys: tuple[str, ...]) -> "RecordBatch":
        """The records in ascending order of the header fields ``keys``
        (stable: ties keep their order); ``self`` itself when they already are.

        The supervisor's canonical orders -- (source, seq), (destination,
        source, seq), (source, seq, flags) -- are checked, and sorted if
        needed, by one native call (the usual batch is in order already);
        other keys, and ``sorted_by_reference``, use numpy's lexsort.
        """
        n = len(self.headers)
        if n < 2:
            return self
        code = _ORDERS.get(keys)
        if code is None:
            return self.sorted_by_reference(keys)
        hdrs = ffi.from_buffer("we_record_header[]", np.ascontiguousarray(self.headers))
        if lib.we_records_order(hdrs, n, code, ffi.NULL, ffi.NULL) == 0:  # the usual case: no allocation
            return self
        order = np.empty(2 * n, np.uint32)
        rc = lib.we_records_order(hdrs, n, code, ffi.from_buffer("uint32_t[]", order),
                                  ffi.from_buffer("uint32_t[]", order[n:]))
        if rc != 1:
            raise RuntimeError(f"we_records_order failed with status {rc}")
        return self.take(order[:n])

    def sorted_by_reference(self, keys: tuple[str, ...]) -> "RecordBatch":
        """sorted_by through numpy's lexsort: the cross-check for the native order."""
        if len(self.headers) < 2:
            return self
        h = self.headers
        order = np.lexsort(tuple(h[k] for k in reversed(keys)))
        if order.tobytes() == np.arange(len(order), dtype=order.dtype).tobytes():
            return self
        return self.take(order)

    def take_reference(self, index: np.ndarray) -> "RecordBatch":
        """The pure-numpy gather: the cross-check for ``take``."""
        index = np.asarray(index, dtype=np.int64)
        headers = self.headers[index]
        lens = headers["payload_len"].astype(np.int64)
        total = int(lens.sum())
        if total == 0:
            return RecordBatch(headers, np.zeros(0, np.uint8))
        starts = self.offsets[:-1][index]
        new_starts = np.zeros(len(index), np.int64)
        np.cumsum(lens[:-1], out=new_starts[1:])
        # Position j of the output reads input byte starts[k] + (j - new_starts[k]).
        gather = np.arange(total, dtype=np.int64) + np.repeat(starts - new_starts, lens)
        return RecordBatch(headers, self.payload[gather])

    def with_prefix(self, prefix: np.ndarray) -> "RecordBatch":
        """Each payload preceded by its row of ``prefix`` (n × k uint8), gathered in numpy."""
        n = len(self)
        if not n:
            return RecordBatch.empty()
        prefix = np.ascontiguousarray(prefix, dtype=np.uint8).reshape(n, -1)
        k = prefix.shape[1]
        lens = self.headers["payload_len"].astype(np.int64)
        headers = _copy_headers(self.headers)
        headers["payload_len"] = lens + k
        if lens.min() == lens.max():
            # Equal lengths (a tick's inference results, usually): the output
            # is an n × (k + len) matrix, filled by two block copies.
            size = int(lens[0])
            out = np.empty((n, k + size), np.uint8)
            out[:, :k] = prefix
            out[:, k:] = self.payload.reshape(n, size)
            return RecordBatch._trusted(headers, out.reshape(-1))
        new_lens = lens + k
        starts = np.zeros(n, np.int64)
        np.cumsum(new_lens[:-1], out=starts[1:])
        out = np.empty(int(new_lens.sum()), np.uint8)
        if k:
            out[(starts[:, None] + np.arange(k)).ravel()] = prefix.ravel()
        total = int(lens.sum())
        if total:
            body_dst = np.arange(total, dtype=np.int64) + np.repeat(starts + k - self.offsets[:-1], lens)
            out[body_dst] = self.payload
        return RecordBatch(headers, out)

    def __eq__(self, other) -> bool:
        if not isinstance(other, RecordBatch):
            return NotImplemented
        mask = [n for n in RECORD_DTYPE.names if n != "check"]
        return (
            len(self) == len(other)
            and all(np.array_equal(self.headers[n], other.headers[n]) for n in mask)
            and np.array_equal(self.payload, other.payload)
        )

    def __repr__(self) -> str:
        return f"<RecordBatch {len(self)} records, {len(self.payload)} payload bytes>"


_ORDERS = {("source", "seq"): lib.WE_ORDER_SOURCE_SEQ, ("destination", "source", "seq"): lib.WE_ORDER_DEST_SOURCE_SEQ,
           ("source", "seq", "flags"): lib.WE_ORDER_SOURCE_SEQ_FLAGS}

_EMPTY = RecordBatch._trusted(np.zeros(0, RECORD_DTYPE), np.zeros(0, np.uint8))
