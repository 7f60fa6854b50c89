"""The replay log container: an append-only, self-describing binary file.

This module knows the *container* only: a checksummed header (a JSON object
plus opaque module blobs) followed by one frame per tick, each frame holding
opaque, numbered sections.  What goes into the header and the sections is
decided by the caller.  The byte layout, the fsync policy and the rules for
truncated files are specified in docs/REPLAY_LOG.md; keep the two in step.

Summary (all integers little-endian, every structure padded with zeros to a
multiple of 8 bytes so that sections stay 8-aligned in a memory map):

    file    = header-region frame*
    header-region = fixed-header(64) json pad8 (u64 len, blob, pad8)* blake2b-16
    frame   = frame-header(32) (section-header(16) data pad8)* crc32-as-u64

Both fixed-size headers carry a CRC-32 of themselves.  That lets a reader
trust a length field *before* the data it describes is complete, which is
what separates "the writer crashed in the middle of this frame" (truncated,
fine) from "this length field is corrupt" (error).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from ._errors import ReplayLogError

__all__ = [
    "LogWriter",
    "LogReader",
    "MAGIC",
    "FRAME_MAGIC",
    "FORMAT_VERSION",
    "MAX_FRAME_BYTES",
    "MAX_SECTIONS",
]

MAGIC = b"WELOG\x00\x01\x00"
FORMAT_VERSION = 1
FRAME_MAGIC = b"WEFR"

# struct layouts; sizes are asserted below because the offsets are documented.
_FIXED = struct.Struct("<8sIIQIIQ20sI")  # magic, version, flags, json_len, n_modules,
#                                          reserved, header_size, reserved[20], crc32
_FRAME = struct.Struct("<4sIQQII")  # magic, flags, frame_len, tick, n_sections, crc32
_SECTION = struct.Struct("<IIQ")  # section_id, flags, length
_U64 = struct.Struct("<Q")
FIXED_HEADER_SIZE = _FIXED.size
FRAME_HEADER_SIZE = _FRAME.size
SECTION_HEADER_SIZE = _SECTION.size
DIGEST_SIZE = 16  # blake2b digest closing the header region
FRAME_TRAILER_SIZE = 8  # CRC-32 of the frame, zero-extended to a u64
assert (FIXED_HEADER_SIZE, FRAME_HEADER_SIZE, SECTION_HEADER_SIZE) == (64, 32, 16)
_FIXED_CRC_AT = FIXED_HEADER_SIZE - 4
_FRAME_CRC_AT = FRAME_HEADER_SIZE - 4
_MIN_FRAME = FRAME_HEADER_SIZE + FRAME_TRAILER_SIZE

# Hard limits.  A reader rejects anything larger before allocating or hashing
# it, so a hostile or corrupt length cannot make it use absurd memory/time.
MAX_HEADER_JSON_BYTES = 256 * 1024**2
MAX_MODULES = 65536
MAX_MODULE_BYTES = 1024**3
MAX_HEADER_REGION_BYTES = 64 * 1024**3
MAX_FRAME_BYTES = 1024**3
MAX_SECTIONS = 65536
_MAX_U32 = 2**32 - 1

# The header region is small and written once: it gets a strong hash.  Frames
# are the bulk of a log (often >1 GB) and are verified on every read, so they
# get CRC-32, which is 3-4x faster than blake2b in CPython and more than good
# enough to detect corruption (neither would stop a deliberate forger).
_HEADER_PERSON = b"welog-header-v1"


def _pad8(n: int) -> int:
    return (n + 7) & ~7


_ZEROS = bytes(8)


def _digest(person: bytes, *parts: Any) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=person)
    for p in parts:
        h.update(p)
    return h.digest()


def _byte_view(obj: Any, what: str) -> memoryview:
    """A flat, C-contiguous view of the bytes of `obj` (bytes, memoryview, numpy array...)."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what}: expected a bytes-like object, got {type(obj).__name__}") from None
    if mv.c_contiguous:
        try:
            return mv.cast("B")
        except (TypeError, ValueError, NotImplementedError):
            pass
    # Non-contiguous (e.g. a strided numpy slice) or an exotic format: copy in
    # C order.  The log stores raw bytes; dtype and shape are the caller's.
    return memoryview(bytes(mv))


# ==========================================================================
# Writer
# ==========================================================================


