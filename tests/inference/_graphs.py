"""Small ONNX test models built in a temporary directory (shared by the inference tests)."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

vi = helper.make_tensor_value_info


def graph_model(tmp, name, nodes, inputs, outputs, initializer=()) -> str:
    """Save a one-graph opset-17 model as tmp/<name>.onnx (IR version 8, which ONNX Runtime reads); its path."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def two_input_model(tmp) -> str:
    """a: float [batch, n], b: int64 [batch, 3] -> a + a, float(b) + sum(a, axis 1)."""
    return graph_model(tmp, "two", [
        helper.make_node("Add", ["a", "a"], ["y1"]),
        helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=1),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["bf", "s"], ["y2"]),
    ], [vi("a", TensorProto.FLOAT, ["batch", "n"]), vi("b", TensorProto.INT64, ["batch", 3])],
        [vi("y1", TensorProto.FLOAT, ["batch", "n"]), vi("y2", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])


def mixed_dtype_model(tmp) -> str:
    """m: bool [batch, 3], h: float16 [batch, n] -> not m, h + h."""
    return graph_model(tmp, "mixed",
                       [helper.make_node("Not", ["m"], ["y1"]), helper.make_node("Add", ["h", "h"], ["y2"])],
                       [vi("m", TensorProto.BOOL, ["batch", 3]), vi("h", TensorProto.FLOAT16, ["batch", "n"])],
                       [vi("y1", TensorProto.BOOL, ["batch", 3]), vi("y2", TensorProto.FLOAT16, ["batch", "n"])])


def reshape_model(tmp) -> str:
    """x: float [batch, n] -> x reshaped to [batch, 4, n / 4] (fails unless 4 divides n)."""
    return graph_model(tmp, "reshape", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                       [vi("x", TensorProto.FLOAT, ["batch", "n"])],
                       [vi("y", TensorProto.FLOAT, ["batch", 4, "m"])],
                       [helper.make_tensor("shape", TensorProto.INT64, [3], [0, 4, -1])])
