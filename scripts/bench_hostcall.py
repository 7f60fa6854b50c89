#!/usr/bin/env python3
"""Host-call benchmark: what one agent step and one host call cost in the worker.

Runs a WAT agent whose `we_step` calls the cheapest host function
(`agent_count`) N times, for N = 0 and N = --calls, through the real
supervisor with the group in this process (transport "inline": no IPC, so
the figures are the worker's and the supervisor's own work), once per host
path: "fast" (the default: agents stepped by the per-agent loop in C over
wasmtime's C API, this import a C function), "python-loop" (the same host
functions, agents stepped from Python through ctypes) and "reference"
(wasmtime-py, the yardstick the fast path is checked against). Prints, per
path, the wall time per agent step at N = 0 and the slope per host call;
each figure is the best of --repeats runs. The wall time per step includes
the supervisor's per-agent share and, spread over the run, instantiating
the agents and the final-state digests of their memories. With --json the
last line is one JSON object {"fast": {"step_us": ..., "host_call_us": ...},
"python-loop": {...}, "reference": {...}, "settings": {...}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

AGENT_WAT = """(module
  (import "we" "agent_count" (func $agent_count (result i32)))
  (memory (export "memory") 1)
  (func (export "we_abi_version") (result i32) (i32.const 1))
  (func (export "we_init") (param i32 i64 i32) (result i32) (i32.const 0))
  (func (export "we_step") (param i64) (result i32)
    (local $i i32)
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $i) (i32.const {calls})))
        (drop (call $agent_count))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.const 0)))
"""

SCENARIO = """[run]
name = "bench_hostcall_{calls}"
ticks = {ticks}
seed = 1

[[agents]]
kind = "caller"
module = "agent_{calls}.wat"
count = {agents}
capabilities = []
fuel_per_tick = 10000000
"""


def per_step_us(path: Path, host: str, repeats: int) -> float:
    from wasm_engine.orchestrator import Supervisor, load_scenario

    sc = load_scenario(path)
    best = float("inf")
    for _ in range(repeats):
        s = Supervisor(sc, groups=1, transport="inline", host=host).run()
        best = min(best, s.wall_s / s.agent_steps * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--calls", type=int, default=50, help="host calls per step for the slope (default 50)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if min(args.agents, args.ticks, args.calls, args.repeats) <= 0:
        ap.error("--agents, --ticks, --calls and --repeats must be positive")
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_hostcall_") as d:
        paths = {}
        for calls in (0, args.calls):
            (Path(d) / f"agent_{calls}.wat").write_text(AGENT_WAT.replace("{calls}", str(calls)))
            paths[calls] = Path(d) / f"s{calls}.toml"
            paths[calls].write_text(SCENARIO.format(calls=calls, ticks=args.ticks, agents=args.agents))
        print(f"{'host path':<11}{'us per step (0 calls)':>23}{'us per host call':>18}")
        for host in ("fast", "python-loop", "reference"):
            base = per_step_us(paths[0], host, args.repeats)
            busy = per_step_us(paths[args.calls], host, args.repeats)
            out[host] = {"step_us": base, "host_call_us": (busy - base) / args.calls}
            print(f"{host:<11}{base:>23.2f}{out[host]['host_call_us']:>18.2f}", flush=True)
    out["settings"] = {"agents": args.agents, "ticks": args.ticks, "calls": args.calls, "repeats": args.repeats}
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
