#!/usr/bin/env python3
"""Inference benchmark: raw ONNX Runtime throughput vs the same work through wasm-engine agents.

For two models and batch sizes 1, 16 and 64 (--batches) it measures:

raw     The model work alone, in this process, on a session created exactly
        as the inference engine creates its sessions
        (`inference._providers.create_session`: same provider choice, one
        intra-/inter-op thread, sequential execution, BASIC graph
        optimisation, deterministic compute, no spinning).
          tensor: `session.run` on one prebuilt [B, IN] float32 batch.
          tiny_lm: greedy generation for B identical prompts at once, written
            directly against ONNX Runtime: the prompt's token ids are
            computed once beforehand, then `--lm-new-tokens` `session.run`
            calls with a KV cache (the first feeds the whole prompt, each
            later one the B tokens just chosen), choosing each next token by a
            vectorised numpy argmax over the last logits.  No tokenising, no
            detokenising, no per-row Python.  This is the same sequence of
            model calls with the same shapes that the engine's batched
            generation makes for these requests.
core    The engine's own code in-process (`InferenceEngine.execute` on B
        encoded requests): payload decoding, batching, per-row sampling,
        result encoding; no processes, no wasm.  Shown to locate overhead,
        not part of the ratio.
engine  B wasm agents (examples/bench_infer/agent.c) under the real
        supervisor (`Supervisor(..., transport="process")`: worker
        process(es), a dedicated inference process, shared-memory rings),
        each sending ONE request per tick whose bytes are the scenario's
        `config_hex`, with an unlimited inference budget, so every tick hands
        the inference process one batch of B requests.  Throughput =
        requests completed per second of steady-state wall time: from the end
        of tick (1 + latency + warm-up) to the end of the second-to-last tick
        (the last one also collects final agent states), counting the B
        results of one tick per tick elapsed (tick t's results are what tick
        t + latency waits for).  Excluded: process start-up and model loading
        (tick 0), the first `inference_latency_ticks` ticks, whose results
        are not due yet, and the ticks in which the engine still checks that
        batching does not change results (it runs the first 8 requests of
        each shape both batched and one at a time).  No replay log is written
        unless --log.  The agent traps on any error result, and the run is
        rejected unless every request succeeded.

Each figure is the median over 5 equal slices of its measurement (ticks for
the engine, calls for raw and core), so that a burst of unrelated load on a
shared machine skews one slice rather than the result; the JSON also has the
plain whole-window rates (*_mean).

An item is one request: one [1, IN] row for the tensor model, one whole
generation (prompt + `--lm-new-tokens` tokens) for the LM.

ratio = engine items/s / raw items/s, and the per-request overhead is
(1 / engine_items_per_s - 1 / raw_items_per_s) * 1e6 microseconds: the wall
time the engine adds to each request (IPC, wasm stepping, supervisor, payload
handling, sampling) beyond the model work, as seen in throughput.  Agent
stepping of tick t+1 overlaps the inference of tick t only when the scenario's
`inference_latency_ticks` is >= 2 (with 1, a tick starts by waiting for the
previous tick's results); --latency sets it (default 2).

Where the engine's time goes: over the same steady-state window, the CPU time
(user + system) of the supervisor (this process), the agent groups and the
inference process, per tick (JSON: engine_cpu_us_per_tick, engine_tick_us),
printed with "busy cores" = their sum / the tick time.  Near the machine's
core count the run is CPU-bound, and the process with the largest share is
the one to make cheaper; well below it, time goes to waiting (hand-offs,
wake-ups) -- or to the hypervisor: "stolen cores" is the CPU time it took
from this VM over the window (/proc/stat steal, JSON engine_steal_us_per_tick)
divided by the tick time.  Raw is measured again right after each engine run
(raw_items_per_s_after, half as long): on a shared VM whose speed drifts,
"raw after/before" far from 1 says that configuration's ratio straddles a
speed change; the ratio is not adjusted.

The model's own time inside the engine: the inference process counts the
wall time of every session.run (the run summary's per-model run_s).  Over the
same window, per tick, that is "model us" (JSON engine_model_us_per_tick),
beside "raw us", the raw batch's time (raw_us_per_batch); "model share" =
model us / tick us (JSON model_share) is the fraction of each tick the model
ran.  It is measured at the same moment as the tick, so a change of machine
speed between the raw and engine measurements moves it less than the ratio;
where the model runs at raw speed inside the engine it equals the ratio.
Raw has work of its own around session.run too (for the LM: feeds and the
argmax at each step): "raw share" (JSON raw_model_share) is the fraction of
the raw measurement spent inside session.run, and "matched ratio" (JSON
matched_ratio) = model share / raw share is the ratio that raw and engine
would show if measured in the same speed phase, provided session.run itself
runs at one speed in both (checked: 805 us per MLP batch-16 call in the
engine against 814 us raw, same phase).  Both shares are measured within
their own windows, so the machine's speed phases barely move it.  The
target check ("meets_target") stays on the plain ratio.

Models are built into a temporary directory: the tensor model by
scripts/make_tiny_tensor_model.py --dims (default 256,1024,1024,16: ~1.3 M
multiply-adds per item), the LM by scripts/make_tiny_lm.py --steps 0
(untrained; the work per token does not depend on the weights), unless
--lm-dir names an existing one (model.onnx + tokenizer.json).

Figures are measured, never asserted: nothing here fails because a number is
low.  Progress goes to stderr; the table to stdout; with --json the last
stdout line is one JSON object:
  {"tensor": {"1": {"raw_items_per_s": ..., "engine_items_per_s": ..., "ratio": ...,
                    "overhead_us_per_request": ..., "core_items_per_s": ..., ...}, "16": {...}, "64": {...}},
   "tiny_lm": {...}, "machine": {...}, "settings": {...}}

    python scripts/bench_inference.py [--quick] [--json] [--lm-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "examples" / "bench_infer"
AGENT_WASM = AGENT_DIR / "agent.wasm"
TEMPLATE = AGENT_DIR / "scenario.toml.in"

TARGET_RATIO = 0.9
TARGET_MIN_BATCH = 16
# The engine checks batching on the first VERIFY_MEMBERS requests of a shape
# (inference/_tensor.py, inference/_llm.py) before trusting it.
VERIFY_MEMBERS = 8
DEFAULT_TENSOR_DIMS = "256,1024,1024,16"
DEFAULT_PROMPT = "The village elder said"
# Every measurement is split into this many equal slices and the median
# slice's rate is reported (the whole-window mean is in the JSON as *_mean):
# on a shared machine a burst of someone else's work then skews one slice,
# not the figure.
SLICES = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Models and workloads
# ---------------------------------------------------------------------------


def build_models(work: Path, args) -> dict[str, dict]:
    """Build (or locate) the models; returns model id -> description."""
    models: dict[str, dict] = {}
    if "tensor" in args.models:
        out = subprocess.run([sys.executable, str(ROOT / "scripts/make_tiny_tensor_model.py"), str(work / "mlp"),
                              "--dims", args.tensor_dims], check=True, capture_output=True, text=True)
        dims = [int(d) for d in args.tensor_dims.split(",")]
        models["tensor"] = {"kind": "tensor", "path": Path(out.stdout.strip().splitlines()[-1]), "dims": dims,
                            "macs_per_item": sum(a * b for a, b in zip(dims, dims[1:]))}
    if "tiny_lm" in args.models:
        if args.lm_dir:
            lm = Path(args.lm_dir).resolve()
        else:
            lm = work / "lm"
            subprocess.run([sys.executable, str(ROOT / "scripts/make_tiny_lm.py"), str(lm), "--steps", "0"],
                           check=True, stdout=subprocess.DEVNULL)
        for f in ("model.onnx", "tokenizer.json"):
            if not (lm / f).is_file():
                raise SystemExit(f"{lm}: no {f} (--lm-dir must hold model.onnx and tokenizer.json)")
        models["tiny_lm"] = {"kind": "causal_lm", "path": lm / "model.onnx", "tokenizer": lm / "tokenizer.json",
                             "prompt": args.lm_prompt, "new_tokens": args.lm_new_tokens}
    return models


def request_payload(model: dict) -> bytes:
    """The bytes one agent sends per tick (identical for all agents)."""
    from wasm_engine.inference import GenerateRequest, encode_generate_request, encode_tensors

    if model["kind"] == "tensor":
        x = np.random.default_rng(1).standard_normal((1, model["dims"][0])).astype(np.float32)
        return encode_tensors([x])
    return encode_generate_request(GenerateRequest(prompt=model["prompt"], max_new_tokens=model["new_tokens"],
                                                   temperature=0.0, top_k=0, top_p=1.0, seed=0))


def _rate(fn, items_per_call: int, seconds: float) -> tuple[float, float, int]:
    """Items/s of calling fn repeatedly for about `seconds` in SLICES slices.

    Returns (median of the slices' rates, rate over the whole time, calls).
    """
    rates, calls, items_total, t_total = [], 0, 0, 0.0
    for _ in range(SLICES):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / SLICES:
                break
        rates.append(n * items_per_call / dt)
        calls += n
        items_total += n * items_per_call
        t_total += dt
    return float(np.median(rates)), items_total / t_total, calls


# ---------------------------------------------------------------------------
# raw: ONNX Runtime alone
# ---------------------------------------------------------------------------


def tensor_session(model: dict, batch: int, provider: str) -> tuple:
    """The tensor model's session, made as the engine makes its sessions, and one
    prebuilt [batch, IN] float32 batch: (session, provider used, output names, feeds)."""
    from wasm_engine.inference._payloads import aligned_copy
    from wasm_engine.inference._providers import create_session

    sess, used = create_session(model["path"], provider, "tensor")
    x = aligned_copy(np.random.default_rng(2).standard_normal((batch, model["dims"][0])).astype(np.float32))
    return sess, used, [o.name for o in sess.get_outputs()], {sess.get_inputs()[0].name: x}


def raw_tensor(model: dict, batch: int, provider: str, seconds: float) -> dict:
    sess, used, names, feeds = tensor_session(model, batch, provider)
    for _ in range(3):
        sess.run(names, feeds)
    run_ns = [0]

    def call() -> None:
        t0 = time.perf_counter_ns()
        sess.run(names, feeds)
        run_ns[0] += time.perf_counter_ns() - t0

    med, mean, n = _rate(call, batch, seconds)
    return {"raw_items_per_s": med, "raw_items_per_s_mean": mean, "raw_calls": n, "provider": used,
            "raw_model_share": _run_share(run_ns[0], n, batch, mean)}


def _run_share(run_ns: int, calls: int, items_per_call: int, mean_items_per_s: float) -> float:
    """The fraction of a raw measurement's time spent inside session.run."""
    return run_ns / 1e9 / (calls * items_per_call / mean_items_per_s)


def raw_lm(model: dict, batch: int, provider: str, seconds: float) -> dict:
    """Greedy generation of B identical prompts, directly on ONNX Runtime with a KV cache."""
    from tokenizers import Tokenizer

    from wasm_engine.inference._payloads import aligned_copy
    from wasm_engine.inference._providers import create_session

    sess, used = create_session(model["path"], provider, "tiny_lm")
    ids = Tokenizer.from_file(str(model["tokenizer"])).encode(model["prompt"]).ids
    meta = sess.get_modelmeta().custom_metadata_map
    context = next((int(meta[k]) for k in ("max_position_embeddings", "n_positions", "max_context") if k in meta),
                   None)
    if context is not None and len(ids) + model["new_tokens"] > context:
        # The engine would stop such requests early (CONTEXT_FULL): not the same work.
        raise SystemExit(f"tiny_lm: {len(ids)} prompt tokens + {model['new_tokens']} new tokens exceed the "
                         f"model's context of {context}; shorten --lm-prompt or --lm-new-tokens")
    inputs = {i.name: i for i in sess.get_inputs()}
    past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                        key=lambda n: (int(n.split(".")[1]), n.split(".")[2]))
    present_names = ["present." + n[len("past_key_values."):] for n in past_names]
    out_names = ["logits"] + present_names
    np_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32}
    ids_dtype = np_type[inputs["input_ids"].type]
    mask_dtype = np_type[inputs["attention_mask"].type]
    pos_dtype = np_type[inputs["position_ids"].type] if "position_ids" in inputs else None
    cache_branch = "use_cache_branch" in inputs  # Optimum "merged" decoders
    outputs = {o.name: o for o in sess.get_outputs()}
    empty_past = {}
    for n, out_name in zip(past_names, present_names):
        # [batch, heads, past, head_dim]; heads/head_dim from the output if symbolic in the input
        shape, oshape = inputs[n].shape, outputs[out_name].shape
        heads, head_dim = (d if isinstance(d, int) else o for d, o in ((shape[1], oshape[1]), (shape[3], oshape[3])))
        if not (isinstance(heads, int) and isinstance(head_dim, int)):
            raise SystemExit(f"tiny_lm: cannot tell the KV-cache shape of {n} ({shape})")
        empty_past[n] = np.zeros((batch, heads, 0, head_dim), np_type[inputs[n].type])
    prompt = aligned_copy(np.tile(np.asarray(ids, np.int64), (batch, 1)), ids_dtype)
    n_new = model["new_tokens"]
    run_ns = [0]

    def generate() -> np.ndarray:
        tokens, past, past_len = prompt, empty_past, 0
        out = np.empty((batch, n_new), np.int64)
        for step in range(n_new):
            seq = tokens.shape[1]
            feeds = {"input_ids": tokens, "attention_mask": np.ones((batch, past_len + seq), mask_dtype)}
            if pos_dtype is not None:
                feeds["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=pos_dtype),
                                                        (batch, seq)).copy()
            if cache_branch:
                feeds["use_cache_branch"] = np.array([past_len > 0])
            feeds.update(past)
            t0 = time.perf_counter_ns()
            res = sess.run(out_names, feeds)
            run_ns[0] += time.perf_counter_ns() - t0
            nxt = res[0][:, -1, :].argmax(axis=-1)
            out[:, step] = nxt
            past = dict(zip(past_names, res[1:]))
            past_len += seq
            tokens = nxt.astype(ids_dtype).reshape(batch, 1)
        return out

    generate()
    run_ns[0] = 0
    med, mean, n = _rate(generate, batch, seconds)
    return {"raw_items_per_s": med, "raw_items_per_s_mean": mean, "raw_calls": n, "provider": used,
            "prompt_tokens": len(ids), "raw_model_share": _run_share(run_ns[0], n, batch, mean)}


