"""Model specifications and the kind-independent part of loading a model.

Loading happens once, when the engine is built.  Every problem found here is
reported as a `ModelLoadError` naming the model id, the path and a remedy, so
a scenario author sees one sentence instead of an ONNX Runtime stack trace.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from ._errors import InferenceError, ModelLoadError
from ._payloads import DTYPE_CODES, ORT_TYPE_CODES, PayloadError, check_generation_params, f32
from ._providers import PROVIDERS, create_session

ModelKind = Literal["tensor", "causal_lm"]
KINDS = ("tensor", "causal_lm")

# A dimension as ONNX Runtime reports it: an int (static), a str (symbolic,
# e.g. "batch_size") or None (dynamic without a name).
Dim = int | str | None


@dataclass(frozen=True)
class GenerationParams:
    """Default generation parameters of a causal LM (used with FLAG_USE_DEFAULTS).

    temperature 0 is greedy decoding; top_k 0 and top_p 1.0 disable those
    filters.  Floats are rounded through float32 on load, the wire format's
    precision, so defaults and explicit requests with the same values agree.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """One model of a scenario.

    id:             name used in reports and error messages.
    path:           the .onnx file (external-data files next to it are found by ORT).
    kind:           "tensor" (tensors in, tensors out) or "causal_lm" (text generation).
    tokenizer_path: causal_lm only; defaults to tokenizer.json next to the model.
    generation:     causal_lm only; defaults applied to requests that ask for them.
    max_context:    causal_lm only; max tokens the model can attend to (prompt +
                    generated).  None: read "max_position_embeddings" (or
                    "n_positions") from the model's metadata, else unlimited.
    batch:          allow batching this model's requests (it is still used
                    only once verified; see docs/INFERENCE.md).  Set False for
                    a model whose rows are not independent (e.g. it normalises
                    over the batch axis).
    provider:       "auto", "cuda", "tensorrt" or "cpu"; None: the engine's.
    """

    id: str
    path: str | os.PathLike[str]
    kind: ModelKind = "tensor"
    tokenizer_path: str | os.PathLike[str] | None = None
    generation: GenerationParams = field(default_factory=GenerationParams)
    max_context: int | None = None
    batch: bool = True
    provider: str | None = None


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of a model as ONNX Runtime describes it."""

    name: str
    dtype: str  # numpy dtype name ("float32"), or the ORT type string if unsupported
    dtype_code: int | None  # payload dtype code, None if not representable
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ModelInfo:
    """What the engine reports about a loaded model."""

    index: int
    id: str
    kind: ModelKind
    path: str
    provider: str  # "cpu", "cuda" or "tensorrt": what actually runs it
    file_bytes: int  # size of the .onnx file (not counting external data files)
    rss_delta_bytes: int  # process RSS growth while loading (host memory only)
    load_seconds: float
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    batching: bool  # whether requests are batched into one session.run
    max_context: int | None = None  # causal_lm
    vocab_size: int | None = None  # causal_lm (logits width)


class RunStats:
    """What one loaded model has done so far: counters, never part of a result.

    requests: requests routed to the model (error results included);
    runs: ``session.run`` calls; run_ns: wall time spent inside them.  Timing
    differs from run to run, so these reach the run summary only, never a
    result, the replay log or the run hash.
    """

    __slots__ = ("requests", "runs", "run_ns")

    def __init__(self) -> None:
        self.requests = self.runs = self.run_ns = 0


def timed_run(stats: RunStats, run, *args):
    """``run(*args)`` — a session's ``run`` or ``run_with_iobinding`` — counted in
    ``stats`` as one model run (a call that raises included)."""
    t0 = time.perf_counter_ns()
    try:
        return run(*args)
    finally:
        stats.runs += 1
        stats.run_ns += time.perf_counter_ns() - t0


def rss_bytes() -> int:
    """Resident set size of this process (0 if it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except Exception:
        return 0


def tensor_info(arg: Any) -> TensorInfo:
    """Convert an ORT NodeArg into a TensorInfo."""
    code = ORT_TYPE_CODES.get(arg.type)
    dtype = DTYPE_CODES[code].newbyteorder("=").name if code is not None else str(arg.type)
    shape = arg.shape
    if shape is not None:
        shape = tuple(d if isinstance(d, int | str) or d is None else None for d in shape)
    return TensorInfo(name=arg.name, dtype=dtype, dtype_code=code, shape=shape)


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def ort_message(e: BaseException) -> str:
    """First line of an ORT exception, without its '[ONNXRuntimeError] : 7 : X :' prefix."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = _ORT_PREFIX.sub("", line)
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass
class OpenedModel:
    session: ort.InferenceSession
    provider: str
    path: Path
    file_bytes: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    rss_before: int
    t0: float


def check_spec(spec: ModelSpec) -> None:
    """Validate the fields of a spec that do not need the file."""
    if not isinstance(spec.id, str) or not spec.id:
        raise ModelLoadError(str(spec.id), spec.path, "model id must be a non-empty string", "Fix the scenario entry.")
    if spec.kind not in KINDS:
        raise ModelLoadError(spec.id, spec.path, f"unknown kind {spec.kind!r}", f"Use one of {KINDS}.")
    if spec.provider is not None and spec.provider not in PROVIDERS:
        raise ModelLoadError(spec.id, spec.path, f"unknown provider {spec.provider!r}", f"Use one of {PROVIDERS}.")
    if spec.kind == "causal_lm":
        g = spec.generation
        try:
            check_generation_params(g.max_new_tokens, f32(g.temperature), g.top_k, f32(g.top_p), g.seed,
                                    tuple(g.stop_token_ids))
        except PayloadError as e:
            raise ModelLoadError(spec.id, spec.path, f"invalid default generation parameters: {e}",
                                 "Fix the model's generation defaults in the scenario.") from None
        if spec.max_context is not None and spec.max_context < 1:
            raise ModelLoadError(spec.id, spec.path, f"max_context {spec.max_context} must be >= 1",
                                 "Fix the scenario entry.")


def open_model(spec: ModelSpec, provider: str) -> OpenedModel:
    """Check the file, create the session and describe inputs/outputs."""
    check_spec(spec)
    path = Path(spec.path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise ModelLoadError(
            spec.id, path, what,
            f"Check the model path in the scenario (relative paths are resolved against {os.getcwd()}).",
        )
    file_bytes = path.stat().st_size
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    try:
        session, used = create_session(path, provider, spec.id)
    except InferenceError:
        raise  # ProviderUnavailableError: already worded
    except Exception as e:
        msg = ort_message(e)
        if "IR version" in msg:
            hint = ("The model was saved by a newer onnx than this onnxruntime reads; "
                    "re-save it with a lower IR version (onnx: model.ir_version = 10).")
        elif "opset" in msg.lower():
            hint = "Re-export the model with an opset this onnxruntime supports (e.g. 17)."
        else:
            hint = "The file is corrupt, truncated or not an ONNX model; re-export or re-download it."
        raise ModelLoadError(spec.id, path, f"ONNX Runtime cannot load it: {msg}", hint) from None
    try:
        meta = dict(session.get_modelmeta().custom_metadata_map)
    except Exception:
        meta = {}
    return OpenedModel(
        session=session,
        provider=used,
        path=path,
        file_bytes=file_bytes,
        inputs=tuple(tensor_info(a) for a in session.get_inputs()),
        outputs=tuple(tensor_info(a) for a in session.get_outputs()),
        metadata=meta,
        rss_before=rss_before,
        t0=t0,
    )
