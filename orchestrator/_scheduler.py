"""Deterministic admission of contended per-tick resources.

Layer: orchestrator. Given one tick's candidate records (messages, or
inference requests) in canonical order — sorted by (source, seq) — and a
budget, decide which are committed now. All policies are pure functions of
the candidates, the tick and the scenario: process count and arrival order
cannot change the outcome. Vectorised with numpy: no per-record Python.

Policies (docs/RUNTIME.md):
- round_robin: rounds; in round k each agent may commit its k-th candidate;
  within a round, agents are taken from a start that rotates with the tick.
- priority: weighted rounds: an agent of priority p commits up to p
  candidates per round, higher priorities first within a round; every agent
  gets at least one per round, so none starves.
- dag: admission as round_robin (the DAG orders stages, see the supervisor).
"""
from __future__ import annotations

import numpy as np

POLICIES = ("round_robin", "priority", "dag")


def rank_within_source(sources: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal (sorted) sources."""
    n = len(sources)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def admit(policy: str, sources: np.ndarray, budget: int, tick: int, n_agents: int,
          priority_of: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the candidates committed this tick (budget 0 = unlimited)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduler policy {policy!r}")
    n = len(sources)
    if budget <= 0 or n <= budget:
        return np.ones(n, bool)
    src = sources.astype(np.int64)
    k = rank_within_source(src)
    rotated = (src - tick) % max(n_agents, 1)
    if policy == "priority":
        p = priority_of[src].astype(np.int64) if priority_of is not None else np.ones(n, np.int64)
        order = np.lexsort((rotated, -p, k // p))
    else:
        order = np.lexsort((rotated, k))
    mask = np.zeros(n, bool)
    mask[order[:budget]] = True
    return mask


def backlog_keep(sources: np.ndarray, limit_of: np.ndarray) -> np.ndarray:
    """Of candidates not admitted (canonical order), which fit their agent's backlog."""
    k = rank_within_source(sources.astype(np.int64))
    return k < limit_of[sources.astype(np.int64)]
