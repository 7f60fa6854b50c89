"""What a run writes into each replay-log tick frame, and how ticks are digested.

Layer: orchestrator. The container (frames, checksums, truncation) is
``_replaylog``; this module fixes the *sections* of a wasm-engine run and
their digests (docs/REPLAY_LOG.md, "Run sections").
"""
from __future__ import annotations

import blake3
import numpy as np

from ..shm_protocol import RECORD_DTYPE, RecordBatch
from ..worker import DIGEST_CONTEXT_PREFIX, STATE_DTYPE
from ._errors import DivergenceError
from ._replaylog import LogWriter

S_RECORDS = 1   # u64 count, count × 32-byte record headers (check = 0), payload bytes
S_FUEL = 2      # u32 per agent: fuel used this tick
S_STATUS = 3    # u8 per agent: AgentStatus after this tick
S_DIGESTS = 4   # 32 bytes inputs digest, 32 records digest, 32 state digest
S_INFERENCE = 5  # inference results (issue: inference process)
S_FINAL = 6     # last tick only: STATE_DTYPE per agent, sorted by agent id
S_RUN_HASH = 7  # last tick only: the 32-byte run hash

SECTION_NAMES = {
    str(S_RECORDS): "records", str(S_FUEL): "fuel", str(S_STATUS): "status", str(S_DIGESTS): "digests",
    str(S_INFERENCE): "inference", str(S_FINAL): "final_states", str(S_RUN_HASH): "run_hash",
}


#: The function of every digest a run folds into its run hash, as the log
#: header names it (docs/RUNTIME.md "Run hash"): BLAKE3 in derive-key mode,
#: one context string per purpose. BLAKE3, not hashlib's BLAKE2b: a tick's
#: records are hashed as they pass, and over the kilobytes of a tick's
#: payloads BLAKE3's SIMD code runs 5-7x faster (docs/RUNTIME.md, Speed).
DIGEST_FUNCTION = "blake3-derive-key"


def new_digest(purpose: str):
    """A fresh 32-byte digest for ``purpose`` ("run hash", "tick records", ...)."""
    # Deriving the key from the context string is itself a hash: done once per
    # purpose, then copied (a few per tick).
    fresh = _FRESH.get(purpose)
    if fresh is None:
        if len(_FRESH) >= 64:
            _FRESH.clear()
        fresh = _FRESH[purpose] = blake3.blake3(derive_key_context=DIGEST_CONTEXT_PREFIX + purpose)
    return fresh.copy()


_FRESH: dict[str, object] = {}


def _headers_unchecked(batch: RecordBatch) -> np.ndarray:
    """The headers with the transport's check field zeroed (copied only if some is not)."""
    hd = batch.headers
    if np.count_nonzero(hd["check"]):  # (no Python wrapper, unlike .any())
        hd = hd.copy()
        hd["check"] = 0
    return hd


def hash_records(h, batch: RecordBatch) -> None:
    """Fold records into a hash, nothing for none: their count, headers with the
    transport's check field zeroed, then payloads (encode_records' bytes)."""
    if len(batch):
        _fold_records(h, batch)


def _fold_records(h, batch: RecordBatch) -> None:
    """h.update(encode_records(batch)), piece by piece (no joined copy)."""
    h.update(len(batch).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(_headers_unchecked(batch)).view(np.uint8))  # BLAKE3 takes bytes-shaped buffers only
    h.update(batch.payload)


def encode_records(batch: RecordBatch) -> bytes:
    return b"".join((len(batch).to_bytes(8, "little"), _headers_unchecked(batch), batch.payload))


def decode_records(data) -> RecordBatch:
    data = memoryview(data)
    n = int.from_bytes(data[:8], "little")
    end = 8 + n * RECORD_DTYPE.itemsize
    headers = np.frombuffer(data[8:end], RECORD_DTYPE).copy()
    return RecordBatch(headers, np.frombuffer(data[end:], np.uint8).copy())


_U32 = np.dtype("<u4")


