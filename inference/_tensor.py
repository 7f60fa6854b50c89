"""Tensor models: validate agents' tensors, batch compatible requests, run.

Batching concatenates requests of one `execute` call along axis 0 and splits
the outputs again.  It is considered only when the model declares a named
batch dimension shared by every input and output (so output row i belongs to
input row i), and only for requests whose non-batch dimensions are identical.

Batching must not change results, and that is not automatic: ONNX Runtime's
CPU kernels compute on the caller's buffers, and some (ReduceSum, ReduceMean)
sum in an order that depends on the data's address alignment, which differs
for a request's rows inside a batch.  So batching is *verified on real
traffic*: for each shape key, groups are run both batched and one request at
a time (the one-at-a-time results are returned) until VERIFY_MEMBERS
requests have matched bit for bit; a single mismatch turns batching off for
that key for good.  Every buffer given to ORT is 64-byte aligned, so a
request's result does not depend on where the allocator put its data.

Decoding and encoding are done per group of requests, not per request:
requests of one call whose payloads have byte-identical headers (same
tensor count, dtypes and shapes; only element data differs) are validated
once and their element data is copied out of the stacked payload bytes by
numpy; results of a batch are encoded with one header for all.  The bytes
are exactly those of `decode_tensors` / `encode_tensors` one request at a
time.

The usual tick (every request for this model, one payload length, one
header, batching verified for its shape) has a path with no Python object
per request, `execute_uniform`: payloads in, as one (n, size) byte matrix,
results out as another.  It only serves ticks on which `execute` would run
the same single batch (or the one request alone) and return OK for all; it
leaves every other tick, verification included, to `execute`.
"""


from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from ._errors import ModelLoadError
from ._models import ModelSpec, OpenedModel, RunStats, TensorInfo, ort_message, timed_run
from ._payloads import (
    ALIGNMENT,
    DTYPE_CODES,
    PayloadError,
    Status,
    TensorRecord,
    aligned_copy,
    aligned_empty,
    decode_tensor_arrays,
    decode_tensor_rows,
    encode_tensor_matrix,
    encode_tensor_rows,
    encode_tensors,
    error_payload,
    header_ranges,
    tensor_matrix_layout,
    tensor_records,
)
from ._rows import COPY, DST_BASE, EQUAL, FILL, SRC_BASE, RowProgram, address

LOGGER = logging.getLogger("wasm_engine.inference")

Outcome = tuple[int, bytes]  # (status, payload) of one request

# Requests per shape key that must give identical results batched and alone
# before that key is batched without checking.
VERIFY_MEMBERS = 8

# Distinct header layouts per payload length that are matched against all
# requests of that length at once; requests left after that are decoded one
# by one (bounds the work a mix of many different headers can cause).
MAX_TEMPLATES = 16

# Empty tensors whose non-zero dimensions multiply beyond this are decoded one
# request at a time (see _Layout.stackable).
_STACKABLE_EMPTY = 1 << 32

# Remembered header layouts (see TensorModel._layout): per payload length,
# and payload lengths in all.
_LAYOUTS_PER_LENGTH = 8
_LAYOUT_LENGTHS = 256

# execute_uniform decodes into input arrays kept from the previous tick when
# they are no larger than this: a fresh buffer each tick costs more than the
# allocation itself (ONNX Runtime then runs measurably slower on it, here).
_SCRATCH_MAX_BYTES = 1 << 20

# Uniform-tick plans (see TensorModel._make_plan) kept per model, at most;
# their input and output arrays are at most _SCRATCH_MAX_BYTES each.
_PLANS_MAX = 8
# _plan_into's answer when its bound run failed.  Not a request's error: the
# numpy path runs the model again and reports any.  (ONNX Runtime logs the
# failure; a quieter RunOptions would cost ~140 us per run, so none is used.)
_PLAN_FAILED = object()


def _fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class _Layout:
    """A valid tensor payload structure: where its headers are and what they say."""

    records: list[TensorRecord]
    ranges: list[tuple[int, int]]  # header byte ranges (everything but element data)
    headers: list[bytes]  # the bytes in those ranges
    check: tuple[int, tuple] | Outcome  # (rows, key) if the tensors fit the model, else the error outcome
    ok: bool
    # Requests with this layout may be stacked into one array per input.  Not
    # for empty tensors with huge other dimensions: numpy could not allocate
    # n of them where it can allocate one.
    stackable: bool


