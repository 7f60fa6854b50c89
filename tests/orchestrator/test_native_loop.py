"""The per-agent loop in C (we_host_step_agents) against the Python loop and
the reference path.

A stage whose modules import no host function with per-step Python state
(log, rand_u64, publish) is stepped by one C call per run of agents; it
comes back to Python only for an agent whose step failed or halted. Every
case runs the same agents three ways -- fast path with the C loop, fast path
with the Python loop, reference path -- and every stage's output bytes and
the final states must be equal; each also asserts that the C loop really ran.
"""
import hashlib

import numpy as np
import pytest
import wasmtime

from wasm_engine.shm_protocol import RecordBatch
from wasm_engine.worker import K_DELIVER, K_FUEL, K_HALT, K_INFER, K_MSG, K_TRAP, GroupHost, GroupSpec, KindSpec, \
    TrapCode

from .test_host_paths import IMPORTS, _count_fallbacks, _deliveries

PAGE = 65536
SEED = 11
# The imports without per-step Python state (all but log, rand_u64 and
# publish): stages of these agents run in the C loop.
NATIVE_ONLY = "\n".join(line for line in IMPORTS.splitlines()
                        if not any(f'"we" "{name}"' in line for name in ("log", "rand_u64", "publish")))
WITH_LOG = NATIVE_ONLY + '\n  (import "we" "log" (func $log (param i32 i32) (result i32)))'
CAPS = ("recv", "send", "rand", "tick", "log", "publish", "infer")


def _wasm(step: str, imports: str = NATIVE_ONLY, pages: int = 1) -> bytes:
    """An agent whose we_step body is `step`; $id holds its agent id."""
    return wasmtime.wat2wasm(f"""(module {imports}
      (memory (export "memory") {pages})
      (global $id (mut i32) (i32.const 0))
      (func (export "we_abi_version") (result i32) (i32.const 1))
      (func (export "we_init") (param $i i32) (param $seed i64) (param $len i32) (result i32)
        (global.set $id (local.get $i)) (i32.const 0))
      (func (export "we_step") (param $t i64) (result i32) (local $top i32) {step} (i32.const 0)))""")


def _kind(tmp_path, name, wasm, first, count, stage=0, fuel=100_000, max_sends=4):
    path = tmp_path / f"{hashlib.sha256(wasm).hexdigest()[:16]}.wasm"
    path.write_bytes(wasm)
    return KindSpec(name, str(path), hashlib.sha256(wasm).hexdigest(), CAPS, fuel, 4 * PAGE, max_sends, 2, stage,
                    b"cfg-bytes".hex(), first, count)


def _hosts(kinds, n):
    def host(path):
        return GroupHost(GroupSpec(0, SEED, n, 64, 2, tuple(kinds), max_log_bytes=32, max_logs_per_tick=3,
                                   max_publish_bytes=128, host=path, agent_ids=tuple(range(n))))
    return {"c": host("fast"), "python": host("python-loop"), "reference": host("reference")}


def _run(hosts, ticks, stages=(0,), inbox=()):
    """Step every host alike; assert equal bytes; return the C loop's records per (tick, stage)."""
    out = []
    for t in range(ticks):
        for s in stages:
            deliveries = _deliveries(inbox[t] if t < len(inbox) else ())
            got = {name: h.run_stage(t, s, deliveries) for name, h in hosts.items()}
            for name in ("python", "reference"):
                assert got["c"].headers.tobytes() == got[name].headers.tobytes(), f"tick {t} stage {s}: vs {name}"
                assert got["c"].payload.tobytes() == got[name].payload.tobytes(), f"tick {t} stage {s}: vs {name}"
            out.append(got["c"].records())
    final = {name: h.final_state().payload.tobytes() for name, h in hosts.items()}
    assert final["c"] == final["python"] == final["reference"]
    return out


@pytest.fixture
def c_loop_calls(monkeypatch):
    """How many stages each host stepped in the C loop."""
    calls = []
    run = GroupHost._run_native

    def counting(self, stage, tick):
        calls.append((id(self), stage, tick))
        return run(self, stage, tick)

    monkeypatch.setattr(GroupHost, "_run_native", counting)
    return calls


