#!/usr/bin/env python3
"""Does this machine run the same model call at one speed?  Times it in windows.

Builds the benchmark's MLP (scripts/make_tiny_tensor_model.py --dims, default
that of bench_inference.py), creates its session exactly as the inference
engine does, and calls `session.run` on one [--batch, IN] float32 batch back
to back for --seconds, in this one process and nothing else.  Prints, per
--window-s window, the calls made and the median and minimum µs per call.

On a shared VM the medians can jump between levels (on the 2-core
development VM, 2026-11-22: ~500 µs and ~750 µs at batch 16, switching every
few seconds), which is why bench_inference.py also reports "model share",
measured at the same moment as the engine's ticks.  With --json the last line
is {"windows": [{"start_s", "calls", "median_us", "min_us"}, ...], "median_us":
..., "max_over_min_of_medians": ...}.

    python scripts/probe_model_speed.py [--seconds 6] [--batch 16] [--json]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="total time (default 6)")
    ap.add_argument("--window-s", type=float, default=0.25, help="window length in seconds (default 0.25)")
    ap.add_argument("--batch", type=int, default=16, help="rows per call (default 16)")
    ap.add_argument("--tensor-dims", default=bi.DEFAULT_TENSOR_DIMS,
                    help=f"MLP widths (default {bi.DEFAULT_TENSOR_DIMS})")
    ap.add_argument("--provider", default="cpu", choices=("auto", "cpu", "cuda", "tensorrt"))
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or not 0 < args.window_s <= args.seconds or args.batch < 1:
        ap.error("need --seconds > 0, 0 < --window-s <= --seconds and --batch >= 1")

    from wasm_engine.inference._payloads import aligned_copy
    from wasm_engine.inference._providers import create_session

    with tempfile.TemporaryDirectory(prefix="probe_model_speed_") as tmp:
        ns = argparse.Namespace(models=["tensor"], tensor_dims=args.tensor_dims, lm_dir=None)
        model = bi.build_models(Path(tmp), ns)["tensor"]
        sess, _ = create_session(model["path"], args.provider, "tensor")
        x = aligned_copy(np.random.default_rng(2).standard_normal((args.batch, model["dims"][0])).astype(np.float32))
        feeds = {sess.get_inputs()[0].name: x}
        sess.run(None, feeds)
        starts, took = [], []
        t_end = time.perf_counter() + args.seconds
        t0 = time.perf_counter_ns()
        while time.perf_counter() < t_end:
            a = time.perf_counter_ns()
            sess.run(None, feeds)
            starts.append(a - t0)
            took.append(time.perf_counter_ns() - a)
    starts_s, took_us = np.array(starts) / 1e9, np.array(took) / 1e3
    windows = []
    for lo in np.arange(0.0, args.seconds, args.window_s):
        sel = took_us[(starts_s >= lo) & (starts_s < lo + args.window_s)]
        if sel.size:
            windows.append({"start_s": round(float(lo), 3), "calls": int(sel.size),
                            "median_us": float(np.median(sel)), "min_us": float(sel.min())})
    print(f"{'start s':>8}{'calls':>7}{'median us':>11}{'min us':>9}")
    for w in windows:
        print(f"{w['start_s']:>8.2f}{w['calls']:>7}{w['median_us']:>11,.0f}{w['min_us']:>9,.0f}")
    medians = [w["median_us"] for w in windows]
    spread = max(medians) / min(medians)
    print(f"batch {args.batch}, MLP {args.tensor_dims}: median {np.median(took_us):,.0f} us per call; "
          f"slowest window median / fastest = {spread:.2f}")
    if args.json:
        print(json.dumps({"windows": windows, "median_us": float(np.median(took_us)),
                          "max_over_min_of_medians": spread}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
