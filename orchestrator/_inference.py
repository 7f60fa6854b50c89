"""The supervisor's side of inference: where a tick's results come from.

Layer: orchestrator. Three sources with one interface (submit requests of
tick t; fetch results of tick t, waiting if late):
- ``ProcessInference``: the dedicated inference process, over a Channel;
- ``InlineInference``: the same engine in this process (tests, debugging);
- ``LoggedInference``: results read back from a replay log — how verify and
  replay reproduce a GPU run exactly on a CPU-only machine, without models.
"""
from __future__ import annotations

import json

import numpy as np

from ..inference import (
    K_INF_DONE, K_INF_ERROR, K_INF_EXECUTE, K_INF_INIT, K_INF_READY, K_INF_REQUEST, K_INF_SHUTDOWN,
    MODEL_STATS_DTYPE, MODEL_STATS_VERSION, build_engine, decode_model_stats, encode_model_stats, engine_info,
    execute_batch, inference_main, stats_report,
)
from ..shm_protocol import RecordBatch
from ._child import _ChildProcess
from ._errors import GroupFailedError, ModelLoadError

CHANNEL_CAPACITY_BYTES = 1 << 24
CHANNEL_MAX_RECORD_BYTES = 1 << 20
#: Loading models can take long (a real LM, a cold GPU).
READY_TIMEOUT_S = 900.0


def model_config(scenario, provider: str | None) -> dict:
    """Each model's provider is its scenario entry's, unless the command line forces one."""
    models = [{"id": m.id, "path": str(m.path), "kind": m.kind,
               "tokenizer": str(m.tokenizer) if m.tokenizer else None,
               "provider": provider or m.provider, "max_context": m.max_context, "batch": m.batch}
              for m in scenario.models]
    return {"models": models, "provider": provider or "auto"}


def _with_stats(info: list[dict], stats: np.ndarray) -> list[dict]:
    """The models' load-time info, each with its requests, runs and run_s (see stats_report)."""
    return [{**i, **r} for i, r in zip(info, stats_report(stats))]


class InlineInference:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.engine = None
        self._done: dict[int, RecordBatch] = {}
        self.info: list[dict] = []

    def start(self) -> None:
        from ..inference import InferenceError

        try:
            self.engine = build_engine(self.config, CHANNEL_MAX_RECORD_BYTES - 64)
        except InferenceError as e:
            raise ModelLoadError(str(e).splitlines()[0]) from None
        self.info = engine_info(self.engine)

    def wait_ready(self) -> None:
        pass

    def submit(self, tick: int, requests: RecordBatch) -> None:
        self._done[tick] = execute_batch(self.engine, requests, CHANNEL_MAX_RECORD_BYTES - 64)

    def results(self, tick: int) -> RecordBatch:
        return self._done.pop(tick)

    def report(self) -> list[dict]:
        """Each model's info and counters so far (the run summary's "models")."""
        stats = np.zeros(len(self.info), MODEL_STATS_DTYPE) if self.engine is None else \
            decode_model_stats(encode_model_stats(self.engine), MODEL_STATS_VERSION, len(self.info))
        return _with_stats(self.info, stats)

    def close(self) -> None:
        self.engine = None


class ProcessInference(_ChildProcess):
    """The dedicated inference process; supervised like an agent group."""

    def __init__(self, config: dict, ctx) -> None:
        self.config = config
        super().__init__(ctx, inference_main, name="wasm-engine-inference", tag="inf",
                         capacity_bytes=CHANNEL_CAPACITY_BYTES, max_record_bytes=CHANNEL_MAX_RECORD_BYTES,
                         label="inference process", index=-1, error_kind=K_INF_ERROR, shutdown_kind=K_INF_SHUTDOWN,
                         error_prefix="inference process: ")
        self.info: list[dict] = []
        self._last_done: RecordBatch | None = None  # decoded only when asked for (model_stats)
        self._ready: dict[int, RecordBatch] = {}
        self._partial: list[RecordBatch] = []

    def start(self) -> None:
        self.proc.start()
        self._one(K_INF_INIT, json.dumps(self.config).encode())

    def wait_ready(self) -> None:
        try:
            _, ready = self._collect_until(K_INF_READY, READY_TIMEOUT_S)
        except GroupFailedError as e:
            raise ModelLoadError(str(e).removeprefix("inference process: ")) from None
        self.info = json.loads(ready.payload_of(0))

    @property
    def model_stats(self) -> np.ndarray:
        """Each model's counters as of the last K_INF_DONE received (MODEL_STATS_DTYPE)."""
        done = self._last_done
        if done is None:
            return np.zeros(len(self.info), MODEL_STATS_DTYPE)
        return decode_model_stats(done.payload_of(0), int(done.headers["flags"][0]), len(self.info))

    def submit(self, tick: int, requests: RecordBatch) -> None:
        out = requests.then(K_INF_EXECUTE, tick=tick)  # headers copied, the payload shared: push copies it
        out.headers["kind"][:len(requests)] = K_INF_REQUEST
        self._push(out)

    def results(self, tick: int) -> RecordBatch:
        """Results of the requests submitted at ``tick``; waits for them if late.

        With a latency above one tick the process may already have finished
        later ticks too: one popped batch can hold several DONE markers.
        """
        while tick not in self._ready:
            b = self._pop()
            done = (b.headers["kind"] == K_INF_DONE).nonzero()[0].tolist()
            if done == [len(b) - 1] and not self._partial:  # the usual pop: one tick's results, then its marker
                body, self._last_done = b.split_last()
                self._ready[int(self._last_done.headers["tick"][0])] = body
                continue
            start = 0
            for d in done:
                self._last_done = b.slice(d, d + 1)
                self._partial.append(b.slice(start, d))
                self._ready[int(b.headers[d]["tick"])] = RecordBatch.concat(self._partial, copy=False)
                self._partial = []
                start = d + 1
            if start < len(b):
                self._partial.append(b.slice(start, len(b)))
        return self._ready.pop(tick)

    def report(self) -> list[dict]:
        """Each model's info and counters as of the last results received (the run summary's "models")."""
        return _with_stats(self.info, self.model_stats)


class LoggedInference:
    """Results exactly as the log recorded them (no model is loaded)."""

    def __init__(self, reader, latency_ticks: int) -> None:
        self.reader = reader
        self.latency = latency_ticks
        self.info: list[dict] = [{"id": "(from log)", "provider": "log"}]

    def start(self) -> None:
        pass

    def wait_ready(self) -> None:
        pass

    def submit(self, tick: int, requests: RecordBatch) -> None:
        pass

    def report(self) -> list[dict]:
        return self.info

    def results(self, tick: int) -> RecordBatch:
        from . import _runlog

        t = tick + self.latency
        if t >= self.reader.tick_count:
            return RecordBatch.empty()
        data = self.reader.read_tick(t).get(_runlog.S_INFERENCE)
        return _runlog.decode_records(data) if data is not None else RecordBatch.empty()

    def close(self) -> None:
        pass
