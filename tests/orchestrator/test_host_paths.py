"""The fast host path against the reference path, one host function at a time.

GroupHost is driven directly (no supervisor) with tiny WAT agents, on both
host paths, and every stage's output batch and the final states must be the
same bytes. The cases aim at the edges the fast path handles differently
from the reference path: its cached lower bound of the memory's size (memory
grown inside a step, then a host call at the new top), pointers and lengths
read from raw value slots (negative lengths, pointers >= 2^31), i64 results
written as two words, and host faults raised inside we_init.
"""
import hashlib

import numpy as np
import pytest
import wasmtime

from wasm_engine.shm_protocol import RecordBatch
from wasm_engine.worker import (
    INFERENCE_SENDER, INIT_TICK, K_DELIVER, K_HALT, K_INFER, K_LOG, K_MSG, K_PUBLISH, K_TRAP, GroupHost, GroupSpec,
    KindSpec, TrapCode, rng_nth, rng_stream_key,
)

PAGE = 65536
SEED = 7
IMPORTS = """
  (import "we" "recv" (func $recv (param i32 i32 i32) (result i32)))
  (import "we" "inbox_count" (func $inbox_count (result i32)))
  (import "we" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "we" "rand_u64" (func $rand (result i64)))
  (import "we" "tick" (func $tick (result i64)))
  (import "we" "log" (func $log (param i32 i32) (result i32)))
  (import "we" "publish" (func $publish (param i32 i32) (result i32)))
  (import "we" "infer" (func $infer (param i32 i32 i32) (result i64)))
  (import "we" "config_read" (func $config_read (param i32 i32) (result i32)))
  (import "we" "agent_count" (func $agent_count (result i32)))
"""
CAPS = ("recv", "send", "rand", "tick", "log", "publish", "infer")


def _module(tmp_path, step: str, init: str = "", pages: int = 1, max_pages: int | None = None) -> bytes:
    limit = f" {max_pages}" if max_pages is not None else ""
    wat = f"""(module {IMPORTS}
      (memory (export "memory") {pages}{limit})
      (func (export "we_abi_version") (result i32) (i32.const 1))
      (func (export "we_init") (param $id i32) (param $seed i64) (param $len i32) (result i32) {init} (i32.const 0))
      (func (export "we_step") (param $t i64) (result i32) (local $top i32) {step} (i32.const 0)))"""
    return wasmtime.wat2wasm(wat)


def _hosts(tmp_path, wasm: bytes, *, n=2, config=b"\x01\x02\x03\x04\x05", memory_limit=4 * PAGE, max_sends=2,
           max_infers=1, n_models=2):
    path = tmp_path / f"{hashlib.sha256(wasm).hexdigest()[:16]}.wasm"
    path.write_bytes(wasm)
    kind = KindSpec("k", str(path), hashlib.sha256(wasm).hexdigest(), CAPS, 1_000_000, memory_limit, max_sends,
                    max_infers, 0, config.hex(), 0, n)
    return [GroupHost(GroupSpec(0, SEED, n, 64, n_models, (kind,), max_log_bytes=32, max_logs_per_tick=3,
                                max_publish_bytes=128, host=host, agent_ids=tuple(range(n))))
            for host in ("fast", "reference")]


def _deliveries(msgs) -> RecordBatch:
    """msgs: (source, destination, payload) in canonical order."""
    if not msgs:
        return RecordBatch.empty()
    src, dst, pay = zip(*msgs)
    return RecordBatch.from_arrays(kind=K_DELIVER, source=np.array(src, np.uint32), destination=np.array(dst),
                                   tick=0, seq=np.arange(len(msgs)), payload_len=np.array([len(p) for p in pay]),
                                   payload=np.frombuffer(b"".join(pay), np.uint8))


