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
"""


from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ._errors import ModelLoadError
from ._models import ModelSpec, OpenedModel, TensorInfo, ort_message
from ._payloads import PayloadError, Status, aligned_empty, decode_tensors, encode_tensors, error_payload

LOGGER = logging.getLogger("wasm_engine.inference")

Outcome = tuple[int, bytes]  # (status, payload) of one request

# Requests per shape key that must give identical results batched and alone
# before that key is batched without checking.
VERIFY_MEMBERS = 8


def _fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class _Parsed:
    arrays: list[np.ndarray]
    rows: int  # size of the batch dimension (only meaningful when batching)
    key: tuple  # non-batch dims of every input: requests with equal keys batch together


class TensorModel:
    kind = "tensor"

    def __init__(self, spec: ModelSpec, opened: OpenedModel) -> None:
        self.spec = spec
        self.session = opened.session
        self.inputs: tuple[TensorInfo, ...] = opened.inputs
        self.outputs: tuple[TensorInfo, ...] = opened.outputs
        self.output_names = [o.name for o in self.outputs]
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

    def _find_batch_symbol(self) -> str | None:
        """The symbolic dim-0 name shared by all inputs and outputs, if any."""
        names = set()
        for t in self.inputs + self.outputs:
            if not t.shape or not isinstance(t.shape[0], str):
                return None
            names.add(t.shape[0])
        return names.pop() if len(names) == 1 else None

    # ------------------------------------------------------------------

    def _parse(self, payload: memoryview) -> _Parsed:
        arrays = decode_tensors(payload)
        if len(arrays) != len(self.inputs):
            expected = ", ".join(t.describe() for t in self.inputs)
            raise PayloadError(Status.BAD_INPUT,
                               f"model {self.spec.id!r} takes {len(self.inputs)} tensor(s) ({expected}), "
                               f"got {len(arrays)}")
        symbols: dict[str, int] = {}
        for info, a in zip(self.inputs, arrays):
            if a.dtype.name != info.dtype:
                raise PayloadError(Status.BAD_INPUT,
                                   f"input {info.name!r}: expected {info.dtype}, got {a.dtype.name}")
            if info.shape is None:
                continue
            if a.ndim != len(info.shape):
                raise PayloadError(Status.BAD_INPUT, f"input {info.name!r}: expected shape {_fmt_shape(info.shape)}, "
                                                     f"got {list(a.shape)}")
            for want, got in zip(info.shape, a.shape):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise PayloadError(Status.BAD_INPUT, f"input {info.name!r}: expected shape "
                                                         f"{_fmt_shape(info.shape)}, got {list(a.shape)}")
                if isinstance(want, str):
                    # The same symbolic name must mean the same size everywhere.
                    if symbols.setdefault(want, got) != got:
                        raise PayloadError(Status.BAD_INPUT, f"dimension {want!r} is {symbols[want]} in one input "
                                                             f"and {got} in {info.name!r}")
        rows = arrays[0].shape[0] if self.batching else 0
        key = tuple(a.shape[1:] for a in arrays)
        return _Parsed(arrays, rows, key)

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {t.name: a for t, a in zip(self.inputs, arrays)}
        return self.session.run(self.output_names, feeds)

    def _encode(self, outputs: list[np.ndarray], max_result_bytes: int) -> Outcome:
        payload = encode_tensors(outputs)
        if len(payload) > max_result_bytes:
            return Status.TOO_LARGE, error_payload(
                f"result is {len(payload)} bytes, limit {max_result_bytes}")
        return Status.OK, payload

    def _run_one(self, parsed: _Parsed, max_result_bytes: int) -> Outcome:
        try:
            outputs = self._run(parsed.arrays)
        except Exception as e:  # ORT rejected this request's tensors
            return Status.MODEL_ERROR, error_payload(f"model {self.spec.id!r}: {ort_message(e)}")
        return self._encode(outputs, max_result_bytes)

    def execute(self, payloads: list[memoryview], max_result_bytes: int) -> list[Outcome]:
        """Run a group of requests for this model; one outcome per payload, in order."""
        outcomes: list[Outcome | None] = [None] * len(payloads)
        groups: dict[tuple, list[tuple[int, _Parsed]]] = {}
        for i, p in enumerate(payloads):
            try:
                parsed = self._parse(p)
            except PayloadError as e:
                outcomes[i] = (e.status, error_payload(str(e)))
                continue
            # Without batching every request is its own group (key = its index).
            key = parsed.key if self.batching else (i,)
            groups.setdefault(key, []).append((i, parsed))

        # dicts keep insertion order: groups run in order of first appearance.
        for key, members in groups.items():
            for (i, _), outcome in zip(members, self._run_group(key, [p for _, p in members], max_result_bytes)):
                outcomes[i] = outcome
        return [o if o is not None else (Status.INTERNAL, b"no outcome") for o in outcomes]

    def _run_group(self, key: tuple, members: list[_Parsed], max_result_bytes: int) -> list[Outcome]:
        def alone() -> list[Outcome]:
            return [self._run_one(m, max_result_bytes) for m in members]

        if len(members) < 2 or not self.batching:
            return alone()
        state = self.batch_verified.get(key, 0)
        if state < 0:
            return alone()
        if state >= VERIFY_MEMBERS:
            return self._run_batched(members, max_result_bytes) or alone()
        # Not yet trusted: run both ways, return the one-at-a-time results.
        results = alone()
        if any(status != Status.OK for status, _ in results):
            return results  # errors prove nothing about batching
        batched = self._run_batched(members, max_result_bytes)
        if batched is None:
            return results
        if batched == results:
            self.batch_verified[key] = state + len(members)
        else:
            self.batch_verified[key] = -1
            LOGGER.info("model %r: batched results differ from unbatched ones for non-batch dims %s; "
                        "those requests will run one at a time", self.spec.id, key)
        return results

    def _run_batched(self, members: list[_Parsed], max_result_bytes: int) -> list[Outcome] | None:
        """One session.run for all members; None means "run them one by one"."""
        total = sum(m.rows for m in members)
        arrays = []
        for k in range(len(self.inputs)):
            parts = [m.arrays[k] for m in members]
            out = aligned_empty((total,) + parts[0].shape[1:], parts[0].dtype)
            arrays.append(np.concatenate(parts, axis=0, out=out))
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
            return None
        result = []
        start = 0
        for m in members:
            stop = start + m.rows
            result.append(self._encode([o[start:stop] for o in outputs], max_result_bytes))
            start = stop
        return result
