#!/usr/bin/env python3
"""Transport benchmark: wasm-engine rings vs multiprocessing.Pipe / Queue (/ pyzmq).

Measures, in one run on this machine, between two processes:
  * round-trip latency of a 64-byte message (median and p99), ping-pong; for
    the ring both through the lean bytes API (``Channel.call_bytes`` /
    ``reply_recv_bytes``, row "ring") and the general Record API
    (``Channel.call`` / ``reply_recv``, row "ring_records", same throughput);
  * one-way throughput of 64-byte messages (batched where the transport allows):
    the median of the rates over SLICES equal parts of the stream, so that a
    burst of unrelated load on a shared VM skews one part rather than the
    figure (the whole-stream rate is in the JSON as ``msgs_per_s_mean``);
  * for ring and Pipe, the round trip to a peer that has gone to sleep
    (``asleep_rtt_us_*``: the kernel wake-up path, paid by every handoff to an
    idle process), and what that costs the sleeping side in CPU: the echo
    process's thread time per round trip, awake (``echo_cpu_us_per_rtt``) and
    found asleep by every request (``asleep_echo_cpu_us_per_rtt``).

Prints a table; with --json the last line of stdout is one JSON object:
  {"ring": {"rtt_us_p50": ..., "rtt_us_p99": ..., "msgs_per_s": ...}, "pipe": {...}, ...}
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

MSG_BYTES = 64
#: Client pause between round trips when measuring a sleeping peer: far
#: longer than the ring's spin phase, so the echo side always blocks.
ASLEEP_GAP_S = 0.002
KIND = 1
#: Throughput is the median rate over this many equal parts of each stream.
SLICES = 5


class _Rate:
    """Timestamps a stream of ``total`` messages at each of SLICES equal parts."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.cuts = [total * k // SLICES for k in range(1, SLICES + 1)]
        self.marks = [(0, time.perf_counter())]

    def at(self, got: int) -> None:
        """Call with the running count; cheap when no cut was crossed."""
        if self.cuts and got >= self.cuts[0]:
            # One mark even when a batch crosses several cuts: parts stay non-empty.
            while self.cuts and got >= self.cuts[0]:
                self.cuts.pop(0)
            self.marks.append((got, time.perf_counter()))

    def result(self) -> dict:
        (n0, t0), (n1, t1) = self.marks[0], self.marks[-1]
        rates = [(b - a) / (tb - ta) for (a, ta), (b, tb) in zip(self.marks, self.marks[1:])]
        return {"msgs_per_s": float(np.median(rates)), "msgs_per_s_mean": (n1 - n0) / (t1 - t0)}


# ---- children (module level so the spawn start method can import them) ----
def _ring_echo(name: str, n: int) -> None:
    """Echo n requests; then send the serving loop's CPU time (ns, u64) as one more record."""
    from wasm_engine.shm_protocol import Channel

    ch = Channel.attach(name)
    try:
        # Serving loop: reply to the last request and wait for the next in
        # one native call (seL4-style ReplyRecv).
        r = ch.recv.pop(timeout_s=30)
        cpu0 = time.thread_time_ns()
        for _ in range(n - 1):
            r = ch.reply_recv(KIND, r.payload, timeout_s=30)
        cpu = time.thread_time_ns() - cpu0
        ch.send.push(KIND, r.payload, timeout_s=30)
        ch.send.push(KIND, cpu.to_bytes(8, "little"), timeout_s=30)
    finally:
        ch.close()


def _ring_echo_bytes(name: str, n: int) -> None:
    """_ring_echo through the lean bytes API."""
    from wasm_engine.shm_protocol import Channel

    ch = Channel.attach(name)
    try:
        ch.set_call_header(KIND)
        r = ch.recv.pop(timeout_s=30).payload
        cpu0 = time.thread_time_ns()
        for _ in range(n - 1):
            r = ch.reply_recv_bytes(r, timeout_s=30)
        cpu = time.thread_time_ns() - cpu0
        ch.send.push(KIND, r, timeout_s=30)
        ch.send.push(KIND, cpu.to_bytes(8, "little"), timeout_s=30)
    finally:
        ch.close()


