#!/usr/bin/env python3
"""Write a tiny tensor model for tests and examples: OUT_DIR/tiny_mlp.onnx.

A two-layer MLP, float32 x[batch, 16] -> y[batch, 4], with a dynamic batch
dimension named "batch" on both sides (which lets the inference engine batch
requests).  Weights are fixed pseudo-random numbers from a seed, so the file
is byte-identical on every run.

Needs numpy and onnx only:  python scripts/make_tiny_tensor_model.py OUT_DIR

--dims IN,H1,...,OUT builds a larger MLP of the same form (ReLU between
layers) as OUT_DIR/mlp_IN_H1_..._OUT.onnx instead, e.g. --dims 256,1024,1024,16
for a model with real compute per item (scripts/bench_inference.py uses it).
Without --dims the output is the tiny model above, unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IN_FEATURES = 16
HIDDEN = 32
OUT_FEATURES = 4
FILENAME = "tiny_mlp.onnx"
# onnx >= 1.23 writes IR version 14 by default; onnxruntime 1.31 reads <= 13
# and older onnxruntime-gpu releases (>= 1.20) read 10.  Opset 17 is
# supported by all of them.
IR_VERSION = 8
OPSET = 17


def build_tiny_tensor_model(out_dir: str | Path, seed: int = 0, dims: tuple[int, ...] | None = None) -> Path:
    """Build the model into out_dir and return the .onnx path.

    dims: layer widths (input, hidden..., output); None is the tiny model
    (16, 32, 4) written as tiny_mlp.onnx.
    """
    tiny = dims is None
    dims = (IN_FEATURES, HIDDEN, OUT_FEATURES) if tiny else tuple(int(d) for d in dims)
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"dims needs at least two positive widths, got {dims}")
    rng = np.random.default_rng(seed)
    arrays: list[tuple[np.ndarray, str]] = []
    nodes = []
    prev = "x"
    n_layers = len(dims) - 1
    for i in range(1, n_layers + 1):
        fan_in, fan_out = dims[i - 1], dims[i]
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        arrays += [(w, f"w{i}"), (b, f"b{i}")]
        if i < n_layers:
            h = [f"h{3 * (i - 1) + k}" for k in range(3)]
            nodes += [
                helper.make_node("MatMul", [prev, f"w{i}"], [h[0]]),
                helper.make_node("Add", [h[0], f"b{i}"], [h[1]]),
                helper.make_node("Relu", [h[1]], [h[2]]),
            ]
            prev = h[2]
        else:
            nodes += [
                helper.make_node("MatMul", [prev, f"w{i}"], ["y0"]),
                helper.make_node("Add", ["y0", f"b{i}"], ["y"]),
            ]
    name = "tiny_mlp" if tiny else "mlp_" + "_".join(map(str, dims))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])],
        initializer=[numpy_helper.from_array(a, n) for a, n in arrays],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wasm-engine")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (FILENAME if tiny else name + ".onnx")
    path.write_bytes(model.SerializeToString())
    return path


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"need at least two positive widths, got {text!r}")
    return dims


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dims", type=_parse_dims, default=None, metavar="IN,H1,...,OUT",
                    help="layer widths of a larger MLP (default: the tiny 16,32,4 model as tiny_mlp.onnx)")
    args = ap.parse_args(argv)
    print(build_tiny_tensor_model(args.out_dir, args.seed, args.dims))


if __name__ == "__main__":
    main()