def _run_both(tmp_path, wasm, ticks=1, inbox=(), **kw):
    """Run both host paths; assert identical bytes; return the fast path's records per tick."""
    fast, ref = _hosts(tmp_path, wasm, **kw)
    per_tick = []
    for t in range(ticks):
        deliveries = _deliveries(inbox[t] if t < len(inbox) else ())
        a, b = fast.run_stage(t, 0, deliveries), ref.run_stage(t, 0, deliveries)
        assert a.headers.tobytes() == b.headers.tobytes(), f"tick {t}: headers differ"
        assert a.payload.tobytes() == b.payload.tobytes(), f"tick {t}: payloads differ"
        per_tick.append(a.records())
    assert fast.final_state().payload.tobytes() == ref.final_state().payload.tobytes()
    return per_tick


def _of(records, kind, source=0):
    return [r for r in records if r.kind == kind and r.source == source]


def _trap(records, source=0):
    (r,) = _of(records, K_TRAP, source)
    return TrapCode(int.from_bytes(r.payload[:4], "little")), r.payload[4:].decode()


# ---- memory grown inside a step ---------------------------------------------------
def test_host_calls_at_the_top_of_memory_grown_in_the_same_step(tmp_path):
    """The fast path caches a lower bound of the memory size; growth inside a
    step must not make an in-bounds range fault, nor let a range one byte past
    the new top through."""
    step = """
      (if (i64.eq (local.get $t) (i64.const 0)) (then
        ;; caches the initial size on the fast path
        (drop (call $publish (i32.const 65528) (i32.const 8)))))
      (if (i64.eq (local.get $t) (i64.const 1)) (then
        (drop (memory.grow (i32.const 1)))
        (local.set $top (i32.mul (memory.size) (i32.const 65536)))
        (i64.store (i32.sub (local.get $top) (i32.const 8)) (i64.const 0x1122334455667788))
        (i32.store (i32.const 0) (call $send (i32.const 1) (i32.sub (local.get $top) (i32.const 8)) (i32.const 8)))
        (i32.store (i32.const 4) (call $log (i32.sub (local.get $top) (i32.const 8)) (i32.const 8)))
        (i64.store (i32.const 8) (call $infer (i32.const 0) (i32.sub (local.get $top) (i32.const 8)) (i32.const 8)))
        ;; the sender id lands in the last 4 bytes, the payload just before
        (i32.store (i32.const 16) (call $recv (i32.sub (local.get $top) (i32.const 4))
                                              (i32.sub (local.get $top) (i32.const 12)) (i32.const 8)))
        (drop (call $publish (i32.sub (local.get $top) (i32.const 16)) (i32.const 16)))))
      (if (i64.eq (local.get $t) (i64.const 2)) (then
        (drop (memory.grow (i32.const 1)))
        (local.set $top (i32.mul (memory.size) (i32.const 65536)))
        (drop (call $send (i32.const 1) (i32.sub (local.get $top) (i32.const 7)) (i32.const 8)))))
    """
    inbox = [(), [(1, 0, b"ABCDEFGHIJ")]]
    t0, t1, t2 = _run_both(tmp_path, _module(tmp_path, step), ticks=3, inbox=inbox)
    top = 2 * PAGE
    (msg,) = _of(t1, K_MSG)
    assert msg.destination == 1 and msg.payload == (0x1122334455667788).to_bytes(8, "little")
    assert _of(t1, K_LOG)[0].payload == msg.payload
    assert _of(t1, K_INFER)[0].payload == msg.payload
    (pub,) = _of(t1, K_PUBLISH)
    # [top-16, top-12): untouched tail of the stored i64; [top-12, top-4): 8 of the 10
    # payload bytes; [top-4, top): sender id 1
    assert pub.payload[4:] == b"ABCDEFGH" + (1).to_bytes(4, "little")
    assert _trap(t2) == (TrapCode.HOST_OUT_OF_BOUNDS,
                         f"we.send: range [{top + PAGE - 7}, {top + PAGE + 1}) outside linear memory of {top + PAGE} bytes")


def test_growth_past_the_limit_then_a_host_call_past_the_old_top(tmp_path):
    """A failed memory.grow leaves the size as it was: the range still faults."""
    step = """
      (i32.store (i32.const 0) (memory.grow (i32.const 8)))
      (drop (call $publish (i32.const 65536) (i32.const 4)))
    """
    (t0,) = _run_both(tmp_path, _module(tmp_path, step), memory_limit=2 * PAGE)
    assert _trap(t0) == (TrapCode.HOST_OUT_OF_BOUNDS, "we.publish: range [65536, 65540) outside linear memory of 65536 bytes")


