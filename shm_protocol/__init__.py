"""Layer: shm_protocol — the wire format and transport between processes.

Fixed-layout records in single-producer single-consumer rings inside
``multiprocessing.shared_memory`` segments (see docs/PROTOCOL.md). Knows
nothing of agents. May import only ``wasm_engine.native``.
"""
from ._errors import (
    InternalError as InternalError,
    LayoutError as LayoutError,
    OffsetError as OffsetError,
    ProtocolError as ProtocolError,
    RecordTooLargeError as RecordTooLargeError,
    RingClosedError as RingClosedError,
    RingCorruptError as RingCorruptError,
    RingFullError as RingFullError,
    SegmentError as SegmentError,
)
from ._layout import (
    KIND_MAX as KIND_MAX,
    KIND_MIN as KIND_MIN,
    LAYOUT_VERSION as LAYOUT_VERSION,
    RECORD_DTYPE as RECORD_DTYPE,
    RECORD_HEADER_BYTES as RECORD_HEADER_BYTES,
    RING_HEADER_BYTES as RING_HEADER_BYTES,
    SEGMENT_HEADER_BYTES as SEGMENT_HEADER_BYTES,
    SEGMENT_PREFIX as SEGMENT_PREFIX,
)
from ._records import Record as Record, RecordBatch as RecordBatch
from ._ring import (
    DEFAULT_SPIN_ITERS as DEFAULT_SPIN_ITERS,
    DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S,
    Channel as Channel,
    Ring as Ring,
    ServeStep as ServeStep,
    create_ring_segment as create_ring_segment,
)
from ._serve import serve_channel as serve_channel
from ._segment import (
    Segment as Segment,
    list_segments as list_segments,
    new_segment_name as new_segment_name,
    sweep_orphans as sweep_orphans,
)

__all__ = [
    "Channel", "DEFAULT_SPIN_ITERS", "DEFAULT_TIMEOUT_S", "InternalError", "KIND_MAX", "KIND_MIN",
    "LAYOUT_VERSION", "LayoutError", "OffsetError", "ProtocolError", "RECORD_DTYPE",
    "RECORD_HEADER_BYTES", "RING_HEADER_BYTES", "Record", "RecordBatch", "RecordTooLargeError",
    "Ring", "RingClosedError", "RingCorruptError", "RingFullError", "SEGMENT_HEADER_BYTES",
    "SEGMENT_PREFIX", "Segment", "SegmentError", "ServeStep", "create_ring_segment", "list_segments",
    "new_segment_name", "serve_channel", "sweep_orphans",
]
