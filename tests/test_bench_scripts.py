"""Smoke test of the benchmark scripts' output contract (never of their figures)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout_s: float = 300) -> list[str]:
    """The script's stdout lines (it must exit 0)."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout_s, check=True).stdout.strip().splitlines()


def _refused(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=60)


def test_bench_transport_json_shape():
    out = _run("bench_transport.py", "--json", "--rtt-n", "200", "--tput-n", "20000", "--slow-tput-n", "2000",
               "--asleep-n", "10")
    res = json.loads(out[-1])
    for k in ("ring", "ring_records", "pipe", "queue"):
        assert {"rtt_us_p50", "rtt_us_p99", "msgs_per_s"} <= res[k].keys()
        assert res[k]["rtt_us_p50"] > 0 and res[k]["msgs_per_s"] > 0
    for k in ("ring", "pipe"):
        assert res[k]["asleep_rtt_us_p50"] > 0
    assert res["ring"]["echo_cpu_us_per_rtt"] > 0 and res["ring"]["asleep_echo_cpu_us_per_rtt"] > 0
    assert set(res["targets"]) >= {"ring_rtt_vs_pipe", "ring_tput_vs_queue"}


def test_bench_runtime_json_shape():
    out = _run("bench_runtime.py", "--json", "--agents", "20", "--ticks", "4", "--workers", "1")
    (run,) = json.loads(out[-1])["runs"]
    assert run["agents"] == 20 and run["ticks"] == 4 and run["agent_steps"] == 80
    assert run["steady_agent_steps_per_s"] > 0 and run["final_tick_s"] >= 0 and run["startup_s"] > 0
    bad = _refused("bench_runtime.py", "--ticks", "2")
    assert bad.returncode == 2 and "--ticks must be >= 3" in bad.stderr


def test_bench_inference_json_shape():
    out = _run("bench_inference.py", "--json", "--models", "tensor", "--batches", "2", "--seconds", "0.1",
               "--tensor-dims", "8,4", "--provider", "cpu")
    r = json.loads(out[-1])["tensor"]["2"]
    assert {"raw_items_per_s", "engine_items_per_s", "ratio", "overhead_us_per_request"} <= r.keys()
    assert r["engine_items_per_s"] > 0 and r["ratio"] > 0 and r["raw_items_per_s_after"] > 0
    cpu = r["engine_cpu_us_per_tick"]
    assert set(cpu) == {"supervisor", "groups", "inference"}
    # CPU times tick in 10 ms steps: over this short window one process may show none.
    assert min(cpu.values()) >= 0 and sum(cpu.values()) > 0 and r["engine_tick_us"] > 0
    # Linux: the hypervisor's steal counter exists (zero on bare metal).
    assert r["engine_steal_us_per_tick"] is not None and r["engine_steal_us_per_tick"] >= 0
    # The model ran in every steady tick, for part of it.
    assert 0 < r["engine_model_us_per_tick"] < r["engine_tick_us"] and 0 < r["model_share"] < 1
    assert r["raw_us_per_batch"] == pytest.approx(2e6 / r["raw_items_per_s"])
    assert 0 < r["raw_model_share"] <= 1
    assert r["matched_ratio"] == pytest.approx(r["model_share"] / r["raw_model_share"])
    assert any(line.startswith("engine steady state, CPU us per tick") for line in out)


def test_bench_hostcall_json_shape():
    out = _run("bench_hostcall.py", "--json", "--agents", "5", "--ticks", "3", "--calls", "4", "--repeats", "1")
    r = json.loads(out[-1])
    for host in ("fast", "python-loop", "reference"):
        assert r[host]["step_us"] > 0 and "host_call_us" in r[host]


def test_probe_model_speed_json_shape():
    out = _run("probe_model_speed.py", "--json", "--seconds", "0.3", "--window-s", "0.1", "--tensor-dims", "8,4",
               "--batch", "2", timeout_s=120)
    r = json.loads(out[-1])
    assert 1 <= len(r["windows"]) <= 3 and all(w["calls"] > 0 and 0 < w["min_us"] <= w["median_us"]
                                                for w in r["windows"])
    assert r["median_us"] > 0 and r["max_over_min_of_medians"] >= 1
    bad = _refused("probe_model_speed.py", "--window-s", "0")
    assert bad.returncode == 2 and "--window-s" in bad.stderr
    bad = _refused("probe_model_speed.py", "--engine-load", "no/such/scenario.toml")
    assert bad.returncode == 2 and "--engine-load" in bad.stderr


def test_probe_after_run_json_shape():
    out = _run("probe_after_run.py", "--json", "--calls", "5", "--batch", "2", "--tensor-dims", "8,4", timeout_s=120)
    r = json.loads(out[-1])
    assert r["after_run_us"] > 0 and r["again_us"] > 0 and r["calls"] == 5 and r["batch"] == 2
    bad = _refused("probe_after_run.py", "--calls", "0")
    assert bad.returncode == 2 and "--calls" in bad.stderr


def test_probe_native_plan_json_shape():
    out = _run("probe_native_plan.py", "--json", "--ticks", "8", "--block", "2", "--windows", "2", "--batch", "3",
               "--tensor-dims", "8,4", timeout_s=120)
    r = json.loads(out[-1])
    assert r["identical"] is True and r["batch"] == 3 and r["ticks_per_path"] == 8 and len(r["windows"]) == 2
    assert all(w["plan_cpu_us"] > w["plan_run_us"] > 0 and w["numpy_cpu_us"] > w["numpy_run_us"] > 0
               for w in r["windows"])
    bad = _refused("probe_native_plan.py", "--ticks", "3", "--block", "2", "--windows", "2")
    assert bad.returncode == 2 and "--ticks" in bad.stderr


def test_probe_model_speed_with_engine_load_alternates_and_cleans_up():
    from wasm_engine.shm_protocol import list_segments

    args = ("--json", "--seconds", "0.6", "--window-s", "0.1", "--tensor-dims", "8,4", "--batch", "2",
            "--engine-load", str(ROOT / "examples" / "epidemic" / "scenario.toml"))
    if len(os.sched_getaffinity(0)) < 2:  # the load needs a CPU of its own
        bad = _refused("probe_model_speed.py", *args)
        assert bad.returncode == 2 and "at least 2 usable CPUs" in bad.stderr
        return
    before = set(list_segments())
    out = _run("probe_model_speed.py", *args, timeout_s=180)
    r = json.loads(out[-1])
    assert [w["load"] for w in r["windows"]] == [k % 2 == 1 for k in range(len(r["windows"]))]
    assert len(r["windows"]) >= 4 and r["load_over_idle"] > 0
    assert set(list_segments()) <= before  # the engine run was stopped and cleaned up
    assert not [p for p in psutil.process_iter(["cmdline"]) if "wasm-engine" in " ".join(p.info["cmdline"] or [])
                and "run" in (p.info["cmdline"] or [])]


def test_probe_group_tick_json_shape():
    out = _run("probe_group_tick.py", "--json", "--agents", "3", "--seconds", "0.05", "--windows", "2",
               "--tensor-dims", "8,4", timeout_s=120)
    r = json.loads(out[-1])
    assert r["agents"] == 3 and len(r["windows"]) == 2
    assert all(w["ticks"] > 0 and w["cpu_us"] > 0 and w["wall_us"] > 0 for w in r["windows"])
    bad = _refused("probe_group_tick.py", "--agents", "0")
    assert bad.returncode == 2 and "--agents" in bad.stderr
