"""The agent-group process: a GroupHost driven over a shared-memory channel.

Layer: worker. Entry point ``group_main`` runs in a child process spawned by
the supervisor. It only ever reacts to the supervisor's records (K_INIT,
K_DELIVER..., K_RUN, K_FINAL, K_SHUTDOWN); it never decides anything about
time or order. SIGINT is ignored: on Ctrl-C the terminal signals the whole
process group, and the supervisor shuts its groups down in order. If the
supervisor dies, the group notices within a second and exits.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback

import numpy as np

from ..shm_protocol import Channel, RecordBatch
from ._abi import AgentLoadError
from ._host import GroupHost, GroupSpec
from ._messages import (
    K_DELIVER, K_DONE, K_ERROR, K_FINAL, K_INIT, K_READY, K_RUN, K_SHUTDOWN,
)

#: How often an idle group checks that its supervisor is still alive.
PARENT_CHECK_S = 1.0
#: Longest a push to the supervisor may wait before the group re-checks it.
PUSH_TIMEOUT_S = 1.0
#: Idle polls (of PARENT_CHECK_S) before a group with no supervisor traffic gives up.
MAX_IDLE_POLLS = 24 * 3600


def _push(ch: Channel, batch: RecordBatch, parent_pid: int) -> None:
    def parent_alive():
        if os.getppid() != parent_pid:
            raise SystemExit(3)

    ch.send.push_all(batch, poll_s=PUSH_TIMEOUT_S, still_there=parent_alive)


def _one(kind: int, payload: bytes = b"", tick: int = 0, flags: int = 0) -> RecordBatch:
    return RecordBatch.single(kind, payload, tick=tick, flags=flags)


def group_main(channel_name: str, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ch = Channel.attach(channel_name)
    host: GroupHost | None = None
    spec_json = None
    ids: list[np.ndarray] = []
    pending: list[RecordBatch] = []
    idle = 0
    try:
        while True:
            batch = ch.recv.pop_batch(timeout_s=PARENT_CHECK_S)
            if not len(batch):
                idle += 1
                if os.getppid() != parent_pid or idle > MAX_IDLE_POLLS:
                    return
                continue
            idle = 0
            kinds = batch.headers["kind"]
            ctrl = np.flatnonzero(kinds != K_DELIVER)
            start = 0
            for c in ctrl.tolist():
                if c > start:
                    pending.append(batch.slice(start, c))
                start = c + 1
                h = batch.headers[c]
                kind, tick, flags = int(h["kind"]), int(h["tick"]), int(h["flags"])
                if kind == K_INIT:
                    if flags == 1:
                        ids.append(np.frombuffer(batch.payload_of(c), "<u4").astype(np.int64))
                        continue
                    spec_json = batch.payload_of(c)
                    if flags == 2:  # last init record: build the group
                        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
                        try:
                            host = GroupHost(GroupSpec.from_json(spec_json, all_ids.tolist()))
                        except AgentLoadError as e:
                            _push(ch, _one(K_ERROR, str(e).encode()), parent_pid)
                            return
                        _push(ch, _one(K_READY, str(len(host.agents)).encode()), parent_pid)
                elif kind == K_RUN:
                    deliveries = RecordBatch.concat(pending)
                    pending.clear()
                    out = host.run_stage(tick, flags, deliveries)
                    # One push: every push may cost the supervisor a futex wake-up.
                    _push(ch, RecordBatch.concat([out, _one(K_DONE, tick=tick, flags=flags)]), parent_pid)
                elif kind == K_FINAL:
                    _push(ch, RecordBatch.concat([host.final_state(), _one(K_DONE)]), parent_pid)
                elif kind == K_SHUTDOWN:
                    return
                else:
                    raise RuntimeError(f"group received unexpected record kind {kind}")
            if start < len(batch):
                pending.append(batch.slice(start, len(batch)))
    except SystemExit:
        raise
    except BaseException:
        msg = "internal error in agent group:\n" + traceback.format_exc()
        try:
            _push(ch, _one(K_ERROR, msg.encode()[-60000:]), parent_pid)
        except BaseException:
            print(msg, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        ch.close()
