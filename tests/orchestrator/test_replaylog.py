"""Tests for the replay log container (orchestrator/_replaylog.py)."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wasm_engine.orchestrator._errors import ReplayLogError, WasmEngineError
from wasm_engine.orchestrator._replaylog import (
    FORMAT_VERSION,
    FRAME_MAGIC,
    MAGIC,
    MAX_FRAME_BYTES,
    LogReader,
    LogWriter,
)

HEADER = {"scenario": "[run]\nticks = 3\n", "seed": 42, "abi": 1, "module_hashes": ["ab" * 32], "ü": [1.5, None, True]}
MODULES = [b"\0asm\x01\0\0\0", b"", b"x" * 13]
TICKS = [
    {1: b"alpha", 2: b""},
    {},
    {7: b"\x00" * 17, 0: b"z", 2**32 - 1: b"last id"},
    {3: bytes(range(256))},
]


def write_log(path: Path, ticks=TICKS, header=HEADER, modules=MODULES, fsync_every_ticks=0) -> None:
    with LogWriter(path, header, modules, fsync_every_ticks) as w:
        for t, sections in enumerate(ticks):
            w.append_tick(t, sections)


def as_bytes(sections: dict) -> dict:
    return {k: bytes(v) for k, v in sections.items()}


def read_all(path: Path) -> list[dict]:
    with LogReader(path) as r:
        return [as_bytes(s) for _, s in r.ticks()]


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    p = tmp_path / "small.welog"
    write_log(p)
    return p


def frame_bounds(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(header size, [(start, end) of every frame]), parsed independently of
    the reader from the documented layout."""
    data = path.read_bytes()
    hsize = struct.unpack_from("<Q", data, 32)[0]
    bounds = []
    off = hsize
    while off < len(data):
        length = struct.unpack_from("<Q", data, off + 8)[0]
        bounds.append((off, off + length))
        off += length
    assert off == len(data)
    return hsize, bounds


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def test_roundtrip_small(small_log: Path) -> None:
    with LogReader(small_log) as r:
        assert r.header == HEADER
        assert r.modules == MODULES
        assert r.truncated is False
        assert r.last_complete_tick == 3 and r.tick_count == 4
        got = list(r.ticks())
        assert [t for t, _ in got] == [0, 1, 2, 3]
        for (_, s), want in zip(got, TICKS):
            # Sections come back in ascending id order, whatever the dict order was.
            assert list(s) == sorted(want)
            assert as_bytes(s) == want
            assert all(isinstance(v, memoryview) and v.readonly for v in s.values())
        assert as_bytes(r.read_tick(2)) == TICKS[2]
        assert as_bytes(r.read_tick(0)) == TICKS[0]
        assert [t for t, _ in r.ticks(start=2)] == [2, 3]
        with pytest.raises(IndexError):
            r.read_tick(4)
        with pytest.raises(IndexError):
            r.read_tick(-1)


def test_layout_is_as_documented(small_log: Path) -> None:
    data = small_log.read_bytes()
    assert data[:8] == MAGIC == b"WELOG\x00\x01\x00"
    assert struct.unpack_from("<II", data, 8) == (FORMAT_VERSION, 0)
    assert struct.unpack_from("<I", data, 24)[0] == len(MODULES)
    assert struct.unpack_from("<I", data, 60)[0] == zlib.crc32(data[:60])
    hsize, bounds = frame_bounds(small_log)
    assert hsize % 8 == 0 and len(bounds) == len(TICKS)
    for tick, (a, b) in enumerate(bounds):
        assert data[a:a + 4] == FRAME_MAGIC
        assert (b - a) % 8 == 0
        assert struct.unpack_from("<Q", data, a + 16)[0] == tick
        assert struct.unpack_from("<Q", data, b - 8)[0] == zlib.crc32(data[a:b - 8])


def test_empty_log(tmp_path: Path) -> None:
    p = tmp_path / "empty.welog"
    write_log(p, ticks=[], header={}, modules=[])
    with LogReader(p) as r:
        assert r.header == {} and r.modules == []
        assert r.truncated is False
        assert r.last_complete_tick is None and r.tick_count == 0
        assert list(r.ticks()) == []


