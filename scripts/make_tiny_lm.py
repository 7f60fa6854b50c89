#!/usr/bin/env python3
"""Build a tiny character-level causal LM: OUT_DIR/model.onnx + OUT_DIR/tokenizer.json.

The model is a 2-layer GPT-style decoder (d_model 64, 4 heads, 128
positions) in the ONNX layout that Hugging Face Optimum exports for
`--task text-generation-with-past`:

  inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
           position_ids [batch, seq] int64 (omitted with --no-position-ids),
           past_key_values.{i}.key / .value [batch, 4, past, 16]
  outputs  logits [batch, seq, vocab], present.{i}.key / .value [batch, 4, past+seq, 16]

so the inference engine runs it with exactly the code that runs GPT-2.

It is trained for a short while (default 800 Adam steps, about 1.5 minutes
on two cores) with plain numpy (hand-written backward pass) on
scripts/data/tiny_corpus.txt, so greedy output is recognisably English-like;
--steps 0 gives untrained weights from the seed.  Training runs in float64
on one deterministic data order, so the output files are byte-identical from
run to run on a machine (across machines only as far as their BLAS libraries
agree in float64).  The graph is written with onnx.helper: the script needs
numpy, onnx and tokenizers, and no deep-learning framework.

    python scripts/make_tiny_lm.py OUT_DIR [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import time

# Training is many small matrix products: BLAS threads only add overhead and
# contention (set before numpy is imported; no effect when imported later).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "tiny_corpus.txt"

# See make_tiny_tensor_model.py: IR 8 + opset 17 load in every onnxruntime
# the project supports (onnx >= 1.23 would write IR 14 by default).
IR_VERSION = 8
OPSET = 17

UNK = "<unk>"
# Fixed vocabulary: <unk>, newline and printable ASCII.  Independent of the
# corpus, so any prompt tokenizes and the tokenizer file never changes.
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


@dataclass(frozen=True)
class Config:
    vocab: int = 1 + len(CHARS)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    max_positions: int = 128
    train_seq: int = 64
    batch: int = 16

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


DEFAULT_STEPS = 800
LN_EPS = 1e-5
GELU_C = float(np.sqrt(2.0 / np.pi))


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def build_tokenizer():
    """Character-level tokenizer: one token per character, unknown -> <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {UNK: 0}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Split every character into its own "word"; WordLevel maps it to an id.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate without separators
    tok.add_special_tokens([UNK])
    return tok


def encode_text(text: str) -> np.ndarray:
    index = {ch: i + 1 for i, ch in enumerate(CHARS)}
    return np.array([index.get(ch, 0) for ch in text], dtype=np.int64)


# ---------------------------------------------------------------------------
# Model in numpy (float64) with a hand-written backward pass
# ---------------------------------------------------------------------------


def init_params(cfg: Config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    d, f = cfg.d_model, cfg.d_ff
    std = 0.02
    # GPT-2 style: residual projections scaled down with depth.
    proj_std = std / np.sqrt(2 * cfg.n_layers)
    p = {
        "wte": rng.normal(0, std, (cfg.vocab, d)),
        "wpe": rng.normal(0, std, (cfg.max_positions, d)),
        "lnf_g": np.ones(d),
        "lnf_b": np.zeros(d),
        "w_lm": rng.normal(0, std, (d, cfg.vocab)),
    }
    for i in range(cfg.n_layers):
        p[f"l{i}.ln1_g"] = np.ones(d)
        p[f"l{i}.ln1_b"] = np.zeros(d)
        p[f"l{i}.w_qkv"] = rng.normal(0, std, (d, 3 * d))
        p[f"l{i}.b_qkv"] = np.zeros(3 * d)
        p[f"l{i}.w_o"] = rng.normal(0, proj_std, (d, d))
        p[f"l{i}.b_o"] = np.zeros(d)
        p[f"l{i}.ln2_g"] = np.ones(d)
        p[f"l{i}.ln2_b"] = np.zeros(d)
        p[f"l{i}.w_1"] = rng.normal(0, std, (d, f))
        p[f"l{i}.b_1"] = np.zeros(f)
        p[f"l{i}.w_2"] = rng.normal(0, proj_std, (f, d))
        p[f"l{i}.b_2"] = np.zeros(d)
    return p


def _ln_fwd(x, g, b):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + LN_EPS)
    xhat = xc * rstd
    return xhat * g + b, (xhat, rstd, g)


