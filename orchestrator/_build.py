"""Build agent sources into agent ABI v1 wasm modules, and check modules against ABI v1.

C agents are compiled with the zig toolchain from PyPI (``pip install
'wasm-engine[sdk]'``), which ships clang and wasm-ld for wasm32 without any
system install.  Hand-written ``.wat`` agents are assembled with wasmtime.

``check_module`` is the single place that knows what an ABI v1 module looks
like (see docs/ABI.md); the runtime calls it before loading an agent so that a
bad module fails with a message naming the file instead of a link error.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import wasmtime

__all__ = [
    "ABI_VERSION",
    "ABI_EXPORTS",
    "ABI_IMPORTS",
    "ALWAYS_GRANTED",
    "SDK_DIR",
    "BuildError",
    "build_agent",
    "check_module",
    "check_wasm",
    "compiler_command",
    "main",
    "zig_version",
]

ABI_VERSION = 1

#: Directory holding ``we_agent.h``; added to the include path of every C build.
from ..worker import ABI_EXPORTS as _WORKER_EXPORTS, IMPORTS as _WORKER_IMPORTS

SDK_DIR = Path(__file__).parent / "sdk"

IMPORT_MODULE = "we"

# The ABI tables are the worker's (the host that enforces them); this module
# only re-shapes them with type names as strings, so there is one definition.
ABI_IMPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    name: (tuple(map(str, p)), tuple(map(str, r)), cap) for name, (p, r, cap) in _WORKER_IMPORTS.items()
}

#: Imports every agent may use whatever its capabilities.
ALWAYS_GRANTED = frozenset(name for name, (_, _, cap) in ABI_IMPORTS.items() if cap is None)

# name -> (params, results); plus the exported linear memory "memory".
ABI_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (tuple(map(str, p)), tuple(map(str, r))) for name, (p, r) in _WORKER_EXPORTS.items()
}

# Stack for C agents.  wasm-ld's default under zig is 1 MiB, which alone
# would exceed a typical per-agent memory limit (the examples use 1 MiB);
# agents keep their state in static arrays, so 64 KiB of stack is plenty.
STACK_SIZE = 64 * 1024

# Flags that make the module an ABI v1 agent; see docs/ABI.md "Building".
_C_FLAGS: tuple[str, ...] = (
    "--target=wasm32-freestanding",
    # Pin the wasm feature set rather than take whatever zig's "generic" CPU
    # means in a given release: lime1 is a fixed, standardised set (bulk
    # memory, sign-ext, mutable globals, multivalue, ...) without SIMD or
    # threads.  Bulk memory also lets copies and struct assignments lower to
    # memory.copy instead of calls to a memcpy that -nostdlib leaves undefined.
    "-mcpu=lime1",
    "-nostdlib",
    "-g0",
    # An agent is a library of exports, not a program with _start.
    "-Wl,--no-entry",
    # Custom sections (names, producers) carry nothing the runtime needs and
    # the name section embeds the output file name; stripping them keeps the
    # module small and the build byte-for-byte reproducible.
    "-Wl,--strip-all",
    f"-Wl,-z,stack-size={STACK_SIZE}",
    # No --allow-undefined: imports come only from the SDK's import_module
    # attributes, so a call to an undeclared function (a libc routine, a typo)
    # is a link error rather than a silent "env" import that fails at load.
)

_ZIG_MISSING = (
    "building C agents needs the zig toolchain, which is not installed: "
    "pip install 'wasm-engine[sdk]'"
)

# Compile time is well under a second for an agent; the limit only guards
# against a wedged toolchain hanging the caller forever.
_COMPILE_TIMEOUT_S = 300

# Enough for any sane we_abi_version (which is `return 1`), small enough that
# a module spinning in a start function or in we_abi_version fails fast.
_VERSION_CALL_FUEL = 1_000_000


class BuildError(Exception):
    """An agent source could not be built into an ABI v1 wasm module.

    The message names the source file and includes the compiler's stderr (or
    the ABI problems found in the output), so it can be shown to the agent's
    author as is.  ``source`` and ``stderr`` are kept for programmatic use.
    """

    def __init__(self, source: Path | str, message: str, stderr: str = "") -> None:
        self.source = Path(source)
        self.stderr = stderr
        text = f"{self.source}: {message}"
        if stderr.strip():
            text += "\n" + stderr.rstrip()
        super().__init__(text)


def compiler_command(
    source: Path | str,
    output: Path | str,
    *,
    opt: str = "-O2",
    extra_flags: Iterable[str] = (),
) -> list[str]:
    """The exact command line ``build_agent`` runs for a C source."""
    return [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *_C_FLAGS,
        opt,
        f"-I{SDK_DIR}",
        *extra_flags,
        "-o",
        str(output),
        str(source),
    ]


def zig_version() -> str | None:
    """Version of the installed zig toolchain, or None if it is not installed.

    Builds are reproducible for one toolchain version; a different zig (and so
    a different clang/LLVM) may produce different, equally valid bytes.
    """
    if importlib.util.find_spec("ziglang") is None:
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "ziglang", "version"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=_COMPILE_TIMEOUT_S,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_agent(
    source: Path | str,
    output: Path | str,
    *,
    opt: str = "-O2",
    extra_flags: Iterable[str] = (),
    check: bool = True,
) -> Path:
    """Build an agent from C (``.c``) or WebAssembly text (``.wat``) into ``output``.

    With ``check`` (the default) the result is also checked against ABI v1,
    so a missing ``we_step`` or a stray import is reported as a build error
    naming the source rather than later as a load error.  ``output`` is only
    replaced once everything succeeded.  The same source, flags and toolchain
    always give byte-identical output.

    Raises ``BuildError`` on any failure.
    """
    source = Path(source)
    output = Path(output)
    if not source.is_file():
        raise BuildError(source, "no such source file")
    if not opt.startswith("-O"):
        raise BuildError(source, f"opt must be an optimisation flag such as -O2, got {opt!r}")

    suffix = source.suffix.lower()
    if suffix == ".c":
        wasm = _compile_c(source, opt=opt, extra_flags=tuple(extra_flags))
    elif suffix == ".wat":
        wasm = _assemble_wat(source)
    else:
        raise BuildError(source, f"don't know how to build {suffix or 'a file without suffix'}; expected .c or .wat")

    if check:
        label = str(source)
        problems = check_wasm(wasm, label=label)
        if problems:
            # BuildError already leads with the source; don't repeat it per line.
            lines = [p.removeprefix(f"{label}: ") for p in problems]
            raise BuildError(source, "output does not conform to agent ABI v1:\n  " + "\n  ".join(lines))

    _write_atomically(output, wasm)
    return output


def _compile_c(source: Path, *, opt: str, extra_flags: tuple[str, ...]) -> bytes:
    if importlib.util.find_spec("ziglang") is None:
        raise BuildError(source, _ZIG_MISSING)
    with tempfile.TemporaryDirectory(prefix="we-build-") as tmp:
        # A fixed name, so nothing about the caller's output path can reach
        # the module.
        out = Path(tmp) / "agent.wasm"
        cmd = compiler_command(source.resolve(), out, opt=opt, extra_flags=extra_flags)
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=_COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(source, f"compiler did not finish within {_COMPILE_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise BuildError(
                source,
                f"compilation failed (exit status {proc.returncode})",
                stderr=proc.stderr or proc.stdout,
            )
        if not out.is_file():
            raise BuildError(source, "compiler reported success but wrote no output", stderr=proc.stderr)
        return out.read_bytes()


def _assemble_wat(source: Path) -> bytes:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(source, f"cannot read source: {exc}") from exc
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise BuildError(source, "invalid WebAssembly text", stderr=str(exc)) from exc


def _write_atomically(output: Path, data: bytes) -> None:
    # Readers (a running simulation, a test comparing bytes) must never see a
    # half-written module, so write a sibling file and rename it into place.
    # os.open with 0o666 rather than mkstemp, whose 0o600 would make the
    # module unreadable to others: the umask decides, as for any new file.
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# ABI v1 conformance
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _check_engine() -> wasmtime.Engine:
    # Fuel, so that calling we_abi_version on an untrusted module terminates.
    config = wasmtime.Config()
    config.consume_fuel = True
    return wasmtime.Engine(config)


def _sig(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(t) for t in ty.params), tuple(str(t) for t in ty.results)


def _fmt_sig(params: Sequence[str], results: Sequence[str]) -> str:
    res = ", ".join(results) if results else "()"
    return f"({', '.join(params)}) -> {res}"


def _kind(ty: object) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return "function"
    if isinstance(ty, wasmtime.MemoryType):
        return "memory"
    if isinstance(ty, wasmtime.TableType):
        return "table"
    if isinstance(ty, wasmtime.GlobalType):
        return "global"
    return type(ty).__name__


def check_module(
    path: Path | str,
    *,
    capabilities: Iterable[str] | None = None,
    memory_limit_bytes: int | None = None,
) -> list[str]:
    """Problems that keep the wasm module at ``path`` from being an ABI v1 agent.

    Returns an empty list for a conforming module.  Every message starts with
    the file name.  ``capabilities`` (the capability names granted to the
    agent's kind) additionally reports imports the kind is not granted;
    ``memory_limit_bytes`` reports an initial memory larger than the limit.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [f"{path}: cannot read module: {exc.strerror or exc}"]
    return check_wasm(
        data,
        label=str(path),
        capabilities=capabilities,
        memory_limit_bytes=memory_limit_bytes,
    )


def check_wasm(
    data: bytes,
    *,
    label: str,
    capabilities: Iterable[str] | None = None,
    memory_limit_bytes: int | None = None,
) -> list[str]:
    """``check_module`` for module bytes already in memory; ``label`` names them in messages."""
    engine = _check_engine()
    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
        return [f"{label}: not a valid WebAssembly module: {first_line}"]

    granted = None if capabilities is None else frozenset(capabilities)
    problems: list[str] = []
    problems += _check_imports(module, label, granted)
    problems += _check_exports(module, label, memory_limit_bytes)
    if not problems:
        # Only a module that links can be run; its declared version is the
        # last thing to check, and the one thing a static look cannot see.
        problems += _check_version(module, label, memory_limit_bytes)
    return problems


def _check_imports(module: wasmtime.Module, label: str, granted: frozenset[str] | None) -> list[str]:
    problems = []
    known = ", ".join(sorted(ABI_IMPORTS))
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module != IMPORT_MODULE:
            hint = " (agents run without WASI)" if imp.module.startswith("wasi") else ""
            if imp.module == "env":
                hint = " (an undeclared function? C agents must include we_agent.h and use only its functions)"
            problems.append(f'{label}: imports {where}; agents may only import from module "we"{hint}')
            continue
        if imp.name not in ABI_IMPORTS:
            problems.append(f"{label}: imports unknown host function {where}; ABI v1 provides: {known}")
            continue
        ty = imp.type
        if not isinstance(ty, wasmtime.FuncType):
            problems.append(f"{label}: imports {where} as a {_kind(ty)}; it is a function")
            continue
        params, results, cap = ABI_IMPORTS[imp.name]
        if _sig(ty) != (params, results):
            problems.append(
                f"{label}: imports {where} with type {_fmt_sig(*_sig(ty))}; "
                f"ABI v1 declares {_fmt_sig(params, results)}"
            )
        if granted is not None and cap is not None and cap not in granted:
            have = ", ".join(sorted(granted)) or "none"
            problems.append(
                f'{label}: imports {where}, which needs capability "{cap}"; '
                f"this agent kind is granted: {have}"
            )
    return problems


def _check_exports(module: wasmtime.Module, label: str, memory_limit_bytes: int | None) -> list[str]:
    problems = []
    exports = {exp.name: exp.type for exp in module.exports}

    mem = exports.get("memory")
    if mem is None:
        problems.append(f'{label}: does not export its linear memory as "memory"')
    elif not isinstance(mem, wasmtime.MemoryType):
        problems.append(f'{label}: exports "memory" as a {_kind(mem)}; it must be the linear memory')
    else:
        if mem.is_64:
            problems.append(f"{label}: memory is 64-bit; agents are wasm32")
        if mem.is_shared:
            problems.append(f"{label}: memory is shared; agents are single-threaded")
        initial = mem.limits.min * 65536
        if memory_limit_bytes is not None and initial > memory_limit_bytes:
            problems.append(
                f"{label}: initial memory is {initial} bytes ({mem.limits.min} pages), "
                f"over this kind's memory_limit_bytes = {memory_limit_bytes}"
            )

    for name, (params, results) in ABI_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            problems.append(f"{label}: missing export {name} {_fmt_sig(params, results)}")
        elif not isinstance(ty, wasmtime.FuncType):
            problems.append(f"{label}: exports {name} as a {_kind(ty)}; it must be a function")
        elif _sig(ty) != (params, results):
            problems.append(
                f"{label}: export {name} has type {_fmt_sig(*_sig(ty))}; "
                f"ABI v1 requires {_fmt_sig(params, results)}"
            )
    return problems


def _check_version(module: wasmtime.Module, label: str, memory_limit_bytes: int | None) -> list[str]:
    store = wasmtime.Store(_check_engine())
    store.set_fuel(_VERSION_CALL_FUEL)
    if memory_limit_bytes is not None:
        store.set_limits(memory_size=memory_limit_bytes)
    linker = wasmtime.Linker(_check_engine())
    # we_abi_version must not need the host; any host call it makes traps.
    linker.define_unknown_imports_as_traps(module)
    try:
        instance = linker.instantiate(store, module)
        version = instance.exports(store)["we_abi_version"](store)
    except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"{label}: could not instantiate it and call we_abi_version: {first_line}"]
    if version != ABI_VERSION:
        return [f"{label}: we_abi_version() returned {version}; this runtime implements agent ABI v{ABI_VERSION}"]
    return []


# ---------------------------------------------------------------------------
# Command line: `wasm-engine build` delegates here.
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``build SOURCE [-o OUTPUT] [-O LEVEL] [-- EXTRA_CC_FLAGS...]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="wasm-engine build",
        description="Build a C or WAT agent into an agent ABI v1 wasm module.",
    )
    parser.add_argument("source", type=Path, help="agent source (.c or .wat)")
    parser.add_argument("-o", "--output", type=Path, help="output .wasm (default: SOURCE with .wasm suffix)")
    parser.add_argument("-O", dest="opt", default="2", help="optimisation level: 0, 1, 2, 3, s or z (default 2)")
    parser.add_argument("--print-command", action="store_true", help="print the compiler command line first")
    parser.add_argument("extra_flags", nargs="*", help="extra compiler flags, after --")
    args = parser.parse_args(argv)

    output = args.output or args.source.with_suffix(".wasm")
    opt = f"-O{args.opt}"
    if args.print_command and args.source.suffix.lower() == ".c":
        print(" ".join(compiler_command(args.source, output, opt=opt, extra_flags=args.extra_flags)))
    try:
        built = build_agent(args.source, output, opt=opt, extra_flags=args.extra_flags)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{built} ({built.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
