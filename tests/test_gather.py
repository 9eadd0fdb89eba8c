"""Gather (rtl/top.py) in the Amaranth simulator against a byte-level model of its contract.

Every shape the GEMM units use (per-lane caches, one cache per group, partial last group,
groups longer than a word, a variable ``ostride``) is driven with walker-like and random beat
addresses, random masks, a SPAD that acknowledges at random and a consumer that pauses at
random; every beat's bytes must equal the SPAD bytes the contract names, and no beat may wait
longer than a bound.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from tritium.rtl.scratchpad import ReadSlice
from tritium.rtl.top import Gather

# (lanes, group, word_bytes, var_ostride): the shapes GemmUnit builds, and edge shapes
SHAPES = [
    (8, 8, 8, False),    # base ternary activations: one grouped unit
    (32, 2, 8, False),   # base ternary weights: 16 grouped units
    (4, 4, 4, False),    # tiny ternary activations
    (4, 1, 4, False),    # tiny ternary weights: per lane
    (16, 4, 8, True),    # base LUT weights (one lane per plane)
    (8, 1, 8, False),    # systolic rows
    (7, 3, 4, False),    # grouped, partial last group
    (8, 8, 4, False),    # group longer than a word: per lane
]
ADDR_BITS = 7  # 128 words: small, so that addresses wrap around the SPAD


def _expect(mem: bytes, lanes, group, p):
    out = []
    for i in range(lanes):
        grp, off = divmod(i, group)
        if grp < p["glim"] and p["klo"] <= off < p["khi"]:
            a = p["base"] + grp * p["gstride"] + off * p["ostride"]
            out.append(mem[a % len(mem)])
        else:
            out.append(0)
    return out


@pytest.mark.parametrize("latency", [1, 2, "sliced", "staged"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])) + "v" * s[3])
def test_gather_random_beats(shape, latency):
    """Random beats against the model; between instructions (during ``flush``) the words the
    next one starts on are rewritten, so a word read before the flush must not be used.
    ``sliced``: a tagged gather reads through a :class:`ReadSlice` from a SPAD of latency 2,
    so its answers come 3 or more cycles after the ``ack`` (the random grants of the SPAD
    hold requests in the slice). ``staged``: the same with the cache writes in a stage of
    their own (``fill_stage``, as the GEMM units build it)."""
    lanes, group, wb, var_ost = shape
    staged = latency == "staged"
    sliced = latency == "sliced" or staged
    mem_latency = 2 if sliced else latency
    dut = Gather(lanes, group, wb, ADDR_BITS, var_ostride=var_ost,
                 latency=ReadSlice.nominal_latency(mem_latency) if sliced else latency,
                 tagged=sliced, fill_stage=staged)
    assert dut.grouped == (not var_ost and 1 < group <= wb)
    rnd = random.Random((hash(shape) + mem_latency + 7 * sliced + 13 * staged) & 0xFFFF)
    mem = bytearray(rnd.randrange(256) for _ in range(wb << ADDR_BITS))
    ngroups = -(-lanes // group)
    instrs = []
    last = 0
    for _ in range(8):
        aligned = rnd.random() < 0.5
        gstride = rnd.choice([0, wb, 2 * wb, group, rnd.randrange(1, 64)])
        ostride = rnd.randrange(1, 40) if var_ost else 1
        base = rnd.randrange(0, 512) & (~(wb - 1) if aligned else -1)
        if rnd.random() < 0.5:
            base = last  # start where the last one stopped: its words may be in flight
        step = rnd.choice([group, wb, 1, 2])
        beats = []
        for b in range(24):
            if rnd.random() < 0.15:
                base = rnd.randrange(0, 4 * len(mem))  # a jump (wraps around the SPAD)
            klo = rnd.randrange(group) if var_ost and rnd.random() < 0.5 else 0
            khi = group if rnd.random() < 0.7 else rnd.randrange(klo, group + 1)
            glim = ngroups if rnd.random() < 0.7 else rnd.randrange(0, ngroups + 1)
            beats.append({"base": base % (1 << 24), "gstride": gstride, "ostride": ostride,
                          "glim": glim, "klo": klo, "khi": khi})
            base += step
        last = base % (1 << 24)  # where a walker would go on
        instrs.append(beats)
    got, exp = [], []
    waits = []
    # a beat may need two new words per cache unit, each read at the SPAD's random grants
    bound = 32 + 8 * len(dut.units())

    def adv(beats, b):
        """The base of the beat after beat ``b`` (the walker stays on the last one)."""
        return beats[min(b + 1, len(beats) - 1)]["base"]

    async def tb(ctx):
        reg = [None]  # (staged) the walker's register as the gather's copies hold it next

        def set_base_adv(now, after):
            """The walker's register: ``base_adv`` = ``now`` in this cycle, ``after`` in the
            next. A staged gather takes the register's change (``base_adv_load``,
            ``base_adv_next``) and keeps copies of it: those hold ``now`` only if it was set
            a cycle ahead. As a walker, this loads the register when its value changes (and
            at random when it does not); without a load ``base_adv_next`` is garbage, which
            the copies must ignore."""
            if staged:
                load = after != reg[0] or rnd.random() < 0.3
                ctx.set(dut.base_adv_load, load)
                ctx.set(dut.base_adv_next, after if load else rnd.randrange(1 << 24))
                reg[0] = after
            elif now is not None:
                ctx.set(dut.base_adv, now)

        for beats in instrs:
            # the walker's view: base (glim, klo, khi) = this beat's address (lane limits),
            # base_adv (..._adv) = the next one's, take = the beat is accepted this cycle (the
            # address and limits move on only then)
            p0 = beats[0]
            if rnd.random() < 0.5:
                # an abandoned beat (an instruction ends while reads are in flight): the
                # words this instruction starts on are requested, then the flush comes
                for k in ("base", "glim", "klo", "khi"):
                    ctx.set(getattr(dut, k), p0[k])
                    if k != "base":
                        ctx.set(getattr(dut, f"{k}_adv"), p0[k])
                set_base_adv(p0["base"], p0["base"])
                ctx.set(dut.req, 1)
                for _ in range(rnd.randrange(1, 4)):
                    await ctx.tick()
            ctx.set(dut.req, 0)
            ctx.set(dut.gstride, p0["gstride"])
            ctx.set(dut.ostride, p0["ostride"])
            ctx.set(dut.base, p0["base"])
            ctx.set(dut.flush, 1)
            # (the walker loads its register with the second beat's base in the flush cycle)
            set_base_adv(None, adv(beats, 0))
            # in the flush cycle a word near the one this instruction starts on changes: a
            # read of it acknowledged in the cycle before answers after the flush (latency
            # 2), or in it (1), and must not be used
            w = (p0["base"] // wb + rnd.randrange(-1, 2)) % (1 << ADDR_BITS)
            new = bytes(rnd.randrange(256) for _ in range(wb))
            mem[w * wb:(w + 1) * wb] = new
            ctx.set(wp.addr, w)
            ctx.set(wp.data, int.from_bytes(new, "little"))
            ctx.set(wp.en, 1)
            await ctx.tick()
            ctx.set(wp.en, 0)
            ctx.set(dut.flush, 0)
            for b, p in enumerate(beats):
                for k in ("base", "glim", "klo", "khi"):
                    ctx.set(getattr(dut, k), p[k])
                nxt = beats[min(b + 1, len(beats) - 1)]
                for k in ("glim", "klo", "khi"):
                    ctx.set(getattr(dut, f"{k}_adv"), nxt[k])
                set_base_adv(adv(beats, b), adv(beats, b))
                while rnd.random() < 0.2:  # consumer pause
                    ctx.set(dut.req, 0)
                    await ctx.tick()
                ctx.set(dut.req, 1)
                n = 0
                while not ctx.get(dut.valid):
                    await ctx.tick()
                    n += 1
                    assert n < bound, ("beat never became valid", p)
                waits.append(n)
                got.append([ctx.get(dut.data[i]) for i in range(lanes)])
                exp.append(_expect(mem, lanes, group, p))
                ctx.set(dut.take, 1)
                set_base_adv(adv(beats, b), adv(beats, b + 1))  # the walker steps
                await ctx.tick()
                ctx.set(dut.take, 0)
        ctx.set(dut.req, 0)

    # the SPAD: a memory that acknowledges a request when ``grant`` (random) is high
    top = Module()
    top.submodules.dut = dut
    top.submodules.ram = ram = Memory(
        shape=8 * wb, depth=1 << ADDR_BITS,
        init=[int.from_bytes(mem[w * wb:(w + 1) * wb], "little") for w in range(1 << ADDR_BITS)])
    rd = ram.read_port()
    wp = ram.write_port()
    grant = Signal()
    port = dut.port
    if sliced:
        # the gather takes its answers from the slice's owner registers (as the GEMM units
        # do), which must equal the client port's
        top.submodules.slice = rs = ReadSlice(ADDR_BITS, wb, len(dut.port.tag), mem_latency)
        c, d = rs.client, dut.port
        top.d.comb += [c.addr.eq(d.addr), c.en.eq(d.en), c.we.eq(d.we), c.tag.eq(d.tag),
                       d.ack.eq(c.ack), d.rdata.eq(c.rdata),
                       d.rvalid.eq(rs.owner_rvalid[0]), d.rtag.eq(rs.owner_rtag[0])]
        port = wiring.flipped(rs.mem)

        async def owner_copies(ctx):
            level = 0  # the slice's requests: acknowledged to the client, not yet to memory
            async for _, _, took, m_en, m_ack in ctx.tick().sample(c.ack, rs.mem.en,
                                                                   rs.mem.ack):
                level += took - (m_en & m_ack)
                assert 0 <= level <= 2
                # the slice's ``ready`` register is its FIFO's "not full"
                assert ctx.get(rs.ready) == (level < 2), level
                assert ctx.get(rs.owner_rvalid[0]) == ctx.get(c.rvalid)
                if ctx.get(c.rvalid):
                    assert ctx.get(rs.owner_rtag[0]) == ctx.get(c.rtag)
    top.d.comb += [port.ack.eq(port.en & grant), rd.addr.eq(port.addr), rd.en.eq(port.ack)]
    if mem_latency == 1:
        top.d.comb += port.rdata.eq(rd.data)
        top.d.sync += port.rvalid.eq(port.ack)
    else:  # the SPAD's read data register (BankedMemory read_reg)
        rv1 = Signal()
        top.d.sync += [rv1.eq(port.ack), port.rvalid.eq(rv1), port.rdata.eq(rd.data)]

    async def grants(ctx):
        async for _ in ctx.tick():
            ctx.set(grant, rnd.random() < 0.7)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(grants, background=True)
    if sliced:
        sim.add_testbench(owner_copies, background=True)
    sim.add_testbench(tb)
    sim.run()
    assert len(got) == sum(len(b) for b in instrs)
    for k, (g, e) in enumerate(zip(got, exp)):
        assert g == e, (k, g, e)


def test_gather_fill_stage_needs_a_tagged_port():
    """The staged fill is built and tested for tagged (sliced) ports only."""
    with pytest.raises(ValueError, match="fill_stage needs a tagged port"):
        Gather(8, 1, 8, ADDR_BITS, latency=2, fill_stage=True)
