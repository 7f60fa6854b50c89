"""Causal-LM text generation with a KV cache.

Supported model layout (what Hugging Face Optimum writes for
`--task text-generation-with-past`, and what scripts/make_tiny_lm.py builds):

  inputs   input_ids [batch, seq]                   int64 (or int32)
           attention_mask [batch, past + seq]        int64 (or int32)
           position_ids [batch, seq]                 optional
           past_key_values.{i}.key / .value          [batch, heads, past, head_dim], i = 0..L-1
           use_cache_branch [1] bool                 optional (Optimum "merged" decoders)
  outputs  logits [batch, seq, vocab]
           present.{i}.key / .value                  [batch, heads, past + seq, head_dim]

Dtypes and the head/head_dim sizes are read from the model's metadata, so
float16 caches and grouped-query attention work unchanged.

Batching: requests whose prompts encode to the same number of tokens run as
one batch (no padding, so every row gets the same arithmetic it would get
alone); rows that finish are sliced out of the KV cache.  Prompts of other
lengths run in separate batches.  As for tensor models (see `_tensor`),
batching is trusted only after VERIFY_MEMBERS requests gave bit-identical
logits at every step batched and alone; one mismatch turns it off for the
model.  See docs/INFERENCE.md.

Per step, the next tokens of all rows are chosen together (`TokenPicker`:
one argmax for the greedy rows, shared array work for the sampled ones, each
with its own seeded generator) and the stop / length / context checks are
array operations; the tokens are exactly those of `Sampler` row by row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._errors import ModelLoadError
from ._models import ModelSpec, OpenedModel, RunStats, TensorInfo, ort_message, timed_run
from ._payloads import (
    FinishReason,
    GenerateResult,
    PayloadError,
    Status,
    aligned_copy,
    aligned_empty,
    check_generation_params,
    decode_generate_request,
    encode_generate_result,
    error_payload,
    f32,
)

LOGGER = logging.getLogger("wasm_engine.inference")

Outcome = tuple[int, bytes]

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_INT_TYPES = {"int64": np.int64, "int32": np.int32}
_FLOAT_TYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
_CONTEXT_METADATA_KEYS = ("max_position_embeddings", "n_positions", "max_context")

# Prompts whose token ids are remembered: up to this many characters, this many prompts.
_PROMPT_CACHE_CHARS = 512
_PROMPT_CACHE_ENTRIES = 512

# forward()'s masks and positions of one-token steps kept, by (batch, past length).
_STEP_INPUT_CACHE_ENTRIES = 4096

# Requests that must generate identically batched and alone (same logits bits
# at every step) before batches run without that check.
VERIFY_MEMBERS = 8


class ModelOutputError(Exception):
    """The model produced logits that cannot be sampled from (NaN, +inf, all -inf)."""


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------


class Sampler:
    """Turns one row of logits into a token id, deterministically.

    Greedy (temperature 0): the highest logit; ties go to the lowest token id.
    Sampling: logits / temperature; optional top-k (k highest, ties to lower
    ids) and top-p (smallest prefix of the descending-probability order whose
    mass reaches top_p); then inverse-CDF sampling with one uniform number.

    Random numbers: Philox4x64-10 keyed with the request's 64-bit seed,
    counter starting at 0, one raw 64-bit output per sampled token, mapped to
    u = (x >> 11) * 2**-53 in [0, 1).  The raw Philox stream is fixed by its
    algorithm (unlike numpy's distribution methods, which may change between
    numpy versions), so the same seed gives the same numbers on every machine.
    Probabilities are computed in float64 with a sequential cumulative sum, so
    the only platform-dependent step is exp(), which can differ in the last
    bit between libm implementations; that changes a token only if u lands
    within ~1e-16 of a bucket boundary.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, seed: int) -> None:
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.greedy = self.temperature == 0.0
        self._bitgen = None if self.greedy else np.random.Philox(key=int(seed))

    def uniform(self) -> float:
        assert self._bitgen is not None
        return (int(self._bitgen.random_raw()) >> 11) * (1.0 / 9007199254740992.0)  # 2**-53

    def __call__(self, logits: np.ndarray) -> int:
        z = np.asarray(logits, dtype=np.float64)
        if np.isnan(z).any() or np.isposinf(z).any():
            raise ModelOutputError("model produced NaN or +inf logits")
        if self.greedy:
            if np.isneginf(z).all():
                raise ModelOutputError("model produced only -inf logits")
            return int(np.argmax(z))  # argmax returns the first maximum
        z = z / self.temperature
        candidates: np.ndarray | None = None
        if self.top_k > 0 or self.top_p < 1.0:
            # Stable sort of -z: descending logits, equal logits by ascending id.
            order = np.argsort(-z, kind="stable")
            if self.top_k > 0:
                order = order[: self.top_k]
            candidates = order
            z = z[order]
        zmax = z.max()
        if not np.isfinite(zmax):
            raise ModelOutputError("model produced only -inf logits")
        cdf = np.cumsum(np.exp(z - zmax))  # unnormalised; cumsum adds strictly left to right
        if self.top_p < 1.0:
            keep = int(np.searchsorted(cdf, self.top_p * cdf[-1], side="left")) + 1
            cdf = cdf[: min(keep, len(cdf))]
        target = self.uniform() * cdf[-1]
        # First bucket whose upper edge exceeds the target; zero-probability
        # tokens have empty buckets and can never be chosen.
        i = min(int(np.searchsorted(cdf, target, side="right")), len(cdf) - 1)
        return int(candidates[i]) if candidates is not None else i


