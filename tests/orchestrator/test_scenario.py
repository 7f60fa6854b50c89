"""Tests for scenario loading and validation (orchestrator/_scenario.py)."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from wasm_engine.orchestrator._errors import ScenarioError, WasmEngineError
from wasm_engine.orchestrator._scenario import (
    AgentKind,
    ModelSpec,
    ModelSpecEntry,
    Scenario,
    load_scenario,
    parse_scenario,
)

FULL = """\
# The example from docs/SCENARIO.md, every key present.
[run]
name = "epidemic"
ticks = 100
seed = 42
groups = 0
assignment = "block"
scheduler = "dag"
log = "runs/epidemic.welog"
max_message_bytes = 256
message_budget_per_tick = 0
inference_budget_per_tick = 0
inference_latency_ticks = 1
fsync_every_ticks = 100

[[agents]]
kind = "person"
module = "epidemic.wasm"
count = 1000
capabilities = ["recv","send","rand","tick","log","publish","infer"]
fuel_per_tick = 200000
memory_limit_bytes = 1048576
max_sends_per_tick = 32
max_infers_per_tick = 1
priority = 1
after = ["market"]
config_i32 = [1, 2, -3]

[[agents]]
kind = "market"
module = "market.wasm"
count = 3
fuel_per_tick = 1_000_000
config_text = "hé"

[[models]]
id = "tiny"
path = "models/tiny.onnx"
kind = "causal_lm"
tokenizer = "models/tokenizer.json"
provider = "auto"