@dataclass
class _Plan:
    """execute_uniform's native path for n requests of one layout (see TensorModel._make_plan)."""

    layout: _Layout
    size: int  # request bytes
    width: int  # result bytes per request
    gather: RowProgram  # checks every request's header bytes, then copies its element data into the inputs
    scatter: RowProgram  # writes every result row: headers, then the outputs' element data
    binding: object  # ort IOBinding: the session's inputs and outputs bound to the programs' arrays


@dataclass
class _Block:
    """Requests of one execute call with byte-identical tensor headers, decoded together.

    They have the same dtypes and shapes, so one validation covers them all,
    and their element data is one array per input.
    """

    indices: list[int]  # positions in the payload list, ascending
    arrays: list[np.ndarray]  # per input: [n, *shape], member j's tensor is arrays[k][j]; 64-byte aligned
    rows: int  # size of each member's batch dimension (only meaningful when batching)
    key: tuple  # non-batch dims of every input: requests with equal keys batch together

    def member(self, j: int) -> list[np.ndarray]:
        """Member j's tensors, each 64-byte aligned (copied if its slice is not)."""
        out = []
        for a in self.arrays:
            v = a[j, ...]
            out.append(v if v.ctypes.data % ALIGNMENT == 0 else aligned_copy(v))
        return out