class TokenPicker:
    """Chooses the next token for many rows at once, exactly as `Sampler` would row by row.

    One per generation batch; `params[k]` are job k's sampling parameters
    (temperature, top_k, top_p, seed) and job k keeps its own Philox stream,
    drawing one number per sampled token as `Sampler` does, so its tokens do
    not depend on the other rows.  Greedy rows take one argmax over all of
    them; sampled rows share the sort, exp and cumulative sums (computed per
    row with the same float64 operations as `Sampler`, so the same bits) and
    each draws its own uniform number.  Logits with a NaN, +inf or an all
    -inf row go through `Sampler` row by row, which raises ModelOutputError
    as before.
    """

    def __init__(self, params: list[tuple[float, int, float, int]]) -> None:
        self.samplers = [Sampler(*p) for p in params]
        self.greedy = np.array([s.greedy for s in self.samplers], dtype=bool)
        self.all_greedy = bool(self.greedy.all())
        self.temperature = np.array([s.temperature for s in self.samplers], dtype=np.float64)
        self.top_k = np.array([s.top_k for s in self.samplers], dtype=np.int64)
        self.top_p = np.array([s.top_p for s in self.samplers], dtype=np.float64)
        self._arange = np.arange(len(params))

    def __call__(self, logits: np.ndarray, jobs: np.ndarray) -> np.ndarray:
        """logits [n, vocab]; jobs[r]: the job whose logits row r is.  Returns int64 token ids [n]."""
        if self.all_greedy:
            # One pass: argmax returns a row's first NaN if it has one, else
            # its first maximum (+inf included), and 0 for a row of only
            # -inf, so the chosen logits are all finite exactly when no row
            # is one Sampler refuses.  float -> float64 is exact, so the
            # argmax (first maximum) is Sampler's.
            chosen = logits.argmax(axis=1)
            # Their float64 sum is finite exactly when each is (a sum of
            # finite float64 values could only overflow for float64 logits
            # near 1e308, which then just take Sampler's row-by-row path).
            if math.isfinite(logits[self._rows(len(chosen)), chosen].sum(dtype=np.float64)):
                return chosen if chosen.dtype == np.int64 else chosen.astype(np.int64)
            return np.array([self.samplers[k](logits[r]) for r, k in enumerate(jobs.tolist())], dtype=np.int64)
        if not np.isfinite(logits.max(axis=1)).all():
            # A NaN or +inf somewhere, or a row of only -inf (max propagates
            # NaN): let Sampler find the row and raise its error.
            return np.array([self.samplers[k](logits[r]) for r, k in enumerate(jobs.tolist())], dtype=np.int64)
        greedy = self.greedy[jobs]
        out = np.empty(len(jobs), dtype=np.int64)
        if greedy.any():
            rows = np.flatnonzero(greedy)
            out[rows] = logits[rows].argmax(axis=1)
        sampled = ~greedy
        if sampled.any():
            rows = np.flatnonzero(sampled)
            out[rows] = self._sample(logits[rows], jobs[rows])
        return out

    def _rows(self, n: int) -> np.ndarray:
        """0..n-1 (kept: rows only shrink during a generation)."""
        if self._arange.size < n:
            self._arange = np.arange(n)
        return self._arange[:n]

    def _sample(self, logits: np.ndarray, jobs: np.ndarray) -> np.ndarray:
        """Sampler.__call__ for sampled rows (finite row maxima), vectorised over rows."""
        z = logits.astype(np.float64) / self.temperature[jobs][:, None]
        if not np.isfinite(z.max(axis=1)).all():
            # Float64 logits can overflow when divided by the temperature;
            # Sampler raises for such a row.
            return np.array([self.samplers[k](logits[r]) for r, k in enumerate(jobs.tolist())], dtype=np.int64)
        vocab = z.shape[1]
        top_k, top_p = self.top_k[jobs], self.top_p[jobs]
        out = np.empty(len(jobs), dtype=np.int64)
        sort = (top_k > 0) | (top_p < 1.0)
        for part in (np.flatnonzero(~sort), np.flatnonzero(sort)):
            if not part.size:
                continue
            zp = z[part]
            order = None
            if sort[part[0]]:
                # Stable sort of -z: descending logits, equal logits by ascending id.
                order = np.argsort(-zp, axis=1, kind="stable")
                zp = np.take_along_axis(zp, order, axis=1)
            k = top_k[part]
            n_keep = np.where(k > 0, np.minimum(k, vocab), vocab)  # candidates after top-k
            # The maximum of a descending row's top-k prefix is the row's maximum.
            zmax = zp.max(axis=1)
            cdf = np.cumsum(np.exp(zp - zmax[:, None]), axis=1)  # per row, strictly left to right
            cols = np.arange(vocab)
            rows = np.arange(part.size)
            p = top_p[part]
            nucleus = p < 1.0
            if nucleus.any():
                # searchsorted(cdf[:n_keep], top_p * total, "left") + 1 = count(cdf < threshold) + 1
                threshold = p * cdf[rows, n_keep - 1]
                keep = ((cdf < threshold[:, None]) & (cols < n_keep[:, None])).sum(axis=1) + 1
                n_keep = np.where(nucleus, np.minimum(keep, n_keep), n_keep)
            # One raw Philox output per sampled token, from the job's own generator.
            u = np.array([self.samplers[j].uniform() for j in jobs[part].tolist()], dtype=np.float64)
            target = u * cdf[rows, n_keep - 1]
            # searchsorted(cdf, target, "right") = count(cdf <= target) (cdf is non-decreasing).
            i = ((cdf <= target[:, None]) & (cols < n_keep[:, None])).sum(axis=1)
            i = np.minimum(i, n_keep - 1)
            out[part] = order[rows, i] if order is not None else i
        return out


