"""Exception hierarchy of the orchestrator package.

Every error the orchestrator raises on purpose derives from `WasmEngineError`, so
a CLI can catch that one class, print `str(error)` (always a single line) and
exit non-zero without a traceback, while genuine bugs (anything else) still
show one.

Programming errors by a caller of the Python API (an argument of the wrong
type, ticks appended out of order, use after close) raise the usual built-in
`TypeError` / `ValueError`; they are bugs, not conditions a user can fix.

A replay log cut short by a crash is *not* an error: `LogReader` reads it up
to its last complete tick and reports `truncated = True`.
"""

from __future__ import annotations

import os

__all__ = [
    "WasmEngineError", "ScenarioError", "ReplayLogError", "AgentLoadError", "RunError",
    "WorkerCrashedError", "GroupFailedError", "DivergenceError", "ModelLoadError",
]


class WasmEngineError(Exception):
    """Root of all errors raised on purpose by the orchestrator.

    Raised only through subclasses; the message is one line meant for a user.
    """


class ScenarioError(WasmEngineError):
    """A scenario file (or a command-line override of one of its values) is invalid.

    Raised by `load_scenario`, `parse_scenario` and `Scenario.with_overrides`
    for TOML syntax errors, unknown keys, wrong types, out-of-range values,
    missing required keys, duplicate agent kinds, dependency cycles and files
    (modules, models) that do not exist.  The message is ONE line that names
    the file and the offending key, e.g.::

        scenario.toml: agents[1].fuel_per_tick: must be a positive integer, got -5

    or, for an override, the command-line flag (``--ticks: ...``).
    ``path`` and ``key`` hold the two parts separately (either may be None).
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class ReplayLogError(WasmEngineError):
    """A replay log cannot be read: it is not a log, or it is corrupt.

    Raised by `LogReader` for a bad magic number, an unsupported format
    version, a header or frame whose checksum does not match, an impossible
    length, or ticks out of sequence.  ``path`` and ``offset`` (the byte offset
    of the header or frame that is wrong) are both in the message and kept as
    attributes.  A file that merely *ends* early (a crash while writing) is not
    an error; see `LogReader.truncated`.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, message: str):
        self.path = os.fspath(path)
        self.offset = offset
        self.detail = message
        super().__init__(f"{self.path}: offset {offset}: {message}")


class RunError(WasmEngineError):
    """A run could not go on (a group failed or crashed); the run was stopped cleanly."""


class WorkerCrashedError(RunError):
    """An agent-group process died (killed, crashed). ``group`` and ``exitcode`` say which and how.

    Crash recovery (rebuilding the group from a checkpoint) is not implemented
    yet; until it is, the run stops with this error and the log is valid up to
    the last complete tick.
    """

    def __init__(self, message: str, group: int, exitcode: int | None):
        super().__init__(message)
        self.group = group
        self.exitcode = exitcode


class GroupFailedError(RunError):
    """An agent group reported an error (e.g. a module failed to load in it)."""

    def __init__(self, message: str, group: int):
        super().__init__(message.strip().splitlines()[-1] if message.strip() else message)
        self.full_message = message
        self.group = group


class AgentLoadError(WasmEngineError):
    """An agent module breaks ABI v1 or imports a capability its kind is not granted.

    Raised before any process starts; the message names the module file and the import.
    """


class DivergenceError(WasmEngineError):
    """Re-execution of a log did not reproduce it (``wasm-engine verify``).

    ``tick``, ``agent`` and ``record`` locate the first difference (agent/record may be None).
    """

    def __init__(self, message: str, tick: int, agent: int | None, record: int | None):
        super().__init__(message)
        self.tick = tick
        self.agent = agent
        self.record = record


class ModelLoadError(WasmEngineError):
    """A scenario's model cannot be loaded (missing, corrupt, wrong layout, provider unavailable).

    Raised at start-up, before tick 0; the message names the model id and path.
    """