# ---- out-of-bounds arguments, per host function -----------------------------------
@pytest.mark.parametrize("call, detail", [
    ("(call $recv (i32.const 65533) (i32.const 0) (i32.const 8))", "we.recv: range [65533, 65537)"),
    ("(call $recv (i32.const 0) (i32.const 65530) (i32.const 8))", "we.recv: range [65530, 65538)"),
    ("(call $recv (i32.const 0) (i32.const 16) (i32.const -1))", "we.recv: range [16, 15)"),
    ("(call $recv (i32.const -4) (i32.const 16) (i32.const 4))", "we.recv: range [4294967292, 4294967296)"),
    ("(call $send (i32.const 1) (i32.const -16) (i32.const 8))", "we.send: range [4294967280, 4294967288)"),
    ("(call $send (i32.const 1) (i32.const 8) (i32.const -1))", "we.send: range [8, 7)"),
    ("(call $send (i32.const 1) (i32.const 65535) (i32.const 2))", "we.send: range [65535, 65537)"),
    ("(call $log (i32.const 65535) (i32.const 2))", "we.log: range [65535, 65537)"),
    ("(call $log (i32.const 0) (i32.const -2147483648))", "we.log: range [0, -2147483648)"),
    ("(call $publish (i32.const 2147483648) (i32.const 1))", "we.publish: range [2147483648, 2147483649)"),
    ("(i32.wrap_i64 (call $infer (i32.const 0) (i32.const 65000) (i32.const 600)))", "we.infer: range [65000, 65600)"),
    ("(call $config_read (i32.const 65534) (i32.const 3))", "we.config_read: range [65534, 65537)"),
    ("(call $config_read (i32.const 0) (i32.const -5))", "we.config_read: range [0, -5)"),
])
def test_out_of_bounds_arguments_trap_the_agent_alike(tmp_path, call, detail):
    step = f"(drop {call})"
    (t0,) = _run_both(tmp_path, _module(tmp_path, step), inbox=[[(1, 0, b"hello")]])
    want = (TrapCode.HOST_OUT_OF_BOUNDS, f"{detail} outside linear memory of 65536 bytes")
    assert _trap(t0) == want
    if "recv" in call:
        assert not _of(t0, K_TRAP, 1)  # its inbox is empty: recv returns before looking at the pointers
    else:
        assert _trap(t0, 1) == want


def test_recv_checks_nothing_when_the_inbox_is_empty(tmp_path):
    step = "(i32.store (i32.const 0) (call $recv (i32.const -1) (i32.const -1) (i32.const -1))) " \
           "(drop (call $publish (i32.const 0) (i32.const 4)))"
    (t0,) = _run_both(tmp_path, _module(tmp_path, step))
    assert _of(t0, K_PUBLISH)[0].payload == (-1).to_bytes(4, "little", signed=True)


# ---- results ------------------------------------------------------------------------
def _words(payload: bytes, fmt="<i4"):
    return np.frombuffer(payload, fmt).tolist()


