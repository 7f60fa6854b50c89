import textwrap
from pathlib import Path

import pytest
import wasmtime

AGENTS = Path(__file__).parent / "agents"


@pytest.fixture(scope="session")
def gossip_wasm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agents") / "gossip.wasm"
    out.write_bytes(wasmtime.wat2wasm((AGENTS / "gossip.wat").read_text()))
    return out


def write_scenario(tmp: Path, module: Path, *, count=20, ticks=5, seed=7, fanout=2, payload_len=16,
                   trap_tick=-1, trap_kind=0, trap_mod=1, fuel=100000, scheduler="round_robin",
                   budget=0, extra_kinds="", caps='["recv", "send", "rand", "publish"]', max_sends=8,
                   memory_limit=1048576, priority=1) -> Path:
    text = textwrap.dedent(f"""
        [run]
        name = "t"
        ticks = {ticks}
        seed = {seed}
        scheduler = "{scheduler}"
        message_budget_per_tick = {budget}
        log = "run.welog"

        [[agents]]
        kind = "a"
        module = "{module}"
        count = {count}
        capabilities = {caps}
        fuel_per_tick = {fuel}
        memory_limit_bytes = {memory_limit}
        max_sends_per_tick = {max_sends}
        priority = {priority}
        config_i32 = [{fanout}, {payload_len}, {trap_tick}, {trap_kind}, {trap_mod}]
    """) + textwrap.dedent(extra_kinds)
    p = tmp / "scenario.toml"
    p.write_text(text)
    return p