def _fuel(records):
    (r,) = [r for r in records if r.kind == K_FUEL]
    return np.frombuffer(r.payload, [("agent", "<u4"), ("fuel", "<u4")])


def test_plain_steps_match_the_python_loop(tmp_path, c_loop_calls, monkeypatch):
    """recv, send, infer, tick, inbox_count and agent_count through the C loop;
    none of them reaches Python."""
    fallbacks = _count_fallbacks(monkeypatch)
    step = """
      (i32.store (i32.const 0) (call $inbox_count))
      (i32.store (i32.const 4) (call $recv (i32.const 8) (i32.const 16) (i32.const 8)))
      (i64.store (i32.const 24) (call $tick))
      (i32.store (i32.const 32) (call $agent_count))
      (i32.store (i32.const 36) (global.get $id))
      (drop (call $send (i32.rem_u (i32.add (global.get $id) (i32.const 1)) (i32.const 5))
                        (i32.const 0) (i32.const 40)))
      (drop (call $infer (i32.const 1) (i32.const 24) (i32.const 16)))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 5)], 5)
    inbox = [[(4, 0, b"to zero"), (0, 3, b"to three")], [(1, 2, b"x" * 20)], []]
    per_tick = _run(hosts, 3, inbox=inbox)
    assert len([c for c in c_loop_calls if c[0] == id(hosts["c"])]) == 3
    assert not [c for c in c_loop_calls if c[0] != id(hosts["c"])]
    assert fallbacks == dict.fromkeys(fallbacks, 0)
    for records in per_tick:
        assert len([r for r in records if r.kind == K_MSG]) == 5
        assert len([r for r in records if r.kind == K_INFER]) == 5
        assert list(_fuel(records)["agent"]) == [0, 1, 2, 3, 4]
        assert (_fuel(records)["fuel"] > 0).all()


def test_a_trap_mid_stage_quarantines_one_agent_and_the_rest_step_on(tmp_path, c_loop_calls):
    """Agent 2 traps at tick 1 after a send (rolled back); agents 3 and 4 step
    in the same stage; from tick 2 on agent 2 is no longer stepped (the C
    loop's rows are rebuilt)."""
    step = """
      (drop (call $send (i32.const 0) (i32.const 0) (i32.const 4)))
      (if (i32.and (i64.eq (local.get $t) (i64.const 1)) (i32.eq (global.get $id) (i32.const 2)))
        (then unreachable))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 5)], 5)
    t0, t1, t2 = _run(hosts, 3)
    (trap,) = [r for r in t1 if r.kind == K_TRAP]
    assert trap.source == 2 and TrapCode(int.from_bytes(trap.payload[:4], "little")) == TrapCode.UNREACHABLE
    assert sorted(r.source for r in t1 if r.kind == K_MSG) == [0, 1, 3, 4]
    assert list(_fuel(t1)["agent"]) == [0, 1, 2, 3, 4]
    assert list(_fuel(t2)["agent"]) == [0, 1, 3, 4]
    assert len(c_loop_calls) == 3


def test_out_of_fuel_and_a_host_fault_in_a_python_fallback(tmp_path, c_loop_calls):
    """Agent 1 spins past its fuel; agent 3 sends from past its memory (the
    native send hands it to Python, which must find agent 3 from the C loop's
    context and faults it); agent 4 reads its config through a Python import."""
    step = """
      (if (i32.eq (global.get $id) (i32.const 1)) (then (loop $l (br $l))))
      (if (i32.eq (global.get $id) (i32.const 3)) (then
        (drop (call $send (i32.const 0) (i32.const 65530) (i32.const 16)))))
      (if (i32.eq (global.get $id) (i32.const 4)) (then
        (drop (call $send (i32.const 0) (i32.const 0) (call $config_read (i32.const 0) (i32.const 64))))))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 5, fuel=5_000)], 5)
    (t0,) = _run(hosts, 1)
    traps = {r.source: TrapCode(int.from_bytes(r.payload[:4], "little")) for r in t0 if r.kind == K_TRAP}
    assert traps == {1: TrapCode.OUT_OF_FUEL, 3: TrapCode.HOST_OUT_OF_BOUNDS}
    (msg,) = [r for r in t0 if r.kind == K_MSG]
    assert msg.source == 4 and msg.payload == b"cfg-bytes"
    assert _fuel(t0)["fuel"][1] == 5_000
    assert len(c_loop_calls) == 1