class TensorModel:
    kind = "tensor"

    def __init__(self, spec: ModelSpec, opened: OpenedModel) -> None:
        self.spec = spec
        self.session = opened.session
        self.inputs: tuple[TensorInfo, ...] = opened.inputs
        self.outputs: tuple[TensorInfo, ...] = opened.outputs
        self.output_names = [o.name for o in self.outputs]
        self.stats = RunStats()
        for t in self.inputs + self.outputs:
            if t.dtype_code is None:
                raise ModelLoadError(
                    spec.id, opened.path, f"{t.name} has type {t.dtype}, which the tensor payload format cannot carry",
                    "Use numeric tensor inputs/outputs (float16/32/64, int8..64, uint8..64, bool).",
                )
        self.batch_symbol = self._find_batch_symbol() if spec.batch else None
        self.batching = self.batch_symbol is not None  # eligible for batching at all
        # shape key -> requests verified so far (>= 0), or -1: batching changes results.
        self.batch_verified: dict[tuple, int] = {}
        self._layouts: dict[int, list[_Layout]] = {}  # payload length -> layouts seen
        # execute_uniform's input arrays: (rows in all, records) they fit, the arrays.
        self._scratch: tuple[tuple, list[np.ndarray]] | None = None
        # The requests (their payload bytes) and error of a run that failed in
        # execute_uniform, which the caller serves next through execute: that
        # run is not made again there (see _take_uniform_failure).
        self._uniform_failure: tuple[int, bytes, BaseException] | None = None
        # Uniform-tick plans by (id of their layout, n); None: none can be made for that key.
        self._plans: dict[tuple[int, int], _Plan | None] = {}
        # Plans are made only where they can be checked here: the CPU provider on
        # a little-endian machine (tensor payloads are little-endian).
        self._plans_ok = opened.provider == "cpu" and sys.byteorder == "little"
        # The plan that served the last execute_uniform call, if one did (see run_plan).
        self.last_plan: _Plan | None = None

    def _find_batch_symbol(self) -> str | None:
        """The symbolic dim-0 name shared by all inputs and outputs, if any."""
        names = set()
        for t in self.inputs + self.outputs:
            if not t.shape or not isinstance(t.shape[0], str):
                return None
            names.add(t.shape[0])
        return names.pop() if len(names) == 1 else None

    # -- decoding ------------------------------------------------------------

    def _check(self, records: list[TensorRecord]) -> tuple[int, tuple]:
        """Validate a request's tensors (dtype codes and shapes) against the inputs.

        Returns (rows, key); raises PayloadError(BAD_INPUT).  Depends only on
        the payload's header bytes (and on self.batching for rows).
        """
        if len(records) != len(self.inputs):
            expected = ", ".join(t.describe() for t in self.inputs)
            raise PayloadError(Status.BAD_INPUT,
                               f"model {self.spec.id!r} takes {len(self.inputs)} tensor(s) ({expected}), "
                               f"got {len(records)}")
        symbols: dict[str, int] = {}
        for info, (code, shape, _, _) in zip(self.inputs, records):
            name = DTYPE_CODES[code].name
            if name != info.dtype:
                raise PayloadError(Status.BAD_INPUT,
                                   f"input {info.name!r}: expected {info.dtype}, got {name}")
            if info.shape is None:
                continue
            if len(shape) != len(info.shape):
                raise PayloadError(Status.BAD_INPUT, f"input {info.name!r}: expected shape {_fmt_shape(info.shape)}, "
                                                     f"got {list(shape)}")
            for want, got in zip(info.shape, shape):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise PayloadError(Status.BAD_INPUT, f"input {info.name!r}: expected shape "
                                                         f"{_fmt_shape(info.shape)}, got {list(shape)}")
                if isinstance(want, str):
                    # The same symbolic name must mean the same size everywhere.
                    if symbols.setdefault(want, got) != got:
                        raise PayloadError(Status.BAD_INPUT, f"dimension {want!r} is {symbols[want]} in one input "
                                                             f"and {got} in {info.name!r}")
        rows = records[0][1][0] if self.batching else 0
        key = tuple(tuple(r[1][1:]) for r in records)
        return rows, key

    def _layout(self, payload) -> _Layout:
        """Structure and validation of one payload; raises PayloadError(MALFORMED).

        Valid structures are remembered by their header bytes, so a request
        that looks like an earlier one (the usual case) is neither parsed
        nor validated again.  Validation depends only on the header bytes.
        """
        size = len(payload)
        known = self._layouts.get(size)
        if known:
            for lay in known:
                for (lo, hi), head in zip(lay.ranges, lay.headers):
                    if payload[lo:hi] != head:
                        break
                else:
                    return lay
        records = tensor_records(payload)
        ranges = header_ranges(records)
        try:
            check: tuple[int, tuple] | Outcome = self._check(records)
            ok = True
        except PayloadError as e:
            check, ok = (e.status, error_payload(str(e))), False
        stackable = all(nbytes or math.prod(d for d in dims if d) <= _STACKABLE_EMPTY
                        for _, dims, _, nbytes in records)
        lay = _Layout(records, ranges, [bytes(payload[lo:hi]) for lo, hi in ranges], check, ok, stackable)
        if known is None:
            if len(self._layouts) >= _LAYOUT_LENGTHS:
                self._layouts.clear()
            known = self._layouts[size] = []
        if len(known) >= _LAYOUTS_PER_LENGTH:
            del known[0]
        known.append(lay)
        return lay

    def _decode_same_length(self, payloads: list, idx: list[int], outcomes: list) -> list[_Block]:
        """Decode the requests payloads[i] for i in idx, which all have the same length.

        Requests whose header bytes equal a template's (the first request not
        yet matched) share its validation and are decoded by one numpy copy.
        Errors go to outcomes; returns the decoded blocks.
        """
        n = len(idx)
        group = [payloads[i] for i in idx]
        size = len(group[0])
        try:
            lay: _Layout | None = self._layout(group[0])
        except PayloadError:
            lay = None  # the general path below reports it
        if lay is not None and lay.stackable and (n == 1 or self._all_match(group, lay)):
            # The usual case: every request has the first one's headers.
            if not lay.ok:
                for i in idx:
                    outcomes[i] = lay.check
                return []
            rows, key = lay.check
            buf = group[0] if n == 1 else b"".join(group)
            return [_Block(idx, decode_tensor_rows(buf, n, size, lay.records), rows, key)]

        joined = b"".join(group)
        mat = np.frombuffer(joined, np.uint8).reshape(n, size) if size else np.zeros((n, 0), np.uint8)
        blocks: list[_Block] = []
        remaining = np.arange(n)  # rows not matched yet
        templates = 0
        while remaining.size:
            t = int(remaining[0])
            try:
                lay = self._layout(group[t])
            except PayloadError as e:
                outcomes[idx[t]] = (e.status, error_payload(str(e)))
                remaining = remaining[1:]
                continue
            if remaining.size > 1 and templates < MAX_TEMPLATES and lay.stackable:
                templates += 1
                same = np.ones(remaining.size, dtype=bool)
                for lo, hi in lay.ranges:
                    if hi > lo:
                        same &= (mat[remaining, lo:hi] == mat[t, lo:hi]).all(axis=1)
                members, remaining = remaining[same], remaining[~same]
            else:
                members, remaining = remaining[:1], remaining[1:]
            member_indices = [idx[j] for j in members.tolist()]
            if not lay.ok:
                for i in member_indices:
                    outcomes[i] = lay.check
                continue
            rows, key = lay.check
            blocks.append(_Block(member_indices, decode_tensor_rows(joined, n, size, lay.records, members), rows, key))
        return blocks

    @staticmethod
    def _all_match(group: list, lay: _Layout) -> bool:
        """Whether every payload in group (all of lay's length) has lay's header bytes."""
        try:
            # bytes payloads (the usual case): compared in place, no copies.
            return all(all(map(bytes.startswith, group, repeat(head), repeat(lo)))
                       for (lo, _), head in zip(lay.ranges, lay.headers) if head)
        except TypeError:  # some payload is a memoryview
            return all(bytes(p[lo:hi]) == head for p in group for (lo, hi), head in zip(lay.ranges, lay.headers))

    # -- running -------------------------------------------------------------

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {t.name: a for t, a in zip(self.inputs, arrays)}
        return timed_run(self.stats, self.session.run, self.output_names, feeds)

    def _encode(self, outputs: list[np.ndarray], max_result_bytes: int) -> Outcome:
        payload = encode_tensors(outputs)
        if len(payload) > max_result_bytes:
            return Status.TOO_LARGE, error_payload(
                f"result is {len(payload)} bytes, limit {max_result_bytes}")
        return Status.OK, payload

    def _run_one(self, arrays: list[np.ndarray], max_result_bytes: int) -> Outcome:
        try:
            outputs = self._run(arrays)
        except Exception as e:  # ORT rejected this request's tensors
            return self._run_error(e)
        return self._encode(outputs, max_result_bytes)

    def _run_error(self, e: BaseException) -> Outcome:
        return Status.MODEL_ERROR, error_payload(f"model {self.spec.id!r}: {ort_message(e)}")

    def _take_uniform_failure(self, payloads: list) -> BaseException | None:
        """The error of execute_uniform's failed run if it was for exactly these payloads (then forgotten).

        A failed uniform run means: for one request, its error (_run_one would
        feed the same inputs and fail alike); for several, a batch that fails
        (_run_batched would run it again and fail alike).
        """
        failure, self._uniform_failure = self._uniform_failure, None
        if failure is None:
            return None
        n, data, error = failure
        return error if n == len(payloads) and b"".join(payloads) == data else None

    def execute(self, payloads: list, max_result_bytes: int) -> list[Outcome]:
        """Run a group of requests for this model; one outcome per payload, in order.

        payloads: bytes-like objects of format 0x01 (bytes or 1-D byte memoryviews).
        """
        outcomes: list[Outcome | None] = [None] * len(payloads)
        if not payloads:
            return []
        failed = self._take_uniform_failure(payloads) if self._uniform_failure is not None else None
        if failed is not None and len(payloads) == 1:
            return [self._run_error(failed)]
        lengths = list(map(len, payloads))
        if min(lengths) == max(lengths):
            blocks = self._decode_same_length(payloads, list(range(len(payloads))), outcomes)
        else:
            by_length: dict[int, list[int]] = {}
            for i, size in enumerate(lengths):
                by_length.setdefault(size, []).append(i)
            blocks = []
            for idx in by_length.values():
                blocks += self._decode_same_length(payloads, idx, outcomes)

        if self.batching:
            groups: dict[tuple, list[_Block]] = {}
            for b in blocks:
                groups.setdefault(b.key, []).append(b)
            # Groups run in order of their first request, as if built in request order.
            ordered = list(groups.values())
            if len(ordered) > 1:
                ordered.sort(key=lambda bs: min(b.indices[0] for b in bs))
            for members in ordered:
                self._run_group(members[0].key, members, outcomes, max_result_bytes,
                                batch_fails=failed is not None)
        else:
            # Without batching every request is its own group, run in request order.
            for i, b, j in sorted((i, b, j) for b in blocks for j, i in enumerate(b.indices)):
                outcomes[i] = self._run_one(b.member(j), max_result_bytes)
        if None in outcomes:
            return [o if o is not None else (Status.INTERNAL, b"no outcome") for o in outcomes]
        return outcomes

    def execute_uniform(self, payloads: np.ndarray, max_result_bytes: int) -> np.ndarray | None:
        """The usual tick in one batch, or None: then `execute` must serve these requests.

        payloads: (n, size) uint8, C-contiguous, one request per row.  Taken
        only when every row has the first row's header bytes, those describe
        a valid request, the model batches them and its batching is verified
        for their shape key (or n == 1), the batched run succeeds with outputs
        that follow the batch dimension, and the results fit max_result_bytes.
        Then every request's result is OK, and row j of the returned
        (n, result_size) uint8 matrix is exactly the payload `execute` gives
        request j: session.run gets inputs of the same values, shapes and
        64-byte alignment as in _run_batched (for one request alone: as in
        _run_one), and the encoding is encode_tensor_rows'.  Nothing here
        changes batch_verified, so
        verification ticks, errors and every other case are left to
        `execute`, unchanged.
        """
        n, size = payloads.shape
        self.last_plan = None
        if not (self.batching and n):
            return None
        try:
            lay = self._layout(payloads[0].tobytes())
        except PayloadError:
            return None
        if not (lay.ok and lay.stackable):
            return None
        rows, key = lay.check
        if n > 1 and self.batch_verified.get(key, 0) < VERIFY_MEMBERS:
            return None
        plan_key = (id(lay), n)
        plan = self._plans.get(plan_key, False) if self._plans_ok else None
        if plan:
            if plan.layout is lay:
                out = np.empty((n, plan.width), np.uint8)
                served = self._plan_into(plan, payloads, out, max_result_bytes)
                if served is not _PLAN_FAILED:
                    self.last_plan = plan if served else None
                    return out if served else None
                self._drop_plan(plan)
                plan = None  # the numpy path serves this tick and later ones
            else:
                plan = False  # a plan of an evicted layout whose id was reused
        # Compared as bytes objects: a copy and a memcmp cost less than numpy's
        # elementwise == and .all() at these sizes.
        for (lo, hi), head in zip(lay.ranges, lay.headers):
            if head and payloads[:, lo:hi].tobytes() != head * n:
                return None
        total = n * rows
        arrays = [a.reshape((total,) + a.shape[2:])
                  for a in decode_tensor_rows(payloads.reshape(-1), n, size, lay.records,
                                              into=self._scratch_arrays(n, lay.records))]
        try:
            outputs = self._run(arrays)
        except Exception as e:  # noqa: BLE001 - execute reports it per request, without this run
            self._uniform_failure = (n, payloads.tobytes(), e)
            return None
        if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
            return None
        out = encode_tensor_matrix([o.reshape((n, rows) + o.shape[1:]) for o in outputs])
        if out is None or out.shape[1] > max_result_bytes:
            return None
        if plan is False:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            self._plans[plan_key] = self.last_plan = self._make_plan(lay, payloads, outputs, out)
        return out

    def run_plan(self, plan: _Plan, payloads: np.ndarray, out: np.ndarray, max_result_bytes: int) -> bool:
        """Serve n requests through ``plan`` (a `last_plan`) into ``out``, or return False.

        For a caller that has seen the previous tick served by ``plan`` and
        has n requests like them: payloads (n, size) uint8, C-contiguous;
        out: (n, plan.width) uint8, C-contiguous.  True exactly where
        execute_uniform would have served them through the same plan, with
        the same bytes; False where it would not have: then nothing has
        changed but, if the bound run itself failed, the run counters (and
        the plan is no longer used), and execute_uniform or execute must
        serve them.
        """
        n = plan.gather.rows
        if not (self.batching and self._plans.get((id(plan.layout), n)) is plan) \
                or payloads.shape != (n, plan.size) or out.shape != (n, plan.width):
            return False
        served = self._plan_into(plan, payloads, out, max_result_bytes)
        if served is _PLAN_FAILED:
            self._drop_plan(plan)  # the caller's fallback runs the model again and reports any error
            return False
        if served:
            self.stats.requests += n
        return served

    def plan_tick(self, plan: _Plan, out: np.ndarray, max_result_bytes: int) -> "PlanTick | None":
        """A PlanTick serving later ticks through ``plan`` (a `last_plan`) into
        ``out`` ((n, plan.width) uint8, C-contiguous), or None where
        run_plan would not serve through it."""
        n = plan.gather.rows
        if not (self.batching and self._plans.get((id(plan.layout), n)) is plan) \
                or out.shape != (n, plan.width) or plan.width > max_result_bytes:
            return None
        return PlanTick(self, plan, out)

    def _drop_plan(self, plan: _Plan) -> None:
        """After a failed bound run: batches of this layout and count take the numpy path from now on."""
        n = plan.gather.rows
        LOGGER.warning("model %r: a batch of %d requests failed through bound output arrays (outputs whose "
                       "shape depends on the data?); such batches now take the numpy path", self.spec.id, n)
        self._plans[(id(plan.layout), n)] = None

    def _plan_into(self, plan: _Plan, payloads: np.ndarray, out: np.ndarray, max_result_bytes: int):
        """Serve n requests through a plan into ``out`` ((n, plan.width) uint8): True;
        False where the numpy path would not serve them either (a request's
        header bytes differ from the layout's, or the result is over
        max_result_bytes), with nothing changed; or _PLAN_FAILED: the bound
        run failed (outputs whose shape differs from the bound arrays', say),
        nothing has changed but the model's run counters, and the numpy path
        must serve the tick."""
        if plan.width > max_result_bytes or plan.gather.run(payloads) != plan.gather.rows:
            return False
        try:
            timed_run(self.stats, self.session.run_with_iobinding, plan.binding)
        except Exception:  # noqa: BLE001 - the numpy path runs the model again and reports any error
            return _PLAN_FAILED
        plan.scatter.run(dst=out)
        return True

    def _make_plan(self, lay: _Layout, payloads: np.ndarray, outputs: list[np.ndarray],
                   expected: np.ndarray) -> _Plan | None:
        """A native path for later ticks like this one, or None where none applies.

        The inputs and outputs get arrays of their own, bound to the session
        (IOBinding: no feeds to convert, no outputs to allocate per call);
        the gather program checks each request's header bytes against the
        layout's and copies its element data into the inputs, the scatter
        program writes encode_tensor_matrix's bytes from the outputs.  The
        plan serves later ticks only after it has reproduced this tick's
        result bytes (`expected`) exactly, with one run of its own.
        """
        n, size = payloads.shape
        layout = tensor_matrix_layout([o.reshape((n, -1) + o.shape[1:]) for o in outputs])
        if (layout is None or any(code == 9 for code, _, _, _ in lay.records)  # bool inputs are normalised
                or any(o.dtype != le for o, (_, _, _, _, le) in zip(outputs, layout[1]))
                or sum(o.nbytes for o in outputs) > _SCRATCH_MAX_BYTES
                or n * sum(nbytes for _, _, _, nbytes in lay.records) > _SCRATCH_MAX_BYTES):
            return None
        width, parts = layout
        total = outputs[0].shape[0]
        inputs = decode_tensor_arrays(n, lay.records)
        outs = [aligned_empty(o.shape, o.dtype) for o in outputs]
        heads = [h for h in lay.headers if h] + [head for _, _, head, _, _ in parts if head]
        gather = [(EQUAL, SRC_BASE, lo, size, address(head), 0, hi - lo)
                  for (lo, hi), head in zip(lay.ranges, lay.headers) if head]
        gather += [(COPY, SRC_BASE, off, size, address(a), nbytes, nbytes)
                   for a, (_, _, off, nbytes) in zip(inputs, lay.records) if nbytes]
        scatter = []
        for o, (lo, hi, head, end, _) in zip(outs, parts):
            if head:
                scatter.append((FILL, DST_BASE, address(head), 0, lo, width, hi - lo))
            if end > hi:
                scatter.append((COPY, DST_BASE, address(o), end - hi, hi, width, end - hi))
        try:
            binding = self.session.io_binding()
            for t, a in zip(self.inputs, inputs):
                flat = a.reshape((total,) + a.shape[2:])
                binding.bind_input(t.name, "cpu", 0, flat.dtype.type, list(flat.shape), address(flat))
            for name, o in zip(self.output_names, outs):
                binding.bind_output(name, "cpu", 0, o.dtype.type, list(o.shape), address(o))
            plan = _Plan(lay, size, width, RowProgram(gather, inputs + heads, n), RowProgram(scatter, outs + heads, n),
                         binding)
        except Exception as e:  # noqa: BLE001 - e.g. a binding ONNX Runtime refuses; the numpy path stays
            LOGGER.info("model %r: no native plan for batches of %d (%s)", self.spec.id, n, e)
            return None
        got = np.empty_like(expected)
        served = self._plan_into(plan, payloads, got, expected.shape[1])
        if served is _PLAN_FAILED:
            return None  # e.g. outputs whose shape depends on the data
        if not served or not np.array_equal(got, expected):
            LOGGER.warning("model %r: the native uniform path did not reproduce a batch's results; not used",
                           self.spec.id)
            return None
        return plan

    def _scratch_arrays(self, n: int, records: list[TensorRecord]) -> list[np.ndarray] | None:
        """Input arrays for n requests of `records`' layout, reused from tick to tick; None: decode into new ones.

        Reuse is safe because session.run is done with its inputs when it
        returns and the outputs are copied out (encoded) before the next call.
        One set is kept, at most _SCRATCH_MAX_BYTES.
        """
        want = (n, tuple((code, dims) for code, dims, _, _ in records))
        if self._scratch is not None and self._scratch[0] == want:
            return self._scratch[1]
        if n * sum(nbytes for _, _, _, nbytes in records) > _SCRATCH_MAX_BYTES:
            return None
        arrays = decode_tensor_arrays(n, records)
        self._scratch = (want, arrays)
        return arrays

    def _run_group(self, key: tuple, blocks: list[_Block], outcomes: list, max_result_bytes: int, *,
                   batch_fails: bool = False) -> None:
        """Outcomes for the requests of `blocks` (all with shape key `key`), written into outcomes.

        batch_fails: their batched run is known to fail (execute_uniform just
        ran it): run them one by one straight away.
        """
        n_members = sum(len(b.indices) for b in blocks)
        state = self.batch_verified.get(key, 0)
        if n_members >= 2 and self.batching and state >= VERIFY_MEMBERS and not batch_fails:
            batched = self._run_batched(blocks, max_result_bytes)
            if batched is not None:
                for i, outcome in zip(*batched):
                    outcomes[i] = outcome
                return
        order = sorted((i, b, j) for b in blocks for j, i in enumerate(b.indices))  # request order
        results = [self._run_one(b.member(j), max_result_bytes) for _, b, j in order]
        if n_members >= 2 and self.batching and 0 <= state < VERIFY_MEMBERS \
                and all(status == Status.OK for status, _ in results):  # errors prove nothing about batching
            # Not yet trusted: compare with a batched run; the one-at-a-time results are returned.
            batched = self._run_batched(blocks, max_result_bytes)
            if batched is not None:
                if batched[1] == results:
                    self.batch_verified[key] = state + n_members
                else:
                    self.batch_verified[key] = -1
                    LOGGER.info("model %r: batched results differ from unbatched ones for non-batch dims %s; "
                                "those requests will run one at a time", self.spec.id, key)
        for (i, _, _), outcome in zip(order, results):
            outcomes[i] = outcome

    def _run_batched(self, blocks: list[_Block], max_result_bytes: int) -> tuple[list[int], list[Outcome]] | None:
        """One session.run for all members, concatenated in request order.

        Returns (request indices in request order, their outcomes); None means
        "run them one by one".
        """
        total = sum(len(b.indices) * b.rows for b in blocks)
        if len(blocks) == 1:
            # The members are consecutive rows of the block's arrays already.
            dest = None
            indices = blocks[0].indices
            arrays = [a.reshape((total,) + a.shape[2:]) for a in blocks[0].arrays]
        else:
            # Rows of each member in the batch (request order), per block.
            starts, pos = {}, 0
            indices = sorted(i for b in blocks for i in b.indices)
            rows_of = {i: b.rows for b in blocks for i in b.indices}
            for i in indices:
                starts[i] = pos
                pos += rows_of[i]
            dest = [(np.array([starts[i] for i in b.indices], dtype=np.intp)[:, None]
                     + np.arange(b.rows, dtype=np.intp)).reshape(-1) for b in blocks]
            arrays = []
            for k in range(len(self.inputs)):
                first = blocks[0].arrays[k]
                out = aligned_empty((total,) + first.shape[2:], first.dtype)
                for b, rows in zip(blocks, dest):
                    a = b.arrays[k]
                    out[rows] = a.reshape((rows.size,) + a.shape[2:])
                arrays.append(out)
        try:
            outputs = self._run(arrays)
        except Exception:
            # Some member makes the model fail: run separately so only that
            # member gets the error.
            return None
        if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
            LOGGER.warning("model %r: outputs do not follow the batch dimension; batching disabled for it",
                           self.spec.id)
            self.batching = False
            self._layouts.clear()  # their validation results depend on self.batching
            return None
        results: list[Outcome] = []
        by_index: dict[int, Outcome] = {}
        for bi, b in enumerate(blocks):
            n = len(b.indices)
            outs = outputs if dest is None else [o[dest[bi]] for o in outputs]
            encoded = encode_tensor_rows([o.reshape((n, b.rows) + o.shape[1:]) for o in outs])
            size = len(encoded[0])  # members of a block have results of one size
            if size > max_result_bytes:
                failure = (Status.TOO_LARGE, error_payload(f"result is {size} bytes, limit {max_result_bytes}"))
                block_results = [failure] * n
            else:
                block_results = [(Status.OK, payload) for payload in encoded]
            if dest is None:
                results = block_results
            else:
                by_index.update(zip(b.indices, block_results))
        if dest is not None:
            results = [by_index[i] for i in indices]
        return indices, results


