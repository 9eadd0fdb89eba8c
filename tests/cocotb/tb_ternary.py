"""cocotb testbench of :class:`tritium.rtl.ternary.TernaryEngine` (run via tests/test_rtl_ternary.py).

Drivers on ``cmd``, ``act``, ``wgt`` with random idle cycles, a sink with random backpressure
on ``res``, and a scoreboard against :func:`tritium.numerics.gemm_ternary` on weights packed by
:func:`tritium.numerics.pack_ternary`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles
from tritium.rtl.ternary import ternary_latency
from tritium.sim.build import tb_report, test_params
from tritium.sim.stream import (
    CycleCounter,
    Scoreboard,
    StreamDriver,
    StreamSink,
    clock_and_reset,
    pack_vec,
    unpack_vec,
)

from tritium.numerics import gemm_ternary, pack_ternary

INT32_MAX = (1 << 31) - 1


def _cmd(beats: int, acc: bool) -> int:
    return (beats & 0xFFFF) | (int(acc) << 16)


class TernaryTB:
    """Stimulus + model + scoreboard for one TernaryEngine instance."""

    def __init__(self, dut, cfg, seed: int, counter: CycleCounter | None = None):
        self.L, self.T = cfg.ternary_lanes, cfg.ternary_k
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        kw = {"rng": self.rng, "counter": counter}
        self.cmd = StreamDriver(dut, "cmd", **kw)
        self.act = StreamDriver(dut, "act", **kw)
        self.wgt = StreamDriver(dut, "wgt", **kw)
        self.sb = Scoreboard("res")
        self.sink = StreamSink(
            dut,
            "res",
            **kw,
            keep=False,
            callback=lambda w: self.sb.observe(unpack_vec(w, self.L, 32)),
        )
        self.prev: np.ndarray | None = None
        self.tiles = 0

    def set_stalls(self, idle: float, stall: float) -> None:
        for d in (self.cmd, self.act, self.wgt):
            d.idle_prob = idle
        self.sink.stall_prob = stall

    def send_tile(self, a: np.ndarray, packed: np.ndarray, acc: bool = False) -> None:
        """Queue one tile: ``a`` int8 [K], ``packed`` uint8 [L, K/4]; expect their product."""
        k = a.shape[0]
        assert k % self.T == 0 and packed.shape == (self.L, k // 4)
        beats = k // self.T
        if k:
            exp = gemm_ternary(a[None, :], packed, k)[0].astype(np.int64)
        else:
            exp = np.zeros(self.L, np.int64)
        if acc:
            assert self.prev is not None
            exp = exp + self.prev
        assert np.abs(exp).max(initial=0) <= INT32_MAX, "test must keep sums within int32"
        self.prev = exp
        self.cmd.send(_cmd(beats, acc))
        bpb = self.T // 4  # packed bytes per lane per beat
        for j in range(beats):
            self.act.send(pack_vec(a[j * self.T : (j + 1) * self.T], 8))
            self.wgt.send(pack_vec(packed[:, j * bpb : (j + 1) * bpb].reshape(-1), 8))
        self.sb.expect([int(x) for x in exp], tag=f"tile {self.tiles} beats={beats}")
        self.tiles += 1

    def random_tile(self, beats: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A random (activation row, packed weights) pair with extremes and reserved codes."""
        g, L, T = self.np, self.L, self.T
        kind = self.rng.choices(
            ["rand", "extreme", "zero", "maxpos", "maxneg", "sparse", "long", "reserved"],
            weights=[45, 12, 4, 4, 4, 8, 3, 8],
        )[0]
        if beats is None:
            beats = self.rng.choice([0, 1, 1, 2, 3, int(g.integers(1, 9))])
            if kind == "long":
                beats = int(g.integers(16, 80))
        k = beats * T
        a = g.integers(-128, 128, size=k)
        w = g.integers(-1, 2, size=(L, k))
        if kind == "extreme":
            a = g.choice([-128, 127, -1, 0, 1], size=k)
        elif kind == "zero":
            if self.rng.random() < 0.5:
                a[...] = 0
            else:
                w[...] = 0
        elif kind == "maxpos":  # -128 * -1 everywhere: +128 K
            a[...] = -128
            w[...] = -1
        elif kind == "maxneg":  # -128 * +1 everywhere: -128 K
            a[...] = -128
            w[...] = 1
        elif kind == "sparse":
            w = w * (g.random((L, k)) < 0.15)
        packed = pack_ternary(w) if k else np.zeros((L, 0), np.uint8)
        if kind == "reserved" and k:  # turn some 0b00 codes into the reserved 0b10 (reads as 0)
            codes = (packed[:, :, None] >> np.arange(0, 8, 2)) & 3
            flip = (codes == 0) & (g.random(codes.shape) < 0.5)
            codes = np.where(flip, 0b10, codes)
            packed = (codes << np.arange(0, 8, 2)).sum(axis=2).astype(np.uint8)
        return a.astype(np.int64), packed


