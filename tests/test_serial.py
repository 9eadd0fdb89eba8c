"""Serial transport (tritium.host.transport_serial) through pseudo-terminals.

Part 1 (fast): a Python model of the bridge answers on the master side of a pty (os.openpty)
while the transport opens the slave side with pyserial, exactly as it opens a USB UART. It
checks the byte and frame paths and every failure the transport must turn into a clear error
within its timeout: silence, truncated replies, bad CRC, stray bytes, error status, a port
that goes away, a port that does not exist, pyserial missing.

Part 2 (slow): the same transport against the simulated RTL: cocotb drives the UART pins of
:class:`tritium.fpga.boards.UartSoc` bit by bit from the bytes of a pty and writes the bits
it samples on ``txd`` back into the pty (tests/cocotb/tb_uart_pty.py); the transport runs the
device tests of the ``sim`` transport on it: memory blocks, CSR ID / CONFIG_HASH, a small
program whose results must equal the golden model's.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
import tty

import pytest
from tritium.host.transport_serial import (
    BridgeError,
    FrameError,
    SerialTransport,
    TransportClosed,
    TransportError,
    TransportTimeout,
)

from tritium import protocol

pytest.importorskip("serial")

ID_VALUE = 0x54524954


# =========================================================================== model device
class FakeBridge(threading.Thread):
    """The bridge protocol on the master side of a pty, with fault injection.

    ``mode``: ``"ok"``, ``"silent"`` (never answers), ``"truncate"`` (sends the first half
    of each reply), ``"badcrc"``, ``"stray"`` (garbage before each reply), ``"error"``
    (answers BAD_ADDR), ``"hangup"`` (closes the pty after the first request).
    """

    def __init__(self, mode: str = "ok", mem_size: int = 4096):
        super().__init__(daemon=True)
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the master never sees a hangup before the host opens
        self.mode = mode
        self.mem = bytearray(mem_size)
        self.csr = {0x00: ID_VALUE, 0x04: 0x00010000, 0x08: 0x1234ABCD}
        self.stop = threading.Event()
        self.requests = 0

    def _reply(self, status, payload=b""):
        frame = protocol.encode_response(status, payload)
        if self.mode == "truncate":
            frame = frame[: len(frame) // 2]
        elif self.mode == "badcrc":
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        elif self.mode == "stray":
            frame = b"\x00\x13\x37" + frame
        elif self.mode == "error":
            frame = protocol.encode_response(protocol.Status.BAD_ADDR)
        os.write(self.master, frame)

    def _handle(self, req):
        cmd = protocol.Cmd(req.cmd)
        if cmd == protocol.Cmd.PING:
            self._reply(0, struct.pack("<I", ID_VALUE))
        elif cmd == protocol.Cmd.READ_CSR:
            self._reply(0, struct.pack("<I", self.csr.get(req.addr, 0)))
        elif cmd == protocol.Cmd.WRITE_CSR:
            self.csr[req.addr] = struct.unpack("<I", req.payload)[0]
            self._reply(0)
        elif cmd == protocol.Cmd.READ_MEM:
            self._reply(0, bytes(self.mem[req.addr:req.addr + req.length]))
        else:
            self.mem[req.addr:req.addr + len(req.payload)] = req.payload
            self._reply(0)

    def run(self):
        buf = bytearray()
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.02)
            if not r:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            while len(buf) >= 1 + protocol.HEADER + 1:
                _cmd, _addr, length = struct.unpack("<BIH", buf[1:8])
                has_payload = buf[1] in (protocol.Cmd.WRITE_CSR, protocol.Cmd.WRITE_MEM)
                n = 1 + protocol.HEADER + (length if has_payload else 0) + 1
                if len(buf) < n:
                    break
                req = protocol.decode_request(bytes(buf[:n]))
                del buf[:n]
                self.requests += 1
                if self.mode == "hangup":
                    os.close(self.master)
                    os.close(self._slave)
                    return
                if self.mode != "silent":
                    self._handle(req)

    def close(self):
        self.stop.set()
        self.join(timeout=2)
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def bridge(request):
    dev = FakeBridge(getattr(request, "param", "ok"))
    dev.start()
    yield dev
    dev.close()


def _timed(fn, limit):
    t0 = time.monotonic()
    try:
        fn()
    finally:
        assert time.monotonic() - t0 < limit, "the transport must not hang"


# =========================================================================== fast tests
def test_bytes_and_frames(bridge):
    with SerialTransport(bridge.path, timeout=1.0) as t:
        assert t.ping() == ID_VALUE
        assert t.read_csr(0x00) == ID_VALUE
        assert t.read_csr(0x08) == 0x1234ABCD
        t.write_csr(0x1C, 0xDEADBEEF)
        assert t.read_csr(0x1C) == 0xDEADBEEF
        data = bytes(range(256)) * 3 + b"tail"  # > MAX_LEN: split into 4 requests
        t.write_mem(0x100, data)
        assert t.read_mem(0x100, len(data)) == data
        assert bridge.mem[0x100:0x100 + len(data)] == data
        # raw bytes: send a PING by hand, read the 9-byte reply with recv
        t.send(protocol.ping())
        raw = t.recv(9)
        assert raw == protocol.encode_response(0, struct.pack("<I", ID_VALUE))
    assert not t.is_open
    with pytest.raises(TransportClosed, match="closed"):
        t.send(b"x")


@pytest.mark.parametrize("bridge", ["silent"], indirect=True)
def test_silent_device_times_out(bridge):
    with SerialTransport(bridge.path, timeout=0.3) as t:
        with pytest.raises(TransportTimeout, match="no reply to PING") as e:
            _timed(t.ping, 2.0)
        assert e.value.received == b""
        with pytest.raises(TransportTimeout, match="waiting for 5 bytes"):
            _timed(lambda: t.recv(5, timeout=0.2), 2.0)


@pytest.mark.parametrize("bridge", ["truncate"], indirect=True)
def test_truncated_reply(bridge):
    with SerialTransport(bridge.path, timeout=0.3) as t:
        with pytest.raises(TransportTimeout, match="incomplete reply") as e:
            _timed(lambda: t.read_csr(0), 2.0)
        assert e.value.received[:1] == bytes([protocol.RESP_SYNC])


@pytest.mark.parametrize("bridge", ["badcrc"], indirect=True)
def test_bad_crc(bridge):
    with SerialTransport(bridge.path, timeout=0.5) as t, pytest.raises(FrameError, match="CRC"):
        t.read_csr(0)


@pytest.mark.parametrize("bridge", ["stray"], indirect=True)
def test_stray_bytes(bridge):
    with SerialTransport(bridge.path, timeout=0.5) as t, pytest.raises(FrameError, match="stray"):
        t.ping()


@pytest.mark.parametrize("bridge", ["error"], indirect=True)
def test_error_status(bridge):
    with SerialTransport(bridge.path, timeout=0.5) as t:
        with pytest.raises(BridgeError, match="BAD_ADDR") as e:
            t.read_mem(0x10, 4)
        assert e.value.status == protocol.Status.BAD_ADDR
        r = t.transact(protocol.read_mem(0x10, 4), check=False)
        assert r.status == protocol.Status.BAD_ADDR and r.payload == b""


@pytest.mark.parametrize("bridge", ["hangup"], indirect=True)
def test_port_goes_away(bridge):
    t = SerialTransport(bridge.path, timeout=1.0)
    with pytest.raises((TransportClosed, TransportTimeout)) as e:
        _timed(t.ping, 3.0)
    # once the pty is gone every further use says so, quickly
    with pytest.raises(TransportClosed):
        _timed(lambda: t.recv(1, timeout=0.5) if t.is_open else t.send(b"x"), 3.0)
    assert "went away" in str(e.value) or "timed out" in str(e.value)
    t.close()


def test_missing_port():
    with pytest.raises(TransportClosed, match="cannot open serial port '/dev/nonexistent-tty'"):
        SerialTransport("/dev/nonexistent-tty")


def test_pyserial_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "serial" or name.startswith("serial."):
            raise ImportError("No module named 'serial'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TransportError, match="pip install pyserial"):
        SerialTransport("/dev/ttyUSB0")


# =========================================================================== simulated board
TB_DIR = __import__("pathlib").Path(__file__).parent / "cocotb"
#: UART clocks per bit in simulation (the boards use clock / 1 Mbaud = 24 or 75)
SIM_DIVISOR = 8
#: bridge inter-byte timeout of the simulated SoC, cycles (25 byte times)
BRIDGE_TIMEOUT = 25 * 10 * SIM_DIVISOR


class SimulatedBoard:
    """Runs tests/cocotb/tb_uart_pty.py on ``UartSoc(cfg, SIM_DIVISOR, core)`` in a thread;
    ``path`` is the pty to open with pyserial. ``stop(how)`` ends it (``"hangup"``: the pty
    vanishes like an unplugged board)."""

    def __init__(self, cfg, core, name: str, tmp_path, key_extra: str, wall_limit_s=900):
        import functools

        from tritium.fpga.boards import UartSoc
        from tritium.sim.build import run_cocotb

        self.pty_file = tmp_path / "pty"
        self.stop_file = tmp_path / "stop"
        self.result = None
        self.error = None
        factory = functools.partial(UartSoc, divisor=SIM_DIVISOR, core=core)
        extra = {"divisor": SIM_DIVISOR, "pty_file": str(self.pty_file),
                 "stop_file": str(self.stop_file), "wall_limit_s": wall_limit_s}

        def run():
            try:
                self.result = run_cocotb(name, cfg, factory, "tb_uart_pty", TB_DIR,
                                         extra=extra,
                                         key_extra=f"div={SIM_DIVISOR}-{key_extra}")
            except BaseException as e:  # noqa: BLE001 - reported by stop()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 1200  # a first Verilator build of the SoC takes minutes
        while not self.pty_file.exists():
            if not self.thread.is_alive():
                raise AssertionError(f"simulation ended before opening its pty: {self.error}")
            assert time.monotonic() < deadline, "the simulated board did not start"
            time.sleep(0.2)
        self.path = self.pty_file.read_text()

    def stop(self, how: str = "stop"):
        self.stop_file.write_text(how)
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the simulation did not stop"
        if self.error is not None:
            raise self.error
        return self.result


def _source_key(*factories) -> str:
    from tritium.sim.build import source_hash

    return "-".join(source_hash(f) for f in factories)


@pytest.mark.slow
def test_uart_echo_through_pty(tmp_path):
    """UART RTL (baud divisor, synchronizer, FIFO) + echo core: bytes come back unchanged."""
    import random

    from tritium.fpga.boards import EchoCore

    from tritium.config import preset

    board = SimulatedBoard(preset("tiny"), EchoCore, "tritium_uart_echo", tmp_path,
                           _source_key(EchoCore), wall_limit_s=300)
    rng = random.Random(1)
    data = bytes(rng.randrange(256) for _ in range(300)) + b"\x00\xff\x55\xaa"
    try:
        with SerialTransport(board.path, timeout=30.0) as t:
            for i in range(0, len(data), 61):
                t.send(data[i:i + 61])
                assert t.recv(len(data[i:i + 61])) == data[i:i + 61]
            with pytest.raises(TransportTimeout, match="received 0"):
                t.recv(1, timeout=0.5)  # nothing extra came back
    finally:
        run = board.stop()
    assert run.report["bytes_in"] == run.report["bytes_out"] == len(data)


@pytest.fixture(scope="module")
def soc_board(tmp_path_factory):
    """The tiny SoC behind the UART, simulated; shared by the tests below (one build)."""
    import functools

    from tritium.config import preset

    soc = pytest.importorskip("tritium.fpga.soc")
    core = functools.partial(soc.TritiumSoc, timeout=BRIDGE_TIMEOUT)
    cfg = preset("tiny")
    with pytest.MonkeyPatch.context() as mp:
        # the model's evaluation code at -O1 (the rest -O0, as tests/test_top.py): the SoC
        # then simulates several times faster for about a minute more of build
        mp.setenv("TRITIUM_VERILATOR_OPT",
                  os.environ.get("TRITIUM_VERILATOR_OPT", "-O0 OPT_FAST=-O1"))
        board = SimulatedBoard(cfg, core, "tritium_uart_soc", tmp_path_factory.mktemp("soc"),
                               f"timeout={BRIDGE_TIMEOUT}-{_source_key(soc.TritiumSoc)}")
        yield cfg, board
        if board.thread.is_alive():
            board.stop()


@pytest.mark.slow
def test_serial_device_csrs_memory_program(soc_board):
    """The Device API over the serial transport against the simulated SoC: ID and
    CONFIG_HASH, memory blocks, a program whose results equal the golden model's."""
    import numpy as np
    from tritium.firmware.image import MemoryImage
    from tritium.host.device import Device

    from tritium import golden
    from tritium.isa import CSR, Instr, Op

    cfg, board = soc_board
    with Device.open("serial", cfg, port=board.path, timeout=30.0) as dev:  # checks ID + hash
        t = dev.transport
        assert t.ping() == ID_VALUE
        assert t.read_csr(CSR.ID) == ID_VALUE
        assert dev.config_hash() == cfg.hash32
        # memory blocks: unaligned, crossing the 256-byte frame limit, read back
        rng = np.random.default_rng(3)
        blob = rng.integers(0, 256, 777, dtype=np.uint8).tobytes()
        dev.write_mem(0x1003, blob)
        assert dev.read_mem(0x1003, len(blob)) == blob
        assert dev.read_mem(0x1000, 3) == b"\x00\x00\x00"
        # a small program: LOAD a block into SPAD, STORE it elsewhere, HALT
        img = MemoryImage(cfg, prog_bytes=64)
        src = img.place(rng.integers(0, 256, 64, dtype=np.uint8))
        dst = img.alloc(64)
        img.set_program([Instr.make(Op.LOAD, rows=2, row_bytes=32, stride=32, loc=0, dram=src),
                         Instr.make(Op.STORE, rows=2, row_bytes=32, stride=32, loc=0, dram=dst),
                         Instr.make(Op.HALT)])
        expect = golden.run(cfg, img.mem.copy()).mem
        dev.load(img)
        res = dev.run(0, timeout=120)
        assert res.ok and res.instret == 3 and res.cycles > 0
        got = dev.read_mem(0, img.top)
        assert got == bytes(np.asarray(expect[:img.top], np.uint8))


