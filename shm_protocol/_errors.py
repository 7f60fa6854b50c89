"""Exceptions of shm_protocol, and the one map from native status codes to them.

Layer: shm_protocol. trio-style split: ``RingClosedError`` means *your* side
closed the resource; ``RingCorruptError`` means the bytes the peer left in
shared memory are not a valid ring state.
"""
from __future__ import annotations

from ..native import lib


class ProtocolError(Exception):
    """Root of every exception raised by wasm_engine.shm_protocol."""


class LayoutError(ProtocolError):
    """The compiled native layer and the Python layout declarations disagree.

    Raised at import: the extension was built from other sources than this
    package (a stale build); reinstall with ``pip install .``.
    """


class SegmentError(ProtocolError):
    """A shared-memory segment cannot be created, attached or unlinked as asked."""


class RingClosedError(ProtocolError):
    """This process already closed the segment the ring lives in."""


class RingFullError(ProtocolError):
    """A push found no room before its timeout expired; nothing was dropped.

    ``pushed`` says how many records of the batch went in before the timeout.
    """

    def __init__(self, message: str, pushed: int = 0) -> None:
        super().__init__(message)
        self.pushed = pushed


class RecordTooLargeError(ProtocolError):
    """A record is larger than the ring's ``max_record_bytes``; nothing was pushed."""


class RingCorruptError(ProtocolError):
    """The shared bytes of a ring are not a valid state.

    Bad magic or version, indices out of range, a record whose length runs past
    the ring, a checksum mismatch. ``ring`` names the ring, ``offset`` is the
    byte offset inside the segment where the problem was found. The reader
    never touched memory outside the mapping.
    """

    def __init__(self, ring: str, offset: int, reason: str) -> None:
        super().__init__(f"ring {ring}: {reason} at segment offset {offset}")
        self.ring = ring
        self.offset = offset
        self.reason = reason


class InternalError(ProtocolError):
    """A status code the Python side does not know: a bug in wasm-engine."""


_CORRUPT_REASONS = {
    lib.WE_ERR_MAGIC: "bad magic",
    lib.WE_ERR_VERSION: "unsupported layout version",
    lib.WE_ERR_INDEX: "producer/consumer indices out of range",
    lib.WE_ERR_RECORD: "invalid record header (kind or length runs past the ring)",
    lib.WE_ERR_CHECKSUM: "record checksum mismatch",
    lib.WE_ERR_LAYOUT: "invalid ring geometry",
    lib.WE_ERR_BOUNDS: "ring outside the mapping",
    lib.WE_ERR_ALIGN: "misaligned ring",
}


def raise_for_status(rc: int, ring: str, offset: int) -> None:
    """Map a negative native status code to its exception (never returns)."""
    if rc in _CORRUPT_REASONS:
        raise RingCorruptError(ring, offset, _CORRUPT_REASONS[rc])
    if rc == lib.WE_ERR_TOO_LARGE:
        raise RecordTooLargeError(f"ring {ring}: record {offset} of the batch exceeds max_record_bytes")
    if rc == lib.WE_ERR_ARG:
        raise ProtocolError(f"ring {ring}: argument inconsistent with the records (value {offset})")
    if rc == lib.WE_ERR_SYS:
        raise OSError(f"ring {ring}: futex syscall failed")
    if rc == lib.WE_ERR_FULL_TIMEOUT:
        raise RingFullError(f"ring {ring}: full until the timeout")
    raise InternalError(f"ring {ring}: unknown native status {rc} (offset {offset})")


class OffsetError(ProtocolError, IndexError):
    """An atomic access at an offset outside the mapping, or misaligned."""


def raise_for_word_status(rc: int, segment: str, offset: int, width: int) -> None:
    if rc == lib.WE_ERR_BOUNDS:
        raise OffsetError(f"segment {segment}: {width}-byte word at offset {offset} is outside the mapping")
    if rc == lib.WE_ERR_ALIGN:
        raise OffsetError(f"segment {segment}: offset {offset} is not {width}-byte aligned")
    if rc == lib.WE_ERR_SYS:
        raise OSError(f"segment {segment}: futex syscall failed at offset {offset}")
    raise InternalError(f"segment {segment}: unknown native status {rc} at offset {offset}")
