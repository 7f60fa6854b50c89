import threading
import time

import pytest

from wasm_engine.shm_protocol import OffsetError, RingClosedError, Segment


@pytest.fixture
def seg():
    with Segment.create(4096) as s:
        yield s


def test_load_store_cas_fetch_add(seg):
    seg.store_u32(256, 7)
    assert seg.load_u32(256) == 7
    seg.store_u64(264, 2**40 + 3)
    assert seg.load_u64(264) == 2**40 + 3
    assert seg.compare_and_swap_u32(256, 7, 9) == (True, 7)
    assert seg.compare_and_swap_u32(256, 7, 11) == (False, 9)
    assert seg.compare_and_swap_u64(264, 2**40 + 3, 1) == (True, 2**40 + 3)
    assert seg.fetch_add_u32(256, 1) == 9
    assert seg.fetch_add_u32(256, -1) == 10  # wraps as unsigned
    assert seg.fetch_add_u64(264, 5) == 1
    assert seg.load_u64(264) == 6


@pytest.mark.parametrize("offset", [4096, 4093, 2**63, 10**20 % 2**64])
def test_out_of_bounds_raises_never_crashes(seg, offset):
    with pytest.raises(OffsetError, match="outside the mapping"):
        seg.load_u32(offset)
    with pytest.raises(OffsetError):
        seg.store_u64(offset, 1)


@pytest.mark.parametrize("offset,width", [(257, 4), (260, 8), (1, 4)])
def test_misaligned_raises(seg, offset, width):
    with pytest.raises(OffsetError, match="aligned"):
        if width == 4:
            seg.fetch_add_u32(offset, 1)
        else:
            seg.fetch_add_u64(offset, 1)


def test_negative_offset_is_rejected(seg):
    with pytest.raises(OverflowError):
        seg.load_u32(-8)


def test_wait_times_out_and_wakes(seg):
    t0 = time.monotonic()
    assert seg.wait_u32(512, 0, timeout_s=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert seg.wait_u32(512, 1, timeout_s=1.0) is True  # value already differs

    def waker():
        time.sleep(0.05)
        seg.store_u32(512, 1)
        seg.wake_u32(512)

    th = threading.Thread(target=waker)
    th.start()
    t0 = time.monotonic()
    assert seg.wait_u32(512, 0, timeout_s=5.0, spin_iters=10) is True
    assert time.monotonic() - t0 < 2.0
    th.join()


def test_use_after_close_raises():
    s = Segment.create(4096)
    s.close()
    s.unlink()
    with pytest.raises(RingClosedError):
        s.load_u32(0)