@pytest.mark.slow
def test_serial_ternary_gemm_equals_golden(soc_board):
    """A tiled ternary GEMM (the tiny preset's engine) sent, run and read back through the
    UART: C equals the golden model's memory and A @ W^T."""
    import numpy as np
    from tritium.firmware.image import MemoryImage
    from tritium.firmware.kernels import tiled_gemm
    from tritium.host.device import Device

    from tritium import golden
    from tritium import numerics as nx
    from tritium.isa import Instr, Op

    cfg, board = soc_board
    rng = np.random.default_rng(5)
    m, k, n = 3, 64, 8
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    img = MemoryImage(cfg, prog_bytes=16 * 64)
    pa, pw, pc = img.place(a), img.place(nx.pack_ternary(w)), img.alloc(4 * m * n)
    img.set_program(tiled_gemm(cfg, a=pa, w=pw, c=pc, m=m, k=k, n=n, engine="ternary")
                    + [Instr.make(Op.HALT)])
    expect = np.asarray(golden.run(cfg, img.mem.copy()).mem, np.uint8)
    with Device.open("serial", cfg, port=board.path, timeout=30.0) as dev:
        assert dev.load(img) == img.top
        res = dev.run(0, timeout=300)
        assert res.ok and res.cycles > 0
        got = dev.read_mem(pc, 4 * m * n)
    assert got == expect[pc:pc + 4 * m * n].tobytes()
    c = np.frombuffer(got, "<i4").reshape(m, n)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.slow
