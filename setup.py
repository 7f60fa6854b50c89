# setuptools needs setup.py only for what pyproject.toml cannot express: the
# cffi module (`cffi_modules`) and the one plain CPython extension beside it
# (native/we_fastcall.c, the request/response latency path; see its header
# comment for why it is not part of the cffi module). Both compile we_native.c
# from source at install; nothing prebuilt is committed. All other metadata
# lives in pyproject.toml.
from setuptools import Extension, setup

setup(
    cffi_modules=["native/_atomics_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "wasm_engine.native._fastcall",
            sources=["native/we_fastcall.c", "native/we_native.c"],
            include_dirs=["native"],
            depends=["native/we_native.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-fno-strict-aliasing", "-Wall"],
        )
    ],
)
