"""The child side of a supervisor channel: a loop that serves control records.

Layer: shm_protocol (record kinds are parameters; nothing here knows what
they mean). Used by the agent-group and inference processes: it ignores
SIGINT (the supervisor stops its children in order), collects data records
until a control record arrives, hands each control record to the caller,
exits when the parent is gone, and reports any crash to the parent as one
error record before exiting with status 1.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback

import numpy as np

from ._records import RecordBatch
from ._ring import Channel, ServeStep

#: How often an idle child checks that its parent is still alive.
PARENT_CHECK_S = 1.0
#: Longest a push to the parent may wait before the child re-checks it.
PUSH_TIMEOUT_S = 1.0
#: Idle polls (of PARENT_CHECK_S) before a child with no parent traffic gives up.
MAX_IDLE_POLLS = 24 * 3600
#: Largest crash report sent to the parent.
MAX_ERROR_BYTES = 60000


class _Reply:
    """Sends records to the parent, giving up (exit 3) if the parent is gone."""

    def __init__(self, ch: Channel, parent_pid: int) -> None:
        self._ch, self._parent_pid = ch, parent_pid
        #: The largest record the parent can be sent.
        self.max_record_bytes = ch.send.max_record_bytes

    def _parent_alive(self) -> None:
        if os.getppid() != self._parent_pid:
            raise SystemExit(3)

    def __call__(self, batch: RecordBatch) -> None:
        self._ch.send.push_all(batch, poll_s=PUSH_TIMEOUT_S, still_there=self._parent_alive)

    def steady_step(self, headers, payload, *, expect_records: int, expect_payload_bytes: int) -> ServeStep:
        """A ServeStep on this channel that replies ``headers``/``payload``
        (pushed as this callable pushes) and waits as the serving loop does."""
        return ServeStep(self._ch, headers, payload, expect_records=expect_records,
                         expect_payload_bytes=expect_payload_bytes, timeout_s=PARENT_CHECK_S,
                         still_there=self._parent_alive)


def serve_channel(channel_name: str, parent_pid: int, *, data_kind: int, error_kind: int, label: str,
                  on_control, views: bool = False, on_batch=None, batch_limit=None) -> None:
    """Serve until ``on_control`` returns False, the parent dies, or it is idle too long.

    ``on_control(batch, i, pending, reply)`` handles control record ``i`` of
    ``batch``; ``pending`` holds the data records (``data_kind``) received
    since the handler last cleared it; ``reply(records)`` sends to the parent.

    views: ``batch`` and the records in ``pending`` may be views of the
    ring's receive buffer, valid only until ``on_control`` returns (the loop
    copies whatever is still pending before it pops again).  For a handler
    that keeps nothing it is given: it saves copying every popped batch.

    on_batch: ``on_batch(batch, reply)`` is offered each popped batch first
    while nothing is pending; True means it served the whole batch (its
    control records included), False that it did nothing and the loop
    proceeds as above, and a RecordBatch that it served the whole batch and
    then popped this one (empty: nothing came in time), which it did not
    serve: the loop proceeds with it as if just popped, without offering it
    to on_batch.  A steady-state shortcut for a caller that can recognise its
    usual batch as a whole (and, through ``reply.steady_step``, serve a run
    of them in native calls).

    batch_limit: ``batch_limit()`` is asked before each pop while nothing is
    pending: the most records to pop (None: all there are).  So that, where
    several of on_batch's usual batches wait in the ring together, the
    first pop takes one of them, not all.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ch = Channel.attach(channel_name)
    reply = _Reply(ch, parent_pid)
    pending: list[RecordBatch] = []
    idle = 0
    left = None  # a batch on_batch popped and left to the loop
    try:
        while True:
            if left is None:
                limit = batch_limit() if batch_limit is not None and not pending else None
                batch = ch.recv.pop_batch(limit, timeout_s=PARENT_CHECK_S, copy=not views)
                offer = on_batch is not None
            else:
                batch, left, offer = (left if views else left.copy()), None, False
            if not len(batch):
                idle += 1
                if os.getppid() != parent_pid or idle > MAX_IDLE_POLLS:
                    return
                continue
            idle = 0
            if offer and not pending:
                served = on_batch(batch, reply)
                if served is True:
                    continue
                if served is not False:
                    left = served
                    continue
            start = 0
            kept = len(pending)  # pending[:kept] are copies from earlier pops
            for c in np.flatnonzero(batch.headers["kind"] != data_kind).tolist():
                if c > start:
                    pending.append(batch.slice(start, c))
                start = c + 1
                if on_control(batch, c, pending, reply) is False:
                    return
                kept = min(kept, len(pending))
            if start < len(batch):
                pending.append(batch.slice(start, len(batch)))
            if views:
                pending[kept:] = [b.copy() for b in pending[kept:]]
    except SystemExit:
        raise
    except BaseException:
        msg = f"internal error in {label}:\n" + traceback.format_exc()
        try:
            reply(RecordBatch.single(error_kind, msg.encode()[-MAX_ERROR_BYTES:]))
        except BaseException:
            print(msg, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        ch.close()
