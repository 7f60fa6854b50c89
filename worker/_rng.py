"""The agents' deterministic random generator (ABI v1, docs/ABI.md).

Layer: worker. A counter-based SplitMix64 stream keyed by (run seed, agent id,
tick): no state survives a tick, so any process can reproduce any agent's
numbers for any tick, which crash recovery and the future C loop rely on.
Mirrors exactly the algorithm documented in docs/ABI.md.
"""
from __future__ import annotations

_M = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    z = (x + GOLDEN) & _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


def agent_key(run_seed: int, agent_id: int) -> int:
    """The part of an agent's stream key that no tick changes (a host may keep it)."""
    return splitmix64(splitmix64(run_seed & _M) ^ agent_id)


def tick_key(agent: int, tick: int) -> int:
    """An agent's stream key for one tick, from its agent_key()."""
    return splitmix64(agent ^ (tick & _M))


def stream_key(run_seed: int, agent_id: int, tick: int) -> int:
    return tick_key(agent_key(run_seed, agent_id), tick)


def nth(key: int, n: int) -> int:
    """The n-th (0-based) number of the stream with this key."""
    return splitmix64((key + n * GOLDEN) & _M)


def as_i64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u
