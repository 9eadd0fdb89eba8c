"""The tritium byte-stream bridge protocol (host <-> SoC), pure Python.

One protocol for every transport that carries bytes to the SoC's bridge (UART on a board, a
socket to a simulated SoC, a cocotb driver): the hardware side is ``tritium.fpga.bridge``, the
host side uses :func:`encode_request` / :class:`ResponseParser`. ``docs/bridge.md`` holds the
same description.

Request frame (host -> device)::

    0xA5 | CMD | ADDR (4 bytes, little-endian) | LEN (2 bytes, LE) | PAYLOAD (LEN bytes) | CRC

Response frame (device -> host)::

    0x5A | STATUS | LEN (2 bytes, LE) | PAYLOAD (LEN bytes) | CRC

``CRC`` is CRC-8 (polynomial 0x07, initial value 0, no reflection, no final XOR; "CRC-8/SMBUS")
over every byte after the sync byte (``CMD .. PAYLOAD`` resp. ``STATUS .. PAYLOAD``).

Commands (``LEN`` rules; ``PAYLOAD`` only on writes):

============  ====  ============================  =========================================
command       CMD   ADDR / LEN                    response payload
============  ====  ============================  =========================================
PING          0x00  ignored / 0                   4 bytes: CSR ID value ("TRIT")
READ_CSR      0x01  CSR byte offset / 4           the 32-bit register (LE)
WRITE_CSR     0x02  CSR byte offset / 4           none (payload: the 32-bit value, LE)
READ_MEM      0x03  byte address / 1..MAX_LEN     LEN bytes of device memory
WRITE_MEM     0x04  byte address / 1..MAX_LEN     none (payload: LEN bytes)
============  ====  ============================  =========================================

Status codes: ``OK`` 0, ``BAD_SYNC`` 1 (a byte other than 0xA5 where a frame must start; one
response per run of such bytes), ``BAD_CMD`` 2, ``BAD_LEN`` 3 (LEN not allowed for CMD),
``BAD_ADDR`` 4 (CSR offset not 4-aligned or above 0xFF, memory range outside device memory),
``BAD_CRC`` 5 (nothing was written), ``TIMEOUT`` 6 (a frame stopped arriving for longer than the
bridge's byte timeout). Error responses carry no payload (``LEN = 0``).

Header errors (BAD_CMD, BAD_LEN, BAD_ADDR) are answered as soon as the 7 header bytes are in;
the bridge then drops every byte up to the next 0xA5 without answering (the rest of the bad
frame), so one malformed frame gives exactly one error response. A write takes effect only
after its CRC was checked. A host that gets an error, or no response, resynchronises by
sending a PING and discarding responses up to the PING's.
"""

from __future__ import annotations

import numbers
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "MAX_LEN",
    "REQ_SYNC",
    "RESP_SYNC",
    "Cmd",
    "ProtocolError",
    "Response",
    "ResponseParser",
    "Status",
    "crc8",
    "decode_request",
    "encode_request",
    "encode_response",
    "ping",
    "read_csr",
    "read_mem",
    "split_mem",
    "write_csr",
    "write_mem",
]

REQ_SYNC = 0xA5
RESP_SYNC = 0x5A
#: Largest READ_MEM / WRITE_MEM length; longer transfers are split by the host.
MAX_LEN = 256
#: Header bytes of a request after the sync byte (CMD, ADDR, LEN).
HEADER = 7
#: Register window of READ_CSR / WRITE_CSR.
CSR_SPACE = 0x100


class Cmd(IntEnum):
    PING = 0x00
    READ_CSR = 0x01
    WRITE_CSR = 0x02
    READ_MEM = 0x03
    WRITE_MEM = 0x04


class Status(IntEnum):
    OK = 0
    BAD_SYNC = 1
    BAD_CMD = 2
    BAD_LEN = 3
    BAD_ADDR = 4
    BAD_CRC = 5
    TIMEOUT = 6


class ProtocolError(ValueError):
    """A frame that cannot be encoded or decoded."""


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc8(data: bytes, crc: int = 0) -> int:
    """CRC-8/SMBUS (poly 0x07, init 0) of ``data``, continuing from ``crc``."""
    for b in data:
        crc = _CRC_TABLE[crc ^ b]
    return crc


def _len_ok(cmd: Cmd, length: int) -> bool:
    if cmd == Cmd.PING:
        return length == 0
    if cmd in (Cmd.READ_CSR, Cmd.WRITE_CSR):
        return length == 4
    return 1 <= length <= MAX_LEN


