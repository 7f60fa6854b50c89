"""Layer: orchestrator — supervisor, scheduler, replay log and the CLI.

The top layer: may import worker, inference and shm_protocol.
"""


def main(argv=None) -> int:
    from ._cli import main as _main

    return _main(argv)


from ._errors import (  # noqa: E402
    AgentLoadError as AgentLoadError,
    DivergenceError as DivergenceError,
    GroupFailedError as GroupFailedError,
    ModelLoadError as ModelLoadError,
    ReplayLogError as ReplayLogError,
    RunError as RunError,
    ScenarioError as ScenarioError,
    WasmEngineError as WasmEngineError,
    WorkerCrashedError as WorkerCrashedError,
)
from ._replaylog import LogReader as LogReader, LogWriter as LogWriter  # noqa: E402
from ._scenario import Scenario as Scenario, load_scenario as load_scenario, parse_scenario as parse_scenario  # noqa: E402
from ._supervisor import RunSummary as RunSummary, Supervisor as Supervisor  # noqa: E402
from ._verify import VerifyResult as VerifyResult, replay as replay, verify as verify  # noqa: E402

__all__ = [
    "AgentLoadError", "DivergenceError", "GroupFailedError", "LogReader", "LogWriter", "ModelLoadError", "ReplayLogError",
    "RunError", "RunSummary", "Scenario", "ScenarioError", "Supervisor", "VerifyResult", "WasmEngineError",
    "WorkerCrashedError", "load_scenario", "main", "parse_scenario", "replay", "verify",
]