def _ring_produce(name: str, total: int, batch: int) -> None:
    from wasm_engine.shm_protocol import Channel, RecordBatch

    ch = Channel.attach(name)
    try:
        payload = np.tile(np.arange(MSG_BYTES, dtype=np.uint8), batch)
        b = RecordBatch.from_arrays(kind=KIND, source=1, destination=2, tick=0,
                                    seq=np.arange(batch), payload_len=np.full(batch, MSG_BYTES),
                                    payload=payload)
        ch.send.push(KIND, b"ready", timeout_s=30)
        ch.recv.pop(timeout_s=30)  # start signal
        sent = 0
        while sent < total:
            ch.send.push_batch(b, timeout_s=30)
            sent += batch
    finally:
        ch.close()


def _pipe_echo(conn, n: int) -> None:
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def _pipe_produce(conn, total: int, batch: int) -> None:
    msg = bytes(MSG_BYTES)
    conn.send_bytes(b"ready")
    conn.recv_bytes()
    if batch == 1:
        for _ in range(total):
            conn.send_bytes(msg)
    else:
        blob = msg * batch
        for _ in range(total // batch):
            conn.send_bytes(blob)


def _queue_echo(qin, qout, n: int) -> None:
    for _ in range(n):
        qout.put(qin.get())


def _queue_produce(qin, qout, total: int) -> None:
    msg = bytes(MSG_BYTES)
    qout.put(b"ready")
    qin.get()
    for _ in range(total):
        qout.put(msg)


def _zmq_echo(addr: str, n: int) -> None:
    import zmq

    s = zmq.Context.instance().socket(zmq.PAIR)
    s.connect(addr)
    for _ in range(n):
        s.send(s.recv())
    s.close(0)


def _zmq_produce(addr: str, total: int) -> None:
    import zmq

    s = zmq.Context.instance().socket(zmq.PAIR)
    s.connect(addr)
    msg = bytes(MSG_BYTES)
    s.send(b"ready")
    s.recv()
    for _ in range(total):
        s.send(msg)
    s.close(0)


# ---- measurements ---------------------------------------------------------
def _pct(samples_ns) -> tuple[float, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _ring_rtt(ctx, rtt_n: int, lean: bool, gap_s: float = 0.0) -> tuple[list, float]:
    """Round-trip times (ns), and the echo side's CPU time per round trip (us,
    thread time of its serving loop); with gap_s the client pauses between
    calls, so the echo side has stopped spinning and sleeps in the kernel
    (futex): its CPU per round trip is then what a blocked wait and its
    wake-up cost the process that waits."""
    from wasm_engine.shm_protocol import Channel

    warm = rtt_n // 10
    with Channel.create(capacity_bytes=1 << 22, tag="bench") as ch:
        p = ctx.Process(target=_ring_echo_bytes if lean else _ring_echo, args=(ch.name, rtt_n + warm))
        p.start()
        msg = bytes(MSG_BYTES)
        times = []
        clock = time.perf_counter_ns
        if lean:
            ch.set_call_header(KIND)
            call = ch.call_bytes
            for i in range(rtt_n + warm):
                if gap_s:
                    time.sleep(gap_s)
                t0 = clock()
                call(msg, timeout_s=30)
                if i >= warm:
                    times.append(clock() - t0)
        else:
            call = ch.call
            for i in range(rtt_n + warm):
                t0 = clock()
                call(KIND, msg, timeout_s=30)
                if i >= warm:
                    times.append(clock() - t0)
        report = ch.recv.pop(timeout_s=30)
        p.join(30)
    if report is None or len(report.payload) != 8:
        raise SystemExit("ring echo process did not report its CPU time")
    return times, int.from_bytes(report.payload, "little") / 1e3 / max(1, rtt_n + warm - 1)


def bench_ring(ctx, rtt_n: int, tput_n: int, batch: int, lean: bool = True) -> dict:
    from wasm_engine.shm_protocol import Channel

    times, echo_cpu_us = _ring_rtt(ctx, rtt_n, lean)
    with Channel.create(capacity_bytes=1 << 22, tag="bench") as ch:
        p = ctx.Process(target=_ring_produce, args=(ch.name, tput_n, batch))
        p.start()
        got = 0
        # The clock starts once the producer is up (a spawned process takes
        # ~0.1-0.3 s to start: that is not transport throughput).
        ch.recv.pop(timeout_s=60)
        ch.send.push(KIND, b"go", timeout_s=30)
        rate = _Rate(tput_n)
        # A streaming consumer: each batch is read in place (checked: the last
        # record's seq), so the receive buffers need no per-batch copy.
        last = -1
        while got < tput_n:
            b = ch.recv.pop_batch(timeout_s=30, copy=False)
            if len(b):
                seq = b.headers["seq"]
                if int(seq[0]) != (last + 1) % batch:
                    raise SystemExit("ring throughput run lost or reordered records")
                last = int(seq[-1])
            got += len(b)
            rate.at(got)
        p.join(30)
    p50, p99 = _pct(times)
    return {"rtt_us_p50": p50, "rtt_us_p99": p99, "echo_cpu_us_per_rtt": echo_cpu_us, **rate.result(), "batch": batch}


def _pipe_rtt(ctx, rtt_n: int, gap_s: float = 0.0) -> list:
    warm = rtt_n // 10
    a, b = ctx.Pipe()
    p = ctx.Process(target=_pipe_echo, args=(b, rtt_n + warm))
    p.start()
    msg = bytes(MSG_BYTES)
    times = []
    clock = time.perf_counter_ns
    for i in range(rtt_n + warm):
        if gap_s:
            time.sleep(gap_s)
        t0 = clock()
        a.send_bytes(msg)
        a.recv_bytes()
        if i >= warm:
            times.append(clock() - t0)
    p.join(30)
    return times


def bench_pipe(ctx, rtt_n: int, tput_n: int, batch: int = 1) -> dict:
    times = _pipe_rtt(ctx, rtt_n)
    a, b = ctx.Pipe()
    p = ctx.Process(target=_pipe_produce, args=(b, tput_n, batch))
    p.start()
    a.recv_bytes()  # the producer is up
    a.send_bytes(b"go")
    rate = _Rate(tput_n)
    got = 0
    while got < tput_n:
        got += len(a.recv_bytes()) // MSG_BYTES
        rate.at(got)
    p.join(30)
    p50, p99 = _pct(times)
    return {"rtt_us_p50": p50, "rtt_us_p99": p99, **rate.result(), "batch": batch}


def bench_queue(ctx, rtt_n: int, tput_n: int) -> dict:
    warm = rtt_n // 10
    qin, qout = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_echo, args=(qin, qout, rtt_n + warm))
    p.start()
    msg = bytes(MSG_BYTES)
    times = []
    clock = time.perf_counter_ns
    for i in range(rtt_n + warm):
        t0 = clock()
        qin.put(msg)
        qout.get()
        if i >= warm:
            times.append(clock() - t0)
    p.join(30)
    qin, qout = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_produce, args=(qin, qout, tput_n))
    p.start()
    qout.get()  # the producer is up
    qin.put(b"go")
    rate = _Rate(tput_n)
    for i in range(1, tput_n + 1):
        qout.get()
        rate.at(i)
    p.join(30)
    p50, p99 = _pct(times)
    return {"rtt_us_p50": p50, "rtt_us_p99": p99, **rate.result(), "batch": 1}


