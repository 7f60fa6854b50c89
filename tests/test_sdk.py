"""Tests for the C agent SDK, the build helper, ABI v1 checks and the example agents.

The smoke tests run the examples against a small stand-in host written here
(``StubHost``), not the real runtime: the point is to show each example is a
working ABI v1 agent that sends messages without trapping, independently of
how the runtime is doing.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from wasm_engine.orchestrator import _build

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

BuildError = _build.BuildError
build_agent = _build.build_agent
check_module = _build.check_module

HAVE_ZIG = importlib.util.find_spec("ziglang") is not None
needs_zig = pytest.mark.skipif(
    not HAVE_ZIG, reason="ziglang is not installed (pip install 'wasm-engine[sdk]' or the test extra)"
)

# The zig release the committed example modules were built with: builds are
# byte-for-byte reproducible for one toolchain, not across LLVM versions.
EXAMPLES_ZIG_VERSION = "0.17.1"

# Messaging-at-scale examples (1,000+ agents, no models). Scenarios that need a
# model (village, bench_infer) are exercised in tests/orchestrator/test_inference_runs.py.
SCENARIOS = sorted(p for p in EXAMPLES.glob("*/scenario.toml") if "[[models]]" not in p.read_text())
SOURCES = sorted([*EXAMPLES.glob("*/*.c"), *EXAMPLES.glob("*/*.wat")])


def _ids(paths):
    return [str(p.relative_to(EXAMPLES)) for p in paths]


# ---------------------------------------------------------------------------
# A stand-in host implementing ABI v1 closely enough to run the examples
# ---------------------------------------------------------------------------

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()
INFERENCE_SENDER = 0xFFFFFFFF


def _ftype(params, results):
    kinds = {"i32": I32, "i64": I64}
    return wasmtime.FuncType([kinds[p] for p in params], [kinds[r] for r in results])


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _signed64(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


@dataclass
class KindSpec:
    """One [[agents]] table of a scenario, with its module resolved."""

    kind: str
    module: Path
    count: int
    capabilities: list[str]
    fuel_per_tick: int
    memory_limit_bytes: int
    max_sends_per_tick: int
    config: bytes
    first_id: int = 0


def _config_bytes(table: dict) -> bytes:
    if "config_i32" in table:
        return struct.pack(f"<{len(table['config_i32'])}i", *table["config_i32"])
    if "config_text" in table:
        return table["config_text"].encode()
    if "config_hex" in table:
        return bytes.fromhex(table["config_hex"])
    return b""


def read_scenario(path: Path) -> tuple[dict, list[KindSpec]]:
    data = tomllib.loads(path.read_text())
    kinds, next_id = [], 0
    for table in data["agents"]:
        spec = KindSpec(
            kind=table["kind"],
            module=path.parent / table["module"],
            count=table["count"],
            capabilities=list(table["capabilities"]),
            fuel_per_tick=table["fuel_per_tick"],
            memory_limit_bytes=table["memory_limit_bytes"],
            max_sends_per_tick=table["max_sends_per_tick"],
            config=_config_bytes(table),
            first_id=next_id,
        )
        next_id += spec.count
        kinds.append(spec)
    return data["run"], kinds


@dataclass
class Agent:
    id: int
    spec: KindSpec
    store: wasmtime.Store
    memory: wasmtime.Memory
    step: wasmtime.Func
    halted: bool = False
    sends_this_tick: int = 0
    fuel_used: list[int] = field(default_factory=list)


class StubHost:
    """Runs a subset of a scenario's agents against dict-backed inboxes.

    ``agent_count`` reports the scenario's full population, so agents derive
    the same neighbours as in a real run; messages to agents that are not
    instantiated are counted as sent and then dropped.
    """

    def __init__(self, run: dict, kinds: list[KindSpec], ids_by_kind: dict[str, list[int]]):
        config = wasmtime.Config()
        config.consume_fuel = True
        self.engine = wasmtime.Engine(config)
        self.seed = run["seed"]
        self.max_message_bytes = run.get("max_message_bytes", 256)
        self.n_agents = sum(k.count for k in kinds)
        self.tick = -1
        self.current: Agent | None = None
        self.agents: dict[int, Agent] = {}
        self.inbox: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.outbox: list[tuple[int, int, int, bytes]] = []  # (dst, src, seq, payload)
        self.sent: list[tuple[int, int, int, bytes]] = []  # (tick, src, dst, payload)
        self.published: dict[int, bytes] = {}
        self.host_calls: Counter[str] = Counter()
        self.rand_counter = 0

        linker = wasmtime.Linker(self.engine)
        for name, (params, results, _cap) in _build.ABI_IMPORTS.items():
            fn = getattr(self, f"_h_{name}")
            linker.define_func("we", name, _ftype(params, results), fn, access_caller=True)

        for spec in kinds:
            module = wasmtime.Module.from_file(self.engine, str(spec.module))
            for agent_id in ids_by_kind.get(spec.kind, []):
                assert spec.first_id <= agent_id < spec.first_id + spec.count
                store = wasmtime.Store(self.engine)
                store.set_limits(memory_size=spec.memory_limit_bytes)
                instance = linker.instantiate(store, module)
                exports = instance.exports(store)
                agent = Agent(agent_id, spec, store, exports["memory"], exports["we_step"])
                self.agents[agent_id] = agent
                self.current = agent
                store.set_fuel(spec.fuel_per_tick)
                # Like the runtime: a per-agent init seed derived from the run seed.
                init_seed = _signed64(_splitmix(self.seed ^ _splitmix(agent_id + 1)))
                status = exports["we_init"](store, agent_id, init_seed, len(spec.config))
                assert status == 0, f"{spec.module.name}: we_init({agent_id}) returned {status}"

    # -- memory helpers: an out-of-bounds pointer is an agent error -> trap
    def _read(self, caller, ptr: int, length: int) -> bytes:
        mem = self.current.memory
        if ptr < 0 or length < 0 or ptr + length > mem.data_len(caller):
            raise IndexError(f"agent {self.current.id}: read [{ptr}, +{length}) out of memory")
        return bytes(mem.read(caller, ptr, ptr + length))

    def _write(self, caller, ptr: int, data: bytes) -> None:
        mem = self.current.memory
        if ptr < 0 or ptr + len(data) > mem.data_len(caller):
            raise IndexError(f"agent {self.current.id}: write [{ptr}, +{len(data)}) out of memory")
        if data:
            mem.write(caller, data, ptr)

    # -- host functions (names match ABI_IMPORTS)
    def _h_recv(self, caller, src_ptr, buf_ptr, cap):
        self.host_calls["recv"] += 1
        queue = self.inbox[self.current.id]
        if not queue:
            return -1
        src, payload = queue.pop(0)
        self._write(caller, src_ptr, struct.pack("<I", src))
        self._write(caller, buf_ptr, payload[: max(cap, 0)])
        return len(payload)

    def _h_inbox_count(self, caller):
        self.host_calls["inbox_count"] += 1
        return len(self.inbox[self.current.id])

    def _h_send(self, caller, dst, ptr, length):
        self.host_calls["send"] += 1
        agent = self.current
        payload = self._read(caller, ptr, length)
        if agent.sends_this_tick >= agent.spec.max_sends_per_tick:
            return -1
        if not 0 <= dst < self.n_agents:
            return -2
        if length > self.max_message_bytes:
            return -3
        self.outbox.append((dst, agent.id, agent.sends_this_tick, payload))
        agent.sends_this_tick += 1
        self.sent.append((self.tick, agent.id, dst, payload))
        return 0

    def _h_rand_u64(self, caller):
        self.host_calls["rand_u64"] += 1
        self.rand_counter += 1
        key = _splitmix(self.seed ^ _splitmix(self.current.id ^ _splitmix(self.tick + (self.rand_counter << 32))))
        return _signed64(key)

    def _h_tick(self, caller):
        self.host_calls["tick"] += 1
        return self.tick

    def _h_log(self, caller, ptr, length):
        self.host_calls["log"] += 1
        self._read(caller, ptr, length)
        return 0

    def _h_publish(self, caller, ptr, length):
        self.host_calls["publish"] += 1
        self.published[self.current.id] = self._read(caller, ptr, length)
        return 0

    def _h_infer(self, caller, model, ptr, length):
        self.host_calls["infer"] += 1
        return -2

    def _h_config_read(self, caller, ptr, cap):
        config = self.current.spec.config
        self._write(caller, ptr, config[: max(cap, 0)])
        return len(config)

    def _h_agent_count(self, caller):
        return self.n_agents

    def run_tick(self) -> None:
        self.tick += 1
        for agent_id in sorted(self.agents):
            agent = self.agents[agent_id]
            if agent.halted:
                continue
            self.current = agent
            self.rand_counter = 0
            agent.sends_this_tick = 0
            agent.store.set_fuel(agent.spec.fuel_per_tick)
            status = agent.step(agent.store, self.tick)
            agent.fuel_used.append(agent.spec.fuel_per_tick - agent.store.get_fuel())
            agent.halted = status != 0
        # Commit: next tick's inboxes in canonical order (sender id, then
        # the sender's sequence number); unread messages are dropped.
        self.inbox = defaultdict(list)
        for dst, src, _seq, payload in sorted(self.outbox, key=lambda m: (m[1], m[2])):
            if dst in self.agents:
                self.inbox[dst].append((src, payload))
        self.outbox = []


def _first_ids(kinds: list[KindSpec], per_kind: int) -> dict[str, list[int]]:
    return {k.kind: list(range(k.first_id, k.first_id + min(per_kind, k.count))) for k in kinds}


# ---------------------------------------------------------------------------
# Examples: reproducible builds, ABI conformance, scenarios, smoke runs
# ---------------------------------------------------------------------------


def test_examples_exist():
    names = {p.parent.name for p in SCENARIOS}
    assert {"epidemic", "market", "predator_prey", "wat_counter"} <= names
    for source in SOURCES:
        assert source.with_suffix(".wasm").is_file(), f"{source}: compiled .wasm is not committed next to it"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_committed_wasm_matches_fresh_build(source: Path, tmp_path: Path):
    if source.suffix == ".c" and not HAVE_ZIG:
        pytest.skip("ziglang is not installed (pip install 'wasm-engine[sdk]' or the test extra)")
    fresh = build_agent(source, tmp_path / source.with_suffix(".wasm").name)
    committed = source.with_suffix(".wasm")
    assert fresh.read_bytes() == committed.read_bytes(), (
        f"{committed} differs from a fresh build of {source.name} (zig {_build.zig_version()}): "
        f"the source changed without a rebuild, or the toolchain is not the one that built "
        f"the examples ({EXAMPLES_ZIG_VERSION}); rebuild with build_agent"
    )


@needs_zig
def test_zig_version_is_reported():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", _build.zig_version() or "")


@needs_zig
def test_build_is_reproducible(tmp_path: Path):
    source = EXAMPLES / "epidemic" / "epidemic.c"
    # Different output names and directories must not leak into the module.
    a = build_agent(source, tmp_path / "a" / "one.wasm")
    b = build_agent(source, tmp_path / "b" / "two.wasm")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_scenario_shape_and_modules(scenario: Path):
    run, kinds = read_scenario(scenario)
    assert run["name"] and run["ticks"] > 0
    assert run["scheduler"] in {"round_robin", "priority", "dag"}
    assert sum(k.count for k in kinds) >= 1000
    for spec in kinds:
        assert spec.module.is_file(), f"{scenario}: module {spec.module} missing"
        # The examples must load under exactly the capabilities they declare.
        problems = check_module(
            spec.module, capabilities=spec.capabilities, memory_limit_bytes=spec.memory_limit_bytes
        )
        assert problems == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_scenario_passes_the_runtime_parser(scenario: Path):
    scenario_mod = pytest.importorskip("wasm_engine.orchestrator._scenario")
    parsed = scenario_mod.load_scenario(scenario)
    _, kinds = read_scenario(scenario)
    assert parsed.total_agents == sum(k.count for k in kinds)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_smoke_run_small(scenario: Path):
    """Three agents of each kind, a few ticks: messages flow, nothing traps."""
    run, kinds = read_scenario(scenario)
    host = StubHost(run, kinds, _first_ids(kinds, 3))
    for _ in range(5):
        host.run_tick()
    assert host.sent, f"{scenario.parent.name}: no messages sent in 5 ticks"
    assert all(len(p) <= host.max_message_bytes for _, _, _, p in host.sent)
    assert set(host.published) == set(host.agents), "every agent publishes its state"
    for agent in host.agents.values():
        assert max(agent.fuel_used) < agent.spec.fuel_per_tick


def _transcript(host: StubHost) -> tuple:
    return tuple(host.sent), tuple(sorted(host.published.items()))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_examples_are_deterministic(scenario: Path):
    run, kinds = read_scenario(scenario)
    transcripts = []
    for _ in range(2):
        host = StubHost(run, kinds, _first_ids(kinds, 3))
        for _ in range(4):
            host.run_tick()
        transcripts.append(_transcript(host))
    assert transcripts[0] == transcripts[1]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids(SCENARIOS))
def test_full_population_stays_within_budgets(scenario: Path):
    """Every agent of the scenario for a few ticks: fuel, quotas and host-call counts hold at scale."""
    run, kinds = read_scenario(scenario)
    host = StubHost(run, kinds, {k.kind: list(range(k.first_id, k.first_id + k.count)) for k in kinds})
    ticks = 3
    for _ in range(ticks):
        host.run_tick()
    assert not any(a.halted for a in host.agents.values())
    for agent in host.agents.values():
        assert max(agent.fuel_used) < agent.spec.fuel_per_tick // 2, (
            f"{agent.spec.kind} {agent.id} used {max(agent.fuel_used)} fuel; budget {agent.spec.fuel_per_tick}"
        )
    assert {t for t, *_ in host.sent} == set(range(ticks)), "messages flow in every tick"
    # Host calls stay at a handful per agent and tick (see docs/ABI.md, cost model).
    assert sum(host.host_calls.values()) <= 8 * len(host.agents) * ticks


DOC = REPO / "docs" / "ABI.md"
DOC_EXAMPLES = re.findall(r"<!-- doc-example: (\S+) -->\s*```\w+\n(.*?)```", DOC.read_text(), re.S)


def test_doc_has_examples():
    assert {name for name, _ in DOC_EXAMPLES} == {"relay.c", "relay.wat"}
    assert "ABI v1" in DOC.read_text()


@pytest.mark.parametrize(("name", "code"), DOC_EXAMPLES, ids=[n for n, _ in DOC_EXAMPLES])
def test_doc_examples_build_and_run(name: str, code: str, tmp_path: Path):
    if name.endswith(".c") and not HAVE_ZIG:
        pytest.skip("ziglang is not installed (pip install 'wasm-engine[sdk]' or the test extra)")
    source = tmp_path / name
    source.write_text(code)
    module = build_agent(source, tmp_path / "relay.wasm")
    assert check_module(module, capabilities=["recv", "send", "publish"]) == []
    spec = KindSpec("relay", module, 3, ["recv", "send", "publish"], 10_000, 65536 * 2, 1, b"")
    host = StubHost({"seed": 1}, [spec], {"relay": [0, 1, 2]})
    for _ in range(3):
        host.run_tick()
    # Tick 0 sends 1s; tick 1 each agent relays 1 + 1 = 2; tick 2: 3.
    assert [struct.unpack("<I", p)[0] for (t, _, _, p) in host.sent if t == 2] == [3, 3, 3]


# ---------------------------------------------------------------------------
# check_module on bad modules
# ---------------------------------------------------------------------------

GOOD_WAT = """
(module
  (import "we" "send" (func (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "we_abi_version") (result i32) i32.const 1)
  (func (export "we_init") (param i32 i64 i32) (result i32) i32.const 0)
  (func (export "we_step") (param i64) (result i32) i32.const 0))
"""


def _write_wasm(tmp_path: Path, name: str, wat: str) -> Path:
    path = tmp_path / name
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def test_check_module_accepts_minimal_module(tmp_path: Path):
    path = _write_wasm(tmp_path, "good.wasm", GOOD_WAT)
    assert check_module(path) == []
    assert check_module(path, capabilities=["send"], memory_limit_bytes=65536) == []


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        ("no_step.wasm", '(func (export "we_step") (param i64) (result i32) i32.const 0)', "",
         "missing export we_step"),
        ("no_memory.wasm", '(memory (export "memory") 1)', "(memory 1)", '"memory"'),
        ("bad_version_sig.wasm", '(func (export "we_abi_version") (result i32) i32.const 1)',
         '(func (export "we_abi_version") (result i64) i64.const 1)', "we_abi_version has type () -> i64"),
        ("wrong_version.wasm", '(func (export "we_abi_version") (result i32) i32.const 1)',
         '(func (export "we_abi_version") (result i32) i32.const 2)', "returned 2"),
        ("unknown_import.wasm", '(import "we" "send"', '(import "we" "teleport"', "unknown host function we.teleport"),
        ("wasi_import.wasm", '(import "we" "send" (func (param i32 i32 i32) (result i32)))',
         '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
         "wasi_snapshot_preview1.fd_write"),
        ("bad_import_sig.wasm", '(import "we" "send" (func (param i32 i32 i32) (result i32)))',
         '(import "we" "send" (func (param i32 i32) (result i32)))', "ABI v1 declares (i32, i32, i32) -> i32"),
        ("bad_init_sig.wasm", '(func (export "we_init") (param i32 i64 i32)',
         '(func (export "we_init") (param i32 i32 i32)', "we_init has type"),
    ],
)
def test_check_module_rejects(tmp_path: Path, name, old, new, expected):
    assert old in GOOD_WAT
    path = _write_wasm(tmp_path, name, GOOD_WAT.replace(old, new))
    problems = check_module(path)
    assert problems, f"{name} should be rejected"
    assert all(str(path) in p for p in problems), problems
    assert any(expected in p for p in problems), problems


def test_check_module_capabilities_and_memory_limit(tmp_path: Path):
    path = _write_wasm(tmp_path, "needs_send.wasm", GOOD_WAT.replace("(memory (export \"memory\") 1)",
                                                                      "(memory (export \"memory\") 3)"))
    problems = check_module(path, capabilities=["recv"], memory_limit_bytes=65536)
    assert any('needs capability "send"' in p for p in problems), problems
    assert any("memory_limit_bytes" in p for p in problems), problems
    assert all(str(path) in p for p in problems)


def test_check_module_garbage_and_missing_file(tmp_path: Path):
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"not wasm at all")
    problems = check_module(junk)
    assert len(problems) == 1 and str(junk) in problems[0] and "not a valid WebAssembly module" in problems[0]
    missing = tmp_path / "absent.wasm"
    problems = check_module(missing)
    assert len(problems) == 1 and str(missing) in problems[0]


@needs_zig
def test_header_imports_match_abi(tmp_path: Path):
    """Every import the header declares has the ABI v1 signature; only used imports are linked."""
    source = tmp_path / "all_imports.c"
    source.write_text(
        """#include "we_agent.h"
static uint8_t buf[16];
int32_t we_init(int32_t id, int64_t seed, int32_t n) {
    (void)seed; (void)n;
    return we_config_read(buf, 16) + we_agent_count() + id;
}
int32_t we_step(int64_t t) {
    uint32_t src;
    int64_t acc = we_recv(&src, buf, 16) + we_inbox_count() + we_send(0, buf, 4)
        + we_rand_u64() + we_tick() + we_log(buf, 1) + we_publish(buf, 1) + we_infer(0, buf, 1);
    return (int32_t)(acc + t);
}
"""
    )
    module = build_agent(source, tmp_path / "all_imports.wasm")
    engine = wasmtime.Engine()
    imports = {(i.module, i.name) for i in wasmtime.Module.from_file(engine, str(module)).imports}
    assert imports == {("we", name) for name in _build.ABI_IMPORTS}
    all_capabilities = {cap for _, _, cap in _build.ABI_IMPORTS.values() if cap}
    assert all_capabilities == {"recv", "send", "rand", "tick", "log", "publish", "infer"}
    assert check_module(module, capabilities=all_capabilities) == []
    assert any('needs capability "infer"' in p for p in check_module(module, capabilities=all_capabilities - {"infer"}))

    # An agent that never sends does not import send, so needs no "send".
    minimal = tmp_path / "minimal.c"
    minimal.write_text(
        '#include "we_agent.h"\n'
        "int32_t we_init(int32_t a, int64_t s, int32_t n) { (void)a; (void)s; (void)n; return 0; }\n"
        "int32_t we_step(int64_t t) { return we_publish_u8((uint8_t)t); }\n"
    )
    module = build_agent(minimal, tmp_path / "minimal.wasm")
    imports = {i.name for i in wasmtime.Module.from_file(engine, str(module)).imports}
    assert imports == {"publish"}
    assert check_module(module, capabilities=["publish"]) == []


def test_abi_tables_agree_with_the_worker():
    """The runtime's host (worker/_abi.py) and check_module must describe the same ABI."""
    worker_abi = pytest.importorskip("wasm_engine.worker._abi")
    assert worker_abi.ABI_VERSION == _build.ABI_VERSION
    as_text = {
        name: (tuple(map(str, params)), tuple(map(str, results)), cap)
        for name, (params, results, cap) in worker_abi.IMPORTS.items()
    }
    assert as_text == _build.ABI_IMPORTS
    exports = {name: (tuple(map(str, p)), tuple(map(str, r))) for name, (p, r) in worker_abi.EXPORTS.items()}
    assert exports == _build.ABI_EXPORTS


# ---------------------------------------------------------------------------
# build_agent errors
# ---------------------------------------------------------------------------


@needs_zig
def test_build_error_names_source_and_shows_stderr(tmp_path: Path):
    source = tmp_path / "broken.c"
    source.write_text('#include "we_agent.h"\nint32_t we_step(int64_t t) { return undeclared_thing; }\n')
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "broken.wasm")
    message = str(info.value)
    assert str(source) in message
    assert "undeclared_thing" in message  # the compiler's diagnostic is included
    assert info.value.source == source
    assert not (tmp_path / "broken.wasm").exists()