def test_send_log_publish_infer_results(tmp_path):
    step = """
      (i32.store (i32.const 0) (call $send (i32.const 1) (i32.const 256) (i32.const 65)))   ;; too long: -3
      (i32.store (i32.const 4) (call $send (i32.const 2) (i32.const 256) (i32.const 4)))    ;; no such agent: -2
      (i32.store (i32.const 8) (call $send (i32.const -1) (i32.const 256) (i32.const 4)))   ;; no such agent: -2
      (i32.store (i32.const 12) (call $send (i32.const 1) (i32.const 256) (i32.const 64)))  ;; 0
      (i32.store (i32.const 16) (call $send (i32.const 0) (i32.const 256) (i32.const 0)))   ;; 0
      (i32.store (i32.const 20) (call $send (i32.const 1) (i32.const 256) (i32.const 1)))   ;; quota: -1
      (i32.store (i32.const 24) (call $log (i32.const 256) (i32.const 40)))                 ;; truncated to 32
      (i32.store (i32.const 28) (call $log (i32.const 256) (i32.const 0)))
      (i32.store (i32.const 32) (call $log (i32.const 256) (i32.const 1)))
      (i32.store (i32.const 36) (call $log (i32.const 256) (i32.const 1)))                  ;; over 3 a tick: -1
      (i32.store (i32.const 40) (call $publish (i32.const 256) (i32.const 129)))            ;; too long: -3
      (i64.store (i32.const 48) (call $infer (i32.const -1) (i32.const 256) (i32.const 4)))  ;; no such model: -2
      (i64.store (i32.const 56) (call $infer (i32.const 2) (i32.const 256) (i32.const 4)))   ;; no such model: -2
      (i64.store (i32.const 64) (call $infer (i32.const 1) (i32.const 0) (i32.const 65537))) ;; too long: -3
      (i64.store (i32.const 72) (call $infer (i32.const 1) (i32.const 256) (i32.const 4)))   ;; request id
      (i64.store (i32.const 80) (call $infer (i32.const 9) (i32.const 256) (i32.const 4)))   ;; quota first: -1
      (i32.store (i32.const 88) (call $agent_count))
      (i32.store (i32.const 92) (call $inbox_count))
      (drop (call $publish (i32.const 0) (i32.const 96)))
    """
    init = "(memory.fill (i32.const 256) (i32.const 0x5A) (i32.const 64))"
    t0, t1 = _run_both(tmp_path, _module(tmp_path, step, init=init, pages=2), ticks=2, memory_limit=2 * PAGE)
    for records in (t0, t1):
        res = _of(records, K_PUBLISH)[0].payload
        seq_of_infer = _of(records, K_INFER)[0].seq
        assert _words(res[:48]) == [-3, -2, -2, 0, 0, -1, 0, 0, 0, -1, -3, 0]
        assert _words(res[48:88], "<i8") == [-2, -2, -3, seq_of_infer, -1]
        assert _words(res[88:96]) == [2, 0]
        assert [(r.destination, r.payload) for r in _of(records, K_MSG)] == [(1, b"Z" * 64), (0, b"")]
        assert [r.payload for r in _of(records, K_LOG)] == [b"Z" * 32, b"", b"Z"]
        (inf,) = _of(records, K_INFER)
        assert (inf.destination, inf.payload) == (1, b"ZZZZ")
    assert _of(t1, K_INFER)[0].seq > _of(t0, K_INFER)[0].seq


def test_infer_request_ids_keep_all_64_bits_of_the_result(tmp_path):
    """An i64 result is written as two 32-bit words on the fast path: the
    request id (the output's seq) and the negative codes must survive it."""
    step = """
      (i64.store (i32.const 0) (call $infer (i32.const 0) (i32.const 0) (i32.const 8)))
      (drop (call $publish (i32.const 0) (i32.const 8)))
    """
    init = "(drop (call $log (i32.const 0) (i32.const 1))) (drop (call $log (i32.const 0) (i32.const 1)))"
    t0, t1 = _run_both(tmp_path, _module(tmp_path, step, init=init), ticks=2)
    for records in (t0, t1):
        (inf,) = _of(records, K_INFER)
        assert _words(_of(records, K_PUBLISH)[0].payload, "<i8") == [inf.seq]
    assert _of(t0, K_INFER)[0].seq == 2  # after the two logs of we_init