# ----------------------------------------------------------------------------
# Model layout
# ----------------------------------------------------------------------------


@dataclass
class _PastSlot:
    input_name: str
    output_name: str
    dtype: type
    shape: tuple  # template; shape[seq_axis] is the past length
    seq_axis: int


@dataclass
class Layout:
    input_ids_dtype: type
    mask_name: str
    mask_dtype: type
    position_dtype: type | None  # None: the model has no position_ids input
    cache_branch: bool  # has a use_cache_branch input
    past: list[_PastSlot]
    logits_name: str
    vocab_size: int | None


def inspect_layout(spec: ModelSpec, opened: OpenedModel) -> Layout:
    """Check that the model has the causal-LM layout; raise ModelLoadError if not."""

    def fail(problem: str, hint: str | None = None) -> ModelLoadError:
        return ModelLoadError(spec.id, opened.path, problem, hint or (
            "A causal_lm needs inputs input_ids, attention_mask, [position_ids], past_key_values.{i}.key/value "
            "and outputs logits, present.{i}.key/value; export with e.g. "
            "`optimum-cli export onnx --task text-generation-with-past`."))

    inputs = {t.name: t for t in opened.inputs}
    outputs = {t.name: t for t in opened.outputs}
    for required in ("input_ids", "attention_mask"):
        if required not in inputs:
            raise fail(f"no input named {required!r} (inputs: {sorted(inputs)})")
    if "logits" not in outputs:
        raise fail(f"no output named 'logits' (outputs: {sorted(outputs)})")

    ids_shape = inputs["input_ids"].shape
    if ids_shape is not None and len(ids_shape) == 2 and isinstance(ids_shape[1], int):
        raise fail(f"input_ids has a fixed sequence length of {ids_shape[1]} (an Optimum "
                   "'decoder_with_past_model.onnx'?)",
                   "Use the model.onnx (or decoder_model_merged.onnx) of the export, which takes whole prompts.")

    def int_dtype(t: TensorInfo) -> type:
        if t.dtype not in _INT_TYPES:
            raise fail(f"input {t.name!r} has type {t.dtype}; expected int64 or int32")
        return _INT_TYPES[t.dtype]

    past_names: dict[int, dict[str, TensorInfo]] = {}
    for name, t in inputs.items():
        m = _PAST.match(name)
        if m:
            past_names.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif name not in ("input_ids", "attention_mask", "position_ids", "use_cache_branch"):
            raise fail(f"unexpected input {name!r}; the engine cannot feed it")
    if not past_names:
        raise fail("no past_key_values.* inputs: the model was exported without a KV cache")
    n_layers = len(past_names)
    if sorted(past_names) != list(range(n_layers)) or any(len(v) != 2 for v in past_names.values()):
        raise fail(f"past_key_values inputs are not complete key/value pairs for layers 0..{n_layers - 1}")

    past: list[_PastSlot] = []
    for i in range(n_layers):
        for kv in ("key", "value"):
            t = past_names[i][kv]
            out_name = f"present.{i}.{kv}"
            if out_name not in outputs:
                raise fail(f"input {t.name!r} has no matching output {out_name!r}")
            if t.dtype not in _FLOAT_TYPES:
                raise fail(f"input {t.name!r} has type {t.dtype}; expected a float type")
            shape = t.shape
            if shape is None or len(shape) != 4:
                raise fail(f"input {t.name!r} has shape {shape}; expected [batch, heads, past, head_dim]")
            # The past length is the one dynamic dim besides the batch axis.
            dynamic = [ax for ax in (1, 2, 3) if not isinstance(shape[ax], int)]
            if len(dynamic) != 1:
                # Fall back to the usual axis 2 if heads/head_dim are static in the output.
                out_shape = outputs[out_name].shape or ()
                if len(out_shape) == 4 and isinstance(out_shape[1], int) and isinstance(out_shape[3], int):
                    shape = (shape[0], out_shape[1], shape[2], out_shape[3])
                    dynamic = [2]
                else:
                    raise fail(f"cannot tell heads and head_dim from the shape {shape} of {t.name!r}",
                               "Export the model with static head counts (Optimum does).")
            past.append(_PastSlot(t.name, out_name, _FLOAT_TYPES[t.dtype], tuple(shape), dynamic[0]))

    presents = [n for n in outputs if _PRESENT.match(n)]
    if len(presents) != 2 * n_layers:
        raise fail(f"{len(presents)} present.* outputs for {n_layers} past layers")

    logits = outputs["logits"]
    if logits.dtype not in _FLOAT_TYPES:
        raise fail(f"output 'logits' has type {logits.dtype}; expected a float type")
    vocab = logits.shape[-1] if logits.shape and isinstance(logits.shape[-1], int) else None

    cache_branch = "use_cache_branch" in inputs
    if cache_branch and inputs["use_cache_branch"].dtype != "bool":
        raise fail("input 'use_cache_branch' is not bool")
    return Layout(
        input_ids_dtype=int_dtype(inputs["input_ids"]),
        mask_name="attention_mask",
        mask_dtype=int_dtype(inputs["attention_mask"]),
        position_dtype=int_dtype(inputs["position_ids"]) if "position_ids" in inputs else None,
        cache_branch=cache_branch,
        past=past,
        logits_name="logits",
        vocab_size=vocab,
    )


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------


