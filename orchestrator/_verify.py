"""Re-execution of a run from its replay log alone: ``verify`` and ``replay``.

Layer: orchestrator. The log header carries the scenario text and every
agent module's bytes, so nothing but the log is needed. Verification runs the
scenario again (any group count) and compares every tick's sections with the
log; the first difference is reported by tick, agent and record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _runlog
from ._errors import DivergenceError, ReplayLogError
from ._replaylog import LogReader
from ._scenario import Scenario, parse_scenario


@dataclass
class VerifyResult:
    ok: bool
    ticks_checked: int
    ticks_in_log: int
    truncated: bool
    run_hash: str | None
    divergence: DivergenceError | None = None

    def as_dict(self) -> dict:
        d = {"ok": self.ok, "ticks_checked": self.ticks_checked, "ticks_in_log": self.ticks_in_log,
             "truncated": self.truncated, "run_hash": self.run_hash}
        if self.divergence is not None:
            e = self.divergence
            d["divergence"] = {"tick": e.tick, "agent": e.agent, "record": e.record, "message": str(e)}
        return d


def scenario_from_log(reader: LogReader, workdir: Path) -> Scenario:
    """Rebuild the scenario with module paths pointing at copies of the logged modules."""
    h = reader.header
    if h is None or h.get("format") != "wasm-engine-run":
        raise ReplayLogError(reader.path, 0, "not a wasm-engine run log (header has no run description)")
    logged_digests = h.get("digest_function", "blake2b")  # logs before the field: BLAKE2b
    if logged_digests != _runlog.DIGEST_FUNCTION:
        raise ReplayLogError(reader.path, 0, f"the log's digests use {logged_digests} "
                             f"(written by an older wasm-engine); this version computes {_runlog.DIGEST_FUNCTION}: "
                             "run the scenario again to get a log it can verify")
    sc = parse_scenario(h["scenario_text"], h["scenario_path"], check_files=False)
    mods = h["modules"]
    if len(mods) != len(sc.kinds) or len(reader.modules) != len(sc.kinds):
        raise ReplayLogError(reader.path, 0, "log header lists a different number of modules than agent kinds")
    kinds = []
    for i, (k, m) in enumerate(zip(sc.kinds, mods)):
        data = bytes(reader.modules[i])
        if hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise ReplayLogError(reader.path, 0, f"module of kind '{k.name}' does not match its recorded sha256")
        p = workdir / f"{i}_{k.name}.wasm"
        p.write_bytes(data)
        kinds.append(dataclasses.replace(k, module_path=p))
    return dataclasses.replace(sc, kinds=tuple(kinds), log_path=workdir / "unused.welog")


def verify(path, *, groups: int | None = None, transport: str = "process", progress=None) -> VerifyResult:
    from ._supervisor import Supervisor

    with LogReader(path) as reader, tempfile.TemporaryDirectory(prefix="we_verify_") as tmp:
        sc = scenario_from_log(reader, Path(tmp))
        n_ticks = reader.tick_count
        complete = n_ticks == sc.ticks and not reader.truncated
        if not complete:
            # Re-execute only the ticks the log holds; final states are not in it.
            sc = sc.with_overrides(ticks=max(n_ticks, 1)) if n_ticks else sc
        if n_ticks == 0:
            return VerifyResult(True, 0, 0, reader.truncated, None)
        expected = _Expected(reader, compare_final=complete)
        from ._inference import LoggedInference

        # Models are not re-run: their results come from the log, so a GPU
        # run verifies on a CPU-only machine.
        inference = LoggedInference(reader, sc.inference_latency_ticks) if sc.models else None
        sup = Supervisor(sc, groups=groups, transport=transport, expected=expected, progress=progress,
                         inference=inference)
        try:
            summary = sup.run()
        except DivergenceError as e:
            return VerifyResult(False, e.tick, n_ticks, reader.truncated, None, e)
        return VerifyResult(True, n_ticks, n_ticks, reader.truncated, summary.run_hash if complete else None)


class _Expected:
    """A LogReader view that hides final-state sections of an incomplete log."""

    def __init__(self, reader: LogReader, compare_final: bool) -> None:
        self.reader = reader
        self.compare_final = compare_final
        self.tick_count = reader.tick_count

    def read_tick(self, tick: int):
        return self.reader.read_tick(tick)


def _compare(expected, tick, got):
    if isinstance(expected, _Expected) and not expected.compare_final:
        got = {k: v for k, v in got.items() if k not in (_runlog.S_FINAL, _runlog.S_RUN_HASH)}
    _runlog.compare_tick(expected, tick, got)


def replay(path, tick: int, agent: int | None = None) -> dict:
    """What happened at ``tick`` (optionally for one agent): records, fuel, status, digests."""
    with LogReader(path) as reader:
        if not 0 <= tick < reader.tick_count:
            raise ReplayLogError(reader.path, 0, f"tick {tick} is not in the log (it has ticks 0..{reader.tick_count - 1})")
        s = reader.read_tick(tick)
        rec = _runlog.decode_records(s[_runlog.S_RECORDS])
        fuel = np.frombuffer(bytes(s[_runlog.S_FUEL]), "<u4")
        status = np.frombuffer(bytes(s[_runlog.S_STATUS]), np.uint8)
        h = rec.headers
        idx = np.arange(len(rec)) if agent is None else np.flatnonzero((h["source"] == agent) | (h["destination"] == agent))
        if agent is not None and not 0 <= agent < len(fuel):
            raise ReplayLogError(reader.path, 0, f"agent {agent} is not in this run (it has agents 0..{len(fuel) - 1})")
        records = []
        for i in idx.tolist():
            p = rec.payload_of(i)
            kind = int(h[i]["kind"])
            records.append({
                "index": i, "kind": _runlog.KIND_NAMES.get(kind, str(kind)), "source": int(h[i]["source"]),
                "destination": int(h[i]["destination"]), "seq": int(h[i]["seq"]), "tick": int(h[i]["tick"]),
                "status": _runlog.FLAG_NAMES.get(int(h[i]["flags"]), str(int(h[i]["flags"]))),
                "payload_hex": p[:64].hex(), "payload_text": _text(p, kind), "payload_len": len(p),
            })
        d = bytes(s[_runlog.S_DIGESTS])
        out = {"tick": tick, "records": records, "digests": {"inputs": d[:32].hex(), "records": d[32:64].hex(),
                                                              "state": d[64:96].hex()}}
        if agent is None:
            out["fuel_total"] = int(fuel.sum(dtype=np.uint64))
            out["agents_by_status"] = {str(k): int((status == k).sum()) for k in np.unique(status).tolist()}
        else:
            out["agent"] = {"id": agent, "fuel": int(fuel[agent]), "status": int(status[agent])}
        if _runlog.S_RUN_HASH in s:
            out["run_hash"] = bytes(s[_runlog.S_RUN_HASH]).hex()
        return out


def _text(p: bytes, kind: int) -> str | None:
    if kind == 21:  # trap: u32 code + text
        return f"code {int.from_bytes(p[:4], 'little')}: {p[4:].decode('utf-8', 'replace')}"
    if kind in (18, 19, 17):  # log, publish, msg: show text when it is text
        try:
            t = p.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return t if t.isprintable() else None
    return None


__all__ = ["VerifyResult", "verify", "replay", "scenario_from_log"]