def test_recv_copies_sender_and_truncates_payload(tmp_path):
    step = """
      (i32.store (i32.const 0) (call $inbox_count))
      (i32.store (i32.const 4) (call $recv (i32.const 8) (i32.const 12) (i32.const 4)))   ;; 10 bytes, 4 copied
      (i32.store (i32.const 16) (call $recv (i32.const 20) (i32.const 24) (i32.const 0)))  ;; nothing copied
      (i32.store (i32.const 28) (call $inbox_count))
      (i32.store (i32.const 32) (call $recv (i32.const 36) (i32.const 40) (i32.const 8)))  ;; empty message
      (i32.store (i32.const 48) (call $recv (i32.const 52) (i32.const 56) (i32.const 8)))  ;; inbox empty: -1
      (drop (call $publish (i32.const 0) (i32.const 64)))
    """
    inbox = [[(1, 0, b"0123456789"), (3, 0, b"xyz"), (INFERENCE_SENDER, 0, b""), (0, 1, b"for agent 1")]]
    (t0,) = _run_both(tmp_path, _module(tmp_path, step), inbox=inbox, n=2)
    res = _of(t0, K_PUBLISH)[0].payload
    assert _words(res[:12]) == [3, 10, 1]
    assert res[12:16] == b"0123"
    assert _words(res[16:24]) == [3, 3]
    assert _words(res[28:40], "<u4") == [1, 0, INFERENCE_SENDER]
    assert _words(res[48:52]) == [-1]
    res1 = _of(t0, K_PUBLISH, 1)[0].payload
    assert _words(res1[:12]) == [1, 11, 0] and res1[12:16] == b"for "


def test_tick_and_rand_u64(tmp_path):
    step = """
      (i64.store (i32.const 0) (call $tick))
      (i64.store (i32.const 8) (call $rand))
      (i64.store (i32.const 16) (call $rand))
      (drop (call $publish (i32.const 0) (i32.const 24)))
    """
    init = "(i64.store (i32.const 0) (call $tick)) (i64.store (i32.const 8) (call $rand)) " \
           "(drop (call $publish (i32.const 0) (i32.const 16)))"
    ticks = _run_both(tmp_path, _module(tmp_path, step, init=init), ticks=3)
    for t, records in enumerate(ticks):
        for agent in (0, 1):
            got = [r.payload for r in _of(records, K_PUBLISH, agent)]
            key = rng_stream_key(SEED, agent, t)
            want = [t, rng_nth(key, 0), rng_nth(key, 1)]
            if t == 0:  # we_init's publish is committed with tick 0, before the step's
                init_key = rng_stream_key(SEED, agent, INIT_TICK)
                assert _words(got[0], "<u8") == [INIT_TICK, rng_nth(init_key, 0)]
                got = got[1:]
            assert _words(got[0], "<u8") == want


# ---- we_init and halts ---------------------------------------------------------------
def test_host_fault_in_we_init_is_classified_like_the_reference_path(tmp_path):
    """Regression: on the fast path a host function's fault inside we_init came
    back as an unexplained trap, and the fault stayed pending until some other
    agent trapped, which then reported it as its own."""
    init = "(if (i32.eqz (local.get $id)) (then (drop (call $config_read (i32.const 65534) (i32.const 8)))))"
    step = "(if (i32.eq (call $agent_count) (i32.const 2)) (then unreachable))"
    (t0,) = _run_both(tmp_path, _module(tmp_path, step, init=init))
    assert _trap(t0, 0) == (TrapCode.HOST_OUT_OF_BOUNDS,
                            "we.config_read: range [65534, 65542) outside linear memory of 65536 bytes")
    code, _detail = _trap(t0, 1)
    assert code == TrapCode.UNREACHABLE


def test_config_read_and_halt_codes(tmp_path):
    init = "(drop (call $config_read (i32.const 100) (i32.const 3)))"
    step = "(if (i32.eq (i32.load8_u (i32.const 102)) (i32.const 3)) (then (return (i32.const -7))))"
    (t0,) = _run_both(tmp_path, _module(tmp_path, step, init=init), config=b"\x01\x02\x03\x04")
    for agent in (0, 1):
        (halt,) = _of(t0, K_HALT, agent)
        assert halt.payload == (-7).to_bytes(4, "little", signed=True)


def test_memory_that_starts_empty_then_grows(tmp_path):
    step = """
      (drop (memory.grow (i32.const 1)))
      (i32.store (i32.const 65532) (i32.const 42))
      (drop (call $publish (i32.const 65532) (i32.const 4)))
    """
    (t0,) = _run_both(tmp_path, _module(tmp_path, step, pages=0))
    assert _of(t0, K_PUBLISH)[0].payload == (42).to_bytes(4, "little")


