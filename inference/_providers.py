"""Execution-provider selection and reproducible ONNX Runtime session settings.

ONNX Runtime's own handling of a missing GPU is noisy: a failed CUDA library
load prints multi-line ERROR logs to stderr, and the Python wrapper prints an
"EP Error" banner to stdout when it falls back.  Neither says plainly what
happened.  This module instead

* probes CUDA itself (is the provider in this ORT build?  does its shared
  library load, i.e. are the CUDA/cuDNN libraries present?) before asking ORT
  to use it, with ORT's logging raised to FATAL only during that attempt;
* creates sessions with ORT's Python fallback disabled so failures come back
  as exceptions we can word ourselves;
* checks `session.get_providers()` afterwards, because ORT can also drop CUDA
  silently;
* logs ONE warning line per distinct reason on logger "wasm_engine.inference"
  and reports which provider each session really uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ._errors import ProviderUnavailableError

LOGGER = logging.getLogger("wasm_engine.inference")

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")

# ORT severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.  Warnings
# (e.g. "some nodes were not assigned to the preferred provider") are routine
# and not actionable for a scenario author, so sessions log errors only.
ORT_LOG_SEVERITY = 3
_ORT_FATAL_ONLY = 4

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"

# Provider options chosen for reproducibility on GPU:
# - cudnn_conv_algo_search=DEFAULT uses cuDNN's fixed default algorithm
#   instead of benchmarking (EXHAUSTIVE, ORT's default), whose winner can
#   change from run to run and with it the rounding of the result;
# - use_tf32=0 keeps float32 matmuls/convs in full float32 on Ampere and
#   later (TF32 has a 10-bit mantissa).
_CUDA_OPTIONS = {"device_id": "0", "cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0"}
# TensorRT picks kernels by timing when it builds an engine, so it is only
# used when asked for explicitly; fp16 stays off so numerics match float32.
_TRT_OPTIONS = {"device_id": "0", "trt_fp16_enable": "0"}

# Process-wide probe results: provider key -> reason it is unusable (None: usable).
_unusable: dict[str, str | None] = {}
_warned: set[str] = set()


def reset_probe_cache() -> None:
    """Forget cached provider probes and warnings (for tests)."""
    _unusable.clear()
    _warned.clear()


def quiet_ort_logging() -> None:
    """Make ORT's default logger report errors only (process-wide setting).

    The inference process is dedicated to ONNX Runtime, so changing the
    global default logger does not affect anyone else.
    """
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)


def session_options() -> ort.SessionOptions:
    """Session settings that make CPU results bit-reproducible run to run.

    See docs/INFERENCE.md ("Determinism") for the reasoning behind each value.
    """
    so = ort.SessionOptions()
    # One thread per operator: with several threads a reduction is split into
    # chunks whose partial sums are added in an order that depends on the
    # thread count, so results could change with the machine's core count.
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # BASIC = constant folding and redundant-node elimination, which do not
    # change arithmetic.  EXTENDED/ALL add fusions and layout transforms
    # (NCHWc) that are chosen per CPU instruction set and swap kernels.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # Asks providers that have a choice (CUDA reductions, scatter) for the
    # deterministic kernel.
    so.use_deterministic_compute = True
    so.log_severity_level = ORT_LOG_SEVERITY
    # With one thread spinning is useless; never burn cores the simulation's
    # worker processes need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


# ---------------------------------------------------------------------------
# Small wrappers around ONNX Runtime: tests monkeypatch these to simulate
# GPU machines and failures on a CPU-only host.
# ---------------------------------------------------------------------------


def _available_providers() -> list[str]:
    return list(ort.get_available_providers())


def _provider_library_error(short: str) -> str | None:
    """Try to load ORT's provider library for `short` ("cuda", "tensorrt").

    The dynamic loader's message names the first missing dependency (e.g.
    "libcublasLt.so.13: cannot open shared object file"), which is exactly
    what a user needs to know and which ORT only logs as a wall of errors.
    Returns None if the library loads or its location is unknown (then ORT
    itself is asked and the session's providers are checked afterwards).
    """
    capi = Path(ort.__file__).parent / "capi"
    name = f"onnxruntime_providers_{short}.dll" if sys.platform == "win32" else f"libonnxruntime_providers_{short}.so"
    lib = capi / name
    if not lib.exists():
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return _first_line(str(e))
    return None


def _preload_cuda_libraries() -> None:
    """Let ORT find CUDA/cuDNN installed from pip wheels (nvidia-* packages).

    `preload_dlls` prints its findings to stdout; they are discarded because
    `_provider_library_error` reports the outcome in one line afterwards.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            preload()
        except Exception:  # best effort: the library probe decides
            pass


def _new_session(path: str, providers: list[Any]) -> ort.InferenceSession:
    """Create a session with ORT's silent Python-level fallback disabled."""
    return ort.InferenceSession(path, sess_options=session_options(), providers=providers, enable_fallback=0)


# ---------------------------------------------------------------------------


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cuda_hint() -> str:
    try:
        from onnxruntime.capi import build_and_package_info as info

        cuda = getattr(info, "cuda_version", "") or "12/13"
    except Exception:
        cuda = "12/13"
    return f"install the CUDA {cuda} and cuDNN 9 runtime libraries (e.g. pip install 'onnxruntime-gpu[cuda,cudnn]')"


def _static_reason(short: str) -> str | None:
    """Why provider `short` cannot work at all, found without creating a session."""
    if short in _unusable:
        return _unusable[short]
    ort_name = _CUDA if short == "cuda" else _TRT
    reason: str | None = None
    if ort_name not in _available_providers():
        reason = f"the installed onnxruntime has no {ort_name} (install onnxruntime-gpu, not onnxruntime)"
    else:
        _preload_cuda_libraries()
        err = _provider_library_error(short)
        if err is not None:
            reason = f"cannot load the {short.upper() if short == 'cuda' else 'TensorRT'} provider library: {err}"
    if reason is not None:
        _unusable[short] = reason
    return reason


@contextlib.contextmanager
def _ort_fatal_only():
    """Silence ORT's C++ error logs while an accelerator is being tried."""
    ort.set_default_logger_severity(_ORT_FATAL_ONLY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_LOG_SEVERITY)


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        LOGGER.warning("CUDA is not usable (%s); running inference on CPU. To use the GPU, %s; "
                       "pass provider='cpu' to skip the GPU check.", reason, _cuda_hint())


def create_session(path: str | os.PathLike[str], provider: str, model_id: str) -> tuple[ort.InferenceSession, str]:
    """Create an inference session for one model.

    Returns (session, used) where used is "cpu", "cuda" or "tensorrt": the
    provider that actually runs the model.  Errors from ONNX Runtime about
    the model itself propagate unchanged (the caller words them);
    `ProviderUnavailableError` is raised when an explicitly required
    accelerator cannot be used.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    path = os.fspath(path)
    quiet_ort_logging()
    if provider == "cpu":
        return _new_session(path, [_CPU]), "cpu"

    if provider == "tensorrt":
        reason = _static_reason("tensorrt") or _static_reason("cuda")
        if reason is None:
            providers = [(_TRT, _TRT_OPTIONS), (_CUDA, _CUDA_OPTIONS), _CPU]
            sess, reason = _try_accelerator(path, providers, _TRT, "tensorrt")
            if sess is not None:
                return sess, "tensorrt"
        raise ProviderUnavailableError(
            f"model {model_id!r}: provider='tensorrt' was requested but TensorRT is not usable: {reason}. "
            "Install TensorRT for this onnxruntime-gpu build, or use provider='cuda' or 'auto'."
        )

    # "cuda" and "auto"
    reason = _static_reason("cuda")
    if reason is None:
        sess, reason = _try_accelerator(path, [(_CUDA, _CUDA_OPTIONS), _CPU], _CUDA, "cuda")
        if sess is not None:
            return sess, "cuda"
    assert reason is not None
    if provider == "cuda":
        raise ProviderUnavailableError(
            f"model {model_id!r}: provider='cuda' was requested but CUDA is not usable: {reason}. "
            f"To fix, {_cuda_hint()}; or use provider='auto' (falls back to CPU) or 'cpu'."
        )
    _warn_once(reason)
    return _new_session(path, [_CPU]), "cpu"


def _try_accelerator(
    path: str, providers: list[Any], ort_name: str, short: str
) -> tuple[ort.InferenceSession | None, str | None]:
    """Create a session on an accelerator; (session, None) or (None, reason).

    A failure is attributed to the accelerator only if the same model then
    loads on CPU; otherwise the CPU error (a model problem) is raised.
    """
    try:
        with _ort_fatal_only():
            sess = _new_session(path, providers)
    except Exception as e:
        _new_session(path, [_CPU])  # raises if the model itself is broken
        reason = f"{ort_name} failed to initialise: {_first_line(str(e))}"
        _unusable[short] = reason
        return None, reason
    if ort_name in sess.get_providers():
        return sess, None
    # ORT dropped the provider without raising (its log, silenced, says why).
    reason = f"ONNX Runtime did not enable {ort_name} (it lists {sess.get_providers()})"
    _unusable[short] = reason
    return None, reason
