#!/usr/bin/env python3
"""Replay-log container speed: write and read+verify N frames of a given size.

Prints measured figures (GB/s); with --json the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from wasm_engine.orchestrator import LogReader, LogWriter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--frame-bytes", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sections = {1: np.random.default_rng(0).integers(0, 256, args.frame_bytes, dtype=np.uint8), 2: b"x" * 64}
    with tempfile.TemporaryDirectory(prefix="we_bench_") as d:
        p = Path(d) / "big.welog"
        t0 = time.perf_counter()
        with LogWriter(p, {}, [], fsync_every_ticks=0) as w:
            for t in range(args.frames):
                w.append_tick(t, sections)
        t1 = time.perf_counter()
        total = 0
        with LogReader(p) as r:
            for _, s in r.ticks():
                total += len(s[1])
        t2 = time.perf_counter()
        size = p.stat().st_size
    res = {"frames": args.frames, "bytes": size, "write_gb_per_s": size / (t1 - t0) / 1e9,
           "read_verify_gb_per_s": size / (t2 - t1) / 1e9}
    print(f"{size / 1e9:.2f} GB: write {res['write_gb_per_s']:.2f} GB/s, read+verify {res['read_verify_gb_per_s']:.2f} GB/s")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
