"""The vectorised paths give exactly what the per-request algorithms gave.

Decoding, encoding and token selection are done for many requests at once
(`decode_tensor_rows`, `encode_tensor_rows`, `TokenPicker`, the array
bookkeeping of `CausalLM._generate`).  Results must stay bit-identical to
the one-request-at-a-time code they replaced, which tests/inference/_reference.py
keeps verbatim: these tests compare the two on generated inputs, piece by
piece and through whole engines (mixed batches, malformed requests, sampled
and greedy rows in one call, batching verification state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from wasm_engine.inference import (
    MAX_REQUEST_BYTES,
    GenerateRequest,
    GenerationParams,
    InferenceEngine,
    ModelSpec,
    Request,
    Status,
    encode_generate_request,
    encode_tensors,
)
from wasm_engine.inference import _tensor
from wasm_engine.inference._llm import ModelOutputError, Sampler, TokenPicker
from wasm_engine.inference._payloads import (
    ALIGNMENT,
    DTYPE_CODES,
    PayloadError,
    decode_tensor_rows,
    decode_tensors,
    encode_tensor_matrix,
    encode_tensor_rows,
    f32,
    tensor_records,
)

from ._graphs import graph_model, mixed_dtype_model, reshape_model, two_input_model
from ._reference import (
    RefSampler,
    install_reference,
    ref_decode_tensors,
    ref_encode_tensors,
    ref_execute,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------
# Token selection
# ----------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e30, -1e30, 3.4e38, -3.4e38, 1e-30, -np.inf]
temperatures = st.sampled_from([0.0, 0.0, 1e-3, 0.3, 0.7, 1.0, 2.5, 100.0]).map(f32)
top_ps = st.one_of(st.just(1.0), st.just(1.0), st.sampled_from([0.9, 0.5, 1e-6]),
                   st.floats(min_value=1e-7, max_value=1.0)).map(f32).filter(lambda p: 0.0 < p <= 1.0)


@st.composite
def logits_matrix(draw, rows: int, vocab: int, dtype) -> np.ndarray:
    values = st.one_of(st.sampled_from(SPECIAL), st.floats(-50, 50, width=32),
                       st.sampled_from([0.0, 1.0, 2.0]))  # small set: many ties
    z = np.array(draw(st.lists(values, min_size=rows * vocab, max_size=rows * vocab)), dtype=np.float64)
    z = z.reshape(rows, vocab)
    with np.errstate(over="ignore"):
        z = z.astype(dtype)
    # Mostly keep rows valid (not all -inf), so that sampling is exercised.
    for r in range(rows):
        if not np.isfinite(z[r].max()) and draw(st.integers(0, 3)):
            z[r, draw(st.integers(0, vocab - 1))] = 0.0
    return z


@st.composite
def picker_case(draw):
    vocab = draw(st.integers(1, 24))
    n_jobs = draw(st.integers(1, 6))
    params = [(draw(temperatures), draw(st.integers(0, vocab + 2)), draw(top_ps), draw(st.integers(0, 2**64 - 1)))
              for _ in range(n_jobs)]
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16, np.float64]))
    steps = []
    active = list(range(n_jobs))
    for _ in range(draw(st.integers(1, 3))):
        if len(active) > 1 and draw(st.booleans()):  # rows drop out between steps
            active = sorted(draw(st.lists(st.sampled_from(active), min_size=1, unique=True)))
        steps.append((np.array(active, dtype=np.intp), draw(logits_matrix(len(active), vocab, dtype))))
    return params, steps


def _ref_tokens(samplers, logits, jobs):
    """The old per-row loop: row by row, stopping at the first error."""
    return [samplers[k](logits[r]) for r, k in enumerate(jobs.tolist())]


@SETTINGS
@given(picker_case())
def test_token_picker_equals_per_row_sampler(case):
    params, steps = case
    picker = TokenPicker(params)
    ref = [RefSampler(*p) for p in params]
    for jobs, logits in steps:
        try:
            want = _ref_tokens(ref, logits, jobs)
        except ModelOutputError as e:
            with pytest.raises(ModelOutputError) as got:
                picker(logits, jobs)
            if len(jobs) == 1:
                assert str(got.value) == str(e)  # what an unbatched request reports
            return  # a failed step ends the generation
        got = picker(logits, jobs)
        assert got.dtype == np.int64 and got.tolist() == want


@SETTINGS
@given(st.data())
def test_token_picker_large_vocab(data):
    """Long rows take numpy's SIMD loops; NaN / inf anywhere must still be caught."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    vocab = data.draw(st.sampled_from([257, 1000, 4099]))
    rows = data.draw(st.integers(1, 5))
    logits = (rng.standard_normal((rows, vocab)) * data.draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(np.float32)
    if data.draw(st.booleans()):
        logits = np.round(logits)  # ties
    bad = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf, "all-inf"]))
    if bad is not None:
        r = data.draw(st.integers(0, rows - 1))
        if bad == "all-inf":
            logits[r] = -np.inf
        else:
            logits[r, data.draw(st.integers(0, vocab - 1))] = bad
    params = [(data.draw(temperatures), data.draw(st.sampled_from([0, 0, 1, 5, 50, vocab])), data.draw(top_ps),
               data.draw(st.integers(0, 2**64 - 1))) for _ in range(rows)]
    jobs = np.arange(rows, dtype=np.intp)
    ref = [RefSampler(*p) for p in params]
    try:
        want = _ref_tokens(ref, logits, jobs)
    except ModelOutputError:
        with pytest.raises(ModelOutputError):
            TokenPicker(params)(logits, jobs)
        return
    assert TokenPicker(params)(logits, jobs).tolist() == want


