"""cocotb bridge between a pseudo-terminal and the UART pins of a simulated board design.

The design under test is :class:`tritium.fpga.boards.UartSoc` (the UART + a core: the SoC, or
the echo stand-in) with a small baud divisor. This testbench

* opens a pty (``os.openpty``) and writes its slave path to ``extra["pty_file"]``, where the
  host side (pytest, with pyserial and :class:`tritium.host.transport_serial.SerialTransport`)
  picks it up, exactly as it would open a board's USB UART;
* drives ``rxd`` bit by bit (start, 8 data bits LSB first, stop; ``divisor`` clocks per bit)
  with every byte it reads from the pty;
* samples ``txd`` in the middle of each bit and writes every byte it decodes into the pty;
* stops when ``extra["stop_file"]`` appears: its content ``"hangup"`` closes the pty at once
  (a board unplugged), anything else ends cleanly; ``extra["wall_limit_s"]`` bounds the run.

Only the UART line crosses the pty: baud divisor, synchronizer, receive FIFO and the bridge
are the real RTL.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import tty
from collections import deque

import cocotb
import cocotb.utils
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from tritium.sim.build import tb_report, test_params

CLK_NS = 1000  # a 1 MHz clock: only the number of clocks per bit matters


class PtyLink:
    """The master side of a pty: non-blocking reads, buffered non-blocking writes."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.out = bytearray()
        self.closed = False

    def read(self) -> bytes:
        if self.closed:
            return b""
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:  # EIO: nobody holds the slave any more
            return b""

    def write(self, data: bytes) -> None:
        self.out += data
        self.flush()

    def flush(self) -> None:
        while self.out and not self.closed:
            try:
                n = os.write(self.master, self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.out.clear()
                return
            del self.out[:n]

    def wait_readable(self, seconds: float) -> None:
        if not self.closed:
            select.select([self.master], [], [], seconds)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in (self.master, self.slave):
                with contextlib.suppress(OSError):
                    os.close(fd)


async def _tx_monitor(dut, link: PtyLink, bit_ns: int, stats: dict) -> None:
    """Decode frames on ``txd`` and forward the bytes to the pty."""
    while True:
        await FallingEdge(dut.txd)
        await Timer(bit_ns // 2, unit="ns")
        if int(dut.txd.value) != 0:
            stats["glitches"] += 1
            continue
        byte = 0
        for i in range(8):
            await Timer(bit_ns, unit="ns")
            byte |= int(dut.txd.value) << i
        await Timer(bit_ns, unit="ns")
        if int(dut.txd.value) != 1:
            stats["tx_frame_errors"] += 1
            continue
        stats["bytes_out"] += 1
        link.write(bytes([byte]))


def _publish(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the host polls for the file)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


async def _send_byte(dut, byte: int, bit_ns: int) -> None:
    for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
        dut.rxd.value = level
        await Timer(bit_ns, unit="ns")


@cocotb.test()
async def uart_pty_bridge(dut):
    """Serve the pty until the host asks to stop (see the module docstring)."""
    p = test_params()
    div = int(p.extra["divisor"])
    bit_ns = div * CLK_NS
    stop_file = p.extra["stop_file"]
    wall_limit = float(p.extra.get("wall_limit_s", 600))

    link = PtyLink()
    stats = {"bytes_in": 0, "bytes_out": 0, "glitches": 0, "tx_frame_errors": 0, "wait_s": 0.0}
    Clock(dut.clk, CLK_NS, unit="ns", impl="gpi").start()  # toggled in C, not in Python
    dut.rxd.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 8)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 8)
    cocotb.start_soon(_tx_monitor(dut, link, bit_ns, stats))

    _publish(p.extra["pty_file"], link.path)

    inq: deque[int] = deque()
    t0 = time.monotonic()
    idle = 0
    reason = "stop"
    while True:
        data = link.read()
        if data:
            inq.extend(data)
        link.flush()
        if inq:
            idle = 0
            await _send_byte(dut, inq.popleft(), bit_ns)
            stats["bytes_in"] += 1
            continue
        if os.path.exists(stop_file):
            reason = _read(stop_file) or "stop"
            break
        if time.monotonic() - t0 > wall_limit:
            reason = "wall limit"
            break
        # nothing to send: let the design run a byte time, and once the line has been quiet
        # for a while also give the host a moment (the simulation waits meanwhile)
        idle += 1
        await Timer(10 * bit_ns, unit="ns")
        if idle > 64 and not link.out:
            t1 = time.monotonic()
            link.wait_readable(0.0005)
            stats["wait_s"] += time.monotonic() - t1

    if reason == "hangup":
        link.close()  # the host sees the port vanish mid-session
        await Timer(20 * bit_ns, unit="ns")
    else:
        await Timer(20 * bit_ns, unit="ns")  # let a last reply leave
        link.flush()
        link.close()
    stats["wait_s"] = round(stats["wait_s"], 2)
    tb_report(**stats, stop=reason, wall_s=round(time.monotonic() - t0, 2),
              cycles=int(cocotb.utils.get_sim_time("ns")) // CLK_NS)
    assert reason != "wall limit", f"the host did not finish within {wall_limit:g} s"
    assert stats["tx_frame_errors"] == 0 and stats["glitches"] == 0, stats
