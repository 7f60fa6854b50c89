"""Loading and validation of scenario files (TOML).

A scenario describes one simulation run: how many ticks, the seed, how the
agents are scheduled, and one ``[[agents]]`` table per agent *kind* (which wasm
module, how many instances, which host capabilities, resource limits).  The
format is documented key by key in docs/SCENARIO.md.

Design notes:

* Validation is strict and happens here, once, so that the rest of the
  orchestrator can trust a `Scenario`: every value has the right type and
  range, unknown keys are rejected (a typo must not silently fall back to a
  default), files exist.
* Every problem raises `ScenarioError` with a single-line message
  ``<file>: <key>: <what is wrong>, got <value>``; a user fixes one error at a
  time, so we stop at the first one.
* The result is a tree of frozen dataclasses: a scenario is shared by the
  supervisor, the workers and the replay log writer and must not change under
  them.  Command-line overrides build a new object (`Scenario.with_overrides`).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import difflib
import json
import os
import re
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn

from ._errors import ScenarioError

__all__ = [
    "AgentKind",
    "ModelSpec",
    "ModelSpecEntry",
    "Scenario",
    "load_scenario",
    "parse_scenario",
    "CAPABILITIES",
    "SCHEDULERS",
    "ASSIGNMENTS",
    "MODEL_KINDS",
    "PROVIDERS",
]

# --------------------------------------------------------------------------
# Vocabulary and limits.  These are part of the documented format
# (docs/SCENARIO.md); change both together.
# --------------------------------------------------------------------------

CAPABILITIES = frozenset({"recv", "send", "rand", "tick", "log", "publish", "infer"})
SCHEDULERS = ("round_robin", "priority", "dag")
ASSIGNMENTS = ("block", "round_robin")
MODEL_KINDS = ("tensor", "causal_lm")
PROVIDERS = ("auto", "cuda", "cpu", "tensorrt")

MAX_TICKS = 10_000_000
MAX_SEED = 2**63 - 1
MAX_GROUPS = 4096
MAX_AGENTS_PER_KIND = 1_000_000
# Agent ids travel as u32 in the wire formats; keep the total representable.
MAX_TOTAL_AGENTS = 2**32 - 1
MAX_FUEL_PER_TICK = 10**12
MIN_MEMORY_LIMIT = 65536  # one wasm page
MAX_MEMORY_LIMIT = 4 * 1024**3  # the whole wasm32 address space
MAX_CONFIG_BYTES = 64 * 1024
MAX_NAME_CHARS = 128
# Budgets are counters kept in u32 fields by the runtime.
MAX_BUDGET = 2**32 - 1

_DEFAULT_MEMORY_LIMIT = 16 * 1024 * 1024

_KIND_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_KIND_MAX_CHARS = 64

_RUN_KEYS = (
    "name", "ticks", "seed", "groups", "assignment", "scheduler", "log",
    "max_message_bytes", "message_budget_per_tick", "inference_budget_per_tick",
    "inference_latency_ticks", "fsync_every_ticks",
)
_CONFIG_KEYS = ("config_i32", "config_f64", "config_text", "config_hex")
_AGENT_KEYS = (
    "kind", "module", "count", "capabilities", "fuel_per_tick", "memory_limit_bytes",
    "max_sends_per_tick", "max_infers_per_tick", "priority", "after",
) + _CONFIG_KEYS
_MODEL_KEYS = ("id", "path", "kind", "tokenizer", "provider", "max_context", "batch")
_TOP_KEYS = ("run", "agents", "models")

# Version tag at the start of `Scenario.canonical_bytes()`; bump it whenever the
# encoding changes so that old and new hashes can never be confused.
_CANONICAL_TAG = "wasm-engine/scenario-canonical/1"


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentKind:
    """One ``[[agents]]`` table: `count` agents running the same module.

    Agents of this kind have the ids ``first_agent_id .. first_agent_id+count-1``
    (kinds get contiguous id ranges in the order they are listed).  `stage` is
    the kind's depth in the ``after`` graph for the "dag" scheduler (0 = no
    predecessors; otherwise 1 + the largest stage among `after`), and 0 for the
    other schedulers.
    """

    name: str
    module_path: Path
    count: int
    capabilities: frozenset[str]
    fuel_per_tick: int
    memory_limit_bytes: int
    max_sends_per_tick: int
    max_infers_per_tick: int
    priority: int
    after: tuple[str, ...]
    config: bytes
    first_agent_id: int
    stage: int

    @property
    def agent_ids(self) -> range:
        """The ids of this kind's agents."""
        return range(self.first_agent_id, self.first_agent_id + self.count)


