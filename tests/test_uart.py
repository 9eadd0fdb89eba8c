"""UART RTL (tritium.rtl.uart): baud divisor arithmetic, and bit-level checks in Amaranth's
simulator against an independent line model (bytes -> levels, levels -> bytes)."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator
from tritium.rtl.uart import MIN_DIVISOR, Uart, UartError, UartRx, UartTx, baud_divisor


# --------------------------------------------------------------------------- divisor
@pytest.mark.parametrize(
    "clock_hz, baud, div",
    [(24e6, 115_200, 208), (75e6, 115_200, 651), (24e6, 1_000_000, 24), (75e6, 1_000_000, 75),
     (1e6, 62_500, 16), (12e6, 3_000_000, 4)],
)
def test_baud_divisor(clock_hz, baud, div):
    assert baud_divisor(clock_hz, baud) == div


def test_baud_divisor_errors():
    with pytest.raises(UartError, match="clocks per bit"):
        baud_divisor(12e6, 4_000_000)
    with pytest.raises(UartError, match="off"):
        baud_divisor(10e6, 2_300_000)  # 4.35 -> 4: 8.7 % off
    with pytest.raises(UartError, match="> 0"):
        baud_divisor(10e6, 0)
    with pytest.raises(UartError):
        UartTx(MIN_DIVISOR - 1)


# --------------------------------------------------------------------------- line model
def frame_bits(byte: int, stop: int = 1) -> list[int]:
    """Line levels of one 8N1 frame."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def decode_line(levels: list[int], div: int) -> list[int]:
    """Bytes of a line sampled once per clock (independent of the RTL)."""
    out, i = [], 0
    while i < len(levels):
        if levels[i] == 0:
            mid = i + div // 2
            if mid + 9 * div >= len(levels):
                break
            bits = [levels[mid + k * div] for k in range(1, 9)]
            assert levels[mid + 9 * div] == 1, "stop bit must be 1"
            out.append(sum(b << k for k, b in enumerate(bits)))
            i = mid + 9 * div
        else:
            i += 1
    return out


# --------------------------------------------------------------------------- transmitter
@pytest.mark.parametrize("div", [4, 7, 16])
def test_tx_frames(div):
    rng = random.Random(div)
    data = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF, 0x55]
    dut = UartTx(div)
    levels: list[int] = []

    async def tb(ctx):
        for b in data:
            ctx.set(dut.data.payload, b)
            ctx.set(dut.data.valid, 1)
            while True:
                levels.append(ctx.get(dut.txd))
                ready = ctx.get(dut.data.ready)
                await ctx.tick()
                if ready:
                    break
            ctx.set(dut.data.valid, 0)
        for _ in range(11 * div):
            levels.append(ctx.get(dut.txd))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert decode_line(levels, div) == data
    # back to back: the whole stream takes exactly 10 bit times per byte (+ the first cycle)
    first = levels.index(0)
    last_stop_end = first + 10 * div * len(data)
    assert all(v == 1 for v in levels[last_stop_end:])


# --------------------------------------------------------------------------- receiver
def line_segments(frames: list[list[int]], div: int, rate_err: float = 0.0) -> list[tuple[int, int]]:
    """(level, clocks) segments of frames sent at ``div * (1 + rate_err)`` clocks per bit
    (edges rounded to whole clocks from the start of each frame)."""
    segs = []
    for bits in frames:
        t_prev = 0
        for k, b in enumerate(bits, 1):
            t = round(k * div * (1 + rate_err))
            segs.append((b, t - t_prev))
            t_prev = t
    return segs


