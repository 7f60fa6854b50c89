"""Inference results become inbox messages (docs/ABI.md): the supervisor's
one-row-per-message path for results of one length equals the general
with_prefix formulation, byte for byte."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wasm_engine.orchestrator import _supervisor
from wasm_engine.shm_protocol import RECORD_DTYPE, RecordBatch
from wasm_engine.worker import INFERENCE_SENDER, K_DELIVER


def _reference(results: RecordBatch, tick: int) -> RecordBatch:
    h = results.headers
    prefix = np.zeros((len(results), 16), np.uint8)
    prefix[:, 0:8] = h["seq"].astype("<u8").view(np.uint8).reshape(-1, 8)
    prefix[:, 8:12] = h["flags"].astype("<u4").view(np.uint8).reshape(-1, 4)
    msgs = results.with_prefix(prefix)
    mh = msgs.headers
    mh["kind"], mh["flags"], mh["source"], mh["tick"], mh["check"] = K_DELIVER, 0, INFERENCE_SENDER, tick, 0
    return msgs


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), uniform=st.booleans(), seed=st.integers(0, 2**32 - 1), tick=st.integers(0, 2**40))
def test_result_messages_match_the_reference(n, uniform, seed, tick):
    rng = np.random.default_rng(seed)
    h = np.zeros(n, RECORD_DTYPE)
    h["kind"], h["tick"] = 68, 3
    h["flags"] = rng.integers(0, 6, n)
    h["source"] = rng.integers(0, 4, n)
    h["destination"] = rng.integers(0, 5000, n)
    h["seq"] = rng.integers(0, 2**32, n, dtype=np.uint64)
    h["check"] = rng.integers(0, 2**32, n, dtype=np.uint64)
    h["payload_len"] = rng.integers(0, 40) if uniform else rng.integers(0, 4, n)
    results = RecordBatch(h, rng.integers(0, 256, int(h["payload_len"].sum()), dtype=np.uint8))
    got, want = _supervisor._result_messages(results, tick), _reference(results, tick)
    assert got.headers.tobytes() == want.headers.tobytes()
    assert got.payload.tobytes() == want.payload.tobytes()