def _ln_bwd(dy, cache):
    xhat, rstd, g = cache
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum((0, 1)), dy.sum((0, 1))


def _gelu(u):
    t = np.tanh(GELU_C * (u + 0.044715 * (u * u * u)))  # u*u*u: pow() is slow
    return 0.5 * u * (1.0 + t), t


def _gelu_grad(u, t):
    return 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * u * u)


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward_backward(p: dict[str, np.ndarray], cfg: Config, idx: np.ndarray, targets: np.ndarray | None,
                     start: np.ndarray | None = None):
    """Mean cross-entropy of next-token prediction and its gradients.

    start[b] is the position of the first token of row b (default 0).  With
    targets=None returns (logits, None).
    """
    B, T = idx.shape
    pos = np.arange(T)[None, :] + (np.zeros((B, 1), dtype=np.int64) if start is None else start[:, None])
    d, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    scale = 1.0 / np.sqrt(Dh)
    causal = np.tril(np.ones((T, T), dtype=bool))
    x = p["wte"][idx] + p["wpe"][pos]
    caches = []
    for i in range(cfg.n_layers):
        L = f"l{i}."
        h, ln1 = _ln_fwd(x, p[L + "ln1_g"], p[L + "ln1_b"])
        qkv = h @ p[L + "w_qkv"] + p[L + "b_qkv"]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(B, T, H, Dh).transpose(0, 2, 1, 3) for j in range(3))
        pr = _softmax(np.where(causal, (q @ k.transpose(0, 1, 3, 2)) * scale, -np.inf))
        a = (pr @ v).transpose(0, 2, 1, 3).reshape(B, T, d)
        x1 = x + a @ p[L + "w_o"] + p[L + "b_o"]
        h2, ln2 = _ln_fwd(x1, p[L + "ln2_g"], p[L + "ln2_b"])
        u = h2 @ p[L + "w_1"] + p[L + "b_1"]
        g, t = _gelu(u)
        x = x1 + g @ p[L + "w_2"] + p[L + "b_2"]
        caches.append((h, ln1, q, k, v, pr, a, ln2, h2, u, g, t))
    xf, lnf = _ln_fwd(x, p["lnf_g"], p["lnf_b"])
    logits = xf @ p["w_lm"]
    if targets is None:
        return logits, None

    probs = _softmax(logits)
    n = B * T
    flat = probs.reshape(n, -1)
    loss = -np.log(flat[np.arange(n), targets.reshape(-1)]).mean()
    dlogits = probs.copy()
    dlogits.reshape(n, -1)[np.arange(n), targets.reshape(-1)] -= 1.0
    dlogits /= n

    grads: dict[str, np.ndarray] = {}
    grads["w_lm"] = xf.reshape(n, d).T @ dlogits.reshape(n, -1)
    dx, grads["lnf_g"], grads["lnf_b"] = _ln_bwd(dlogits @ p["w_lm"].T, lnf)
    for i in reversed(range(cfg.n_layers)):
        L = f"l{i}."
        h, ln1, q, k, v, pr, a, ln2, h2, u, g, t = caches[i]
        # MLP block: x = x1 + gelu(ln2(x1) W1 + b1) W2 + b2
        grads[L + "w_2"] = g.reshape(n, -1).T @ dx.reshape(n, d)
        grads[L + "b_2"] = dx.sum((0, 1))
        du = (dx @ p[L + "w_2"].T) * _gelu_grad(u, t)
        grads[L + "w_1"] = h2.reshape(n, d).T @ du.reshape(n, -1)
        grads[L + "b_1"] = du.sum((0, 1))
        dx1, grads[L + "ln2_g"], grads[L + "ln2_b"] = _ln_bwd(du @ p[L + "w_1"].T, ln2)
        dx1 = dx1 + dx
        # Attention block: x1 = x + attn(ln1(x)) Wo + bo
        grads[L + "w_o"] = a.reshape(n, d).T @ dx1.reshape(n, d)
        grads[L + "b_o"] = dx1.sum((0, 1))
        da = (dx1 @ p[L + "w_o"].T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
        dpr = da @ v.transpose(0, 1, 3, 2)
        dv = pr.transpose(0, 1, 3, 2) @ da
        ds = pr * (dpr - (dpr * pr).sum(-1, keepdims=True)) * scale
        dq = ds @ k
        dk = ds.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([z.transpose(0, 2, 1, 3).reshape(B, T, d) for z in (dq, dk, dv)], axis=-1)
        grads[L + "w_qkv"] = h.reshape(n, d).T @ dqkv.reshape(n, -1)
        grads[L + "b_qkv"] = dqkv.sum((0, 1))
        dxa, grads[L + "ln1_g"], grads[L + "ln1_b"] = _ln_bwd(dqkv @ p[L + "w_qkv"].T, ln1)
        dx = dx1 + dxa
    grads["wte"] = np.zeros_like(p["wte"])
    np.add.at(grads["wte"], idx.reshape(-1), dx.reshape(n, d))
    grads["wpe"] = np.zeros_like(p["wpe"])
    np.add.at(grads["wpe"], pos.reshape(-1), dx.reshape(n, d))
    return loss, grads


def train(cfg: Config, steps: int, seed: int, text: str, log: bool = False, lr: float = 1e-2,
          dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Adam with linear warm-up and cosine decay on random windows of `text`."""
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in init_params(cfg, rng).items()}
    if steps <= 0:
        return params
    data = encode_text(text)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    s = {k: np.zeros_like(v) for k, v in params.items()}
    lr_max, b1, b2, eps = lr, 0.9, 0.99, 1e-8
    warmup = max(1, steps // 20)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(data) - cfg.train_seq - 1, cfg.batch)
        idx = np.stack([data[a:a + cfg.train_seq] for a in starts])
        tgt = np.stack([data[a + 1:a + cfg.train_seq + 1] for a in starts])
        # Windows are shorter than the context; random start positions train
        # every position embedding (0..max_positions-1) at this cost.
        start = rng.integers(0, cfg.max_positions - cfg.train_seq + 1, cfg.batch)
        loss, grads = forward_backward(params, cfg, idx, tgt, start)
        lr = lr_max * min(1.0, step / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
        lr = max(lr, lr_max * 0.05)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            s[k] = b2 * s[k] + (1 - b2) * grads[k] ** 2
            mhat = m[k] / (1 - b1**step)
            shat = s[k] / (1 - b2**step)
            params[k] -= lr * mhat / (np.sqrt(shat) + eps)
        if log and (step % 100 == 0 or step == 1):
            print(f"step {step:5d}  loss {loss:.3f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return params


# ---------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------


def build_onnx(params: dict[str, np.ndarray], cfg: Config, *, position_ids: bool = True,
               kv_dtype: str = "float32") -> onnx.ModelProto:
    """The decoder as an ONNX graph with KV-cache inputs/outputs (Optimum layout)."""
    d, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    kv_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[kv_dtype]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output + "_node", **attrs))
        return output

    for k, v in params.items():
        const(k, v)
    const("c_heads", [0, 0, H, Dh], np.int64)
    const("c_merge", [0, 0, d], np.int64)
    const("c_split", [d, d, d], np.int64)
    const("c_scale", 1.0 / np.sqrt(Dh))
    const("c_neg", -1e9)  # masked scores; exp() of it underflows to exactly 0
    const("c_half", 0.5)
    const("c_one", 1.0)
    const("c_gelu_a", 0.044715)
    const("c_gelu_c", GELU_C)
    const("c_zero_i", 0, np.int64)
    const("c_one_i", 1, np.int64)
    const("c_axes0", [0], np.int64)
    const("c_axes1", [1], np.int64)
    const("c_axes12", [1, 2], np.int64)

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    if position_ids:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                    ["batch_size", "sequence_length"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab])]
    for i in range(cfg.n_layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kv}", kv_type, ["batch_size", H, "past_sequence_length", Dh]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", kv_type, ["batch_size", H, "total_sequence_length", Dh]))

    # Lengths as scalars: past (from the cache) and total = past + seq.
    node("Shape", ["past_key_values.0.key"], "past_len_1d", start=2, end=3)
    node("Shape", ["input_ids"], "seq_len_1d", start=1, end=2)
    node("Add", ["past_len_1d", "seq_len_1d"], "total_len_1d")
    node("Squeeze", ["past_len_1d", "c_axes0"], "past_len")
    node("Squeeze", ["total_len_1d", "c_axes0"], "total_len")

    tok = node("Gather", ["wte", "input_ids"], "tok_emb")
    if position_ids:
        pos = node("Gather", ["wpe", "position_ids"], "pos_emb")
    else:
        # Models without position_ids derive positions from the cache length.
        node("Range", ["past_len", "total_len", "c_one_i"], "positions")
        pos = node("Gather", ["wpe", "positions"], "pos_emb")
    x = node("Add", [tok, pos], "x_emb")

    # allowed[b, 0, t, s]: key s is visible to query t (causal) and not masked.
    node("Range", ["past_len", "total_len", "c_one_i"], "q_pos")
    node("Unsqueeze", ["q_pos", "c_axes1"], "q_pos_col")
    node("Range", ["c_zero_i", "total_len", "c_one_i"], "k_pos")
    node("LessOrEqual", ["k_pos", "q_pos_col"], "causal")
    node("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL)
    node("Unsqueeze", ["mask_bool", "c_axes12"], "mask_4d")
    allowed = node("And", ["causal", "mask_4d"], "allowed")

    def layer_norm(inp: str, g: str, b: str, out: str) -> str:
        return node("LayerNormalization", [inp, g, b], out, axis=-1, epsilon=LN_EPS)

    def heads(inp: str, out: str) -> str:
        node("Reshape", [inp, "c_heads"], out + "_bthd")
        return node("Transpose", [out + "_bthd"], out, perm=[0, 2, 1, 3])

    for i in range(cfg.n_layers):
        L = f"l{i}."
        h = layer_norm(x, L + "ln1_g", L + "ln1_b", L + "h")
        node("MatMul", [h, L + "w_qkv"], L + "qkv0")
        qkv = node("Add", [L + "qkv0", L + "b_qkv"], L + "qkv")
        nodes.append(helper.make_node("Split", [qkv, "c_split"], [L + "q", L + "k", L + "v"], axis=2,
                                      name=L + "split"))
        q, k, v = heads(L + "q", L + "q4"), heads(L + "k", L + "k4"), heads(L + "v", L + "v4")
        caches = []
        for kv, new in (("key", k), ("value", v)):
            past = f"past_key_values.{i}.{kv}"
            present = f"present.{i}.{kv}"
            if kv_dtype == "float32":
                caches.append(node("Concat", [past, new], present, axis=2))
            else:
                # Reduced-precision cache: store as kv_dtype, compute in float32.
                node("Cast", [past], past + "_f32", to=TensorProto.FLOAT)
                node("Concat", [past + "_f32", new], present + "_f32", axis=2)
                node("Cast", [present + "_f32"], present, to=kv_type)
                caches.append(node("Cast", [present], present + "_rt", to=TensorProto.FLOAT))
        k_all, v_all = caches
        node("Transpose", [k_all], L + "kT", perm=[0, 1, 3, 2])
        node("MatMul", [q, L + "kT"], L + "s0")
        node("Mul", [L + "s0", "c_scale"], L + "s1")
        node("Where", [allowed, L + "s1", "c_neg"], L + "s2")
        node("Softmax", [L + "s2"], L + "p", axis=-1)
        node("MatMul", [L + "p", v_all], L + "a4")
        node("Transpose", [L + "a4"], L + "a_bthd", perm=[0, 2, 1, 3])
        node("Reshape", [L + "a_bthd", "c_merge"], L + "a")
        node("MatMul", [L + "a", L + "w_o"], L + "o0")
        node("Add", [L + "o0", L + "b_o"], L + "o")
        x1 = node("Add", [x, L + "o"], L + "x1")
        h2 = layer_norm(x1, L + "ln2_g", L + "ln2_b", L + "h2")
        node("MatMul", [h2, L + "w_1"], L + "u0")
        u = node("Add", [L + "u0", L + "b_1"], L + "u")
        # gelu(u) = 0.5 u (1 + tanh(c (u + 0.044715 u^3)))  (tanh approximation)
        node("Mul", [u, u], L + "u2")
        node("Mul", [L + "u2", u], L + "u3")
        node("Mul", [L + "u3", "c_gelu_a"], L + "au3")
        node("Add", [u, L + "au3"], L + "inner0")
        node("Mul", [L + "inner0", "c_gelu_c"], L + "inner")
        node("Tanh", [L + "inner"], L + "t")
        node("Add", [L + "t", "c_one"], L + "t1")
        node("Mul", [u, "c_half"], L + "hu")
        node("Mul", [L + "hu", L + "t1"], L + "g")
        node("MatMul", [L + "g", L + "w_2"], L + "m0")
        node("Add", [L + "m0", L + "b_2"], L + "m")
        x = node("Add", [x1, L + "m"], L + "x")

    xf = layer_norm(x, "lnf_g", "lnf_b", "xf")
    node("MatMul", [xf, "w_lm"], "logits")

    graph = helper.make_graph(nodes, "tiny_lm", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="wasm-engine")
    model.ir_version = IR_VERSION
    # Read by the engine as the model's context limit.
    helper.set_model_props(model, {"max_position_embeddings": str(cfg.max_positions),
                                   "wasm_engine.kind": "causal_lm"})
    onnx.checker.check_model(model)
    return model


def build_tiny_lm(out_dir: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = 0, position_ids: bool = True,
                  kv_dtype: str = "float32", log: bool = False, config: Config | None = None) -> dict[str, Path]:
    """Train (steps > 0) or initialise the model, write model.onnx and tokenizer.json.

    `config` changes the architecture (tests use a smaller one); the vocabulary
    is fixed by the tokenizer.
    """
    cfg = config or Config()
    params = train(cfg, steps, seed, CORPUS.read_text(encoding="utf-8"), log=log)
    model = build_onnx({k: v.astype(np.float32) for k, v in params.items()}, cfg,
                       position_ids=position_ids, kv_dtype=kv_dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"
    model_path.write_bytes(model.SerializeToString())
    tok_path = out / "tokenizer.json"
    build_tokenizer().save(str(tok_path))
    return {"model": model_path, "tokenizer": tok_path}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (0: untrained weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-position-ids", action="store_true", help="omit the position_ids input")
    ap.add_argument("--kv-dtype", choices=("float32", "float16"), default="float32")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    paths = build_tiny_lm(args.out_dir, steps=args.steps, seed=args.seed, position_ids=not args.no_position_ids,
                          kv_dtype=args.kv_dtype, log=True)
    print(f"wrote {paths['model']} and {paths['tokenizer']} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
