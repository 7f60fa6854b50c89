"""Model loading: clear errors for missing, corrupt and mis-shaped models."""

from __future__ import annotations

import shutil

import onnx
import pytest

from wasm_engine.inference import (
    GenerationParams,
    InferenceEngine,
    InferenceError,
    ModelLoadError,
    ModelSpec,
)


def load(*specs):
    return InferenceEngine(list(specs), provider="cpu")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError) as info:
        load(ModelSpec("brain", path))
    err = info.value
    assert isinstance(err, InferenceError)
    assert err.model_id == "brain" and err.path == str(path)
    assert "'brain'" in str(err) and str(path) in str(err) and "file not found" in str(err)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        load(ModelSpec("d", tmp_path))


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"\x08\x07" + b"\xff" * 64])
def test_corrupt_bytes(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it") as info:
        load(ModelSpec("bad", path))
    assert "re-export" in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_model(tmp_path, tensor_model_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(tensor_model_path.read_bytes()[:-200])
    with pytest.raises(ModelLoadError, match="'cut'"):
        load(ModelSpec("cut", path))


def test_ir_version_too_new_gets_a_hint(tmp_path, tensor_model_path):
    model = onnx.load(tensor_model_path)
    model.ir_version = 99
    path = tmp_path / "new.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="ir_version"):
        load(ModelSpec("new", path))


def test_tensor_model_is_not_a_causal_lm(tensor_model_path):
    with pytest.raises(ModelLoadError, match="no input named 'input_ids'") as info:
        load(ModelSpec("mlp", tensor_model_path, kind="causal_lm"))
    assert "text-generation-with-past" in str(info.value)


def test_causal_lm_missing_present_output(tmp_path, tiny_lm_dir):
    model = onnx.load(tiny_lm_dir / "model.onnx")
    keep = [o for o in model.graph.output if o.name != "present.1.value"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    shutil.copy(tiny_lm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="present.1.value"):
        load(ModelSpec("lm", path, kind="causal_lm"))


def test_causal_lm_tokenizer_problems(tmp_path, tiny_lm_dir):
    path = tmp_path / "model.onnx"
    shutil.copy(tiny_lm_dir / "model.onnx", path)
    with pytest.raises(ModelLoadError, match="tokenizer file not found"):
        load(ModelSpec("lm", path, kind="causal_lm"))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read tokenizer"):
        load(ModelSpec("lm", path, kind="causal_lm"))
    # An explicit tokenizer_path is honoured.
    engine = load(ModelSpec("lm", path, kind="causal_lm", tokenizer_path=tiny_lm_dir / "tokenizer.json"))
    assert engine.models[0].vocab_size == 97 and engine.models[0].max_context == 128


def test_bad_spec_values(tensor_model_path, tiny_lm_dir):
    with pytest.raises(ModelLoadError, match="unknown kind"):
        load(ModelSpec("x", tensor_model_path, kind="vision"))  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="top_p"):
        load(ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm", generation=GenerationParams(top_p=0.0)))
    with pytest.raises(InferenceError, match="duplicate"):
        load(ModelSpec("a", tensor_model_path), ModelSpec("a", tensor_model_path))


def test_model_report(tiny_lm_dir, tensor_model_path):
    engine = load(ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm"), ModelSpec("mlp", tensor_model_path))
    lm, mlp = engine.models
    assert (lm.index, lm.kind, lm.provider) == (0, "causal_lm", "cpu")
    assert lm.file_bytes == (tiny_lm_dir / "model.onnx").stat().st_size
    assert {t.name for t in lm.inputs} >= {"input_ids", "attention_mask", "past_key_values.0.key"}
    assert mlp.index == 1 and mlp.batching


def _small(make_tiny_lm):
    # Same code paths as the default model, a fraction of the arithmetic.
    return make_tiny_lm.Config(d_model=16, n_heads=2, d_ff=32, train_seq=16, batch=4)


def test_scripts_are_deterministic(tmp_path, make_tiny_lm, make_tiny_tensor_model):
    cfg = _small(make_tiny_lm)
    a = make_tiny_lm.build_tiny_lm(tmp_path / "a", steps=5, seed=1, config=cfg)
    b = make_tiny_lm.build_tiny_lm(tmp_path / "b", steps=5, seed=1, config=cfg)
    assert a["model"].read_bytes() == b["model"].read_bytes()
    assert a["tokenizer"].read_bytes() == b["tokenizer"].read_bytes()
    c = make_tiny_lm.build_tiny_lm(tmp_path / "c", steps=0, seed=1, config=cfg)
    assert c["model"].read_bytes() != a["model"].read_bytes()  # training changed the weights
    m1 = make_tiny_tensor_model.build_tiny_tensor_model(tmp_path / "m1")
    m2 = make_tiny_tensor_model.build_tiny_tensor_model(tmp_path / "m2")
    assert m1.read_bytes() == m2.read_bytes()
    model = onnx.load(a["model"])
    assert model.ir_version <= 10


def test_training_reduces_loss(make_tiny_lm):
    import numpy as np

    cfg = _small(make_tiny_lm)
    text = make_tiny_lm.CORPUS.read_text()
    data = make_tiny_lm.encode_text(text)
    idx = np.stack([data[i:i + 16] for i in range(0, 640, 16)])
    tgt = np.stack([data[i + 1:i + 17] for i in range(0, 640, 16)])
    before, _ = make_tiny_lm.forward_backward(make_tiny_lm.train(cfg, 0, 0, text), cfg, idx, tgt)
    after, _ = make_tiny_lm.forward_backward(make_tiny_lm.train(cfg, 60, 0, text), cfg, idx, tgt)
    assert after < before - 1.0


def test_onnx_graph_matches_numpy_reference(make_tiny_lm):
    """The exported graph computes what was trained (full pass and cached steps)."""
    import numpy as np
    import onnxruntime as ort

    cfg = _small(make_tiny_lm)
    params = make_tiny_lm.train(cfg, 10, 3, make_tiny_lm.CORPUS.read_text())
    model = make_tiny_lm.build_onnx({k: v.astype(np.float32) for k, v in params.items()}, cfg)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1, cfg.vocab, (2, 9))
    ref, _ = make_tiny_lm.forward_backward(params, cfg, ids, None)
    feeds = {"input_ids": ids, "attention_mask": np.ones((2, 9), np.int64),
             "position_ids": np.tile(np.arange(9), (2, 1))}
    for i in range(cfg.n_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((2, cfg.n_heads, 0, cfg.head_dim), np.float32)
    logits = sess.run(["logits"], feeds)[0]
    np.testing.assert_allclose(logits, ref, atol=1e-4)


def _variant(tmp_path, tiny_lm_dir, edit):
    model = onnx.load(tiny_lm_dir / "model.onnx")
    edit(model)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    shutil.copy(tiny_lm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    return path


def test_fixed_length_decoder_with_past_is_rejected(tmp_path, tiny_lm_dir):
    def fix_seq(model):
        dim = model.graph.input[0].type.tensor_type.shape.dim[1]
        dim.dim_value = 1

    path = _variant(tmp_path, tiny_lm_dir, fix_seq)
    with pytest.raises(ModelLoadError, match="fixed sequence length"):
        load(ModelSpec("lm", path, kind="causal_lm"))


def test_merged_decoder_use_cache_branch_is_fed(tmp_path, tiny_lm_dir):
    from onnx import TensorProto, helper

    from wasm_engine.inference import GenerateRequest, Request, Status, encode_generate_request

    def add_branch(model):
        model.graph.input.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))

    path = _variant(tmp_path, tiny_lm_dir, add_branch)
    engine = load(ModelSpec("lm", path, kind="causal_lm"))
    assert engine._models[0].layout.cache_branch
    [res] = engine.execute([Request(1, 0, encode_generate_request(GenerateRequest("ab", max_new_tokens=3)))])
    assert res.status == Status.OK
