"""execute_batch: the uniform-batch fast path and the general path give what the old code gave.

A tick whose requests are all for one tensor model, with payloads of one
length and one header, whose batching is verified, is served straight from
the payload matrix (`InferenceEngine.execute_uniform`); everything else takes
the general path.  Both are compared record for record (header bytes and
payload bytes) with `ref_execute_batch`, the old execute_batch over the
reference engine of tests/inference/_reference.py, tick by tick, together
with the batching-verification state.  A spy records whether the fast path
served each tick, so the tests also fail when it is never taken or taken
where it must not be.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from wasm_engine.inference import (
    K_INF_REQUEST,
    K_INF_RESULT,
    GenerateRequest,
    InferenceEngine,
    ModelSpec,
    Request,
    Status,
    _tensor,
    decode_tensors,
    done_record,
    encode_generate_request,
    encode_tensors,
    execute_batch,
)
from wasm_engine.inference._payloads import DTYPE_CODES
from wasm_engine.inference._tensor import VERIFY_MEMBERS, TensorModel
from wasm_engine.shm_protocol import RecordBatch

from ._graphs import graph_model, mixed_dtype_model, reshape_model, two_input_model
from ._reference import install_reference, ref_execute, ref_execute_batch

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIMIT = 1 << 20

# Model indices in `engines`.
MLP, TWO, MIXED, IDENT, GATHER, SLICE, RESHAPE, LM = range(8)

# IDENT: one Identity per input, covering the dtypes the other models do not.
IDENT_INPUTS = [("i8", TensorProto.INT8, ["batch", 2]), ("u16", TensorProto.UINT16, ["batch", 3, 2]),
                ("i32", TensorProto.INT32, ["batch"]), ("f64", TensorProto.DOUBLE, ["batch", 2]),
                ("u64", TensorProto.UINT64, ["batch", 1]), ("u8", TensorProto.UINT8, ["batch", 5]),
                ("i16", TensorProto.INT16, ["batch", 1]), ("u32", TensorProto.UINT32, ["batch", 2])]


@pytest.fixture(scope="module")
def specs(tmp_path_factory, tensor_model_path, tiny_lm_dir):
    tmp = tmp_path_factory.mktemp("execute_batch")
    vi = helper.make_tensor_value_info
    two, mixed = two_input_model(tmp), mixed_dtype_model(tmp)
    ident = graph_model(tmp, "ident", [helper.make_node("Identity", [n], [f"y_{n}"]) for n, _, _ in IDENT_INPUTS],
                         [vi(n, t, s) for n, t, s in IDENT_INPUTS], [vi(f"y_{n}", t, s) for n, t, s in IDENT_INPUTS])
    # Out-of-range indices make the run fail: an error that depends on the data, not the shape.
    gather = graph_model(tmp, "gather", [helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)],
                          [vi("x", TensorProto.FLOAT, ["batch", 4]), vi("i", TensorProto.INT64, ["batch", 1])],
                          [vi("y", TensorProto.FLOAT, ["batch", 1])])
    # y = x[:min(k)]: follows the batch dimension only while min(k) >= the rows of x.
    slice_ = graph_model(tmp, "slice", [helper.make_node("ReduceMin", ["k"], ["kmin"], keepdims=0),
                                         helper.make_node("Unsqueeze", ["kmin", "zero"], ["end"]),
                                         helper.make_node("Slice", ["x", "zero", "end", "zero"], ["y"])],
                          [vi("x", TensorProto.FLOAT, ["batch", 3]), vi("k", TensorProto.INT64, ["batch", 1])],
                          [vi("y", TensorProto.FLOAT, ["batch", 3])],
                          [helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    reshape = reshape_model(tmp)
    return [ModelSpec("mlp", tensor_model_path), ModelSpec("two", two), ModelSpec("mixed", mixed),
            ModelSpec("ident", ident), ModelSpec("gather", gather), ModelSpec("slice", slice_),
            ModelSpec("reshape", reshape), ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm")]


class Pair:
    """A working-tree engine and a reference engine on the same models, fed the same ticks."""

    def __init__(self, specs, max_result_bytes: int = LIMIT) -> None:
        self.new = InferenceEngine(specs, provider="cpu", max_result_bytes=max_result_bytes)
        self.ref = InferenceEngine(specs, provider="cpu", max_result_bytes=max_result_bytes)
        install_reference(self.ref)
        # Per execute_uniform or run_plan call (the uniform path, and its
        # native shortcut for a tick like the last one): did it serve the tick.
        self.taken: list[bool] = []
        real, real_plan = self.new.execute_uniform, self.new.run_plan

        def spy(*args):
            out = real(*args)
            self.taken.append(out is not None)
            return out

        def spy_plan(*args):
            self.taken.append(real_plan(*args))
            self.plan_ticks += self.taken[-1]
            return self.taken[-1]

        self.new.execute_uniform, self.new.run_plan = spy, spy_plan
        self.plan_ticks = 0  # ticks served by run_plan
        self.ticks = 0

    def run(self, batch: RecordBatch, transport_limit: int = LIMIT) -> tuple[RecordBatch, bool]:
        """One tick through both; asserts identical records and state.  Returns (results, fast path taken).

        Every other tick asks for the K_INF_DONE record too (as the inference
        process does), which must be exactly the results then done_record's.
        """
        self.taken.clear()
        self.ticks += 1
        done_tick = self.ticks if self.ticks % 2 else None
        # The fast path's safety net (an exception becomes "use the general path")
        # logs an error; these ticks must never need it.
        errors = _ErrorLog()
        logger = logging.getLogger("wasm_engine.inference")
        logger.addHandler(errors)
        try:
            got = execute_batch(self.new, batch, transport_limit, done_tick=done_tick)
        finally:
            logger.removeHandler(errors)
        assert not errors.records, errors.records[0].getMessage()
        if done_tick is not None:
            done, want_done = got.slice(len(got) - 1, len(got)), done_record(self.new, done_tick)
            assert done == want_done and done.headers.tobytes() == want_done.headers.tobytes()
            got = got.slice(0, len(got) - 1)
        want = ref_execute_batch(self.ref, batch, transport_limit)
        assert got.headers.tobytes() == want.headers.tobytes()
        assert got.payload.tobytes() == want.payload.tobytes()
        assert got == want
        assert state(self.new) == state(self.ref)
        return got, any(self.taken)


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def state(engine) -> list:
    return [(m.batching, dict(m.batch_verified)) for m in engine._models if isinstance(m, TensorModel)]


_ticks = iter(range(1, 1 << 62))


def records(payloads: list[bytes], model: int | list[int] = MLP) -> RecordBatch:
    """A tick's K_INF_REQUEST records: agent 2k+1 sends payloads[k] with seq 3k+7."""
    n = len(payloads)
    return RecordBatch.from_arrays(kind=K_INF_REQUEST, source=np.arange(n, dtype=np.uint32) * 2 + 1,
                                   destination=np.asarray(model, dtype=np.uint32), tick=next(_ticks),
                                   seq=np.arange(n, dtype=np.uint32) * 3 + 7,
                                   payload_len=np.array([len(p) for p in payloads], np.uint32),
                                   payload=np.frombuffer(b"".join(payloads), np.uint8))


