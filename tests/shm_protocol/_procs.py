"""Child-process bodies for the multi-process tests (importable by spawn)."""
import os
import signal
import sys
import time

import numpy as np

from wasm_engine.shm_protocol import Channel, RecordBatch

MAX_PAYLOAD = 300


def lengths(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, MAX_PAYLOAD + 1, n)


def payload_for(seqs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Deterministic content: byte j of record s is (s * 131 + j) mod 256."""
    total = int(lens.sum())
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
    return ((np.repeat(seqs.astype(np.int64), lens) * 131 + j) & 0xFF).astype(np.uint8)


def producer(name: str, n: int, seed: int) -> None:
    ch = Channel.attach(name)
    try:
        lens = lengths(seed, n)
        rng = np.random.default_rng(seed + 1)
        i = 0
        while i < n:
            k = int(min(n - i, rng.integers(1, 2048)))
            seqs = np.arange(i, i + k)
            batch = RecordBatch.from_arrays(kind=1 + (seqs % 100), source=7, destination=9,
                                            tick=seqs // 1000, seq=seqs, payload_len=lens[i:i + k],
                                            payload=payload_for(seqs, lens[i:i + k]))
            ch.send.push_batch(batch, timeout_s=60)
            i += k
    finally:
        ch.close()


def echo(name: str, n: int) -> None:
    ch = Channel.attach(name)
    try:
        r = ch.recv.pop(timeout_s=30)
        for _ in range(n - 1):
            r = ch.reply_recv(r.kind, r.payload + b"!", seq=r.seq, timeout_s=30)
        ch.send.push(r.kind, r.payload + b"!", seq=r.seq, timeout_s=30)
    finally:
        ch.close()


def attach_and_wait(name: str) -> None:
    ch = Channel.attach(name)
    ch.send.push(1, b"attached", timeout_s=10)
    time.sleep(60)  # until killed


def attach_and_exit(name: str) -> None:
    ch = Channel.attach(name)
    ch.send.push(1, b"bye", timeout_s=10)
    ch.close()


def echo_bytes(name: str, n: int) -> None:
    ch = Channel.attach(name)
    try:
        ch.set_call_header(10)
        r = ch.recv.pop(timeout_s=30)
        assert (r.kind, r.source, r.destination, r.tick, r.seq) == (9, 1, 2, 3, 4)
        p = r.payload
        for _ in range(n - 1):
            p = ch.reply_recv_bytes(p[::-1], timeout_s=30)
        ch.send.push(10, p[::-1], timeout_s=30)
    finally:
        ch.close()
