"""cocotb testbench of :class:`tritium.rtl.systolic.SystolicArray` (run via tests/test_rtl_systolic.py).

Driver per input stream (``cmd``, ``act``, ``wgt``) with random idle cycles, a sink with random
backpressure on ``res``, and a scoreboard against :func:`tritium.numerics.gemm_i8`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles
from tritium.rtl.systolic import systolic_latency
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

from tritium.numerics import gemm_i8

INT32_MAX = (1 << 31) - 1


def _cmd(beats: int, acc: bool) -> int:
    return (beats & 0xFFFF) | (int(acc) << 16)


class SystolicTB:
    """Stimulus + model + scoreboard for one SystolicArray instance."""

    def __init__(self, dut, cfg, seed: int, counter: CycleCounter | None = None):
        self.R, self.C = cfg.sa_rows, cfg.sa_cols
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
            callback=lambda w: self.sb.observe(unpack_vec(w, self.C, 32)),
        )
        self.prev: np.ndarray | None = None  # result of the previous tile (for acc)
        self.tiles = 0

    def set_stalls(self, idle: float, stall: float) -> None:
        for d in (self.cmd, self.act, self.wgt):
            d.idle_prob = idle
        self.sink.stall_prob = stall

    def send_tile(self, a: np.ndarray, w: np.ndarray, acc: bool = False) -> None:
        """Queue one tile: ``a`` int8 [R, K], ``w`` int8 [C, K]; expect ``a @ w.T`` (+ prev)."""
        k = a.shape[1]
        assert a.shape == (self.R, k) and w.shape == (self.C, k)
        exp = gemm_i8(a, w).astype(np.int64) if k else np.zeros((self.R, self.C), np.int64)
        if acc:
            assert self.prev is not None
            exp = exp + self.prev
        assert np.abs(exp).max(initial=0) <= INT32_MAX, "test must keep sums within int32"
        self.prev = exp
        self.cmd.send(_cmd(k, acc))
        for j in range(k):
            self.act.send(pack_vec(a[:, j], 8))
            self.wgt.send(pack_vec(w[:, j], 8))
        for r in range(self.R):
            self.sb.expect([int(x) for x in exp[r]], tag=f"tile {self.tiles} row {r} K={k}")
        self.tiles += 1

    def random_tile(self) -> tuple[np.ndarray, np.ndarray]:
        """A random tile; K and value patterns cover extremes, zeros and maximal sums."""
        R, C, g = self.R, self.C, self.np
        p = max(R, C)
        kind = self.rng.choices(
            ["rand", "extreme", "zero", "maxpos", "maxneg", "sparse", "long"],
            weights=[50, 12, 4, 4, 4, 8, 3],
        )[0]
        k = self.rng.choice([0, 1, 2, 3, p - 1, p, p + 1, int(g.integers(1, 3 * p + 1))])
        k = max(k, 0) if self.rng.random() > 0.02 else 0
        if kind == "long":
            k = int(g.integers(64, 300))
        a = g.integers(-128, 128, size=(R, k))
        w = g.integers(-128, 128, size=(C, k))
        if kind == "extreme":
            a = g.choice([-128, 127, -1, 0, 1], size=(R, k))
            w = g.choice([-128, 127, -1, 0, 1], size=(C, k))
        elif kind == "zero":
            (a if self.rng.random() < 0.5 else w)[...] = 0
        elif kind == "maxpos":  # largest positive sums: (-128)*(-128)
            a[...] = -128
            w[...] = -128
        elif kind == "maxneg":  # most negative sums: (-128)*127
            a[...] = -128
            w[...] = 127
        elif kind == "sparse":
            a = a * (g.random((R, k)) < 0.2)
            w = w * (g.random((C, k)) < 0.2)
        return a.astype(np.int64), w.astype(np.int64)


@cocotb.test()
async def systolic_random(dut):
    """Random tiles with random idle/backpressure on every stream, checked element by element."""
    p = test_params()
    target = p.nvec or 2000
    await clock_and_reset(dut)
    tb = SystolicTB(dut, p.cfg, p.seed)
    stalls = [(0.0, 0.0), (0.1, 0.1), (0.3, 0.3), (0.6, 0.2), (0.1, 0.7), (0.5, 0.5)]
    elems_per_tile = tb.R * tb.C
    sent = 0
    batch = 0
    while sent < target:
        tb.set_stalls(*stalls[batch % len(stalls)])
        for _ in range(12):
            a, w = tb.random_tile()
            acc = tb.prev is not None and tb.rng.random() < 0.25
            if acc and np.abs(tb.prev).max() > (1 << 29):
                acc = False
            tb.send_tile(a, w, acc=acc)
            sent += elems_per_tile
        await tb.act.wait_idle()
        await tb.sb.wait_done(timeout_cycles=20_000, clk=dut.clk)
        batch += 1
    # a chain of accumulating tiles (K split in pieces), then one more plain tile
    tb.set_stalls(0.2, 0.2)
    for i in range(4):
        a = np.full((tb.R, 40), -128, np.int64)
        w = np.full((tb.C, 40), -128 if i % 2 else 127, np.int64)
        tb.send_tile(a, w, acc=i > 0)
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
async def systolic_latency_test(dut):
    """No stalls: a tile takes exactly ``systolic_latency(R, C, K)`` cycles; back-to-back tiles
    with ``K >= max(R, C)`` sustain one beat per cycle."""
    p = test_params()
    await clock_and_reset(dut)
    counter = CycleCounter(dut.clk)
    tb = SystolicTB(dut, p.cfg, p.seed + 1, counter=counter)
    R, C = tb.R, tb.C
    measured = {}
    for k in sorted({1, 2, R, C, max(R, C) + 3, 32}):
        # cmd first, data only once the cmd is in, so the first beat is never held by the cmd
        tb.cmd.send(_cmd(k, False))
        await tb.cmd.wait_idle()
        a = tb.np.integers(-128, 128, size=(R, k))
        w = tb.np.integers(-128, 128, size=(C, k))
        tb.prev = None
        exp = gemm_i8(a, w)
        for j in range(k):
            tb.act.send(pack_vec(a[:, j], 8))
            tb.wgt.send(pack_vec(w[:, j], 8))
        for r in range(R):
            tb.sb.expect([int(x) for x in exp[r]], tag=f"K={k} row {r}")
        n0, m0 = tb.act.sent, tb.sink.count
        await tb.sb.wait_done(timeout_cycles=10_000, clk=dut.clk)
        first_in = tb.act.sent_cycles[n0]
        last_out = tb.sink.cycles[m0 + R - 1]
        got = last_out - first_in
        want = systolic_latency(R, C, k)
        dut._log.info("K=%d: %d cycles (formula %d)", k, got, want)
        assert got == want, f"K={k}: tile took {got} cycles, docstring formula says {want}"
        measured[f"latency_k{k}"] = got
    # throughput: N back-to-back tiles of K >= max(R, C): N*K + R + C cycles in all
    k, n = max(R, C) + 2, 6
    n0, m0 = tb.act.sent, tb.sink.count
    tb.prev = None
    for _ in range(n):
        a = tb.np.integers(-128, 128, size=(R, k))
        w = tb.np.integers(-128, 128, size=(C, k))
        tb.send_tile(a, w)
    await tb.sb.wait_done(timeout_cycles=10_000, clk=dut.clk)
    got = tb.sink.cycles[m0 + n * R - 1] - tb.act.sent_cycles[n0]
    want = (n - 1) * k + systolic_latency(R, C, k)
    assert got == want, f"{n} back-to-back tiles of K={k}: {got} cycles, expected {want}"
    assert tb.act.sent_cycles[-1] - tb.act.sent_cycles[n0] == n * k - 1, "input stalled"
    tb.sb.report()
    tb_report(**measured, throughput_cycles=got)