@SETTINGS
@given(st.data())
def test_token_picker_exact_boundaries(data):
    """Probability masses and random numbers that land exactly on bucket edges.

    Logits of 0 and -inf give integer cumulative masses, and the uniform
    numbers are forced to multiples of 1/8, so top-p thresholds and targets
    hit bucket edges exactly: the < / <= choices must be Sampler's.
    """
    vocab = data.draw(st.sampled_from([2, 4, 8]))
    rows = data.draw(st.integers(1, 4))
    logits = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.0, -np.inf]), min_size=rows * vocab,
                                         max_size=rows * vocab)), dtype=np.float32).reshape(rows, vocab)
    logits[np.arange(rows), data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows))] = 0.0
    params = [(1.0, data.draw(st.integers(0, vocab)), data.draw(st.sampled_from([1.0, 0.75, 0.5, 0.25, 0.125])), 0)
              for _ in range(rows)]
    us = [data.draw(st.sampled_from([k / 8 for k in range(8)])) for _ in range(rows)]
    picker = TokenPicker(params)
    ref = [RefSampler(*p) for p in params]
    for k in range(rows):
        ref[k].uniform = picker.samplers[k].uniform = (lambda u=us[k]: u)
    jobs = np.arange(rows, dtype=np.intp)
    assert picker(logits, jobs).tolist() == _ref_tokens(ref, logits, jobs)


def test_sampler_is_unchanged():
    """Sampler (still the row-by-row path for bad logits) equals the reference."""
    rng = np.random.default_rng(0)
    for seed in range(200):
        logits = rng.standard_normal(30).astype(np.float32)
        p = (f32(rng.choice([0.0, 0.5, 1.0])), int(rng.integers(0, 40)), f32(rng.choice([1.0, 0.8])), seed)
        assert Sampler(*p)(logits) == RefSampler(*p)(logits)


# ----------------------------------------------------------------------------
# Tensor payloads
# ----------------------------------------------------------------------------

CODES = sorted(DTYPE_CODES)