class PlanTick:
    """run_plan for many ticks into one result array: a few native calls per tick.

    The inference process's steady state runs this right after popping a
    tick and right around session.run, where every Python operation costs
    several times its usual time (the model has just evicted the caches):
    the programs' result buffer is bound once, and the checks that cannot
    change between ticks (batching, the result width) were made by
    TensorModel.plan_tick.  Same bytes, counters and fallbacks as run_plan.
    """

    __slots__ = ("model", "plan", "rows", "size", "_key", "_gather", "_scatter", "_run", "_binding", "_stats", "_out")

    def __init__(self, model: TensorModel, plan: _Plan, out: np.ndarray) -> None:
        self.model, self.plan = model, plan
        self.rows, self.size = plan.gather.rows, plan.size
        self._key = (id(plan.layout), self.rows)
        self._gather = plan.gather.runner()
        self._scatter = plan.scatter.runner(out)
        self._run = model.session.run_with_iobinding
        self._binding = plan.binding
        self._stats = model.stats
        self._out = out

    def calls(self, requests: np.ndarray):
        """For a ServeStep: (scatter the results into ``out``, gather from
        ``requests`` -- a buffer whose first rows * size bytes will hold the
        payloads) as bound row-program calls; between them, :meth:`run`."""
        return self.plan.scatter.bind(None, self._out), self.plan.gather.bind(requests, None)

    def run(self) -> bool:
        """The model over inputs already gathered (by :meth:`calls`' gather or
        __call__'s): True; False where the bound run failed (the plan is then
        dropped: the numpy path serves such batches)."""
        try:
            timed_run(self._stats, self._run, self._binding)
        except Exception:  # noqa: BLE001 - the numpy path runs the model again and reports any error
            self.model._drop_plan(self.plan)
            return False
        self._stats.requests += self.rows
        return True

    def __call__(self, payloads: np.ndarray) -> bool:
        """Serve ``rows`` requests (payloads: rows * size bytes, C-contiguous)
        into the bound result array: True; False where run_plan would have
        returned False (then the plan may have been dropped, as there)."""
        if self.model._plans.get(self._key) is not self.plan or self._gather(payloads) != self.rows \
                or not self.run():
            return False
        self._scatter()
        return True
