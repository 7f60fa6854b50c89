#!/usr/bin/env python3
"""Probe: the agent group's own CPU per tick, in-process.

Builds the inference benchmark's scenario (examples/bench_infer: B agents,
each sending one request per tick) and times ``GroupHost.run_stage`` on B
inference results delivered per tick -- what the group process does for
one tick, without the ring, the supervisor or a model.  Prints the CPU and
wall time per tick for a few windows, so that a change to the group's tick
path can be compared on one machine (docs/INFERENCE.md, Known limitations).

    python scripts/probe_group_tick.py [--agents 16] [--seconds 1.5] [--windows 3] [--json]

With --json the last line is one JSON object: {"agents": ..., "windows":
[{"cpu_us": ..., "wall_us": ..., "ticks": ...}, ...]}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_inference as bi  # noqa: E402  (the scenario and model builders)

RESULT_BYTES = 80  # an MLP result as the agents receive it: 16-byte prefix + 64 bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.5, help="length of each window")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--tensor-dims", default=bi.DEFAULT_TENSOR_DIMS,
                    help="the scenario's model (the group never runs it; only the agents' request bytes depend on it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.agents <= 100_000:
        ap.error("--agents must be in [1, 100000]")
    if not 0 < args.seconds <= 600:
        ap.error("--seconds must be in (0, 600]")
    if not 1 <= args.windows <= 100:
        ap.error("--windows must be in [1, 100]")

    from wasm_engine.orchestrator import Supervisor, load_scenario
    from wasm_engine.shm_protocol import RecordBatch
    from wasm_engine.worker import INFERENCE_SENDER, K_DELIVER

    with tempfile.TemporaryDirectory(prefix="we_probe_") as tmp:
        work = Path(tmp)
        ns = argparse.Namespace(models=["tensor"], tensor_dims=args.tensor_dims, lm_dir=None)
        model = bi.build_models(work, ns)["tensor"]
        scen = bi.write_scenario(work, "tensor", model, args.agents, 10, 2, "cpu", bi.request_payload(model))
        sup = Supervisor(load_scenario(scen), groups=1, transport="inline")
        link = sup._make_links()[0]
        link.start()
        host = link.host
        n = args.agents
        results = RecordBatch.from_arrays(kind=K_DELIVER, source=INFERENCE_SENDER, destination=np.arange(n),
                                          tick=0, seq=0, payload_len=np.full(n, RESULT_BYTES),
                                          payload=np.zeros(RESULT_BYTES * n, np.uint8))
        tick, windows = 0, []
        for _ in range(50):  # warm-up
            host.run_stage(tick, 0, results)
            tick += 1
        for w in range(args.windows):
            t0, c0, k = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - t0 < args.seconds:
                host.run_stage(tick, 0, results)
                tick += 1
                k += 1
            wall, cpu = (time.perf_counter() - t0) / k * 1e6, (time.process_time() - c0) / k * 1e6
            windows.append({"cpu_us": round(cpu, 2), "wall_us": round(wall, 2), "ticks": k})
            print(f"window {w}: {n} agents, run_stage {cpu:.1f} us CPU, {wall:.1f} us wall per tick ({k} ticks)")
        link.close()
    if args.json:
        print(json.dumps({"agents": n, "windows": windows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