def _random_tensor(rng, code: int, shape: tuple) -> np.ndarray:
    dt = DTYPE_CODES[code]
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    if code == 9:
        return (raw != 0).reshape(shape)
    a = raw.view(dt).reshape(shape)
    return a.astype(dt.newbyteorder("="))


@st.composite
def tensor_layouts(draw):
    """A list of (dtype code, shape) for one payload."""
    count = draw(st.integers(1, 4))
    return [(draw(st.sampled_from(CODES)),
             tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))) for _ in range(count)]


def _raw_payload(rng, layout, bool_bytes: bool) -> bytes:
    """A valid payload; bool tensors may carry any non-zero byte (the decoder normalises them)."""
    arrays = [_random_tensor(rng, code, shape) for code, shape in layout]
    payload = bytearray(ref_encode_tensors(arrays))
    if bool_bytes:
        for (code, _, off, nbytes) in tensor_records(bytes(payload)):
            if code == 9 and nbytes:
                payload[off:off + nbytes] = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    return bytes(payload)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@SETTINGS
@given(tensor_layouts(), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_decode_tensor_rows_equals_decode_each(layout, n, seed, bool_bytes, subset):
    rng = np.random.default_rng(seed)
    payloads = [_raw_payload(rng, layout, bool_bytes) for _ in range(n)]
    records = tensor_records(payloads[0])
    for p in payloads:  # same layout: same headers, same structure
        assert tensor_records(p) == records
    select = np.array(sorted(rng.choice(n, size=rng.integers(1, n + 1), replace=False))) if subset else None
    rows = list(range(n)) if select is None else select.tolist()
    got = decode_tensor_rows(b"".join(payloads), n, len(payloads[0]), records, select)
    for t, arr in enumerate(got):
        assert arr.flags.c_contiguous and (arr.size == 0 or arr.ctypes.data % ALIGNMENT == 0)
        assert arr.shape[0] == len(rows)
        for j, r in enumerate(rows):
            assert _same(arr[j], ref_decode_tensors(payloads[r])[t])
    for p in payloads:
        for a, b in zip(decode_tensors(p), ref_decode_tensors(p)):
            assert _same(a, b) and (a.size == 0 or a.ctypes.data % ALIGNMENT == 0)


@st.composite
def encodable_arrays(draw):
    n = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(draw(st.integers(1, 3))):
        code = draw(st.sampled_from(CODES))
        shape = (n,) + tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        a = _random_tensor(rng, code, shape)
        how = draw(st.sampled_from(["plain", "big-endian", "strided"]))
        if how == "big-endian" and a.dtype.itemsize > 1:
            a = a.astype(a.dtype.newbyteorder(">"))
        elif how == "strided" and a.ndim >= 2:
            a = np.repeat(a, 2, axis=-1)[..., ::2]  # same values, not contiguous
        out.append(a)
    return out


@SETTINGS
@given(encodable_arrays())
def test_encode_tensor_rows_equals_encode_each(arrays):
    n = arrays[0].shape[0]
    assert encode_tensor_rows(arrays) == [ref_encode_tensors([a[j] for a in arrays]) for j in range(n)]
    assert encode_tensor_rows(arrays) == [encode_tensors([a[j] for a in arrays]) for j in range(n)]
    matrix = encode_tensor_matrix(arrays)
    assert matrix.dtype == np.uint8 and matrix.shape[0] == n
    assert [row.tobytes() for row in matrix] == [ref_encode_tensors([a[j] for a in arrays]) for j in range(n)]


def test_encode_tensor_rows_errors_match():
    for arrays in ([np.zeros((2,) + (1,) * 9, np.float32)],  # rank 9 per row
                   [np.zeros((2, 3), np.complex64)],  # no dtype code
                   [np.zeros((2, 1), np.float32)] * 65):  # too many tensors
        with pytest.raises(ValueError) as want:
            ref_encode_tensors([a[0] for a in arrays])
        with pytest.raises(ValueError) as got:
            encode_tensor_rows(arrays)
        assert str(got.value) == str(want.value)
        assert encode_tensor_matrix(arrays) is None  # its caller takes the path that reports the error


@SETTINGS
@given(tensor_layouts(), st.integers(0, 2**32 - 1), st.data())
def test_tensor_records_errors_match_decoder(layout, seed, data):
    rng = np.random.default_rng(seed)
    payload = bytearray(_raw_payload(rng, layout, False))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "header"]))
    if how == "flip" and payload:
        for _ in range(data.draw(st.integers(1, 3))):
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        del payload[data.draw(st.integers(0, len(payload))):]
    elif how == "extend":
        payload += bytes(data.draw(st.integers(1, 9)))
    else:
        payload[data.draw(st.integers(0, min(12, len(payload) - 1)))] = data.draw(st.integers(0, 255))
    payload = bytes(payload)

    def outcome(fn):
        try:
            return fn(payload)
        except (PayloadError, ValueError) as e:  # ValueError: a decoder that lets numpy's errors through
            return type(e), getattr(e, "status", None), str(e)

    want = outcome(ref_decode_tensors)
    if isinstance(want, tuple):
        assert outcome(tensor_records) == want
        assert outcome(decode_tensors) == want
    else:
        assert all(_same(a, b) for a, b in zip(decode_tensors(payload), want))


