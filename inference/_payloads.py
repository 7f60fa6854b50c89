"""Binary payload formats exchanged between agents and the inference process.

All formats are little-endian, packed (no implicit padding) and start with a
one-byte *format code*, so a payload sent to the wrong kind of model is
recognised instead of being misread.  The byte layouts are specified with
offset tables in docs/INFERENCE.md; the `struct` formats below are the single
source of truth in code.  Format codes double as version numbers: an
incompatible change gets a new code, old codes keep their meaning.

Agents' bytes are untrusted: every decoder checks sizes before it allocates
and raises `PayloadError` (carrying a `Status`) rather than anything else.
"""

from __future__ import annotations

import ctypes
import math
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ._errors import InferenceError

# --------------------------------------------------------------------------
# Status codes and limits
# --------------------------------------------------------------------------


class Status(IntEnum):
    """`Result.status` values.  Non-zero results carry a short UTF-8 message."""

    OK = 0
    MALFORMED = 1  # payload cannot be parsed (truncated, bad format code, sizes disagree)
    UNKNOWN_MODEL = 2  # model_index does not name a loaded model
    BAD_INPUT = 3  # well-formed, but does not fit the model (dtype, rank, shape, empty prompt)
    BAD_PARAMS = 4  # generation parameters out of range
    TOO_LARGE = 5  # request, prompt or result exceeds a limit
    MODEL_ERROR = 6  # ONNX Runtime rejected the inputs or failed while running
    INTERNAL = 7  # bug in the inference engine; details are in its log


FORMAT_TENSORS = 0x01  # tensor request and tensor result
FORMAT_GENERATE_REQUEST = 0x02  # causal-LM request
FORMAT_GENERATE_RESULT = 0x03  # causal-LM result

# Limits.  They bound the work and memory one agent can cause; the IPC layer
# may impose smaller ones (InferenceEngine(max_result_bytes=...)).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_RESULT_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 64
MAX_RANK = 8
MAX_PROMPT_BYTES = 64 * 1024
MAX_STOP_TOKENS = 64
MAX_NEW_TOKENS = 4096
MAX_ERROR_MESSAGE_BYTES = 256

# Generate-request flags.
FLAG_USE_DEFAULTS = 0x01  # take generation params from the model spec
FLAG_RETURN_TOKEN_IDS = 0x02  # append the generated token ids to the result
_KNOWN_REQUEST_FLAGS = FLAG_USE_DEFAULTS | FLAG_RETURN_TOKEN_IDS

# Generate-result flags.
RESULT_FLAG_TOKEN_IDS = 0x0001


class FinishReason(IntEnum):
    """Why generation ended (byte 1 of a generate result)."""

    STOP_TOKEN = 1
    MAX_NEW_TOKENS = 2
    CONTEXT_FULL = 3


class PayloadError(InferenceError):
    """A request cannot be served; becomes an error `Result` with `status`."""

    def __init__(self, status: Status, message: str) -> None:
        self.status = Status(status)
        super().__init__(message)


def error_payload(message: str) -> bytes:
    """Encode an error message, truncated to the limit on a character boundary."""
    data = message.encode("utf-8", errors="replace")
    if len(data) <= MAX_ERROR_MESSAGE_BYTES:
        return data
    # errors="ignore" drops a multi-byte character cut in half by the slice.
    return data[: MAX_ERROR_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore").encode() + b"..."


# --------------------------------------------------------------------------
# Tensors (format 0x01)
# --------------------------------------------------------------------------

# dtype codes are ONNX's TensorProto.DataType values, so that they match what
# model inspection tools (netron, onnx.helper) print.  bfloat16 and strings
# are left out: numpy has no native bfloat16 and strings have no fixed size.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # FLOAT
    2: np.dtype("u1"),  # UINT8
    3: np.dtype("i1"),  # INT8
    4: np.dtype("<u2"),  # UINT16
    5: np.dtype("<i2"),  # INT16
    6: np.dtype("<i4"),  # INT32
    7: np.dtype("<i8"),  # INT64
    9: np.dtype("?"),  # BOOL (one byte, 0 or 1)
    10: np.dtype("<f2"),  # FLOAT16
    11: np.dtype("<f8"),  # DOUBLE
    12: np.dtype("<u4"),  # UINT32
    13: np.dtype("<u8"),  # UINT64
}
# The same dtypes in native byte order, which decoded arrays use.
_NATIVE_DTYPES: dict[int, np.dtype] = {c: dt.newbyteorder("=") for c, dt in DTYPE_CODES.items()}
_CODE_BY_KIND: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): c for c, dt in DTYPE_CODES.items()}