def test_halts_keep_their_outputs_and_order(tmp_path, c_loop_calls):
    """we_step returning non-zero: the agent's outputs of that step stay, its
    K_HALT follows them, its fuel counts, and the next agents step on."""
    step = """
      (drop (call $send (i32.const 0) (i32.const 0) (i32.const 4)))
      (if (i32.and (i64.eq (local.get $t) (i64.const 0)) (i32.ge_u (global.get $id) (i32.const 1)))
        (then (return (i32.sub (i32.const 0) (global.get $id)))))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 3)], 3)
    t0, t1 = _run(hosts, 2)
    halts = [(r.source, int.from_bytes(r.payload, "little")) for r in t0 if r.kind == K_HALT]
    assert halts == [(1, 0xFFFFFFFF), (2, 0xFFFFFFFE)]
    for agent in (1, 2):
        mine = [r for r in t0 if r.source == agent]
        assert [r.kind for r in mine] == [K_MSG, K_HALT] and [r.seq for r in mine] == [0, 1]
    assert list(_fuel(t0)["agent"]) == [0, 1, 2] and list(_fuel(t1)["agent"]) == [0]


def test_memory_grown_in_step_and_a_full_arena(tmp_path, c_loop_calls, monkeypatch):
    """Host calls at the top of memory grown in the same step go to the Python
    fallbacks (the known size is stale), as do infer requests that overflow
    the output arena; both find the stepping agent from the C loop."""
    fallbacks = _count_fallbacks(monkeypatch)
    step = """
      (drop (memory.grow (i32.const 1)))
      (local.set $top (i32.mul (memory.size) (i32.const 65536)))
      (i32.store (i32.sub (local.get $top) (i32.const 4)) (global.get $id))
      (drop (call $send (i32.const 0) (i32.sub (local.get $top) (i32.const 4)) (i32.const 4)))
      (drop (call $infer (i32.const 0) (i32.const 0) (i32.const 60000)))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 3)], 3)
    t0, t1 = _run(hosts, 2)
    for records, top in ((t0, 2 * PAGE), (t1, 3 * PAGE)):
        assert [int.from_bytes(r.payload, "little") for r in records if r.kind == K_MSG] == [0, 1, 2]
        assert [len(r.payload) for r in records if r.kind == K_INFER] == [60000] * 3
    assert fallbacks["send"] >= 3 and fallbacks["infer"] >= 1
    assert len(c_loop_calls) == 2


def test_stages_with_python_step_state_keep_the_python_loop(tmp_path, c_loop_calls):
    """A kind importing log runs in the Python loop; another kind's stage in
    the same group still runs in C, and a stage mixing both runs in Python."""
    plain = _wasm("(drop (call $send (i32.const 0) (i32.const 0) (i32.const 4)))")
    logs = _wasm("(drop (call $log (i32.const 0) (i32.const 4)))", imports=WITH_LOG)
    kinds = [_kind(tmp_path, "plain", plain, 0, 2, stage=0), _kind(tmp_path, "logs", logs, 2, 2, stage=1),
             _kind(tmp_path, "plain2", plain, 4, 1, stage=1)]
    hosts = _hosts(kinds, 5)
    assert hosts["c"]._native_stages == {0}
    _run(hosts, 2, stages=(0, 1))
    assert [(stage, tick) for _, stage, tick in c_loop_calls] == [(0, 0), (0, 1)]


def test_deliveries_reach_each_agent_in_canonical_order(tmp_path, c_loop_calls):
    """Inbox bounds per agent are set for the C loop as for the Python one."""
    step = """
      (block $done (loop $next
        (br_if $done (i32.lt_s (call $recv (i32.const 0) (i32.const 4) (i32.const 8)) (i32.const 0)))
        (drop (call $send (i32.const 0) (i32.const 0) (i32.const 12)))
        (br $next)))
    """
    hosts = _hosts([_kind(tmp_path, "k", _wasm(step), 0, 4, max_sends=8)], 4)
    inbox = [[(3, 0, b"a"), (2, 0, b"b"), (0, 2, b"c"), (1, 3, b"d"), (2, 3, b"e")]]
    (t0,) = _run(hosts, 1, inbox=inbox)
    got = [(r.source, int.from_bytes(r.payload[:4], "little"), r.payload[4:5]) for r in t0 if r.kind == K_MSG]
    assert got == [(0, 3, b"a"), (0, 2, b"b"), (2, 0, b"c"), (3, 1, b"d"), (3, 2, b"e")]


