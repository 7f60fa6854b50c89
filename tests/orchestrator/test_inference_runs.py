"""Issue 4 through the runtime: inference process, fixed-tick delivery, logged results."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from wasm_engine.inference import (
    InferenceEngine, ModelSpec, Request, decode_generate_result, decode_tensors, encode_tensors,
)
from wasm_engine.orchestrator import ModelLoadError, Supervisor, load_scenario, main, verify
from wasm_engine.orchestrator import _runlog
from wasm_engine.orchestrator._replaylog import LogReader

REPO = Path(__file__).resolve().parents[2]
AGENTS = Path(__file__).parent / "agents"


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(REPO / "scripts/make_tiny_tensor_model.py"), str(d / "mlp")], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, str(REPO / "scripts/make_tiny_lm.py"), str(d / "lm"), "--steps", "0"],
                   check=True, capture_output=True)
    return d


@pytest.fixture(scope="session")
def asker_wasm(tmp_path_factory):
    p = tmp_path_factory.mktemp("agents") / "asker.wasm"
    p.write_bytes(wasmtime.wat2wasm((AGENTS / "asker.wat").read_text()))
    return p


def asker_scenario(tmp, wasm, model_path, request: bytes, *, count=4, ticks=6, latency=1, budget=0):
    p = tmp / "ask.toml"
    p.write_text(textwrap.dedent(f"""
        [run]
        name = "ask"
        ticks = {ticks}
        seed = 1
        inference_latency_ticks = {latency}
        inference_budget_per_tick = {budget}
        log = "ask.welog"

        [[agents]]
        kind = "asker"
        module = "{wasm}"
        count = {count}
        capabilities = ["recv", "publish", "infer"]
        fuel_per_tick = 100000
        max_infers_per_tick = 1
        config_hex = "{request.hex()}"

        [[models]]
        id = "mlp"
        path = "{model_path}"
        kind = "tensor"
    """))
    return p


X = np.arange(16, dtype=np.float32).reshape(1, 16) / 16


def test_results_arrive_at_exactly_t_plus_latency(tmp_path, asker_wasm, models):
    sc = asker_scenario(tmp_path, asker_wasm, models / "mlp/tiny_mlp.onnx", encode_tensors([X]), latency=2, ticks=6)
    log = tmp_path / "l.welog"
    s = Supervisor(load_scenario(sc), groups=2, transport="process", log_path=log).run()
    model = s.as_dict()["models"][0]
    assert model["provider"] == "cpu"
    # The inference process's counters reach the summary: ticks 0-3's requests (4 agents each) were executed.
    assert model["requests"] == s.extra["inference_requests"] == 16
    assert model["runs"] >= 4 and model["run_s"] > 0
    want = InferenceEngine([ModelSpec(id="mlp", path=str(models / "mlp/tiny_mlp.onnx"), kind="tensor")],
                           provider="cpu").execute([Request(0, 0, encode_tensors([X]))])[0]
    with LogReader(log) as r:
        for tick in range(6):
            sec = r.read_tick(tick)
            if tick < 2:
                assert _runlog.S_INFERENCE not in sec
                continue
            res = _runlog.decode_records(sec[_runlog.S_INFERENCE])
            assert len(res) == 4 and set(res.headers["destination"]) == {0, 1, 2, 3}
            assert (res.headers["tick"] == tick - 2).all()  # requests of tick t, delivered at t + 2
            for i in range(4):
                assert res.payload_of(i) == want.payload and res.headers[i]["flags"] == 0
    # what the agent saw: u64 id, u32 status 0, u32 0, then the same tensor result
    pub = [r for r in _replay_publishes(log, 3)]
    assert pub and all(p[8:12] == b"\0\0\0\0" and p[16:] == want.payload[:32] for p in pub)


def _replay_publishes(log, tick):
    from wasm_engine.orchestrator import replay

    return [bytes.fromhex(r["payload_hex"]) for r in replay(log, tick)["records"] if r["kind"] == "publish"]


def test_wrong_shape_request_is_an_error_result_not_a_crash(tmp_path, asker_wasm, models):
    bad = encode_tensors([np.zeros((1, 7), np.float32)])
    sc = asker_scenario(tmp_path, asker_wasm, models / "mlp/tiny_mlp.onnx", bad, ticks=3)
    log = tmp_path / "l.welog"
    s = Supervisor(load_scenario(sc), transport="inline", log_path=log).run()
    assert s.traps == 0
    pubs = _replay_publishes(log, 2)
    assert len(pubs) == 4
    assert all(int.from_bytes(p[8:12], "little") != 0 for p in pubs)  # non-zero status


def test_inference_budget_admits_by_policy_and_defers_the_rest(tmp_path, asker_wasm, models):
    sc = asker_scenario(tmp_path, asker_wasm, models / "mlp/tiny_mlp.onnx", encode_tensors([X]), count=8, ticks=4,
                        budget=3)
    log = tmp_path / "l.welog"
    s = Supervisor(load_scenario(sc), transport="inline", log_path=log).run()
    from wasm_engine.orchestrator import replay

    for t in range(4):
        inf = [r for r in replay(log, t)["records"] if r["kind"] == "infer"]
        assert sum(r["status"] == "committed" for r in inf) == 3
    assert s.extra["inference_requests"] == 3 * 3  # the last tick's results would land after the run


def test_corrupt_model_is_one_clear_line_exit_2(tmp_path, asker_wasm, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model at all")
    sc = asker_scenario(tmp_path, asker_wasm, bad, encode_tensors([X]), ticks=2)
    assert main(["run", str(sc), "--quiet", "--no-log", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mlp" in err[0] and "broken.onnx" in err[0]
    with pytest.raises(ModelLoadError):
        Supervisor(load_scenario(sc), transport="inline").run()


@pytest.fixture
def village(tmp_path, models):
    d = tmp_path / "village"
    d.mkdir()
    shutil.copy(REPO / "examples/village/villager.wasm", d)
    shutil.copytree(models / "lm", d / "model")
    text = (REPO / "examples/village/scenario.toml").read_text().replace("ticks = 24", "ticks = 8")
    (d / "scenario.toml").write_text(text)
    return d / "scenario.toml"


def test_village_same_hash_twice_and_across_workers_and_verifies_without_the_model(village, tmp_path):
    sc = load_scenario(village)
    a = Supervisor(sc, groups=1, transport="process", log_path=tmp_path / "a.welog").run()
    b = Supervisor(sc, groups=3, transport="process").run()
    c = Supervisor(sc, groups=2, transport="inline").run()
    assert a.run_hash == b.run_hash == c.run_hash
    assert a.agents >= 50 and a.extra["inference_requests"] > 50 and a.messages > 0
    for s in (a, b, c):  # every generation token is a model run
        (lm,) = s.extra["models"]
        assert lm["requests"] == s.extra["inference_requests"] and lm["runs"] > lm["requests"] and lm["run_s"] > 0
    shutil.rmtree(village.parent / "model")  # verify needs only the log
    res = verify(tmp_path / "a.welog", groups=2)
    assert res.ok and res.run_hash == a.run_hash


def test_model_stats_payload_round_trips_and_is_checked(models):
    from wasm_engine.inference import (
        MODEL_STATS_VERSION, build_engine, decode_model_stats, encode_model_stats, stats_report,
    )

    engine = build_engine({"models": [{"id": "a", "path": str(models / "mlp/tiny_mlp.onnx"), "kind": "tensor"},
                                      {"id": "b", "path": str(models / "mlp/tiny_mlp.onnx"), "kind": "tensor"}],
                           "provider": "cpu"}, 1 << 20)
    engine.execute([Request(0, 1, encode_tensors([X]))] * 3)
    data = encode_model_stats(engine)
    assert len(data) == 2 * 24
    (a, b) = stats_report(decode_model_stats(data, MODEL_STATS_VERSION, 2))
    assert a == {"requests": 0, "runs": 0, "run_s": 0.0}
    assert b["requests"] == 3 and b["runs"] == engine.stats[1].runs >= 1 and b["run_s"] == engine.stats[1].run_ns / 1e9
    for payload, flags, n in ((data, MODEL_STATS_VERSION + 1, 2), (data[:-1], MODEL_STATS_VERSION, 2),
                              (data, MODEL_STATS_VERSION, 3)):
        with pytest.raises(ValueError, match="K_INF_DONE payload"):
            decode_model_stats(payload, flags, n)


def test_no_cuda_means_one_clear_line_and_cpu(tmp_path, asker_wasm, models):
    """On this CPU machine CUDA cannot load: the user sees one line, not ORT's wall of errors."""
    sc = asker_scenario(tmp_path, asker_wasm, models / "mlp/tiny_mlp.onnx", encode_tensors([X]), ticks=2)
    p = subprocess.run([sys.executable, "-m", "wasm_engine.orchestrator._cli", "run", str(sc), "--json", "--quiet",
                        "--no-log", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    used = summary["models"][0]["provider"]
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if used == "cpu":
        assert len(err) == 1 and "CUDA" in err[0] and "CPU" in err[0], p.stderr
    else:  # a machine with a working GPU: nothing to complain about
        assert used == "cuda" and not err


def test_requests_are_idempotent_a_restarted_engine_gives_the_same_bytes(models):
    """Request ids derive from (agent, seq): replaying the same batch into a fresh
    engine (what a restarted inference process sees) yields identical results."""
    from wasm_engine.inference import build_engine, execute_batch, request_id
    from wasm_engine.shm_protocol import RecordBatch

    lm_req = __import__("wasm_engine.inference", fromlist=["x"]).encode_generate_request(
        __import__("wasm_engine.inference", fromlist=["x"]).GenerateRequest(
            prompt="The village", max_new_tokens=8, temperature=0.9, top_k=5, top_p=0.9, seed=11))
    cfg = {"models": [{"id": "lm", "path": str(models / "lm/model.onnx"), "kind": "causal_lm",
                       "tokenizer": str(models / "lm/tokenizer.json")}], "provider": "cpu"}
    batch = RecordBatch.from_arrays(kind=66, source=np.array([3, 5, 9]), destination=0, tick=4,
                                    seq=np.array([7, 7, 2]), payload_len=np.full(3, len(lm_req)),
                                    payload=np.frombuffer(lm_req * 3, np.uint8))
    first = execute_batch(build_engine(cfg, 1 << 20), batch, 1 << 20)
    again = execute_batch(build_engine(cfg, 1 << 20), batch, 1 << 20)
    assert first == again and (first.headers["flags"] == 0).all()
    assert request_id(3, 7) != request_id(5, 7)
    assert decode_generate_result(first.payload_of(0)).n_generated_tokens == 8