class LogWriter:
    """Writes a replay log: the header at construction, then one frame per tick.

    Durability policy: every tick is flushed to the OS (so a crash of *this
    process* loses nothing already appended); it is fsynced every
    `fsync_every_ticks` ticks and at `close()` (0 = only at close), which
    bounds what a crash of the *machine* can lose.  A crash in the middle of
    a frame leaves a file that `LogReader` reads up to the last complete tick.

    An existing file at `path` is replaced.  The parent directory must exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: Mapping[str, Any],
        modules: list[Any],
        fsync_every_ticks: int = 100,
    ):
        if isinstance(fsync_every_ticks, bool) or not isinstance(fsync_every_ticks, int) or fsync_every_ticks < 0:
            raise ValueError(f"fsync_every_ticks must be an integer >= 0, got {fsync_every_ticks!r}")
        if not isinstance(header, Mapping):
            raise TypeError(f"header must be a dict, got {type(header).__name__}")
        self.path = Path(path)
        self.fsync_every_ticks = fsync_every_ticks
        self._next_tick = 0
        self._failed = False
        self._dir_synced = False

        # sort_keys: the same header dict always gives the same bytes, so two
        # identical runs give byte-identical logs.
        try:
            js = json.dumps(dict(header), sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise TypeError(f"header is not JSON-serialisable: {e}") from None
        if len(js) > MAX_HEADER_JSON_BYTES:
            raise ValueError(f"header JSON is {len(js)} bytes, limit {MAX_HEADER_JSON_BYTES}")
        blobs = [_byte_view(m, f"modules[{i}]") for i, m in enumerate(modules)]
        if len(blobs) > MAX_MODULES:
            raise ValueError(f"{len(blobs)} modules, limit {MAX_MODULES}")
        for i, b in enumerate(blobs):
            if b.nbytes > MAX_MODULE_BYTES:
                raise ValueError(f"modules[{i}] is {b.nbytes} bytes, limit {MAX_MODULE_BYTES}")

        size = FIXED_HEADER_SIZE + _pad8(len(js)) + sum(8 + _pad8(b.nbytes) for b in blobs) + DIGEST_SIZE
        if size > MAX_HEADER_REGION_BYTES:
            raise ValueError(f"header region would be {size} bytes, limit {MAX_HEADER_REGION_BYTES}")
        fixed = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, 0, len(js), len(blobs), 0, size, bytes(20), 0))
        struct.pack_into("<I", fixed, _FIXED_CRC_AT, zlib.crc32(fixed[:_FIXED_CRC_AT]))
        pieces: list[Any] = [fixed, js, _ZEROS[: _pad8(len(js)) - len(js)]]
        for b in blobs:
            pieces += [_U64.pack(b.nbytes), b, _ZEROS[: _pad8(b.nbytes) - b.nbytes]]
        pieces.append(_digest(_HEADER_PERSON, *pieces))

        self._f = open(self.path, "wb")
        try:
            for p in pieces:
                self._f.write(p)
            self._f.flush()
        except BaseException:
            self._f.close()
            self._f = None
            raise

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        # Also on an exception: what was appended stays a valid (shorter) log.
        self.close()

    @property
    def next_tick(self) -> int:
        """The tick number `append_tick` expects next (= ticks written so far)."""
        return self._next_tick

    @property
    def closed(self) -> bool:
        return self._f is None

    def append_tick(self, tick: int, sections: Mapping[int, Any]) -> None:
        """Append the frame of `tick`; ticks must be 0, 1, 2, ... in order.

        `sections` maps section ids (0..2**32-1) to bytes-like values (bytes,
        bytearray, memoryview, numpy arrays: their raw buffer is stored).
        Sections are stored in id order, so the dict's order does not matter.
        """
        if self._f is None:
            raise ValueError("LogWriter is closed")
        if self._failed:
            # The file may end in a partial frame; appending after it would
            # make the log unreadable past that point.
            raise ValueError("an earlier write to this log failed; no more ticks can be appended")
        if isinstance(tick, bool) or not isinstance(tick, int) or tick != self._next_tick:
            raise ValueError(f"ticks must be appended in order: expected tick {self._next_tick}, got {tick!r}")
        if len(sections) > MAX_SECTIONS:
            raise ValueError(f"{len(sections)} sections, limit {MAX_SECTIONS}")

        items = []
        for sid, data in sections.items():
            if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid <= _MAX_U32:
                raise ValueError(f"section id must be an integer in 0..{_MAX_U32}, got {sid!r}")
            items.append((sid, _byte_view(data, f"section {sid}")))
        items.sort(key=lambda kv: kv[0])

        length = FRAME_HEADER_SIZE + FRAME_TRAILER_SIZE + sum(SECTION_HEADER_SIZE + _pad8(v.nbytes) for _, v in items)
        if length > MAX_FRAME_BYTES:
            raise ValueError(f"frame of tick {tick} would be {length} bytes, limit {MAX_FRAME_BYTES}")
        head = bytearray(_FRAME.pack(FRAME_MAGIC, 0, length, tick, len(items), 0))
        struct.pack_into("<I", head, _FRAME_CRC_AT, zlib.crc32(head[:_FRAME_CRC_AT]))
        pieces: list[Any] = [head]
        for sid, v in items:
            pieces += [_SECTION.pack(sid, 0, v.nbytes), v, _ZEROS[: _pad8(v.nbytes) - v.nbytes]]
        crc = 0
        for p in pieces:
            crc = zlib.crc32(p, crc)
        pieces.append(_U64.pack(crc))

        try:
            # Large pieces bypass the buffer, small ones are coalesced; the
            # flush hands the whole frame to the OS before we return.
            for p in pieces:
                self._f.write(p)
            self._f.flush()
        except BaseException:
            self._failed = True
            raise
        self._next_tick += 1
        if self.fsync_every_ticks and self._next_tick % self.fsync_every_ticks == 0:
            self._fsync()

    def _fsync(self) -> None:
        os.fsync(self._f.fileno())
        if not self._dir_synced:
            # Make the file's directory entry durable too (once: it does not
            # change afterwards), otherwise a crash could lose the whole file
            # even though its data was synced.
            self._dir_synced = True
            _fsync_dir(self.path.parent)

    def close(self) -> None:
        """Flush, fsync and close.  Safe to call more than once."""
        f = self._f
        if f is None:
            return
        try:
            if not self._failed:
                f.flush()
                self._fsync()
        finally:
            self._f = None
            f.close()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # best effort: not possible on every platform/filesystem
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ==========================================================================
# Reader
# ==========================================================================


class LogReader:
    """Reads a replay log through a read-only memory map.

    The file is taken as it is when the reader is opened (a log still being
    written is read up to that point).  The header is checked at once; frames
    are indexed lazily (only their 32-byte headers are visited) and their
    checksum is verified when they are read.

    A file that ends early (a crash while writing) is not an error: it reads
    up to its last complete tick and `truncated` is True.  If it even ends
    inside the header region, `header` is None and there are no ticks.
    Everything else that is wrong raises `ReplayLogError` with the path and
    the byte offset of the offending header or frame.

    Sections come back as read-only memoryviews into the map (no copy); they
    stay valid after `close()` for as long as you hold them.  ``verify=False``
    skips the per-frame CRC over the data (structure and header CRCs are still
    checked), for trusted logs where reading speed matters.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True):
        self.path = Path(path)
        self._verify = verify
        self.header: dict[str, Any] | None = None
        self.modules: list[bytes] = []
        self._mm: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as f:
                self._size = os.fstat(f.fileno()).st_size
                if self._size:  # mmap refuses empty files
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ReplayLogError(self.path, 0, f"cannot open: {e.strerror or e}") from e
        self._buf = memoryview(self._mm) if self._mm is not None else memoryview(b"")
        self._offsets: list[int] = []  # _offsets[t] = file offset of the frame of tick t
        self._scan_done = False
        self._truncated = False
        try:
            self._scan_off = self._read_header()
        except BaseException:
            self.close()
            raise
        # Size of the header region = offset of the first frame (None if the
        # file ends inside the header region).
        self.header_size: int | None = self._scan_off
        if self._scan_off is None:
            self._scan_done = True
            self._truncated = True

    # -- context manager / lifetime -----------------------------------------

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._buf.release()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                # The caller still holds section views; the map is unmapped
                # when the last of them goes away.
                pass
            self._mm = None

    def _err(self, offset: int, msg: str) -> ReplayLogError:
        return ReplayLogError(self.path, offset, msg)

    # -- header --------------------------------------------------------------

    def _read_header(self) -> int | None:
        """Parse and verify the header region; the offset of the first frame,
        or None if the file ends inside the header region."""
        buf, size = self._buf, self._size
        if size < FIXED_HEADER_SIZE:
            # Only a prefix of the fixed header: it can only be told apart
            # from some other file by the bytes that are there.
            n = min(size, len(MAGIC))
            if bytes(buf[:n]) != MAGIC[:n]:
                raise self._err(0, "not a replay log (bad magic)")
            if size >= 12 and struct.unpack_from("<I", buf, 8)[0] != FORMAT_VERSION:
                raise self._err(8, f"unsupported format version {struct.unpack_from('<I', buf, 8)[0]} "
                                   f"(this reader supports {FORMAT_VERSION})")
            return None
        magic, version, flags, json_len, n_mod, res1, hsize, res2, crc = _FIXED.unpack_from(buf, 0)
        if magic != MAGIC:
            raise self._err(0, f"not a replay log (bad magic {magic!r})")
        # Version before CRC: a later version may lay the fixed header out
        # differently, and "unsupported version" is the useful message then.
        if version != FORMAT_VERSION:
            raise self._err(8, f"unsupported format version {version} (this reader supports {FORMAT_VERSION})")
        if zlib.crc32(buf[:_FIXED_CRC_AT]) != crc:
            raise self._err(0, "file header checksum (CRC-32) mismatch")
        if flags:
            raise self._err(12, f"unknown header flags 0x{flags:x}")
        if res1 or any(res2):
            raise self._err(28, "reserved header bytes are not zero")
        if json_len > MAX_HEADER_JSON_BYTES:
            raise self._err(16, f"header JSON length {json_len} exceeds the limit {MAX_HEADER_JSON_BYTES}")
        if n_mod > MAX_MODULES:
            raise self._err(24, f"module count {n_mod} exceeds the limit {MAX_MODULES}")
        least = FIXED_HEADER_SIZE + _pad8(json_len) + 8 * n_mod + DIGEST_SIZE
        if hsize < least or hsize % 8 or hsize > MAX_HEADER_REGION_BYTES:
            raise self._err(32, f"header region size {hsize} is impossible (json {json_len} bytes, {n_mod} modules)")
        if hsize > size:
            return None  # crash while the header was being written
        body = hsize - DIGEST_SIZE
        if _digest(_HEADER_PERSON, buf[:body]) != buf[body:hsize]:
            raise self._err(0, f"header region checksum mismatch (bytes 0..{hsize})")

        # The checksum matched, so what follows only fails for a buggy writer;
        # it is still checked so that nothing is ever read out of bounds.
        off = FIXED_HEADER_SIZE
        js = bytes(buf[off:off + json_len])
        off += _pad8(json_len)
        modules = []
        for i in range(n_mod):
            if off + 8 > body:
                raise self._err(off, f"module {i} length runs past the header region")
            (n,) = _U64.unpack_from(buf, off)
            if n > MAX_MODULE_BYTES or n > body - off - 8:
                raise self._err(off, f"module {i} length {n} runs past the header region")
            modules.append(bytes(buf[off + 8:off + 8 + n]))
            off += 8 + _pad8(n)
        if off != body:
            raise self._err(off, f"{body - off} unexpected bytes at the end of the header region")
        try:
            header = json.loads(js.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self._err(FIXED_HEADER_SIZE, f"header JSON is invalid: {e}") from None
        if not isinstance(header, dict):
            raise self._err(FIXED_HEADER_SIZE, "header JSON is not an object")
        self.header = header
        self.modules = modules
        return hsize

    # -- frame index -----------------------------------------------------------

    def _tail_is_torn(self, off: int) -> bool:
        """Whether the bytes from `off` to EOF look like an interrupted write:
        a prefix of a frame header, or all zeros (some filesystems extend a
        file before its data reaches the disk, and a crash then leaves zeros)."""
        n = self._size - off
        if n < len(FRAME_MAGIC) and bytes(self._buf[off:]) == FRAME_MAGIC[:n]:
            return True
        if n < FRAME_HEADER_SIZE and bytes(self._buf[off:off + len(FRAME_MAGIC)]) == FRAME_MAGIC:
            return True
        step = 1 << 20
        for a in range(off, self._size, step):
            chunk = self._buf[a:min(a + step, self._size)]
            if bytes(chunk).count(0) != len(chunk):
                return False
        return True

    def _scan_next(self) -> bool:
        """Index one more frame; False (and the scan is over) at the end of the file."""
        off = self._scan_off
        rem = self._size - off
        tick = len(self._offsets)
        if rem == 0:
            self._scan_done = True
            return False
        if rem < FRAME_HEADER_SIZE or bytes(self._buf[off:off + 4]) != FRAME_MAGIC:
            if self._tail_is_torn(off):
                self._scan_done = self._truncated = True
                return False
            raise self._err(off, f"bad frame magic where the frame of tick {tick} should start")
        _, flags, length, ftick, n_sec, crc = _FRAME.unpack_from(self._buf, off)
        # The frame header has its own CRC, so a length that runs past the end
        # of the file can be trusted to mean "incomplete frame" rather than
        # "corrupt length".
        if zlib.crc32(self._buf[off:off + _FRAME_CRC_AT]) != crc:
            raise self._err(off, f"frame header checksum (CRC-32) mismatch (tick {tick})")
        if flags:
            raise self._err(off, f"unknown frame flags 0x{flags:x} (tick {tick})")
        if length < _MIN_FRAME or length % 8 or length > MAX_FRAME_BYTES:
            raise self._err(off, f"impossible frame length {length} (tick {tick})")
        if ftick != tick:
            raise self._err(off, f"frame is for tick {ftick} but tick {tick} was expected")
        if n_sec > MAX_SECTIONS or n_sec * SECTION_HEADER_SIZE > length - _MIN_FRAME:
            raise self._err(off, f"impossible section count {n_sec} for a frame of {length} bytes (tick {tick})")
        if length > rem:
            self._scan_done = self._truncated = True
            return False
        self._offsets.append(off)
        self._scan_off = off + length
        return True

    def _check_open(self) -> None:
        if self._mm is None and self._size:
            raise ValueError("LogReader is closed")

    def _scan_all(self) -> None:
        self._check_open()
        while not self._scan_done and self._scan_next():
            pass

    def _have(self, tick: int) -> bool:
        self._check_open()
        while len(self._offsets) <= tick:
            if self._scan_done or not self._scan_next():
                return False
        return True

    # -- public reading API ----------------------------------------------------

    @property
    def truncated(self) -> bool:
        """True if the file ends with an incomplete frame (or header)."""
        self._scan_all()
        return self._truncated

    @property
    def tick_count(self) -> int:
        """Number of complete frames (ticks 0 .. tick_count-1)."""
        self._scan_all()
        return len(self._offsets)

    @property
    def last_complete_tick(self) -> int | None:
        """The last tick whose frame is complete, None if there is none.

        "Complete" means all its bytes are present; its checksum is verified
        when it is read.
        """
        n = self.tick_count
        return n - 1 if n else None

    def frame_offset(self, tick: int) -> int:
        """File offset of the frame of `tick` (IndexError if not in the log)."""
        if tick < 0 or not self._have(tick):
            raise IndexError(f"tick {tick} is not in the log ({len(self._offsets)} complete ticks)")
        return self._offsets[tick]

    def read_tick(self, tick: int) -> dict[int, memoryview]:
        """The sections of `tick`, by id in ascending order."""
        return self._decode(tick, self.frame_offset(tick))

    def ticks(self, start: int = 0) -> Iterator[tuple[int, dict[int, memoryview]]]:
        """Yield ``(tick, sections)`` for every complete tick from `start` on.

        Stops quietly at the end of a truncated log; raises ReplayLogError on
        reaching a corrupt frame (after yielding the ticks before it).
        """
        t = start
        while self._have(t):
            yield t, self._decode(t, self._offsets[t])
            t += 1

    def _decode(self, tick: int, off: int) -> dict[int, memoryview]:
        buf = self._buf
        _, _, length, _, n_sec, _ = _FRAME.unpack_from(buf, off)
        body = off + length - FRAME_TRAILER_SIZE
        if self._verify and zlib.crc32(buf[off:body]) != _U64.unpack_from(buf, body)[0]:
            raise self._err(off, f"frame checksum mismatch (tick {tick})")
        sections: dict[int, memoryview] = {}
        p = off + FRAME_HEADER_SIZE
        prev = -1
        for _ in range(n_sec):
            if p + SECTION_HEADER_SIZE > body:
                raise self._err(off, f"section header at {p} runs past the end of the frame (tick {tick})")
            sid, sflags, n = _SECTION.unpack_from(buf, p)
            if sflags:
                raise self._err(off, f"unknown section flags 0x{sflags:x} at {p} (tick {tick})")
            if sid <= prev:
                raise self._err(off, f"section ids not in ascending order at {p} (tick {tick})")
            data = p + SECTION_HEADER_SIZE
            if n > body - data:
                raise self._err(off, f"section {sid} at {p} runs past the end of the frame (tick {tick})")
            sections[sid] = buf[data:data + n]
            prev = sid
            # Frames start 8-aligned and `body` is 8-aligned, so the padded
            # end cannot pass `body` once the data itself fits.
            p = data + _pad8(n)
        if p != body:
            raise self._err(off, f"{body - p} unexpected bytes after the last section (tick {tick})")
        return sections