# ---- native host functions (native/we_host.c) and their Python fallbacks -------------
def _count_fallbacks(monkeypatch) -> dict:
    """Count the calls of the Python versions of the natively served imports
    (on the fast path they run only as the native functions' fallbacks)."""
    calls = dict.fromkeys(("recv", "send", "infer", "inbox_count"), 0)
    make = GroupHost._fast_imports

    def counting(self):
        fns = make(self)
        for name in calls:
            def wrapped(env, caller, args, nargs, _fn=fns[name], _name=name):
                calls[_name] += 1
                return _fn(env, caller, args, nargs)
            fns[name] = wrapped
        return fns

    monkeypatch.setattr(GroupHost, "_fast_imports", counting)
    return calls


def test_native_host_functions_serve_the_common_case(tmp_path, monkeypatch):
    """Plain recv, send, infer and inbox_count calls never reach Python; the
    outputs are the reference path's bytes."""
    calls = _count_fallbacks(monkeypatch)
    step = """
      (i32.store (i32.const 0) (call $inbox_count))
      (i32.store (i32.const 4) (call $recv (i32.const 8) (i32.const 16) (i32.const 3)))   ;; truncated copy
      (i32.store (i32.const 32) (call $recv (i32.const 8) (i32.const 16) (i32.const 16)))  ;; inbox empty: -1
      (i32.store (i32.const 36) (call $send (i32.const 1) (i32.const 16) (i32.const 3)))
      (i64.store (i32.const 40) (call $infer (i32.const 1) (i32.const 0) (i32.const 8)))
      (i32.store (i32.const 48) (call $send (i32.const 1) (i32.const 16) (i32.const 99)))  ;; too long: -3
      (i64.store (i32.const 56) (call $tick))
      (drop (call $publish (i32.const 0) (i32.const 64)))
    """
    inbox = [[(1, 0, b"hello"), (1, 1, b"x")], [(0, 1, b"ab")]]
    t0, t1 = _run_both(tmp_path, _module(tmp_path, step), ticks=2, inbox=inbox)
    assert calls == dict.fromkeys(calls, 0)
    res = _of(t0, K_PUBLISH)[0].payload
    assert _words(res[:8]) == [1, 5] and res[8:12] == (1).to_bytes(4, "little") and res[16:19] == b"hel"
    assert _words(res[32:40]) == [-1, 0] and _words(res[48:52]) == [-3]
    assert _words(res[56:64], "<i8") == [0]
    assert [(r.destination, r.payload) for r in _of(t0, K_MSG)] == [(1, b"hel")]
    # agent 1 at tick 1: one message waiting, then recv's length: the infer request's first 8 bytes
    assert [_words(r.payload) for r in _of(t1, K_INFER, source=1)] == [[1, 2]]


def test_output_arena_grows_mid_step_in_emission_order(tmp_path, monkeypatch):
    """More outputs than the arena holds: the native send hands the full case
    to Python, which grows the arena; native sends and Python logs stay in
    emission order, as on the reference path."""
    calls = _count_fallbacks(monkeypatch)
    step = """
      (local.set $top (i32.const 0))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $top) (i32.const 60)))
        (i32.store (i32.const 0) (local.get $top))
        (drop (call $send (i32.const 1) (i32.const 0) (i32.const 64)))
        (if (i32.eq (i32.rem_u (local.get $top) (i32.const 20)) (i32.const 10)) (then
          (drop (call $log (i32.const 0) (i32.const 4)))))
        (local.set $top (i32.add (local.get $top) (i32.const 1)))
        (br $next)))
    """
    t0, t1 = _run_both(tmp_path, _module(tmp_path, step), ticks=2, max_sends=100)
    for records in (t0, t1):
        for agent in (0, 1):
            mine = [r for r in records if r.source == agent and r.kind in (K_MSG, K_LOG)]
            assert [r.seq for r in mine] == sorted(r.seq for r in mine)
            assert len(_of(records, K_MSG, agent)) == 60 and len(_of(records, K_LOG, agent)) == 3
            assert [int.from_bytes(r.payload[:4], "little") for r in _of(records, K_MSG, agent)] == list(range(60))
    # 2 agents x 63 records against the arena's first 64: the full case went to Python.
    assert calls["send"] >= 1
