"""BankedMemory (rtl/scratchpad.py) in the Amaranth simulator against a model of its contract.

Every port issues random reads and byte-masked writes to a handful of words (so that ports
meet on a bank and reads meet writes of the same word), holding each request until ``ack``.
The model applies a write in its ``ack`` cycle; a read acknowledged in a cycle must return the
word as it is after that cycle's writes (write-first), one cycle later with ``rvalid``. All four
forms are run: round-robin or fixed priority, write-first read port or plain read port with
the same-word read held back a cycle (``transparent=False``). Coverage: that hold-back happens,
every port's reads and writes get through.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Elaboratable
from amaranth.sim import Simulator
from tritium.rtl.scratchpad import BankedMemory

WORD_BYTES = 4
WORDS = 16
CYCLES = 1500


def _run(banks: int, n_ports: int, fair: bool, transparent: bool, seed: int,
         groups: int = 1, turns: bool = False, read_reg: bool = False,
         addr_reg: bool = False) -> dict:
    """``groups`` > 1: the ports form that many groups (port ``i`` in group ``i % groups``)
    whose hot words differ, and only ports of one group are ``clash_pairs``. ``turns``: the
    groups are also the memory's arbitration ``groups`` and take turns (one group requests at
    a time, as the units do without queues), on shared hot words."""
    pairs = None
    if groups > 1:
        pairs = [(r, w) for r in range(n_ports) for w in range(n_ports)
                 if r != w and (turns or r % groups == w % groups)]
    dut = BankedMemory(WORD_BYTES, WORDS, banks, n_ports, "t", fair=fair,
                       transparent=transparent, clash_pairs=pairs,
                       groups=[i % groups for i in range(n_ports)] if turns else None,
                       read_reg=read_reg, addr_reg=addr_reg)
    assert dut.latency == 1 + read_reg + addr_reg
    rng = random.Random(seed)
    model = [0] * WORDS
    stats = {"reads": [0] * n_ports, "writes": [0] * n_ports, "held": 0, "turns": 0}

    async def bench(ctx):
        pending = [None] * n_ports  # (we, addr, wdata, wmask) held until ack
        # read data due in this cycle, and (read_reg, addr_reg) in the next ones
        due = [[None] * n_ports for _ in range(dut.latency)]
        turn = 0
        for _ in range(CYCLES):
            if turns and all(r is None for r in pending) and rng.random() < 0.1:
                turn = (turn + 1) % groups  # the next unit starts when the last is done
                stats["turns"] += 1
            for i, p in enumerate(dut.ports):
                if turns and i % groups != turn:
                    pass
                elif pending[i] is None and rng.random() < 0.7:
                    # a few hot words: collisions between ports and between reads and writes
                    if groups > 1 and not turns:  # the group's own hot words, nothing shared
                        addr = 4 * (i % groups) + rng.randrange(4)
                    else:
                        addr = rng.choice((0, 1, 2, 3, rng.randrange(WORDS)))
                    pending[i] = (rng.random() < 0.5, addr, rng.getrandbits(32),
                                  rng.randrange(1, 1 << WORD_BYTES))
                req = pending[i]
                ctx.set(p.en, req is not None)
                if req is not None:
                    we, addr, wdata, wmask = req
                    ctx.set(p.we, we)
                    ctx.set(p.addr, addr)
                    ctx.set(p.wdata, wdata)
                    ctx.set(p.wmask, wmask)
            # read data of the reads acknowledged ``latency`` cycles ago
            expect = due[0]
            for i, p in enumerate(dut.ports):
                assert ctx.get(p.rvalid) == (expect[i] is not None), (i, expect[i])
                if expect[i] is not None:
                    assert ctx.get(p.rdata) == expect[i], (i, hex(ctx.get(p.rdata)),
                                                           hex(expect[i]))
            acks = [ctx.get(p.ack) for p in dut.ports]
            # write-first: the writes of this cycle, then the reads see them
            for i, a in enumerate(acks):
                if a and pending[i][0]:
                    _, addr, wdata, wmask = pending[i]
                    for b in range(WORD_BYTES):
                        if wmask >> b & 1:
                            sh = 8 * b
                            model[addr] = model[addr] & ~(0xFF << sh) | wdata & (0xFF << sh)
                    stats["writes"][i] += 1
            written = {pending[i][1] for i, a in enumerate(acks) if a and pending[i][0]}
            read_banks = {pending[i][1] % banks for i, a in enumerate(acks)
                          if a and not pending[i][0]}
            expect_next = [None] * n_ports
            for i, a in enumerate(acks):
                req = pending[i]
                if (req is not None and not req[0] and not a and req[1] in written
                        and req[1] % banks not in read_banks):
                    stats["held"] += 1  # a read of a word written this cycle, held back
                if a:
                    if not req[0]:
                        expect_next[i] = model[req[1]]
                        stats["reads"][i] += 1
                    pending[i] = None
            due = due[1:] + [expect_next]
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return stats


@pytest.mark.parametrize("transparent", [True, False])
@pytest.mark.parametrize("fair", [True, False])
@pytest.mark.parametrize("banks", [1, 2])
def test_banked_memory_write_first(banks, fair, transparent):
    stats = _run(banks, 3, fair, transparent, seed=banks * 4 + fair * 2 + transparent)
    assert all(n > 50 for n in stats["reads"]), stats
    assert all(n > 50 for n in stats["writes"]), stats
    if not transparent:
        assert stats["held"] > 20, stats  # the hold-back path was exercised


@pytest.mark.parametrize("addr_reg", [False, True])
@pytest.mark.parametrize("banks", [1, 4])
def test_banked_memory_read_reg(banks, addr_reg):
    """``read_reg`` (the SPAD with queues), and ``addr_reg`` as well: the same write-first
    words, two (three) cycles after the ``ack``."""
    stats = _run(banks, 3, True, True, seed=60 + banks + 8 * addr_reg, read_reg=True,
                 addr_reg=addr_reg)
    assert all(n > 50 for n in stats["reads"]), stats
    assert all(n > 50 for n in stats["writes"]), stats


@pytest.mark.parametrize("banks", [1, 2])
def test_banked_memory_clash_pairs(banks):
    """``clash_pairs``: reads held back only for their own group's writes (two groups of two
    ports on different words, as a unit's read and write ports without queues)."""
    stats = _run(banks, 4, False, False, seed=40 + banks, groups=2)
    assert all(n > 50 for n in stats["reads"] + stats["writes"]), stats
    assert stats["held"] > 20, stats


