"""cffi out-of-line API-mode builder for wasm_engine.native._atomics.

Registered in setup.py through ``cffi_modules``: ``pip install .`` compiles
we_native.c (rings), we_host.c (native host functions) and we_rows.c (row
programs) with the system C compiler. Nothing prebuilt is committed.
The C source is read from this directory and handed to cffi as the module
source, so the build needs no extra include paths.
"""
import os
import re

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


def _cdef_from_header(header: str) -> str:
    """The header's declarations, stripped of preprocessor lines cffi cannot parse.

    Integer #defines are kept (cffi exposes them as constants) so that the
    Python side reads status codes and offsets from the one C definition.
    """
    out = []
    for line in header.splitlines():
        s = line.strip()
        if s.startswith("#define WE_") and not s.split()[1].endswith("_H"):  # include guards have no value
            name = s.split()[1]
            out.append(f"#define {name} ...")
        elif s.startswith("#") or s.startswith("/*") or s.startswith("*") or s.startswith("*/"):
            continue
        else:
            out.append(re.sub(r"/\*.*?\*/", "", line))
    return "\n".join(out)


ffibuilder = FFI()
_HEADERS = ("we_native.h", "we_host.h", "we_rows.h")
ffibuilder.cdef("\n".join(_cdef_from_header(_read(h)) for h in _HEADERS))
_LOCAL_INCLUDES = tuple(f'#include "{h}"' for h in _HEADERS)


def _body(name: str) -> str:
    text = _read(name)
    for line in _LOCAL_INCLUDES:
        text = text.replace(line, "")
    return text


ffibuilder.set_source(
    "wasm_engine.native._atomics",
    "\n".join([_body(h) for h in _HEADERS] + [_body(c) for c in ("we_native.c", "we_host.c", "we_rows.c")]),
    extra_compile_args=["-O2", "-std=gnu11", "-fno-strict-aliasing", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
