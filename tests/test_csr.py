"""CsrBlock (rtl/csr.py) in the Amaranth simulator against a model of its counters.

Random activity on every counted input (busy, retire, each unit's busy and stall), START and
RESET through CTRL writes, and AXI4-Lite reads of every counter at random times with random
``rready`` delays. A counter read must return a value the model's counter held between the
read's address handshake and its response (counters only grow between clears); after a quiet
spell (no events) the value must be exact. The 64-bit CYCLES counter's carry is checked by
starting its low word just below 2**32.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from tritium.rtl.csr import OVERLAP_UNITS, CsrBlock

from tritium.config import preset
from tritium.isa import CSR, CSR_ID_VALUE, UNITS


class _Model:
    """The counters as the CSR docstring defines them."""

    def __init__(self, slots):
        self.names = [n for n, _ in slots]
        self.v = dict.fromkeys(self.names, 0)
        self.cycles = 0

    def clear(self):
        self.v = dict.fromkeys(self.names, 0)
        self.cycles = 0

    def step(self, busy, retire, ubusy, ustall):
        if not busy:
            return
        self.cycles += 1
        self.v["instret"] += retire
        dma = ubusy[UNITS.index("load")] or ubusy[UNITS.index("store")]
        comp = any(ubusy[UNITS.index(u)] for u in OVERLAP_UNITS)
        self.v["overlap"] += int(dma and comp)
        for i, u in enumerate(UNITS):
            if f"busy_{u}" in self.v:
                self.v[f"busy_{u}"] += ubusy[i]
                self.v[f"stall_{u}"] += ustall[i]

    def read(self, name):
        if name == "cycles_lo":
            return self.cycles & 0xFFFF_FFFF
        if name == "cycles_hi":
            return self.cycles >> 32
        return self.v[name] & 0xFFFF_FFFF


async def _axil_read(ctx, bus, rnd, off, cyc=None):
    """One AXI4-Lite read of ``off``, ``rready`` raised 0-3 cycles after ``rvalid``: (data,
    k, j), with ``cyc`` a cycle counter: k edges before the one that took the address, j the
    edge that raised ``rvalid`` (both None without ``cyc``)."""
    ctx.set(bus.araddr, off)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    k = ctx.get(cyc) - 1 if cyc is not None else None
    while not ctx.get(bus.rvalid):
        await ctx.tick()
    j = ctx.get(cyc) if cyc is not None else None
    for _ in range(rnd.choice([0, 0, 1, 3])):
        await ctx.tick()
    got = ctx.get(bus.rdata)
    ctx.set(bus.rready, 1)
    await ctx.tick()
    ctx.set(bus.rready, 0)
    return got, k, j


@pytest.mark.parametrize("cfg_name", ["tiny", "base"])
def test_csr_counters(cfg_name):
    cfg = preset(cfg_name)
    rnd = random.Random(cfg_name)
    dut = CsrBlock(cfg)
    slots = dut.counter_slots()
    model = _Model(slots)
    top = Module()
    top.submodules.dut = dut
    cyc = Signal(32)  # clock edges so far
    top.d.sync += cyc.eq(cyc + 1)
    hist = [{n: 0 for n, _ in slots}]  # hist[k]: every counter's model value after k edges
    bus = dut.bus
    state = {"quiet": False, "clear_next": False, "checked": 0, "exact": 0, "hi": 0}
    base_cycles = 0xFFFF_FFC0  # CYCLES_LO starts near the wrap

    async def activity(ctx):
        sampled = (dut.busy, dut.retire, dut.unit_busy, dut.unit_stall, bus.awvalid,
                   bus.awready, bus.awaddr, bus.wdata)
        async for _, _, busy, retire, ubusy, ustall, awv, awr, awaddr, wdata in \
                ctx.tick().sample(*sampled):
            # the inputs the edge just sampled
            if state["clear_next"]:
                model.clear()
                state["clear_next"] = False
            else:
                model.step(busy, retire, [(ubusy >> i) & 1 for i in range(len(UNITS))],
                           [(ustall >> i) & 1 for i in range(len(UNITS))])
            hist.append({n: model.read(n) for n in model.names})
            if awv and awr and awaddr == CSR.CTRL and wdata & 3:
                state["clear_next"] = True
            quiet = state["quiet"]
            ctx.set(dut.busy, 0 if quiet else int(rnd.random() < 0.9))
            ctx.set(dut.retire, 0 if quiet else int(rnd.random() < 0.3))
            ctx.set(dut.unit_busy, 0 if quiet else rnd.getrandbits(len(UNITS)))
            ctx.set(dut.unit_stall, 0 if quiet else rnd.getrandbits(len(UNITS)))

    async def read(ctx, off):
        return await _axil_read(ctx, bus, rnd, off, cyc)

    async def write(ctx, off, val):
        ctx.set(bus.awaddr, off)
        ctx.set(bus.wdata, val)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        await ctx.tick().until(bus.awready)
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        ctx.set(bus.bready, 1)
        await ctx.tick().until(bus.bvalid)
        ctx.set(bus.bready, 0)
        await ctx.tick().repeat(2)

    async def tb(ctx):
        # let the power-on stale marks flush, then start CYCLES just below 2**32
        state["quiet"] = True
        await ctx.tick().repeat(len(slots) + 3)
        ctx.set(dut.counter_mem.data[0], base_cycles)
        model.cycles = base_cycles
        state["quiet"] = False
        got, _, _ = await read(ctx, CSR.ID)
        assert got == CSR_ID_VALUE
        for it in range(400):
            r = rnd.random()
            if r < 0.03 and it > 80:  # (first see CYCLES wrap)
                await write(ctx, CSR.CTRL, rnd.choice([1, 2, 3]))
                continue
            if r < 0.1:  # quiet spell: every counter must then read exactly
                state["quiet"] = True
                await ctx.tick().repeat(len(slots) + 3)
            name, off = rnd.choice(slots)
            got, k, j = await read(ctx, off)
            # a counter read returns the count as of the edge two before the one raising rvalid
            exp = hist[j - 2][name]
            assert j - 2 >= k, (it, name, k, j)
            if name == "cycles_hi":  # the carry reaches the high word within one flush round
                window = {h[name] for h in hist[max(0, j - 2 - len(slots) - 2):j - 1]}
                assert got in window, (it, name, got, window)
            else:
                assert got == exp, (it, name, got, exp, k, j)
            if state["quiet"]:
                assert got == hist[k][name], (it, name, got, hist[k][name])
                state["exact"] += 1
                state["quiet"] = False
            state["hi"] += name == "cycles_hi" and got > 0
            state["checked"] += 1
            for _ in range(rnd.randrange(0, 2 * len(slots))):
                await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_process(activity)
    sim.add_testbench(tb)
    sim.run()
    assert state["checked"] > 300 and state["exact"] > 20, state
    assert state["hi"] > 0, "the CYCLES carry into the high word was never seen"


@pytest.mark.parametrize("cfg_name", ["tiny", "base"])
def test_csr_prog_base_watchdog(cfg_name):
    """PROG_BASE and WATCHDOG (``CsrBlock.reg_mem``): power-on values, random writes and reads
    (random ``rready`` delays), the ``watchdog`` output (the old value until at most two cycles
    after the write's address handshake, the new one from then on; never anything else), and
    ``prog_base`` in every ``start`` cycle (START written at random moments)."""
    cfg = preset(cfg_name)
    rnd = random.Random(f"regs-{cfg_name}")
    dut = CsrBlock(cfg)
    bus = dut.bus
    model = {CSR.PROG_BASE: 0, CSR.WATCHDOG: cfg.watchdog_cycles}
    # (power-on: the watchdog port's first read is in the first cycle, 0 before it)
    state = {"wd_ok": {0, cfg.watchdog_cycles}, "settle": 1, "starts": 0, "wd_checks": 0,
             "reads": 0}

    async def monitor(ctx):
        async for _, _, start, pb, wd in ctx.tick().sample(dut.start, dut.prog_base,
                                                           dut.watchdog):
            if start:
                assert pb == model[CSR.PROG_BASE], (hex(pb), hex(model[CSR.PROG_BASE]))
                state["starts"] += 1
            if state["settle"]:
                state["settle"] -= 1
                assert wd in state["wd_ok"], (wd, state["wd_ok"])
            else:
                assert wd == model[CSR.WATCHDOG], (wd, model[CSR.WATCHDOG])
                state["wd_ok"] = {wd}
                state["wd_checks"] += 1

    async def read(ctx, off):
        return (await _axil_read(ctx, bus, rnd, off))[0]

    async def write(ctx, off, val):
        ctx.set(bus.awaddr, off)
        ctx.set(bus.wdata, val)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        await ctx.tick().until(bus.awready)  # the edge that takes the write
        if off == CSR.WATCHDOG:
            state["wd_ok"] = {model[CSR.WATCHDOG], val}
            state["settle"] = 2
        if off in model:
            model[off] = val
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        ctx.set(bus.bready, rnd.choice([0, 1]))
        while not ctx.get(bus.bvalid):
            await ctx.tick()
        ctx.set(bus.bready, 1)
        await ctx.tick()
        ctx.set(bus.bready, 0)

    async def tb(ctx):
        await ctx.tick().repeat(3)
        assert await read(ctx, CSR.PROG_BASE) == 0
        assert await read(ctx, CSR.WATCHDOG) == cfg.watchdog_cycles
        for _ in range(300):
            r = rnd.random()
            off = rnd.choice([CSR.PROG_BASE, CSR.WATCHDOG])
            if r < 0.35:
                await write(ctx, off, rnd.getrandbits(32))
            elif r < 0.5:
                await write(ctx, CSR.CTRL, rnd.choice([1, 1, 3, 4, 5]))
            elif r < 0.55:
                await write(ctx, CSR.ID, rnd.getrandbits(32))  # read-only: ignored
            else:
                got = await read(ctx, off)
                assert got == model[off], (hex(off), hex(got), hex(model[off]))
                state["reads"] += 1
            for _ in range(rnd.choice([0, 0, 1, 2, 5])):
                await ctx.tick()
        await ctx.tick().repeat(3)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(monitor)
    sim.add_testbench(tb)
    sim.run()
    assert state["starts"] > 25 and state["reads"] > 80 and state["wd_checks"] > 500, state
