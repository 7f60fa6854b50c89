"""Reference implementations: the inference core's per-request algorithms as they were
before decoding, encoding and token selection were vectorised over requests.

The engine must give bit-identical results to these (determinism: replay logs
compare result bytes), so the tests run both on the same requests and compare.
Everything here is a verbatim copy of the earlier code (one request, one row at
a time), adapted only to live outside the package:

* `ref_decode_tensors` / `ref_encode_tensors`: the tensor payload codecs;
* `RefSampler`: the per-row token sampler;
* `RefTensorModel` / `RefCausalLM`: subclasses that put the old `execute`
  (parse each request, group, batch, encode each result) and the old
  `_generate` (a `RefSampler` per row, Python bookkeeping per row and step)
  back in place of the new ones;
* `ref_execute`: the old `InferenceEngine.execute` routing;
* `ref_execute_batch`: the old `execute_batch` of the inference process (a
  `Request` per record, `ref_execute`, a loop over the results).

`install_reference(engine)` turns an engine's loaded models into the reference
classes, so two engines on the same model files can be compared call by call.
"""

from __future__ import annotations

import logging
import math
import operator
import struct
from dataclasses import dataclass

import numpy as np

from wasm_engine.inference import K_INF_RESULT, Request, Result, request_id
from wasm_engine.inference._llm import CausalLM, ModelOutputError, _Job
from wasm_engine.inference._models import ort_message
from wasm_engine.inference._payloads import (
    DTYPE_CODES,
    FORMAT_TENSORS,
    MAX_RANK,
    MAX_REQUEST_BYTES,
    MAX_TENSORS,
    FinishReason,
    PayloadError,
    Status,
    aligned_copy,
    aligned_empty,
    dtype_code,
    error_payload,
)
from wasm_engine.inference._tensor import VERIFY_MEMBERS, TensorModel, _fmt_shape

LOGGER = logging.getLogger("wasm_engine.inference")

_TENSORS_HEADER = struct.Struct("<BBH")
_TENSOR_RECORD = struct.Struct("<BBH")


# -- tensor payloads ---------------------------------------------------------


def ref_encode_tensors(arrays) -> bytes:
    if not 1 <= len(arrays) <= MAX_TENSORS:
        raise ValueError(f"between 1 and {MAX_TENSORS} tensors are encodable, got {len(arrays)}")
    parts = [_TENSORS_HEADER.pack(FORMAT_TENSORS, len(arrays), 0)]
    for a in arrays:
        a = np.asarray(a)
        code = dtype_code(a.dtype)
        if a.ndim > MAX_RANK:
            raise ValueError(f"rank {a.ndim} exceeds {MAX_RANK}")
        if any(d > 0xFFFFFFFF for d in a.shape):
            raise ValueError("dimension does not fit in u32")
        parts.append(_TENSOR_RECORD.pack(code, a.ndim, 0))
        parts.append(struct.pack(f"<{a.ndim}I", *a.shape))
        parts.append(np.ascontiguousarray(a, dtype=DTYPE_CODES[code]).tobytes())
    return b"".join(parts)


