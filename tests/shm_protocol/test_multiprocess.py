import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from wasm_engine.shm_protocol import Channel, RecordBatch, list_segments

from . import _procs

CTX = mp.get_context("spawn")


def test_stress_million_records_random_sizes_many_wraps():
    n, seed = 1_000_000, 1234
    with Channel.create(capacity_bytes=1 << 20, max_record_bytes=1024, tag="stress") as ch:
        p = CTX.Process(target=_procs.producer, args=(ch.name, n, seed))
        p.start()
        lens = _procs.lengths(seed, n)
        got = 0
        bytes_seen = 0
        deadline = time.monotonic() + 300
        while got < n:
            assert time.monotonic() < deadline, "stress test stalled"
            b = ch.recv.pop_batch(timeout_s=30)
            k = len(b)
            assert k, "producer stalled"
            h = b.headers
            seqs = np.arange(got, got + k)
            assert np.array_equal(h["seq"], seqs), "records out of order or lost"
            assert np.array_equal(h["payload_len"], lens[got:got + k])
            assert np.array_equal(h["kind"], 1 + seqs % 100)
            assert np.array_equal(h["tick"], seqs // 1000)
            assert (h["source"] == 7).all() and (h["destination"] == 9).all()
            assert np.array_equal(b.payload, _procs.payload_for(seqs, lens[got:got + k]))
            got += k
            bytes_seen += int(h["payload_len"].sum()) + 32 * k
        p.join(30)
        assert p.exitcode == 0
        assert ch.recv.pop(timeout_s=0) is None
        assert bytes_seen > 50 * (1 << 20)  # > 50 wrap-arounds of the 1 MiB ring
        stats = ch.recv.stats()
        assert stats["records_pushed"] == stats["records_popped"] == n


def test_two_process_ping_pong():
    n = 2000
    with Channel.create(capacity_bytes=1 << 16, max_record_bytes=1024) as ch:
        p = CTX.Process(target=_procs.echo, args=(ch.name, n))
        p.start()
        for i in range(n):
            msg = f"ping {i}".encode()
            r = ch.call(3, msg, seq=i, timeout_s=30)
            assert r is not None and r.payload == msg + b"!" and r.seq == i
        p.join(30)
        assert p.exitcode == 0


def test_attacher_exit_neither_unlinks_nor_warns():
    """Python's resource tracker must not unlink the owner's segment when a peer exits."""
    with Channel.create(capacity_bytes=4096, max_record_bytes=512) as ch:
        code = textwrap.dedent(f"""
            from wasm_engine.shm_protocol import Channel
            ch = Channel.attach({ch.name!r})
            ch.send.push(1, b"hi", timeout_s=5)
            ch.close()
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "leaked" not in out.stderr and "Warning" not in out.stderr, out.stderr
        assert ch.name in list_segments()
        assert ch.recv.pop(timeout_s=5).payload == b"hi"


def test_sigkill_of_child_leaves_nothing():
    with Channel.create(capacity_bytes=4096, max_record_bytes=512) as ch:
        p = CTX.Process(target=_procs.attach_and_wait, args=(ch.name,))
        p.start()
        assert ch.recv.pop(timeout_s=30).payload == b"attached"
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        assert ch.name in list_segments()  # owner still holds it
    assert ch.name not in list_segments()


CREATOR = textwrap.dedent("""
    import sys, time
    from wasm_engine.shm_protocol import Channel
    mode = sys.argv[1]
    with Channel.create(capacity_bytes=4096, max_record_bytes=512) as ch:
        print(ch.name, flush=True)
        if mode == "exception":
            raise RuntimeError("boom")
        if mode in ("sigint", "sigkill"):
            time.sleep(60)
""")


def _run_creator(mode: str, sig=None):
    p = subprocess.Popen([sys.executable, "-c", CREATOR, mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    name = p.stdout.readline().strip()
    assert name.startswith("we_")
    if sig is not None:
        assert name in list_segments()
        p.send_signal(sig)
    _out, err = p.communicate(timeout=60)
    return p.returncode, name, err


@pytest.mark.parametrize("mode", ["normal", "exception"])
def test_creator_exit_paths_leave_nothing(mode):
    rc, name, err = _run_creator(mode)
    assert (rc == 0) == (mode == "normal")
    assert name not in list_segments()
    assert "leaked" not in err


def test_ctrl_c_of_creator_leaves_nothing():
    rc, name, err = _run_creator("sigint", signal.SIGINT)
    assert rc != 0 and "KeyboardInterrupt" in err
    assert name not in list_segments()
    assert "leaked" not in err


def test_sigkill_of_creator_is_cleaned_by_the_tracker():
    """Last line of defence: the resource tracker unlinks a SIGKILLed creator's segment."""
    rc, name, _err = _run_creator("sigkill", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while name in list_segments() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name not in list_segments()


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_two_process_ping_pong_lean_bytes_api(path):
    n = 2000
    with Channel.create(capacity_bytes=1 << 16, max_record_bytes=1024, latency_path=path) as ch:
        p = CTX.Process(target=_procs.echo_bytes, args=(ch.name, n))
        p.start()
        ch.set_call_header(9, source=1, destination=2, tick=3, seq=4)
        for i in range(n):
            msg = f"ping {i}".encode()
            assert ch.call_bytes(msg, timeout_s=30) == msg[::-1]
        p.join(30)
        assert p.exitcode == 0


def test_segments_left_open_are_released_at_exit_without_noise():
    """A script that forgets to close (and dies of an exception) leaves nothing and prints no BufferError."""
    code = textwrap.dedent("""
        from wasm_engine.shm_protocol import Channel
        ch = Channel.create(capacity_bytes=4096, max_record_bytes=512)
        peer = Channel.attach(ch.name)
        print(ch.name, flush=True)
        raise RuntimeError("boom")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name = out.stdout.strip()
    assert out.returncode == 1 and "RuntimeError: boom" in out.stderr
    assert "BufferError" not in out.stderr and "leaked" not in out.stderr, out.stderr
    assert name.startswith("we_") and name not in list_segments()
