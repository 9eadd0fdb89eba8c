"""cocotb testbench of :class:`tritium.rtl.lut_core.LutCore` (run via tests/test_rtl_lut.py).

Drivers on ``cmd``, ``act`` and ``wgt`` with random idle cycles, a sink with random backpressure
on ``res``, and two scoreboards: every result beat is compared with
:func:`tritium.numerics.gemm_lut` (packed weights, the LUT way) and with
:func:`tritium.numerics.gemm_i8` on :func:`~tritium.numerics.unpack_lut_weights`.
Beats are built from the device layout by :func:`~tritium.rtl.lut_core.lut_wgt_beats`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from tritium.rtl.lut_core import LUT_DEPTH, lut_act_beats, lut_cmd, lut_tile_cycles, lut_wgt_beats
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

from tritium.numerics import gemm_i8, gemm_lut, pack_lut_weights, unpack_lut_weights


async def _count_high(clk, sig, box: list[int]) -> None:
    """Count the cycles in which ``sig`` is 1 (coverage of the backpressure path)."""
    while True:
        await RisingEdge(clk)
        await ReadOnly()
        box[0] += int(sig.value)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


class LutTB:
    """Stimulus + models + scoreboards for one LutCore instance."""

    def __init__(self, dut, cfg, seed: int, counter: CycleCounter | None = None):
        self.g, self.L, self.max_bits = cfg.lut_group, cfg.lut_lanes, cfg.lut_max_bits
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        kw = {"rng": self.rng, "counter": counter}
        self.cmd = StreamDriver(dut, "cmd", **kw)
        self.act = StreamDriver(dut, "act", **kw)
        self.wgt = StreamDriver(dut, "wgt", **kw)
        self.sb_lut = Scoreboard("res vs gemm_lut")
        self.sb_i8 = Scoreboard("res vs gemm_i8")
        self.sink = StreamSink(dut, "res", **kw, keep=False, callback=self._observe)
        self.prev_lut: np.ndarray | None = None
        self.prev_i8: np.ndarray | None = None
        self.tiles = 0
        self.bits_seen: set[int] = set()

    def _observe(self, word: int) -> None:
        got = unpack_vec(word, self.L, 32)
        self.sb_lut.observe(got)
        self.sb_i8.observe(got)

    def set_stalls(self, idle: float, stall: float) -> None:
        for d in (self.cmd, self.act, self.wgt):
            d.idle_prob = idle
        self.sink.stall_prob = stall

    def send_tile(self, a: np.ndarray, w: np.ndarray, bits: int, acc: bool = False) -> None:
        """Queue one tile: ``a`` int8 [K], ``w`` [L, K] ``bits``-bit weights."""
        k = a.shape[0]
        packed = pack_lut_weights(w, bits)  # device layout [L, bits, K/8]
        a2 = a[None, :]
        exp_lut = gemm_lut(a2, packed, bits, k, self.g)[0].astype(np.int64)
        exp_i8 = gemm_i8(a2, unpack_lut_weights(packed, bits, k))[0].astype(np.int64)
        if acc:
            exp_lut = _wrap32(exp_lut + self.prev_lut)
            exp_i8 = _wrap32(exp_i8 + self.prev_i8)
        self.prev_lut, self.prev_i8 = exp_lut, exp_i8
        self.cmd.send(lut_cmd(k, bits, acc))
        for beat in lut_act_beats(a, self.g):
            self.act.send(pack_vec(beat, 8))
        for beat in lut_wgt_beats(packed, self.g):
            self.wgt.send(pack_vec(beat, self.g))
        tag = f"tile {self.tiles} K={k} bits={bits} acc={int(acc)}"
        self.sb_lut.expect([int(v) for v in exp_lut], tag=tag)
        self.sb_i8.expect([int(v) for v in exp_i8], tag=tag)
        self.tiles += 1
        self.bits_seen.add(bits)

    def random_tile(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """A random tile of ``bits``-bit weights; K and values cover the extremes."""
        g, L = self.np, self.L
        half = 1 << (bits - 1)
        kind = self.rng.choices(
            ["rand", "a_min", "a_max", "a_zero", "w_max", "w_min", "extreme", "long"],
            weights=[50, 6, 6, 5, 6, 6, 10, 2],
        )[0]
        k = 8 * self.rng.choice([1, 1, 2, 3, 4, 6, 8])
        if kind == "long":
            k = 8 * int(g.integers(16, 48))
        a = g.integers(-128, 128, size=k)
        w = g.integers(-half, half, size=(L, k))
        if kind == "a_min":
            a[...] = -128
        elif kind == "a_max":
            a[...] = 127
        elif kind == "a_zero":
            a[...] = 0
        elif kind == "w_max":  # all-max weights (offset-binary all ones), often with a = -128
            w[...] = half - 1
            if self.rng.random() < 0.5:
                a[...] = -128
        elif kind == "w_min":
            w[...] = -half
            if self.rng.random() < 0.5:
                a[...] = -128
        elif kind == "extreme":
            a = g.choice([-128, 127, -1, 0, 1], size=k)
            w = g.choice(sorted({-half, half - 1, -1, 0}), size=(L, k))
        return a.astype(np.int64), w.astype(np.int64)


@cocotb.test()
async def lut_random(dut):
    """Random tiles (every bits value, extremes, acc chains) with random stalls on every
    stream; every output compared with gemm_lut and gemm_i8."""
    p = test_params()
    target = p.nvec or 4000
    await clock_and_reset(dut)
    tb = LutTB(dut, p.cfg, p.seed)
    stalls = [(0.0, 0.0), (0.2, 0.2), (0.4, 0.1), (0.1, 0.5), (0.5, 0.5), (0.0, 0.85)]
    held = [0]  # cycles the core was held by res backpressure (dut.stall)
    cocotb.start_soon(_count_high(dut.clk, dut.stall, held))
    batch = 0
    sent = 0
    while sent < target:
        tb.set_stalls(*stalls[batch % len(stalls)])
        for t in range(24):
            bits = 1 + (batch * 24 + t) % tb.max_bits
            acc = tb.prev_lut is not None and tb.rng.random() < 0.2
            tb.send_tile(*tb.random_tile(bits), bits, acc=acc)
            sent += tb.L
        await tb.wgt.wait_idle()
        await tb.sb_lut.wait_done(timeout_cycles=20_000, clk=dut.clk)
        batch += 1
    # minimum-size tiles (K = 8) under heavy res backpressure: the output FIFO fills up
    tb.set_stalls(0.0, 0.9)
    for t in range(60):
        bits = 1 + t % min(2, tb.max_bits)
        half = 1 << (bits - 1)
        a = tb.np.integers(-128, 128, size=8)
        w = tb.np.integers(-half, half, size=(tb.L, 8))
        tb.send_tile(a, w, bits, acc=t % 7 == 3)
    await tb.wgt.wait_idle()
    await tb.sb_lut.wait_done(timeout_cycles=20_000, clk=dut.clk)
    # a K-split chain of extreme tiles (acc=1), every bits value, then a fresh tile
    tb.set_stalls(0.2, 0.2)
    for bits in range(1, tb.max_bits + 1):
        half = 1 << (bits - 1)
        for i in range(3):
            a = np.full(64, -128 if i % 2 else 127, np.int64)
            w = np.full((tb.L, 64), -half if i else half - 1, np.int64)
            tb.send_tile(a, w, bits, acc=i > 0)
    tb.send_tile(*tb.random_tile(1), 1, acc=False)
    await tb.wgt.wait_idle()
    await tb.sb_lut.wait_done(timeout_cycles=20_000, clk=dut.clk)
    res = tb.sb_lut.report()
    res_i8 = tb.sb_i8.report()
    await ClockCycles(dut.clk, 4)
    assert dut.busy.value == 0, "busy must drop once every result was delivered"
    assert res["elements"] >= target
    dut._log.info("checked %d outputs in %d tiles", res["elements"], tb.tiles)
    tb_report(
        checked=res["elements"],
        checked_i8=res_i8["elements"],
        tiles=tb.tiles,
        bits_seen=sorted(tb.bits_seen),
        stall_cycles=held[0],
    )


@cocotb.test()
async def lut_latency(dut):
    """No stalls: a tile's res transfers exactly ``lut_tile_cycles(K, g, bits)`` cycles after its
    cmd; back-to-back tiles keep wgt moving every cycle."""
    p = test_params()
    await clock_and_reset(dut)
    counter = CycleCounter(dut.clk)
    tb = LutTB(dut, p.cfg, p.seed, counter=counter)
    g = tb.g
    measured = {}
    for bits in range(1, tb.max_bits + 1):
        for k in (8, 64):
            await ClockCycles(dut.clk, 3)
            assert dut.busy.value == 0
            c0, m0 = tb.cmd.sent, tb.sink.count
            half = 1 << (bits - 1)
            a = tb.np.integers(-128, 128, size=k)
            w = tb.np.integers(-half, half, size=(tb.L, k))
            tb.send_tile(a, w, bits)
            await tb.sb_lut.wait_done(timeout_cycles=5_000, clk=dut.clk)
            got = tb.sink.cycles[m0] - tb.cmd.sent_cycles[c0]
            want = lut_tile_cycles(k, g, bits)
            dut._log.info("K=%d bits=%d: %d cycles (formula %d)", k, bits, got, want)
            assert got == want, f"K={k} bits={bits}: {got} cycles, docstring says {want}"
            measured[f"k{k}_bits{bits}"] = got
    # throughput: back-to-back tiles of mixed bits, wgt never idle, res every tile's beats
    await ClockCycles(dut.clk, 3)
    c0, w0, m0 = tb.cmd.sent, tb.wgt.sent, tb.sink.count
    nbeats = []
    for i in range(8):
        bits = 1 + i % tb.max_bits
        k = 8 * (1 + i % 3)
        a = tb.np.integers(-128, 128, size=k)
        w = tb.np.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(tb.L, k))
        tb.send_tile(a, w, bits)
        nbeats.append((k // g) * bits)
    await tb.sb_lut.wait_done(timeout_cycles=5_000, clk=dut.clk)
    wc = tb.wgt.sent_cycles[w0:]
    ok = wc == list(range(wc[0], wc[0] + sum(nbeats)))
    ends = np.cumsum(nbeats)
    rc = tb.sink.cycles[m0:]
    start = tb.cmd.sent_cycles[c0]
    ok = ok and rc == [start + int(e) + LUT_DEPTH for e in ends]
    assert ok, f"back-to-back: wgt cycles {wc}, res cycles {rc}, cmd at {start}"
    tb.sb_lut.report()
    tb.sb_i8.report()
    tb_report(latency=measured, throughput_ok=bool(ok))