def ref_decode_tensors(payload) -> list[np.ndarray]:
    buf = memoryview(payload).cast("B")
    n = len(buf)
    if n < _TENSORS_HEADER.size:
        raise PayloadError(Status.MALFORMED, f"tensor payload too short ({n} bytes)")
    fmt, count, reserved = _TENSORS_HEADER.unpack_from(buf, 0)
    if fmt != FORMAT_TENSORS:
        raise PayloadError(Status.MALFORMED, f"expected tensor payload (format 0x01), got format 0x{fmt:02x}")
    if reserved != 0:
        raise PayloadError(Status.MALFORMED, "reserved header bytes must be zero")
    if not 1 <= count <= MAX_TENSORS:
        raise PayloadError(Status.MALFORMED, f"tensor count {count} not in 1..{MAX_TENSORS}")
    off = _TENSORS_HEADER.size
    out: list[np.ndarray] = []
    for i in range(count):
        if off + _TENSOR_RECORD.size > n:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: truncated record header")
        code, rank, reserved = _TENSOR_RECORD.unpack_from(buf, off)
        off += _TENSOR_RECORD.size
        dt = DTYPE_CODES.get(code)
        if dt is None:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: unknown dtype code {code}")
        if rank > MAX_RANK or reserved != 0:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: rank {rank} > {MAX_RANK} or reserved bytes set")
        if off + 4 * rank > n:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: truncated dims")
        dims = struct.unpack_from(f"<{rank}I", buf, off)
        off += 4 * rank
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > n - off:
            raise PayloadError(Status.MALFORMED,
                               f"tensor {i}: shape {list(dims)} needs {nbytes} data bytes, {n - off} left")
        try:
            arr = aligned_empty(dims, dt.newbyteorder("="))
        except ValueError:  # an empty tensor whose other dims overflow what numpy can shape
            raise PayloadError(Status.MALFORMED, f"tensor {i}: shape {list(dims)} is too large") from None
        if nbytes:
            raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=off)
            arr[...] = (raw != 0).reshape(dims) if code == 9 else raw.view(dt).reshape(dims)
        off += nbytes
        out.append(arr)
    if off != n:
        raise PayloadError(Status.MALFORMED, f"{n - off} trailing bytes after the last tensor")
    return out


# -- tensor models -----------------------------------------------------------


@dataclass
class _Parsed:
    arrays: list[np.ndarray]
    rows: int
    key: tuple


class RefTensorModel(TensorModel):
    """TensorModel with the per-request execute of before."""

    def _parse(self, payload) -> _Parsed:
        arrays = ref_decode_tensors(payload)
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
                    if symbols.setdefault(want, got) != got:
                        raise PayloadError(Status.BAD_INPUT, f"dimension {want!r} is {symbols[want]} in one input "
                                                             f"and {got} in {info.name!r}")
        rows = arrays[0].shape[0] if self.batching else 0
        key = tuple(a.shape[1:] for a in arrays)
        return _Parsed(arrays, rows, key)

    def _encode(self, outputs, max_result_bytes: int):
        payload = ref_encode_tensors(outputs)
        if len(payload) > max_result_bytes:
            return Status.TOO_LARGE, error_payload(
                f"result is {len(payload)} bytes, limit {max_result_bytes}")
        return Status.OK, payload

    def _run_one(self, parsed, max_result_bytes: int):
        try:
            outputs = self._run(parsed.arrays)
        except Exception as e:
            return Status.MODEL_ERROR, error_payload(f"model {self.spec.id!r}: {ort_message(e)}")
        return self._encode(outputs, max_result_bytes)

    def execute(self, payloads, max_result_bytes: int):
        outcomes = [None] * len(payloads)
        groups: dict[tuple, list] = {}
        for i, p in enumerate(payloads):
            try:
                parsed = self._parse(p)
            except PayloadError as e:
                outcomes[i] = (e.status, error_payload(str(e)))
                continue
            key = parsed.key if self.batching else (i,)
            groups.setdefault(key, []).append((i, parsed))
        for key, members in groups.items():
            for (i, _), outcome in zip(members, self._run_group(key, [p for _, p in members], max_result_bytes)):
                outcomes[i] = outcome
        return [o if o is not None else (Status.INTERNAL, b"no outcome") for o in outcomes]

    def _run_group(self, key, members, max_result_bytes):
        def alone():
            return [self._run_one(m, max_result_bytes) for m in members]

        if len(members) < 2 or not self.batching:
            return alone()
        state = self.batch_verified.get(key, 0)
        if state < 0:
            return alone()
        if state >= VERIFY_MEMBERS:
            return self._run_batched(members, max_result_bytes) or alone()
        results = alone()
        if any(status != Status.OK for status, _ in results):
            return results
        batched = self._run_batched(members, max_result_bytes)
        if batched is None:
            return results
        if batched == results:
            self.batch_verified[key] = state + len(members)
        else:
            self.batch_verified[key] = -1
        return results

    def _run_batched(self, members, max_result_bytes):
        total = sum(m.rows for m in members)
        arrays = []
        for k in range(len(self.inputs)):
            parts = [m.arrays[k] for m in members]
            out = aligned_empty((total,) + parts[0].shape[1:], parts[0].dtype)
            arrays.append(np.concatenate(parts, axis=0, out=out))
        try:
            outputs = self._run(arrays)
        except Exception:
            return None
        if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
            self.batching = False
            return None
        result = []
        start = 0
        for m in members:
            stop = start + m.rows
            result.append(self._encode([o[start:stop] for o in outputs], max_result_bytes))
            start = stop
        return result