# ---------------------------------------------------------------------------
# core: the engine's code in-process
# ---------------------------------------------------------------------------


def core_engine(model_id: str, model: dict, batch: int, provider: str, payload: bytes, seconds: float) -> dict:
    from wasm_engine.inference import InferenceEngine, ModelSpec, Request

    spec = ModelSpec(id=model_id, path=str(model["path"]), kind=model["kind"],
                     tokenizer_path=str(model["tokenizer"]) if "tokenizer" in model else None)
    engine = InferenceEngine([spec], provider=provider)
    reqs = [Request(i, 0, payload) for i in range(batch)]
    for _ in range(math.ceil(VERIFY_MEMBERS / batch) + 1):  # past the batching check
        results = engine.execute(reqs)
    bad = [r for r in results if r.status != 0]
    if bad:
        raise SystemExit(f"{model_id}: the engine rejected the benchmark request: status {bad[0].status}: "
                         f"{bad[0].payload.decode('utf-8', 'replace')}")
    med, mean, _ = _rate(lambda: engine.execute(reqs), batch, seconds)
    return {"core_items_per_s": med, "core_items_per_s_mean": mean}


# ---------------------------------------------------------------------------
# engine: wasm agents + supervisor + inference process
# ---------------------------------------------------------------------------


def write_scenario(work: Path, model_id: str, model: dict, batch: int, ticks: int, latency: int, provider: str,
                   payload: bytes) -> Path:
    tmpl = string.Template(TEMPLATE.read_text())
    tok = f'tokenizer = "{model["tokenizer"]}"' if "tokenizer" in model else ""
    text = tmpl.substitute(model_id=model_id, batch=batch, ticks=ticks, latency=latency,
                           log=str(work / f"{model_id}_b{batch}.welog"), module=str(AGENT_WASM),
                           config_hex=payload.hex(), model_path=str(model["path"]), model_kind=model["kind"],
                           tokenizer_line=tok, provider=provider)
    path = work / f"{model_id}_b{batch}.toml"
    path.write_text(text)
    return path


