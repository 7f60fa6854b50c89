"""The ``wasm-engine`` command line.

Layer: orchestrator. Exit codes (docs/CLI.md):
  0  success (verify: the re-execution matches the log)
  1  the run failed while running (an agent group crashed or failed)
  2  bad input: usage, scenario, agent module, build error
  3  verify: the re-execution diverges from the log
  4  the log cannot be read (corrupt, not a log)
  130 interrupted (Ctrl-C / SIGTERM); everything was shut down and cleaned up
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_BAD_LOG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class Progress:
    """A live bar on a terminal; plain lines (every 10 % or 5 s) otherwise. Writes to stderr."""

    def __init__(self, label: str, stream=None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self._last_draw = 0.0
        self._last_pct = -10

    def __call__(self, done: int, total: int, steps: int, elapsed_s: float) -> None:
        now = time.monotonic()
        rate = steps / elapsed_s if elapsed_s > 0 else 0.0
        pct = 100 * done // max(total, 1)
        if self.tty:
            if done < total and now - self._last_draw < 0.1:
                return
            width = 30
            fill = width * done // max(total, 1)
            eta = elapsed_s / done * (total - done) if done else 0.0
            self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} ticks "
                              f"{rate:,.0f} steps/s eta {eta:.0f}s ")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif pct >= self._last_pct + 10 or now - self._last_draw >= 5.0 or done >= total:
            self._last_pct = pct - pct % 10
            self.stream.write(f"{self.label}: tick {done}/{total} ({pct}%), {rate:,.0f} agent-steps/s\n")
            self.stream.flush()
        self._last_draw = now


def _sigterm(_signum, _frame):
    raise KeyboardInterrupt("SIGTERM")


def _err(msg: str) -> None:
    print(f"wasm-engine: {msg}", file=sys.stderr)


def cmd_run(args) -> int:
    from ._scenario import load_scenario
    from ._supervisor import Supervisor

    sc = load_scenario(args.scenario).with_overrides(ticks=args.ticks, seed=args.seed, groups=args.workers,
                                                     log_path=args.log)
    progress = None if args.quiet else Progress(sc.name)
    sup = Supervisor(sc, groups=args.workers, transport=args.transport, log_path=None if args.no_log else sc.log_path,
                     progress=progress, provider=None if args.provider == "auto" else args.provider)
    summary = sup.run()
    d = summary.as_dict()
    if args.json:
        print(json.dumps(d))
    else:
        for k in ("run_hash", "ticks", "agents", "agent_steps", "messages", "deferred", "dropped", "traps",
                  "quarantined", "halted", "workers", "restarts", "wall_s", "agent_steps_per_s", "log_path"):
            v = d[k]
            print(f"{k:>18}: {v:,.1f}" if isinstance(v, float) else f"{k:>18}: {v}")
        for m in d.get("models", []):
            print(f"{'model':>18}: {m['id']} ({m['kind']}) on {m['provider']}, "
                  f"{m['file_bytes'] / 1e6:.1f} MB file, +{m['rss_delta_bytes'] / 1e6:.0f} MB resident; "
                  f"{m['requests']:,} requests in {m['runs']:,} model runs, {m['run_s']:.2f} s in ONNX Runtime")
    return EXIT_OK


def cmd_verify(args) -> int:
    from ._verify import verify

    progress = None if args.quiet else Progress("verify")
    res = verify(args.log, groups=args.workers, transport=args.transport, progress=progress)
    if args.json:
        print(json.dumps(res.as_dict()))
    elif res.ok:
        extra = f" (log truncated: {res.ticks_in_log} complete ticks)" if res.truncated else ""
        print(f"OK: {res.ticks_checked} ticks re-executed and matched{extra}")
        if res.run_hash:
            print(f"run_hash: {res.run_hash}")
    else:
        print(f"DIVERGED: {res.divergence}")
    return EXIT_OK if res.ok else EXIT_DIVERGED


def cmd_replay(args) -> int:
    from ._verify import replay

    out = replay(args.log, args.tick, args.agent)
    if args.json:
        print(json.dumps(out))
        return EXIT_OK
    print(f"tick {out['tick']}: {len(out['records'])} records")
    if "agent" in out:
        a = out["agent"]
        print(f"agent {a['id']}: fuel {a['fuel']}, status {a['status']}")
    for r in out["records"][: args.limit]:
        txt = r["payload_text"] if r["payload_text"] is not None else r["payload_hex"][:32]
        print(f"  #{r['index']:<6} {r['kind']:<8} {r['source']:>7} -> {r['destination']:<7} seq {r['seq']:<6} "
              f"{r['status']:<9} {r['payload_len']:>4} B  {txt}")
    if len(out["records"]) > args.limit:
        print(f"  ... {len(out['records']) - args.limit} more (--limit)")
    for k, v in out["digests"].items():
        print(f"  {k} digest: {v}")
    return EXIT_OK


def cmd_build(args) -> int:
    from pathlib import Path

    from ._build import build_agent

    out = build_agent(Path(args.source), Path(args.output))
    print(out)
    return EXIT_OK


def cmd_clean(args) -> int:
    from ..shm_protocol import sweep_orphans

    removed = sweep_orphans()
    print(f"removed {len(removed)} orphaned shared-memory segment(s)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wasm-engine", description="Deterministic multi-agent simulations of WebAssembly agents.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario")
    r.add_argument("--ticks", type=int)
    r.add_argument("--workers", type=int, help="agent-group processes (default: scenario's groups, else cores)")
    r.add_argument("--seed", type=int)
    r.add_argument("--log", help="replay log path (default: scenario's log)")
    r.add_argument("--no-log", action="store_true", help="do not write a replay log")
    r.add_argument("--json", action="store_true", help="last line of stdout: one JSON summary")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--provider", choices=("auto", "cuda", "cpu", "tensorrt"), default="auto",
                   help="execution provider for every model (default: each model's scenario setting, auto = CUDA then CPU)")
    r.add_argument("--transport", choices=("process", "inline"), default="process", help=argparse.SUPPRESS)
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("verify", help="re-execute a run from its log and compare")
    v.add_argument("log")
    v.add_argument("--workers", type=int)
    v.add_argument("--json", action="store_true")
    v.add_argument("--quiet", action="store_true")
    v.add_argument("--transport", choices=("process", "inline"), default="process", help=argparse.SUPPRESS)
    v.set_defaults(fn=cmd_verify)
    rp = sub.add_parser("replay", help="show what happened at one tick")
    rp.add_argument("log")
    rp.add_argument("--tick", type=int, required=True)
    rp.add_argument("--agent", type=int)
    rp.add_argument("--limit", type=int, default=50, help="records to print")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(fn=cmd_replay)
    b = sub.add_parser("build", help="compile a C (or WAT) agent to wasm32")
    b.add_argument("source")
    b.add_argument("-o", "--output", required=True)
    b.set_defaults(fn=cmd_build)
    c = sub.add_parser("clean", help="remove shared-memory segments left by killed runs")
    c.set_defaults(fn=cmd_clean)
    return p


def main(argv=None) -> int:
    from ..worker import AgentLoadError as WorkerLoadError
    from ._errors import DivergenceError, ReplayLogError, RunError, WasmEngineError

    args = build_parser().parse_args(argv)
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        _err("interrupted; all agent groups stopped and shared memory released")
        return EXIT_INTERRUPTED
    except ReplayLogError as e:
        _err(str(e))
        return EXIT_BAD_LOG
    except DivergenceError as e:
        _err(str(e))
        return EXIT_DIVERGED
    except RunError as e:
        _err(str(e))
        return EXIT_RUN_FAILED
    except (WasmEngineError, WorkerLoadError) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "BuildError":
            _err(str(e))
            return EXIT_BAD_INPUT
        raise
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