# -- causal LMs ---------------------------------------------------------------


class RefSampler:
    """One row of logits -> one token id (the per-row sampler of before)."""

    def __init__(self, temperature: float, top_k: int, top_p: float, seed: int) -> None:
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.greedy = self.temperature == 0.0
        self._bitgen = None if self.greedy else np.random.Philox(key=int(seed))

    def uniform(self) -> float:
        assert self._bitgen is not None
        return (int(self._bitgen.random_raw()) >> 11) * (1.0 / 9007199254740992.0)

    def __call__(self, logits: np.ndarray) -> int:
        z = np.asarray(logits, dtype=np.float64)
        if np.isnan(z).any() or np.isposinf(z).any():
            raise ModelOutputError("model produced NaN or +inf logits")
        if self.greedy:
            if np.isneginf(z).all():
                raise ModelOutputError("model produced only -inf logits")
            return int(np.argmax(z))
        z = z / self.temperature
        candidates = None
        if self.top_k > 0 or self.top_p < 1.0:
            order = np.argsort(-z, kind="stable")
            if self.top_k > 0:
                order = order[: self.top_k]
            candidates = order
            z = z[order]
        zmax = z.max()
        if not np.isfinite(zmax):
            raise ModelOutputError("model produced only -inf logits")
        cdf = np.cumsum(np.exp(z - zmax))
        if self.top_p < 1.0:
            keep = int(np.searchsorted(cdf, self.top_p * cdf[-1], side="left")) + 1
            cdf = cdf[: min(keep, len(cdf))]
        target = self.uniform() * cdf[-1]
        i = min(int(np.searchsorted(cdf, target, side="right")), len(cdf) - 1)
        return int(candidates[i]) if candidates is not None else i


class RefCausalLM(CausalLM):
    """CausalLM with the per-row generation loop (and model-call feeds) of before."""

    def forward(self, input_ids, past=None, past_len: int = 0):
        batch, seq = input_ids.shape
        if past is None:
            past, past_len = self.empty_past(batch), 0
        lay = self.layout
        mask = aligned_empty((batch, past_len + seq), lay.mask_dtype)
        mask[...] = 1
        feeds = {
            "input_ids": aligned_copy(input_ids, lay.input_ids_dtype),
            lay.mask_name: mask,
        }
        if lay.position_dtype is not None:
            pos = np.arange(past_len, past_len + seq, dtype=lay.position_dtype)
            feeds["position_ids"] = aligned_copy(np.broadcast_to(pos, (batch, seq)))
        if lay.cache_branch:
            feeds["use_cache_branch"] = np.array([past_len > 0], dtype=np.bool_)
        for slot, arr in zip(lay.past, past):
            feeds[slot.input_name] = arr
        outs = self.session.run(self.output_names, feeds)
        return outs[0], outs[1:]

    def _generate(self, jobs: list[_Job], traces=None) -> None:
        samplers = [RefSampler(*job.sampling) for job in jobs]
        active = [k for k, job in enumerate(jobs) if not self._ref_finished(job)]
        if not active:
            return
        tokens = np.array([jobs[k].prompt_ids for k in active], dtype=np.int64)
        past = None
        past_len = 0
        while active:
            logits, present = self.forward(tokens, past, past_len)
            past_len += tokens.shape[1]
            last = logits[:, -1, :]
            keep: list[int] = []
            for row, k in enumerate(active):
                if traces is not None:
                    traces[k].update(np.ascontiguousarray(last[row]).tobytes())
                jobs[k].generated.append(samplers[k](last[row]))
                if not self._ref_finished(jobs[k]):
                    keep.append(row)
            if len(keep) < len(active):
                idx = np.array(keep, dtype=np.intp)
                present = [np.take(p, idx, axis=0, out=aligned_empty((len(keep),) + p.shape[1:], p.dtype))
                           for p in present]
            active = [active[r] for r in keep]
            past = present
            tokens = np.array([[jobs[k].generated[-1]] for k in active], dtype=np.int64).reshape(len(active), 1)

    def _ref_finished(self, job: _Job) -> bool:
        if job.generated and job.generated[-1] in job.stops:
            job.finish = FinishReason.STOP_TOKEN
        elif len(job.generated) >= job.max_new_tokens:
            job.finish = FinishReason.MAX_NEW_TOKENS
        elif self.max_context is not None and len(job.prompt_ids) + len(job.generated) > self.max_context:
            job.finish = FinishReason.CONTEXT_FULL
        return job.finish is not None