def test_unshapeable_empty_tensor_is_only_its_own_requests_error(tensor_specs):
    """Regression: an empty tensor whose other dims overflow numpy's size made the decoder
    raise ValueError, which the engine reported as INTERNAL for every request to the model
    that tick — one agent could fail everyone's requests. It is now that request's MALFORMED."""
    huge = struct.pack("<BBHBBHIII", 1, 1, 0, 1, 3, 0, 0, 2**32 - 1, 2**32 - 1)
    fine = encode_tensors([np.ones((1, 16), np.float32)])
    new, _ref = _engine_pair(tensor_specs)
    got = new.execute([Request(1, 0, fine), Request(2, 0, huge), Request(3, 0, fine), Request(4, 1, fine)])
    assert [r.status for r in got[:3]] == [Status.OK, Status.MALFORMED, Status.OK]
    assert got[3].status != Status.INTERNAL  # model 1 judges its own request (wrong shape for it)
    assert b"too large" in got[1].payload


def test_huge_empty_tensors_are_not_stacked(tensor_specs):
    """Empty tensors with large (but allocatable) other dims are decoded one request at a time."""
    payload = encode_tensors([np.zeros((0, 16), np.float32)])
    odd = struct.pack("<BBHBBHIII", 1, 1, 0, 1, 3, 0, 2**31, 0, 2**31)  # rank 3: BAD_INPUT for the MLP
    reqs = [Request(i, 0, payload) for i in range(3)] + [Request(10 + i, 0, odd) for i in range(3)]
    new, _ref = _engine_pair(tensor_specs)
    for _ in range(4):
        got = new.execute(reqs)
        # the empty [0, 16] requests succeed; the unshapeable ones fail alone
        assert [r.status for r in got] == [Status.OK] * 3 + [Status.MALFORMED] * 3


# ----------------------------------------------------------------------------
# Tensor engines: new vs reference on random mixed batches
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensor_specs(tmp_path_factory, tensor_model_path):
    tmp = tmp_path_factory.mktemp("fast_tensor")
    vi = helper.make_tensor_value_info
    two, reshape, mixed = two_input_model(tmp), reshape_model(tmp), mixed_dtype_model(tmp)
    scalar = graph_model(tmp, "scalar", [helper.make_node("Add", ["x", "x"], ["y"])],
                          [vi("x", TensorProto.FLOAT, [])], [vi("y", TensorProto.FLOAT, [])])
    static = graph_model(tmp, "static", [helper.make_node("Add", ["x", "x"], ["y"])],
                          [vi("x", TensorProto.INT64, [2, 3])], [vi("y", TensorProto.INT64, [2, 3])])
    return [ModelSpec("mlp", tensor_model_path), ModelSpec("two", two), ModelSpec("reshape", reshape),
            ModelSpec("mixed", mixed), ModelSpec("scalar", scalar), ModelSpec("static", static),
            ModelSpec("mlp_unbatched", tensor_model_path, batch=False)]


