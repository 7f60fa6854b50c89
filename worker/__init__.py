"""Layer: worker — the agent-group process: hosts many WebAssembly agents.

May import shm_protocol (and, through it, native); never orchestrator.
"""
from ._abi import (
    ABI_VERSION as ABI_VERSION,
    CAPABILITIES as CAPABILITIES,
    EXPORTS as ABI_EXPORTS,
    IMPORTS as IMPORTS,
    AgentLoadError as AgentLoadError,
    WorkerError as WorkerError,
    check_module as check_module,
)
from ._host import (
    DIGEST_CONTEXT_PREFIX as DIGEST_CONTEXT_PREFIX,
    FUEL_DTYPE as FUEL_DTYPE,
    HOST_PATHS as HOST_PATHS,
    STATE_DTYPE as STATE_DTYPE,
    GroupHost as GroupHost,
    GroupSpec as GroupSpec,
    KindSpec as KindSpec,
    unchunk as unchunk,
)
from ._messages import (
    AGENT_OUTPUT_KINDS as AGENT_OUTPUT_KINDS,
    FLAG_COMMITTED as FLAG_COMMITTED,
    FLAG_DEFERRED as FLAG_DEFERRED,
    FLAG_DROPPED as FLAG_DROPPED,
    INFERENCE_SENDER as INFERENCE_SENDER,
    INIT_TICK as INIT_TICK,
    K_DELIVER as K_DELIVER,
    K_DONE as K_DONE,
    K_ERROR as K_ERROR,
    K_FINAL as K_FINAL,
    K_FUEL as K_FUEL,
    K_HALT as K_HALT,
    K_INFER as K_INFER,
    K_INIT as K_INIT,
    K_LOG as K_LOG,
    K_MSG as K_MSG,
    K_PUBLISH as K_PUBLISH,
    K_READY as K_READY,
    K_RUN as K_RUN,
    K_SHUTDOWN as K_SHUTDOWN,
    K_STATE as K_STATE,
    K_TRAP as K_TRAP,
    AgentStatus as AgentStatus,
    TrapCode as TrapCode,
)
from ._process import group_main as group_main
from ._rng import nth as rng_nth, stream_key as rng_stream_key
