# Sourced by scripts/demo and scripts/test: creates .venv and installs the
# package (compiling the native extension) when missing or out of date.
# Idempotent: a stamp of the inputs' hash skips the install when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "wasm-engine needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv" >&2
    "$PY" -m venv .venv
fi
STAMP=.venv/.we-install-stamp
INPUTS=$(cat pyproject.toml setup.py native/we_native.c native/we_native.h native/we_fastcall.c native/_atomics_build.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$INPUTS" ] || ! .venv/bin/python -c 'import wasm_engine.native, wasm_engine.native._fastcall' 2>/dev/null; then
    echo "==> installing wasm-engine into .venv (compiles the native extension)" >&2
    .venv/bin/python -m pip install -q --upgrade pip setuptools wheel cffi >&2
    .venv/bin/python -m pip install -q -e ".[test]" >&2
    echo "$INPUTS" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
