"""Supervising one child process reached through one Channel.

Layer: orchestrator. What an agent group and the inference process have in
common, seen from the supervisor: start it, push records while checking it
is alive, collect records up to an end marker (raising on its error record,
a deadline or its death), and stop it — ask, wait, SIGTERM, wait, SIGKILL —
then unlink the channel.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from ..shm_protocol import Channel, RecordBatch
from ._errors import GroupFailedError, WorkerCrashedError

#: Poll interval while waiting on a child: how fast a dead child is noticed.
POLL_S = 0.5
#: After the shutdown record: wait this long, then SIGTERM, wait again, then SIGKILL.
GRACEFUL_TIMEOUT_S = 5.0
KILL_TIMEOUT_S = 2.0


class _ChildProcess:
    """``label`` names the child in errors ("agent group 3"); ``index`` goes into them
    (-1 for the inference process); ``error_prefix`` precedes the child's own error text."""

    def __init__(self, ctx, target, *, name: str, tag: str, capacity_bytes: int, max_record_bytes: int,
                 label: str, index: int, error_kind: int, shutdown_kind: int, error_prefix: str = "") -> None:
        self.label = label
        self.index = index
        self._error_kind = error_kind
        self._shutdown_kind = shutdown_kind
        self._error_prefix = error_prefix
        self.channel = Channel.create(capacity_bytes=capacity_bytes, max_record_bytes=max_record_bytes, tag=tag)
        self.proc = ctx.Process(target=target, args=(self.channel.name, os.getpid()), name=name, daemon=True)

    def _check_alive(self) -> None:
        if not self.proc.is_alive():
            code = self.proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            raise WorkerCrashedError(f"{self.label} (pid {self.proc.pid}) {how}", self.index, code)

    def _push(self, batch: RecordBatch) -> None:
        self.channel.send.push_all(batch, poll_s=POLL_S, still_there=self._check_alive)

    def _one(self, kind: int, payload: bytes = b"", tick: int = 0, flags: int = 0) -> None:
        self._push(RecordBatch.single(kind, payload, tick=tick, flags=flags))

    def _pop(self) -> RecordBatch:
        """The next batch (empty after a poll interval with nothing, the child alive);
        raises if the child reported an error."""
        b = self.channel.recv.pop_batch(timeout_s=POLL_S)
        if not len(b):
            self._check_alive()
            return b
        # .nonzero() rather than np.flatnonzero: a fraction of its call overhead, every tick.
        err = (b.headers["kind"] == self._error_kind).nonzero()[0]
        if len(err):
            raise GroupFailedError(self._error_prefix + b.payload_of(int(err[0])).decode("utf-8", "replace"),
                                   self.index)
        return b

    def _collect_until(self, end_kind: int, timeout_s: float | None = None) -> tuple[RecordBatch, RecordBatch]:
        """Records before the next ``end_kind`` marker, and the marker itself."""
        parts = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            b = self._pop()
            if not len(b):
                if deadline is not None and time.monotonic() > deadline:
                    raise GroupFailedError(f"{self.label} did not answer within {timeout_s} s", self.index)
                continue
            end = (b.headers["kind"] == end_kind).nonzero()[0]
            if len(end):
                e = int(end[0])
                if e + 1 != len(b):
                    raise GroupFailedError(f"{self.label} sent records after its end marker", self.index)
                body, marker = b.split_last()
                parts.append(body)
                # Popped batches are this process's own copies: no need for another.
                return RecordBatch.concat(parts, copy=False), marker
            parts.append(b)

    def close(self) -> None:
        """Stop the child: ask, wait, SIGTERM, wait, SIGKILL; then unlink the channel."""
        try:
            if self.proc.pid is not None and self.proc.is_alive():
                try:
                    self._one(self._shutdown_kind)
                except Exception:  # noqa: BLE001 - a broken ring must not block shutdown
                    pass
                self.proc.join(GRACEFUL_TIMEOUT_S)
                if self.proc.is_alive():
                    self.proc.terminate()
                    self.proc.join(KILL_TIMEOUT_S)
                if self.proc.is_alive():
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.join(KILL_TIMEOUT_S)
            elif self.proc.pid is not None:
                self.proc.join(KILL_TIMEOUT_S)
        finally:
            self.channel.close()
