"""Execution-provider selection: CUDA fallback, required providers, settings."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from wasm_engine.inference import InferenceEngine, ModelLoadError, ModelSpec, ProviderUnavailableError
from wasm_engine.inference import _providers

LOGGER_NAME = "wasm_engine.inference"


@pytest.fixture(autouse=True)
def fresh_probe():
    _providers.reset_probe_cache()
    yield
    _providers.reset_probe_cache()


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno >= logging.WARNING]


def _cuda_really_usable() -> bool:
    if _providers._static_reason("cuda") is not None:
        _providers.reset_probe_cache()
        return False
    _providers.reset_probe_cache()
    return True


@pytest.fixture
def simulate_gpu_machine(monkeypatch):
    """Pretend the CUDA provider and its libraries are installed."""
    monkeypatch.setattr(_providers, "_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(_providers, "_provider_library_error", lambda short: None)
    monkeypatch.setattr(_providers, "_preload_cuda_libraries", lambda: None)
    real = _providers._new_session
    calls: list[list] = []

    def install(behaviour):
        def fake(path, providers):
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            calls.append(names)
            if "CUDAExecutionProvider" in names:
                return behaviour(path)
            return real(path, ["CPUExecutionProvider"])

        monkeypatch.setattr(_providers, "_new_session", fake)
        return calls

    return install, real


def test_real_absence_of_cuda_falls_back_with_one_warning(tensor_model_path, caplog, capfd):
    if _cuda_really_usable():
        pytest.skip("this machine has a working CUDA provider")
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        engine = InferenceEngine([ModelSpec("a", tensor_model_path), ModelSpec("b", tensor_model_path)])
    assert [m.provider for m in engine.models] == ["cpu", "cpu"]
    warnings = _warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert "CUDA" in msg and "CPU" in msg and "\n" not in msg
    # None of ONNX Runtime's own error output reaches the terminal.
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_forced_cuda_failure_falls_back_to_cpu(tensor_model_path, simulate_gpu_machine, caplog, capfd):
    install, _ = simulate_gpu_machine

    def fail(path):
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0\nmore ORT detail")

    calls = install(fail)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        engine = InferenceEngine([ModelSpec("a", tensor_model_path), ModelSpec("b", tensor_model_path)])
    assert [m.provider for m in engine.models] == ["cpu", "cpu"]
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "no CUDA-capable device" in warnings[0].getMessage()
    assert "more ORT detail" not in warnings[0].getMessage()
    # CUDA is tried once; the second model goes straight to CPU.
    assert sum("CUDAExecutionProvider" in c for c in calls) == 1
    assert capfd.readouterr().out == ""


def test_cuda_silently_dropped_by_ort_is_detected(tensor_model_path, simulate_gpu_machine, caplog):
    install, real = simulate_gpu_machine
    install(lambda path: real(path, ["CPUExecutionProvider"]))  # ORT "succeeds" without CUDA
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        engine = InferenceEngine([ModelSpec("a", tensor_model_path)])
    assert engine.models[0].provider == "cpu"
    assert len(_warnings(caplog)) == 1
    assert "did not enable CUDAExecutionProvider" in _warnings(caplog)[0].getMessage()


def test_cuda_success_is_reported(tensor_model_path, simulate_gpu_machine, caplog):
    install, real = simulate_gpu_machine

    class OnGpu:
        """A CPU session that claims CUDA, as a real GPU session would."""

        def __init__(self, path):
            self._s = real(path, ["CPUExecutionProvider"])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._s, name)

    install(OnGpu)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        engine = InferenceEngine([ModelSpec("a", tensor_model_path)], provider="cuda")
    assert engine.models[0].provider == "cuda"
    assert _warnings(caplog) == []


def test_broken_model_is_not_blamed_on_cuda(tmp_path, simulate_gpu_machine, caplog):
    install, real = simulate_gpu_machine
    install(lambda path: real(path, ["CPUExecutionProvider"]))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        InferenceEngine([ModelSpec("bad", bad)])


def test_cuda_required_but_unavailable_is_a_clear_error(tensor_model_path):
    if _cuda_really_usable():
        pytest.skip("this machine has a working CUDA provider")
    with pytest.raises(ProviderUnavailableError) as info:
        InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="cuda")
    msg = str(info.value)
    assert "'mlp'" in msg and "provider='cuda'" in msg and "CUDA is not usable" in msg


def test_cuda_required_with_forced_failure(tensor_model_path, simulate_gpu_machine):
    install, _ = simulate_gpu_machine

    def fail(path):
        raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient")

    install(fail)
    with pytest.raises(ProviderUnavailableError, match="driver version is insufficient"):
        InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="cuda")


def test_tensorrt_only_when_asked(tensor_model_path, simulate_gpu_machine):
    install, real = simulate_gpu_machine
    calls = install(lambda path: real(path, ["CPUExecutionProvider"]))
    InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="auto")
    assert all("TensorrtExecutionProvider" not in c for c in calls)


def test_tensorrt_required_but_unavailable(tensor_model_path):
    with pytest.raises(ProviderUnavailableError, match="tensorrt"):
        InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="tensorrt")


def test_cpu_provider_does_not_probe_cuda(tensor_model_path, monkeypatch, caplog):
    def boom(*a, **k):
        raise AssertionError("CUDA probed although provider='cpu'")

    monkeypatch.setattr(_providers, "_provider_library_error", boom)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        engine = InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="cpu")
    assert engine.models[0].provider == "cpu"
    assert _warnings(caplog) == []


def test_unknown_provider_name(tensor_model_path):
    with pytest.raises(ValueError, match="provider"):
        InferenceEngine([ModelSpec("mlp", tensor_model_path)], provider="gpu")


def test_reproducibility_settings():
    so = _providers.session_options()
    assert so.intra_op_num_threads == 1
    assert so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.use_deterministic_compute


def test_per_model_provider_overrides_engine_default(tensor_model_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("CUDA probed for a model that asked for CPU")

    monkeypatch.setattr(_providers, "_provider_library_error", boom)
    engine = InferenceEngine([ModelSpec("mlp", tensor_model_path, provider="cpu")], provider="cuda")
    assert engine.models[0].provider == "cpu"
    with pytest.raises(ModelLoadError, match="unknown provider"):
        InferenceEngine([ModelSpec("mlp", tensor_model_path, provider="gpu")])
