"""Issue 3: replay log verification, truncation, tampering; CLI contract and signals."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from wasm_engine.orchestrator import main
from wasm_engine.orchestrator._replaylog import LogReader, LogWriter
from wasm_engine.orchestrator._verify import verify
from wasm_engine.shm_protocol import list_segments

from .conftest import write_scenario


@pytest.fixture
def logged_run(tmp_path, gossip_wasm):
    sc = write_scenario(tmp_path, gossip_wasm, count=16, ticks=6, fanout=2, trap_tick=3, trap_kind=2, trap_mod=5)
    log = tmp_path / "run.welog"
    assert main(["run", str(sc), "--workers", "2", "--transport", "inline", "--log", str(log), "--json",
                 "--quiet"]) == 0
    return sc, log


def test_run_json_summary_contract(tmp_path, gossip_wasm, capsys):
    sc = write_scenario(tmp_path, gossip_wasm, count=10, ticks=3)
    assert main(["run", str(sc), "--workers", "2", "--json", "--quiet", "--log", str(tmp_path / "x.welog")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    d = json.loads(last)
    for key in ("run_hash", "ticks", "agents", "agent_steps", "messages", "wall_s", "agent_steps_per_s",
                "workers", "restarts"):
        assert key in d
    assert d["ticks"] == 3 and d["agents"] == 10 and d["agent_steps"] == 30 and d["workers"] == 2


def test_verify_passes_with_any_worker_count(logged_run, capsys):
    _sc, log = logged_run
    assert main(["verify", str(log), "--workers", "3", "--quiet"]) == 0
    assert "OK: 6 ticks" in capsys.readouterr().out
    r = verify(log, transport="inline", groups=1)
    assert r.ok and r.run_hash


def _rewrite(log, out, mutate):
    """Copy a log, letting mutate(tick, sections) change sections; checksums are recomputed."""
    with LogReader(log) as r:
        with LogWriter(out, r.header, [bytes(m) for m in r.modules], fsync_every_ticks=0) as w:
            for tick, sec in r.ticks():
                sec = {k: bytes(v) for k, v in sec.items()}
                mutate(tick, sec)
                w.append_tick(tick, sec)


def test_forged_record_is_caught_at_its_tick_and_agent(logged_run, tmp_path, capsys):
    from wasm_engine.orchestrator import _runlog

    _sc, log = logged_run
    forged = tmp_path / "forged.welog"

    def mutate(tick, sec):
        if tick == 4:
            recs = _runlog.decode_records(sec[_runlog.S_RECORDS])
            i = int((recs.headers["kind"] == 17).nonzero()[0][2])  # third message of the tick
            recs.payload[recs.offsets[i]] ^= 0xFF
            sec[_runlog.S_RECORDS] = _runlog.encode_records(recs)
            self_agent.append((i, int(recs.headers[i]["source"])))

    self_agent = []
    _rewrite(log, forged, mutate)
    rc = main(["verify", str(forged), "--json", "--quiet", "--transport", "inline"])
    assert rc == 3
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (rec, agent), = self_agent
    assert d["divergence"]["tick"] == 4 and d["divergence"]["record"] == rec and d["divergence"]["agent"] == agent


def test_flipped_byte_is_a_corrupt_log_with_offset(logged_run, tmp_path, capsys):
    _sc, log = logged_run
    bad = tmp_path / "bad.welog"
    data = bytearray(log.read_bytes())
    with LogReader(log) as r:
        off = r.frame_offset(3) + 60
    data[off] ^= 0x40
    bad.write_bytes(bytes(data))
    rc = main(["verify", str(bad), "--quiet"])
    assert rc == 4
    assert "offset" in capsys.readouterr().err



def test_a_log_with_other_digests_is_refused_in_one_line(logged_run, tmp_path, capsys):
    # A log from before the run digests moved to BLAKE3 names no digest
    # function (or another one): verify cannot reproduce its digests and
    # says so instead of reporting a divergence at tick 0.
    _sc, log = logged_run
    with LogReader(log) as r:
        assert r.header["digest_function"] == "blake3-derive-key"
    for header_value in (None, "blake2b"):
        old = tmp_path / f"old_{header_value}.welog"
        with LogReader(log) as r:
            header = dict(r.header)
            if header_value is None:
                del header["digest_function"]
            else:
                header["digest_function"] = header_value
            with LogWriter(old, header, [bytes(m) for m in r.modules], fsync_every_ticks=0) as w:
                for tick, sec in r.ticks():
                    w.append_tick(tick, {k: bytes(v) for k, v in sec.items()})
        rc = main(["verify", str(old), "--quiet", "--transport", "inline"])
        assert rc == 4
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "blake2b" in err[0] and "run the scenario again" in err[0]

@pytest.mark.parametrize("cut", ["mid_frame", "header_only", "one_byte_short"])
def test_truncated_log_reads_to_last_complete_tick(logged_run, tmp_path, cut, capsys):
    _sc, log = logged_run
    data = log.read_bytes()
    with LogReader(log) as r:
        f3, f5 = r.frame_offset(3), r.frame_offset(5)
        header_end = r.frame_offset(0)
    cut_at = {"mid_frame": f3 + 40, "header_only": header_end, "one_byte_short": len(data) - 1}[cut]
    t = tmp_path / "cut.welog"
    t.write_bytes(data[:cut_at])
    with LogReader(t) as r:
        expect = {"mid_frame": 3, "header_only": 0, "one_byte_short": 5}[cut]
        assert r.tick_count == expect
    assert main(["verify", str(t), "--json", "--quiet", "--transport", "inline"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["ok"] and d["ticks_checked"] == expect
    if expect:
        assert main(["replay", str(t), "--tick", str(expect - 1), "--json"]) == 0


def test_replay_shows_the_trap(logged_run, capsys):
    _sc, log = logged_run
    assert main(["replay", str(log), "--tick", "3", "--agent", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    traps = [r for r in d["records"] if r["kind"] == "trap"]
    assert traps and traps[0]["payload_text"].startswith("code 2:")


@pytest.mark.parametrize("argv, code", [
    (["run", "/nonexistent/scenario.toml"], 2),
    (["replay", "/nonexistent.welog", "--tick", "0"], 4),
])
def test_bad_input_exit_codes(argv, code, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("wasm-engine: ") and len(err.strip().splitlines()) == 1


def test_bad_scenario_key_is_one_line(tmp_path, gossip_wasm, capsys):
    sc = write_scenario(tmp_path, gossip_wasm)
    sc.write_text(sc.read_text().replace("fuel_per_tick = 100000", "fuel_per_tick = -5"))
    assert main(["run", str(sc)]) == 2
    err = capsys.readouterr().err.strip()
    assert "scenario.toml" in err and "fuel_per_tick" in err and len(err.splitlines()) == 1


# ---- signals: nothing left behind ------------------------------------------------
def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "wasm_engine.orchestrator._cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_groups(p, n, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = [c for c in psutil.Process(p.pid).children(recursive=True)
                if "resource_tracker" not in " ".join(c.cmdline())]
        if len(kids) >= n:
            return kids
        time.sleep(0.1)
    raise AssertionError("groups did not start")


def _assert_clean(before, pids):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive and set(list_segments()) <= before:
            return
        time.sleep(0.1)
    assert not alive, f"processes left: {alive}"
    assert set(list_segments()) <= before, f"segments left: {set(list_segments()) - before}"


def test_ctrl_c_stops_everything_and_leaves_nothing(tmp_path, gossip_wasm):
    sc = write_scenario(tmp_path, gossip_wasm, count=200, ticks=100000, fanout=2)
    before = set(list_segments())
    p = _cli("run", str(sc), "--workers", "3", "--no-log")
    kids = _wait_for_groups(p, 3)
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal does: the whole process group
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    _assert_clean(before, [k.pid for k in kids])


def test_sigkill_of_a_worker_stops_the_run_cleanly(tmp_path, gossip_wasm):
    sc = write_scenario(tmp_path, gossip_wasm, count=200, ticks=100000, fanout=2)
    before = set(list_segments())
    p = _cli("run", str(sc), "--workers", "3", "--no-log")
    kids = _wait_for_groups(p, 3)
    time.sleep(1.0)
    victim = [k for k in kids if "resource_tracker" not in " ".join(k.cmdline())][0]
    os.kill(victim.pid, signal.SIGKILL)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    assert "killed by signal 9" in err
    _assert_clean(before, [k.pid for k in kids])


def test_sigkill_of_the_supervisor_groups_exit_and_segments_are_reclaimed(tmp_path, gossip_wasm):
    sc = write_scenario(tmp_path, gossip_wasm, count=200, ticks=100000, fanout=2)
    before = set(list_segments())
    p = _cli("run", str(sc), "--workers", "2", "--no-log")
    kids = _wait_for_groups(p, 2)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    _assert_clean(before, [k.pid for k in kids])


def test_a_run_without_a_log_has_the_logged_run_hash(tmp_path, gossip_wasm):
    """Without a log the supervisor skips building the log sections (tick_sections(encode=False)),
    hashing the records piece by piece: the run hash must not notice, on one group (its K_FUEL
    records sliced off the batch's tail) or several."""
    import numpy as np

    from wasm_engine.orchestrator import Supervisor, load_scenario
    from wasm_engine.orchestrator._runlog import S_INFERENCE, S_RECORDS, tick_sections
    from wasm_engine.shm_protocol import RecordBatch

    sc = load_scenario(write_scenario(tmp_path, gossip_wasm, count=12, ticks=4, fanout=3, trap_tick=2,
                                      trap_kind=2, trap_mod=5))
    logged = Supervisor(sc, groups=2, transport="inline", log_path=tmp_path / "a.welog").run().run_hash
    for groups in (1, 3):  # the supervisor writes a log only when given log_path
        assert Supervisor(sc, groups=groups, transport="inline").run().run_hash == logged

    n = 3
    recs = RecordBatch.from_arrays(kind=5, source=np.arange(n, dtype=np.uint32), destination=np.zeros(n, np.uint32),
                                   tick=1, seq=np.arange(n, dtype=np.uint32), payload_len=np.array([2, 0, 5], np.uint32),
                                   payload=np.arange(7, dtype=np.uint8))
    recs.headers["check"] = 99  # transport state: never hashed
    for batch in (recs, RecordBatch.empty()):
        args = (batch, np.arange(4, dtype=np.uint32), np.zeros(4, np.uint8), bytes(32), None, recs)
        full, digest = tick_sections(*args)
        lean, lean_digest = tick_sections(*args, encode=False)
        assert lean_digest == digest
        assert S_RECORDS in full and S_INFERENCE in full
        assert S_RECORDS not in lean and S_INFERENCE not in lean