def _random(rng, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Any bit pattern (NaNs, infinities, non-0/1 bools are fine: both paths see the same bytes)."""
    raw = rng.integers(0, 256, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def payload_for(rng, model: int, rows: int, width: int) -> bytes:
    """A valid request for `model` with `rows` rows (width: the free non-batch dimension, if any)."""
    f32 = np.dtype("<f4")
    if model == MLP:
        return encode_tensors([_random(rng, f32, (rows, 16))])
    if model == TWO:
        return encode_tensors([_random(rng, f32, (rows, width)), rng.integers(-9, 9, (rows, 3))])
    if model == MIXED:
        raw = bytearray(encode_tensors([_random(rng, np.dtype("u1"), (rows, 3)),
                                        _random(rng, np.dtype("<f2"), (rows, width))]))
        raw[4] = 9  # the first tensor is bool; its bytes need not be 0/1
        return bytes(raw)
    if model == IDENT:
        codes = {TensorProto.INT8: 3, TensorProto.UINT16: 4, TensorProto.INT32: 6, TensorProto.DOUBLE: 11,
                 TensorProto.UINT64: 13, TensorProto.UINT8: 2, TensorProto.INT16: 5, TensorProto.UINT32: 12}
        return encode_tensors([_random(rng, DTYPE_CODES[codes[t]], (rows,) + tuple(s[1:]))
                               for _, t, s in IDENT_INPUTS])
    if model == GATHER:
        return encode_tensors([_random(rng, f32, (rows, 4)), rng.integers(0, 4, (rows, 1))])
    if model == SLICE:  # width: min(k); 1000 keeps every row
        return encode_tensors([_random(rng, f32, (rows, 3)), np.full((rows, 1), width)])
    if model == RESHAPE:  # at least one row: Reshape cannot infer its -1 from no elements
        return encode_tensors([_random(rng, f32, (max(rows, 1), 4 * width))])
    raise ValueError(model)


# ----------------------------------------------------------------------------
# Uniform ticks: every dtype, several models, batch sizes from 1 to 64
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(specs):
    return Pair(specs)


@SETTINGS
@given(st.sampled_from([MLP, TWO, MIXED, IDENT, GATHER, RESHAPE]), st.sampled_from([1, 2, 3, 5, 16, 64]),
       st.integers(0, 3), st.sampled_from([1, 3, 4, 5]), st.integers(0, 2**32 - 1))
def test_uniform_ticks_equal_reference(pair, model, n, rows, width, seed):
    rng = np.random.default_rng(seed)
    m = pair.new._models[model]
    for _ in range(-(-VERIFY_MEMBERS // n) + 2):  # through verification, then trusted
        batch = records([payload_for(rng, model, rows, width) for _ in range(n)], model)
        key = m._layout(batch.payload_of(0)).check[1]
        verified = m.batch_verified.get(key, 0) >= VERIFY_MEMBERS
        _, fast = pair.run(batch)
        # Served fast exactly where the old code ran one batch, or one request alone.
        assert fast == (m.batching and (n == 1 or verified))


def test_repeated_ticks_take_the_native_shortcut(specs):
    """A tick like the last one (same model, count, length and headers) is
    served by the plan that served it, through run_plan; any other tick is
    not, and each gives the reference's bytes either way."""
    p = Pair(specs)
    rng = np.random.default_rng(11)
    served = []
    for n, model, rows, width in [(16, MLP, 1, 0)] * 4 + [(16, TWO, 1, 4)] * 3 + [(16, TWO, 1, 3), (8, TWO, 1, 4),
                                                                                  (16, TWO, 1, 4), (16, TWO, 1, 4)]:
        before = p.plan_ticks
        _, fast = p.run(records([payload_for(rng, model, rows, width) for _ in range(n)], model))
        served.append((fast, p.plan_ticks - before))
    assert served == [(False, 0), (True, 0), (True, 1), (True, 1),  # verify, make the plan, then use it
                      (False, 0), (True, 0), (True, 1),  # the same for another model
                      (False, 0),  # another shape: verified anew
                      (True, 0),  # another count: a plan of its own
                      (True, 0), (True, 1)]  # back to 16: that plan is kept, and is the last tick's again


def test_fast_path_serves_the_usual_tick(specs, monkeypatch):
    p = Pair(specs)
    rng = np.random.default_rng(3)
    model = p.new._models[MLP]
    for tick in range(4):
        if tick == 2:  # verified: from now on the general path must not run at all
            monkeypatch.setattr(model, "execute", lambda *a: pytest.fail("general path used"))
        batch = records([payload_for(rng, MLP, 1, 0) for _ in range(16)])
        got, fast = p.run(batch)
        assert fast == (tick >= 1)  # 16 requests verified batching on the first tick
    # The record fields, independently of the reference.
    h = got.headers
    assert (h["kind"] == K_INF_RESULT).all() and (h["flags"] == 0).all() and (h["check"] == 0).all()
    assert (h["source"] == MLP).all() and (h["destination"] == batch.headers["source"]).all()
    assert (h["tick"] == batch.headers["tick"]).all() and (h["seq"] == batch.headers["seq"]).all()
    assert all(decode_tensors(got.payload_of(i))[0].shape == (1, 4) for i in range(16))


def test_engine_execute_takes_the_fast_path_too(specs, monkeypatch):
    p = Pair(specs)
    rng = np.random.default_rng(4)
    reqs = [Request(100 + i, MLP, payload_for(rng, MLP, 2, 0)) for i in range(16)]
    assert p.new.execute(reqs) == ref_execute(p.ref, reqs)  # verifies batching
    monkeypatch.setattr(p.new._models[MLP], "execute", lambda *a: pytest.fail("general path used"))
    assert p.new.execute(reqs) == ref_execute(p.ref, reqs)
    assert p.taken == [False, True]


# ----------------------------------------------------------------------------
# Everything else falls back to the general path, with the same results
# ----------------------------------------------------------------------------


def _mutate(payload: bytes, at: int, value: int) -> bytes:
    raw = bytearray(payload)
    raw[at] = value
    return bytes(raw)


def _fallback_tick(case: str, rng) -> tuple[RecordBatch, int]:
    """A tick of 16 requests for a verified model (MLP, or GATHER), with one thing that rules out the fast path.

    Returns the tick and the model index whose verified state it relies on.
    """
    good = [payload_for(rng, MLP, 1, 0) for _ in range(16)]
    model: int | list[int] = MLP
    if case == "differing dtype, same length":
        good[7] = _mutate(good[7], 4, 6)  # int32 where float32 is expected
    elif case == "differing shape, same length":
        good[7] = encode_tensors([_random(rng, np.dtype("<f4"), (2, 8))])
    elif case == "differing length":
        good[7] = payload_for(rng, MLP, 2, 0)
    elif case == "reserved byte set":
        good[7] = _mutate(good[7], 2, 1)
    elif case == "unknown dtype code":
        good[7] = _mutate(good[7], 4, 99)
    elif case == "truncated":
        good[7] = good[7][:-1]
    elif case == "trailing byte":
        good[7] = good[7] + b"\0"
    elif case == "all the wrong shape":
        good = [encode_tensors([_random(rng, np.dtype("<f4"), (1, 8))]) for _ in range(16)]
    elif case == "all the wrong format":
        good = [encode_generate_request(GenerateRequest("hello", max_new_tokens=2))] * 16
    elif case == "all empty":
        good = [b""] * 16
    elif case == "mixed model indices":
        good[7] = payload_for(rng, TWO, 1, 4)
        model = [MLP] * 16
        model[7] = TWO
    elif case == "unknown model":
        model = 99
    elif case == "a request makes the batch fail":
        good = [payload_for(rng, GATHER, 1, 0) for _ in range(16)]
        good[7] = encode_tensors([_random(rng, np.dtype("<f4"), (1, 4)), np.array([[7]])])
        model = GATHER
    else:
        raise ValueError(case)
    return records(good, model), GATHER if model == GATHER else MLP


FALLBACKS = ["differing dtype, same length", "differing shape, same length", "differing length",
             "reserved byte set", "unknown dtype code", "truncated", "trailing byte", "all the wrong shape",
             "all the wrong format", "all empty", "mixed model indices", "unknown model",
             "a request makes the batch fail"]


@pytest.mark.parametrize("case", FALLBACKS)
def test_fallback_triggers(specs, case):
    p = Pair(specs)
    rng = np.random.default_rng(FALLBACKS.index(case))
    for model in (MLP, GATHER):  # verify batching for both
        for _ in range(2):
            _, fast = p.run(records([payload_for(rng, model, 1, 0) for _ in range(16)], model))
        assert fast
    batch, model = _fallback_tick(case, rng)
    # Two usual ticks of the fallback's model first: the second is served by
    # the native shortcut for a tick like the last one (run_plan), so the
    # fallback tick meets that shortcut's checks before any other.
    for _ in range(2):
        plan_ticks = p.plan_ticks
        _, fast = p.run(records([payload_for(rng, model, 1, 0) for _ in range(16)], model))
        assert fast
    assert p.plan_ticks == plan_ticks + 1
    got, fast = p.run(batch)
    assert not fast
    if case not in ("differing length", "mixed model indices"):
        assert (got.headers["flags"] != 0).any()  # the tick really has an error in it
    # And the next usual tick is served fast again.
    _, fast = p.run(records([payload_for(rng, model, 1, 0) for _ in range(16)], model))
    assert fast


@pytest.mark.parametrize("n", [1, 16])
def test_oversized_results_fall_back(specs, n):
    rng = np.random.default_rng(n)
    size = len(encode_tensors([np.zeros((1, 4), np.float32)]))  # an MLP result

    def batch() -> RecordBatch:
        return records([payload_for(rng, MLP, 1, 0) for _ in range(n)])

    p = Pair(specs, max_result_bytes=size - 1)  # the engine's limit
    for _ in range(3):
        got, fast = p.run(batch())
        assert not fast and (got.headers["flags"] == Status.TOO_LARGE).all()
    p = Pair(specs)
    for limit in (LIMIT, size - 1, LIMIT, size):  # the transport's limit, below the engine's
        verified = p.new._models[MLP].batch_verified.get(((16,),), 0) >= VERIFY_MEMBERS
        got, fast = p.run(batch(), transport_limit=limit)
        assert fast == (limit >= size and (n == 1 or verified))
        assert (got.headers["flags"] == (Status.TOO_LARGE if limit < size else 0)).all()


def test_single_requests_whose_run_fails_or_leaves_the_batch_dimension(specs):
    p = Pair(specs)
    rng = np.random.default_rng(5)
    f32 = np.dtype("<f4")
    cases = [(RESHAPE, encode_tensors([_random(rng, f32, (1, 6))]), False),  # ORT rejects it: MODEL_ERROR
             (GATHER, encode_tensors([_random(rng, f32, (1, 4)), np.array([[9]])]), False),
             (SLICE, payload_for(rng, SLICE, 2, 1), False),  # 1 output row for 2 rows in
             (SLICE, payload_for(rng, SLICE, 2, 0), False),
             (SLICE, payload_for(rng, SLICE, 2, 1000), True)]
    for model, payload, fast_ok in cases:
        got, fast = p.run(records([payload], model))
        assert fast == fast_ok
        assert got.headers["flags"][0] == (Status.MODEL_ERROR if model in (RESHAPE, GATHER) else Status.OK)


def test_outputs_that_leave_the_batch_dimension_turn_batching_off(specs, caplog):
    p = Pair(specs)
    rng = np.random.default_rng(6)
    fast = []
    for n, k in [(16, 1000), (16, 1000), (16, 0), (16, 1000), (1, 1000)]:
        payloads = [payload_for(rng, SLICE, 1, 1000) for _ in range(n)]
        payloads[n // 2] = payload_for(rng, SLICE, 1, k)
        fast.append(p.run(records(payloads, SLICE))[1])
    assert fast == [False, True, False, False, False]
    assert not p.new._models[SLICE].batching
    # The third tick first met the second's native plan, whose bound output
    # arrays no longer fit: dropped, and said so, before the numpy path ran.
    assert caplog.text.count("failed through bound output arrays") == 1


def test_lm_ticks_take_the_general_path(specs):
    p = Pair(specs)
    payload = encode_generate_request(GenerateRequest("The sea", max_new_tokens=3))
    for n in (1, 12):
        got, fast = p.run(records([payload] * n, LM))
        assert not fast and (got.headers["flags"] == 0).all()
    assert p.taken == [False]  # asked once per tick, and refused


@pytest.mark.parametrize("broken", [("run_plan",), ("run_plan", "execute_uniform")])
def test_a_failure_inside_the_fast_path_falls_back_and_is_logged(specs, monkeypatch, caplog, broken):
    """A bug in the native shortcut falls back to the uniform path; one in both, to the general path."""
    p = Pair(specs)
    rng = np.random.default_rng(10)
    for _ in range(3):
        _, fast = p.run(records([payload_for(rng, MLP, 1, 0) for _ in range(16)]))
    assert fast and p.plan_ticks == 1

    def bug(*args):
        raise RuntimeError("bug")

    for name in broken:
        monkeypatch.setattr(p.new._models[MLP], name, bug)
    batch = records([payload_for(rng, MLP, 1, 0) for _ in range(16)])
    got = execute_batch(p.new, batch, LIMIT)
    assert got.headers.tobytes() == ref_execute_batch(p.ref, batch, LIMIT).headers.tobytes()
    assert got == ref_execute_batch(p.ref, batch, LIMIT) and (got.headers["flags"] == 0).all()
    assert "native uniform path of model 'mlp'" in caplog.text
    assert ("uniform-batch path of model 'mlp'" in caplog.text) == ("execute_uniform" in broken)


def test_input_arrays_are_reused_only_for_the_same_layout_and_within_the_limit(specs, monkeypatch):
    p = Pair(specs)
    rng = np.random.default_rng(11)
    model = p.new._models[IDENT]
    seen = []
    for n in (1, 1, 16, 16, 16, 3):  # the first 16 verify batching: the general path, its own arrays
        p.run(records([payload_for(rng, IDENT, 2, 0) for _ in range(n)], IDENT))
        seen.append(model._scratch[1][0])
    assert [a.shape[0] for a in seen] == [1, 1, 1, 16, 16, 3]
    assert seen[0] is seen[1] is seen[2] and seen[3] is seen[4] and seen[2] is not seen[3] is not seen[5]
    monkeypatch.setattr(_tensor, "_SCRATCH_MAX_BYTES", 100)
    _, fast = p.run(records([payload_for(rng, IDENT, 2, 0) for _ in range(16)], IDENT))
    assert fast and model._scratch[1][0] is seen[5]  # over the limit: decoded into new arrays, not kept


def test_empty_tick(specs):
    p = Pair(specs)
    got, fast = p.run(records([]))
    assert len(got) == 0 and not fast


# ----------------------------------------------------------------------------
# Batching verification is the general path's, unchanged
# ----------------------------------------------------------------------------


def _record_runs(engine, model: int) -> list:
    calls = []
    m = engine._models[model]
    real, real_bound = m.session.run, m.session.run_with_iobinding
    m.session.run = lambda names, feeds: calls.append({k: v.shape for k, v in feeds.items()}) or real(names, feeds)
    m.session.run_with_iobinding = lambda binding, *a: calls.append("bound") or real_bound(binding, *a)
    return calls


def test_verification_phase_is_unchanged(specs):
    p = Pair(specs)
    runs_new, runs_ref = _record_runs(p.new, MLP), _record_runs(p.ref, MLP)
    rng = np.random.default_rng(6)
    fast, fast_runs = [], []
    for _ in range(5):
        _, f = p.run(records([payload_for(rng, MLP, 2, 0) for _ in range(3)]))
        fast.append(f)
        if f:
            fast_runs.append((list(runs_new), list(runs_ref)))
        else:
            assert runs_new == runs_ref  # the same session.run calls, in the same order, on the same shapes
        runs_new.clear()
        runs_ref.clear()
    assert fast == [False, False, False, True, True]  # 3 + 3 + 3 requests verified batching
    # Fast ticks: the first runs the batch as the reference does, then once more
    # through the native plan it makes (which must reproduce it); later ones
    # run only through the plan's bound arrays.
    batch = {"x": (6, 16)}
    assert fast_runs == [([batch, "bound"], [batch]), (["bound"], [batch])]
    assert p.new._models[MLP].batch_verified[((16,),)] == 9


def test_failed_verification_keeps_the_fast_path_off(specs):
    """Batched results that differ from unbatched ones disable batching for the key, and the fast path with it."""
    p = Pair(specs)
    for engine in (p.new, p.ref):
        m = engine._models[MLP]
        real = m.session.run

        def perturbed(names, feeds, real=real):
            outs = real(names, feeds)
            if feeds["x"].shape[0] > 2:  # a batch (these requests have 2 rows each)
                outs = [np.nextafter(o, np.inf).astype(o.dtype) for o in outs]
            return outs

        m.session.run = perturbed
    rng = np.random.default_rng(8)
    for n in (4, 4, 16, 1, 16):
        _, fast = p.run(records([payload_for(rng, MLP, 2, 0) for _ in range(n)]))
        assert fast == (n == 1)  # a request alone is never batched, so never compared
    assert p.new._models[MLP].batch_verified[((16,),)] == -1


# ----------------------------------------------------------------------------
# The general path on random mixed ticks (fast path on and off)
# ----------------------------------------------------------------------------


def _random_request(rng) -> tuple[int, bytes]:
    kind = rng.choice(["mlp", "mlp", "mlp", "model", "model", "broken", "unknown"])
    if kind == "mlp":
        return MLP, payload_for(rng, MLP, int(rng.choice([1, 1, 1, 2, 0])), 0)
    if kind == "model":
        model = int(rng.choice([TWO, MIXED, IDENT, GATHER, RESHAPE, SLICE]))
        width = int(rng.choice([0, 1, 1000, 1000])) if model == SLICE else int(rng.choice([1, 4, 5]))
        return model, payload_for(rng, model, int(rng.integers(1, 3)), width)
    if kind == "broken":
        payload = bytearray(payload_for(rng, MLP, 1, 0))
        how = int(rng.integers(0, 4))
        if how == 0:
            del payload[int(rng.integers(0, len(payload))):]
        elif how == 1:
            payload[int(rng.integers(0, 12))] = int(rng.integers(0, 256))
        elif how == 2:
            payload = bytearray(rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes())
        else:
            payload = bytearray(encode_generate_request(GenerateRequest("hi", max_new_tokens=1)))
        return int(rng.choice([MLP, TWO])), bytes(payload)
    return int(rng.choice([LM + 1, 2**32 - 1])), payload_for(rng, MLP, 1, 0)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_ticks_equal_reference(specs, seed, fast_path):
    rng = np.random.default_rng(seed)
    p = Pair(specs)
    if not fast_path:
        p.new.execute_uniform = lambda *a: None
    for _ in range(20):
        n = int(rng.choice([1, 2, 7, 16, 40]))
        reqs = [_random_request(rng) for _ in range(n)]
        if rng.random() < 0.4:  # the usual tick: one model, one header
            reqs = [(MLP, payload_for(rng, MLP, 1, 0)) for _ in range(n)]
        if rng.random() < 0.2:
            reqs[int(rng.integers(0, n))] = (LM, encode_generate_request(GenerateRequest("ab", max_new_tokens=2)))
        p.run(records([r[1] for r in reqs], [r[0] for r in reqs]), transport_limit=int(rng.choice([LIMIT, 60])))
    assert p.new._models[MLP].batch_verified[((16,),)] >= VERIFY_MEMBERS
