"""Inference core of wasm-engine: ONNX models served to agents.

The inference process builds one `InferenceEngine` from the scenario's
`ModelSpec`s and calls `execute()` with each tick's requests.  Payload formats
(`encode_tensors`, `encode_generate_request`, ...) are specified in
docs/INFERENCE.md.
"""

from ._engine import InferenceEngine, Request, Result, load_model
from ._errors import InferenceError, ModelLoadError, ProviderUnavailableError
from ._models import GenerationParams, ModelInfo, ModelSpec, RunStats, TensorInfo
from ._payloads import (
    DTYPE_CODES,
    FLAG_RETURN_TOKEN_IDS,
    FLAG_USE_DEFAULTS,
    FORMAT_GENERATE_REQUEST,
    FORMAT_GENERATE_RESULT,
    FORMAT_TENSORS,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_BYTES,
    MAX_RANK,
    MAX_REQUEST_BYTES,
    MAX_RESULT_BYTES,
    MAX_STOP_TOKENS,
    MAX_TENSORS,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Status,
    decode_generate_request,
    decode_generate_result,
    decode_tensors,
    encode_generate_request,
    encode_generate_result,
    encode_tensors,
)
from ._providers import PROVIDERS

__all__ = [
    "DTYPE_CODES",
    "FLAG_RETURN_TOKEN_IDS",
    "FLAG_USE_DEFAULTS",
    "FORMAT_GENERATE_REQUEST",
    "FORMAT_GENERATE_RESULT",
    "FORMAT_TENSORS",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_NEW_TOKENS",
    "MAX_PROMPT_BYTES",
    "MAX_RANK",
    "MAX_REQUEST_BYTES",
    "MAX_RESULT_BYTES",
    "MAX_STOP_TOKENS",
    "MAX_TENSORS",
    "PROVIDERS",
    "FinishReason",
    "GenerateRequest",
    "GenerateResult",
    "GenerationParams",
    "InferenceEngine",
    "InferenceError",
    "ModelInfo",
    "ModelLoadError",
    "ModelSpec",
    "ProviderUnavailableError",
    "Request",
    "Result",
    "RunStats",
    "Status",
    "TensorInfo",
    "decode_generate_request",
    "decode_generate_result",
    "decode_tensors",
    "encode_generate_request",
    "encode_generate_result",
    "encode_tensors",
    "load_model",
]

from ._process import (  # noqa: E402
    K_INF_DONE,
    K_INF_ERROR,
    K_INF_EXECUTE,
    K_INF_INIT,
    K_INF_READY,
    K_INF_REQUEST,
    K_INF_RESULT,
    K_INF_SHUTDOWN,
    MODEL_STATS_DTYPE,
    MODEL_STATS_VERSION,
    build_engine,
    decode_model_stats,
    done_record,
    encode_model_stats,
    engine_info,
    execute_batch,
    inference_main,
    request_id,
    stats_report,
)

__all__ += [
    "K_INF_DONE", "K_INF_ERROR", "K_INF_EXECUTE", "K_INF_INIT", "K_INF_READY", "K_INF_REQUEST", "K_INF_RESULT",
    "K_INF_SHUTDOWN", "MODEL_STATS_DTYPE", "MODEL_STATS_VERSION", "build_engine", "decode_model_stats", "done_record",
    "encode_model_stats", "engine_info", "execute_batch", "inference_main", "request_id", "stats_report",
]
