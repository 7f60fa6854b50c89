"""Pure-Python reference of the ring wire format, to cross-check native C.

Layer: shm_protocol. Slow on purpose (struct, per record): tests run the
same operations through both paths and compare bytes. Not used at run time.
"""
from __future__ import annotations

import struct

from ._layout import KIND_INVALID, KIND_WRAP, RECORD_HEADER_BYTES, RING_HEADER_BYTES

_HDR = struct.Struct("<HHIIIQII")
_M64 = (1 << 64) - 1


def _mix(h: int, w: int) -> int:
    h ^= w
    h = (h * 0x9E3779B97F4A7C15) & _M64
    return h ^ (h >> 29)


_LANE_SEEDS = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)


def record_check(kind, flags, payload_len, source, destination, tick, seq, payload: bytes) -> int:
    """Header word i goes to lane i; payload word j to lane j % 4 (see we_native.c)."""
    hdr = _HDR.pack(kind, flags, payload_len, source, destination, tick, seq, 0)
    lanes = list(_LANE_SEEDS)
    for i in range(4):
        lanes[i] = _mix(lanes[i], int.from_bytes(hdr[8 * i : 8 * i + 8], "little"))
    padded = payload + bytes(-len(payload) % 8)
    for j in range(0, len(padded) // 8):
        lanes[j % 4] = _mix(lanes[j % 4], int.from_bytes(padded[8 * j : 8 * j + 8], "little"))
    h = _mix(_mix(_mix(_mix(lanes[0], lanes[1]), lanes[2]), lanes[3]), payload_len)
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def encode_record(kind, payload: bytes, source=0, destination=0, tick=0, seq=0, flags=0) -> bytes:
    """Header + payload + zero padding to 8 bytes, exactly as it lies in a ring."""
    check = record_check(kind, flags, len(payload), source, destination, tick, seq, payload)
    return _HDR.pack(kind, flags, len(payload), source, destination, tick, seq, check) + payload + bytes(
        -len(payload) % 8
    )


class ReferenceRing:
    """A ring over a private bytearray with the same rules as the native one."""

    def __init__(self, capacity_bytes: int, max_record_bytes: int) -> None:
        self.cap = capacity_bytes
        self.max_record = max_record_bytes
        self.data = bytearray(capacity_bytes)
        self.w = 0
        self.r = 0

    def push(self, kind, payload: bytes, source=0, destination=0, tick=0, seq=0, flags=0) -> bool:
        rec = encode_record(kind, payload, source, destination, tick, seq, flags)
        if len(rec) > self.max_record:
            raise ValueError("record too large")
        pos = self.w % self.cap
        tail = self.cap - pos
        need = tail + len(rec) if tail < len(rec) else len(rec)
        if self.cap - (self.w - self.r) < need:
            return False
        if tail < len(rec):
            self.data[pos:] = bytes(tail)
            if tail >= RECORD_HEADER_BYTES:
                self.data[pos : pos + 2] = KIND_WRAP.to_bytes(2, "little")
            self.w += tail
            pos = 0
        self.data[pos : pos + len(rec)] = rec
        self.w += len(rec)
        return True

    def pop(self):
        while self.r < self.w:
            pos = self.r % self.cap
            tail = self.cap - pos
            if tail < RECORD_HEADER_BYTES:
                self.r += tail
                continue
            kind, flags, n, src, dst, tick, seq, check = _HDR.unpack_from(self.data, pos)
            if kind == KIND_WRAP:
                self.r += tail
                continue
            if kind == KIND_INVALID:
                raise ValueError(f"invalid record at {pos}")
            total = RECORD_HEADER_BYTES + n + (-n % 8)
            payload = bytes(self.data[pos + RECORD_HEADER_BYTES : pos + RECORD_HEADER_BYTES + n])
            if record_check(kind, flags, n, src, dst, tick, seq, payload) != check:
                raise ValueError(f"checksum mismatch at {pos}")
            self.r += total
            return (kind, payload, src, dst, tick, seq, flags)
        return None

    def image(self) -> bytes:
        """The data area bytes, comparable with a native ring's."""
        return bytes(self.data)


RING_DATA_OFFSET = RING_HEADER_BYTES
