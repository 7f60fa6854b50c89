"""Agent ABI v1: what a module must export, what it may import (docs/ABI.md).

Layer: worker. ``check_module`` turns every mismatch into one
``AgentLoadError`` line naming the module file and the export or import.
"""
from __future__ import annotations

import wasmtime

ABI_VERSION = 1
IMPORT_MODULE = "we"

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

#: import name -> (params, results, capability or None when always granted)
IMPORTS: dict[str, tuple[tuple, tuple, str | None]] = {
    "recv": ((I32, I32, I32), (I32,), "recv"),
    "inbox_count": ((), (I32,), "recv"),
    "send": ((I32, I32, I32), (I32,), "send"),
    "rand_u64": ((), (I64,), "rand"),
    "tick": ((), (I64,), "tick"),
    "log": ((I32, I32), (I32,), "log"),
    "publish": ((I32, I32), (I32,), "publish"),
    "infer": ((I32, I32, I32), (I64,), "infer"),
    "config_read": ((I32, I32), (I32,), None),
    "agent_count": ((), (I32,), None),
}
CAPABILITIES = frozenset(c for (_p, _r, c) in IMPORTS.values() if c)

#: export name -> (params, results)
EXPORTS: dict[str, tuple[tuple, tuple]] = {
    "we_abi_version": ((), (I32,)),
    "we_init": ((I32, I64, I32), (I32,)),
    "we_step": ((I64,), (I32,)),
}


class WorkerError(Exception):
    """Root of every exception raised on purpose by wasm_engine.worker."""


class AgentLoadError(WorkerError):
    """An agent module cannot be loaded: bad ABI, ungranted or unknown import.

    The message is one line naming the module file and what to change.
    """


def _sig(ft: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ft.params), tuple(str(r) for r in ft.results)


def _fmt(params, results) -> str:
    return f"({', '.join(map(str, params))}) -> ({', '.join(map(str, results))})"


def check_module(module: wasmtime.Module, where: str, kind: str, granted: frozenset[str]) -> None:
    """Raise AgentLoadError unless ``module`` follows ABI v1 within ``granted``."""
    exports = {e.name: e.type for e in module.exports}
    mem = exports.get("memory")
    if not isinstance(mem, wasmtime.MemoryType):
        raise AgentLoadError(f"{where}: agent module must export its linear memory as 'memory'")
    for name, (params, results) in EXPORTS.items():
        t = exports.get(name)
        if not isinstance(t, wasmtime.FuncType):
            raise AgentLoadError(f"{where}: missing export '{name}' {_fmt(params, results)} (ABI v{ABI_VERSION})")
        if _sig(t) != (tuple(map(str, params)), tuple(map(str, results))):
            raise AgentLoadError(
                f"{where}: export '{name}' has signature {_fmt(t.params, t.results)}, ABI v{ABI_VERSION} "
                f"needs {_fmt(params, results)}"
            )
    for imp in module.imports:
        label = f"{imp.module}.{imp.name}"
        if imp.module != IMPORT_MODULE or imp.name not in IMPORTS:
            raise AgentLoadError(
                f"{where}: imports unknown function '{label}'; agents may import only "
                f"{IMPORT_MODULE}.{{{', '.join(sorted(IMPORTS))}}} (no WASI)"
            )
        params, results, cap = IMPORTS[imp.name]
        if not isinstance(imp.type, wasmtime.FuncType) or _sig(imp.type) != (
            tuple(map(str, params)), tuple(map(str, results))
        ):
            raise AgentLoadError(f"{where}: import '{label}' must have signature {_fmt(params, results)}")
        if cap is not None and cap not in granted:
            raise AgentLoadError(
                f"{where}: imports '{label}' but agent kind '{kind}' is not granted capability "
                f"'{cap}' (add it to capabilities in the scenario, or remove the import)"
            )
