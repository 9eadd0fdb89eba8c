"""Transports: how the host reaches a device. All speak the bridge protocol of
:mod:`tritium.protocol` (framed requests with a CRC-8; CSR read/write, memory block
read/write).

=========  =====================================================================================
name       what answers the frames
=========  =====================================================================================
golden     :class:`GoldenBridge`, an in-process bridge server backed by
           :class:`tritium.golden.GoldenDevice` that implements the CSR semantics of the RTL
           (ID, VERSION, CONFIG_HASH, CTRL start/reset, STATUS, ERROR, ERROR_PC, PROG_BASE,
           INSTRET, WATCHDOG). A START runs the program to completion before the CTRL write is
           answered, so STATUS never reads BUSY. The golden model has no clock: CYCLES and the
           unit busy/stall counters read 0 (use INSTRET), and WATCHDOG bounds retired
           instructions instead of cycles.
sim        the Verilator-built SoC (``tritium.fpga.soc``: accelerator + RAM + bridge) run by a
           cocotb process (:mod:`tritium.sim.server`), reached over a loopback TCP socket
           (:class:`SimTransport`).
serial     a board's UART bridge through :mod:`tritium.host.transport_serial` (pyserial).
=========  =====================================================================================

Every transport offers the same primitives (:class:`Transport`): ``ping``, ``read_csr``,
``write_csr``, ``read_mem``, ``write_mem`` (split into protocol-sized frames), ``close``.
Failures raise :class:`DeviceNotFound` (nothing answers / cannot open), or
:class:`ProtocolError` (bad frame, CRC, bridge error status, timeout).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import numpy as np

from tritium import protocol
from tritium.config import AcceleratorConfig
from tritium.isa import (
    CSR,
    CSR_ID_VALUE,
    CSR_VERSION_VALUE,
    CTRL_IRQ_EN,
    CTRL_RESET,
    CTRL_START,
    STATUS_DONE,
    STATUS_ERROR,
    ErrorCode,
)

__all__ = [
    "TRANSPORTS",
    "DeviceNotFound",
    "GoldenBridge",
    "GoldenTransport",
    "ProtocolError",
    "SerialDeviceTransport",
    "SimTransport",
    "Transport",
    "TritiumDeviceError",
    "open_transport",
]


class TritiumDeviceError(Exception):
    """Base of the errors a device or transport raises (message says what to do)."""


class DeviceNotFound(TritiumDeviceError):
    """Nothing answers on the transport (no board / port, simulator did not start, or the ID
    register does not read "TRIT")."""


class ProtocolError(TritiumDeviceError):
    """A frame was lost, corrupted or refused by the bridge (``status`` when it answered)."""

    def __init__(self, message: str, status=None):
        super().__init__(message)
        self.status = status


# ============================================================================ base
class Transport:
    """Bridge-protocol primitives over :meth:`transact` (one request frame -> one
    :class:`tritium.protocol.Response`)."""

    name = "transport"
    #: False when CYCLES and the unit counters are meaningless (the golden model).
    has_cycles = True

    def transact(self, frame: bytes) -> protocol.Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ok(self, frame: bytes, what: str) -> protocol.Response:
        r = self.transact(frame)
        if not r.crc_ok:
            raise ProtocolError(f"{self.name}: reply to {what} has a bad CRC")
        if r.status != protocol.Status.OK:
            st = getattr(r.status, "name", r.status)
            raise ProtocolError(f"{self.name}: bridge answered {st} to {what}", r.status)
        return r

    def ping(self) -> int:
        r = self._ok(protocol.ping(), "PING")
        return int.from_bytes(r.payload, "little")

    def read_csr(self, offset: int) -> int:
        r = self._ok(protocol.read_csr(offset), f"READ_CSR {offset:#x}")
        if len(r.payload) != 4:
            raise ProtocolError(f"{self.name}: READ_CSR {offset:#x} returned "
                                f"{len(r.payload)} bytes")
        return int.from_bytes(r.payload, "little")

    def write_csr(self, offset: int, value: int) -> None:
        self._ok(protocol.write_csr(offset, value), f"WRITE_CSR {offset:#x}")

    def read_mem(self, addr: int, length: int) -> bytes:
        out = bytearray()
        for a, n in protocol.split_mem(addr, length):
            r = self._ok(protocol.read_mem(a, n), f"READ_MEM {a:#x}+{n}")
            if len(r.payload) != n:
                raise ProtocolError(f"{self.name}: READ_MEM {a:#x}+{n} returned "
                                    f"{len(r.payload)} bytes")
            out += r.payload
        return bytes(out)

    def write_mem(self, addr: int, data: bytes) -> None:
        for a, chunk in protocol.split_mem(addr, bytes(data)):
            self._ok(protocol.write_mem(a, chunk), f"WRITE_MEM {a:#x}+{len(chunk)}")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================ golden
class GoldenBridge:
    """The SoC bridge, in Python, in front of a :class:`tritium.golden.GoldenDevice`.

    :meth:`feed` takes host bytes (any split) and returns the device's reply bytes, following
    :mod:`tritium.protocol` exactly (sync, header checks, CRC, status codes; one BAD_SYNC per
    run of stray bytes; the rest of a frame with a bad header is dropped up to the next sync).
    """

    def __init__(self, cfg: AcceleratorConfig, mem=None):
        from tritium.golden import GoldenDevice

        self.cfg = cfg
        self.dev = GoldenDevice(cfg, mem)
        self._in = bytearray()
        self._dropping = False
        self.reset_state()
        self.prog_base = 0
        self.irq_en = 0
        self.watchdog = cfg.watchdog_cycles

    def reset_state(self) -> None:
        self.status = 0
        self.error = ErrorCode.NONE
        self.error_pc = 0
        self.instret = 0

    # ---------------------------------------------------------------- CSRs
    def read_csr(self, off: int) -> int:
        if off == CSR.ID:
            return CSR_ID_VALUE
        if off == CSR.VERSION:
            return CSR_VERSION_VALUE
        if off == CSR.CONFIG_HASH:
            return self.cfg.hash32
        if off == CSR.CTRL:
            return self.irq_en
        if off == CSR.STATUS:
            return self.status
        if off == CSR.ERROR:
            return int(self.error)
        if off == CSR.ERROR_PC:
            return self.error_pc
        if off == CSR.PROG_BASE:
            return self.prog_base
        if off == CSR.INSTRET:
            return self.instret & 0xFFFFFFFF
        if off == CSR.WATCHDOG:
            return self.watchdog
        return 0  # CYCLES, OVERLAP, unit counters: no clock in the golden model

    def write_csr(self, off: int, value: int) -> None:
        if off == CSR.PROG_BASE:
            self.prog_base = value
        elif off == CSR.WATCHDOG:
            self.watchdog = value
        elif off == CSR.CTRL:
            self.irq_en = value & CTRL_IRQ_EN
            if value & CTRL_RESET:
                self.reset_state()
            elif value & CTRL_START:
                self._start()

    def _start(self) -> None:
        from tritium.golden import DeviceError

        self.reset_state()
        try:
            res = self.dev.run(self.prog_base, max_instructions=max(1, self.watchdog))
        except DeviceError as e:
            self.status = STATUS_ERROR
            self.error, self.error_pc = e.code, e.pc
            return
        self.instret = res.instret
        self.status = STATUS_DONE

    # ---------------------------------------------------------------- bytes
    def feed(self, data: bytes) -> bytes:
        """Process host bytes; return the reply bytes they produce."""
        P = protocol
        self._in += data
        out = bytearray()
        buf = self._in
        while buf:
            if buf[0] != P.REQ_SYNC:
                n = 0
                while n < len(buf) and buf[n] != P.REQ_SYNC:
                    n += 1
                del buf[:n]
                if not self._dropping:
                    out += P.encode_response(P.Status.BAD_SYNC)
                self._dropping = False
                continue
            self._dropping = False
            if len(buf) < 1 + P.HEADER:
                break
            cmd, addr, length = struct.unpack("<BIH", bytes(buf[1:1 + P.HEADER]))
            status = self._header_status(cmd, addr, length)
            if status is not None:
                out += P.encode_response(status)
                del buf[:1 + P.HEADER]
                self._dropping = True  # the rest of the frame goes without an answer
                continue
            plen = length if cmd in (P.Cmd.WRITE_CSR, P.Cmd.WRITE_MEM) else 0
            total = 1 + P.HEADER + plen + 1
            if len(buf) < total:
                break
            body = bytes(buf[1:total - 1])
            crc = buf[total - 1]
            del buf[:total]
            if P.crc8(body) != crc:
                out += P.encode_response(P.Status.BAD_CRC)
                continue
            out += self._execute(cmd, addr, length, body[P.HEADER:])
        return bytes(out)

    def _header_status(self, cmd: int, addr: int, length: int):
        P = protocol
        try:
            c = P.Cmd(cmd)
        except ValueError:
            return P.Status.BAD_CMD
        if not P._len_ok(c, length):
            return P.Status.BAD_LEN
        if c in (P.Cmd.READ_CSR, P.Cmd.WRITE_CSR) and (addr % 4 or addr >= P.CSR_SPACE):
            return P.Status.BAD_ADDR
        if c in (P.Cmd.READ_MEM, P.Cmd.WRITE_MEM) and addr + length > self.cfg.dev_mem_bytes:
            return P.Status.BAD_ADDR
        return None

    def _execute(self, cmd: int, addr: int, length: int, payload: bytes) -> bytes:
        P = protocol
        mem = self.dev.mem
        if cmd == P.Cmd.PING:
            return P.encode_response(P.Status.OK, struct.pack("<I", CSR_ID_VALUE))
        if cmd == P.Cmd.READ_CSR:
            return P.encode_response(P.Status.OK, struct.pack("<I", self.read_csr(addr)))
        if cmd == P.Cmd.WRITE_CSR:
            self.write_csr(addr, struct.unpack("<I", payload)[0])
            return P.encode_response(P.Status.OK)
        if cmd == P.Cmd.READ_MEM:
            return P.encode_response(P.Status.OK, mem[addr:addr + length].tobytes())
        mem[addr:addr + length] = np.frombuffer(payload, np.uint8)
        return P.encode_response(P.Status.OK)


class GoldenTransport(Transport):
    """In-process transport to a :class:`GoldenBridge` (frames go through the byte-level
    bridge, so the protocol path is the same as on a board)."""

    name = "golden"
    has_cycles = False

    def __init__(self, config: AcceleratorConfig, mem=None):
        self.bridge = GoldenBridge(config, mem)
        self._parser = protocol.ResponseParser()

    def transact(self, frame: bytes) -> protocol.Response:
        replies = self._parser.feed(self.bridge.feed(frame))
        if len(replies) != 1:
            raise ProtocolError(f"golden: {len(replies)} replies to one request")
        return replies[0]


# ============================================================================ sim
class SimTransport(Transport):
    """TCP client of the simulated SoC server (:mod:`tritium.sim.server`).

    ``SimTransport(config)`` starts the server (building the SoC with Verilator when its
    build is not cached) and connects to it; ``SimTransport(config, port=P)`` connects to a
    server already listening on ``127.0.0.1:P``. The socket carries the raw bridge bytes;
    the server also answers two out-of-band requests (:mod:`tritium.sim.server`): a bulk
    memory load (so an image need not crawl through the simulated bridge) and shutdown.
    """

    name = "sim"

    def __init__(self, config: AcceleratorConfig, port: int | None = None, *,
                 host: str = "127.0.0.1", timeout: float = 600.0, start_timeout: float = 900.0,
                 log: Any = None):
        self.config = config
        self.timeout = timeout
        self._server = None
        if port is None:
            from tritium.sim import server

            try:
                self._server = server.start(config, log=log, timeout=start_timeout)
            except server.SimServerError as e:
                raise DeviceNotFound(f"sim: the simulated SoC did not start: {e}") from None
            port = self._server.port
        try:
            self._sock = socket.create_connection((host, port), timeout=10.0)
        except OSError as e:
            self.close()
            raise DeviceNotFound(f"sim: cannot connect to the simulator at {host}:{port} ({e}); "
                                 "is `python -m tritium.sim.server` running?") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(timeout)
        self._parser = protocol.ResponseParser()

    def _recv_reply(self, what: str) -> protocol.Response:
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._parser.feed(b"")
            if got:
                break
            if time.monotonic() > deadline:
                raise ProtocolError(f"sim: no reply to {what} within {self.timeout:g} s")
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise ProtocolError(f"sim: no reply to {what} within {self.timeout:g} s") \
                    from None
            except OSError as e:
                raise DeviceNotFound(f"sim: connection to the simulator lost ({e})") from None
            if not chunk:
                raise DeviceNotFound("sim: the simulator closed the connection (crashed? see "
                                     "its log)")
            got = self._parser.feed(chunk)
            if got:
                break
        if len(got) > 1:
            raise ProtocolError(f"sim: {len(got)} replies to {what}")
        if self._parser.skipped:
            raise ProtocolError(f"sim: {self._parser.skipped} stray bytes before the reply "
                                f"to {what}")
        return got[0]

    def transact(self, frame: bytes) -> protocol.Response:
        try:
            self._sock.sendall(frame)
        except OSError as e:
            raise DeviceNotFound(f"sim: connection to the simulator lost ({e})") from None
        return self._recv_reply("a request")

    def bulk_write(self, addr: int, data: bytes) -> None:
        """Back-door load of device memory (the server writes the RAM model directly)."""
        from tritium.sim.server import bulk_write_frame

        self._sock.sendall(bulk_write_frame(addr, bytes(data)))
        r = self._recv_reply("a bulk write")
        if r.status != protocol.Status.OK:
            raise ProtocolError(f"sim: bulk write refused ({r.status})", r.status)

    def wait_done(self, max_cycles: int) -> int:
        """Let the simulation run (no Python per cycle) until the accelerator raises irq or
        ``max_cycles`` pass; returns the cycles waited. The host then reads STATUS."""
        from tritium.sim.server import wait_irq_frame

        self._sock.sendall(wait_irq_frame(max_cycles))
        r = self._recv_reply("a wait for irq")
        return int.from_bytes(r.payload[:4], "little") if r.payload else 0

    def close(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            self._sock = None
            try:
                sock.close()
            except OSError:
                pass
        if self._server is not None:
            srv, self._server = self._server, None
            srv.stop()


# ============================================================================ serial
class SerialDeviceTransport(Transport):
    """A board's UART bridge: :class:`tritium.host.transport_serial.SerialTransport` with its
    errors mapped to :class:`DeviceNotFound` / :class:`ProtocolError`."""

    name = "serial"

    def __init__(self, config: AcceleratorConfig, port: str | None = None, *,
                 baud: int | None = None, timeout: float = 2.0):
        from tritium.host import transport_serial as ts

        if not port:
            raise DeviceNotFound("serial: give the board's UART with --port (e.g. "
                                 "/dev/ttyUSB1)")
        self._ts = ts
        try:
            self._t = ts.SerialTransport(port, baud or ts.DEFAULT_BAUD, timeout=timeout)
        except ts.TransportError as e:
            raise DeviceNotFound(f"serial: {e}") from None

    def transact(self, frame: bytes) -> protocol.Response:
        ts = self._ts
        try:
            return self._t.transact(frame, check=False)
        except ts.TransportClosed as e:
            raise DeviceNotFound(f"serial: {e}") from None
        except ts.TransportError as e:
            raise ProtocolError(f"serial: {e}") from None

    def close(self) -> None:
        t = getattr(self, "_t", None)
        if t is not None:
            t.close()


#: Transport name -> class.
TRANSPORTS = {"golden": GoldenTransport, "sim": SimTransport, "serial": SerialDeviceTransport}


def open_transport(name: str, config: AcceleratorConfig, **kw) -> Transport:
    """Open the transport called ``name`` (``golden``, ``sim``, ``serial``)."""
    try:
        cls = TRANSPORTS[name]
    except KeyError:
        raise DeviceNotFound(f"transport {name!r} unknown; use one of "
                             f"{', '.join(TRANSPORTS)}") from None
    return cls(config, **kw)