@pytest.mark.parametrize("banks", [1, 2])
def test_banked_memory_arbitration_groups(banks):
    """Fixed priority within arbitration ``groups`` (two units of two ports taking turns on
    the same words, as without queues): write-first results, every port served."""
    stats = _run(banks, 4, False, False, seed=50 + banks, groups=2, turns=True)
    assert all(n > 20 for n in stats["reads"] + stats["writes"]), stats
    assert stats["turns"] > 10 and stats["held"] > 5, stats


def test_arbitration_groups_independent():
    """A port yields to the lower-index ports of its own group only: no grant depends on
    another group's request (that is what takes the other units' request logic out of a
    unit's ``ack``); within a group the lowest index wins."""
    dut = BankedMemory(WORD_BYTES, WORDS, 1, 3, "t", fair=False, transparent=False,
                       groups=["a", "b", "b"])
    seen = []

    async def bench(ctx):
        for reqs in ((1, 1, 1), (1, 0, 1), (0, 1, 1), (1, 1, 0)):
            for p, r in zip(dut.ports, reqs):
                ctx.set(p.en, r)
                ctx.set(p.we, 0)
            seen.append(tuple(ctx.get(p.ack) for p in dut.ports))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(1, 1, 0), (1, 0, 1), (0, 1, 0), (1, 1, 0)]


