"""Record kinds, flags and codes exchanged between the supervisor and groups.

Layer: worker (the orchestrator imports these; shm_protocol knows nothing of
them — to it a kind is just a number). Documented in docs/RUNTIME.md.
"""
from __future__ import annotations

import enum

# supervisor -> group
K_INIT = 1        # payload: JSON group configuration
K_DELIVER = 2     # one inbox message: source=sender, destination=recipient, seq=sender's seq
K_RUN = 3         # run stage `flags` of tick `tick` now (after the K_DELIVER records)
K_FINAL = 4       # report final agent states
K_SHUTDOWN = 5    # exit now

# group -> supervisor
K_READY = 16      # payload: JSON {"agents": n}
K_MSG = 17        # agent message: source, destination, seq
K_LOG = 18        # log line: source, seq
K_PUBLISH = 19    # published observable state: source, seq
K_INFER = 20      # inference request: source, destination=model index, seq
K_TRAP = 21       # agent quarantined: payload u32 TrapCode + UTF-8 detail
K_HALT = 22       # agent halted voluntarily: payload i32 return value of we_step
K_FUEL = 23       # payload: u32 pairs (agent id, fuel used) for the stage
K_DONE = 24       # stage finished
K_STATE = 25      # final states: payload = STATE_DTYPE records
K_ERROR = 26      # group-level failure: payload UTF-8 message

#: Kinds an agent's actions produce; they are ordered canonically by (source, seq).
AGENT_OUTPUT_KINDS = (K_MSG, K_LOG, K_PUBLISH, K_INFER, K_TRAP, K_HALT)

#: flags on committed records in the replay log
FLAG_COMMITTED = 0
FLAG_DEFERRED = 1   # over the tick's budget: carried to a later tick
FLAG_DROPPED = 2    # over budget and the agent's backlog is full


class TrapCode(enum.IntEnum):
    """Why an agent was quarantined (payload of K_TRAP)."""

    OUT_OF_FUEL = 1
    UNREACHABLE = 2
    MEMORY_OUT_OF_BOUNDS = 3
    DIVISION_BY_ZERO = 4
    STACK_OVERFLOW = 5
    HOST_OUT_OF_BOUNDS = 6
    INTEGER_OVERFLOW = 7
    BAD_INDIRECT_CALL = 8
    OTHER_TRAP = 9
    INIT_FAILED = 10
    ABI_VIOLATION = 11


class AgentStatus(enum.IntEnum):
    RUNNING = 0
    HALTED = 1
    QUARANTINED = 2


#: Sender id of inference results in an agent's inbox.
INFERENCE_SENDER = 0xFFFFFFFF
#: Largest number of agents in one run (ids above are reserved for system senders).
MAX_AGENTS = 0xFFFF0000
#: The tick value seeding an agent's generator during we_init.
INIT_TICK = 0xFFFFFFFFFFFFFFFF
#: Records per K_FUEL / K_STATE chunk, so one record stays under the ring's max size.
CHUNK_AGENTS = 2048
