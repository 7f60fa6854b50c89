"""Binary payload formats: round trips, limits and hostile bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from wasm_engine.inference import (
    DTYPE_CODES,
    MAX_ERROR_MESSAGE_BYTES,
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
from wasm_engine.inference._payloads import PayloadError, error_payload


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_tensor_round_trip_every_dtype(code):
    dt = DTYPE_CODES[code]
    a = (np.arange(24) % 2 == 1) if dt.kind == "b" else np.arange(24).astype(dt)
    arrays = [a.reshape(2, 3, 4), np.asarray(a[0]), a[:0].reshape(0, 5)]
    out = decode_tensors(encode_tensors(arrays))
    for x, y in zip(arrays, out):
        assert y.dtype == x.dtype.newbyteorder("=") and y.shape == x.shape
        assert np.array_equal(x, y)


def test_tensor_layout_is_documented_little_endian():
    payload = encode_tensors([np.array([[1.0, 2.0]], dtype=np.float32)])
    # header: format 0x01, 1 tensor, reserved; record: FLOAT(1), rank 2, reserved, dims 1, 2; data
    assert payload == bytes([1, 1, 0, 0, 1, 2, 0, 0]) + struct.pack("<II", 1, 2) + struct.pack("<ff", 1.0, 2.0)
    big_endian = np.array([[1.0, 2.0]], dtype=">f4")
    assert encode_tensors([big_endian]) == payload


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"", "too short"),
        (b"\x02\x01\x00\x00", "format 0x02"),
        (b"\x01\x00\x00\x00", "tensor count"),
        (b"\x01\x01\x00\x00", "truncated record"),
        (b"\x01\x01\x00\x00\x08\x01\x00\x00\x01\x00\x00\x00", "unknown dtype"),
        (b"\x01\x01\x00\x00\x01\x09\x00\x00", "rank"),
        (b"\x01\x01\x00\x00\x01\x02\x00\x00\x01\x00\x00\x00", "truncated dims"),
        # 2^32-1 x 2^32-1 float32: must be rejected by size, not by allocating it.
        (b"\x01\x01\x00\x00\x01\x02\x00\x00" + b"\xff" * 8, "data bytes"),
    ],
)
def test_malformed_tensor_payloads(payload, fragment):
    with pytest.raises(PayloadError) as info:
        decode_tensors(payload)
    assert info.value.status == Status.MALFORMED
    assert fragment in str(info.value)


def test_trailing_bytes_rejected():
    with pytest.raises(PayloadError, match="trailing"):
        decode_tensors(encode_tensors([np.zeros(3, np.float32)]) + b"\x00")


def test_random_bytes_only_raise_payload_error():
    rng = np.random.default_rng(0)
    valid_t = encode_tensors([np.zeros((2, 3), np.float32), np.ones(4, np.int64)])
    valid_g = encode_generate_request(GenerateRequest("hello", max_new_tokens=3, stop_token_ids=(1, 2)))
    for i in range(3000):
        if i % 3 == 0:
            data = rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8).tobytes()
        else:
            base = bytearray(valid_t if i % 2 else valid_g)
            for _ in range(rng.integers(1, 4)):
                base[rng.integers(0, len(base))] = rng.integers(0, 256)
            data = bytes(base[: rng.integers(0, len(base) + 1)])
        for decode in (decode_tensors, decode_generate_request):
            try:
                decode(data)
            except PayloadError:
                pass


def test_generate_request_round_trip_and_header_size():
    req = GenerateRequest("héllo", max_new_tokens=9, temperature=0.5, top_k=3, top_p=0.75, seed=2**64 - 1,
                          stop_token_ids=(7, 8), return_token_ids=True)
    payload = encode_generate_request(req)
    assert payload[0] == 0x02 and len(payload) == 32 + 4 * 2 + len("héllo".encode())
    assert decode_generate_request(payload) == req


@pytest.mark.parametrize(
    "req, status",
    [
        (GenerateRequest("x", temperature=float("nan")), Status.BAD_PARAMS),
        (GenerateRequest("x", temperature=-1.0), Status.BAD_PARAMS),
        (GenerateRequest("x", top_p=0.0), Status.BAD_PARAMS),
        (GenerateRequest("x", top_p=1.5), Status.BAD_PARAMS),
        (GenerateRequest("x", max_new_tokens=10**6), Status.BAD_PARAMS),
    ],
)
def test_bad_generation_params(req, status):
    with pytest.raises(PayloadError) as info:
        decode_generate_request(encode_generate_request(req))
    assert info.value.status == status


def test_use_defaults_skips_parameter_checks():
    # With FLAG_USE_DEFAULTS the numeric fields are ignored, so zeros are fine.
    req = decode_generate_request(encode_generate_request(GenerateRequest("x", top_p=0.0, use_defaults=True)))
    assert req.use_defaults


def test_malformed_generate_requests():
    good = encode_generate_request(GenerateRequest("abc"))
    cases = {
        "short": good[:10],
        "size": good + b"x",
        "utf8": good[:-1] + b"\xff",
        "flags": good[:1] + b"\x80" + good[2:],
        "format": b"\x03" + good[1:],
        "tensors": encode_tensors([np.zeros(1, np.float32)]),
    }
    for name, payload in cases.items():
        with pytest.raises(PayloadError) as info:
            decode_generate_request(payload)
        assert info.value.status == Status.MALFORMED, name


def test_generate_result_round_trip():
    res = GenerateResult("ok ✓", FinishReason.STOP_TOKEN, 3, 2, (5, 6))
    payload = encode_generate_result(res)
    assert payload[0] == 0x03 and len(payload) == 16 + 8 + len("ok ✓".encode())
    assert decode_generate_result(payload) == res
    res = GenerateResult("", FinishReason.MAX_NEW_TOKENS, 1, 0)
    assert decode_generate_result(encode_generate_result(res)) == res


def test_error_messages_are_short_valid_utf8():
    msg = error_payload("é" * 1000)
    assert len(msg) <= MAX_ERROR_MESSAGE_BYTES
    msg.decode("utf-8")
    assert error_payload("short") == b"short"