def test_records_are_the_reference_bytes_with_a_delivery_batch_reused(tmp_path):
    """RecordBatch deliveries built once and run through all three hosts stay unchanged."""
    hosts = _hosts([_kind(tmp_path, "k", _wasm("(drop (call $inbox_count))"), 0, 2)], 2)
    deliveries = RecordBatch.from_arrays(kind=K_DELIVER, source=np.array([1], np.uint32), destination=np.array([0]),
                                         tick=0, seq=np.arange(1), payload_len=np.array([1]),
                                         payload=np.frombuffer(b"z", np.uint8))
    before = deliveries.headers.tobytes()
    for h in hosts.values():
        h.run_stage(0, 0, deliveries)
    assert deliveries.headers.tobytes() == before


def test_the_host_path_is_checked_up_front(tmp_path):
    kinds = [_kind(tmp_path, "k", _wasm("(drop (call $inbox_count))"), 0, 1)]
    with pytest.raises(ValueError, match="unknown host path 'c-loop'"):
        GroupHost(GroupSpec(0, SEED, 1, 64, 2, tuple(kinds), host="c-loop", agent_ids=(0,)))


RELAY_STEP = """
  ;; forward everything received to (id * 7 + tick) mod n, then trap or halt on cue
  (block $done (loop $next
    (br_if $done (i32.lt_s (call $recv (i32.const 0) (i32.const 4) (i32.const 16)) (i32.const 0)))
    (i32.store (i32.const 20) (i32.add (i32.load (i32.const 4)) (global.get $id)))
    (drop (call $send (i32.rem_u (i32.add (i32.mul (global.get $id) (i32.const 7)) (i32.wrap_i64 (local.get $t)))
                                 (call $agent_count))
                      (i32.const 20) (i32.const 4)))
    (br $next)))
  (drop (call $send (i32.rem_u (i32.add (global.get $id) (i32.const 1)) (call $agent_count))
                    (i32.const 0) (i32.const 4)))
  (if (i32.and (i64.eq (local.get $t) (i64.const 3)) (i32.eq (i32.rem_u (global.get $id) (i32.const 9)) (i32.const 4)))
    (then unreachable))
  (if (i32.and (i64.eq (local.get $t) (i64.const 5)) (i32.eq (i32.rem_u (global.get $id) (i32.const 11)) (i32.const 2)))
    (then (return (i32.const 7))))
"""


def test_whole_runs_agree_across_loops_and_group_counts(tmp_path, c_loop_calls):
    """Through the supervisor: the C loop in 1 and 3 worker processes, the
    Python loop and the reference path give one run hash, traps and halts included."""
    from wasm_engine.orchestrator import Supervisor, load_scenario

    (tmp_path / "relay.wasm").write_bytes(_wasm(RELAY_STEP))
    (tmp_path / "s.toml").write_text("""[run]
name = "relay"
ticks = 8
seed = 5
max_message_bytes = 64

[[agents]]
kind = "relay"
module = "relay.wasm"
count = 40
capabilities = ["recv", "send", "tick", "infer"]
fuel_per_tick = 100000
max_sends_per_tick = 8
""")
    sc = load_scenario(tmp_path / "s.toml")
    runs = {(host, groups, transport): Supervisor(sc, groups=groups, transport=transport, host=host).run()
            for host, groups, transport in (("fast", 1, "inline"), ("fast", 3, "process"),
                                            ("python-loop", 2, "inline"), ("reference", 1, "inline"))}
    hashes = {s.run_hash for s in runs.values()}
    assert len(hashes) == 1, runs
    s = runs[("fast", 1, "inline")]
    assert s.quarantined == 4 and s.halted == 3 and s.messages > 0  # ids 4, 13, 22, 31; 2, 24, 35 (13 trapped first)
    assert len(c_loop_calls) == 8  # the inline fast run; the process run's groups are other processes
