"""Shared-memory segments: create, attach by name, close, unlink.

Layer: shm_protocol. A segment is one ``multiprocessing.shared_memory``
mapping that starts with a segment header and holds up to MAX_RINGS rings.

Ownership rule: the process that creates a segment is the only one that
unlinks it. Python 3.11's ``SharedMemory`` registers *every* attach with the
resource tracker, which then warns about "leaked" segments and unlinks them
when the attaching process exits — behind the owner's back. We therefore
attach without registering. The creator stays registered on purpose: if the
creator is SIGKILLed, the tracker is the janitor that unlinks its segments
once every process holding the tracker pipe is gone.
"""
from __future__ import annotations

import atexit
import os
import secrets
import sys
import threading
import weakref
from multiprocessing import resource_tracker, shared_memory

from ..native import ffi, lib
from ._errors import SegmentError, raise_for_word_status
from ._layout import (
    LAYOUT_VERSION,
    MAX_RINGS,
    SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
    SEGMENT_PREFIX,
)

#: Segments this process still has open, closed (and, if ours, unlinked) at
#: exit — before interpreter teardown, whose finalisation order would let
#: SharedMemory's own finaliser run first and fail on our buffer export.
_open_segments: "weakref.WeakSet[Segment]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for seg in list(_open_segments):
        try:
            seg.close()
            if seg.owner:
                seg.unlink()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


#: Largest segment we create; a limit on everything.
MAX_SEGMENT_BYTES = 1 << 36
_NAME_MAX = 200
_track_lock = threading.Lock()


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    # 3.11/3.12 look up `register` on the module at call time; swap it out
    # for the duration of this one attach.
    with _track_lock:
        original = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = original


def new_segment_name(tag: str = "") -> str:
    """A fresh name ``we_<pid>_<tag><random>``; the pid lets a sweeper find orphans."""
    safe = "".join(c for c in tag if c.isalnum())[:16]
    return f"{SEGMENT_PREFIX}{os.getpid()}_{safe}{secrets.token_hex(6)}"


