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

import numpy as np

from ..shm_protocol import RecordBatch
from ..worker import (
    K_DONE, K_ERROR, K_FINAL, K_INIT, K_READY, K_RUN, K_SHUTDOWN, GroupHost, GroupSpec, group_main,
)
from ._child import _ChildProcess

#: Ring geometry of a supervisor<->group channel.
CHANNEL_CAPACITY_BYTES = 1 << 23
CHANNEL_MAX_RECORD_BYTES = 1 << 18
#: Agent ids per K_INIT id record.
IDS_PER_RECORD = 16384
#: Longest a group may take to load its agents (compiling modules, we_init).
READY_TIMEOUT_S = 600.0


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


class ProcessLink(_ChildProcess):
    """A group in its own OS process, reached only through one Channel."""

    def __init__(self, spec: GroupSpec, ctx) -> None:
        self.spec = spec
        super().__init__(ctx, group_main, name=f"wasm-engine-group-{spec.group_index}", tag=f"g{spec.group_index}",
                         capacity_bytes=CHANNEL_CAPACITY_BYTES, max_record_bytes=CHANNEL_MAX_RECORD_BYTES,
                         label=f"agent group {spec.group_index}", index=spec.group_index, error_kind=K_ERROR,
                         shutdown_kind=K_SHUTDOWN)
        self.pid = None

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
        self._push(deliveries.then(K_RUN, tick=tick, flags=stage))

    def request_final(self) -> None:
        self._one(K_FINAL)

    def collect(self) -> RecordBatch:
        return self._collect_until(K_DONE)[0]
