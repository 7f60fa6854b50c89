"""Tensor models: results, batching equivalence, error results."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from wasm_engine.inference import (
    MAX_REQUEST_BYTES,
    GenerateRequest,
    InferenceEngine,
    ModelSpec,
    Request,
    Status,
    decode_tensors,
    encode_generate_request,
    encode_tensors,
)


def _save(model: onnx.ModelProto, path) -> str:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory):
    """a: float32[batch, n], b: int64[batch, 3] -> y1 = 2a [batch, n], y2 = b + sum(a) [batch, 3]."""
    nodes = [
        helper.make_node("Add", ["a", "a"], ["y1"]),
        helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=1),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["bf", "s"], ["y2"]),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n"]),
         helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", "n"]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 3])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, tmp_path_factory.mktemp("two") / "two.onnx")


@pytest.fixture(scope="module")
def reshape_model(tmp_path_factory):
    """x: float32[batch, n] -> Reshape to [batch, 4, n/4]: fails at run time unless 4 | n."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "m"])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [3], [0, 4, -1])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                 tmp_path_factory.mktemp("reshape") / "reshape.onnx")


@pytest.fixture(scope="module")
def engine(tensor_model_path, two_input_model, reshape_model):
    return InferenceEngine(
        [ModelSpec("mlp", tensor_model_path), ModelSpec("two", two_input_model),
         ModelSpec("reshape", reshape_model), ModelSpec("mlp_unbatched", tensor_model_path, batch=False)],
        provider="cpu",
    )


