#!/usr/bin/env python3
"""What does the native plan save per inference tick, against the numpy path?

Builds the benchmark's MLP (as bench_inference.py does), loads it into an
InferenceEngine on the CPU, and serves the same --batch requests tick after
tick with `execute_batch` (what the inference process runs per tick, less
the rings), alternating blocks of --block ticks between the two ways a
uniform tick can be served (docs/INFERENCE.md, "The uniform tick"):

  plan   the native plan: IOBinding-bound arrays, gather/scatter row
         programs, and the shortcut for a tick like the last one;
  numpy  the same engine with plans turned off: one strided numpy copy per
         input and output, `session.run`.

For each of --windows windows it prints both paths' thread CPU per tick,
the part inside the model call, and the rest, then the ratio plan/numpy of
the CPU per tick.  Alternating in small blocks puts both paths in the same
speed phase of the machine.  Every reply must be byte-identical whichever
path served it; the probe exits 1 if one is not.

    python scripts/probe_native_plan.py [--batch 16] [--ticks 2000] [--json]
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
import bench_inference as bi  # noqa: E402

MAX_TICKS = 1_000_000
MAX_WARMUP_TICKS = 16
LIMIT_BYTES = 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ticks", type=int, default=2000, help="ticks per path, in all")
    ap.add_argument("--block", type=int, default=10, help="ticks in a row on one path")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tensor-dims", default=bi.DEFAULT_TENSOR_DIMS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (1 <= args.ticks <= MAX_TICKS and args.batch >= 1 and args.block >= 2 and args.windows >= 1
            and args.ticks >= args.block * args.windows):
        ap.error(f"need 1 <= --ticks <= {MAX_TICKS}, --batch >= 1, --block >= 2, --windows >= 1 and "
                 "--ticks >= --block x --windows")

    from wasm_engine.inference import InferenceEngine, K_INF_REQUEST, ModelSpec, execute_batch
    from wasm_engine.inference import _process
    from wasm_engine.shm_protocol import RecordBatch

    with tempfile.TemporaryDirectory(prefix="we_probe_") as tmp:
        ns = argparse.Namespace(models=["tensor"], tensor_dims=args.tensor_dims, lm_dir=None)
        spec = bi.build_models(Path(tmp), ns)["tensor"]
        engine = InferenceEngine([ModelSpec("mlp", spec["path"])], provider="cpu")
        model = engine._models[0]
        n, payload = args.batch, bi.request_payload(spec)

        def requests(t: int) -> RecordBatch:
            return RecordBatch.from_arrays(
                kind=K_INF_REQUEST, source=np.arange(n, dtype=np.uint32), destination=0, tick=t,
                seq=np.arange(n, dtype=np.uint32), payload_len=np.full(n, len(payload), np.uint32),
                payload=np.frombuffer(payload * n, np.uint8))

        def tick(t: int) -> RecordBatch:
            return execute_batch(engine, requests(t), LIMIT_BYTES, done_tick=t)

        t = 0
        while engine.uniform_plan(0) is None:  # verify batching (8 requests), then make the plan
            if t == MAX_WARMUP_TICKS:
                print("no native plan was made for this model (see the inference log)", file=sys.stderr)
                return 1
            tick(t)
            t += 1
        want = tick(t).payload[:-24].tobytes()  # the results, without the DONE counters
        blocks = 2 * args.ticks // args.block
        cpu = np.zeros((2, blocks // 2))
        run = np.zeros((2, blocks // 2))
        same = True
        t += 1
        for b in range(blocks):
            path = b % 2  # 0: plan, 1: numpy
            model._plans_ok = path == 0
            c = r = 0
            for _ in range(args.block):
                if path:
                    _process._last_tick = None
                batch = requests(t)
                r0, c0 = model.stats.run_ns, time.thread_time_ns()
                out = execute_batch(engine, batch, LIMIT_BYTES, done_tick=t)
                c += time.thread_time_ns() - c0
                r += model.stats.run_ns - r0
                same &= out.payload[:-24].tobytes() == want
                t += 1
            cpu[path, b // 2], run[path, b // 2] = c / args.block / 1e3, r / args.block / 1e3
        model._plans_ok = True

    rows = []
    for w, idx in enumerate(np.array_split(np.arange(blocks // 2), args.windows)):
        pc, nc = cpu[0, idx].mean(), cpu[1, idx].mean()
        pr, nr = run[0, idx].mean(), run[1, idx].mean()
        rows.append({"plan_cpu_us": pc, "plan_run_us": pr, "numpy_cpu_us": nc, "numpy_run_us": nr,
                     "ratio": pc / nc})
        print(f"window {w}: plan {pc:7.1f} us/tick (model {pr:7.1f}, rest {pc - pr:6.1f}); "
              f"numpy {nc:7.1f} (model {nr:7.1f}, rest {nc - nr:6.1f}); plan/numpy {pc / nc:.3f}")
    print(f"batch {n}: every reply identical on both paths: {same}")
    if args.json:
        print(json.dumps({"batch": n, "ticks_per_path": blocks // 2 * args.block, "identical": same,
                          "windows": rows}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
