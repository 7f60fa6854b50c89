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

--engine-load SCENARIO: does the rest of an engine slow the model down?
Runs `wasm-engine run SCENARIO --workers 1` (a supervisor and an agent group,
no model) on the other cores, this process pinned to the last one, and stops
and resumes it (SIGSTOP / SIGCONT) at every window, so windows alternate
without and with that load.  Each window's "load" says which; the summary
(JSON "load_over_idle") is the median, over adjacent pairs of windows, of
the median with the load ÷ the median without: a speed phase switching
mid-pair skews one pair, not the figure.  bench_inference.py's "matched
ratio" assumes this is about 1.

    python scripts/probe_model_speed.py [--seconds 6] [--batch 16] [--json]
        [--engine-load examples/epidemic/scenario.toml]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
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
    ap.add_argument("--engine-load", metavar="SCENARIO",
                    help="alternate windows without and with a wasm-engine run of SCENARIO on the other cores")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or not 0 < args.window_s <= args.seconds or args.batch < 1:
        ap.error("need --seconds > 0, 0 < --window-s <= --seconds and --batch >= 1")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.engine_load is not None:
        if len(cpus) < 2:
            ap.error("--engine-load needs at least 2 usable CPUs (the load runs beside this process)")
        if not Path(args.engine_load).is_file():
            ap.error(f"--engine-load: no scenario file {args.engine_load}")

    with tempfile.TemporaryDirectory(prefix="probe_model_speed_") as tmp:
        ns = argparse.Namespace(models=["tensor"], tensor_dims=args.tensor_dims, lm_dir=None)
        model = bi.build_models(Path(tmp), ns)["tensor"]
        sess, _, _, feeds = bi.tensor_session(model, args.batch, args.provider)
        sess.run(None, feeds)
        load = _EngineLoad(args.engine_load, cpus) if args.engine_load else None
        try:
            windows, took_us = _measure(sess, feeds, args.seconds, args.window_s, load)
        finally:
            if load is not None:
                load.stop()
    print(f"{'start s':>8}{'calls':>7}{'median us':>11}{'min us':>9}" + (f"{'load':>6}" if load else ""))
    for w in windows:
        print(f"{w['start_s']:>8.2f}{w['calls']:>7}{w['median_us']:>11,.0f}{w['min_us']:>9,.0f}"
              + (f"{'yes' if w['load'] else 'no':>6}" if load else ""))
    medians = [w["median_us"] for w in windows]
    spread = max(medians) / min(medians)
    overall = float(np.median(took_us))
    print(f"batch {args.batch}, MLP {args.tensor_dims}: median {overall:,.0f} us per call; "
          f"slowest window median / fastest = {spread:.2f}")
    out = {"windows": windows, "median_us": overall, "max_over_min_of_medians": spread}
    if load is not None:
        pairs = [b["median_us"] / a["median_us"] for a, b in zip(windows[0::2], windows[1::2])]
        out["load_over_idle"] = float(np.median(pairs)) if pairs else None
        print(f"with the engine run beside it / without (median over {len(pairs)} adjacent window pairs): "
              + (f"{out['load_over_idle']:.3f}" if pairs else "- (too few windows)"))
    if args.json:
        print(json.dumps(out))
    return 0


class _EngineLoad:
    """`wasm-engine run SCENARIO` on every usable CPU but the last (this process takes that one), paused and resumed."""

    def __init__(self, scenario: str, cpus: list[int]) -> None:
        os.sched_setaffinity(0, {cpus[-1]})
        exe = Path(sys.executable).with_name("wasm-engine")
        cmd = [str(exe) if exe.is_file() else "wasm-engine", "run", scenario, "--workers", "1",
               "--ticks", "1000000", "--quiet"]
        others = set(cpus[:-1])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, others))
        self.pgid = self.proc.pid  # its own session: the group is the supervisor's pid, children included
        time.sleep(2.0)  # start-up (module compilation) is not the load measured
        if self.proc.poll() is not None:
            raise SystemExit(f"--engine-load: wasm-engine run {scenario} exited with code {self.proc.returncode}")

    def set(self, on: bool) -> None:
        os.killpg(self.pgid, signal.SIGCONT if on else signal.SIGSTOP)

    def stop(self) -> None:
        """Resume it and stop it as Ctrl-C would (the supervisor stops its group and unlinks its rings)."""
        if self.proc.poll() is None:
            os.killpg(self.pgid, signal.SIGCONT)
            os.killpg(self.pgid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(10)


def _measure(sess, feeds, seconds: float, window_s: float,
             load: _EngineLoad | None) -> tuple[list[dict], np.ndarray]:
    """session.run back to back for `seconds`: per window, calls, median and minimum us (and the
    load's state); and every call's us."""
    windows, every = [], []
    t_end = time.perf_counter() + seconds
    k = 0
    while time.perf_counter() < t_end:
        on = bool(k % 2) if load is not None else False
        if load is not None:
            load.set(on)
        took = []
        w_end = min(time.perf_counter() + window_s, t_end)
        w_start = time.perf_counter()
        while time.perf_counter() < w_end:
            a = time.perf_counter_ns()
            sess.run(None, feeds)
            took.append(time.perf_counter_ns() - a)
        if took:
            us = np.array(took) / 1e3
            every.append(us)
            w = {"start_s": round(w_start - (t_end - seconds), 3), "calls": int(us.size),
                 "median_us": float(np.median(us)), "min_us": float(us.min())}
            if load is not None:
                w["load"] = on
            windows.append(w)
        k += 1
    return windows, np.concatenate(every)


if __name__ == "__main__":
    sys.exit(main())