# -- engine ------------------------------------------------------------------


def _ref_precheck(engine, req):
    try:
        index = operator.index(req.model_index)
    except TypeError:
        index = -1
    if not 0 <= index < len(engine._models):
        return Status.UNKNOWN_MODEL, error_payload(
            f"unknown model index {req.model_index} (engine has {len(engine._models)} model(s))")
    try:
        size = memoryview(req.payload).nbytes
    except TypeError:
        return Status.MALFORMED, error_payload("payload is not a bytes-like object")
    if size > MAX_REQUEST_BYTES:
        return Status.TOO_LARGE, error_payload(f"request is {size} bytes, limit {MAX_REQUEST_BYTES}")
    return None


def ref_execute(engine, requests) -> list[Result]:
    """InferenceEngine.execute as it was (on whatever model objects `engine` holds)."""
    requests = list(requests)
    outcomes = [None] * len(requests)
    by_model: dict[int, list[int]] = {}
    for i, req in enumerate(requests):
        outcome = _ref_precheck(engine, req)
        if outcome is not None:
            outcomes[i] = outcome
        else:
            by_model.setdefault(operator.index(req.model_index), []).append(i)
    for model_index, members in by_model.items():
        model = engine._models[model_index]
        try:
            payloads = [memoryview(requests[i].payload).cast("B") for i in members]
            group = model.execute(payloads, engine.max_result_bytes)
        except Exception:
            failure = (Status.INTERNAL, error_payload("internal inference error (see inference log)"))
            group = [failure] * len(members)
        for i, outcome in zip(members, group):
            outcomes[i] = outcome
    return [Result(req.request_id, int(o[0]), bytes(o[1])) for req, o in zip(requests, outcomes)]


def ref_execute_batch(engine, requests, max_result_bytes: int):
    """execute_batch as it was (on whatever model objects `engine` holds): RecordBatch in, RecordBatch out."""
    from wasm_engine.shm_protocol import RecordBatch

    h = requests.headers
    reqs = [Request(request_id(int(h[i]["source"]), int(h[i]["seq"])), int(h[i]["destination"]),
                    requests.payload_of(i)) for i in range(len(requests))]
    results = ref_execute(engine, reqs)
    pays, lens, status = [], [], []
    for r in results:
        p = r.payload
        if len(p) > max_result_bytes:
            p = f"result of {len(p)} bytes exceeds the transport limit {max_result_bytes}".encode()
            st = 5  # Status.TOO_LARGE
        else:
            st = int(r.status)
        pays.append(bytes(p))
        lens.append(len(p))
        status.append(st)
    return RecordBatch.from_arrays(kind=K_INF_RESULT, source=h["destination"], destination=h["source"],
                                   tick=h["tick"], seq=h["seq"], payload_len=np.array(lens, np.uint32),
                                   payload=np.frombuffer(b"".join(pays), np.uint8),
                                   flags=np.array(status, np.uint16))


def install_reference(engine) -> None:
    """Make `engine`'s loaded models run the reference algorithms (call ref_execute on it)."""
    for model in engine._models:
        if isinstance(model, TensorModel):
            model.__class__ = RefTensorModel
        elif isinstance(model, CausalLM):
            model.__class__ = RefCausalLM
