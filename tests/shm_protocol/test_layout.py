import numpy as np
from hypothesis import given, settings, strategies as st

from wasm_engine.native import ffi, lib
from wasm_engine.shm_protocol import RECORD_DTYPE, RECORD_HEADER_BYTES
from wasm_engine.shm_protocol import _layout
from wasm_engine.shm_protocol._reference import record_check


def test_record_dtype_is_the_c_struct():
    assert RECORD_DTYPE.itemsize == RECORD_HEADER_BYTES == ffi.sizeof("we_record_header")
    for name, _t, off in _layout.RECORD_HEADER_FIELDS:
        assert ffi.offsetof("we_record_header", name) == off
        assert RECORD_DTYPE.fields[name][1] == off


def test_import_check_rejects_a_mismatch(monkeypatch):
    monkeypatch.setattr(_layout, "RECORD_HEADER_BYTES", 40)
    try:
        _layout._check_against_native()
    except _layout.LayoutError as e:
        assert "stale" in str(e) or "40" in str(e)
    else:
        raise AssertionError("layout mismatch not detected")


u16 = st.integers(1, 0xFFFE)
u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(kind=u16, flags=st.integers(0, 0xFFFF), src=u32, dst=u32, tick=st.integers(0, 2**64 - 1),
       seq=u32, payload=st.binary(max_size=300))
def test_native_check_matches_reference(kind, flags, src, dst, tick, seq, payload):
    h = ffi.new("we_record_header *", {"kind": kind, "flags": flags, "payload_len": len(payload),
                                        "source": src, "destination": dst, "tick": tick, "seq": seq})
    buf = ffi.from_buffer("uint8_t[]", bytearray(payload) or bytearray(1))
    assert lib.we_record_check(h, buf) == record_check(kind, flags, len(payload), src, dst, tick, seq, payload)


def test_check_detects_single_bit_flips():
    payload = bytes(range(64))
    base = record_check(1, 0, 64, 2, 3, 4, 5, payload)
    for i in range(64 * 8):
        flipped = bytearray(payload)
        flipped[i // 8] ^= 1 << (i % 8)
        assert record_check(1, 0, 64, 2, 3, 4, 5, bytes(flipped)) != base