@cocotb.test()
async def ternary_random(dut):
    """Random tiles with random idle/backpressure on every stream, checked element by element."""
    p = test_params()
    target = p.nvec or 2000
    await clock_and_reset(dut)
    tb = TernaryTB(dut, p.cfg, p.seed)
    stalls = [(0.0, 0.0), (0.1, 0.1), (0.3, 0.3), (0.6, 0.2), (0.1, 0.7), (0.5, 0.5)]
    sent = 0
    batch = 0
    while sent < target:
        tb.set_stalls(*stalls[batch % len(stalls)])
        for _ in range(25):
            a, packed = tb.random_tile()
            acc = tb.prev is not None and tb.rng.random() < 0.25
            if acc and np.abs(tb.prev).max() > (1 << 29):
                acc = False
            tb.send_tile(a, packed, acc=acc)
            sent += tb.L
        await tb.act.wait_idle()
        await tb.sb.wait_done(timeout_cycles=20_000, clk=dut.clk)
        batch += 1
    # accumulate chain of extreme tiles (K split in pieces), then a plain tile
    tb.set_stalls(0.2, 0.2)
    for i in range(4):
        a = np.full(8 * tb.T, -128, np.int64)
        w = np.full((tb.L, 8 * tb.T), 1 if i % 2 else -1, np.int64)
        tb.send_tile(a, pack_ternary(w), acc=i > 0)
    tb.send_tile(*tb.random_tile(), acc=False)
    await tb.act.wait_idle()
    await tb.sb.wait_done(timeout_cycles=20_000, clk=dut.clk)
    res = tb.sb.report()
    await ClockCycles(dut.clk, 2)
    assert dut.busy.value == 0, "busy must drop once every result was delivered"
    assert res["elements"] >= target
    dut._log.info("checked %d elements in %d tiles", res["elements"], tb.tiles)
    tb_report(checked=res["elements"], tiles=tb.tiles)


@cocotb.test()
async def ternary_latency_test(dut):
    """No stalls: a tile of B beats takes exactly ``ternary_latency(B)`` cycles; back-to-back
    tiles sustain one beat per cycle."""
    p = test_params()
    await clock_and_reset(dut)
    counter = CycleCounter(dut.clk)
    tb = TernaryTB(dut, p.cfg, p.seed + 1, counter=counter)
    measured = {}
    for beats in (1, 2, 3, 8, 33):
        tb.cmd.send(_cmd(beats, False))
        await tb.cmd.wait_idle()  # data only once the cmd is in
        a, packed = tb.random_tile(beats)
        exp = gemm_ternary(a[None, :], packed, beats * tb.T)[0]
        bpb = tb.T // 4
        for j in range(beats):
            tb.act.send(pack_vec(a[j * tb.T : (j + 1) * tb.T], 8))
            tb.wgt.send(pack_vec(packed[:, j * bpb : (j + 1) * bpb].reshape(-1), 8))
        tb.sb.expect([int(x) for x in exp], tag=f"beats={beats}")
        n0, m0 = tb.act.sent, tb.sink.count
        await tb.sb.wait_done(timeout_cycles=10_000, clk=dut.clk)
        got = tb.sink.cycles[m0] - tb.act.sent_cycles[n0]
        want = ternary_latency(beats)
        dut._log.info("beats=%d: %d cycles (formula %d)", beats, got, want)
        assert got == want, f"beats={beats}: tile took {got} cycles, docstring says {want}"
        measured[f"latency_b{beats}"] = got
    # throughput: N back-to-back tiles of B beats: (N - 1) * B + ternary_latency(B) cycles
    for beats, n in ((1, 8), (3, 6)):
        n0, m0 = tb.act.sent, tb.sink.count
        tb.prev = None
        for _ in range(n):
            tb.send_tile(*tb.random_tile(beats))
        await tb.sb.wait_done(timeout_cycles=10_000, clk=dut.clk)
        got = tb.sink.cycles[m0 + n - 1] - tb.act.sent_cycles[n0]
        want = (n - 1) * beats + ternary_latency(beats)
        assert got == want, f"{n} back-to-back tiles of {beats} beats: {got} cycles, not {want}"
        assert tb.act.sent_cycles[-1] - tb.act.sent_cycles[n0] == n * beats - 1, "input stalled"
        measured[f"throughput_b{beats}_n{n}"] = got
    tb.sb.report()
    tb_report(**measured)
