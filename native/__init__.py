"""Layer: native — the compiled C core (atomics, futex wait/wake, ring batches,
the native host functions of the agent ABI, and row programs).

Only shm_protocol (rings), worker (host functions, ``we_host.c``) and
inference (row programs, ``we_rows.c``) may import this package. It
re-exports the cffi ``ffi`` and ``lib`` objects of the extension built from
``we_native.c``, ``we_host.c`` and ``we_rows.c`` at install time,
and ``Exchanger``, the request/response latency path compiled as a plain
CPython callable over the same C (see ``we_fastcall.c`` for why). Mapping
status codes to exceptions is shm_protocol's job.
"""
from ._atomics import ffi as ffi, lib as lib
from ._fastcall import Exchanger as Exchanger

__all__ = ["ffi", "lib", "Exchanger"]