def encode_request(cmd: Cmd | int, addr: int = 0, length: int | None = None,
                   payload: bytes = b"") -> bytes:
    """A request frame. ``length`` defaults to ``len(payload)`` (writes) and must be given for
    reads. Raises :class:`ProtocolError` on a length the command does not allow."""
    cmd = Cmd(cmd)
    if length is None:
        length = len(payload)
    if cmd in (Cmd.WRITE_CSR, Cmd.WRITE_MEM) and len(payload) != length:
        raise ProtocolError(f"{cmd.name}: payload has {len(payload)} bytes, LEN={length}")
    if cmd not in (Cmd.WRITE_CSR, Cmd.WRITE_MEM) and payload:
        raise ProtocolError(f"{cmd.name} carries no payload")
    if not _len_ok(cmd, length):
        raise ProtocolError(f"{cmd.name}: LEN={length} not allowed")
    if not 0 <= addr < 1 << 32:
        raise ProtocolError(f"addr={addr:#x} is not a 32-bit address")
    body = struct.pack("<BIH", int(cmd), addr, length) + bytes(payload)
    return bytes([REQ_SYNC]) + body + bytes([crc8(body)])


def ping() -> bytes:
    return encode_request(Cmd.PING)


def read_csr(offset: int) -> bytes:
    return encode_request(Cmd.READ_CSR, offset, 4)


def write_csr(offset: int, value: int) -> bytes:
    return encode_request(Cmd.WRITE_CSR, offset, payload=struct.pack("<I", value & 0xFFFFFFFF))


def read_mem(addr: int, length: int) -> bytes:
    return encode_request(Cmd.READ_MEM, addr, length)


def write_mem(addr: int, data: bytes) -> bytes:
    return encode_request(Cmd.WRITE_MEM, addr, payload=bytes(data))


def split_mem(addr: int, data_or_len, max_len: int = MAX_LEN):
    """Yield ``(addr, chunk)`` (writes) or ``(addr, n)`` (reads) pieces of at most ``max_len``."""
    if isinstance(data_or_len, numbers.Integral):
        n = int(data_or_len)
        for off in range(0, n, max_len):
            yield addr + off, min(max_len, n - off)
    else:
        data = bytes(data_or_len)
        for off in range(0, len(data), max_len):
            yield addr + off, data[off : off + max_len]


@dataclass(frozen=True)
class Request:
    cmd: int
    addr: int
    length: int
    payload: bytes


def decode_request(frame: bytes) -> Request:
    """Parse one complete request frame (checks sync and CRC; used by models and tests)."""
    if len(frame) < 1 + HEADER + 1 or frame[0] != REQ_SYNC:
        raise ProtocolError("not a request frame")
    cmd, addr, length = struct.unpack("<BIH", frame[1 : 1 + HEADER])
    body = frame[1:-1]
    if crc8(body) != frame[-1]:
        raise ProtocolError("bad CRC")
    return Request(cmd, addr, length, bytes(frame[1 + HEADER : -1]))


def encode_response(status: Status | int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BH", int(status), len(payload)) + bytes(payload)
    return bytes([RESP_SYNC]) + body + bytes([crc8(body)])


@dataclass(frozen=True)
class Response:
    """A decoded response: ``status`` (:class:`Status`), ``payload``, ``crc_ok``."""

    status: Status
    payload: bytes
    crc_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.status == Status.OK and self.crc_ok

    def u32(self) -> int:
        return struct.unpack("<I", self.payload)[0]


class ResponseParser:
    """Incremental parser of the device's byte stream: :meth:`feed` bytes, get
    :class:`Response` objects. Bytes before a 0x5A sync are skipped (counted in
    ``skipped``)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> list[Response]:
        self.buf += data
        out = []
        while True:
            while self.buf and self.buf[0] != RESP_SYNC:
                del self.buf[0]
                self.skipped += 1
            if len(self.buf) < 4:
                return out
            status, length = struct.unpack("<BH", self.buf[1:4])
            if len(self.buf) < 5 + length:
                return out
            body = bytes(self.buf[1 : 4 + length])
            crc = self.buf[4 + length]
            try:
                st = Status(status)
            except ValueError:
                st = status
            out.append(Response(st, body[3:], crc8(body) == crc))
            del self.buf[: 5 + length]
