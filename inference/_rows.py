"""Row programs: a uniform batch's per-request byte moves in one C call.

Layer: inference, over native/we_rows.h. A program is a short list of ops,
each applied to rows [0, n) of a batch whose n requests share one payload
layout: COPY a slice of every row to or from a dense array, FILL every row's
slice with the same bytes, check every row's slice EQUALs given bytes.  A
program is built once per batch layout (TensorModel's uniform-tick plans)
and run every tick; building it is where the addresses are checked, so that
running it can only touch the buffers it was built for and the two it is
given (each at least as large as the program needs, checked per run).

ROW_OP_DTYPE mirrors we_row_op (docs/INFERENCE.md "Row programs"), checked
at import against the compiled extension.
"""
from __future__ import annotations

import numpy as np

from ..native import ffi, lib

COPY, FILL, EQUAL = lib.WE_ROW_COPY, lib.WE_ROW_FILL, lib.WE_ROW_EQUAL
SRC_BASE, DST_BASE = lib.WE_ROW_SRC_BASE, lib.WE_ROW_DST_BASE

ROW_OP_VERSION = 1
ROW_OP_DTYPE = np.dtype([("op", "<u4"), ("flags", "<u4"), ("src", "<u8"), ("src_stride", "<u8"),
                         ("dst", "<u8"), ("dst_stride", "<u8"), ("bytes", "<u8")])

#: Ops per program, at most.
MAX_OPS = 256


def _check_layout() -> None:
    out = ffi.new("uint64_t[16]")
    lib.we_rows_layout(out)
    names = ("op", "flags", "src", "src_stride", "dst", "dst_stride", "bytes")
    want = [ROW_OP_VERSION, ROW_OP_DTYPE.itemsize] + [ROW_OP_DTYPE.fields[f][1] for f in names]
    if list(out)[:9] != want or ROW_OP_DTYPE.itemsize != 48:
        raise ImportError(f"native we_row_op layout {list(out)[:9]} does not match ROW_OP_DTYPE {want} "
                          "(docs/INFERENCE.md \"Row programs\"); rebuild with `pip install -e .`")


_check_layout()


def address(a: np.ndarray | bytes) -> int:
    """The address of a's first byte (a numpy array or a bytes object kept alive by the caller)."""
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    return int(ffi.cast("uintptr_t", ffi.from_buffer(a)))


class RowProgram:
    """ops (op, flags, src, src_stride, dst, dst_stride, bytes) over `rows` rows.

    keep: the arrays and bytes the ops' absolute addresses point into (held
    here for the program's lifetime).  Every absolute range must lie inside
    one of them; the base-relative ranges define how large the buffers given
    to `run` must be.
    """

    __slots__ = ("rows", "_ops", "_ptr", "_n_ops", "_keep", "_src_bytes", "_dst_bytes")

    def __init__(self, ops: list[tuple], keep: list, rows: int) -> None:
        if not 0 < len(ops) <= MAX_OPS or rows < 1:
            raise ValueError(f"a row program has 1..{MAX_OPS} ops and at least one row")
        table = np.array(ops, ROW_OP_DTYPE)
        spans = [(address(k), _nbytes(k)) for k in keep]
        src_need = dst_need = 0
        for op, flags, src, s_stride, dst, d_stride, size in ops:
            if op not in (COPY, FILL, EQUAL):
                raise ValueError(f"unknown row op {op}")
            s_stride = 0 if op == FILL else s_stride
            d_stride = 0 if op == EQUAL else d_stride
            s_end = src + (rows - 1) * s_stride + size
            d_end = dst + (rows - 1) * d_stride + size
            if flags & SRC_BASE:
                src_need = max(src_need, s_end)
            elif size and not any(a <= src and s_end <= a + n for a, n in spans):
                raise ValueError("a row op reads outside the program's buffers")
            if flags & DST_BASE:
                dst_need = max(dst_need, d_end)
            elif size and not any(a <= dst and d_end <= a + n for a, n in spans):
                raise ValueError("a row op writes outside the program's buffers")
        self.rows = rows
        self._ops = table
        self._ptr = ffi.cast("const we_row_op *", table.__array_interface__["data"][0])
        self._n_ops = len(ops)
        self._keep = keep
        self._src_bytes, self._dst_bytes = src_need, dst_need

    def run(self, src: np.ndarray | None = None, dst: np.ndarray | None = None) -> int:
        """Run over the rows with these base buffers (contiguous; dst writable);
        returns the first row where an EQUAL op fails, or `rows` when none does."""
        return lib.we_rows_run(self._ptr, self._n_ops, *self._bases(src, dst), self.rows)

    def _bases(self, src: np.ndarray | None, dst: np.ndarray | None):
        """The base buffers as cffi buffers, each checked to be as large as the
        ops reach.  from_buffer refuses a buffer that is not contiguous (or,
        for dst, not writable)."""
        s = _EMPTY if src is None else ffi.from_buffer("uint8_t[]", src)
        d = _EMPTY if dst is None else ffi.from_buffer("uint8_t[]", dst, require_writable=True)
        if len(s) < self._src_bytes or len(d) < self._dst_bytes:
            raise ValueError(f"row program base buffers: need {self._src_bytes} and {self._dst_bytes} bytes, "
                             f"got {len(s)} and {len(d)}")
        return s, d

    def runner(self, dst: np.ndarray | None = None):
        """``run`` for many calls with one dst: a callable ``f(src=None) -> int``.

        dst is checked once here (and kept alive by the callable); each call
        checks only src.  For the inference process's steady state, where
        every Python operation after the model costs several times its
        usual time.
        """
        d = _EMPTY if dst is None else ffi.from_buffer("uint8_t[]", dst, require_writable=True)
        if len(d) < self._dst_bytes:
            raise ValueError(f"row program dst buffer: need {self._dst_bytes} bytes, got {len(d)}")
        ptr, n_ops, rows, need, run, as_bytes = self._ptr, self._n_ops, self.rows, self._src_bytes, \
            lib.we_rows_run, ffi.from_buffer

        def run_src(src=None, _keep=(self, dst)):
            s = _EMPTY if src is None else as_bytes("uint8_t[]", src)
            if len(s) < need:
                raise ValueError(f"row program src buffer: need {need} bytes, got {len(s)}")
            return run(ptr, n_ops, s, d, rows)

        return run_src

    def bind(self, src: np.ndarray | None = None, dst: np.ndarray | None = None) -> "BoundCall":
        """This program over these base buffers (contiguous; dst writable,
        each at least as large as the program needs), as one native
        ``we_rows_call``: for a ServeStep, which runs it in C every tick."""
        s, d = self._bases(src, dst)
        call = ffi.new("we_rows_call *")
        call.ops, call.n_ops, call.rows = self._ptr, self._n_ops, self.rows
        call.src_base, call.dst_base = s, d
        return BoundCall(call, (self, s, d, src, dst))


class BoundCall:
    """A row program bound to its base buffers (RowProgram.bind): ``native``
    is the ``we_rows_call``; what it points into is held here."""

    __slots__ = ("native", "_keep")

    def __init__(self, native, keep) -> None:
        self.native, self._keep = native, keep

    def __call__(self) -> int:
        """Run it once from Python (as a ServeStep would): the first failing row, or rows."""
        c = self.native
        return lib.we_rows_run(c.ops, c.n_ops, c.src_base, c.dst_base, c.rows)


_EMPTY = ffi.new("uint8_t[]", 0)  # the base buffer of a program that needs none


def _nbytes(k) -> int:
    return k.nbytes if isinstance(k, np.ndarray) else len(k)
