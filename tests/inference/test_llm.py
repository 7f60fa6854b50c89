"""Causal-LM generation: determinism, stops, sampling, batching, KV cache."""

from __future__ import annotations

import numpy as np
import pytest

from wasm_engine.inference import (
    FinishReason,
    GenerateRequest,
    InferenceEngine,
    ModelSpec,
    Request,
    Status,
    decode_generate_result,
    encode_generate_request,
    encode_tensors,
)
from wasm_engine.inference._llm import VERIFY_MEMBERS, Sampler

LM, LM_NO_POS, LM_F16, MLP = 0, 1, 2, 3


def gen(engine, prompt, model=LM, **kw):
    kw.setdefault("return_token_ids", True)
    [res] = engine.execute([Request(1, model, encode_generate_request(GenerateRequest(prompt, **kw)))])
    assert res.status == Status.OK, res.payload
    return decode_generate_result(res.payload)


def test_greedy_is_deterministic_across_engines(lm_engine, tiny_lm_dir):
    a = gen(lm_engine, "The keeper", max_new_tokens=25)
    assert a.finish_reason == FinishReason.MAX_NEW_TOKENS
    assert a.n_generated_tokens == 25 and len(a.token_ids) == 25 and a.n_prompt_tokens == 10
    assert gen(lm_engine, "The keeper", max_new_tokens=25) == a
    fresh = InferenceEngine([ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm")], provider="cpu")
    assert gen(fresh, "The keeper", max_new_tokens=25) == a
    # Character-level tokenizer: one character per token, except <unk> (id 0),
    # a special token that decoding skips.
    assert len(a.text) == 25 - a.token_ids.count(0)


def test_stops_at_stop_token_and_excludes_it(lm_engine):
    ref = gen(lm_engine, "Hello", max_new_tokens=30)
    stop = ref.token_ids[6]
    first = ref.token_ids.index(stop)
    out = gen(lm_engine, "Hello", max_new_tokens=30, stop_token_ids=(stop, 99999))
    assert out.finish_reason == FinishReason.STOP_TOKEN
    assert out.token_ids == ref.token_ids[: first + 1]
    assert out.n_generated_tokens == first + 1
    assert out.text == ref.text[:first]


def test_max_new_tokens_zero_and_context_limit(lm_engine):
    out = gen(lm_engine, "abc", max_new_tokens=0)
    assert out.text == "" and out.n_generated_tokens == 0 and out.finish_reason == FinishReason.MAX_NEW_TOKENS
    # The tiny LM has 128 positions (from its metadata): a 120-token prompt can
    # grow to 128 fed tokens, which yields 9 new ones.
    out = gen(lm_engine, "x" * 120, max_new_tokens=50)
    assert out.finish_reason == FinishReason.CONTEXT_FULL and out.n_generated_tokens == 9
    [res] = lm_engine.execute([Request(1, LM, encode_generate_request(GenerateRequest("x" * 129, max_new_tokens=1)))])
    assert res.status == Status.TOO_LARGE


def test_seeded_sampling_is_reproducible_and_seed_dependent(lm_engine):
    kw = dict(max_new_tokens=30, temperature=1.0, top_p=0.95)
    a = gen(lm_engine, "Once", seed=1, **kw)
    assert gen(lm_engine, "Once", seed=1, **kw) == a
    b = gen(lm_engine, "Once", seed=2, **kw)
    assert a.token_ids != b.token_ids
    assert gen(lm_engine, "Once", seed=1, **kw) == a


def test_top_k_one_equals_greedy(lm_engine):
    greedy = gen(lm_engine, "Sea", max_new_tokens=15)
    assert gen(lm_engine, "Sea", max_new_tokens=15, temperature=0.7, top_k=1, seed=5).token_ids == greedy.token_ids


def test_default_params_from_spec(lm_engine):
    # Spec defaults of model 0: max_new_tokens=7, temperature 0.9, top_k 5, seed 11.
    a = gen(lm_engine, "Hi", use_defaults=True)
    assert a.n_generated_tokens == 7
    b = gen(lm_engine, "Hi", max_new_tokens=7, temperature=0.9, top_k=5, seed=11)
    assert a == b
    c = gen(lm_engine, "Hi", use_defaults=True, stop_token_ids=(a.token_ids[2],))
    assert c.finish_reason == FinishReason.STOP_TOKEN and len(c.token_ids) <= 3


def test_kv_cache_matches_recomputation_without_cache(lm_engine):
    out = gen(lm_engine, "The light", max_new_tokens=12)
    model = lm_engine._models[LM]
    prompt = list(model.tokenizer.encode("The light").ids)
    seq = prompt + list(out.token_ids)
    cached_logits, _ = model.forward(np.array([prompt]))  # prefill through the cache path
    for step, token in enumerate(out.token_ids):
        ids = np.array([seq[: len(prompt) + step]])
        logits, _ = model.forward(ids, past=None)  # whole sequence, empty cache
        assert int(np.argmax(logits[0, -1])) == token
        if step == 0:
            np.testing.assert_allclose(logits, cached_logits, rtol=0, atol=1e-5)


def test_step_inputs_are_kept_per_shape_and_bounded(lm_engine, monkeypatch):
    """forward() reuses a one-token step's mask and positions per (batch, past): right values, bounded count."""
    from wasm_engine.inference import _llm

    model = lm_engine._models[LM]
    model._step_inputs.clear()
    fed = []
    real = _llm.timed_run
    monkeypatch.setattr(_llm, "timed_run", lambda st, run, names, feeds: fed.append(dict(feeds)) or real(st, run, names, feeds))
    ids = np.array([[5, 6, 7], [8, 9, 10]])
    _, past = model.forward(ids)
    model.forward(np.array([[1], [2]]), past, 3)
    model.forward(np.array([[1], [2]]), past, 3)  # same shape: the same arrays again
    first, second, third = fed
    assert first["position_ids"].tolist() == [[0, 1, 2]] * 2 and first["attention_mask"].shape == (2, 3)
    assert second["position_ids"].tolist() == [[3], [3]] and second["attention_mask"].tolist() == [[1] * 4] * 2
    assert third["position_ids"] is second["position_ids"] and third["attention_mask"] is second["attention_mask"]
    monkeypatch.setattr(_llm, "_STEP_INPUT_CACHE_ENTRIES", 2)
    assert len(model._step_inputs) == 1  # the prompt step's inputs are not kept
    for past_len in (4, 5, 6):  # three more step shapes
        model.forward(np.array([[1]]), [p[:1, :, :1].repeat(past_len, axis=2) for p in past], past_len)
        assert len(model._step_inputs) <= 2
    model._step_inputs.clear()


def test_model_without_position_ids_gives_same_tokens(lm_engine):
    # Same weights; positions are derived inside the graph from the cache length.
    for kw in (dict(max_new_tokens=20), dict(max_new_tokens=20, temperature=0.8, seed=3)):
        assert gen(lm_engine, "Boats", LM_NO_POS, **kw).token_ids == gen(lm_engine, "Boats", LM, **kw).token_ids


def test_float16_cache_model_runs(lm_engine):
    out = gen(lm_engine, "Boats", LM_F16, max_new_tokens=10)
    assert out.n_generated_tokens == 10
    assert lm_engine._models[LM_F16].layout.past[0].dtype == np.float16


def test_batched_generation_equals_unbatched(lm_engine, tiny_lm_dir):
    engine = InferenceEngine([ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm")], provider="cpu")
    model = engine._models[0]
    prompts = ["abcd", "wxyz", "The", "sea!", "Tea", "boat", "bay", "lamp"]  # lengths 4 and 3
    reqs = []
    for i in range(24):
        params = dict(max_new_tokens=5 + i % 7, seed=i)
        if i % 3:
            params.update(temperature=0.8, top_k=10 * (i % 2))
        if i % 5 == 0:
            params["stop_token_ids"] = (i % 97,)
        reqs.append(Request(i, 0, encode_generate_request(GenerateRequest(prompts[i % len(prompts)], **params))))
    first = engine.execute(reqs)  # verifies batching along the way
    assert model.batch_verified >= VERIFY_MEMBERS, "batching should be verified on this model"
    calls = []
    real_run = model.session.run
    model.session.run = lambda *a, **k: calls.append(a[1]["input_ids"].shape[0]) or real_run(*a, **k)
    try:
        batched = engine.execute(reqs)
    finally:
        model.session.run = real_run
    assert max(calls) > 1, "requests should now run in batches"
    alone = [engine.execute([r])[0] for r in reqs]
    assert all(r.status == Status.OK for r in batched)
    assert batched == alone == first


def test_error_results(lm_engine):
    good = GenerateRequest("hi", max_new_tokens=2)
    payload = encode_generate_request(good)
    reqs = [
        Request(1, LM, encode_generate_request(GenerateRequest("", max_new_tokens=2))),  # empty prompt
        Request(2, LM, payload[:-1] + b"\xff"),  # invalid UTF-8
        Request(3, LM, encode_tensors([np.zeros(3, np.float32)])),  # tensors to an LM
        Request(4, LM, encode_generate_request(GenerateRequest("hi", temperature=float("inf")))),
        Request(5, MLP, payload),  # generate request to a tensor model
        Request(6, LM, payload),
    ]
    results = lm_engine.execute(reqs)
    assert [r.status for r in results] == [Status.BAD_INPUT, Status.MALFORMED, Status.MALFORMED,
                                           Status.BAD_PARAMS, Status.MALFORMED, Status.OK]


def test_result_size_limit(tiny_lm_dir):
    engine = InferenceEngine([ModelSpec("lm", tiny_lm_dir / "model.onnx", kind="causal_lm")], provider="cpu",
                             max_result_bytes=20)
    [res] = engine.execute([Request(1, 0, encode_generate_request(GenerateRequest("a", max_new_tokens=30)))])
    assert res.status == Status.TOO_LARGE


# -- sampler -------------------------------------------------------------------


def test_philox_stream_is_pinned():
    # Known answers: a change here would change every sampled token.
    s = Sampler(1.0, 0, 1.0, 42)
    assert [s.uniform() for _ in range(3)] == [0.8201981478608876, 0.18924562408645496, 0.8676608148821462]


def test_greedy_ties_go_to_lowest_id():
    assert Sampler(0.0, 0, 1.0, 0)(np.array([1.0, 3.0, 3.0, 2.0])) == 1


def test_top_k_and_top_p_filter():
    logits = np.log(np.array([0.05, 0.5, 0.3, 0.15]))
    picks = {Sampler(1.0, 2, 1.0, seed)(logits) for seed in range(200)}
    assert picks == {1, 2}
    picks = {Sampler(1.0, 0, 0.6, seed)(logits) for seed in range(200)}
    assert picks == {1, 2}  # 0.5 < 0.6 <= 0.8
    picks = {Sampler(1.0, 0, 0.5, seed)(logits) for seed in range(200)}
    assert picks == {1}


def test_sampling_follows_the_distribution_and_skips_impossible_tokens():
    logits = np.array([0.0, np.log(3.0), -np.inf])
    counts = np.bincount([Sampler(1.0, 0, 1.0, seed)(logits) for seed in range(4000)], minlength=3)
    assert counts[2] == 0
    assert abs(counts[1] / 4000 - 0.75) < 0.03


def test_nan_logits_are_an_error():
    from wasm_engine.inference._llm import ModelOutputError

    with pytest.raises(ModelOutputError):
        Sampler(0.0, 0, 1.0, 0)(np.array([0.0, np.nan]))