def tick_sections(records: RecordBatch, fuel: np.ndarray, status: np.ndarray, inputs_digest: bytes,
                  final: np.ndarray | None, inference: RecordBatch | None = None, *,
                  encode: bool = True) -> tuple[dict[int, bytes], bytes]:
    """A tick's log sections and its digest (what the run hash folds in).

    encode=False: for a run that neither writes nor checks a log, the bulky
    sections (records, inference results) are not built; the records are
    hashed piece by piece instead, which gives the same digest.
    """
    fuel_b = (fuel if fuel.dtype == _U32 else fuel.astype(_U32)).tobytes()
    status_b = (status if status.dtype == np.uint8 else status.astype(np.uint8)).tobytes()
    rd = new_digest("tick records")
    if encode:
        rec = encode_records(records)
        rd.update(rec)
    else:
        rec = None
        _fold_records(rd, records)
    sd = new_digest("tick state")
    sd.update(fuel_b)
    sd.update(status_b)
    digests = inputs_digest + rd.digest() + sd.digest()
    sections = {S_RECORDS: rec} if rec is not None else {}
    sections.update({S_FUEL: fuel_b, S_STATUS: status_b, S_DIGESTS: digests})
    if final is not None:
        sections[S_FINAL] = final.tobytes()
    if inference is not None and encode:
        # Result bytes as the inference process returned them; verify and
        # replay deliver these instead of running any model. Their content
        # already enters the inputs digest as the agents' deliveries.
        sections[S_INFERENCE] = encode_records(inference)
    return sections, digests


def open_writer(path, header: dict, module_blobs: dict[str, bytes], kind_specs, fsync_every_ticks: int) -> LogWriter:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # One blob per kind, in kind order (the header's "modules" list says which).
    modules = [module_blobs[k.module_sha256] for k in kind_specs]
    return LogWriter(path, header, modules, fsync_every_ticks=fsync_every_ticks)


def compare_tick(reader, tick: int, got: dict[int, bytes]) -> None:
    """Raise DivergenceError naming the first differing tick, agent and record."""
    if tick >= reader.tick_count:
        raise DivergenceError(f"tick {tick}: the log ends before this tick", tick, None, None)
    want = reader.read_tick(tick)
    # Every section the re-execution produced must equal the logged bytes: a
    # forger could edit records and leave the digest section alone, or both.
    if all(bytes(want.get(k, b"")) == bytes(v) for k, v in got.items()):
        return
    w_rec, g_rec = decode_records(want.get(S_RECORDS, b"\0" * 8)), decode_records(got[S_RECORDS])
    n = min(len(w_rec), len(g_rec))
    for i in range(n):
        if w_rec.headers[i].tobytes() != g_rec.headers[i].tobytes() or w_rec.payload_of(i) != g_rec.payload_of(i):
            agent = int(g_rec.headers[i]["source"])
            raise DivergenceError(
                f"tick {tick}: record {i} differs (agent {agent}): log has {_desc(w_rec, i)}, "
                f"re-execution produced {_desc(g_rec, i)}", tick, agent, i)
    if len(w_rec) != len(g_rec):
        longer = w_rec if len(w_rec) > n else g_rec
        agent = int(longer.headers[n]["source"])
        raise DivergenceError(
            f"tick {tick}: log has {len(w_rec)} records, re-execution produced {len(g_rec)} "
            f"(first extra: record {n}, agent {agent})", tick, agent, n)
    for name, sec, dtype in (("fuel", S_FUEL, "<u4"), ("status", S_STATUS, np.uint8)):
        a = np.frombuffer(bytes(want.get(sec, b"")), dtype)
        b = np.frombuffer(got[sec], dtype)
        if len(a) != len(b) or not np.array_equal(a, b):
            diff = np.flatnonzero(a != b) if len(a) == len(b) else np.array([0])
            agent = int(diff[0])
            raise DivergenceError(f"tick {tick}: agent {agent} {name} differs: log {a[agent] if len(a) > agent else '-'}"
                                  f", re-execution {b[agent] if len(b) > agent else '-'}", tick, agent, None)
    if S_FINAL in got:
        a = np.frombuffer(bytes(want.get(S_FINAL, b"")), STATE_DTYPE)
        b = np.frombuffer(got[S_FINAL], STATE_DTYPE)
        if len(a) == len(b):
            diff = np.flatnonzero(a != b)
            if len(diff):
                agent = int(b[diff[0]]["agent"])
                raise DivergenceError(f"tick {tick}: final state of agent {agent} differs", tick, agent, None)
    if S_RUN_HASH in got and bytes(want.get(S_RUN_HASH, b"")) != got[S_RUN_HASH]:
        raise DivergenceError(f"tick {tick}: run hash differs", tick, None, None)
    raise DivergenceError(f"tick {tick}: digest section differs (inputs delivered to agents differ, "
                          "or the logged digests were altered)", tick, None, None)


KIND_NAMES = {17: "msg", 18: "log", 19: "publish", 20: "infer", 21: "trap", 22: "halt", 2: "deliver"}
FLAG_NAMES = {0: "committed", 1: "deferred", 2: "dropped"}


def _desc(batch: RecordBatch, i: int) -> str:
    h = batch.headers[i]
    p = batch.payload_of(i)
    return (f"{KIND_NAMES.get(int(h['kind']), h['kind'])} {int(h['source'])}->{int(h['destination'])} "
            f"seq {int(h['seq'])} {len(p)} bytes {p[:16].hex()}")
