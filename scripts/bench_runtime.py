#!/usr/bin/env python3
"""Runtime benchmark: agent-steps/s and ticks/s for 1,000 and 10,000 agents.

Runs an example scenario (default: examples/epidemic) with its agent count
overridden, through the real supervisor and worker processes, and prints a
table; with --json the last line is one JSON object:
  {"example": ..., "runs": [{"agents": 1000, "agent_steps_per_s": ..., "ticks_per_s": ...,
                             "startup_s": ..., "steady_agent_steps_per_s": ...}, ...]}
"Steady" figures exclude the first tick (process start, module compile, we_init)
and the last one, which also collects every agent's final state (a digest of
its whole linear memory: at 10,000 agents that tick alone takes seconds, and
it used to dominate short runs); its time is reported as final_tick_s.
The epidemic agents import rand_u64 and publish (Python host functions with
per-step state), so they are stepped by the worker's Python loop (ctypes into
wasmtime's C API), not the per-agent loop in C (docs/RUNTIME.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(scenario_path: Path, agents: int, ticks: int, workers: int) -> dict:
    from wasm_engine.orchestrator import Supervisor, load_scenario

    sc = load_scenario(scenario_path)
    if len(sc.kinds) != 1:
        raise SystemExit(f"{scenario_path}: bench needs a single-kind scenario")
    sc = dataclasses.replace(sc, kinds=(dataclasses.replace(sc.kinds[0], count=agents),)).with_overrides(ticks=ticks)
    marks = {}

    def progress(done, total, steps, elapsed_s):
        marks[done] = (time.perf_counter(), steps)

    t0 = time.perf_counter()
    s = Supervisor(sc, groups=workers, transport="process", progress=progress).run()
    wall = time.perf_counter() - t0
    (t1, s1), (tn, sn) = marks[1], marks[ticks - 1]
    steady = (tn - t1)
    return {
        "agents": agents, "ticks": ticks, "workers": workers, "agent_steps": s.agent_steps,
        "wall_s": wall, "agent_steps_per_s": s.agent_steps / wall, "ticks_per_s": ticks / wall,
        "startup_s": t1 - t0, "final_tick_s": marks[ticks][0] - tn,
        "steady_agent_steps_per_s": (sn - s1) / steady if steady > 0 else None,
        "steady_ticks_per_s": (ticks - 2) / steady if steady > 0 else None,
        "messages": s.messages, "run_hash": s.run_hash,
    }


def bench_barrier(scenario_path: Path, agents: int, ticks: int, groups: int) -> dict:
    """CPU burned by groups that only wait: all agents in group 0, the rest idle at the barrier."""
    import numpy as np

    from _proc_cpu import children_cpu_s
    from wasm_engine.orchestrator import Supervisor, load_scenario

    sc = load_scenario(scenario_path)
    sc = dataclasses.replace(sc, kinds=(dataclasses.replace(sc.kinds[0], count=agents),)).with_overrides(ticks=ticks)
    cpu = {}

    def progress(done, total, steps, elapsed_s):
        cpu.update(children_cpu_s())

    t0 = time.perf_counter()
    Supervisor(sc, groups=groups, assignment=np.zeros(agents, np.int64), transport="process", progress=progress).run()
    wall = time.perf_counter() - t0
    used = sorted(cpu.values(), reverse=True)
    idle = used[1:]
    return {"groups": groups, "cores": os.cpu_count(), "wall_s": wall, "busy_group_cpu_s": used[0],
            "idle_group_cpu_s_max": max(idle), "idle_group_cpu_fraction_max": max(idle) / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default=str(ROOT / "examples/epidemic/scenario.toml"))
    ap.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--ticks", type=int, nargs="+", default=[200, 30], help="ticks per agent count")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--barrier", action="store_true",
                    help="also measure CPU burned by idle groups (8 groups, all agents in one)")
    args = ap.parse_args(argv)
    ticks = args.ticks if len(args.ticks) == len(args.agents) else [args.ticks[0]] * len(args.agents)
    if any(t < 3 for t in ticks):
        ap.error("--ticks must be >= 3 (the first and last ticks are excluded from steady-state figures)")
    runs = []
    print(f"{'agents':>8}{'ticks':>7}{'workers':>8}{'steps/s':>12}{'ticks/s':>9}{'startup s':>11}"
          f"{'steady steps/s':>16}{'steady ticks/s':>16}{'last tick s':>13}")
    for n, t in zip(args.agents, ticks):
        r = bench(Path(args.example), n, t, args.workers)
        runs.append(r)
        print(f"{n:>8}{t:>7}{r['workers']:>8}{r['agent_steps_per_s']:>12,.0f}{r['ticks_per_s']:>9.2f}"
              f"{r['startup_s']:>11.2f}{r['steady_agent_steps_per_s']:>16,.0f}{r['steady_ticks_per_s']:>16.2f}"
              f"{r['final_tick_s']:>13.2f}",
              flush=True)
    out = {"example": args.example, "runs": runs}
    if args.barrier:
        b = bench_barrier(Path(args.example), 1000, 30, 8)
        out["barrier"] = b
        print(f"barrier: {b['groups']} groups on {b['cores']} cores, {b['wall_s']:.1f} s wall; idle groups burned "
              f"at most {b['idle_group_cpu_s_max']:.2f} s CPU ({100 * b['idle_group_cpu_fraction_max']:.1f}% of a core, "
              f"start-up included); the busy group {b['busy_group_cpu_s']:.1f} s")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