@dataclass(frozen=True)
class ModelSpecEntry:
    """One ``[[models]]`` table: a model agents may run inference on.

    `tokenizer` is set exactly when `kind` is "causal_lm".
    """

    id: str
    path: Path
    kind: str
    tokenizer: Path | None
    provider: str
    #: causal_lm only: tokens the model can attend to; 0 = read it from the model's metadata.
    max_context: int = 0
    #: allow batching this model's requests (the engine still checks batched == unbatched).
    batch: bool = True


# Both names are public: `Scenario.models` holds ModelSpec(Entry) objects.
ModelSpec = ModelSpecEntry


@dataclass(frozen=True)
class Scenario:
    """A validated scenario.  Build it with `load_scenario` / `parse_scenario`.

    Paths (`log_path`, module and model paths) are already resolved against
    the directory of the scenario file.  `source_text` is the file exactly as
    read, so a replay log can store it.
    """

    path: Path
    name: str
    ticks: int
    seed: int
    groups: int
    assignment: str
    scheduler: str
    log_path: Path
    max_message_bytes: int
    message_budget_per_tick: int
    inference_budget_per_tick: int
    inference_latency_ticks: int
    fsync_every_ticks: int
    kinds: tuple[AgentKind, ...]
    models: tuple[ModelSpecEntry, ...]
    source_text: str
    # First agent id of every kind, for the binary search in `kind_of`.
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(k.first_agent_id for k in self.kinds))

    @property
    def total_agents(self) -> int:
        """Number of agents of all kinds together (= one past the largest id)."""
        if not self.kinds:
            return 0
        last = self.kinds[-1]
        return last.first_agent_id + last.count

    def kind_of(self, agent_id: int) -> AgentKind:
        """The kind of agent `agent_id`; IndexError if no agent has that id."""
        if not 0 <= agent_id < self.total_agents:
            raise IndexError(f"agent id {agent_id} out of range 0..{self.total_agents - 1}")
        return self.kinds[bisect.bisect_right(self._starts, agent_id) - 1]

    def with_overrides(
        self,
        ticks: int | None = None,
        seed: int | None = None,
        groups: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> "Scenario":
        """A copy with command-line overrides applied (None = keep the value).

        The values are validated like the scenario keys, but errors name the
        command-line flag (``--ticks``, ``--seed``, ``--groups``, ``--log``).
        A relative `log_path` is kept as given, i.e. relative to the current
        directory, as usual for a command-line argument.
        """
        changes: dict[str, Any] = {}
        if ticks is not None:
            changes["ticks"] = _check_int(ticks, 1, MAX_TICKS, None, "--ticks")
        if seed is not None:
            changes["seed"] = _check_int(seed, 0, MAX_SEED, None, "--seed")
        if groups is not None:
            changes["groups"] = _check_int(groups, 0, MAX_GROUPS, None, "--groups")
        if log_path is not None:
            if not isinstance(log_path, (str, os.PathLike)) or os.fspath(log_path) == "":
                _fail(None, "--log", f"must be a non-empty path, {_got(log_path)}")
            changes["log_path"] = Path(log_path)
        return dataclasses.replace(self, **changes) if changes else self

    def canonical_bytes(self) -> bytes:
        """A deterministic encoding of every setting that can affect a run.

        Meant for hashing (e.g. into the replay log header, to check that a
        replay uses the same settings).  Included: ticks, seed, scheduler,
        the message and inference limits, and per kind and model every field
        except file paths.  Excluded, because they do not change what the
        simulation computes: `groups` and `assignment` (the run's result must
        not depend on process count or placement — the project's core
        invariant), the model provider (a GPU run replays on a CPU), the
        scenario's own path and name, `log_path`, `fsync_every_ticks`,
        `source_text` (formatting and comments), and all file paths.  The *contents* of modules and models
        are not read here; hash those separately (the log header records
        module hashes).

        Encoding: a version tag line, then compact JSON with sorted keys and
        ASCII-only output, so the bytes are identical across platforms and
        Python versions.
        """
        doc = {
            "ticks": self.ticks,
            "seed": self.seed,
            "scheduler": self.scheduler,
            "max_message_bytes": self.max_message_bytes,
            "message_budget_per_tick": self.message_budget_per_tick,
            "inference_budget_per_tick": self.inference_budget_per_tick,
            "inference_latency_ticks": self.inference_latency_ticks,
            # Kind order matters (it fixes the agent ids), so it stays a list.
            "kinds": [
                {
                    "name": k.name,
                    "count": k.count,
                    "first_agent_id": k.first_agent_id,
                    "capabilities": sorted(k.capabilities),
                    "fuel_per_tick": k.fuel_per_tick,
                    "memory_limit_bytes": k.memory_limit_bytes,
                    "max_sends_per_tick": k.max_sends_per_tick,
                    "max_infers_per_tick": k.max_infers_per_tick,
                    "priority": k.priority,
                    # The order inside `after` has no meaning; sort it so
                    # that reordering the list does not change the hash.
                    "after": sorted(k.after),
                    "stage": k.stage,
                    "config": k.config.hex(),
                }
                for k in self.kinds
            ],
            # Model order is kept: agents may refer to models by index.
            "models": [{"id": m.id, "kind": m.kind, "max_context": m.max_context} for m in self.models],
        }
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return (_CANONICAL_TAG + "\n" + body).encode("ascii")


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def load_scenario(path: str | os.PathLike[str], *, check_files: bool = True) -> Scenario:
    """Read and validate the scenario file at `path`.

    With ``check_files=False`` the module/model/tokenizer files are not
    required to exist (useful when a replay supplies the modules itself).
    """
    label = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        _fail(label, None, f"cannot read scenario file: {e.strerror or e}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(label, None, f"not valid UTF-8 (byte offset {e.start})")
    return parse_scenario(text, path, check_files=check_files)


def parse_scenario(text: str, path: str | os.PathLike[str], *, check_files: bool = True) -> Scenario:
    """Validate scenario `text` as if it had been read from `path`.

    `path` names the file in error messages, gives the default run name (its
    stem) and is the base for the relative paths inside the scenario.
    """
    label = os.fspath(path)
    spath = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        _fail(label, None, _toml_error_text(e))
    return _Parser(label, spath, check_files).scenario(doc, text)


# --------------------------------------------------------------------------
# Error helpers
# --------------------------------------------------------------------------


def _one_line(s: str) -> str:
    # A message must stay on one line even when a value or a file name
    # contains line breaks or other control characters.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _fail(path: str | None, key: str | None, what: str) -> NoReturn:
    parts = [p for p in (path, key) if p]
    msg = ": ".join(parts + [what])
    raise ScenarioError(_one_line(msg), path=path, key=key)


def _fmt_int(n: int) -> str:
    # Underscores make big limits readable and are valid TOML, so a user can
    # paste them back into the file.
    return f"{n:_}" if abs(n) >= 10_000 else str(n)


_TOML_TYPE = {bool: "boolean", int: "integer", float: "float", str: "string",
              list: "array", dict: "table"}


def _type_name(v: Any) -> str:
    for t, name in _TOML_TYPE.items():  # bool before int: bool subclasses int
        if isinstance(v, t):
            return name
    if isinstance(v, datetime.datetime):
        return "datetime"
    if isinstance(v, datetime.date):
        return "date"
    if isinstance(v, datetime.time):
        return "time"
    return type(v).__name__


def _got(v: Any) -> str:
    """'got <value> (<type>)', short enough for a one-line message."""
    t = _type_name(v)
    if t == "boolean":
        return f"got {str(v).lower()} (boolean)"
    if t == "integer":
        return f"got {_fmt_int(v)} (integer)"
    if t in ("float", "string", "datetime", "date", "time"):
        r = repr(v) if t != "datetime" else v.isoformat()
        if len(r) > 60:
            r = r[:57] + "..."
        return f"got {r} ({t})"
    if t == "array":
        return "got an array"
    if t == "table":
        return "got a table"
    return f"got a value of type {t}"


def _check_int(v: Any, lo: int, hi: int, path: str | None, key: str) -> int:
    """Validate an integer in lo..hi; shared by the file keys and the CLI flags."""
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path, key, f"must be an integer, {_got(v)}")
    if v < lo:
        if lo == 0:
            need = "must be a non-negative integer"
        elif lo == 1:
            need = "must be a positive integer"
        else:
            need = f"must be at least {_fmt_int(lo)}"
        _fail(path, key, f"{need}, got {_fmt_int(v)}")
    if v > hi:
        _fail(path, key, f"must be at most {_fmt_int(hi)}, got {_fmt_int(v)}")
    return v


_TOML_POS_RE = re.compile(r"^(.*?)\s*\(at line (\d+), column (\d+)\)$", re.S)


def _toml_error_text(e: tomllib.TOMLDecodeError) -> str:
    # Python 3.11's TOMLDecodeError has no lineno/colno attributes; the
    # position is only in the message ("... (at line 3, column 9)").  Move it
    # to the front so the message reads like the other errors.
    msg = str(e)
    m = _TOML_POS_RE.match(msg)
    if m:
        return f"line {m.group(2)}, column {m.group(3)}: invalid TOML: {m.group(1)}"
    return f"invalid TOML: {msg}"


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------
# The parser proper
# --------------------------------------------------------------------------


_REQUIRED = object()


class _Parser:
    def __init__(self, label: str, spath: Path, check_files: bool):
        self.label = label
        self.spath = spath
        self.base = spath.parent
        self.check_files = check_files

    # -- generic helpers ---------------------------------------------------

    def fail(self, key: str | None, what: str) -> NoReturn:
        _fail(self.label, key, what)

    def table(self, v: Any, key: str) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"must be a table, {_got(v)}")
        return v

    def no_unknown(self, t: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        # Checked before anything else in a table so that a misspelt key is
        # reported as such, with a suggestion, rather than as "missing".
        for k in t:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                self.fail(where, f"unknown key{_suggest(k, allowed)}")

    def get(self, t: Mapping[str, Any], key: str, prefix: str, default: Any) -> Any:
        if key in t:
            return t[key]
        if default is _REQUIRED:
            self.fail(f"{prefix}.{key}", "missing required key")
        return default

    def int_(self, t, key, prefix, lo, hi, default=_REQUIRED) -> int:
        v = self.get(t, key, prefix, default)
        return _check_int(v, lo, hi, self.label, f"{prefix}.{key}")

    def str_(self, t, key, prefix, default=_REQUIRED) -> str:
        v = self.get(t, key, prefix, default)
        if not isinstance(v, str):
            self.fail(f"{prefix}.{key}", f"must be a string, {_got(v)}")
        return v

    def choice(self, t, key, prefix, choices: tuple[str, ...], default=_REQUIRED) -> str:
        v = self.str_(t, key, prefix, default)
        if v not in choices:
            opts = ", ".join(f'"{c}"' for c in choices)
            self.fail(f"{prefix}.{key}", f"must be one of {opts}{_suggest(v, choices)}, {_got(v)}")
        return v

    def file(self, t, key, prefix, default=_REQUIRED) -> Path:
        v = self.str_(t, key, prefix, default)
        if v == "":
            self.fail(f"{prefix}.{key}", "must be a non-empty path")
        # Relative paths are relative to the scenario file, not to the
        # current directory, so a scenario can be run from anywhere.
        p = self.base / v
        if self.check_files and not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "file not found"
            self.fail(f"{prefix}.{key}", f"{what}: {p}")
        return p

    # -- sections ------------------------------------------------------------

    def scenario(self, doc: dict, text: str) -> Scenario:
        self.no_unknown(doc, "", _TOP_KEYS)
        if "run" not in doc:
            self.fail("run", "missing required table [run]")
        run = self.table(doc["run"], "run")
        self.no_unknown(run, "run", _RUN_KEYS)

        name = self.str_(run, "name", "run", self.spath.stem)
        # The name becomes a file name (the default log path), hence no
        # path separators and no "." / "..".
        if (not name or len(name) > MAX_NAME_CHARS or not name.isprintable()
                or "/" in name or "\\" in name or name in (".", "..")):
            self.fail("run.name", f"must be 1..{MAX_NAME_CHARS} printable characters without "
                      f"'/' or '\\', {_got(name)}")
        ticks = self.int_(run, "ticks", "run", 1, MAX_TICKS)
        seed = self.int_(run, "seed", "run", 0, MAX_SEED)
        groups = self.int_(run, "groups", "run", 0, MAX_GROUPS, 0)
        assignment = self.choice(run, "assignment", "run", ASSIGNMENTS, "block")
        scheduler = self.choice(run, "scheduler", "run", SCHEDULERS, "round_robin")
        # Default log location: runs/<name>.welog next to the scenario file.
        log_path = self.file_path_nocheck(run, "log", "run", f"runs/{name}.welog")
        max_message_bytes = self.int_(run, "max_message_bytes", "run", 1, 65536, 256)
        message_budget = self.int_(run, "message_budget_per_tick", "run", 0, MAX_BUDGET, 0)
        inference_budget = self.int_(run, "inference_budget_per_tick", "run", 0, MAX_BUDGET, 0)
        inference_latency = self.int_(run, "inference_latency_ticks", "run", 1, MAX_TICKS, 1)
        fsync_every = self.int_(run, "fsync_every_ticks", "run", 0, MAX_TICKS, 100)

        kinds = self.agents(doc.get("agents", _REQUIRED), scheduler)
        models = self.models(doc.get("models", []))

        return Scenario(
            path=self.spath,
            name=name,
            ticks=ticks,
            seed=seed,
            groups=groups,
            assignment=assignment,
            scheduler=scheduler,
            log_path=log_path,
            max_message_bytes=max_message_bytes,
            message_budget_per_tick=message_budget,
            inference_budget_per_tick=inference_budget,
            inference_latency_ticks=inference_latency,
            fsync_every_ticks=fsync_every,
            kinds=kinds,
            models=models,
            source_text=text,
        )

    def file_path_nocheck(self, t, key, prefix, default: str) -> Path:
        # The log is an output: it need not exist (nor its directory yet).
        v = self.str_(t, key, prefix, default)
        if v == "":
            self.fail(f"{prefix}.{key}", "must be a non-empty path")
        return self.base / v

    def array_of_tables(self, v: Any, key: str) -> list[dict]:
        if not isinstance(v, list):
            self.fail(key, f"must be an array of tables ([[{key}]]), {_got(v)}")
        for i, t in enumerate(v):
            self.table(t, f"{key}[{i}]")
        return v

    def agents(self, v: Any, scheduler: str) -> tuple[AgentKind, ...]:
        if v is _REQUIRED:
            self.fail("agents", "at least one [[agents]] table is required")
        tables = self.array_of_tables(v, "agents")
        if not tables:
            self.fail("agents", "at least one [[agents]] table is required")

        parsed: list[dict[str, Any]] = []
        index_of: dict[str, int] = {}
        next_id = 0
        for i, t in enumerate(tables):
            p = f"agents[{i}]"
            self.no_unknown(t, p, _AGENT_KEYS)
            kind = self.str_(t, "kind", p)
            if not _KIND_RE.match(kind) or len(kind) > _KIND_MAX_CHARS:
                self.fail(f"{p}.kind", "must match [a-z][a-z0-9_]* "
                          f"(at most {_KIND_MAX_CHARS} characters), {_got(kind)}")
            if kind in index_of:
                self.fail(f"{p}.kind", f"duplicate kind '{kind}' (already used by agents[{index_of[kind]}])")
            index_of[kind] = i
            module = self.file(t, "module", p)
            count = self.int_(t, "count", p, 1, MAX_AGENTS_PER_KIND)
            caps = self.capabilities(t, p)
            fuel = self.int_(t, "fuel_per_tick", p, 1, MAX_FUEL_PER_TICK)
            mem = self.int_(t, "memory_limit_bytes", p, MIN_MEMORY_LIMIT, MAX_MEMORY_LIMIT, _DEFAULT_MEMORY_LIMIT)
            sends = self.int_(t, "max_sends_per_tick", p, 0, 65536, 64)
            infers = self.int_(t, "max_infers_per_tick", p, 0, 65536, 1)
            priority = self.int_(t, "priority", p, 1, 1000, 1)
            after = self.after_list(t, p, scheduler)
            config = self.config(t, p)
            if next_id + count > MAX_TOTAL_AGENTS:
                self.fail(f"{p}.count", f"total number of agents exceeds {_fmt_int(MAX_TOTAL_AGENTS)}")
            parsed.append(dict(
                name=kind, module_path=module, count=count, capabilities=caps,
                fuel_per_tick=fuel, memory_limit_bytes=mem, max_sends_per_tick=sends,
                max_infers_per_tick=infers, priority=priority, after=after, config=config,
                first_agent_id=next_id,
            ))
            next_id += count

        # `after` may name kinds listed later, so references are resolved
        # only once every kind is known.
        for i, d in enumerate(parsed):
            for j, dep in enumerate(d["after"]):
                if dep not in index_of:
                    self.fail(f"agents[{i}].after[{j}]",
                              f"unknown kind '{dep}'{_suggest(dep, index_of)}")
                if dep == d["name"]:
                    self.fail(f"agents[{i}].after[{j}]", f"dependency cycle: {dep} -> {dep}")
        stages = self.stages(parsed, index_of) if scheduler == "dag" else [0] * len(parsed)
        return tuple(AgentKind(stage=s, **d) for d, s in zip(parsed, stages))

    def capabilities(self, t: dict, p: str) -> frozenset[str]:
        v = self.get(t, "capabilities", p, [])
        key = f"{p}.capabilities"
        if not isinstance(v, list):
            self.fail(key, f"must be an array of strings, {_got(v)}")
        seen: set[str] = set()
        for j, c in enumerate(v):
            if not isinstance(c, str):
                self.fail(f"{key}[{j}]", f"must be a string, {_got(c)}")
            if c not in CAPABILITIES:
                opts = ", ".join(f'"{x}"' for x in sorted(CAPABILITIES))
                self.fail(f"{key}[{j}]", f"unknown capability{_suggest(c, CAPABILITIES)} "
                          f"(valid: {opts}), {_got(c)}")
            if c in seen:
                self.fail(f"{key}[{j}]", f"duplicate capability '{c}'")
            seen.add(c)
        return frozenset(seen)

    def after_list(self, t: dict, p: str, scheduler: str) -> tuple[str, ...]:
        v = self.get(t, "after", p, [])
        key = f"{p}.after"
        if not isinstance(v, list):
            self.fail(key, f"must be an array of kind names, {_got(v)}")
        # An empty list is harmless under any scheduler; a non-empty one would
        # be silently ignored by the others, which is surely not intended.
        if v and scheduler != "dag":
            self.fail(key, f'only allowed with run.scheduler = "dag" (scheduler is "{scheduler}")')
        seen: set[str] = set()
        for j, dep in enumerate(v):
            if not isinstance(dep, str):
                self.fail(f"{key}[{j}]", f"must be a string, {_got(dep)}")
            if dep in seen:
                self.fail(f"{key}[{j}]", f"duplicate entry '{dep}'")
            seen.add(dep)
        return tuple(v)

    def stages(self, parsed: list[dict], index_of: dict[str, int]) -> list[int]:
        """Longest-path depth of every kind in the `after` graph; reports cycles.

        Iterative DFS (a recursive one would hit the recursion limit on a
        long chain of kinds).  Kinds and their `after` lists are visited in
        file order, so the reported cycle is deterministic.
        """
        n = len(parsed)
        WHITE, GREY, BLACK = 0, 1, 2
        colour = [WHITE] * n
        stage = [0] * n
        deps = [[index_of[d] for d in k["after"]] for k in parsed]
        for root in range(n):
            if colour[root] != WHITE:
                continue
            # Stack of (node, index of next dependency to visit); the stack
            # itself is the current path, which is what a cycle report needs.
            stack: list[list[int]] = [[root, 0]]
            colour[root] = GREY
            while stack:
                top = stack[-1]
                node, nxt = top
                if nxt < len(deps[node]):
                    top[1] += 1
                    dep = deps[node][nxt]
                    if colour[dep] == GREY:
                        path = [f[0] for f in stack]
                        cycle = path[path.index(dep):] + [dep]
                        # The edge "a after b" means b runs first; print the
                        # chain in the direction of the `after` references.
                        names = " -> ".join(parsed[c]["name"] for c in cycle)
                        self.fail(f"agents[{cycle[0]}].after", f"dependency cycle: {names}")
                    if colour[dep] == WHITE:
                        colour[dep] = GREY
                        stack.append([dep, 0])
                else:
                    stage[node] = 1 + max((stage[d] for d in deps[node]), default=-1)
                    colour[node] = BLACK
                    stack.pop()
        return stage

    def config(self, t: dict, p: str) -> bytes:
        present = [k for k in _CONFIG_KEYS if k in t]
        if len(present) > 1:
            self.fail(f"{p}.{present[1]}", f"at most one of {', '.join(_CONFIG_KEYS)} may be given "
                      f"(also found {present[0]})")
        if not present:
            return b""
        k = present[0]
        key = f"{p}.{k}"
        v = t[k]
        if k == "config_i32":
            if not isinstance(v, list):
                self.fail(key, f"must be an array of integers, {_got(v)}")
            # Checked before packing so a huge array fails fast and cheaply.
            if 4 * len(v) > MAX_CONFIG_BYTES:
                self.fail(key, f"config is {_fmt_int(4 * len(v))} bytes, at most {_fmt_int(MAX_CONFIG_BYTES)} allowed")
            for j, x in enumerate(v):
                _check_int(x, -(2**31), 2**31 - 1, self.label, f"{key}[{j}]")
            return struct.pack(f"<{len(v)}i", *v)
        if k == "config_f64":
            if not isinstance(v, list):
                self.fail(key, f"must be an array of numbers, {_got(v)}")
            if 8 * len(v) > MAX_CONFIG_BYTES:
                self.fail(key, f"config is {_fmt_int(8 * len(v))} bytes, at most {_fmt_int(MAX_CONFIG_BYTES)} allowed")
            for j, x in enumerate(v):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    self.fail(f"{key}[{j}]", f"must be a number, {_got(x)}")
                if isinstance(x, int) and abs(x) > 2**53:
                    # Would be rounded silently when converted to f64.
                    self.fail(f"{key}[{j}]", f"integer not exactly representable as f64, {_got(x)}")
            return struct.pack(f"<{len(v)}d", *(float(x) for x in v))
        if k == "config_text":
            if not isinstance(v, str):
                self.fail(key, f"must be a string, {_got(v)}")
            data = v.encode("utf-8")
        else:  # config_hex
            if not isinstance(v, str):
                self.fail(key, f"must be a string of hex digits, {_got(v)}")
            # Whitespace is allowed so long blobs can be wrapped in a
            # multi-line string.
            digits = "".join(v.split())
            if len(digits) % 2:
                self.fail(key, f"odd number of hex digits ({len(digits)})")
            try:
                data = bytes.fromhex(digits)
            except ValueError:
                bad = next(c for c in digits if c not in "0123456789abcdefABCDEF")
                self.fail(key, f"not a hex digit: {bad!r}")
        if len(data) > MAX_CONFIG_BYTES:
            self.fail(key, f"config is {_fmt_int(len(data))} bytes, at most {_fmt_int(MAX_CONFIG_BYTES)} allowed")
        return data

    def models(self, v: Any) -> tuple[ModelSpecEntry, ...]:
        tables = self.array_of_tables(v, "models")
        out: list[ModelSpecEntry] = []
        index_of: dict[str, int] = {}
        for i, t in enumerate(tables):
            p = f"models[{i}]"
            self.no_unknown(t, p, _MODEL_KEYS)
            mid = self.str_(t, "id", p)
            if not _MODEL_ID_RE.match(mid) or len(mid) > _KIND_MAX_CHARS:
                self.fail(f"{p}.id", "must match [A-Za-z0-9_][A-Za-z0-9_.-]* "
                          f"(at most {_KIND_MAX_CHARS} characters), {_got(mid)}")
            if mid in index_of:
                self.fail(f"{p}.id", f"duplicate model id '{mid}' (already used by models[{index_of[mid]}])")
            index_of[mid] = i
            path = self.file(t, "path", p)
            kind = self.choice(t, "kind", p, MODEL_KINDS)
            if kind == "causal_lm":
                if "tokenizer" not in t:
                    self.fail(f"{p}.tokenizer", 'missing required key (required for kind = "causal_lm")')
                tokenizer: Path | None = self.file(t, "tokenizer", p)
            else:
                if "tokenizer" in t:
                    self.fail(f"{p}.tokenizer", f'only allowed with kind = "causal_lm" (kind is "{kind}")')
                tokenizer = None
            provider = self.choice(t, "provider", p, PROVIDERS, "auto")
            max_context = self.int_(t, "max_context", p, 0, 1 << 20, 0)
            if max_context and kind != "causal_lm":
                self.fail(f"{p}.max_context", f'only allowed with kind = "causal_lm" (kind is "{kind}")')
            batch = t.get("batch", True)
            if not isinstance(batch, bool):
                self.fail(f"{p}.batch", f"must be true or false, {_got(batch)}")
            out.append(ModelSpecEntry(id=mid, path=path, kind=kind, tokenizer=tokenizer, provider=provider,
                                      max_context=max_context, batch=batch))
        return tuple(out)