@dataclass
class _Job:
    index: int  # position in the payload list
    prompt_ids: list[int]
    max_new_tokens: int
    stops: frozenset[int]
    sampling: tuple[float, int, float, int]  # temperature, top_k, top_p, seed
    return_ids: bool
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None


class CausalLM:
    kind = "causal_lm"

    def __init__(self, spec: ModelSpec, opened: OpenedModel) -> None:
        self.spec = spec
        self.session = opened.session
        self.stats = RunStats()
        self.layout = inspect_layout(spec, opened)
        self.tokenizer = _load_tokenizer(spec, opened.path)
        tok_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if self.layout.vocab_size is not None and tok_vocab > self.layout.vocab_size:
            raise ModelLoadError(spec.id, opened.path,
                                 f"the tokenizer has {tok_vocab} tokens but the model's logits only "
                                 f"{self.layout.vocab_size}",
                                 "Use the tokenizer.json exported with this model.")
        self.vocab_size = self.layout.vocab_size
        self.max_context = spec.max_context or _context_from_metadata(opened.metadata)
        self.batching = spec.batch
        self.batch_verified = 0  # requests verified batched == alone; -1: batching changes results
        g = spec.generation
        self.defaults = (g.max_new_tokens, f32(g.temperature), int(g.top_k), f32(g.top_p), int(g.seed),
                         tuple(int(t) for t in g.stop_token_ids))
        self.output_names = [self.layout.logits_name] + [p.output_name for p in self.layout.past]
        self._ones = aligned_empty((0,), self.layout.mask_dtype)  # see forward()
        self._step_inputs: dict[tuple[int, int], tuple] = {}  # see forward()
        self._prompt_ids: dict[str, list[int]] = {}  # prompt -> token ids, see _make_job

    # -- model calls ---------------------------------------------------------

    def empty_past(self, batch: int) -> list[np.ndarray]:
        out = []
        for slot in self.layout.past:
            shape = [batch] + [0 if ax == slot.seq_axis else int(d) for ax, d in enumerate(slot.shape) if ax > 0]
            arr = aligned_empty(shape, slot.dtype)
            arr[...] = 0
            out.append(arr)
        return out

    def forward(self, input_ids: np.ndarray, past: list[np.ndarray] | None = None,
                past_len: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
        """One model call: logits [batch, seq, vocab] and the new KV cache.

        With past=None the whole sequence is processed from scratch (no cache).
        """
        batch, seq = input_ids.shape
        if past is None:
            past, past_len = self.empty_past(batch), 0
        lay = self.layout
        # The mask (all ones: a view of one buffer of ones) and the positions
        # of a one-token step depend only on (batch, past_len), which repeat
        # from tick to tick: kept (ORT does not write to its inputs; nothing
        # here does).  A prompt's, once per generation and up to
        # batch x context positions, is not.
        if seq == 1:
            key = (batch, past_len)
            fixed = self._step_inputs.get(key)
            if fixed is None:
                if len(self._step_inputs) >= _STEP_INPUT_CACHE_ENTRIES:
                    self._step_inputs.clear()
                fixed = self._step_inputs[key] = self._mask_and_positions(batch, past_len, seq)
        else:
            fixed = self._mask_and_positions(batch, past_len, seq)
        mask, pos = fixed
        # Integer inputs (token ids, positions) are read by exact integer
        # kernels (gathers, casts), so unlike float data their alignment
        # cannot change any result: the next tokens, already an int64 array,
        # are fed as they are.
        if input_ids.dtype != lay.input_ids_dtype or not input_ids.flags.c_contiguous:
            input_ids = aligned_copy(input_ids, lay.input_ids_dtype)
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids, lay.mask_name: mask}
        if pos is not None:
            feeds["position_ids"] = pos
        if lay.cache_branch:
            feeds["use_cache_branch"] = np.array([past_len > 0], dtype=np.bool_)
        for slot, arr in zip(lay.past, past):
            feeds[slot.input_name] = arr
        outs = timed_run(self.stats, self.session.run, self.output_names, feeds)
        return outs[0], outs[1:]

    def _mask_and_positions(self, batch: int, past_len: int, seq: int) -> tuple[np.ndarray, np.ndarray | None]:
        """forward()'s attention mask (all ones) and position ids for this shape."""
        lay = self.layout
        size = batch * (past_len + seq)
        if self._ones.size < size:
            self._ones = aligned_empty((max(size, 2 * self._ones.size),), lay.mask_dtype)
            self._ones[...] = 1
        mask = self._ones[:size].reshape(batch, past_len + seq)
        pos = None
        if lay.position_dtype is not None:
            pos = aligned_empty((batch, seq), lay.position_dtype)
            pos[...] = np.arange(past_len, past_len + seq, dtype=lay.position_dtype)
        return mask, pos

    # -- requests ------------------------------------------------------------

    def _make_job(self, index: int, payload: memoryview) -> _Job:
        req = decode_generate_request(payload)
        if req.use_defaults:
            max_new, temp, top_k, top_p, seed, stops = self.defaults
            stops = stops + tuple(req.stop_token_ids)
            check_generation_params(max_new, temp, top_k, top_p, seed, stops)
        else:
            max_new, temp, top_k, top_p, seed, stops = (req.max_new_tokens, req.temperature, req.top_k, req.top_p,
                                                        req.seed, tuple(req.stop_token_ids))
        ids = self._prompt_ids.get(req.prompt)
        if ids is None:
            ids = self.tokenizer.encode(req.prompt).ids
            if len(req.prompt) <= _PROMPT_CACHE_CHARS:
                # Tokenising is a pure function of the prompt; agents repeat prompts.
                if len(self._prompt_ids) >= _PROMPT_CACHE_ENTRIES:
                    self._prompt_ids.clear()
                self._prompt_ids[req.prompt] = ids
        if not ids:
            raise PayloadError(Status.BAD_INPUT, "prompt encodes to zero tokens")
        if self.max_context is not None and len(ids) > self.max_context:
            raise PayloadError(Status.TOO_LARGE,
                               f"prompt is {len(ids)} tokens; model {self.spec.id!r} has a context of "
                               f"{self.max_context}")
        return _Job(index=index, prompt_ids=list(ids), max_new_tokens=max_new, stops=frozenset(stops),
                    sampling=(temp, top_k, top_p, seed), return_ids=req.return_token_ids)

    def execute(self, payloads: list[memoryview], max_result_bytes: int) -> list[Outcome]:
        """Serve a group of generate requests; one outcome per payload, in order."""
        outcomes: list[Outcome | None] = [None] * len(payloads)
        groups: dict[int, list[_Job]] = {}
        for i, p in enumerate(payloads):
            try:
                job = self._make_job(i, p)
            except PayloadError as e:
                outcomes[i] = (e.status, error_payload(str(e)))
                continue
            # Only prompts of equal token length share a batch (no padding).
            key = len(job.prompt_ids) if self.batching else -1 - i
            groups.setdefault(key, []).append(job)

        for jobs in groups.values():  # in order of first appearance
            for job, outcome in zip(jobs, self._run_group(jobs, max_result_bytes)):
                outcomes[job.index] = outcome
        return [o if o is not None else (Status.INTERNAL, b"no outcome") for o in outcomes]

    def _run_group(self, jobs: list[_Job], max_result_bytes: int) -> list[Outcome]:
        """Outcomes for jobs with equal prompt lengths: batched if trusted, else one by one."""

        def alone(traces: list | None = None) -> list[Outcome]:
            out = []
            for n, job in enumerate(jobs):
                try:
                    self._generate([job], None if traces is None else [traces[n]])
                    out.append(self._encode(job, max_result_bytes))
                except Exception as e:
                    out.append(self._failure(e))
            return out

        if len(jobs) < 2 or not self.batching or self.batch_verified < 0:
            return alone()
        if self.batch_verified >= VERIFY_MEMBERS:
            try:
                self._generate(jobs)
                return [self._encode(job, max_result_bytes) for job in jobs]
            except Exception:
                # Run the members one by one so only the culprit gets the error.
                for job in jobs:
                    job.generated.clear()
                    job.finish = None
                return alone()

        # Not yet trusted: generate batched on copies, then alone (returned).
        copies = [dataclasses.replace(job, generated=[], finish=None) for job in jobs]
        batched_traces = [hashlib.blake2b() for _ in jobs]
        try:
            self._generate(copies, batched_traces)
        except Exception:
            batched_traces = None
        traces = [hashlib.blake2b() for _ in jobs]
        results = alone(traces)
        if batched_traces is None or any(status != Status.OK for status, _ in results):
            return results  # failures prove nothing about batching
        same = all(a.digest() == b.digest() and c.generated == j.generated
                   for a, b, c, j in zip(batched_traces, traces, copies, jobs))
        if same:
            self.batch_verified += len(jobs)
        else:
            self.batch_verified = -1
            LOGGER.info("model %r: batched generation differs from unbatched; requests will run one at a time",
                        self.spec.id)
        return results

    def _failure(self, e: Exception) -> Outcome:
        if isinstance(e, ModelOutputError):
            return Status.MODEL_ERROR, error_payload(f"model {self.spec.id!r}: {e}")
        if isinstance(e, MemoryError):
            return Status.TOO_LARGE, error_payload(f"model {self.spec.id!r}: out of memory")
        LOGGER.debug("generation failed", exc_info=e)
        return Status.MODEL_ERROR, error_payload(f"model {self.spec.id!r}: {ort_message(e)}")

    def _encode(self, job: _Job, max_result_bytes: int) -> Outcome:
        assert job.finish is not None
        text_ids = job.generated[:-1] if job.finish == FinishReason.STOP_TOKEN else job.generated
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        payload = encode_generate_result(GenerateResult(
            text=text,
            finish_reason=job.finish,
            n_prompt_tokens=len(job.prompt_ids),
            n_generated_tokens=len(job.generated),
            token_ids=tuple(job.generated) if job.return_ids else None,
        ))
        if len(payload) > max_result_bytes:
            return Status.TOO_LARGE, error_payload(f"result is {len(payload)} bytes, limit {max_result_bytes}")
        return Status.OK, payload

    def _generate(self, jobs: list[_Job], traces: list | None = None) -> None:
        """Generate for jobs whose prompts have the same token length, as one batch.

        Every step feeds all unfinished rows; a finished row is removed from
        the batch (and its KV cache rows dropped), which does not change the
        arithmetic of the remaining rows.  With `traces` (one hash per job) the
        logits each job sampled from are hashed, to compare batched and
        unbatched runs.

        Rows advance in lockstep, so the per-step bookkeeping (token choice,
        stop tokens, token and context limits) is done with arrays over the
        active rows; each job's `generated` list and `finish` are filled in
        when it finishes.
        """
        active = [k for k, job in enumerate(jobs) if not self._finished(job)]
        if not active:
            return
        picker = TokenPicker([job.sampling for job in jobs])
        tokens = np.array([jobs[k].prompt_ids for k in active], dtype=np.int64)
        # Per row of this step's batch (rows are dropped as their jobs finish):
        act = np.array(active, dtype=np.intp)  # the row's job
        limit = []  # steps after which the job must stop: max_new_tokens reached or context full
        for k in active:
            job = jobs[k]
            steps = job.max_new_tokens - len(job.generated)
            if self.max_context is not None:
                steps = min(steps, self.max_context - len(job.prompt_ids) - len(job.generated) + 1)
            limit.append(steps)
        limits = np.array(limit, dtype=np.int64)
        next_limit = int(limits.min())
        stops = None  # stop token ids, padded with -1 (matches no token)
        n_stops = max(len(jobs[k].stops) for k in active)
        if n_stops:
            stops = np.full((len(active), n_stops), -1, dtype=np.int64)
            for row, k in enumerate(active):
                stops[row, :len(jobs[k].stops)] = sorted(jobs[k].stops)
        new = np.empty((len(active), min(64, int(limits.max()))), dtype=np.int64)  # tokens of this call, grown
        past: list[np.ndarray] | None = None
        past_len = 0
        step = 0  # tokens generated by every active row in this call
        while True:
            logits, present = self.forward(tokens, past, past_len)
            past_len += tokens.shape[1]
            last = logits[:, -1, :]
            if traces is not None:
                for row, k in enumerate(act.tolist()):
                    traces[k].update(np.ascontiguousarray(last[row]).tobytes())
            chosen = picker(last, act)
            if step == new.shape[1]:
                new = np.concatenate([new, np.empty_like(new)], axis=1)
            new[:, step] = chosen
            step += 1
            # _finished(), vectorised: a stop token, else max_new_tokens, else the context limit.
            hit_stop = (stops == chosen[:, None]).any(axis=1) if stops is not None else None
            if step >= next_limit or (hit_stop is not None and hit_stop.any()):
                done = limits <= step
                if hit_stop is not None:
                    done |= hit_stop
                for row in np.flatnonzero(done).tolist():
                    job = jobs[int(act[row])]
                    job.generated.extend(new[row, :step].tolist())
                    job.finish = (FinishReason.STOP_TOKEN if hit_stop is not None and hit_stop[row] else
                                  FinishReason.MAX_NEW_TOKENS if len(job.generated) >= job.max_new_tokens else
                                  FinishReason.CONTEXT_FULL)
                keep = np.flatnonzero(~done)
                if not keep.size:
                    return
                present = [np.take(p, keep, axis=0, out=aligned_empty((keep.size,) + p.shape[1:], p.dtype))
                           for p in present]
                act, chosen, limits, new = act[keep], chosen[keep], limits[keep], new[keep]
                if stops is not None:
                    stops = stops[keep]
                next_limit = int(limits.min())
            past = present
            tokens = chosen.reshape(len(act), 1)

    def _finished(self, job: _Job) -> bool:
        """Set job.finish if the job cannot or need not generate another token."""
        if job.generated and job.generated[-1] in job.stops:
            job.finish = FinishReason.STOP_TOKEN
        elif len(job.generated) >= job.max_new_tokens:
            job.finish = FinishReason.MAX_NEW_TOKENS
        elif self.max_context is not None and len(job.prompt_ids) + len(job.generated) > self.max_context:
            # The next step would feed a token at position >= max_context.
            job.finish = FinishReason.CONTEXT_FULL
        return job.finish is not None


def _context_from_metadata(meta: dict[str, str]) -> int | None:
    for key in _CONTEXT_METADATA_KEYS:
        try:
            value = int(meta[key])
        except (KeyError, ValueError):
            continue
        if value > 0:
            return value
    return None


def _load_tokenizer(spec: ModelSpec, model_path: Path):
    from tokenizers import Tokenizer

    path = Path(spec.tokenizer_path) if spec.tokenizer_path is not None else model_path.parent / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(spec.id, model_path, f"tokenizer file not found: {path}",
                             "Set tokenizer_path to the model's tokenizer.json (Optimum writes it next to model.onnx).")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(spec.id, model_path, f"cannot read tokenizer {path}: {first}",
                             "Use a Hugging Face tokenizers tokenizer.json file.") from None