def _cpu_s(sup) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process (the supervisor),
    the inference process and the agent groups together."""
    import psutil

    from _proc_cpu import children_cpu_s

    t = psutil.Process().cpu_times()
    out = {"supervisor": t.user + t.system, "groups": 0.0, "inference": 0.0}
    inf = getattr(sup.inference, "proc", None)
    for pid, cpu_s in children_cpu_s().items():
        out["inference" if inf is not None and pid == inf.pid else "groups"] += cpu_s
    return out


def engine_run(scenario_path: Path, batch: int, groups: int, write_log: bool) -> dict:
    from _proc_cpu import machine_steal_s
    from wasm_engine.orchestrator import Supervisor, load_scenario

    sc = load_scenario(scenario_path)
    latency, ticks = sc.inference_latency_ticks, sc.ticks
    marks: dict[int, float] = {}
    warm = math.ceil(VERIFY_MEMBERS / batch) + 2
    d0 = 1 + latency + warm
    d1 = ticks - 1
    cpu: dict[int, dict[str, float]] = {}
    steal: dict[int, float | None] = {}
    model_ns: dict[int, int] = {}

    def progress(done, total, steps, elapsed_s):
        marks[done] = time.perf_counter()
        if done in (d0, d1):
            cpu[done] = _cpu_s(sup)
            steal[done] = machine_steal_s()
            # The inference process's session.run time so far, as of the last
            # results it sent (those of tick done-1-latency at both edges).
            model_ns[done] = int(sup.inference.model_stats["run_ns"].sum())

    t0 = time.perf_counter()
    sup = Supervisor(sc, groups=groups, transport="process", progress=progress,
                     log_path=sc.log_path if write_log else None)
    summary = sup.run()
    wall = time.perf_counter() - t0
    expected = batch * max(0, ticks - latency)
    if summary.traps or summary.quarantined or summary.extra.get("inference_requests") != expected:
        raise SystemExit(f"{scenario_path.name}: the run did not serve every request "
                         f"(traps {summary.traps}, quarantined {summary.quarantined}, "
                         f"requests {summary.extra.get('inference_requests')} of {expected})")
    # marks[d] = end of tick d-1; by then the results of ticks <= d-1-latency
    # have come back, so from d0 to d1 exactly (d1 - d0) ticks' results did.
    if d1 - d0 < SLICES:
        raise SystemExit(f"{scenario_path.name}: too few ticks ({ticks}) for a steady-state window")
    steady = marks[d1] - marks[d0]
    cuts = [d0 + round(k * (d1 - d0) / SLICES) for k in range(SLICES + 1)]
    rates = [batch * (b - a) / (marks[b] - marks[a]) for a, b in zip(cuts, cuts[1:])]
    models = summary.extra.get("models") or [{}]
    return {
        "engine_items_per_s": float(np.median(rates)),
        "engine_items_per_s_mean": batch * (d1 - d0) / steady,
        "engine_ticks": ticks,
        "engine_steady_ticks": d1 - d0,
        "engine_steady_s": steady,
        "engine_startup_s": marks[1] - t0,
        "engine_wall_s": wall,
        "engine_provider": models[0].get("provider"),
        # Where the steady state's CPU went, per tick: with the tick time
        # (1e6 / ticks per s) and the machine's cores this says whether a run
        # is CPU-bound and which process to make cheaper.
        "engine_cpu_us_per_tick": {k: (cpu[d1][k] - cpu[d0][k]) / (d1 - d0) * 1e6 for k in cpu[d0]},
        "engine_tick_us": steady / (d1 - d0) * 1e6,
        # Wall time inside session.run in the inference process, per tick:
        # the model's work measured at the same moment as the tick.
        "engine_model_us_per_tick": (model_ns[d1] - model_ns[d0]) / (d1 - d0) / 1e3,
        # CPU time the hypervisor took from this VM over the window, per tick
        # (None: no /proc/stat); "stolen cores" in the table.
        "engine_steal_us_per_tick": None if steal[d0] is None or steal[d1] is None
        else (steal[d1] - steal[d0]) / (d1 - d0) * 1e6,
    }


def plan_ticks(batch: int, raw_items_per_s: float, seconds: float, latency: int) -> int:
    """Ticks for about `seconds` of steady state.

    A guess at the tick time: the model work plus ~1 ms per tick and ~20 us
    per agent of runtime cost (what a 2-core VM showed, 2026-11-21); only the
    run's length depends on it, not the figures.
    """
    per_tick = batch / raw_items_per_s + 1e-3 + 2e-5 * batch
    warm = 1 + latency + math.ceil(VERIFY_MEMBERS / batch) + 2
    return warm + 1 + max(10 * SLICES, min(5000, int(seconds / per_tick)))


# ---------------------------------------------------------------------------


def machine_info() -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        wasmtime_version = version("wasmtime")
    except Exception:
        wasmtime_version = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "wasmtime": wasmtime_version,
            "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def fmt_row(model: str, batch: int, r: dict) -> str:
    meets = "-" if batch < TARGET_MIN_BATCH else ("yes" if r["ratio"] >= TARGET_RATIO else "no")
    core = r.get("core_items_per_s")
    core_s = f"{core:>14,.0f}" if core is not None else f"{'-':>14}"
    return (f"{model:<9}{batch:>6}{r['raw_items_per_s']:>14,.0f}{core_s}{r['engine_items_per_s']:>16,.0f}"
            f"{r['ratio']:>8.3f}{r['overhead_us_per_request']:>17,.1f}{meets:>8}")


HEADER = (f"{'model':<9}{'batch':>6}{'raw items/s':>14}{'core items/s':>14}{'engine items/s':>16}{'ratio':>8}"
          f"{'overhead us/req':>17}{'>= 0.9':>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter measurements (about a third of the time)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="batch sizes (default 1 16 64)")
    ap.add_argument("--models", nargs="+", choices=("tensor", "tiny_lm"), default=["tensor", "tiny_lm"])
    ap.add_argument("--tensor-dims", default=DEFAULT_TENSOR_DIMS,
                    help=f"MLP widths for the tensor model (default {DEFAULT_TENSOR_DIMS})")
    ap.add_argument("--lm-dir", help="existing LM directory (model.onnx + tokenizer.json) instead of building one")
    ap.add_argument("--lm-prompt", default=DEFAULT_PROMPT, help=f"prompt (default {DEFAULT_PROMPT!r})")
    ap.add_argument("--lm-new-tokens", type=int, default=None, help="tokens per request (default 32, --quick 16)")
    ap.add_argument("--latency", type=int, default=2, help="inference_latency_ticks of the engine runs (default 2)")
    ap.add_argument("--groups", type=int, default=1, help="worker groups of the engine runs (default 1)")
    ap.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"),
                    help="execution provider for raw, core and engine alike (default auto)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="target seconds per measurement: raw and core each, engine steady state twice this "
                         "(default 4, --quick 0.7)")
    ap.add_argument("--no-core", action="store_true", help="skip the in-process engine measurement")
    ap.add_argument("--log", action="store_true", help="engine runs also write a replay log, as `wasm-engine run` does")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (models, scenarios)")
    args = ap.parse_args(argv)
    if args.lm_new_tokens is None:
        args.lm_new_tokens = 16 if args.quick else 32
    if args.seconds is None:
        args.seconds = 0.7 if args.quick else 4.0
    if args.latency < 1:
        ap.error("--latency must be >= 1")
    if any(b < 1 for b in args.batches):
        ap.error("--batches must be positive")
    try:
        if len([int(d) for d in args.tensor_dims.split(",")]) < 2:
            raise ValueError
    except ValueError:
        ap.error(f"--tensor-dims must be comma-separated widths, e.g. {DEFAULT_TENSOR_DIMS}")
    if not AGENT_WASM.is_file():
        ap.error(f"{AGENT_WASM} is missing: wasm-engine build {AGENT_DIR / 'agent.c'} -o {AGENT_WASM}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)

    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    tmp = tempfile.TemporaryDirectory(prefix="bench_inference_")
    work = Path(tmp.name)
    results: dict[str, dict] = {}
    rows: list[str] = []
    try:
        log(f"building models in {work} ...")
        models = build_models(work, args)
        for model_id, model in models.items():
            payload = request_payload(model)
            results[model_id] = {}
            for batch in args.batches:
                raw = raw_tensor if model["kind"] == "tensor" else raw_lm
                log(f"[{model_id} batch {batch}] raw ...")
                r = raw(model, batch, args.provider, args.seconds)
                if not args.no_core:
                    log(f"[{model_id} batch {batch}] core (engine in-process) ...")
                    r.update(core_engine(model_id, model, batch, args.provider, payload, args.seconds))
                ticks = plan_ticks(batch, r["raw_items_per_s"], 2 * args.seconds, args.latency)
                log(f"[{model_id} batch {batch}] engine: {batch} agents, {ticks} ticks ...")
                scen = write_scenario(work, model_id, model, batch, ticks, args.latency, args.provider, payload)
                r.update(engine_run(scen, batch, args.groups, args.log))
                # Raw again, right after: on a VM whose speed drifts, a large
                # difference says the ratio straddles a speed change (the
                # ratio itself stays engine / raw-before, as defined above).
                log(f"[{model_id} batch {batch}] raw again ...")
                r["raw_items_per_s_after"] = raw(model, batch, args.provider, args.seconds / 2)["raw_items_per_s"]
                r["ratio"] = r["engine_items_per_s"] / r["raw_items_per_s"]
                r["raw_us_per_batch"] = batch / r["raw_items_per_s"] * 1e6
                r["model_share"] = r["engine_model_us_per_tick"] / r["engine_tick_us"]
                r["matched_ratio"] = r["model_share"] / r["raw_model_share"]
                r["overhead_us_per_request"] = (1 / r["engine_items_per_s"] - 1 / r["raw_items_per_s"]) * 1e6
                r["meets_target"] = (r["ratio"] >= TARGET_RATIO) if batch >= TARGET_MIN_BATCH else None
                if model["kind"] == "causal_lm":
                    r["new_tokens_per_request"] = model["new_tokens"]
                    r["raw_tokens_per_s"] = r["raw_items_per_s"] * model["new_tokens"]
                    r["engine_tokens_per_s"] = r["engine_items_per_s"] * model["new_tokens"]
                results[model_id][str(batch)] = r
                rows.append(fmt_row(model_id, batch, r))
                log(rows[-1].strip())
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            tmp.cleanup()

    total = time.perf_counter() - t_start
    desc = []
    if "tensor" in models:
        m = models["tensor"]
        desc.append(f"tensor  = MLP {'->'.join(map(str, m['dims']))} float32 ({m['macs_per_item'] / 1e6:.2f} M "
                    "multiply-adds per item); item = one row")
    if "tiny_lm" in models:
        m = models["tiny_lm"]
        src = args.lm_dir if args.lm_dir else "scripts/make_tiny_lm.py --steps 0"
        desc.append(f"tiny_lm = {src}; item = one greedy generation of {m['new_tokens']} "
                    f"tokens after a {results['tiny_lm'][str(args.batches[0])].get('prompt_tokens')}-token prompt")
    print(HEADER)
    for row in rows:
        print(row)
    for d in desc:
        print(d)
    print(f"core = InferenceEngine.execute in-process (no IPC, no wasm); engine = {args.groups} worker group(s), "
          f"inference_latency_ticks = {args.latency}; target ratio >= {TARGET_RATIO} at batch >= "
          f"{TARGET_MIN_BATCH}; total {total:.0f} s")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"engine steady state, CPU us per tick (user + system) on {cores} cores:")
    print(f"{'model':<9}{'batch':>6}{'tick us':>9}{'supervisor':>12}{'groups':>9}{'inference':>11}{'busy cores':>12}"
          f"{'raw after/before':>18}{'stolen cores':>14}{'raw us':>9}{'model us':>10}{'model share':>13}"
          f"{'raw share':>11}{'matched ratio':>15}")
    for model_id, per_batch in results.items():
        for batch, r in per_batch.items():
            c, tick = r["engine_cpu_us_per_tick"], r["engine_tick_us"]
            print(f"{model_id:<9}{batch:>6}{tick:>9,.0f}{c['supervisor']:>12,.0f}{c['groups']:>9,.0f}"
                  f"{c['inference']:>11,.0f}{sum(c.values()) / tick:>12.2f}"
                  f"{r['raw_items_per_s_after'] / r['raw_items_per_s']:>18.2f}"
                  + (f"{r['engine_steal_us_per_tick'] / tick:>14.2f}" if r["engine_steal_us_per_tick"] is not None
                     else f"{'-':>14}")
                  + f"{r['raw_us_per_batch']:>9,.0f}{r['engine_model_us_per_tick']:>10,.0f}{r['model_share']:>13.3f}"
                  + f"{r['raw_model_share']:>11.3f}{r['matched_ratio']:>15.3f}")
    if args.json:
        out = dict(results)
        out["machine"] = machine_info() | {"loadavg_at_start": load_start}
        out["settings"] = {"quick": args.quick, "batches": args.batches, "tensor_dims": args.tensor_dims,
                           "lm_prompt": args.lm_prompt, "lm_new_tokens": args.lm_new_tokens,
                           "latency_ticks": args.latency, "groups": args.groups, "provider": args.provider,
                           "seconds": args.seconds, "replay_log": args.log, "total_s": total}
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
