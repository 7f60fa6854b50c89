"""The agent-group process: a GroupHost driven over a shared-memory channel.

Layer: worker. Entry point ``group_main`` runs in a child process spawned by
the supervisor. It only ever reacts to the supervisor's records (K_INIT,
K_DELIVER..., K_RUN, K_FINAL, K_SHUTDOWN); it never decides anything about
time or order. SIGINT is ignored: on Ctrl-C the terminal signals the whole
process group, and the supervisor shuts its groups down in order. If the
supervisor dies, the group notices within a second and exits.
"""
from __future__ import annotations

import gc

import numpy as np

from ..shm_protocol import RecordBatch, serve_channel
from ._abi import AgentLoadError
from ._host import GroupHost, GroupSpec
from ._messages import (
    K_DELIVER, K_DONE, K_ERROR, K_FINAL, K_INIT, K_READY, K_RUN, K_SHUTDOWN,
)


class _Group:
    """Control-record handler of one group process (see serve_channel)."""

    def __init__(self) -> None:
        self.host: GroupHost | None = None
        self.ids: list[np.ndarray] = []

    def __call__(self, batch: RecordBatch, c: int, pending: list[RecordBatch], reply) -> bool:
        h = batch.headers
        kind, tick, flags = int(h["kind"][c]), int(h["tick"][c]), int(h["flags"][c])
        if kind == K_INIT:
            if flags == 1:
                self.ids.append(np.frombuffer(batch.payload_of(c), "<u4").astype(np.int64))
            elif flags == 2:  # last init record: build the group
                all_ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
                try:
                    self.host = GroupHost(GroupSpec.from_json(batch.payload_of(c), all_ids.tolist()))
                except AgentLoadError as e:
                    reply(RecordBatch.single(K_ERROR, str(e).encode()))
                    return False
                # Everything allocated so far (modules, instances, agents) lives
                # as long as the group: out of the cyclic collector's sight, its
                # collections stop re-scanning it every few ticks (they took
                # ~9% of a group's CPU).
                gc.collect()
                gc.freeze()
                reply(RecordBatch.single(K_READY, str(len(self.host.agents)).encode()))
        elif kind == K_RUN:
            # serve_channel pops copies (views=False): the deliveries need none of their own.
            deliveries = RecordBatch.concat(pending, copy=False)
            pending.clear()
            # One push: every push may cost the supervisor a futex wake-up.
            reply(self.host.run_stage(tick, flags, deliveries, done=True))
        elif kind == K_FINAL:
            reply(RecordBatch.concat([self.host.final_state(), RecordBatch.single(K_DONE)]))
        elif kind == K_SHUTDOWN:
            return False
        else:
            raise RuntimeError(f"group received unexpected record kind {kind}")
        return True

    def on_batch(self, batch: RecordBatch, reply) -> bool:
        """serve_channel's shortcut for the usual popped batch: a stage's
        deliveries and its K_RUN, all of it (what the supervisor pushes in
        one piece), served as ``__call__`` would serve it."""
        h = batch.headers
        n = len(h) - 1
        if self.host is None or n < 0 or h["kind"].tobytes() != _DELIVER_KIND * n + _RUN_KIND:
            return False
        reply(self.host.run_stage(int(h["tick"][n]), int(h["flags"][n]), batch.split_last()[0], done=True))
        return True


_DELIVER_KIND, _RUN_KIND = K_DELIVER.to_bytes(2, "little"), K_RUN.to_bytes(2, "little")


def group_main(channel_name: str, parent_pid: int) -> None:
    group = _Group()
    serve_channel(channel_name, parent_pid, data_kind=K_DELIVER, error_kind=K_ERROR, label="agent group",
                  on_control=group, on_batch=group.on_batch)