def _mlp_requests(n: int, seed: int = 0, model_index: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [Request(i, model_index, encode_tensors([rng.standard_normal((1 + i % 4, 16)).astype(np.float32)]))
            for i in range(n)]


def test_results_match_onnxruntime(engine, tensor_model_path):
    sess = ort.InferenceSession(str(tensor_model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    [res] = engine.execute([Request(1, 0, encode_tensors([x]))])
    assert res.status == Status.OK and res.request_id == 1
    [y] = decode_tensors(res.payload)
    np.testing.assert_allclose(y, sess.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_batched_equals_unbatched_bit_for_bit(engine):
    assert engine.models[0].batching and not engine.models[3].batching
    reqs = _mlp_requests(40)
    batched = engine.execute(reqs)
    one_by_one = [engine.execute([r])[0] for r in reqs]
    not_batching = engine.execute([Request(r.request_id, 3, r.payload) for r in reqs])
    assert all(r.status == Status.OK for r in batched)
    assert batched == one_by_one
    assert [r.payload for r in batched] == [r.payload for r in not_batching]


def test_multi_input_batching_groups_by_non_batch_dims(engine):
    rng = np.random.default_rng(1)
    reqs = []
    for i in range(24):
        rows, n = 1 + i % 3, (2, 5)[i % 2]
        a = rng.standard_normal((rows, n)).astype(np.float32)
        b = rng.integers(-5, 5, (rows, 3))
        reqs.append(Request(100 + i, 1, encode_tensors([a, b])))
    batched = engine.execute(reqs)
    assert batched == [engine.execute([r])[0] for r in reqs]
    for r, res in zip(reqs, batched):
        a, b = decode_tensors(r.payload)
        y1, y2 = decode_tensors(res.payload)
        assert np.array_equal(y1, a + a)
        np.testing.assert_allclose(y2, b + a.sum(1, keepdims=True), rtol=1e-6)


def test_repeated_runs_are_identical(engine):
    reqs = _mlp_requests(10, seed=3)
    assert engine.execute(reqs) == engine.execute(reqs)


def test_error_results_never_raise(engine):
    good = encode_tensors([np.zeros((2, 16), np.float32)])
    reqs = [
        Request(1, 0, encode_tensors([np.zeros((2, 16), np.float64)])),  # dtype
        Request(2, 0, encode_tensors([np.zeros((2, 8), np.float32)])),  # static dim
        Request(3, 0, encode_tensors([np.zeros((16,), np.float32)])),  # rank
        Request(4, 0, encode_tensors([np.zeros((2, 16), np.float32)] * 2)),  # count
        Request(5, 0, b"\x01\x01\x00"),  # truncated
        Request(6, 0, encode_generate_request(GenerateRequest("hi"))),  # wrong kind
        Request(7, 9, good),  # unknown model
        Request(8, -1, good),
        Request(9, "0", good),  # type: ignore[arg-type]
        Request(10, 1, encode_tensors([np.zeros((2, 4), np.float32), np.zeros((3, 3), np.int64)])),  # batch mismatch
        Request(11, 0, good),
    ]
    results = engine.execute(reqs)
    assert [r.request_id for r in results] == list(range(1, 12))
    assert [r.status for r in results] == [
        Status.BAD_INPUT, Status.BAD_INPUT, Status.BAD_INPUT, Status.BAD_INPUT, Status.MALFORMED,
        Status.MALFORMED, Status.UNKNOWN_MODEL, Status.UNKNOWN_MODEL, Status.UNKNOWN_MODEL, Status.BAD_INPUT,
        Status.OK,
    ]
    assert b"expected float32, got float64" in results[0].payload
    assert b"expected shape [batch, 16], got [2, 8]" in results[1].payload
    for r in results[:-1]:
        r.payload.decode("utf-8")


def test_runtime_failure_is_isolated_to_its_request(engine):
    rng = np.random.default_rng(2)
    ok = [Request(i, 2, encode_tensors([rng.standard_normal((1, 8)).astype(np.float32)])) for i in range(3)]
    bad = Request(99, 2, encode_tensors([np.zeros((1, 6), np.float32)]))  # 6 is not divisible by 4
    results = engine.execute([ok[0], bad, ok[1], ok[2]])
    assert [r.status for r in results] == [Status.OK, Status.MODEL_ERROR, Status.OK, Status.OK]
    assert decode_tensors(results[0].payload)[0].shape == (1, 4, 2)


def test_size_limits(tensor_model_path):
    small = InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="cpu", max_result_bytes=40)
    [res] = small.execute([Request(1, 0, encode_tensors([np.zeros((4, 16), np.float32)]))])
    assert res.status == Status.TOO_LARGE
    [res] = small.execute([Request(2, 0, b"\x01" * (MAX_REQUEST_BYTES + 1))])
    assert res.status == Status.TOO_LARGE


def test_memoryview_payloads_are_accepted(engine):
    payload = bytearray(encode_tensors([np.ones((1, 16), np.float32)]))
    [a] = engine.execute([Request(1, 0, memoryview(payload))])
    [b] = engine.execute([Request(1, 0, bytes(payload))])
    assert a == b and a.status == Status.OK


def test_model_info(engine, tensor_model_path):
    info = engine.models[0]
    assert info.id == "mlp" and info.kind == "tensor" and info.provider == "cpu"
    assert info.file_bytes == tensor_model_path.stat().st_size
    assert info.inputs[0].shape == ("batch", 16) and info.outputs[0].dtype == "float32"
    assert info.rss_delta_bytes >= 0


def test_batching_is_verified_before_it_is_trusted(tensor_model_path):
    engine = InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="cpu")
    model = engine._models[0]
    calls = []
    real_run = model.session.run
    model.session.run = lambda names, feeds: calls.append(feeds["x"].shape[0]) or real_run(names, feeds)
    reqs = _mlp_requests(5, seed=9)  # 1+2+3+4+1 = 11 rows
    first = engine.execute(reqs)
    # Unverified: five single runs plus one batched run for comparison.
    assert sorted(calls) == [1, 1, 2, 3, 4, 11]
    assert model.batch_verified[((16,),)] == 5
    engine.execute(reqs)
    assert model.batch_verified[((16,),)] == 10  # >= VERIFY_MEMBERS: trusted from now on
    calls.clear()
    assert engine.execute(reqs) == first
    assert calls == [11]


def test_run_stats_count_requests_runs_and_time(tensor_model_path, reshape_model):
    engine = InferenceEngine([ModelSpec("mlp", tensor_model_path), ModelSpec("idle", tensor_model_path),
                              ModelSpec("reshape", reshape_model)], provider="cpu")
    model = engine._models[0]
    calls = []
    real_run = model.session.run
    model.session.run = lambda names, feeds: calls.append(feeds["x"].shape[0]) or real_run(names, feeds)
    real_bound = model.session.run_with_iobinding
    model.session.run_with_iobinding = lambda binding, *a: calls.append("bound") or real_bound(binding, *a)
    reqs = _mlp_requests(5, seed=9)
    for _ in range(3):  # verification runs (5 single + 1 batched, twice), then one batched run
        engine.execute(reqs)
    x = encode_tensors([np.ones((1, 16), np.float32)])
    # One payload length: the uniform fast path, which makes its native plan
    # (one more run, through the plan's bound arrays, to check it) and then uses it.
    engine.execute([Request(i, 0, x) for i in range(4)])
    engine.execute([Request(i, 0, x) for i in range(4)])
    engine.execute([Request(0, 7, x)])  # unknown model: counted for none
    mlp, idle, reshape = engine.stats
    assert calls[-3:] == [4, "bound", "bound"]
    assert (mlp.requests, mlp.runs) == (23, len(calls)) and len(calls) == 6 + 6 + 1 + 3
    assert mlp.run_ns > 0
    assert (idle.requests, idle.runs, idle.run_ns) == (0, 0, 0)
    bad = engine.execute([Request(0, 2, encode_tensors([np.ones((1, 5), np.float32)]))])  # fails inside ORT
    assert bad[0].status == Status.MODEL_ERROR
    # A failed run counts, with its time; the uniform path's failed run is reported, not made again.
    assert (reshape.requests, reshape.runs) == (1, 1) and reshape.run_ns > 0
    assert bad == engine.execute([Request(0, 2, encode_tensors([np.ones((1, 5), np.float32)]))])
    assert reshape.runs == 2


def test_a_failing_uniform_batch_is_not_run_again(tmp_path):
    """A trusted batch that fails in the uniform path goes straight to one-by-one runs,
    which give the culprit its error and the others their results."""
    from onnx import TensorProto, helper

    from ._graphs import graph_model, vi

    path = graph_model(tmp_path, "gather", [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
                       [vi("i", TensorProto.INT64, ["batch", 1])], [vi("y", TensorProto.FLOAT, ["batch", 1])],
                       [helper.make_tensor("table", TensorProto.FLOAT, [3], [1.5, 2.5, 3.5])])
    engine = InferenceEngine([ModelSpec("g", path)], provider="cpu")
    stats = engine.stats[0]

    def reqs(indices):
        return [Request(k, 0, encode_tensors([np.array([[i]], np.int64)])) for k, i in enumerate(indices)]

    for _ in range(2):  # 10 requests verify batching for this shape
        engine.execute(reqs([0, 1, 2, 1, 0]))
    runs = stats.runs
    got = engine.execute(reqs([2, 7, 0, 1]))  # index 7 is out of the table: the batch fails
    assert [r.status for r in got] == [Status.OK, Status.MODEL_ERROR, Status.OK, Status.OK]
    assert stats.runs - runs == 1 + 4  # the failed batch once, then each request alone
    assert got == [engine.execute([r])[0] for r in reqs([2, 7, 0, 1])]


def test_batching_refused_where_it_changes_results(engine):
    # ReduceSum over rows of 5 floats (20 bytes) sums in an order that depends
    # on the rows' alignment, so batching these requests changes the bits.
    rng = np.random.default_rng(1)
    reqs = [Request(i, 1, encode_tensors([rng.standard_normal((1 + i % 3, 5)).astype(np.float32),
                                          rng.integers(-5, 5, (1 + i % 3, 3))])) for i in range(12)]
    results = engine.execute(reqs)
    assert engine._models[1].batch_verified[((5,), (3,))] == -1
    assert results == [engine.execute([r])[0] for r in reqs]


def test_decoded_tensors_are_aligned():
    payload = encode_tensors([np.ones((3, 5), np.float32), np.ones(7, np.uint8), np.ones((2, 2), np.float64)])
    for a in decode_tensors(payload):
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