def _drive_rx(dut, segments, *, stall_prob=0.0, seed=0, tail=200, ready_from=None):
    """Drive (level, clocks) ``segments`` into ``dut.rxd``; collect the bytes of the receive
    stream (with random ``ready`` stalls; ready from clock ``ready_from`` on, if given) and
    count the error pulses."""
    rng = random.Random(seed)
    got: list[int] = []
    errs = {"frame_err": 0, "overrun": 0}
    stream = dut.rx if isinstance(dut, Uart) else dut.data

    async def driver(ctx):
        ctx.set(dut.rxd, 1)
        await ctx.tick().repeat(20)
        for level, clocks in segments:
            ctx.set(dut.rxd, level)
            await ctx.tick().repeat(clocks)
        ctx.set(dut.rxd, 1)
        await ctx.tick().repeat(tail)

    async def sink(ctx):
        clocks = 0
        async for _clk, _rst, valid, ready, payload, fe, ov in ctx.tick().sample(
            stream.valid, stream.ready, stream.payload, dut.frame_err, dut.overrun
        ):
            if valid and ready:
                got.append(payload)
            errs["frame_err"] += fe
            errs["overrun"] += ov
            clocks += 1
            ctx.set(stream.ready, (ready_from is not None and clocks >= ready_from)
                    or rng.random() >= stall_prob)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_process(sink)
    sim.run()
    return got, errs


@pytest.mark.parametrize(
    "div, rate_err", [(4, 0.0), (8, -0.03), (8, 0.0), (8, 0.03), (16, -0.03), (16, 0.03)]
)
def test_rx_bytes_with_rate_error(div, rate_err):
    """Bytes from a sender up to 3 % slow or fast arrive unchanged, back to back."""
    rng = random.Random(div)
    data = [rng.randrange(256) for _ in range(24)] + [0x00, 0xFF]
    got, errs = _drive_rx(UartRx(div), line_segments([frame_bits(b) for b in data], div,
                                                     rate_err))
    assert got == data
    assert errs == {"frame_err": 0, "overrun": 0}


def test_rx_framing_error_and_glitch():
    div = 16
    segs = line_segments([frame_bits(0xA5)], div)
    segs += [(0, 3), (1, 40)]  # a 3-clock glitch is no start bit
    segs += line_segments([frame_bits(0x3C, stop=0)], div)  # framing error ...
    segs += [(0, 5 * div), (1, 2 * div)]  # ... and the line stays low (break) for a while
    segs += line_segments([frame_bits(0x81)], div)
    got, errs = _drive_rx(UartRx(div), segs)
    assert got == [0xA5, 0x81]
    assert errs == {"frame_err": 1, "overrun": 0}


def test_rx_overrun_without_fifo():
    div = 8
    segs = line_segments([frame_bits(b) for b in (1, 2, 3, 4)], div)
    got, errs = _drive_rx(UartRx(div), segs, stall_prob=1.0)
    assert got == []
    assert errs["overrun"] == 3  # the first byte waits in the register, the rest are dropped


def test_uart_fifo_absorbs_stalls():
    div = 8
    rng = random.Random(5)
    data = [rng.randrange(256) for _ in range(40)]
    got, errs = _drive_rx(Uart(div, rx_fifo=16), line_segments([frame_bits(b) for b in data],
                                                               div),
                          stall_prob=0.9, seed=3, tail=2000)
    assert got == data
    assert errs["overrun"] == 0


def test_uart_fifo_full_drops_later_bytes():
    """A full receive FIFO keeps its bytes; each later byte is dropped with an overrun pulse
    (the shortest frame spacing: bytes back to back at the smallest divisor)."""
    div = 4
    data = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]
    segs = line_segments([frame_bits(b) for b in data], div)
    got, errs = _drive_rx(Uart(div, rx_fifo=4), segs, stall_prob=1.0,
                          ready_from=20 + sum(c for _, c in segs) + 10, tail=100)
    assert got == data[:4]
    assert errs == {"frame_err": 0, "overrun": 3}


def test_uart_loopback():
    """tx -> txd wired to rxd -> rx: bytes come back unchanged."""
    div = 6
    data = list(range(0, 256, 7))
    dut = Uart(div, rx_fifo=4)
    got: list[int] = []

    async def tb(ctx):
        ctx.set(dut.rx.ready, 1)
        idx = 0
        for _ in range(12 * div * (len(data) + 2)):
            if idx < len(data):
                ctx.set(dut.tx.payload, data[idx])
                ctx.set(dut.tx.valid, 1)
            else:
                ctx.set(dut.tx.valid, 0)
            ctx.set(dut.rxd, ctx.get(dut.txd))
            took = ctx.get(dut.tx.valid) and ctx.get(dut.tx.ready)
            if ctx.get(dut.rx.valid):
                got.append(ctx.get(dut.rx.payload))
            await ctx.tick()
            idx += bool(took)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == data