class Segment:
    """One shared-memory mapping. Use :meth:`create` or :meth:`attach`."""

    __slots__ = ("name", "size_bytes", "owner", "_shm", "ptr", "_closed", "_unlinked", "__weakref__")

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.name: str = shm.name.lstrip("/")
        self.size_bytes: int = shm.size
        self.owner = owner
        # One buffer export for the segment's lifetime; released in close().
        self.ptr = ffi.from_buffer("uint8_t[]", shm.buf)
        self._closed = False
        self._unlinked = False
        _open_segments.add(self)

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def create(cls, size_bytes: int, *, name: str | None = None, ring_count: int = 0) -> "Segment":
        if not isinstance(size_bytes, int) or not SEGMENT_HEADER_BYTES <= size_bytes <= MAX_SEGMENT_BYTES:
            raise SegmentError(
                f"segment size must be an int in [{SEGMENT_HEADER_BYTES}, {MAX_SEGMENT_BYTES}], got {size_bytes!r}"
            )
        name = name or new_segment_name()
        if not name.startswith(SEGMENT_PREFIX) or len(name) > _NAME_MAX or "/" in name:
            raise SegmentError(f"segment name {name!r} must start with {SEGMENT_PREFIX!r}, no '/'")
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size_bytes)
        except FileExistsError:
            raise SegmentError(f"segment {name} already exists") from None
        seg = cls(shm, owner=True)
        try:
            seg._write_header(ring_count)
        except BaseException:
            seg.close()
            seg.unlink()
            raise
        return seg

    @classmethod
    def attach(cls, name: str) -> "Segment":
        if not isinstance(name, str) or not name.startswith(SEGMENT_PREFIX):
            raise SegmentError(f"segment name {name!r} does not start with {SEGMENT_PREFIX!r}")
        try:
            shm = _attach_untracked(name)
        except FileNotFoundError:
            raise SegmentError(f"segment {name} does not exist (its owner exited or never created it)") from None
        seg = cls(shm, owner=False)
        try:
            seg._check_header()
        except BaseException:
            seg.close()
            raise
        return seg

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap in this process. Idempotent. Rings of this segment stop working."""
        if self._closed:
            return
        self._closed = True
        ffi.release(self.ptr)
        self.ptr = ffi.NULL
        self._shm.close()

    def unlink(self) -> None:
        """Remove the name from /dev/shm. Only the creating process may do this."""
        if not self.owner:
            raise SegmentError(f"segment {self.name}: only the creating process unlinks it")
        if self._unlinked:
            return
        self._unlinked = True
        try:
            self._shm.unlink()  # also unregisters it from the resource tracker
        except FileNotFoundError:
            pass

    def __del__(self) -> None:
        # A segment dropped without close(): release our buffer export first
        # (else SharedMemory's own finaliser fails with BufferError), and the
        # owner unlinks, since nobody else will.
        try:
            if not self._closed:
                import warnings

                warnings.warn(f"segment {self.name} was not closed", ResourceWarning, stacklevel=1)
                self.close()
            if self.owner and not self._unlinked:
                self.unlink()
        except Exception:
            pass

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self.owner:
            self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Segment {self.name} {self.size_bytes} bytes {'owner' if self.owner else 'attached'} {state}>"

    # -- header ----------------------------------------------------------
    def _write_header(self, ring_count: int) -> None:
        if not 0 <= ring_count <= MAX_RINGS:
            raise SegmentError(f"ring_count must be in [0, {MAX_RINGS}]")
        buf = self._shm.buf
        buf[:SEGMENT_HEADER_BYTES] = bytes(SEGMENT_HEADER_BYTES)
        buf[4:6] = LAYOUT_VERSION.to_bytes(2, "little")
        buf[6:8] = SEGMENT_HEADER_BYTES.to_bytes(2, "little")
        buf[8:16] = self.size_bytes.to_bytes(8, "little")
        buf[16:20] = ring_count.to_bytes(4, "little")
        buf[20:24] = (os.getpid() & 0xFFFFFFFF).to_bytes(4, "little")
        self.store_u32(0, SEGMENT_MAGIC)  # last, with release semantics

    def _check_header(self) -> None:
        if self.size_bytes < SEGMENT_HEADER_BYTES:
            raise SegmentError(f"segment {self.name} is {self.size_bytes} bytes, smaller than its header")
        magic = self.load_u32(0)
        if magic != SEGMENT_MAGIC:
            raise SegmentError(f"segment {self.name}: bad magic {magic:#x} at offset 0 (not a wasm-engine segment)")
        buf = self._shm.buf
        version = int.from_bytes(buf[4:6], "little")
        if version != LAYOUT_VERSION:
            raise SegmentError(f"segment {self.name}: layout version {version} at offset 4, expected {LAYOUT_VERSION}")
        declared = int.from_bytes(buf[8:16], "little")
        if declared > self.size_bytes:
            raise SegmentError(f"segment {self.name}: declares {declared} bytes at offset 8, mapping has {self.size_bytes}")

    def ring_offset(self, index: int) -> int:
        if not 0 <= index < MAX_RINGS:
            raise SegmentError(f"ring index {index} out of range")
        return self.load_u64(64 + 8 * index)

    def set_ring_offset(self, index: int, offset: int) -> None:
        self.store_u64(64 + 8 * index, offset)

    @property
    def ring_count(self) -> int:
        return self.load_u32(16)

    # -- atomics (checked offsets; never crash on a bad one) --------------
    def _live(self):
        if self._closed:
            from ._errors import RingClosedError

            raise RingClosedError(f"segment {self.name} is closed")
        return self.ptr

    def load_u32(self, offset: int) -> int:
        out = ffi.new("uint32_t *")
        rc = lib.we_load_u32(self._live(), self.size_bytes, offset, out)
        if rc:
            raise_for_word_status(rc, self.name, offset, 4)
        return out[0]

    def load_u64(self, offset: int) -> int:
        out = ffi.new("uint64_t *")
        rc = lib.we_load_u64(self._live(), self.size_bytes, offset, out)
        if rc:
            raise_for_word_status(rc, self.name, offset, 8)
        return out[0]

    def store_u32(self, offset: int, value: int) -> None:
        rc = lib.we_store_u32(self._live(), self.size_bytes, offset, value)
        if rc:
            raise_for_word_status(rc, self.name, offset, 4)

    def store_u64(self, offset: int, value: int) -> None:
        rc = lib.we_store_u64(self._live(), self.size_bytes, offset, value)
        if rc:
            raise_for_word_status(rc, self.name, offset, 8)

    def compare_and_swap_u32(self, offset: int, expected: int, desired: int) -> tuple[bool, int]:
        actual = ffi.new("uint32_t *")
        rc = lib.we_cas_u32(self._live(), self.size_bytes, offset, expected, desired, actual)
        if rc < 0:
            raise_for_word_status(rc, self.name, offset, 4)
        return bool(rc), actual[0]

    def compare_and_swap_u64(self, offset: int, expected: int, desired: int) -> tuple[bool, int]:
        actual = ffi.new("uint64_t *")
        rc = lib.we_cas_u64(self._live(), self.size_bytes, offset, expected, desired, actual)
        if rc < 0:
            raise_for_word_status(rc, self.name, offset, 8)
        return bool(rc), actual[0]

    def fetch_add_u32(self, offset: int, delta: int) -> int:
        old = ffi.new("uint32_t *")
        rc = lib.we_fetch_add_u32(self._live(), self.size_bytes, offset, delta & 0xFFFFFFFF, old)
        if rc:
            raise_for_word_status(rc, self.name, offset, 4)
        return old[0]

    def fetch_add_u64(self, offset: int, delta: int) -> int:
        old = ffi.new("uint64_t *")
        rc = lib.we_fetch_add_u64(self._live(), self.size_bytes, offset, delta & 0xFFFFFFFFFFFFFFFF, old)
        if rc:
            raise_for_word_status(rc, self.name, offset, 8)
        return old[0]

    def wait_u32(self, offset: int, expected: int, timeout_s: float | None, spin_iters: int = 1000) -> bool:
        """Wait while the word equals ``expected``: True if it changed, False on timeout."""
        rc = lib.we_wait_u32(self._live(), self.size_bytes, offset, expected, _timeout_ns(timeout_s), spin_iters)
        if rc < 0:
            raise_for_word_status(rc, self.name, offset, 4)
        return rc == lib.WE_OK

    def wake_u32(self, offset: int, count: int = 2**31 - 1) -> int:
        rc = lib.we_wake_u32(self._live(), self.size_bytes, offset, count)
        if rc < 0:
            raise_for_word_status(rc, self.name, offset, 4)
        return rc


#: Longest single wait we hand to the kernel; a limit on every wait.
MAX_TIMEOUT_S = 24 * 3600.0


def _timeout_ns(timeout_s: float | None) -> int:
    if timeout_s is None:
        return -1
    if timeout_s != timeout_s or timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    return int(min(timeout_s, MAX_TIMEOUT_S) * 1e9)


def list_segments() -> list[str]:
    """Names of wasm-engine segments present in /dev/shm (Linux)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX))
    except FileNotFoundError:
        return []


def sweep_orphans() -> list[str]:
    """Unlink segments whose creating pid (in the name) no longer runs.

    For the rare case where the creator *and* the resource tracker were both
    killed. Returns the names removed.
    """
    removed = []
    for name in list_segments():
        parts = name[len(SEGMENT_PREFIX):].split("_", 1)
        if not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # creator alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
