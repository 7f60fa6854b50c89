"""The inference process: one InferenceEngine fed only through a shared-memory channel.

Layer: inference. Spawned and supervised by the supervisor. It reacts to
records only: K_INF_INIT (load models), then per tick a run of K_INF_REQUEST
records closed by K_INF_EXECUTE(tick), answered by K_INF_RESULT records
closed by K_INF_DONE(tick). Requests are executed in the order received —
the supervisor sends them in canonical order — and a request's id is
(agent << 32 | agent's sequence number), derived from the request itself, so a
restarted inference process can be fed the same requests again safely.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import numpy as np

from ..shm_protocol import Channel, RecordBatch

K_INF_INIT = 64       # payload: JSON {"models": [...], "provider": str}
K_INF_READY = 65      # payload: JSON list of per-model info (provider used, memory)
K_INF_REQUEST = 66    # source=agent, destination=model index, tick, seq=agent's seq; payload=request
K_INF_EXECUTE = 67    # execute the requests received since the last EXECUTE; tick=their tick
K_INF_RESULT = 68     # destination=agent, source=model index, tick, seq, flags=status; payload=result
K_INF_DONE = 69       # all results of EXECUTE(tick) sent
K_INF_ERROR = 70      # payload: UTF-8 message (model load failure, internal error)
K_INF_SHUTDOWN = 71

#: Records per result push; bounds the memory one push holds.
PUSH_TIMEOUT_S = 1.0
PARENT_CHECK_S = 1.0


def request_id(agent: int, seq: int) -> int:
    return (agent << 32) | seq


def _push(ch: Channel, batch: RecordBatch, parent_pid: int) -> None:
    def parent_alive():
        if os.getppid() != parent_pid:
            raise SystemExit(3)

    ch.send.push_all(batch, poll_s=PUSH_TIMEOUT_S, still_there=parent_alive)


def _one(kind: int, payload: bytes = b"", tick: int = 0, flags: int = 0) -> RecordBatch:
    return RecordBatch.single(kind, payload, tick=tick, flags=flags)


def build_engine(config: dict, max_result_bytes: int):
    from ._engine import InferenceEngine
    from ._models import ModelSpec

    specs = [ModelSpec(id=m["id"], path=m["path"], kind=m["kind"], tokenizer_path=m.get("tokenizer"),
                       provider=m.get("provider"), max_context=m.get("max_context") or None,
                       batch=m.get("batch", True))
             for m in config["models"]]
    return InferenceEngine(specs, provider=config.get("provider", "auto"), max_result_bytes=max_result_bytes)


def engine_info(engine) -> list[dict]:
    out = []
    for info in engine.models:
        out.append({"id": info.id, "kind": info.kind, "provider": info.provider,
                    "file_bytes": info.file_bytes, "rss_delta_bytes": info.rss_delta_bytes})
    return out


def execute_batch(engine, requests: RecordBatch, max_result_bytes: int) -> RecordBatch:
    """Run a tick's requests (canonical order) and encode results as K_INF_RESULT records."""
    from ._engine import Request

    h = requests.headers
    reqs = [Request(request_id(int(h[i]["source"]), int(h[i]["seq"])), int(h[i]["destination"]),
                    requests.payload_of(i)) for i in range(len(requests))]
    results = engine.execute(reqs)
    pays, lens, status = [], [], []
    for r in results:
        p = r.payload
        if len(p) > max_result_bytes:
            p = f"result of {len(p)} bytes exceeds the transport limit {max_result_bytes}".encode()
            st = 5  # Status.TOO_LARGE
        else:
            st = int(r.status)
        pays.append(bytes(p))
        lens.append(len(p))
        status.append(st)
    return RecordBatch.from_arrays(kind=K_INF_RESULT, source=h["destination"], destination=h["source"],
                                   tick=h["tick"], seq=h["seq"], payload_len=np.array(lens, np.uint32),
                                   payload=np.frombuffer(b"".join(pays), np.uint8),
                                   flags=np.array(status, np.uint16))


def inference_main(channel_name: str, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ch = Channel.attach(channel_name)
    engine = None
    pending: list[RecordBatch] = []
    max_result = ch.send.max_record_bytes - 64
    try:
        while True:
            batch = ch.recv.pop_batch(timeout_s=PARENT_CHECK_S)
            if not len(batch):
                if os.getppid() != parent_pid:
                    return
                continue
            kinds = batch.headers["kind"]
            ctrl = np.flatnonzero(kinds != K_INF_REQUEST)
            start = 0
            for c in ctrl.tolist():
                if c > start:
                    pending.append(batch.slice(start, c))
                start = c + 1
                kind, tick = int(kinds[c]), int(batch.headers[c]["tick"])
                if kind == K_INF_INIT:
                    try:
                        engine = build_engine(json.loads(batch.payload_of(c)), max_result)
                    except Exception as e:  # noqa: BLE001 - reported to the supervisor as one line
                        _push(ch, _one(K_INF_ERROR, str(e).encode()[-4000:]), parent_pid)
                        return
                    _push(ch, _one(K_INF_READY, json.dumps(engine_info(engine)).encode()), parent_pid)
                elif kind == K_INF_EXECUTE:
                    reqs = RecordBatch.concat(pending)
                    pending.clear()
                    out = execute_batch(engine, reqs, max_result)
                    _push(ch, RecordBatch.concat([out, _one(K_INF_DONE, tick=tick)]), parent_pid)
                elif kind == K_INF_SHUTDOWN:
                    return
                else:
                    raise RuntimeError(f"inference process received unexpected record kind {kind}")
            if start < len(batch):
                pending.append(batch.slice(start, len(batch)))
    except SystemExit:
        raise
    except BaseException:
        msg = "internal error in the inference process:\n" + traceback.format_exc()
        try:
            _push(ch, _one(K_INF_ERROR, msg.encode()[-60000:]), parent_pid)
        except BaseException:
            print(msg, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        ch.close()