# --------------------------------------------------------------------- registered_product
class _Mult18x18dModel(Elaboratable):
    """What the ECP5's MULT18X18D does with the parameters ``registered_product`` may give it:
    an 18x18 product of A and B (signed where SIGNEDA / SIGNEDB are 1) into P (36 bits), through
    the output register clocked by CLK0 and enabled by CE0 when REG_OUTPUT_CLK is "CLK0"
    (Lattice's DSP user guide); input and pipeline registers are not modelled (the helper must
    leave them off)."""

    def __init__(self, kind, **kw):
        assert kind == "MULT18X18D"
        for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_INPUTC_CLK", "REG_PIPELINE_CLK"):
            assert kw[f"p_{reg}"] == "NONE", reg
        self.out_reg = kw["p_REG_OUTPUT_CLK"]
        assert self.out_reg in ("NONE", "CLK0")
        assert self.out_reg == "NONE" or kw["p_REG_OUTPUT_CE"] == "CE0"
        self.kw = kw

    def elaborate(self, platform):
        from amaranth.hdl import Cat, Module, Mux, Signal

        kw = self.kw
        m = Module()
        a = Cat(*(kw[f"i_A{i}"] for i in range(18)))
        b = Cat(*(kw[f"i_B{i}"] for i in range(18)))
        p = Cat(*(kw[f"o_P{i}"] for i in range(36)))
        prod = Signal(36)
        m.d.comb += prod.eq(Mux(kw["i_SIGNEDA"], a.as_signed(), a)
                            * Mux(kw["i_SIGNEDB"], b.as_signed(), b))
        if self.out_reg == "NONE":
            m.d.comb += p.eq(prod)
        else:
            q = Signal(36)
            with m.If(kw["i_CE0"]):
                m.d.sync += q.eq(prod)
            m.d.comb += p.eq(q)
        return m


@pytest.mark.parametrize(("wa", "sa", "wb", "sb", "width"),
                         [(16, False, 16, False, 32), (16, False, 16, True, 33),
                          (16, True, 16, False, 33), (16, True, 16, True, 32),
                          (17, True, 9, True, 26)])
def test_registered_product_ecp5_dsp(monkeypatch, wa, sa, wb, sb, width):
    """``registered_product`` on the ECP5 (an instantiated MULT18X18D, run here through a model
    of the primitive) and elsewhere (a plain product register): the same values, loaded only
    with ``en``, for random operands including the extremes of each range."""
    import tritium.rtl.scratchpad as sp_mod
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    monkeypatch.setattr(sp_mod, "Instance", _Mult18x18dModel)

    class Ecp5:
        family = "ecp5"

    rng = random.Random(wa * 100 + wb + sa * 7 + sb * 13)
    lo_a, hi_a = (-(1 << (wa - 1)), (1 << (wa - 1)) - 1) if sa else (0, (1 << wa) - 1)
    lo_b, hi_b = (-(1 << (wb - 1)), (1 << (wb - 1)) - 1) if sb else (0, (1 << wb) - 1)
    vecs = [(x, y, rng.random() < 0.7) for x in (lo_a, hi_a, 0) for y in (lo_b, hi_b, 0)]
    vecs += [(rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b), rng.random() < 0.7)
             for _ in range(300)]
    def run(platform):
        m = Module()
        a = Signal(signed(wa) if sa else wa)
        b = Signal(signed(wb) if sb else wb)
        en = Signal()
        p = sp_mod.registered_product(m, platform, a, b, en, "p", width)
        sim = Simulator(m)
        sim.add_clock(1e-6)
        got = []

        async def tb(ctx):
            for x, y, e in vecs:
                ctx.set(a, x)
                ctx.set(b, y)
                ctx.set(en, e)
                await ctx.tick()
                got.append(ctx.get(p))

        sim.add_testbench(tb)
        sim.run()
        return got

    for platform in (Ecp5(), None):
        held = 0
        for (x, y, e), g in zip(vecs, run(platform)):
            if e:
                held = x * y
            assert g == held, (platform, x, y, e, g, held)
