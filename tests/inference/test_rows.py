"""Row programs (inference/_rows.py over native/we_rows.c): each op against numpy, and the bounds they enforce."""
import numpy as np
import pytest

from wasm_engine.inference import _rows
from wasm_engine.inference._rows import COPY, DST_BASE, EQUAL, FILL, MAX_OPS, SRC_BASE, RowProgram, address


def test_layout_matches_the_extension():
    _rows._check_layout()  # what import ran; a mismatch raises ImportError


def test_layout_mismatch_is_caught(monkeypatch):
    monkeypatch.setattr(_rows, "ROW_OP_VERSION", 2)
    with pytest.raises(ImportError, match="we_row_op"):
        _rows._check_layout()


@pytest.mark.parametrize("n", [1, 3, 17])
def test_copy_fill_and_equal_match_numpy(n):
    rng = np.random.default_rng(n)
    src = rng.integers(0, 256, (n, 24), dtype=np.uint8)
    src[:, 2:6] = [9, 8, 7, 6]
    dense = np.zeros((n, 8), np.uint8)
    head, want = b"HEAD", b"\x09\x08\x07\x06"
    ops = [(EQUAL, SRC_BASE, 2, 24, address(want), 0, 4),
           (COPY, SRC_BASE, 8, 24, address(dense), 8, 8),  # strided rows into a dense array
           (FILL, DST_BASE, address(head), 0, 0, 16, 4),
           (COPY, SRC_BASE | DST_BASE, 16, 24, 4, 16, 8)]  # strided into strided
    prog = RowProgram(ops, [dense, head, want], n)
    dst = np.zeros((n, 16), np.uint8)
    assert prog.run(src, dst) == n
    assert (dense == src[:, 8:16]).all()
    assert (dst[:, :4] == np.frombuffer(head, np.uint8)).all()
    assert (dst[:, 4:12] == src[:, 16:24]).all() and not dst[:, 12:].any()


def test_dense_copy_is_one_block():
    src = np.arange(64, dtype=np.uint8)
    out = np.zeros(64, np.uint8)
    assert RowProgram([(COPY, SRC_BASE, 0, 16, address(out), 16, 16)], [out], 4).run(src) == 4
    assert (out == src).all()


def test_equal_stops_at_the_first_differing_row_before_later_ops():
    src = np.zeros((5, 4), np.uint8)
    src[3, 1] = 1
    zero = bytes(4)
    dst = np.zeros((5, 4), np.uint8)
    ones = b"\xff" * 4
    with pytest.raises(ValueError, match="reads outside"):  # bytes the program would not keep alive
        RowProgram([(EQUAL, SRC_BASE, 0, 4, address(zero), 0, 4), (FILL, DST_BASE, address(ones), 0, 0, 4, 4)],
                   [zero], 5)
    prog = RowProgram([(EQUAL, SRC_BASE, 0, 4, address(zero), 0, 4),
                       (FILL, DST_BASE, address(ones), 0, 0, 4, 4)], [zero, ones], 5)
    assert prog.run(src, dst) == 3
    assert not dst.any()  # nothing written: the check came first
    src[3, 1] = 0
    assert prog.run(src, dst) == 5 and (dst == 255).all()


def test_absolute_addresses_must_lie_in_kept_buffers():
    a = np.zeros(32, np.uint8)
    with pytest.raises(ValueError, match="writes outside"):
        RowProgram([(COPY, SRC_BASE, 0, 8, address(a), 8, 8)], [a], 5)  # 40 bytes into 32
    with pytest.raises(ValueError, match="reads outside"):
        RowProgram([(COPY, DST_BASE, address(a) + 8, 8, 0, 8, 8)], [a], 4)  # ends 8 bytes past a
    RowProgram([(COPY, DST_BASE, address(a) + 8, 8, 0, 8, 8)], [a], 3)  # ends exactly at a's end


def test_base_buffers_are_checked_per_run():
    out = np.zeros(40, np.uint8)
    prog = RowProgram([(COPY, SRC_BASE, 4, 10, address(out), 8, 8)], [out], 5)  # needs 4 + 4*10 + 8 = 52 bytes
    with pytest.raises(ValueError, match="need 52 and 0 bytes, got 51 and 0"):
        prog.run(np.zeros(51, np.uint8))
    with pytest.raises(ValueError, match="need 52 and 0 bytes, got 0 and 0"):
        prog.run()
    with pytest.raises(ValueError, match="contiguous"):
        prog.run(np.zeros((52, 2), np.uint8)[:, 0])
    assert prog.run(np.zeros(52, np.uint8)) == 5
    fill = RowProgram([(FILL, DST_BASE, address(out), 0, 0, 4, 4)], [out], 2)
    with pytest.raises(ValueError, match="read-only"):
        fill.run(dst=np.frombuffer(bytes(8), np.uint8))


def test_limits_and_unknown_ops():
    a = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match="1..256 ops"):
        RowProgram([], [a], 1)
    with pytest.raises(ValueError, match="1..256 ops"):
        RowProgram([(FILL, DST_BASE, address(a), 0, 0, 0, 0)] * (MAX_OPS + 1), [a], 1)
    with pytest.raises(ValueError, match="at least one row"):
        RowProgram([(FILL, DST_BASE, address(a), 0, 0, 0, 0)], [a], 0)
    with pytest.raises(ValueError, match="unknown row op"):
        RowProgram([(99, DST_BASE, address(a), 0, 0, 0, 0)], [a], 1)


def test_runner_binds_dst_once_and_checks_each_src():
    zero, ones = bytes(4), b"\xff" * 4
    prog = RowProgram([(EQUAL, SRC_BASE, 0, 4, address(zero), 0, 4),
                       (FILL, DST_BASE, address(ones), 0, 0, 4, 4)], [zero, ones], 5)
    with pytest.raises(ValueError, match="dst buffer"):
        prog.runner(np.zeros((4, 4), np.uint8))
    dst = np.zeros((5, 4), np.uint8)
    run = prog.runner(dst)
    src = np.zeros((5, 4), np.uint8)
    src[2, 0] = 7
    assert run(src) == 2 and not dst.any()
    with pytest.raises(ValueError, match="src buffer"):
        run(np.zeros((4, 4), np.uint8))
    src[2, 0] = 0
    assert run(src) == 5 and (dst == 255).all()
    del prog  # the runner keeps the program (its op table) and dst alive
    dst[:] = 0
    assert run(src) == 5 and (dst == 255).all()
