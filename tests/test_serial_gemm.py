"""SerialTernaryGemm (rtl/serial_gemm.py) in the Amaranth simulator against the golden numerics.

Random GEMM_TERN instructions (any byte alignment of A and W, row counts, channel counts,
``k``, ``accumulate`` over random old values) run on a SPAD whose one read port serves both
streams and acknowledges at random, and an ACC whose read and write ports acknowledge at
random. After every instruction the whole ACC must equal ``numerics.gemm_ternary`` (plus the
old values, int32 wrap-around) written into the old image; nothing else may change. The same
cases run on ``base``'s parallel ternary :class:`~tritium.rtl.top.GemmUnit`, whose tagged
SPAD ports read through :class:`~tritium.rtl.scratchpad.ReadSlice` registers from a SPAD of
read latency 2 (its ``done`` must wait for the writer's queue: two mutations caught).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from tritium.rtl.scratchpad import ReadSlice, acc_latency, spad_latency
from tritium.rtl.serial_gemm import SerialTernaryGemm
from tritium.rtl.top import GemmUnit, delayed

from tritium import isa, numerics
from tritium.config import preset

SPAD_WORDS, ACC_WORDS = 128, 64


def _gemm_case(rnd: random.Random, bb: int):
    """A random GEMM_TERN that fits the small memories: (instr fields, A, packed W)."""
    while True:
        m_, n_ = rnd.randint(1, 3), rnd.randint(1, 6)
        k = 8 * rnd.randint(1, 6)
        a = rnd.randrange(0, SPAD_WORDS * bb // 2)
        w = rnd.randrange(SPAD_WORDS * bb // 2, SPAD_WORDS * bb - n_ * k // 4 + 1)
        c = 4 * rnd.randrange(0, ACC_WORDS * bb // 4 - m_ * n_ + 1)
        if a + m_ * k <= SPAD_WORDS * bb // 2 and w >= 0:
            break
    A = np.array([[rnd.randint(-128, 127) for _ in range(k)] for _ in range(m_)])
    if rnd.random() < 0.2:  # extreme sums: every activation -128 or 127
        A = np.where(A < 0, -128, 127)
    W = np.array([[rnd.choice([-1, 0, 1]) for _ in range(k)] for _ in range(n_)])
    packed = numerics.pack_ternary(W)
    if rnd.random() < 0.3:  # some zero weights as the reserved code 0b10 (reads as 0)
        for o, j, t in np.ndindex(n_, k // 4, 4):
            if (packed[o, j] >> 2 * t) & 3 == 0 and rnd.random() < 0.3:
                packed[o, j] |= 2 << 2 * t
    fields = {"m": m_, "n": n_, "k": k, "a": a, "w": w, "c": c,
              "accumulate": int(rnd.random() < 0.5)}
    return fields, A, packed


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bus_width", [32, 64])
def test_serial_gemm_random(bus_width, seed, held):
    """``held``: the payload stays on ``cmd`` until ``done`` (the unit reads fields from it);
    otherwise it is overwritten with random bits right after the handshake."""
    bb = bus_width // 8
    cfg = preset("tiny").replace(bus_width=bus_width)
    rnd = random.Random(bus_width + 1000 * seed)  # (seed 0: the original cases)
    dut = SerialTernaryGemm(cfg, spad_bits=7, acc_bits=6, held=held)
    _run_and_check(dut, bb, rnd, held, spad_latency=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_gemm_unit_ternary_random(seed):
    """The same random GEMM_TERN instructions on ``base``'s parallel ternary GEMM unit
    (:class:`tritium.rtl.top.GemmUnit`: gathers, walkers, the writer's queue) with the SPAD's
    and the ACC's read latencies of ``base`` (3, 2): ``done`` must come only once every result
    is in ACC, however the ACC's write port stalls."""
    cfg = preset("base")
    bb = cfg.bus_bytes
    rnd = random.Random(7 + 1000 * seed)
    dut = GemmUnit(cfg, "ternary", spad_bits=7, acc_bits=6)
    _run_and_check(dut, bb, rnd, False, spad_latency=spad_latency(cfg),
                   acc_latency=acc_latency(cfg))


def _run_and_check(dut, bb: int, rnd: random.Random, held: bool, spad_latency: int,
                   acc_latency: int = 1):
    """Run 14 random GEMM_TERN cases on ``dut`` (a GEMM unit) between a SPAD and an ACC that
    acknowledge at random, and compare the ACC after each ``done`` with the golden numerics."""
    top = Module()
    top.submodules.dut = dut
    top.submodules.spad = spad = Memory(shape=8 * bb, depth=SPAD_WORDS, init=[])
    top.submodules.acc = acc = Memory(shape=8 * bb, depth=ACC_WORDS, init=[])
    # SPAD: one read port for both streams, round-robin between them when both ask
    srd = spad.read_port()
    g_spad = Signal()
    turn = Signal()
    ap, wp = dut.act_port, dut.wgt_port
    if ap.signature.tag_bits:  # tagged ports (base): each through a ReadSlice, as in the SoC
        ports = []
        for k, c in (("a", ap), ("w", wp)):
            rs = ReadSlice(len(c.addr), bb, len(c.tag), spad_latency)
            top.submodules[f"{k}_slice"] = rs
            wiring.connect(top, c, rs.client)
            ports.append(wiring.flipped(rs.mem))
        ap, wp = ports
    pick_w = Signal()
    top.d.comb += pick_w.eq(wp.en & (~ap.en | turn))
    top.d.comb += [
        ap.ack.eq(ap.en & ~pick_w & g_spad),
        wp.ack.eq(pick_w & g_spad),
    ]
    with top.If(pick_w):
        top.d.comb += srd.addr.eq(wp.addr)
    with top.Else():
        top.d.comb += srd.addr.eq(ap.addr)
    top.d.comb += srd.en.eq(ap.ack | wp.ack)
    # latency > 1: the read data registered more (BankedMemory read_reg, addr_reg)
    rdata = srd.data if spad_latency == 1 else delayed(top, srd.data, spad_latency - 1, "rq")
    top.d.comb += [
        ap.rdata.eq(rdata), wp.rdata.eq(rdata),
        ap.rvalid.eq(delayed(top, ap.ack, spad_latency, "a_rv")),
        wp.rvalid.eq(delayed(top, wp.ack, spad_latency, "w_rv")),
    ]
    with top.If(ap.ack | wp.ack):
        top.d.sync += turn.eq(~turn)
    # ACC: a read port for old values, a write port for results
    ard = acc.read_port()
    awr = acc.write_port(granularity=8)
    g_rd, g_wr = Signal(), Signal()
    rd, wr = dut.wb_rd, dut.wb_wr
    top.d.comb += [
        rd.ack.eq(rd.en & g_rd), ard.addr.eq(rd.addr), ard.en.eq(rd.ack),
        rd.rdata.eq(ard.data if acc_latency == 1
                    else delayed(top, ard.data, acc_latency - 1, "ac_rq")),
        wr.ack.eq(wr.en & g_wr), awr.addr.eq(wr.addr), awr.data.eq(wr.wdata),
        awr.en.eq(wr.wmask.replicate(1) & wr.ack.replicate(bb)),
    ]
    top.d.comb += rd.rvalid.eq(delayed(top, rd.ack, acc_latency, "ac_rv"))

    cases = [_gemm_case(rnd, bb) for _ in range(14)]
    results = []

    async def grants(ctx):
        async for _ in ctx.tick():
            for g, p in ((g_spad, 0.7), (g_rd, 0.6), (g_wr, 0.6)):
                ctx.set(g, rnd.random() < p)

    async def tb(ctx):
        for fields, A, packed in cases:
            k, n_ = fields["k"], fields["n"]
            img = bytearray(rnd.randrange(256) for _ in range(SPAD_WORDS * bb))
            img[fields["a"]:fields["a"] + A.size] = A.astype(np.int8).tobytes()
            for o in range(n_):
                at = fields["w"] + o * k // 4
                img[at:at + k // 4] = packed[o].tobytes()
            for i in range(SPAD_WORDS):
                ctx.set(spad.data[i], int.from_bytes(img[i * bb:(i + 1) * bb], "little"))
            old = bytearray(rnd.randrange(256) for _ in range(ACC_WORDS * bb))
            for i in range(ACC_WORDS):
                ctx.set(acc.data[i], int.from_bytes(old[i * bb:(i + 1) * bb], "little"))
            ctx.set(dut.cmd.payload, isa.encode(isa.Instr.make("GEMM_TERN", **fields)))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            if not held:  # the unit must have copied what it needs
                ctx.set(dut.cmd.payload, rnd.getrandbits(len(dut.cmd.payload)))
            cycles = 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
                assert cycles < 40 * (fields["m"] * fields["n"] * (k // 4 + 4) + 10), "hung"
            await ctx.tick()
            got = bytes(b for i in range(ACC_WORDS)
                        for b in ctx.get(acc.data[i]).to_bytes(bb, "little"))
            results.append((fields, A, packed, old, got, cycles))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(grants, background=True)
    sim.add_testbench(tb)
    sim.run()

    assert len(results) == len(cases)
    for fields, A, packed, old, got, _ in results:
        prod = numerics.gemm_ternary(A, packed, fields["k"]).astype(np.int64)
        exp = bytearray(old)
        c, n_ = fields["c"], fields["n"]
        for i in range(fields["m"]):
            for o in range(n_):
                at = c + 4 * (i * n_ + o)
                v = int(prod[i, o])
                if fields["accumulate"]:
                    v += int.from_bytes(old[at:at + 4], "little", signed=True)
                exp[at:at + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")
        assert got == bytes(exp), fields