# ONNX Runtime's type strings ("tensor(float)") for the same codes.
ORT_TYPE_CODES: dict[str, int] = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
}

_TENSORS_HEADER = struct.Struct("<BBH")  # format, n_tensors, reserved
_TENSOR_RECORD = struct.Struct("<BBH")  # dtype code, rank, reserved
_DIM = struct.Struct("<I")


# Alignment of every buffer the engine hands to ONNX Runtime.  ORT's CPU
# provider computes on the caller's buffers in place, and some of its kernels
# (ReduceSum, ReduceMean: Eigen with aligned packets) add the elements in a
# different order when the data does not start on a 16-byte boundary, so the
# same input can give different bits depending on where the allocator put
# it.  64 bytes covers every SIMD width.
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...] | list[int], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ALIGNMENT boundary."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    # This runs for every array of every tick: the address through ctypes.c_char
    # costs a fraction of raw.ctypes.data, and one ndarray call less than slicing,
    # viewing and reshaping raw (same array, same errors for unshapeable dims).
    start = (-ctypes.addressof(ctypes.c_char.from_buffer(raw))) % ALIGNMENT
    return np.ndarray(shape, dt, raw, start)


def aligned_copy(a: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
    """`a` copied (and converted to `dtype`) into an aligned buffer."""
    out = aligned_empty(a.shape, a.dtype if dtype is None else dtype)
    out[...] = a
    return out


def dtype_code(dtype: np.dtype) -> int:
    """ONNX dtype code for a numpy dtype (KeyError-free: raises ValueError)."""
    dt = np.dtype(dtype)
    code = _CODE_BY_KIND.get((dt.kind, dt.itemsize))
    if code is None:
        raise ValueError(f"dtype {dt} has no tensor payload code")
    return code


def dtype_name(code: int) -> str:
    dt = DTYPE_CODES.get(code)
    return f"{dt.name}" if dt is not None else f"code {code}"


def encode_tensors(arrays: list[np.ndarray] | tuple[np.ndarray, ...]) -> bytes:
    """Encode tensors as a format-0x01 payload (requests and results alike)."""
    if not 1 <= len(arrays) <= MAX_TENSORS:
        raise ValueError(f"between 1 and {MAX_TENSORS} tensors are encodable, got {len(arrays)}")
    parts = [_TENSORS_HEADER.pack(FORMAT_TENSORS, len(arrays), 0)]
    for a in arrays:
        a = np.asarray(a)
        code = dtype_code(a.dtype)
        if a.ndim > MAX_RANK:
            raise ValueError(f"rank {a.ndim} exceeds {MAX_RANK}")
        if any(d > 0xFFFFFFFF for d in a.shape):
            raise ValueError("dimension does not fit in u32")
        parts.append(_TENSOR_RECORD.pack(code, a.ndim, 0))
        parts.append(struct.pack(f"<{a.ndim}I", *a.shape))
        # Force little-endian C order so the bytes mean the same on every host.
        parts.append(np.ascontiguousarray(a, dtype=DTYPE_CODES[code]).tobytes())
    return b"".join(parts)


_NO_BYTES = np.empty(0, dtype=np.uint8)

# One tensor of a format-0x01 payload: (dtype code, dims, data offset, data bytes).
TensorRecord = tuple[int, tuple[int, ...], int, int]


def tensor_records(payload: bytes | bytearray | memoryview) -> list[TensorRecord]:
    """Parse the structure of a format-0x01 payload without touching its data.

    Makes exactly the checks of `decode_tensors` (same order, same messages)
    and raises `PayloadError(MALFORMED)` where it would, including for an
    empty tensor whose other dimensions multiply beyond what numpy can
    address (e.g. [0, 2**32 - 1, 2**32 - 1]): that shape cannot be allocated
    even with no elements.
    """
    buf = memoryview(payload).cast("B")
    n = len(buf)
    if n < _TENSORS_HEADER.size:
        raise PayloadError(Status.MALFORMED, f"tensor payload too short ({n} bytes)")
    fmt, count, reserved = _TENSORS_HEADER.unpack_from(buf, 0)
    if fmt != FORMAT_TENSORS:
        raise PayloadError(Status.MALFORMED, f"expected tensor payload (format 0x01), got format 0x{fmt:02x}")
    if reserved != 0:
        raise PayloadError(Status.MALFORMED, "reserved header bytes must be zero")
    if not 1 <= count <= MAX_TENSORS:
        raise PayloadError(Status.MALFORMED, f"tensor count {count} not in 1..{MAX_TENSORS}")
    off = _TENSORS_HEADER.size
    out: list[TensorRecord] = []
    for i in range(count):
        if off + _TENSOR_RECORD.size > n:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: truncated record header")
        code, rank, reserved = _TENSOR_RECORD.unpack_from(buf, off)
        off += _TENSOR_RECORD.size
        dt = DTYPE_CODES.get(code)
        if dt is None:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: unknown dtype code {code}")
        if rank > MAX_RANK or reserved != 0:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: rank {rank} > {MAX_RANK} or reserved bytes set")
        if off + 4 * rank > n:
            raise PayloadError(Status.MALFORMED, f"tensor {i}: truncated dims")
        dims = struct.unpack_from(f"<{rank}I", buf, off)
        off += 4 * rank
        # Python ints: the product cannot overflow, so a huge shape is caught
        # here by the size comparison instead of by a failed allocation.
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > n - off:
            raise PayloadError(Status.MALFORMED,
                               f"tensor {i}: shape {list(dims)} needs {nbytes} data bytes, {n - off} left")
        if not nbytes:
            # The reshape that allocating the empty array makes (see aligned_empty):
            # an empty tensor whose other dims overflow numpy's size is this
            # request's error, not the whole batch's.
            try:
                _NO_BYTES.view(dt.newbyteorder("=")).reshape(dims)
            except ValueError:
                raise PayloadError(Status.MALFORMED, f"tensor {i}: shape {list(dims)} is too large") from None
        out.append((code, dims, off, nbytes))
        off += nbytes
    if off != n:
        raise PayloadError(Status.MALFORMED, f"{n - off} trailing bytes after the last tensor")
    return out


def header_ranges(records: list[TensorRecord]) -> list[tuple[int, int]]:
    """The byte ranges of a tensor payload that are not element data (headers, dims)."""
    ranges, pos = [], 0
    for _, _, off, nbytes in records:
        ranges.append((pos, off))
        pos = off + nbytes
    return ranges


def decode_tensors(payload: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """Decode a format-0x01 payload; raises `PayloadError(MALFORMED)` if invalid.

    Returned arrays are fresh, writeable, native-endian, 64-byte aligned copies.
    """
    buf = memoryview(payload).cast("B")
    out: list[np.ndarray] = []
    for code, dims, off, nbytes in tensor_records(buf):
        dt = DTYPE_CODES[code]
        arr = aligned_empty(dims, dt.newbyteorder("="))
        if nbytes:  # frombuffer rejects offset == len(buf), which an empty tensor may have
            raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=off)
            # Any non-zero byte is True: normalising keeps bool tensors canonical.
            arr[...] = (raw != 0).reshape(dims) if code == 9 else raw.view(dt).reshape(dims)
        out.append(arr)
    return out


def decode_tensor_rows(buf: bytes | bytearray | memoryview, n: int, size: int, records: list[TensorRecord],
                       select: np.ndarray | None = None, into: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Decode many payloads that share one header layout, at once.

    buf holds n payloads of `size` bytes back to back, all with the header
    bytes that `records` (parsed from one of them) describe; select: which of
    them (None: all).  Returns one array per tensor, [m, *dims] for the m
    selected payloads, 64-byte aligned; element j along axis 0 equals what
    `decode_tensors` gives for payload j.  into: arrays to fill and return
    instead of new ones (as `decode_tensor_arrays` makes them).
    """
    m = n if select is None else len(select)
    mat = None
    out: list[np.ndarray] = []
    for k, (code, dims, off, nbytes) in enumerate(records):
        dt = DTYPE_CODES[code]
        arr = aligned_empty((m,) + tuple(dims), _NATIVE_DTYPES[code]) if into is None else into[k]
        if nbytes and m:
            src = np.uint8 if code == 9 else dt
            if select is None:
                # A strided view of the element data of every payload.
                raw = np.ndarray((m, nbytes // dt.itemsize), dtype=src, buffer=buf, offset=off,
                                 strides=(size, dt.itemsize))
            else:
                if mat is None:
                    mat = np.frombuffer(buf, dtype=np.uint8).reshape(n, size)
                raw = mat[select, off:off + nbytes].view(src)
            # Any non-zero byte is True: normalising keeps bool tensors canonical.
            arr.reshape(m, -1)[...] = (raw != 0) if code == 9 else raw
        out.append(arr)
    return out


def decode_tensor_arrays(m: int, records: list[TensorRecord]) -> list[np.ndarray]:
    """Uninitialised arrays of the shapes and dtypes decode_tensor_rows returns for m payloads."""
    return [aligned_empty((m,) + tuple(dims), _NATIVE_DTYPES[code]) for code, dims, _, _ in records]


# encode_tensor_rows: (dtype, per-row shape) of each array -> (header bytes per
# array, little-endian dtype per array); None for arrays encode_tensors rejects.
_ROW_HEADERS: dict[tuple, tuple[list[bytes], list[np.dtype]] | None] = {}
_ROW_HEADERS_MAX = 256


def _row_headers(arrays) -> tuple[list[bytes], list[np.dtype]] | None:
    sig = tuple((a.dtype, a.shape[1:]) for a in arrays)
    try:
        return _ROW_HEADERS[sig]
    except KeyError:
        pass
    heads: list[bytes] = []
    les: list[np.dtype] = []
    result: tuple[list[bytes], list[np.dtype]] | None = (heads, les)
    if not 1 <= len(arrays) <= MAX_TENSORS:
        result = None
    else:
        for a in arrays:
            code = _CODE_BY_KIND.get((a.dtype.kind, a.dtype.itemsize))
            shape = a.shape[1:]
            if code is None or len(shape) > MAX_RANK or any(d > 0xFFFFFFFF for d in shape):
                result = None
                break
            head = _TENSORS_HEADER.pack(FORMAT_TENSORS, len(arrays), 0) if not heads else b""
            heads.append(head + _TENSOR_RECORD.pack(code, len(shape), 0) + struct.pack(f"<{len(shape)}I", *shape))
            les.append(DTYPE_CODES[code])
    if len(_ROW_HEADERS) >= _ROW_HEADERS_MAX:
        _ROW_HEADERS.clear()
    _ROW_HEADERS[sig] = result
    return result


def encode_tensor_rows(arrays: list[np.ndarray] | tuple[np.ndarray, ...]) -> list[bytes]:
    """`encode_tensors([a[j] for a in arrays])` for every j, computed at once.

    Every array has the same length n along axis 0 (at least one dimension);
    result j encodes the tensors a[j].  The n payloads share their headers, so
    those are built once, and each array's element data is converted once.
    Anything `encode_tensors` would reject goes through it, so errors are the
    same too.
    """
    n = arrays[0].shape[0]
    layout = _row_headers(arrays) if n else None
    if layout is None:
        return [encode_tensors([a[j] for a in arrays]) for j in range(n)]
    heads, les = layout
    # Little-endian C order, as encode_tensors writes it.
    datas = [np.ascontiguousarray(a, dtype=le).tobytes() for a, le in zip(arrays, les)]
    if len(arrays) == 1:
        head, data = heads[0], datas[0]
        nb = len(data) // n
        return [head + data[j * nb:(j + 1) * nb] for j in range(n)]
    sizes = [len(d) // n for d in datas]
    return [b"".join([x for h, d, nb in zip(heads, datas, sizes) for x in (h, d[j * nb:(j + 1) * nb])])
            for j in range(n)]


# encode_tensor_matrix: the same signatures -> (result width, per array: header
# columns lo..hi, header bytes as uint8, end of its data columns, elements per
# row, little-endian dtype); None for arrays encode_tensors rejects.  Bounded
# like _ROW_HEADERS.
_MATRIX_PLANS: dict[tuple, tuple[int, list[tuple]] | None] = {}


def _matrix_plan(sig: tuple, arrays) -> tuple[int, list[tuple]] | None:
    try:
        return _MATRIX_PLANS[sig]
    except KeyError:
        pass
    layout = _row_headers(arrays)
    plan: tuple[int, list[tuple]] | None = None
    if layout is not None:
        parts, pos = [], 0
        for a, head, le in zip(arrays, *layout):
            count = math.prod(a.shape[1:])
            parts.append((pos, pos + len(head), np.frombuffer(head, np.uint8), pos + len(head) + count * le.itemsize,
                          count, le))
            pos = parts[-1][3]
        plan = (pos, parts)
    if len(_MATRIX_PLANS) >= _ROW_HEADERS_MAX:
        _MATRIX_PLANS.clear()
    _MATRIX_PLANS[sig] = plan
    return plan


def tensor_matrix_layout(arrays: list[np.ndarray] | tuple[np.ndarray, ...]) -> tuple[int, list[tuple]] | None:
    """Where `encode_tensor_matrix(arrays)` puts each array's bytes in a row:
    (row width, per array (header columns lo..hi, header bytes, end of its
    data columns, the little-endian dtype its data is written in)), or None
    where it would return None."""
    plan = _matrix_plan(tuple((a.dtype, a.shape[1:]) for a in arrays), arrays)
    if plan is None:
        return None
    width, parts = plan
    return width, [(lo, hi, head.tobytes(), end, le) for lo, hi, head, end, _, le in parts]


def encode_tensor_matrix(arrays: list[np.ndarray] | tuple[np.ndarray, ...]) -> np.ndarray | None:
    """`encode_tensor_rows(arrays)` as one (n, size) uint8 matrix: row j is payload j.

    For callers that want the n payloads back to back (a record batch) with
    no bytes object per row: the shared headers are broadcast down their
    columns and each array's element data is one strided copy.  None where
    `encode_tensors` would reject the arrays (the caller takes its error path).
    """
    plan = _matrix_plan(tuple((a.dtype, a.shape[1:]) for a in arrays), arrays)
    if plan is None:
        return None
    width, parts = plan
    n = arrays[0].shape[0]
    out = np.empty((n, width), np.uint8)
    for a, (lo, hi, head, end, count, le) in zip(arrays, parts):
        out[:, lo:hi] = head
        if end > hi and n:
            # Little-endian C order, as encode_tensors writes it.
            out[:, hi:end] = np.ascontiguousarray(a, dtype=le).reshape(n, count).view(np.uint8)
    return out


# --------------------------------------------------------------------------
# Causal-LM generation (formats 0x02 and 0x03)
# --------------------------------------------------------------------------

# format, flags, n_stop, max_new_tokens, seed, temperature, top_p, top_k, prompt_bytes
_GEN_REQUEST = struct.Struct("<BBHIQffII")
# format, finish_reason, flags, n_prompt_tokens, n_generated, text_bytes
_GEN_RESULT = struct.Struct("<BBHIII")
assert _GEN_REQUEST.size == 32 and _GEN_RESULT.size == 16


@dataclass(frozen=True)
class GenerateRequest:
    """A decoded (or to-be-encoded) causal-LM request.

    temperature == 0 means greedy decoding; top_k == 0 and top_p == 1 disable
    those filters.  With use_defaults the numeric fields are ignored and the
    model spec's defaults apply; stop_token_ids are then *added* to the
    defaults' stop tokens.
    """

    prompt: str
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    use_defaults: bool = False
    return_token_ids: bool = False


@dataclass(frozen=True)
class GenerateResult:
    text: str
    finish_reason: FinishReason
    n_prompt_tokens: int
    n_generated_tokens: int
    token_ids: tuple[int, ...] | None = None


def f32(x: float) -> float:
    """Round a float through float32, the precision of the wire format."""
    return float(np.float32(x))


def check_generation_params(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int, stop_token_ids: tuple[int, ...]
) -> None:
    """Range checks shared by requests and model-spec defaults."""
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise PayloadError(Status.BAD_PARAMS, f"max_new_tokens {max_new_tokens} not in 0..{MAX_NEW_TOKENS}")
    if not (math.isfinite(temperature) and temperature >= 0.0):
        raise PayloadError(Status.BAD_PARAMS, f"temperature {temperature} must be finite and >= 0")
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise PayloadError(Status.BAD_PARAMS, f"top_p {top_p} must be in (0, 1]")
    if top_k < 0 or top_k > 0xFFFFFFFF:
        raise PayloadError(Status.BAD_PARAMS, f"top_k {top_k} must be a u32")
    if not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        raise PayloadError(Status.BAD_PARAMS, f"seed {seed} must be a u64")
    if len(stop_token_ids) > MAX_STOP_TOKENS:
        raise PayloadError(Status.BAD_PARAMS, f"more than {MAX_STOP_TOKENS} stop tokens")


def encode_generate_request(req: GenerateRequest) -> bytes:
    """Encode a format-0x02 payload (what an agent sends)."""
    prompt = req.prompt.encode("utf-8")
    stops = tuple(int(t) for t in req.stop_token_ids)
    if len(prompt) > MAX_PROMPT_BYTES:
        raise ValueError(f"prompt is {len(prompt)} bytes, limit {MAX_PROMPT_BYTES}")
    if len(stops) > MAX_STOP_TOKENS:
        raise ValueError(f"more than {MAX_STOP_TOKENS} stop tokens")
    flags = (FLAG_USE_DEFAULTS if req.use_defaults else 0) | (FLAG_RETURN_TOKEN_IDS if req.return_token_ids else 0)
    head = _GEN_REQUEST.pack(
        FORMAT_GENERATE_REQUEST,
        flags,
        len(stops),
        req.max_new_tokens,
        req.seed,
        req.temperature,
        req.top_p,
        req.top_k,
        len(prompt),
    )
    return head + struct.pack(f"<{len(stops)}I", *stops) + prompt


def decode_generate_request(payload: bytes | bytearray | memoryview) -> GenerateRequest:
    """Decode and range-check a format-0x02 payload; raises `PayloadError`."""
    buf = memoryview(payload).cast("B")
    n = len(buf)
    if n < _GEN_REQUEST.size:
        if n >= 1 and buf[0] == FORMAT_TENSORS:
            raise PayloadError(Status.MALFORMED,
                               "model is a causal LM: send a generate request (format 0x02), not tensors")
        raise PayloadError(Status.MALFORMED, f"generate request too short ({n} bytes)")
    fmt, flags, n_stop, max_new, seed, temp, top_p, top_k, prompt_len = _GEN_REQUEST.unpack_from(buf, 0)
    if fmt != FORMAT_GENERATE_REQUEST:
        raise PayloadError(Status.MALFORMED, f"expected generate request (format 0x02), got format 0x{fmt:02x}")
    if flags & ~_KNOWN_REQUEST_FLAGS:
        raise PayloadError(Status.MALFORMED, f"unknown flag bits 0x{flags & ~_KNOWN_REQUEST_FLAGS:02x}")
    if n_stop > MAX_STOP_TOKENS:
        raise PayloadError(Status.BAD_PARAMS, f"{n_stop} stop tokens, limit {MAX_STOP_TOKENS}")
    if prompt_len > MAX_PROMPT_BYTES:
        raise PayloadError(Status.TOO_LARGE, f"prompt is {prompt_len} bytes, limit {MAX_PROMPT_BYTES}")
    expected = _GEN_REQUEST.size + 4 * n_stop + prompt_len
    if n != expected:
        raise PayloadError(Status.MALFORMED, f"generate request is {n} bytes, header says {expected}")
    stops = struct.unpack_from(f"<{n_stop}I", buf, _GEN_REQUEST.size)
    try:
        prompt = bytes(buf[_GEN_REQUEST.size + 4 * n_stop :]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(Status.MALFORMED, f"prompt is not valid UTF-8 (byte {e.start})") from None
    use_defaults = bool(flags & FLAG_USE_DEFAULTS)
    if not use_defaults:
        check_generation_params(max_new, temp, top_k, top_p, seed, stops)
    return GenerateRequest(
        prompt=prompt,
        max_new_tokens=max_new,
        temperature=temp,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_token_ids=stops,
        use_defaults=use_defaults,
        return_token_ids=bool(flags & FLAG_RETURN_TOKEN_IDS),
    )


def encode_generate_result(res: GenerateResult) -> bytes:
    """Encode a format-0x03 payload: header, optional u32 token ids, UTF-8 text.

    Token ids come before the text so that they stay 4-byte aligned.
    """
    text = res.text.encode("utf-8")
    ids = res.token_ids
    flags = RESULT_FLAG_TOKEN_IDS if ids is not None else 0
    head = _GEN_RESULT.pack(
        FORMAT_GENERATE_RESULT, int(res.finish_reason), flags, res.n_prompt_tokens, res.n_generated_tokens, len(text)
    )
    id_bytes = struct.pack(f"<{len(ids)}I", *ids) if ids is not None else b""
    return head + id_bytes + text


def decode_generate_result(payload: bytes | bytearray | memoryview) -> GenerateResult:
    """Decode a format-0x03 payload (what an agent receives)."""
    buf = memoryview(payload).cast("B")
    if len(buf) < _GEN_RESULT.size:
        raise PayloadError(Status.MALFORMED, "generate result too short")
    fmt, reason, flags, n_prompt, n_gen, text_len = _GEN_RESULT.unpack_from(buf, 0)
    if fmt != FORMAT_GENERATE_RESULT:
        raise PayloadError(Status.MALFORMED, f"expected generate result (format 0x03), got 0x{fmt:02x}")
    off = _GEN_RESULT.size
    ids = None
    if flags & RESULT_FLAG_TOKEN_IDS:
        ids = struct.unpack_from(f"<{n_gen}I", buf, off)
        off += 4 * n_gen
    if off + text_len != len(buf):
        raise PayloadError(Status.MALFORMED, "generate result size does not match its header")
    return GenerateResult(
        text=bytes(buf[off:]).decode("utf-8"),
        finish_reason=FinishReason(reason),
        n_prompt_tokens=n_prompt,
        n_generated_tokens=n_gen,
        token_ids=ids,
    )