def _tensor_request(rng, i: int) -> Request:
    """One random request for the tensor engine: mostly valid, often same-shaped, sometimes broken."""
    kind = rng.choice(["mlp", "mlp", "mlp", "two", "two", "reshape", "mixed", "mixed", "scalar", "static",
                       "unbatched", "bad_shape", "malformed", "routing"])
    f32_ = np.float32
    if kind in ("mlp", "unbatched"):
        rows = int(rng.choice([1, 1, 1, 2, 3, 0]))
        x = rng.standard_normal((rows, 16)).astype(f32_)
        if rng.random() < 0.05:
            x[..., 0] = np.nan
        payload: object = encode_tensors([x])
        model = 0 if kind == "mlp" else 6
    elif kind == "two":
        rows, n = int(rng.integers(1, 4)), int(rng.choice([2, 5, 8]))
        payload, model = encode_tensors([rng.standard_normal((rows, n)).astype(f32_),
                                         rng.integers(-5, 5, (rows, 3))]), 1
    elif kind == "reshape":
        payload, model = encode_tensors([rng.standard_normal((1, int(rng.choice([8, 8, 6])))).astype(f32_)]), 2
    elif kind == "mixed":
        # Same payload length, different shapes: (1, 4) and (2, 2) halves; bool bytes not 0/1.
        rows, n = [(1, 4), (2, 2), (1, 4), (4, 1)][int(rng.integers(0, 4))]
        m = rng.integers(0, 3, (rows, 3)).astype(np.uint8)
        raw = bytearray(encode_tensors([m, rng.standard_normal((rows, n)).astype(np.float16)]))
        raw[4] = 9  # dtype code of the first tensor: bool
        payload, model = bytes(raw), 3
    elif kind == "scalar":
        payload, model = encode_tensors([np.array(rng.standard_normal(), f32_)]), 4
    elif kind == "static":
        payload, model = encode_tensors([rng.integers(-9, 9, (2, int(rng.choice([3, 3, 4]))))]), 5
    elif kind == "bad_shape":
        bad = [np.zeros((1, 16), np.float64), np.zeros((2, 8), f32_), np.zeros(16, f32_)][int(rng.integers(0, 3))]
        payload, model = encode_tensors([bad]), 0
    elif kind == "malformed":
        good = bytearray(encode_tensors([rng.standard_normal((1, 16)).astype(f32_)]))
        how = rng.integers(0, 6)
        if how == 0:
            del good[int(rng.integers(0, len(good))):]
        elif how == 1:
            good += b"\x00"
        elif how == 2:
            good[4] = 99  # unknown dtype
        elif how == 3:
            good[2] = 1  # reserved
        elif how == 4:
            good = bytearray(rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes())
        else:
            good = bytearray(encode_generate_request(GenerateRequest("hi")))
        payload, model = bytes(good), int(rng.choice([0, 1, 6]))
    else:
        x = encode_tensors([np.ones((1, 16), f32_)])
        model, payload = [(9, x), (-1, x), (True, x), ("0", x), (0, 12345), (0, b"")][int(rng.integers(0, 6))]
    if isinstance(payload, bytes) and rng.random() < 0.15:
        payload = (bytearray, memoryview)[int(rng.integers(0, 2))](payload)
    return Request(1000 + i, model, payload)


def _engine_pair(specs, **kw):
    new = InferenceEngine(specs, provider="cpu", **kw)
    ref = InferenceEngine(specs, provider="cpu", **kw)
    install_reference(ref)
    return new, ref


