"""Fixed layouts of the wire format, declared once and checked at import.

Layer: shm_protocol. docs/PROTOCOL.md documents the same tables; the numbers
here are the single Python source of truth, and ``_check_against_native``
compares them with what the C compiler laid out, so a stale native build or
an edit on one side only fails loudly at import instead of corrupting memory.
"""
from __future__ import annotations

import numpy as np

from ..native import lib
from ._errors import LayoutError

LAYOUT_VERSION = 2

#: Record header (32 bytes, little-endian, 8-byte aligned in the ring).
RECORD_HEADER_FIELDS = (
    # name, numpy type, offset
    ("kind", "<u2", 0),
    ("flags", "<u2", 2),
    ("payload_len", "<u4", 4),
    ("source", "<u4", 8),
    ("destination", "<u4", 12),
    ("tick", "<u8", 16),
    ("seq", "<u4", 24),
    ("check", "<u4", 28),
)
RECORD_HEADER_BYTES = 32
RECORD_ALIGN = 8
RECORD_DTYPE = np.dtype(
    {
        "names": [f[0] for f in RECORD_HEADER_FIELDS],
        "formats": [f[1] for f in RECORD_HEADER_FIELDS],
        "offsets": [f[2] for f in RECORD_HEADER_FIELDS],
        "itemsize": RECORD_HEADER_BYTES,
    }
)
KIND_INVALID = 0
KIND_WRAP = 0xFFFF
#: Kinds a caller may use; 0 and 0xFFFF are reserved by the ring.
KIND_MIN, KIND_MAX = 1, 0xFFFE

#: Ring header (256 bytes = 4 cache lines). Line 0 is written once at
#: creation; line 1 only by the producer; line 2 only by the consumer; line 3
#: holds the sleeping flags, written only around a futex wait, so that the
#: peer's check of them on every publish/release reads no hot line.
RING_HEADER_FIELDS = (
    ("magic", "<u4", 0),
    ("version", "<u2", 4),
    ("header_bytes", "<u2", 6),
    ("capacity_bytes", "<u8", 8),
    ("max_record_bytes", "<u4", 16),
    ("record_align", "<u4", 20),
    ("record_header_bytes", "<u4", 24),
    ("ring_id", "<u4", 28),
    ("write_index", "<u8", 64),
    ("data_seq", "<u4", 72),
    ("records_pushed", "<u8", 80),
    ("read_index", "<u8", 128),
    ("space_seq", "<u4", 136),
    ("records_popped", "<u8", 144),
    ("producer_sleeping", "<u4", 192),
    ("consumer_sleeping", "<u4", 196),
)
RING_HEADER_BYTES = 256
RING_MAGIC = 0x47524557  # b"WERG" little-endian
RING_MIN_CAPACITY = 1024
RING_MAX_CAPACITY = 1 << 34

#: Segment header (256 bytes) followed by the rings, each 64-byte aligned.
SEGMENT_HEADER_FIELDS = (
    ("magic", "<u4", 0),
    ("version", "<u2", 4),
    ("header_bytes", "<u2", 6),
    ("segment_bytes", "<u8", 8),
    ("ring_count", "<u4", 16),
    ("creator_pid", "<u4", 20),
    ("ring_offsets", "<u8", 64),  # MAX_RINGS entries of u8 at 64..191
)
SEGMENT_HEADER_BYTES = 256
SEGMENT_MAGIC = 0x47534557  # b"WESG" little-endian
MAX_RINGS = 16
SEGMENT_PREFIX = "we_"


def field_offset(fields, name: str) -> int:
    for f in fields:
        if f[0] == name:
            return f[2]
    raise KeyError(name)


def _check_against_native() -> None:
    expected = {
        0: RECORD_HEADER_BYTES,
        1: field_offset(RECORD_HEADER_FIELDS, "kind"),
        2: field_offset(RECORD_HEADER_FIELDS, "flags"),
        3: field_offset(RECORD_HEADER_FIELDS, "payload_len"),
        4: field_offset(RECORD_HEADER_FIELDS, "source"),
        5: field_offset(RECORD_HEADER_FIELDS, "destination"),
        6: field_offset(RECORD_HEADER_FIELDS, "tick"),
        7: field_offset(RECORD_HEADER_FIELDS, "seq"),
        8: field_offset(RECORD_HEADER_FIELDS, "check"),
        9: RING_HEADER_BYTES,
        10: field_offset(RING_HEADER_FIELDS, "write_index"),
        11: field_offset(RING_HEADER_FIELDS, "read_index"),
        12: LAYOUT_VERSION,
        13: RING_MAGIC,
    }
    for key, want in expected.items():
        got = lib.we_layout_value(key)
        if got != want:
            raise LayoutError(
                f"native layout item {key} is {got}, Python declares {want}: "
                "the compiled extension is stale; reinstall with `pip install .`"
            )
    named = {
        "RECORD_HEADER_BYTES": RECORD_HEADER_BYTES,
        "RECORD_ALIGN": RECORD_ALIGN,
        "KIND_WRAP": KIND_WRAP,
        "RING_MIN_CAPACITY": RING_MIN_CAPACITY,
        "RING_MAX_CAPACITY": RING_MAX_CAPACITY,
    }
    for name, want in named.items():
        got = getattr(lib, "WE_" + name)
        if got != want:
            raise LayoutError(f"native WE_{name} is {got}, Python declares {want}")
    for fields, lib_prefix in ((RING_HEADER_FIELDS, "WE_RH_"),):
        for name, _t, off in fields:
            c_name = lib_prefix + {
                "header_bytes": "HEADER_BYTES",
                "capacity_bytes": "CAPACITY",
                "max_record_bytes": "MAX_RECORD",
                "record_header_bytes": "RECORD_HEADER",
            }.get(name, name.upper())
            if getattr(lib, c_name) != off:
                raise LayoutError(f"native {c_name} is {getattr(lib, c_name)}, Python declares {off}")
    # The numpy dtype must be exactly the C struct, byte for byte.
    if RECORD_DTYPE.itemsize != RECORD_HEADER_BYTES:
        raise LayoutError("record dtype size mismatch")
    for fields, size in (
        (RECORD_HEADER_FIELDS, RECORD_HEADER_BYTES),
        (RING_HEADER_FIELDS, RING_HEADER_BYTES),
        (SEGMENT_HEADER_FIELDS, SEGMENT_HEADER_BYTES),
    ):
        end = 0
        for _name, t, off in sorted(fields, key=lambda f: f[2]):
            if off < end or off % np.dtype(t).itemsize:
                raise LayoutError(f"field at {off} overlaps or is misaligned")
            end = off + np.dtype(t).itemsize
        if end > size:
            raise LayoutError("layout runs past its declared size")


_check_against_native()