@needs_zig
def test_build_error_for_module_that_breaks_the_abi(tmp_path: Path):
    # Compiles and links, but has no we_init: caught at build time.
    source = tmp_path / "no_init.c"
    source.write_text('#include "we_agent.h"\nint32_t we_step(int64_t t) { return (int32_t)t; }\n')
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "no_init.wasm")
    assert str(source) in str(info.value) and "we_init" in str(info.value)


@needs_zig
def test_build_error_for_libc_call(tmp_path: Path):
    # Without a libc, calling one is a link error, not a stray "env" import.
    source = tmp_path / "uses_libc.c"
    source.write_text(
        '#include "we_agent.h"\nint puts(const char *);\n'
        "int32_t we_init(int32_t a, int64_t s, int32_t n) { return puts(\"hi\"); }\n"
        "int32_t we_step(int64_t t) { return 0; }\n"
    )
    with pytest.raises(BuildError) as info:
        build_agent(source, tmp_path / "uses_libc.wasm")
    assert str(source) in str(info.value) and "puts" in str(info.value)


def test_build_error_for_bad_wat_and_unknown_suffix(tmp_path: Path):
    wat = tmp_path / "bad.wat"
    wat.write_text("(module (func (export \"we_step\") (param i64) (result i32) i32.const))")
    with pytest.raises(BuildError) as info:
        build_agent(wat, tmp_path / "bad.wasm")
    assert str(wat) in str(info.value)

    other = tmp_path / "agent.rs"
    other.write_text("fn main() {}")
    with pytest.raises(BuildError, match="agent.rs"):
        build_agent(other, tmp_path / "agent.wasm")

    with pytest.raises(BuildError, match="no such source file"):
        build_agent(tmp_path / "nope.c", tmp_path / "nope.wasm")


def test_build_reports_missing_zig(tmp_path: Path, monkeypatch):
    source = tmp_path / "agent.c"
    source.write_text("int x;\n")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        _build.importlib.util, "find_spec", lambda name, *a: None if name == "ziglang" else real_find_spec(name, *a)
    )
    with pytest.raises(BuildError, match=r"pip install 'wasm-engine\[sdk\]'"):
        build_agent(source, tmp_path / "agent.wasm")


def test_wat_build_checks_abi(tmp_path: Path):
    source = tmp_path / "agent.wat"
    source.write_text(GOOD_WAT)
    out = build_agent(source, tmp_path / "agent.wasm")
    assert check_module(out) == []
    source.write_text(GOOD_WAT.replace('(export "we_init")', ""))
    with pytest.raises(BuildError, match="we_init"):
        build_agent(source, tmp_path / "agent2.wasm")
