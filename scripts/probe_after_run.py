#!/usr/bin/env python3
"""How much slower is small Python/numpy work right after `session.run`?

Builds the benchmark's MLP (as bench_inference.py does), creates its session
as the inference engine does, and alternates, --calls times: one
`session.run` on a [--batch, IN] batch, then a fixed piece of record work
(a K_INF_DONE record built and appended to --batch result records, what the
inference process used to do per tick), timed; then the same work again at
once, timed.  Prints the median µs of each and their ratio.  The model's
weights (~5 MB for the default dims) pass through the core's caches on every
call, so the first work after it finds the interpreter's data cold; this is
why the inference process keeps its per-tick Python after the model short
(docs/INFERENCE.md, "Known limitations").

    python scripts/probe_after_run.py [--batch 16] [--calls 300] [--json]
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

MAX_CALLS = 100_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--tensor-dims", default=bi.DEFAULT_TENSOR_DIMS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.calls <= MAX_CALLS or args.batch < 1:
        ap.error(f"--calls must be 1..{MAX_CALLS} and --batch positive")

    from wasm_engine.inference import K_INF_DONE, K_INF_RESULT
    from wasm_engine.shm_protocol import RecordBatch

    with tempfile.TemporaryDirectory(prefix="we_probe_") as tmp:
        ns = argparse.Namespace(models=["tensor"], tensor_dims=args.tensor_dims, lm_dir=None)
        model = bi.build_models(Path(tmp), ns)["tensor"]
        sess, _, outs, feeds = bi.tensor_session(model, args.batch, "cpu")
        n = args.batch
        results = RecordBatch.from_arrays(kind=K_INF_RESULT, source=0, destination=np.arange(n), tick=0, seq=0,
                                          payload_len=np.full(n, 72, np.uint32), payload=np.zeros(n * 72, np.uint8))
        stats = bytes(24)

        def work() -> None:
            RecordBatch.concat([results, RecordBatch.single(K_INF_DONE, stats, tick=1, flags=1)])

        after, again = [], []
        clock = time.perf_counter
        for _ in range(args.calls):
            sess.run(outs, feeds)
            t0 = clock()
            work()
            t1 = clock()
            work()
            t2 = clock()
            after.append(t1 - t0)
            again.append(t2 - t1)
    a, b = float(np.median(after)) * 1e6, float(np.median(again)) * 1e6
    print(f"batch {n}, {args.calls} calls: record work right after session.run {a:.1f} us, "
          f"repeated at once {b:.1f} us (x{a / b:.2f})")
    if args.json:
        print(json.dumps({"after_run_us": a, "again_us": b, "ratio": a / b, "batch": n, "calls": args.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
