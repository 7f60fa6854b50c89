"""Links from the supervisor to its agent groups — the one narrow interface
between sequencing and execution.

Layer: orchestrator. A link can: start its group, wait until it is ready,
run one stage of a tick on given deliveries, return that stage's outputs,
return final states, and close. ``ProcessLink`` drives a group process over
a shared-memory channel; ``InlineLink`` runs a GroupHost in this process (for
tests and single-process debugging). A multi-machine backend (Ray actors)
implements the same five methods.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from ..shm_protocol import Channel, RecordBatch
from ..worker import (
    K_DONE, K_ERROR, K_FINAL, K_INIT, K_READY, K_RUN, K_SHUTDOWN, GroupHost, GroupSpec, group_main,
)
from ._errors import GroupFailedError, WorkerCrashedError

#: Ring geometry of a supervisor<->group channel.
CHANNEL_CAPACITY_BYTES = 1 << 23
CHANNEL_MAX_RECORD_BYTES = 1 << 18
#: Agent ids per K_INIT id record.
IDS_PER_RECORD = 16384
#: Poll interval while waiting on a group: how fast a dead group is noticed.
POLL_S = 0.5
#: Longest a group may take to load its agents (compiling modules, we_init).
READY_TIMEOUT_S = 600.0
#: After K_SHUTDOWN: wait this long, then SIGTERM, wait again, then SIGKILL.
GRACEFUL_TIMEOUT_S = 5.0
KILL_TIMEOUT_S = 2.0


class InlineLink:
    """Runs the group in this process. Same outputs, byte for byte."""

    def __init__(self, spec: GroupSpec, module_bytes: dict[str, bytes] | None = None) -> None:
        self.spec = spec
        self._module_bytes = module_bytes
        self.host: GroupHost | None = None
        self._out: RecordBatch | None = None
        self.pid = os.getpid()

    def start(self) -> None:
        self.host = GroupHost(self.spec, self._module_bytes)

    def wait_ready(self) -> None:
        pass

    def run_stage(self, tick: int, stage: int, deliveries: RecordBatch) -> None:
        self._out = self.host.run_stage(tick, stage, deliveries)

    def request_final(self) -> None:
        self._out = self.host.final_state()

    def collect(self) -> RecordBatch:
        out, self._out = self._out, None
        return out

    def close(self) -> None:
        self.host = None


class ProcessLink:
    """A group in its own OS process, reached only through one Channel."""

    def __init__(self, spec: GroupSpec, ctx) -> None:
        self.spec = spec
        self.index = spec.group_index
        self.channel = Channel.create(capacity_bytes=CHANNEL_CAPACITY_BYTES,
                                      max_record_bytes=CHANNEL_MAX_RECORD_BYTES, tag=f"g{self.index}")
        self.proc = ctx.Process(target=group_main, args=(self.channel.name, os.getpid()),
                                name=f"wasm-engine-group-{self.index}", daemon=True)
        self.pid = None

    # -- helpers ---------------------------------------------------------------
    def _check_alive(self) -> None:
        if not self.proc.is_alive():
            code = self.proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            raise WorkerCrashedError(f"agent group {self.index} (pid {self.pid}) {how}", self.index, code)

    def _push(self, batch: RecordBatch) -> None:
        self.channel.send.push_all(batch, poll_s=POLL_S, still_there=self._check_alive)

    @staticmethod
    def _record(kind: int, payload: bytes = b"", tick: int = 0, flags: int = 0) -> RecordBatch:
        return RecordBatch.from_arrays(kind=kind, source=0, destination=0, tick=tick, seq=0,
                                       payload_len=np.array([len(payload)]),
                                       payload=np.frombuffer(payload, np.uint8), flags=flags)

    def _one(self, kind: int, payload: bytes = b"", tick: int = 0, flags: int = 0) -> None:
        self._push(self._record(kind, payload, tick, flags))

    def _collect_until(self, end_kind: int, timeout_s: float | None = None) -> RecordBatch:
        parts = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            b = self.channel.recv.pop_batch(timeout_s=POLL_S)
            if not len(b):
                self._check_alive()
                if deadline is not None and time.monotonic() > deadline:
                    raise GroupFailedError(f"agent group {self.index} did not answer within {timeout_s} s", self.index)
                continue
            kinds = b.headers["kind"]
            err = np.flatnonzero(kinds == K_ERROR)
            if len(err):
                raise GroupFailedError(b.payload_of(int(err[0])).decode("utf-8", "replace"), self.index)
            end = np.flatnonzero(kinds == end_kind)
            if len(end):
                e = int(end[0])
                if e + 1 != len(b):
                    raise GroupFailedError(f"agent group {self.index} sent records after its end marker", self.index)
                parts.append(b.take(np.arange(e)))
                return RecordBatch.concat(parts)
            parts.append(b)

    # -- the link interface ----------------------------------------------------
    def start(self) -> None:
        self.proc.start()
        self.pid = self.proc.pid
        ids = np.asarray(self.spec.agent_ids, np.uint32)
        for s in range(0, len(ids), IDS_PER_RECORD):
            self._one(K_INIT, ids[s:s + IDS_PER_RECORD].tobytes(), flags=1)
        self._one(K_INIT, self.spec.to_json(with_ids=False), flags=2)

    def wait_ready(self) -> None:
        self._collect_until(K_READY, READY_TIMEOUT_S)

    def run_stage(self, tick: int, stage: int, deliveries: RecordBatch) -> None:
        # One push: every push may cost the peer a futex wake-up.
        self._push(RecordBatch.concat([deliveries, self._record(K_RUN, tick=tick, flags=stage)]))

    def request_final(self) -> None:
        self._one(K_FINAL)

    def collect(self) -> RecordBatch:
        return self._collect_until(K_DONE)

    def close(self) -> None:
        """Stop the group: ask, wait, SIGTERM, wait, SIGKILL; then unlink the channel."""
        try:
            if self.proc.pid is not None and self.proc.is_alive():
                try:
                    self._one(K_SHUTDOWN)
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