def bench_zmq(ctx, rtt_n: int, tput_n: int) -> dict | None:
    try:
        import zmq
    except ImportError:
        return None
    warm = rtt_n // 10
    results = {}
    for phase in ("rtt", "tput"):
        addr = f"ipc:///tmp/we_bench_{os.getpid()}_{phase}"
        s = zmq.Context.instance().socket(zmq.PAIR)
        s.bind(addr)
        if phase == "rtt":
            p = ctx.Process(target=_zmq_echo, args=(addr, rtt_n + warm))
            p.start()
            msg = bytes(MSG_BYTES)
            times = []
            for i in range(rtt_n + warm):
                t0 = time.perf_counter_ns()
                s.send(msg)
                s.recv()
                if i >= warm:
                    times.append(time.perf_counter_ns() - t0)
            results["rtt_us_p50"], results["rtt_us_p99"] = _pct(times)
        else:
            p = ctx.Process(target=_zmq_produce, args=(addr, tput_n))
            p.start()
            s.recv()  # the producer is up
            s.send(b"go")
            rate = _Rate(tput_n)
            for i in range(1, tput_n + 1):
                s.recv()
                rate.at(i)
            results.update(rate.result())
        p.join(30)
        s.close(0)
        try:
            os.unlink(addr[len("ipc://"):])
        except FileNotFoundError:
            pass
    results["batch"] = 1
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt-n", type=int, default=20000, help="round trips per transport")
    ap.add_argument("--tput-n", type=int, default=5_000_000, help="messages for ring throughput")
    ap.add_argument("--slow-tput-n", type=int, default=200_000, help="messages for pipe/queue throughput")
    ap.add_argument("--asleep-n", type=int, default=300, help="round trips to a sleeping peer")
    ap.add_argument("--batch", type=int, default=1024, help="records per ring push_batch")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    if min(args.rtt_n, args.tput_n, args.slow_tput_n, args.batch, args.asleep_n) <= 0:
        ap.error("counts must be positive")
    ctx = mp.get_context("spawn")
    res = {}
    t_start = time.perf_counter()
    print(f"measuring on {os.cpu_count()} cores, {MSG_BYTES}-byte messages ...", file=sys.stderr)
    # "ring": the lean request/response API (call_bytes / reply_recv_bytes);
    # "ring_records": the general API returning Record tuples (call / reply_recv).
    res["ring"] = bench_ring(ctx, args.rtt_n, args.tput_n, args.batch, lean=True)
    rec, _ = _ring_rtt(ctx, args.rtt_n, lean=False)
    p50, p99 = _pct(rec)
    res["ring_records"] = {"rtt_us_p50": p50, "rtt_us_p99": p99, "msgs_per_s": res["ring"]["msgs_per_s"],
                           "msgs_per_s_mean": res["ring"]["msgs_per_s_mean"], "batch": args.batch}
    res["pipe"] = bench_pipe(ctx, args.rtt_n, args.slow_tput_n)
    res["pipe_batched"] = bench_pipe(ctx, 200, args.tput_n // 4 // args.batch * args.batch, args.batch)
    res["queue"] = bench_queue(ctx, args.rtt_n, args.slow_tput_n)
    # Round trip to a peer that has gone to sleep (the client pauses 2 ms
    # between calls): the kernel wake-up path, which no spinning hides. On a
    # VM this is where a tick's handoffs between processes pay.
    asleep, res["ring"]["asleep_echo_cpu_us_per_rtt"] = _ring_rtt(ctx, args.asleep_n, True, ASLEEP_GAP_S)
    for key, times in (("ring", asleep), ("pipe", _pipe_rtt(ctx, args.asleep_n, ASLEEP_GAP_S))):
        res[key]["asleep_rtt_us_p50"], res[key]["asleep_rtt_us_p99"] = _pct(times)
    z = bench_zmq(ctx, args.rtt_n, args.slow_tput_n)
    if z is not None:
        res["zmq_ipc"] = z
    r, pi, q = res["ring"], res["pipe"], res["queue"]
    res["targets"] = {
        "ring_rtt_vs_pipe": pi["rtt_us_p50"] / r["rtt_us_p50"],
        "ring_tput_vs_queue": r["msgs_per_s"] / q["msgs_per_s"],
        "rtt_at_most_1_20_of_pipe": r["rtt_us_p50"] * 20 <= pi["rtt_us_p50"],
        "tput_at_least_5M": r["msgs_per_s"] >= 5_000_000,
        "tput_at_least_20x_queue": r["msgs_per_s"] >= 20 * q["msgs_per_s"],
    }
    print(f"{'transport':<14}{'rtt p50 us':>12}{'rtt p99 us':>12}{'msgs/s':>14}{'batch':>7}")
    for k, v in res.items():
        if k == "targets":
            continue
        print(f"{k:<14}{v['rtt_us_p50']:>12.2f}{v['rtt_us_p99']:>12.2f}{v['msgs_per_s']:>14,.0f}{v['batch']:>7}")
    t = res["targets"]
    print(f"ring RTT is 1/{t['ring_rtt_vs_pipe']:.1f} of Pipe's (target ≥ 20); "
          f"ring throughput is {t['ring_tput_vs_queue']:.1f}x Queue's (target ≥ 20), "
          f"{r['msgs_per_s'] / 1e6:.2f} M msgs/s (target ≥ 5); took {time.perf_counter() - t_start:.1f} s")
    print(f"round trip to a sleeping peer (futex / pipe wake-up), p50/p99 us: ring "
          f"{r['asleep_rtt_us_p50']:.1f}/{r['asleep_rtt_us_p99']:.1f}, pipe "
          f"{pi['asleep_rtt_us_p50']:.1f}/{pi['asleep_rtt_us_p99']:.1f}")
    print(f"ring echo side's CPU per round trip: {r['echo_cpu_us_per_rtt']:.1f} us awake (spinning), "
          f"{r['asleep_echo_cpu_us_per_rtt']:.1f} us when each request finds it asleep "
          f"(the CPU a blocked wait and its wake-up cost the waiter)")
    if "zmq_ipc" not in res:
        print("pyzmq not installed: zmq row skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