section_maps = st.dictionaries(st.integers(0, 2**32 - 1), st.binary(max_size=300), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(
    ticks=st.lists(section_maps, max_size=12),
    header=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    modules=st.lists(st.binary(max_size=100), max_size=4),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_roundtrip_property(ticks: list[dict], header: dict, modules: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "log.welog"
        write_log(p, ticks=ticks, header=header, modules=modules)
        with LogReader(p) as r:
            assert r.header == header and r.modules == modules
            assert r.truncated is False
            assert r.tick_count == len(ticks)
            assert [as_bytes(s) for _, s in r.ticks()] == ticks
            if ticks:
                t = len(ticks) // 2
                assert as_bytes(r.read_tick(t)) == ticks[t]


def test_numpy_and_buffer_sections(tmp_path: Path) -> None:
    grid = np.arange(24, dtype=np.float64).reshape(4, 6)
    strided = grid[:, ::2]  # not contiguous: stored in C order
    sections = {
        0: grid,
        1: strided,
        2: np.array([1, -2, 3], dtype="<i4"),
        3: bytearray(b"ba"),
        4: memoryview(b"0123456789")[2:5],
        5: np.zeros(0, dtype=np.uint8),
    }
    p = tmp_path / "np.welog"
    write_log(p, ticks=[sections])
    with LogReader(p) as r:
        s = r.read_tick(0)
        assert np.array_equal(np.frombuffer(s[0], dtype=np.float64).reshape(4, 6), grid)
        assert np.array_equal(np.frombuffer(s[1], dtype=np.float64).reshape(4, 3), strided)
        assert bytes(s[2]) == struct.pack("<3i", 1, -2, 3)
        assert (bytes(s[3]), bytes(s[4]), bytes(s[5])) == (b"ba", b"234", b"")
        # Sections are 8-aligned in the file, so numpy can view them in place.
        assert (r.frame_offset(0) + 32 + 16) % 8 == 0


def test_identical_input_gives_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.welog", tmp_path / "b.welog"
    write_log(a, header={"x": 1, "y": [2]}, ticks=[{1: b"1", 2: b"2"}])
    write_log(b, header={"y": [2], "x": 1}, ticks=[{2: b"2", 1: b"1"}])
    assert a.read_bytes() == b.read_bytes()


def test_sections_outlive_reader(small_log: Path) -> None:
    r = LogReader(small_log)
    s = r.read_tick(3)
    r.close()
    r.close()  # idempotent
    assert bytes(s[3]) == bytes(range(256))
    with pytest.raises(ValueError):
        r.read_tick(0)


# ---------------------------------------------------------------------------
# Writer argument checks
# ---------------------------------------------------------------------------


def test_ticks_must_be_consecutive_from_zero(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "t.welog", {}, [], 0) as w:
        with pytest.raises(ValueError, match="expected tick 0"):
            w.append_tick(1, {})
        w.append_tick(0, {})
        for bad in (0, 2, -1, True, 1.0):
            with pytest.raises(ValueError, match="expected tick 1"):
                w.append_tick(bad, {})
        w.append_tick(1, {})
        assert w.next_tick == 2
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.append_tick(2, {})
    assert LogReader(tmp_path / "t.welog").tick_count == 2


@pytest.mark.parametrize(
    "sections, exc",
    [({-1: b""}, ValueError), ({2**32: b""}, ValueError), ({"a": b""}, ValueError),
     ({True: b""}, ValueError), ({1: "text"}, TypeError), ({1: 5}, TypeError)],
)
def test_bad_sections(tmp_path: Path, sections: dict, exc: type) -> None:
    with LogWriter(tmp_path / "t.welog", {}, [], 0) as w:
        with pytest.raises(exc):
            w.append_tick(0, sections)
        w.append_tick(0, {1: b"ok"})  # nothing was written by the failed call
    assert read_all(tmp_path / "t.welog") == [{1: b"ok"}]


def test_bad_writer_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogWriter(tmp_path / "a", {}, [], -1)
    with pytest.raises(TypeError):
        LogWriter(tmp_path / "b", {"x": object()}, [], 0)
    with pytest.raises(TypeError):
        LogWriter(tmp_path / "c", {}, ["not bytes"], 0)


def test_failed_write_poisons_writer(tmp_path: Path) -> None:
    p = tmp_path / "f.welog"
    w = LogWriter(p, {}, [], 0)
    w.append_tick(0, {1: b"fine"})

    class Broken:
        """Stands in for the file: the disk fills up in the middle of a frame."""

        def __init__(self, f):
            self.f = f

        def write(self, b):
            self.f.write(memoryview(b)[:3])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    real = w._f
    w._f = Broken(real)
    with pytest.raises(OSError):
        w.append_tick(1, {1: b"lost"})
    w._f = real
    with pytest.raises(ValueError, match="earlier write"):
        w.append_tick(1, {1: b"again"})
    w.close()
    with LogReader(p) as r:  # the torn frame reads as a truncation
        assert r.truncated and r.tick_count == 1


def test_exception_inside_with_keeps_log_valid(tmp_path: Path) -> None:
    p = tmp_path / "e.welog"
    with pytest.raises(RuntimeError):
        with LogWriter(p, {}, [], 0) as w:
            w.append_tick(0, {0: b"a"})
            raise RuntimeError("simulation crashed")
    assert read_all(p) == [{0: b"a"}]


# ---------------------------------------------------------------------------
# fsync policy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("every, ticks, expected", [(0, 10, 1), (1, 5, 6), (3, 10, 4), (4, 8, 3), (100, 10, 1)])
def test_fsync_policy(tmp_path: Path, monkeypatch, every: int, ticks: int, expected: int) -> None:
    calls: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    synced_at: list[int] = []
    with LogWriter(tmp_path / "s.welog", {}, [], every) as w:
        for t in range(ticks):
            before = calls.count("file")
            w.append_tick(t, {0: b"x"})
            if calls.count("file") > before:
                synced_at.append(t)
        assert calls.count("file") == expected - 1  # close() still to come
    assert calls.count("file") == expected
    if every:
        assert synced_at == [t for t in range(ticks) if (t + 1) % every == 0]
    assert calls.count("dir") == 1  # the directory entry, once


def test_flushed_to_os_every_tick(tmp_path: Path) -> None:
    # Without any fsync, a second reader (another process, say) already sees
    # every appended tick: nothing stays in Python's buffer.
    p = tmp_path / "live.welog"
    with LogWriter(p, {"live": True}, [b"m" * 10], 0) as w:
        for t in range(3):
            w.append_tick(t, {0: bytes([t]) * 100})
            with LogReader(p) as r:
                assert r.tick_count == t + 1 and not r.truncated


# ---------------------------------------------------------------------------
# Truncation: a crash at any byte leaves a readable log
# ---------------------------------------------------------------------------


def test_truncation_at_every_offset(small_log: Path, tmp_path: Path) -> None:
    data = small_log.read_bytes()
    hsize, bounds = frame_bounds(small_log)
    cut_path = tmp_path / "cut.welog"
    for cut in range(len(data) + 1):
        cut_path.write_bytes(data[:cut])
        with LogReader(cut_path) as r:  # must never raise
            complete = sum(1 for _, end in bounds if end <= cut)
            at_boundary = cut == hsize or any(end == cut for _, end in bounds)
            if cut < hsize:
                assert r.header is None and r.modules == [] and r.header_size is None
                assert r.truncated is True
                assert r.tick_count == 0 and r.last_complete_tick is None
                continue
            assert r.header == HEADER and r.modules == MODULES
            assert r.truncated is (not at_boundary), cut
            assert r.tick_count == complete, cut
            assert r.last_complete_tick == (complete - 1 if complete else None)
            assert [as_bytes(s) for _, s in r.ticks()] == TICKS[:complete]


def test_zero_filled_tail_is_truncation(small_log: Path, tmp_path: Path) -> None:
    # Some filesystems extend the file before the data reaches the disk; after
    # a crash the tail reads as zeros.
    data = small_log.read_bytes()
    _, bounds = frame_bounds(small_log)
    for keep, zeros in [(len(data), 5), (len(data), 40), (len(data), 5000), (bounds[2][0], bounds[2][1] - bounds[2][0])]:
        p = tmp_path / "z.welog"
        p.write_bytes(data[:keep] + bytes(zeros))
        with LogReader(p) as r:
            assert r.truncated
            assert read_all(p) == TICKS[:len([b for b in bounds if b[1] <= keep])]


def test_partial_frame_with_valid_header_is_truncation(tmp_path: Path) -> None:
    # The frame header (with its CRC) is complete and its length says the
    # frame goes on past the end of the file: the writer crashed mid-frame.
    p = tmp_path / "p.welog"
    write_log(p, ticks=[{0: b"a"}, {0: b"b" * 1000}])
    data = p.read_bytes()
    _, bounds = frame_bounds(p)
    p.write_bytes(data[:bounds[1][0] + 40])
    with LogReader(p) as r:
        assert r.truncated and r.tick_count == 1


# ---------------------------------------------------------------------------
# Corruption is detected, with the offset
# ---------------------------------------------------------------------------


def test_tamper_every_frame_byte(small_log: Path, tmp_path: Path) -> None:
    data = small_log.read_bytes()
    hsize, bounds = frame_bounds(small_log)
    bad = tmp_path / "bad.welog"
    for i in range(hsize, len(data)):
        frame = next(k for k, (a, b) in enumerate(bounds) if a <= i < b)
        t = bytearray(data)
        t[i] ^= 0xFF
        bad.write_bytes(t)
        got = []
        with LogReader(bad) as r:
            with pytest.raises(ReplayLogError) as ei:
                for tick, s in r.ticks():
                    got.append(as_bytes(s))
        assert ei.value.offset == bounds[frame][0], i
        assert str(bounds[frame][0]) in str(ei.value) and str(bad) in str(ei.value)
        # The ticks before the damaged one were read normally.
        assert got == TICKS[:frame]


def test_tamper_every_header_byte(small_log: Path, tmp_path: Path) -> None:
    data = small_log.read_bytes()
    hsize, _ = frame_bounds(small_log)
    bad = tmp_path / "bad.welog"
    for i in range(hsize):
        t = bytearray(data)
        t[i] ^= 0x01
        bad.write_bytes(t)
        with pytest.raises(ReplayLogError) as ei:
            LogReader(bad)
        assert 0 <= ei.value.offset < hsize, i
        assert isinstance(ei.value, WasmEngineError)


def _fix_fixed_crc(b: bytearray) -> None:
    struct.pack_into("<I", b, 60, zlib.crc32(bytes(b[:60])))


def _fix_frame_crc(b: bytearray, off: int) -> None:
    struct.pack_into("<I", b, off + 28, zlib.crc32(bytes(b[off:off + 28])))


def test_specific_header_errors(small_log: Path, tmp_path: Path) -> None:
    data = small_log.read_bytes()
    bad = tmp_path / "bad.welog"

    bad.write_bytes(b"this is not a replay log, just some text\n" * 3)
    with pytest.raises(ReplayLogError, match="offset 0: not a replay log"):
        LogReader(bad)
    bad.write_bytes(b"hello")  # too short to be a header, and wrong
    with pytest.raises(ReplayLogError, match="bad magic"):
        LogReader(bad)

    t = bytearray(data)
    struct.pack_into("<I", t, 8, 2)
    _fix_fixed_crc(t)
    bad.write_bytes(t)
    with pytest.raises(ReplayLogError, match="unsupported format version 2"):
        LogReader(bad)

    # A hostile JSON length, with a valid CRC, is refused without reading.
    t = bytearray(data)
    struct.pack_into("<Q", t, 16, 2**60)
    _fix_fixed_crc(t)
    bad.write_bytes(t)
    with pytest.raises(ReplayLogError, match="exceeds the limit"):
        LogReader(bad)

    t = bytearray(data)
    struct.pack_into("<I", t, 12, 1)
    _fix_fixed_crc(t)
    bad.write_bytes(t)
    with pytest.raises(ReplayLogError, match="flags"):
        LogReader(bad)

    with pytest.raises(ReplayLogError, match="cannot open"):
        LogReader(tmp_path / "does-not-exist.welog")


def test_hostile_frame_lengths(small_log: Path, tmp_path: Path) -> None:
    data = small_log.read_bytes()
    _, bounds = frame_bounds(small_log)
    bad = tmp_path / "bad.welog"
    off = bounds[1][0]

    # An absurd length with a valid header CRC: an error, not a truncation,
    # and nothing of that size is allocated.
    for length in (MAX_FRAME_BYTES + 8, 2**63, 12, 41):
        t = bytearray(data)
        struct.pack_into("<Q", t, off + 8, length)
        _fix_frame_crc(t, off)
        bad.write_bytes(t)
        with LogReader(bad) as r:
            with pytest.raises(ReplayLogError, match="impossible frame length") as ei:
                r.tick_count
            assert ei.value.offset == off

    # A corrupt length in the middle of the log (CRC not fixed): the frame
    # header CRC tells it apart from a truncation although it points past EOF.
    t = bytearray(data)
    struct.pack_into("<Q", t, off + 8, len(data))
    bad.write_bytes(t)
    with LogReader(bad) as r:
        with pytest.raises(ReplayLogError, match="checksum") as ei:
            r.truncated
        assert ei.value.offset == off

    # Section count larger than the frame could hold.
    t = bytearray(data)
    struct.pack_into("<I", t, off + 24, 10**6)
    _fix_frame_crc(t, off)
    bad.write_bytes(t)
    with pytest.raises(ReplayLogError, match="section count"):
        LogReader(bad).tick_count

    # Tick numbers out of sequence.
    t = bytearray(data)
    struct.pack_into("<Q", t, off + 16, 5)
    _fix_frame_crc(t, off)
    bad.write_bytes(t)
    with pytest.raises(ReplayLogError, match="tick 5 but tick 1 was expected"):
        LogReader(bad).tick_count

    # Garbage after the last frame that is not a torn frame.
    bad.write_bytes(data + b"garbage!" * 8)
    with pytest.raises(ReplayLogError, match="bad frame magic") as ei:
        LogReader(bad).tick_count
    assert ei.value.offset == len(data)


def test_section_length_past_frame_without_verify(small_log: Path, tmp_path: Path) -> None:
    # verify=False skips the frame CRC; structure is still checked, so a bad
    # section length can never read outside its frame.
    data = small_log.read_bytes()
    _, bounds = frame_bounds(small_log)
    off = bounds[0][0]
    t = bytearray(data)
    struct.pack_into("<Q", t, off + 32 + 8, 2**40)
    bad = tmp_path / "bad.welog"
    bad.write_bytes(t)
    with LogReader(bad, verify=False) as r:
        with pytest.raises(ReplayLogError, match="runs past the end of the frame"):
            r.read_tick(0)
    with LogReader(bad) as r:
        with pytest.raises(ReplayLogError, match="frame checksum mismatch"):
            r.read_tick(0)


def test_run_sections_ignore_the_transport_check_field():
    # The ring's check field is transport detail: records hash and encode the
    # same whatever it holds, and encoding leaves the batch itself untouched.
    import hashlib

    from wasm_engine.orchestrator import _runlog
    from wasm_engine.shm_protocol import Record, RecordBatch

    batch = RecordBatch.from_records([Record(17, b"abc", source=1, seq=2), Record(18, b"", source=3, seq=0)])
    checked = RecordBatch(batch.headers.copy(), batch.payload.copy())
    checked.headers["check"] = [0xDEADBEEF, 7]
    assert _runlog.encode_records(checked) == _runlog.encode_records(batch)
    assert list(checked.headers["check"]) == [0xDEADBEEF, 7]
    digests = []
    for b in (batch, checked):
        h = hashlib.blake2b(digest_size=32)
        _runlog.hash_records(h, b)
        digests.append(h.digest())
    assert digests[0] == digests[1]
    assert _runlog.decode_records(_runlog.encode_records(checked)) == batch