def test_serial_malformed_frames_and_hangup(soc_board):
    """Malformed and truncated frames get the bridge's error replies (clear errors, no hang),
    the link recovers; then the board 'goes away' and the host says so within its timeout."""
    from tritium.host.device import Device, DeviceNotFound

    cfg, board = soc_board
    with SerialTransport(board.path, timeout=20.0) as t:
        with pytest.raises(BridgeError, match="BAD_SYNC"):
            t.transact(b"\x00\x13\x37")  # garbage where a frame must start
        bad = bytearray(protocol.write_mem(0x40, b"\x11" * 8))
        bad[-1] ^= 0x5A
        with pytest.raises(BridgeError, match="BAD_CRC"):
            t.transact(bytes(bad))
        with pytest.raises(BridgeError, match="BAD_LEN"):
            t.transact(protocol.encode_request(protocol.Cmd.READ_MEM, 0, protocol.MAX_LEN)
                       [:1] + bytes([3]) + b"\x00\x00\x00\x00" + b"\x01\x01" + b"\x00")
        with pytest.raises(BridgeError, match="TIMEOUT"):
            t.transact(protocol.write_mem(0x40, b"\x22" * 8)[:6])  # truncated frame
        t.resync()
        assert t.read_mem(0x40, 8) != b"\x11" * 8  # the bad-CRC write did not happen
        assert t.read_csr(0) == ID_VALUE
    dev = Device.open("serial", cfg, port=board.path, timeout=5.0)
    board.stop("hangup")
    t0 = time.monotonic()
    with pytest.raises(DeviceNotFound, match="went away|closed"):
        dev.config_hash()
    assert time.monotonic() - t0 < 10
    dev.close()
