"""The inference engine: load models once, execute batches of requests.

This is the pure-Python core that the inference process's loop calls; it
knows nothing about IPC.  Guarantees of `InferenceEngine.execute`:

* one `Result` per `Request`, in the same order, with the same request_id;
* nothing an agent sends (malformed bytes, wrong shapes, unknown model, huge
  sizes) raises: it becomes an error `Result` with a `Status` code and a
  short UTF-8 message;
* results are a function of the request alone: batching never changes them
  (see `_tensor` and `_llm`), so repeated runs are bit-identical.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from ._errors import InferenceError
from ._llm import CausalLM
from ._models import ModelInfo, ModelSpec, RunStats, open_model, rss_bytes
from ._payloads import MAX_REQUEST_BYTES, MAX_RESULT_BYTES, Status, error_payload
from ._providers import PROVIDERS
from ._tensor import TensorModel

LOGGER = logging.getLogger("wasm_engine.inference")


@dataclass(frozen=True)
class Request:
    request_id: int
    model_index: int
    payload: bytes | bytearray | memoryview


@dataclass(frozen=True)
class Result:
    request_id: int
    status: int  # a `Status` value; 0 is success
    payload: bytes  # encoded output on success, UTF-8 error message otherwise


LoadedModel = TensorModel | CausalLM


def _results(requests: list[Request], outcomes: list) -> list[Result]:
    """`[Result(req.request_id, int(status), bytes(payload)) ...]`, built faster.

    Result is a frozen dataclass, whose __init__ stores each field through
    object.__setattr__; a tick's results are instead built as unpickling
    builds instances, by filling the instance __dict__ (same fields, same
    values, equal objects).
    """
    new = object.__new__
    out = []
    for req, (status, payload) in zip(requests, outcomes):
        r = new(Result)
        r.__dict__.update(request_id=req.request_id, status=int(status), payload=bytes(payload))
        out.append(r)
    return out


def load_model(spec: ModelSpec, provider: str = "auto", index: int = 0) -> tuple[LoadedModel, ModelInfo]:
    """Load one model (on spec.provider if set, else `provider`).

    Raises ModelLoadError / ProviderUnavailableError.
    """
    opened = open_model(spec, spec.provider or provider)
    model: LoadedModel = TensorModel(spec, opened) if spec.kind == "tensor" else CausalLM(spec, opened)
    info = ModelInfo(
        index=index,
        id=spec.id,
        kind=spec.kind,
        path=str(opened.path),
        provider=opened.provider,
        file_bytes=opened.file_bytes,
        rss_delta_bytes=max(0, rss_bytes() - opened.rss_before),
        load_seconds=time.perf_counter() - opened.t0,
        inputs=opened.inputs,
        outputs=opened.outputs,
        batching=model.batching,
        max_context=getattr(model, "max_context", None),
        vocab_size=getattr(model, "vocab_size", None),
    )
    LOGGER.info("model %r loaded on %s: %.1f MB file, RSS +%.1f MB, %.2f s%s", spec.id, info.provider.upper(),
                info.file_bytes / 1e6, info.rss_delta_bytes / 1e6, info.load_seconds,
                "" if info.batching else ", no batching")
    return model, info


class InferenceEngine:
    """Loads `models` (in order; model_index refers to this order).

    provider: default for models whose spec has none: "auto" (CUDA if usable,
    else CPU with one warning), "cuda" (required), "tensorrt" (required) or
    "cpu".
    max_result_bytes: results larger than this become TOO_LARGE errors; the
    IPC layer sets it to what its result slots can hold.
    """

    def __init__(self, models: Sequence[ModelSpec], provider: str = "auto", *,
                 max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        ids = [m.id for m in models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise InferenceError(f"duplicate model ids: {duplicates}")
        self.provider = provider
        self.max_result_bytes = int(max_result_bytes)
        self._models: list[LoadedModel] = []
        self.models: list[ModelInfo] = []  # what was loaded where, and how big it is
        for index, spec in enumerate(models):
            model, info = load_model(spec, provider, index)
            self._models.append(model)
            self.models.append(info)

    @property
    def stats(self) -> list[RunStats]:
        """Each model's counters (requests, session.run calls, time in them), in model order; live objects."""
        return [m.stats for m in self._models]

    def execute(self, requests: Iterable[Request]) -> list[Result]:
        """Execute requests (given in canonical order); one Result each, same order."""
        requests = list(requests)
        n = len(requests)
        indices = [req.model_index for req in requests]
        payloads = [req.payload for req in requests]
        if self._one_model(indices, payloads) and isinstance(self._models[indices[0]], TensorModel) \
                and len(set(map(len, payloads))) == 1:
            # One tensor model, payloads of one length: perhaps the usual tick, served as one batch.
            size = len(payloads[0])
            rows = self.execute_uniform(indices[0], np.frombuffer(b"".join(payloads), np.uint8).reshape(n, size),
                                        self.max_result_bytes)
            if rows is not None:
                data, width = rows.tobytes(), rows.shape[1]
                return _results(requests, zip(repeat(Status.OK), [data[j * width:(j + 1) * width]
                                                                  for j in range(n)]))
        return _results(requests, self.outcomes(indices, payloads))

    def outcomes(self, indices: list, payloads: list) -> list[tuple[int, bytes]]:
        """`execute` without the Request and Result objects: request i is
        (indices[i], payloads[i]); returns its (status, payload), in order.

        For callers that hold requests as arrays (the inference process) and
        would only build those objects to take them apart again.
        """
        n = len(indices)
        if n != len(payloads):
            raise ValueError(f"{n} model indices for {len(payloads)} payloads")
        if self._one_model(indices, payloads) and max(map(len, payloads)) <= MAX_REQUEST_BYTES:
            # The usual tick: every request is for one model, with an int index
            # and a bytes payload within the size limit, so _precheck passes all.
            return self._run_model(indices[0], payloads, all_bytes=True)
        return self._execute_mixed(indices, payloads)

    def _one_model(self, indices: list, payloads: list) -> bool:
        """At least one request, all for one loaded model, each with an int index and a bytes payload."""
        n = len(indices)
        return bool(n) and set(map(type, indices)) == {int} and set(map(type, payloads)) == {bytes} \
            and indices.count(indices[0]) == n and 0 <= indices[0] < len(self._models)

    def execute_uniform(self, model_index: int, payloads: np.ndarray, max_result_bytes: int) -> np.ndarray | None:
        """The usual tick without a Python object per request, or None.

        payloads: (n, size) uint8 array, one request for model `model_index`
        per row.  Returns an (n, result_size) uint8 array whose row j is the
        payload `outcomes` gives request j, every status OK; or None where
        that cannot be done in one batch (another model kind, verification
        of batching still running, any error, a result over
        max_result_bytes or the engine's limit, ...): then `outcomes` must be
        used, and nothing has changed (see TensorModel.execute_uniform).
        """
        if not 0 <= model_index < len(self._models) or payloads.shape[1] > MAX_REQUEST_BYTES:
            return None
        model = self._models[model_index]
        if not isinstance(model, TensorModel):
            return None
        try:
            rows = model.execute_uniform(np.ascontiguousarray(payloads, dtype=np.uint8),
                                         min(max_result_bytes, self.max_result_bytes))
            if rows is not None:
                model.stats.requests += len(rows)
            return rows
        except Exception:
            # A bug in the fast path: the general path still serves the tick.
            LOGGER.exception("internal error in the uniform-batch path of model %r; using the general path",
                             model.spec.id)
            return None

    def uniform_plan(self, model_index: int):
        """The native plan that served model ``model_index``'s last execute_uniform call, or None.

        An opaque handle for `run_plan`: the next tick whose requests look
        like that one's (same count, length and header bytes) can be served
        through it with a few native calls and no per-tick checks in Python.
        """
        model = self._models[model_index] if 0 <= model_index < len(self._models) else None
        return model.last_plan if isinstance(model, TensorModel) else None

    def run_plan(self, model_index: int, plan, payloads: np.ndarray, out: np.ndarray, max_result_bytes: int) -> bool:
        """Serve requests for model ``model_index`` through ``plan`` (from uniform_plan) into ``out``, or return False.

        payloads: (n, size) uint8, C-contiguous, one request per row; out:
        (n, result width) uint8, C-contiguous.  True: row j of out is the
        payload `outcomes` gives request j, every status OK, exactly as
        execute_uniform would give it.  False: execute_uniform (or outcomes)
        must serve these requests; see TensorModel.run_plan.
        """
        model = self._models[model_index]
        try:
            return model.run_plan(plan, payloads, out, min(max_result_bytes, self.max_result_bytes))
        except Exception:
            LOGGER.exception("internal error in the native uniform path of model %r; using the general path",
                             model.spec.id)
            return False

    def plan_tick(self, model_index: int, plan, out: np.ndarray, max_result_bytes: int):
        """For a caller serving many ticks like the last one through ``plan``
        (from uniform_plan) into one ``out`` array: a callable ``f(payloads)
        -> bool`` with run_plan's contract, or None where run_plan would not
        serve through the plan.  See TensorModel.plan_tick."""
        model = self._models[model_index] if 0 <= model_index < len(self._models) else None
        if not isinstance(model, TensorModel):
            return None
        return model.plan_tick(plan, out, min(max_result_bytes, self.max_result_bytes))

    def _execute_mixed(self, indices: list, payloads: list) -> list[tuple[int, bytes] | None]:
        outcomes: list[tuple[int, bytes] | None] = [None] * len(indices)
        by_model: dict[int, list[int]] = {}
        for i, (model_index, payload) in enumerate(zip(indices, payloads)):
            outcome = self._precheck(model_index, payload)
            if outcome is not None:
                outcomes[i] = outcome
            else:
                by_model.setdefault(operator.index(model_index), []).append(i)

        # Models run in order of first appearance, requests in canonical order
        # within a model.  Results do not depend on this order (each request's
        # result is a function of the request alone) but a fixed order keeps
        # timing and logs reproducible too.
        for model_index, members in by_model.items():
            group = self._run_model(model_index, [payloads[i] for i in members])
            for i, outcome in zip(members, group):
                outcomes[i] = outcome
        return outcomes

    def _run_model(self, model_index: int, payloads: list, all_bytes: bool = False) -> list[tuple[int, bytes]]:
        """One model's outcomes for its requests' payloads (which passed _precheck)."""
        model = self._models[model_index]
        model.stats.requests += len(payloads)
        try:
            if not all_bytes:
                payloads = [p if type(p) is bytes else memoryview(p).cast("B") for p in payloads]
            return model.execute(payloads, self.max_result_bytes)
        except Exception:
            # A bug in the engine must not take down the process or the tick.
            LOGGER.exception("internal error while executing %d request(s) for model %r",
                             len(payloads), model.spec.id)
            failure = (Status.INTERNAL, error_payload("internal inference error (see inference log)"))
            return [failure] * len(payloads)

    def _precheck(self, model_index, payload) -> tuple[int, bytes] | None:
        """Checks that need no model: index and size.  None if the request may proceed."""
        try:
            index = operator.index(model_index)
        except TypeError:
            index = -1
        if not 0 <= index < len(self._models):
            return Status.UNKNOWN_MODEL, error_payload(
                f"unknown model index {model_index} (engine has {len(self._models)} model(s))")
        try:
            size = memoryview(payload).nbytes
        except TypeError:
            return Status.MALFORMED, error_payload("payload is not a bytes-like object")
        if size > MAX_REQUEST_BYTES:
            return Status.TOO_LARGE, error_payload(f"request is {size} bytes, limit {MAX_REQUEST_BYTES}")
        return None