[[models]]
id = "vec"
path = "models/vec.onnx"
kind = "tensor"
"""

RUN = "[run]\nticks = 10\nseed = 1\n"
AGENT_A = '[[agents]]\nkind = "a"\nmodule = "a.wasm"\ncount = 2\nfuel_per_tick = 100\n'
AGENT_B = '[[agents]]\nkind = "b"\nmodule = "a.wasm"\ncount = 3\nfuel_per_tick = 100\n'
MINIMAL = RUN + AGENT_A


@pytest.fixture
def sdir(tmp_path: Path) -> Path:
    """A scenario directory holding every file the scenarios above refer to."""
    for f in ("a.wasm", "epidemic.wasm", "market.wasm", "models/tiny.onnx",
              "models/tokenizer.json", "models/vec.onnx"):
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0asm")
    (tmp_path / "adir.wasm").mkdir()
    return tmp_path


def parse(sdir: Path, text: str, name: str = "scenario.toml", **kw) -> Scenario:
    return parse_scenario(text, sdir / name, **kw)


# ---------------------------------------------------------------------------
# Valid scenarios
# ---------------------------------------------------------------------------


def test_full_example(sdir: Path) -> None:
    s = parse(sdir, FULL)
    assert s.name == "epidemic"
    assert (s.ticks, s.seed, s.groups) == (100, 42, 0)
    assert (s.assignment, s.scheduler) == ("block", "dag")
    assert s.log_path == sdir / "runs/epidemic.welog"
    assert s.max_message_bytes == 256
    assert s.message_budget_per_tick == 0 and s.inference_budget_per_tick == 0
    assert s.inference_latency_ticks == 1 and s.fsync_every_ticks == 100
    assert s.source_text == FULL
    assert s.path == sdir / "scenario.toml"

    person, market = s.kinds
    assert isinstance(person, AgentKind)
    assert person.name == "person"
    assert person.module_path == sdir / "epidemic.wasm"
    assert person.capabilities == frozenset({"recv", "send", "rand", "tick", "log", "publish", "infer"})
    assert (person.count, person.fuel_per_tick, person.memory_limit_bytes) == (1000, 200000, 1048576)
    assert (person.max_sends_per_tick, person.max_infers_per_tick, person.priority) == (32, 1, 1)
    assert person.after == ("market",)
    assert person.config == struct.pack("<3i", 1, 2, -3)
    assert (person.first_agent_id, person.stage) == (0, 1)
    # Defaults.
    assert market.capabilities == frozenset()
    assert market.memory_limit_bytes == 16 * 1024 * 1024
    assert (market.max_sends_per_tick, market.max_infers_per_tick, market.priority) == (64, 1, 1)
    assert market.after == ()
    assert market.config == "hé".encode()
    assert (market.first_agent_id, market.stage) == (1000, 0)
    assert s.total_agents == 1003

    tiny, vec = s.models
    assert ModelSpec is ModelSpecEntry and isinstance(tiny, ModelSpecEntry)
    assert tiny == ModelSpecEntry("tiny", sdir / "models/tiny.onnx", "causal_lm", sdir / "models/tokenizer.json", "auto")
    assert vec == ModelSpecEntry("vec", sdir / "models/vec.onnx", "tensor", None, "auto")


def test_defaults(sdir: Path) -> None:
    s = parse(sdir, MINIMAL, name="my_run.toml")
    assert s.name == "my_run"  # the file stem
    assert s.groups == 0 and s.assignment == "block" and s.scheduler == "round_robin"
    assert s.log_path == sdir / "runs/my_run.welog"
    assert (s.max_message_bytes, s.message_budget_per_tick, s.inference_budget_per_tick) == (256, 0, 0)
    assert (s.inference_latency_ticks, s.fsync_every_ticks) == (1, 100)
    assert s.models == ()
    (a,) = s.kinds
    assert a.config == b"" and a.stage == 0 and a.first_agent_id == 0


def test_load_scenario_matches_parse_and_resolves_relative_to_file(sdir: Path, tmp_path_factory, monkeypatch) -> None:
    f = sdir / "scenario.toml"
    f.write_text(FULL, encoding="utf-8")
    # Relative paths in the file are relative to the file, not to the cwd.
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    s = load_scenario(f)
    assert s == parse_scenario(FULL, f)
    assert s.kinds[0].module_path == sdir / "epidemic.wasm"


def test_ids_are_contiguous_and_kind_of(sdir: Path) -> None:
    text = RUN + "".join(
        f'[[agents]]\nkind = "k{i}"\nmodule = "a.wasm"\ncount = {c}\nfuel_per_tick = 1\n'
        for i, c in enumerate([5, 1, 7, 2])
    )
    s = parse(sdir, text)
    assert [k.first_agent_id for k in s.kinds] == [0, 5, 6, 13]
    assert s.total_agents == 15
    expected = ["k0"] * 5 + ["k1"] + ["k2"] * 7 + ["k3"] * 2
    assert [s.kind_of(i).name for i in range(15)] == expected
    assert list(s.kinds[2].agent_ids) == list(range(6, 13))
    for bad in (-1, 15):
        with pytest.raises(IndexError):
            s.kind_of(bad)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.data())
@settings(max_examples=50, deadline=None)
def test_kind_of_property(counts: list[int], data) -> None:
    # parse_scenario with check_files=False needs no directory (the module
    # files are not looked at), which keeps the property test fast.
    text = RUN + "".join(
        f'[[agents]]\nkind = "k{i}"\nmodule = "m.wasm"\ncount = {c}\nfuel_per_tick = 1\n'
        for i, c in enumerate(counts)
    )
    s = parse_scenario(text, "s.toml", check_files=False)
    assert s.total_agents == sum(counts)
    agent = data.draw(st.integers(0, s.total_agents - 1))
    k = s.kind_of(agent)
    assert k.first_agent_id <= agent < k.first_agent_id + k.count


def test_dag_stages(sdir: Path) -> None:
    # d after b,c; b after a; c after a; e after d; f independent; g after a,e
    def kind(name: str, after: list[str]) -> str:
        return (f'[[agents]]\nkind = "{name}"\nmodule = "a.wasm"\ncount = 1\nfuel_per_tick = 1\n'
                f"after = {after!r}\n".replace("'", '"'))

    text = RUN + 'scheduler = "dag"\n' + "".join([
        kind("g", ["a", "e"]), kind("d", ["b", "c"]), kind("b", ["a"]), kind("c", ["a"]),
        kind("a", []), kind("e", ["d"]), kind("f", []),
    ])
    s = parse(sdir, text)
    stages = {k.name: k.stage for k in s.kinds}
    assert stages == {"a": 0, "f": 0, "b": 1, "c": 1, "d": 2, "e": 3, "g": 4}


def test_long_dag_chain_does_not_recurse(sdir: Path) -> None:
    n = 3000  # deeper than the default recursion limit
    text = RUN + 'scheduler = "dag"\n' + "".join(
        f'[[agents]]\nkind = "k{i}"\nmodule = "a.wasm"\ncount = 1\nfuel_per_tick = 1\n'
        + (f'after = ["k{i + 1}"]\n' if i + 1 < n else "")
        for i in range(n)
    )
    s = parse(sdir, text)
    assert s.kinds[0].stage == n - 1 and s.kinds[-1].stage == 0


def test_non_dag_stages_are_zero_and_empty_after_allowed(sdir: Path) -> None:
    s = parse(sdir, RUN + 'scheduler = "priority"\n' + AGENT_A + "after = []\npriority = 7\n" + AGENT_B)
    assert [k.stage for k in s.kinds] == [0, 0]
    assert s.kinds[0].priority == 7


@pytest.mark.parametrize(
    "line, expected",
    [
        ("config_i32 = [0, -1, 2147483647, -2147483648]", struct.pack("<4i", 0, -1, 2**31 - 1, -(2**31))),
        ("config_f64 = [1.5, -2, 1e300, inf]", struct.pack("<4d", 1.5, -2.0, 1e300, float("inf"))),
        ('config_text = "ünïcode ✓"', "ünïcode ✓".encode()),
        ('config_hex = "00ff 10\\n AB"', bytes([0, 255, 16, 171])),
        ('config_hex = ""', b""),
        ("config_i32 = []", b""),
        (f'config_hex = "{"ab" * 65536}"', b"\xab" * 65536),  # exactly the 64 KiB limit
    ],
)
def test_config_encodings(sdir: Path, line: str, expected: bytes) -> None:
    assert parse(sdir, MINIMAL + line + "\n").kinds[0].config == expected


def test_check_files_false(sdir: Path) -> None:
    text = MINIMAL.replace("a.wasm", "missing.wasm")
    with pytest.raises(ScenarioError):
        parse(sdir, text)
    s = parse(sdir, text, check_files=False)
    assert s.kinds[0].module_path == sdir / "missing.wasm"


# ---------------------------------------------------------------------------
# Invalid scenarios: one line, naming the file and the key
# ---------------------------------------------------------------------------

def _agents_with(extra: str) -> str:
    return RUN + AGENT_A + extra + "\n"


MODEL = '[[models]]\nid = "m"\npath = "models/vec.onnx"\nkind = "tensor"\n'

BAD = [
    # (id, text, key, fragment of the message)
    ("toml-syntax", "[run\nticks = 1\n", None, "line 1, column"),
    ("toml-dup-key", RUN + "ticks = 5\n" + AGENT_A, None, "line 4"),
    ("unknown-top", MINIMAL + "[agent]\nx = 1\n", "agent", "did you mean 'agents'"),
    ("unknown-run", RUN + "tick = 5\n" + AGENT_A, "run.tick", "did you mean 'ticks'"),
    ("unknown-agent", _agents_with("fule_per_tick = 5"), "agents[0].fule_per_tick", "did you mean 'fuel_per_tick'"),
    ("unknown-model", MINIMAL + MODEL + "provder = 'cpu'\n", "models[0].provder", "did you mean 'provider'"),
    ("missing-run", AGENT_A, "run", "missing"),
    ("run-not-table", "run = 5\n" + AGENT_A, "run", "must be a table"),
    ("missing-ticks", "[run]\nseed = 1\n" + AGENT_A, "run.ticks", "missing required key"),
    ("missing-seed", "[run]\nticks = 1\n" + AGENT_A, "run.seed", "missing required key"),
    ("ticks-zero", RUN.replace("ticks = 10", "ticks = 0") + AGENT_A, "run.ticks", "must be a positive integer, got 0"),
    ("ticks-big", RUN.replace("ticks = 10", "ticks = 10_000_001") + AGENT_A, "run.ticks", "at most 10_000_000"),
    ("ticks-string", RUN.replace("ticks = 10", 'ticks = "10"') + AGENT_A, "run.ticks", "must be an integer, got '10' (string)"),
    ("ticks-float", RUN.replace("ticks = 10", "ticks = 10.0") + AGENT_A, "run.ticks", "(float)"),
    ("ticks-bool", RUN.replace("ticks = 10", "ticks = true") + AGENT_A, "run.ticks", "got true (boolean)"),
    ("seed-neg", RUN.replace("seed = 1", "seed = -1") + AGENT_A, "run.seed", "non-negative"),
    ("seed-big", RUN.replace("seed = 1", "seed = 9223372036854775808") + AGENT_A, "run.seed", "at most"),
    ("groups-neg", RUN + "groups = -1\n" + AGENT_A, "run.groups", "non-negative"),
    ("groups-big", RUN + "groups = 4097\n" + AGENT_A, "run.groups", "at most"),
    ("assignment", RUN + 'assignment = "blocks"\n' + AGENT_A, "run.assignment", "did you mean 'block'"),
    ("scheduler", RUN + 'scheduler = "fifo"\n' + AGENT_A, "run.scheduler", '"round_robin", "priority", "dag"'),
    ("scheduler-type", RUN + "scheduler = 1\n" + AGENT_A, "run.scheduler", "must be a string"),
    ("log-empty", RUN + 'log = ""\n' + AGENT_A, "run.log", "non-empty"),
    ("log-type", RUN + "log = 5\n" + AGENT_A, "run.log", "must be a string"),
    ("name-empty", RUN + 'name = ""\n' + AGENT_A, "run.name", "printable"),
    ("name-newline", RUN + 'name = "a\\nb"\n' + AGENT_A, "run.name", "printable"),
    ("name-slash", RUN + 'name = "../x"\n' + AGENT_A, "run.name", "without '/'"),
    ("msg-bytes-0", RUN + "max_message_bytes = 0\n" + AGENT_A, "run.max_message_bytes", "positive"),
    ("msg-bytes-big", RUN + "max_message_bytes = 65537\n" + AGENT_A, "run.max_message_bytes", "at most 65_536, got 65_537"),
    ("msg-budget", RUN + "message_budget_per_tick = -1\n" + AGENT_A, "run.message_budget_per_tick", "non-negative"),
    ("inf-budget", RUN + "inference_budget_per_tick = -1\n" + AGENT_A, "run.inference_budget_per_tick", "non-negative"),
    ("inf-latency", RUN + "inference_latency_ticks = 0\n" + AGENT_A, "run.inference_latency_ticks", "positive"),
    ("fsync", RUN + "fsync_every_ticks = -1\n" + AGENT_A, "run.fsync_every_ticks", "non-negative"),
    ("no-agents", RUN, "agents", "at least one"),
    ("empty-agents", "agents = []\n" + RUN, "agents", "at least one"),
    ("agents-table", RUN + '[agents]\nkind = "a"\n', "agents", "array of tables"),
    ("agents-not-tables", "agents = [1]\n" + RUN, "agents[0]", "must be a table"),
    ("missing-kind", RUN + '[[agents]]\nmodule = "a.wasm"\ncount = 1\nfuel_per_tick = 1\n', "agents[0].kind", "missing"),
    ("missing-module", RUN + '[[agents]]\nkind = "a"\ncount = 1\nfuel_per_tick = 1\n', "agents[0].module", "missing"),
    ("missing-count", RUN + '[[agents]]\nkind = "a"\nmodule = "a.wasm"\nfuel_per_tick = 1\n', "agents[0].count", "missing"),
    ("missing-fuel", RUN + '[[agents]]\nkind = "a"\nmodule = "a.wasm"\ncount = 1\n', "agents[0].fuel_per_tick", "missing"),
    ("kind-upper", MINIMAL.replace('kind = "a"', 'kind = "Person"'), "agents[0].kind", "[a-z][a-z0-9_]*"),
    ("kind-digit", MINIMAL.replace('kind = "a"', 'kind = "1a"'), "agents[0].kind", "[a-z][a-z0-9_]*"),
    ("kind-dup", MINIMAL + AGENT_A, "agents[1].kind", "duplicate kind 'a'"),
    ("module-missing", MINIMAL.replace("a.wasm", "nope.wasm"), "agents[0].module", "file not found"),
    ("module-dir", MINIMAL.replace("a.wasm", "adir.wasm"), "agents[0].module", "is a directory"),
    ("module-empty", MINIMAL.replace("a.wasm", ""), "agents[0].module", "non-empty"),
    ("count-zero", MINIMAL.replace("count = 2", "count = 0"), "agents[0].count", "positive"),
    ("count-big", MINIMAL.replace("count = 2", "count = 1_000_001"), "agents[0].count", "at most 1_000_000"),
    ("caps-type", _agents_with('capabilities = "send"'), "agents[0].capabilities", "array of strings"),
    ("caps-unknown", _agents_with('capabilities = ["sned"]'), "agents[0].capabilities[0]", "did you mean 'send'"),
    ("caps-dup", _agents_with('capabilities = ["send", "recv", "send"]'), "agents[0].capabilities[2]", "duplicate"),
    ("caps-int", _agents_with("capabilities = [1]"), "agents[0].capabilities[0]", "must be a string"),
    ("fuel-neg", MINIMAL.replace("fuel_per_tick = 100", "fuel_per_tick = -5"), "agents[0].fuel_per_tick", "must be a positive integer, got -5"),
    ("fuel-big", MINIMAL.replace("fuel_per_tick = 100", "fuel_per_tick = 1_000_000_000_001"), "agents[0].fuel_per_tick", "at most"),
    ("mem-small", _agents_with("memory_limit_bytes = 1000"), "agents[0].memory_limit_bytes", "at least 65_536"),
    ("mem-big", _agents_with("memory_limit_bytes = 4294967297"), "agents[0].memory_limit_bytes", "at most"),
    ("sends-neg", _agents_with("max_sends_per_tick = -1"), "agents[0].max_sends_per_tick", "non-negative"),
    ("sends-big", _agents_with("max_sends_per_tick = 65537"), "agents[0].max_sends_per_tick", "at most"),
    ("infers-neg", _agents_with("max_infers_per_tick = -1"), "agents[0].max_infers_per_tick", "non-negative"),
    ("priority-0", _agents_with("priority = 0"), "agents[0].priority", "positive"),
    ("priority-big", _agents_with("priority = 1001"), "agents[0].priority", "at most 1000"),
    ("after-non-dag", RUN + AGENT_A + 'after = ["b"]\n' + AGENT_B, "agents[0].after", 'scheduler = "dag"'),
    ("after-unknown", RUN + 'scheduler = "dag"\n' + AGENT_A + 'after = ["bb"]\n' + AGENT_B, "agents[0].after[0]", "unknown kind 'bb' (did you mean 'b'?)"),
    ("after-self", RUN + 'scheduler = "dag"\n' + AGENT_A + 'after = ["a"]\n', "agents[0].after[0]", "dependency cycle: a -> a"),
    ("after-dup", RUN + 'scheduler = "dag"\n' + AGENT_A + 'after = ["b", "b"]\n' + AGENT_B, "agents[0].after[1]", "duplicate"),
    ("after-type", RUN + 'scheduler = "dag"\n' + AGENT_A + 'after = "b"\n' + AGENT_B, "agents[0].after", "array"),
    ("after-int", RUN + 'scheduler = "dag"\n' + AGENT_A + "after = [1]\n" + AGENT_B, "agents[0].after[0]", "must be a string"),
    ("after-cycle", RUN + 'scheduler = "dag"\n' + AGENT_A + 'after = ["c"]\n' + AGENT_B + 'after = ["a"]\n'
     + AGENT_B.replace('"b"', '"c"') + 'after = ["b"]\n', "agents[0].after", "dependency cycle: a -> c -> b -> a"),
    ("config-two", _agents_with('config_i32 = [1]\nconfig_text = "x"'), "agents[0].config_text", "at most one of"),
    ("config-i32-range", _agents_with("config_i32 = [1, 2147483648]"), "agents[0].config_i32[1]", "at most 2_147_483_647"),
    ("config-i32-type", _agents_with('config_i32 = "1"'), "agents[0].config_i32", "array of integers"),
    ("config-i32-elem", _agents_with("config_i32 = [1.0]"), "agents[0].config_i32[0]", "must be an integer"),
    ("config-i32-big", _agents_with("config_i32 = [" + "0," * 16385 + "]"), "agents[0].config_i32", "at most 65_536"),
    ("config-f64-bool", _agents_with("config_f64 = [true]"), "agents[0].config_f64[0]", "must be a number"),
    ("config-f64-bigint", _agents_with("config_f64 = [9007199254740993]"), "agents[0].config_f64[0]", "not exactly representable"),
    ("config-text-type", _agents_with("config_text = 5"), "agents[0].config_text", "must be a string"),
    ("config-text-big", _agents_with(f'config_text = "{"x" * 65537}"'), "agents[0].config_text", "at most 65_536"),
    ("config-hex-odd", _agents_with('config_hex = "abc"'), "agents[0].config_hex", "odd number"),
    ("config-hex-bad", _agents_with('config_hex = "zz"'), "agents[0].config_hex", "not a hex digit"),
    ("models-type", "models = 5\n" + MINIMAL, "models", "array of tables"),
    ("model-missing-id", MINIMAL + MODEL.replace('id = "m"\n', ""), "models[0].id", "missing"),
    ("model-bad-id", MINIMAL + MODEL.replace('id = "m"', 'id = "a b"'), "models[0].id", "must match"),
    ("model-dup-id", MINIMAL + MODEL + MODEL, "models[1].id", "duplicate model id 'm'"),
    ("model-missing-path", MINIMAL + MODEL.replace("vec.onnx", "nope.onnx"), "models[0].path", "file not found"),
    ("model-kind", MINIMAL + MODEL.replace('kind = "tensor"', 'kind = "llm"'), "models[0].kind", '"tensor", "causal_lm"'),
    ("model-missing-kind", MINIMAL + MODEL.replace('kind = "tensor"\n', ""), "models[0].kind", "missing"),
    ("model-lm-no-tok", MINIMAL + MODEL.replace('"tensor"', '"causal_lm"'), "models[0].tokenizer", "required for kind"),
    ("model-lm-tok-missing", MINIMAL + MODEL.replace('"tensor"', '"causal_lm"') + 'tokenizer = "x.json"\n', "models[0].tokenizer", "file not found"),
    ("model-tensor-tok", MINIMAL + MODEL + 'tokenizer = "models/tokenizer.json"\n', "models[0].tokenizer", "only allowed"),
    ("model-provider", MINIMAL + MODEL + 'provider = "gpu"\n', "models[0].provider", '"auto", "cuda", "cpu", "tensorrt"'),
]


@pytest.mark.parametrize("text, key, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_scenarios(sdir: Path, text: str, key: str | None, fragment: str) -> None:
    path = sdir / "scenario.toml"
    with pytest.raises(ScenarioError) as ei:
        parse_scenario(text, path)
    msg = str(ei.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith(f"{path}: ")
    if key is None:
        assert "invalid TOML" in msg
    else:
        assert msg.startswith(f"{path}: {key}: "), msg
        assert ei.value.key == key
    assert ei.value.path == str(path)
    assert fragment in msg, msg
    assert isinstance(ei.value, WasmEngineError)


def test_error_message_exactly_as_documented(sdir: Path) -> None:
    text = MINIMAL + AGENT_B.replace("fuel_per_tick = 100", "fuel_per_tick = -5")
    with pytest.raises(ScenarioError) as ei:
        parse_scenario(text, "scenario.toml", check_files=False)
    assert str(ei.value) == "scenario.toml: agents[1].fuel_per_tick: must be a positive integer, got -5"


def test_unknown_key_reported_before_missing_key(sdir: Path) -> None:
    # A misspelt required key is reported as unknown (with a suggestion), not as missing.
    text = RUN + '[[agents]]\nkind = "a"\nmodule = "a.wasm"\ncount = 1\nfuel_pertick = 1\n'
    with pytest.raises(ScenarioError, match=r"agents\[0\]\.fuel_pertick: unknown key \(did you mean 'fuel_per_tick'\?\)"):
        parse(sdir, text)


def test_load_errors(sdir: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(sdir / "missing.toml")
    bad = sdir / "latin1.toml"
    bad.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ScenarioError, match=r"latin1\.toml: not valid UTF-8"):
        load_scenario(bad)


def test_control_characters_in_values_stay_on_one_line(sdir: Path) -> None:
    text = RUN + 'scheduler = "a\\nb\\rc"\n' + AGENT_A
    with pytest.raises(ScenarioError) as ei:
        parse(sdir, text)
    assert "\n" not in str(ei.value) and "\r" not in str(ei.value)


# ---------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------


def test_overrides(sdir: Path, tmp_path: Path) -> None:
    s = parse(sdir, FULL)
    assert s.with_overrides() is s
    o = s.with_overrides(ticks=5, seed=0, groups=8, log_path="out/x.welog")
    assert (o.ticks, o.seed, o.groups, o.log_path) == (5, 0, 8, Path("out/x.welog"))
    # Everything else unchanged; the original is untouched (frozen).
    assert o.kinds == s.kinds and o.models == s.models and o.source_text == s.source_text
    assert (s.ticks, s.seed, s.groups) == (100, 42, 0)
    assert o.kind_of(1001).name == "market"
    assert s.with_overrides(seed=7).ticks == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ticks = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"ticks": 0}, "--ticks: must be a positive integer, got 0"),
        ({"ticks": 10_000_001}, "--ticks: must be at most 10_000_000, got 10_000_001"),
        ({"ticks": "5"}, "--ticks: must be an integer, got '5' (string)"),
        ({"ticks": True}, "--ticks: must be an integer, got true (boolean)"),
        ({"seed": -1}, "--seed: must be a non-negative integer, got -1"),
        ({"seed": 2**63}, "--seed: must be at most 9_223_372_036_854_775_807, got 9_223_372_036_854_775_808"),
        ({"groups": -2}, "--groups: must be a non-negative integer, got -2"),
        ({"log_path": ""}, "--log: must be a non-empty path, got '' (string)"),
        ({"log_path": 5}, "--log: must be a non-empty path, got 5 (integer)"),
    ],
)
def test_override_errors(sdir: Path, kw: dict, expected: str) -> None:
    s = parse(sdir, MINIMAL)
    with pytest.raises(ScenarioError) as ei:
        s.with_overrides(**kw)
    assert str(ei.value) == expected


# ---------------------------------------------------------------------------
# canonical_bytes
# ---------------------------------------------------------------------------


def test_canonical_bytes_deterministic(sdir: Path) -> None:
    a = parse(sdir, FULL).canonical_bytes()
    assert a == parse(sdir, FULL).canonical_bytes()
    assert isinstance(a, bytes) and a.startswith(b"wasm-engine/scenario-canonical/1\n")
    # Formatting, comments, key order, capability order, `after` order,
    # the file's location: none of them changes the encoding.
    reformatted = (
        FULL.replace("# The example", "# Another comment\n# The example")
        .replace('["recv","send","rand","tick","log","publish","infer"]',
                 '[ "infer", "publish", "log", "tick", "rand", "send", "recv" ]')
        .replace("ticks = 100\nseed = 42", "seed = 42\nticks = 100")
    )
    assert parse(sdir, reformatted).canonical_bytes() == a
    other_dir = sdir / "sub"
    other_dir.mkdir()
    assert parse_scenario(FULL, other_dir / "x.toml", check_files=False).canonical_bytes() == a
    # Settings that do not affect what a run computes are excluded.
    assert parse(sdir, FULL.replace('name = "epidemic"', 'name = "other"')).canonical_bytes() == a
    assert parse(sdir, FULL.replace("fsync_every_ticks = 100", "fsync_every_ticks = 1")).canonical_bytes() == a
    assert parse(sdir, FULL).with_overrides(log_path="/tmp/x").canonical_bytes() == a


def test_canonical_bytes_after_order_irrelevant(sdir: Path) -> None:
    base = RUN + 'scheduler = "dag"\n' + AGENT_A + "after = [{}]\n" + AGENT_B + AGENT_B.replace('"b"', '"c"')
    x = parse(sdir, base.format('"b", "c"')).canonical_bytes()
    y = parse(sdir, base.format('"c", "b"')).canonical_bytes()
    assert x == y


@pytest.mark.parametrize(
    "old, new",
    [
        ("ticks = 100", "ticks = 101"),
        ("seed = 42", "seed = 43"),
        ("max_message_bytes = 256", "max_message_bytes = 255"),
        ("message_budget_per_tick = 0", "message_budget_per_tick = 9"),
        ("inference_budget_per_tick = 0", "inference_budget_per_tick = 9"),
        ("inference_latency_ticks = 1", "inference_latency_ticks = 2"),
        ("count = 1000", "count = 999"),
        ('"publish","infer"]', '"publish"]'),
        ("fuel_per_tick = 200000", "fuel_per_tick = 200001"),
        ("memory_limit_bytes = 1048576", "memory_limit_bytes = 1048577"),
        ("max_sends_per_tick = 32", "max_sends_per_tick = 31"),
        ("max_infers_per_tick = 1", "max_infers_per_tick = 2"),
        ("priority = 1", "priority = 2"),
        ("config_i32 = [1, 2, -3]", "config_i32 = [1, 2, -4]"),
        ("config_i32 = [1, 2, -3]", 'config_hex = "01000000 02000000 fdffffff 00"'),
        ('config_text = "hé"', 'config_text = "he"'),
        ('"market"', '"market2"'),  # renames the kind and the `after` reference
        ('after = ["market"]', "after = []"),
        ('id = "tiny"', 'id = "tiny2"'),
    ],
)
def test_canonical_bytes_sensitive(sdir: Path, old: str, new: str) -> None:
    assert old in FULL
    text = FULL.replace(old, new) if old == '"market"' else FULL.replace(old, new, 1)
    assert parse(sdir, text).canonical_bytes() != parse(sdir, FULL).canonical_bytes()


def test_canonical_bytes_sensitive_to_kind_order_and_overrides(sdir: Path) -> None:
    ab = parse(sdir, RUN + AGENT_A + AGENT_B).canonical_bytes()
    ba = parse(sdir, RUN + AGENT_B + AGENT_A).canonical_bytes()
    assert ab != ba
    s = parse(sdir, FULL)
    c = s.canonical_bytes()
    assert s.with_overrides(ticks=7).canonical_bytes() != c
    assert s.with_overrides(seed=7).canonical_bytes() != c
    # Process count, placement and provider must never change a run's identity.
    assert s.with_overrides(groups=7).canonical_bytes() == c


@pytest.mark.parametrize(
    "old, new",
    [
        ("groups = 0", "groups = 2"),
        ('assignment = "block"', 'assignment = "round_robin"'),
        ('provider = "auto"', 'provider = "cpu"'),
    ],
)
def test_canonical_bytes_blind_to_placement_and_provider(sdir: Path, old: str, new: str) -> None:
    assert parse(sdir, FULL.replace(old, new, 1)).canonical_bytes() == parse(sdir, FULL).canonical_bytes()