def _model_state(engine):
    return [(m.batching, dict(m.batch_verified) if isinstance(m.batch_verified, dict) else m.batch_verified)
            for m in engine._models]


@pytest.mark.parametrize("max_templates", [_tensor.MAX_TEMPLATES, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tensor_engine_equals_reference(tensor_specs, seed, max_templates, monkeypatch):
    monkeypatch.setattr(_tensor, "MAX_TEMPLATES", max_templates)
    rng = np.random.default_rng(seed)
    new, ref = _engine_pair(tensor_specs, max_result_bytes=60 if seed == 2 else 1 << 20)
    for call in range(25):
        n = int(rng.choice([1, 2, 5, 16, 40]))
        reqs = [_tensor_request(rng, i) for i in range(n)]
        if rng.random() < 0.3:  # many identical requests, as agents send
            reqs += [Request(2000 + k, reqs[0].model_index, reqs[0].payload) for k in range(12)]
        got, want = new.execute(reqs), ref_execute(ref, reqs)
        assert got == want, f"call {call}"
        assert _model_state(new) == _model_state(ref), f"call {call}"
    # Batching got verified along the way, so both the checked and the trusted paths ran.
    if seed != 2:
        assert any(v >= _tensor.VERIFY_MEMBERS for v in new._models[0].batch_verified.values())


def test_tensor_engine_large_uniform_batches(tensor_specs):
    """The benchmark's case: many byte-identical headers, batching trusted, on every model kind."""
    rng = np.random.default_rng(7)
    new, ref = _engine_pair(tensor_specs)
    for call in range(6):
        reqs = [Request(i, 0, encode_tensors([rng.standard_normal((1, 16)).astype(np.float32)])) for i in range(64)]
        assert new.execute(reqs) == ref_execute(ref, reqs)
    assert new._models[0].batch_verified[((16,),)] >= _tensor.VERIFY_MEMBERS


def test_tensor_engine_oversized_request(tensor_specs):
    new, ref = _engine_pair(tensor_specs[:1])
    reqs = [Request(1, 0, b"\x01" * (MAX_REQUEST_BYTES + 1)),
            Request(2, 0, encode_tensors([np.ones((1, 16), np.float32)]))]
    assert new.execute(reqs) == ref_execute(ref, reqs)


# ----------------------------------------------------------------------------
# Causal LMs: new vs reference on random mixed batches
# ----------------------------------------------------------------------------

PROMPTS = ["abcd", "wxyz", "The", "sea!", "Tea", "boat", "bay", "lamp", "Hello there", "Once upon",
           "x" * 118, "y" * 126]


def _lm_request(rng, i: int, model: int) -> Request:
    kind = rng.choice(["greedy", "greedy", "sampled", "sampled", "sampled", "defaults", "bad"])
    params: dict = dict(max_new_tokens=int(rng.integers(0, 14)), seed=int(rng.integers(0, 2**64, dtype=np.uint64)),
                        return_token_ids=bool(rng.random() < 0.7))
    if kind == "sampled":
        params.update(temperature=float(rng.choice([0.3, 0.8, 1.0, 2.0, 1e-3])),
                      top_k=int(rng.choice([0, 0, 1, 5, 40, 500])),
                      top_p=float(rng.choice([1.0, 1.0, 0.9, 0.5, 1e-6])))
    if rng.random() < 0.3:
        params["stop_token_ids"] = tuple(int(t) for t in rng.integers(0, 97, int(rng.integers(1, 5))))
    if kind == "defaults":
        params = dict(use_defaults=True, stop_token_ids=params.get("stop_token_ids", ()))
    prompt = str(rng.choice(PROMPTS))
    if kind == "bad":
        bad = int(rng.integers(0, 4))
        if bad == 0:
            return Request(i, model, encode_generate_request(GenerateRequest("", max_new_tokens=3)))
        if bad == 1:
            return Request(i, model, encode_generate_request(GenerateRequest("z" * 129, max_new_tokens=3)))
        if bad == 2:
            return Request(i, model, encode_tensors([np.zeros(3, np.float32)]))
        return Request(i, model, encode_generate_request(GenerateRequest("hi", temperature=-1.0)))
    return Request(i, model, encode_generate_request(GenerateRequest(prompt, **params)))


@pytest.fixture(scope="module")
def lm_specs(tiny_lm_dir, tiny_lm_no_pos_dir, tiny_lm_f16_dir):
    return [
        ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm",
                  generation=GenerationParams(max_new_tokens=6, temperature=0.9, top_k=5, seed=11,
                                              stop_token_ids=(3,))),
        ModelSpec("lm_no_pos", tiny_lm_no_pos_dir / "model.onnx", kind="causal_lm"),
        ModelSpec("lm_f16", tiny_lm_f16_dir / "model.onnx", kind="causal_lm", max_context=40),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lm_engine_equals_reference(lm_specs, seed):
    rng = np.random.default_rng(seed)
    limit = 60 if seed == 2 else 1 << 20  # small: many TOO_LARGE results
    new, ref = _engine_pair(lm_specs, max_result_bytes=limit)
    for call in range(6):
        n = int(rng.choice([1, 3, 12, 24]))
        reqs = [_lm_request(rng, i, int(rng.choice([0, 0, 1, 2]))) for i in range(n)]
        # And a group of equal-length prompts with mixed parameters, so batches form.
        for i in range(6):
            params = dict(max_new_tokens=int(rng.integers(1, 12)), seed=i, return_token_ids=True,
                          stop_token_ids=tuple(int(t) for t in rng.integers(0, 97, int(rng.integers(0, 3)))))
            if i % 2:
                params.update(temperature=0.9, top_k=int(rng.choice([0, 7])), top_p=float(rng.choice([1.0, 0.8])))
            prompt = ["boat", "lamp", "sea!"][i % 3]
            reqs.insert(int(rng.integers(0, len(reqs) + 1)),
                        Request(100 + i, 0, encode_generate_request(GenerateRequest(prompt, **params))))
        got, want = new.execute(reqs), ref_execute(ref, reqs)
        assert got == want, f"call {call}"
        assert _model_state(new) == _model_state(ref), f"call {call}"
    if limit > 60:
        assert new._models[0].batch_verified >= 8, "batched generation should have been verified and used"


def test_lm_uniform_greedy_batch(lm_specs):
    """The benchmark's case: identical greedy requests, batched once verified."""
    new, ref = _engine_pair(lm_specs[:1])
    payload = encode_generate_request(GenerateRequest("The village elder said", max_new_tokens=20))
    reqs = [Request(i, 0, payload) for i in range(16)]
    for _ in range(3):
        assert new.execute(reqs) == ref_execute(ref, reqs)
    assert new._models[0].batch_verified >= 8


def _poison(engine, token: int, value) -> None:
    """Make the model's logits non-finite for rows whose current input token is `token`."""
    model = engine._models[0]
    real = model.session.run

    def run(names, feeds):
        outs = real(names, feeds)
        rows = np.flatnonzero(feeds["input_ids"][:, -1] == token)
        if rows.size:
            logits = outs[0].copy()
            if value == "all-inf":
                logits[rows, -1, :] = -np.inf
            else:
                logits[rows, -1, 7] = value
            outs = [logits] + list(outs[1:])
        return outs

    model.session.run = run


@pytest.mark.parametrize("value", [np.nan, np.inf, "all-inf", -np.inf])
def test_lm_bad_logits_equal_reference(lm_specs, value):
    new, ref = _engine_pair(lm_specs[:1])
    victim = new._models[0].tokenizer.encode("!").ids[0]
    for engine in (new, ref):
        _poison(engine, victim, value)
    rng = np.random.default_rng(5)
    reqs = []
    for i in range(20):
        prompt = "sea!" if i % 4 == 0 else "boat"
        params = dict(max_new_tokens=6, seed=i) if i % 2 else dict(max_new_tokens=6, temperature=0.8, top_k=3, seed=i)
        reqs.append(Request(i, 0, encode_generate_request(GenerateRequest(prompt, return_token_ids=True, **params))))
    for _ in range(3):
        rng.shuffle(reqs)
        got, want = new.execute(reqs), ref_execute(ref, reqs)
        assert got == want
        if not (isinstance(value, float) and value == -np.inf):  # a partly -inf row is fine
            assert {r.status for r in got} == {Status.OK, Status.MODEL_ERROR}


def test_generation_traces_equal_reference(lm_specs):
    """The hashes used to verify batching see the same logits in both implementations."""
    new, ref = _engine_pair(lm_specs[:1])
    jobs_new = []
    for i, prompt in enumerate(["boat", "lamp", "sea!", "wxyz", "abcd", "Tree"]):
        params = dict(max_new_tokens=3 + i, seed=i, stop_token_ids=(i * 7,))
        if i % 2:
            params.update(temperature=0.8, top_k=10 * (i % 3), top_p=0.9)
        payload = encode_generate_request(GenerateRequest(prompt, **params))
        jobs_new.append(new._models[0]._make_job(i, memoryview(payload)))
    jobs_ref = [dataclasses.replace(j, generated=[], finish=None) for j in jobs_new]
    tn = [hashlib.blake2b() for _ in jobs_new]
    tr = [hashlib.blake2b() for _ in jobs_ref]
    new._models[0]._generate(jobs_new, tn)
    ref._models[0]._generate(jobs_ref, tr)
    assert [(j.generated, j.finish) for j in jobs_new] == [(j.generated, j.finish) for j in jobs_ref]
    assert [t.digest() for t in tn] == [t.digest() for t in tr]


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, "all-inf", "nan-after-max", "nan-is-first"])
def test_all_greedy_picker_checks_only_the_chosen_logits(bad):
    """The all-greedy rows take one argmax and check the chosen logits: that must
    still catch every row that Sampler refuses, with Sampler's message."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 300)).astype(np.float32)
    logits[:, 7] = -np.inf  # -inf entries in valid rows are fine
    if bad == "all-inf":
        logits[2] = -np.inf
    elif bad == "nan-after-max":
        logits[1, logits[1].argmax() + 1] = np.nan
    elif bad == "nan-is-first":
        logits[3, 0] = np.nan
    elif bad is not None:
        logits[2, 100] = bad
    params = [(0.0, 0, 1.0, 0)] * 4
    jobs = np.arange(4, dtype=np.intp)
    ref = [RefSampler(*p) for p in params]
    try:
        want = _ref_tokens(ref, logits, jobs)
    except ModelOutputError as e:
        with pytest.raises(ModelOutputError, match=str(e).replace("+", r"\+")):
            TokenPicker(params)(logits, jobs)
        return
    assert bad is None
    assert TokenPicker(params)(logits, jobs).tolist() == want == logits.argmax(axis=1).tolist()


def test_unshapeable_empty_tensor_is_malformed_in_every_decoder():
    """The case hypothesis found: an empty tensor whose other dims overflow numpy's size."""
    import struct as _struct

    dims = (0, 2**32 - 1, 2**32 - 1)
    payload = bytes([1, 1, 0, 0]) + _struct.pack("<BBH", 1, len(dims), 0) + _struct.pack("<3I", *dims)
    for decode in (ref_decode_tensors, tensor_records, decode_tensors):
        with pytest.raises(PayloadError, match=r"tensor 0: shape \[0, 4294967295, 4294967295\] is too large"):
            decode(payload)
