"""cocotb testbench of a vector unit against tritium.golden.GoldenDevice.

The unit under test is :class:`tritium.rtl.vector.VectorUnit` or, with the test parameter
``unit="SerialVectorUnit"``, :class:`tritium.rtl.serial_vector.SerialVectorUnit` (same ports).
``vector_random``: seeded random vector instructions of all eleven opcodes with random stalls on
every stream; after each instruction the whole SPAD and ACC images must equal the golden model's.
``vector_cycles``: no stalls; the cycles of each instruction must equal the unit's ``cycles``
(its docstring table).
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge
from tritium.rtl.serial_vector import SerialVectorUnit
from tritium.rtl.vector import VECTOR_OPS, VectorUnit, pack_cmd
from tritium.sim.build import tb_report, test_params
from tritium.sim.memory import ScratchpadModel
from tritium.sim.stream import CycleCounter, StreamDriver, clock_and_reset

from tritium import numerics as nx
from tritium.golden import GoldenDevice
from tritium.isa import Instr, Op

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
UNITS = {cls.__name__: cls for cls in (VectorUnit, SerialVectorUnit)}


def _unit(p):
    """The class under test (test parameter ``unit``, default VectorUnit)."""
    return UNITS[p.extra.get("unit", "VectorUnit")]


# ------------------------------------------------------------------------------ generator
class _Alloc:
    """Random non-overlapping byte ranges in one space."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size, self.used = rng, size, []

    def take(self, nbytes: int, align: int = 1) -> int:
        edges = sorted(self.used)
        gaps, pos = [], 0
        for s, e in edges + [(self.size, self.size)]:
            lo = -(-pos // align) * align
            if s - lo >= nbytes:
                gaps.append((lo, s - nbytes))
            pos = max(pos, e)
        if not gaps:
            raise MemoryError(f"no room for {nbytes} bytes in {self.used} of {self.size}")
        lo, hi = gaps[int(self.rng.integers(0, len(gaps)))]
        a = lo + int(self.rng.integers(0, (hi - lo) // align + 1)) * align
        self.used.append((a, a + nbytes))
        return a


class _Gen:
    """Random vector instructions with operand data written into RTL and golden memories."""

    def __init__(self, cfg, rng: np.random.Generator, spad, acc, gold: GoldenDevice):
        self.cfg, self.rng, self.spad, self.acc, self.gold = cfg, rng, spad, acc, gold

    # -- memory writes (both images)
    def put8(self, addr: int, v) -> None:
        b = np.asarray(v, np.int64).reshape(-1).astype(np.int8).view(np.uint8)
        self.spad[addr : addr + b.size] = b
        self.gold.spad[addr : addr + b.size] = b

    def put32(self, addr: int, v) -> None:
        b = np.asarray(v, np.int64).reshape(-1).astype("<i4").view(np.uint8)
        self.acc[addr : addr + b.size] = b
        self.gold.acc[addr : addr + b.size] = b

    def put_bytes(self, addr: int, b: np.ndarray) -> None:
        self.spad[addr : addr + b.size] = b
        self.gold.spad[addr : addr + b.size] = b

    # -- value distributions
    def i8(self, rows: int, n: int) -> np.ndarray:
        r = self.rng
        mode = r.integers(0, 5)
        if mode == 0:
            x = r.integers(-128, 128, (rows, n))
        elif mode == 1:
            x = r.choice([-128, 127, -127, 0, 1, -1], (rows, n))
        elif mode == 2:
            x = r.integers(-3, 4, (rows, n))
        elif mode == 3:
            x = r.integers(-40, 41, (rows, n))
        else:
            x = r.integers(-128, 128, (rows, n))
            x[r.random(rows) < 0.5] = 0  # all-zero rows
        return x

    def i32(self, rows: int, n: int) -> np.ndarray:
        r = self.rng
        mode = r.integers(0, 4)
        if mode == 0:
            return r.integers(I32_MIN, I32_MAX + 1, (rows, n))
        if mode == 1:
            return r.choice([I32_MIN, I32_MAX, 0, -1, 1, I32_MIN + 1], (rows, n))
        if mode == 2:
            return r.integers(-(1 << 20), 1 << 20, (rows, n))
        return r.integers(-1000, 1001, (rows, n))

    def mult(self, real_lo: float, real_hi: float) -> tuple[int, int]:
        """(M0, shift): realistic, fully random or edge values."""
        r = self.rng
        mode = r.integers(0, 4)
        if mode <= 1:
            real = 10 ** r.uniform(np.log10(real_lo), np.log10(real_hi))
            return nx.quantize_multiplier(real)
        if mode == 2:
            return int(r.integers(0, I32_MAX + 1)), int(r.integers(-31, 31))
        return int(r.choice([0, 1, 1 << 30, I32_MAX])), int(r.choice([-31, -30, -1, 0, 29, 30]))

    def shape(self, cap: int) -> tuple[int, int]:
        r = self.rng
        n = int(r.choice([1, 1, 2, 3, 5, 8, 16, int(r.integers(1, 40)), int(r.integers(1, 120))]))
        rows = int(r.choice([1, 1, 2, 3, int(r.integers(1, 7))]))
        n = max(1, min(n, cap))
        rows = max(1, min(rows, cap // n))
        return rows, n

    # -- one instruction
    def make(self, op: Op) -> Instr:
        for _ in range(50):
            try:
                return self._make(op)
            except MemoryError:  # fragmented: try another shape and placement
                pass
        raise MemoryError(f"could not place a random {op.name}")

    def _make(self, op: Op) -> Instr:
        cfg, r = self.cfg, self.rng
        sa = _Alloc(r, cfg.spad_bytes)
        aa = _Alloc(r, cfg.acc_bytes)
        acc_words = cfg.acc_bytes // 4
        alias = r.random() < 0.25
        f = {}
        if op == Op.VREQ:
            pc = int(r.random() < 0.5)
            cap = acc_words // 2 - 4
            rows, n = self.shape(cap)
            if pc:
                n = min(n, cap // 4)
                rows = max(1, min(rows, cap // n))
            t = rows * n
            src = aa.take(4 * t, 4)
            count = n if pc else 1
            param = aa.take(8 * count, 4)
            x = self.i32(rows, n)
            self.put32(src, x)
            pairs = [self.mult(20.0 / (np.abs(x).max() + 1), 600.0 / (np.abs(x).max() + 1))
                     for _ in range(count)]
            self.put32(param, [p[0] for p in pairs] + [p[1] for p in pairs])
            f = {"per_channel": pc, "src": src, "dst": sa.take(t), "param": param}
        elif op in (Op.VADD, Op.VMUL, Op.VGATE):
            rows, n = self.shape(cfg.spad_bytes // 8)
            t = rows * n
            src, src2 = sa.take(t), sa.take(t)
            dst = sa.take(t)
            self.put8(src, self.i8(rows, n))
            self.put8(src2, self.i8(rows, n))
            if op == Op.VGATE:
                self.put8(dst, self.i8(rows, n))
            elif alias:
                dst = int(r.choice([src, src2]))
            elif r.random() < 0.2:
                src2 = src
            f = {"src": src, "src2": src2, "dst": dst}
            if op == Op.VMUL:
                param = aa.take(8, 4)
                self.put32(param, list(self.mult(1 / 20000, 1 / 60)))
                f["param"] = param
        elif op == Op.VADD32:
            rows, n = self.shape(acc_words // 4)
            t = rows * n
            src, src2, dst = aa.take(4 * t, 4), aa.take(4 * t, 4), aa.take(4 * t, 4)
            big = r.integers(-(1 << 31), 1 << 31, (rows, n))
            self.put32(src, self.i32(rows, n) if r.random() < 0.5 else big)
            self.put32(src2, self.i32(rows, n) if r.random() < 0.5 else big)
            if alias:
                dst = int(r.choice([src, src2]))
            elif r.random() < 0.2:
                src2 = src
            f = {"src": src, "src2": src2, "dst": dst}
        elif op == Op.VSCALE:
            rows, n = self.shape(acc_words // 3)
            t = rows * n
            src, dst = aa.take(4 * t, 4), aa.take(4 * t, 4)
            src2 = aa.take(4 * rows, 4)
            self.put32(src, self.i32(rows, n))
            mode = r.integers(0, 3)
            lim = [5, 1 << 16, 1 << 31][mode]
            self.put32(src2, r.integers(-lim, lim, rows))
            if alias:
                dst = src
            f = {"src": src, "src2": src2, "dst": dst}
        elif op == Op.VACT:
            rows, n = self.shape(cfg.spad_bytes // 8)
            t = rows * n
            src, src2, dst = sa.take(t), sa.take(256), sa.take(t)
            self.put8(src, self.i8(rows, n))
            self.put8(src2, r.integers(-128, 128, 256))
            f = {"src": src, "src2": src2, "dst": src if alias else dst}
        elif op == Op.VRMS:
            rows, n = self.shape(cfg.spad_bytes // 8)
            t = rows * n
            src, src2, dst = sa.take(t), sa.take(n), sa.take(t)
            param = aa.take(8, 4)
            self.put8(src, self.i8(rows, n))
            self.put8(src2, self.i8(1, n))
            self.put32(param, list(self.mult(2.0**-17, 2.0**-13)))
            f = {"src": src, "src2": src2, "dst": src if alias else dst, "param": param}
        elif op == Op.VQUANT:
            rows, n = self.shape(min(cfg.spad_bytes // 8, 4 * (acc_words - 8)))
            rows = min(rows, acc_words - 8)
            t = rows * n
            src, dst = sa.take(t), sa.take(t)
            param = aa.take(4 * rows, 4)
            self.put8(src, self.i8(rows, n))
            f = {"src": src, "dst": src if alias else dst, "param": param}
        elif op == Op.VSOFTMAX:
            rows, n = self.shape(cfg.spad_bytes // 8)
            t = rows * n
            src, src2, dst = sa.take(t), sa.take(512), sa.take(t)
            self.put8(src, self.i8(rows, n))
            mode = r.integers(0, 5)
            if mode <= 1:
                tab = nx.exp_table(10 ** r.uniform(-2.5, 0))
            elif mode == 2:
                tab = r.integers(0, 1 << 16, 256)
            elif mode == 3:
                tab = r.choice([0, 65535], 256)
            else:
                tab = np.zeros(256, np.int64)  # sum 0: s = max(sum, 1)
            self.put_bytes(src2, np.asarray(tab, "<u2").view(np.uint8))
            f = {"src": src, "src2": src2, "dst": src if alias else dst}
        elif op == Op.VARGMAX:
            rows, n = self.shape(min(cfg.spad_bytes // 8, 4 * (acc_words - 8)))
            rows = min(rows, acc_words - 8)
            src = sa.take(rows * n)
            self.put8(src, self.i8(rows, n))
            f = {"src": src, "dst": aa.take(4 * rows, 4)}
        else:  # pragma: no cover
            raise AssertionError(op)
        zp = int(r.integers(-128, 128)) if op in (Op.VREQ, Op.VMUL, Op.VRMS) else 0
        if op in (Op.VREQ, Op.VMUL, Op.VRMS) and r.random() < 0.3:
            zp = 0
        return Instr.make(op, rows=rows, n=n, zp=zp, **f)


_SPAD_OUT = {Op.VREQ, Op.VADD, Op.VMUL, Op.VACT, Op.VRMS, Op.VQUANT, Op.VGATE, Op.VSOFTMAX}
_LIMITS = {Op.VQUANT: (-127, 127), Op.VSOFTMAX: (0, 127), Op.VADD32: (I32_MIN, I32_MAX),
           Op.VSCALE: (I32_MIN, I32_MAX)}


def _coverage(instr: Instr, gold: GoldenDevice, x: np.ndarray) -> set[str]:
    """Tags of what an executed instruction exercised (``x``: its first operand, before)."""
    op, rows, n = instr.op, instr.rows, instr.n
    name = op.name
    tags = {name}
    if n == 1:
        tags.add(f"{name}:n=1")
    if rows > 1:
        tags.add(f"{name}:rows>1")
    if instr.dst == instr.src and op not in (Op.VREQ, Op.VARGMAX):
        tags.add(f"{name}:in-place")
    t = rows * n
    if op in _SPAD_OUT or op in (Op.VADD32, Op.VSCALE):
        if op in _SPAD_OUT:
            y = gold.spad[instr.dst : instr.dst + t].view(np.int8).astype(np.int64)
        else:
            y = gold.acc[instr.dst : instr.dst + 4 * t].view("<i4").astype(np.int64)
        lo, hi = _LIMITS.get(op, (-128, 127))
        tags |= {f"{name}:{k}" for k, hit in (("min", (y == lo).any()), ("max", (y == hi).any()),
                                               ("mid", ((y > lo) & (y < hi)).any())) if hit}
    if op == Op.VREQ:
        cnt = n if instr.per_channel else 1
        sh = gold.acc[instr.param + 4 * cnt : instr.param + 8 * cnt].view("<i4")
        tags.add(f"VREQ:{'per-channel' if instr.per_channel else 'per-tensor'}")
        tags |= {f"VREQ:shift{k}" for k, hit in (("<-15", (sh < -15).any()),
                                                 (">15", (sh > 15).any())) if hit}
    xr = x.reshape(rows, n)
    if op in (Op.VQUANT, Op.VRMS) and (xr == 0).all(axis=1).any():
        tags.add(f"{name}:zero-row")
    if op == Op.VGATE and (x < 0).any():
        tags.add("VGATE:f<0")
    if op == Op.VARGMAX and ((xr == xr.max(axis=1, keepdims=True)).sum(axis=1) > 1).any():
        tags.add("VARGMAX:tie")
    if op == Op.VSOFTMAX and not gold.spad[instr.src2 : instr.src2 + 512].any():
        tags.add("VSOFTMAX:zero-table")
    return tags


def _written(instr: Instr) -> int:
    t = instr.rows * instr.n
    if instr.op == Op.VARGMAX:
        return instr.rows
    if instr.op == Op.VQUANT:
        return t + instr.rows
    return t


async def _wait_done(dut, limit: int, counter: CycleCounter | None = None) -> int:
    for _ in range(limit):
        await RisingEdge(dut.clk)
        await ReadOnly()
        if int(dut.done.value):
            return counter.now if counter is not None else 0
    raise TimeoutError(f"no done pulse within {limit} cycles")


def _compare(name: str, got: np.ndarray, exp: np.ndarray, instr: Instr, elem: int) -> None:
    if np.array_equal(got, exp):
        return
    bad = np.nonzero(got != exp)[0]
    words = sorted({int(b) // elem * elem for b in bad})[:12]
    rows = []
    for a in words:
        g = int.from_bytes(got[a : a + elem].tobytes(), "little", signed=True)
        e = int.from_bytes(exp[a : a + elem].tobytes(), "little", signed=True)
        rows.append(f"  {name}[{a:#x}]: rtl {g} golden {e}")
    raise AssertionError(
        f"{instr}: {len(bad)} {name} byte(s) differ from the golden model\n" + "\n".join(rows)
    )


async def _setup(dut, cfg, seed: int, stall: float):
    await clock_and_reset(dut)
    prng = random.Random(seed)
    rng = np.random.default_rng(seed)
    spad = rng.integers(0, 256, cfg.spad_bytes).astype(np.uint8)
    acc = rng.integers(0, 256, cfg.acc_bytes).astype(np.uint8)
    gold = GoldenDevice(cfg)
    gold.spad[:] = spad
    gold.acc[:] = acc
    sp = ScratchpadModel(dut, spad, rd="sp_rd", rdata="sp_rdata", wr="sp_wr", elem_bytes=1,
                         rng=prng, req_stall=stall, rsp_idle=stall, wr_stall=stall)
    ac = ScratchpadModel(dut, acc, rd="ac_rd", rdata="ac_rdata", wr="ac_wr", elem_bytes=4,
                         rng=prng, req_stall=stall, rsp_idle=stall, wr_stall=stall)
    return prng, rng, spad, acc, gold, sp, ac


async def _reads_apart(dut, bad: list) -> None:
    """Record the cycles in which the unit presents a read and a write of one memory (a unit
    with ``READS_APART`` promises none: the SoC's scratchpads then do not hold back its
    reads of a word it writes)."""
    pairs = [(dut.sp_rd__valid, dut.sp_wr__valid, "SPAD"), (dut.ac_rd__valid, dut.ac_wr__valid, "ACC")]
    cycle = 0
    while True:
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycle += 1
        for rd, wr, name in pairs:
            if int(rd.value) and int(wr.value):
                bad.append((cycle, name))


# ------------------------------------------------------------------------------ tests
@cocotb.test()
async def vector_random(dut):
    """Random instructions of every opcode, random stalls everywhere, whole-image compare."""
    p = test_params()
    cfg = p.cfg
    unit = _unit(p)
    prng, rng, spad, acc, gold, sp, ac = await _setup(dut, cfg, p.seed, 0.3)
    gen = _Gen(cfg, rng, spad, acc, gold)
    drv = StreamDriver(dut, "cmd", rng=prng, idle_prob=0.3)
    together: list = []
    if unit.READS_APART:
        cocotb.start_soon(_reads_apart(dut, together))
    counts = {op.name: 0 for op in VECTOR_OPS}
    tags: set[str] = set()
    checked = 0
    per_op = p.nvec or 12
    ops = [op for op in VECTOR_OPS for _ in range(per_op)]
    rng.shuffle(ops)
    for j, op in enumerate(ops):
        instr = gen.make(Op(op))
        for m in (sp, ac):
            m.req_stall, m.rsp_idle, m.wr_stall = (float(rng.choice([0.0, 0.2, 0.5]))
                                                   for _ in range(3))
            m.latency = int(rng.integers(1, 4))
        gold.check(instr, 0)
        if instr.op in (Op.VREQ, Op.VADD32, Op.VSCALE):
            x = gold.acc[instr.src : instr.src + 4 * instr.rows * instr.n].view("<i4").copy()
        else:
            x = gold.spad[instr.src : instr.src + instr.rows * instr.n].view(np.int8).copy()
        gold.execute(instr, 0)
        tags |= _coverage(instr, gold, x)
        drv.send(pack_cmd(instr))
        limit = 20 * (unit.cycles(instr) + 50)
        await _wait_done(dut, limit)
        sp.check()
        ac.check()
        _compare("SPAD", spad, gold.spad, instr, 1)
        _compare("ACC", acc, gold.acc, instr, 4)
        if sp.outstanding or ac.outstanding:
            raise AssertionError(f"{instr}: read responses left over after done")
        if together:
            raise AssertionError(f"{instr}: a read and a write presented together "
                                 f"(cycle, memory): {together[:5]}")
        checked += _written(instr)
        counts[instr.op.name] += _written(instr)
        dut._log.debug("#%d %s ok", j, instr)
    dut._log.info("checked %d output elements: %s", checked, counts)
    tb_report(checked=checked, instrs=len(ops), per_op=counts, coverage=sorted(tags))


@cocotb.test()
async def vector_cycles(dut):
    """No stalls, 1-cycle read latency: cycles from cmd transfer to done == the unit's formula."""
    p = test_params()
    cfg = p.cfg
    unit = _unit(p)
    prng, rng, spad, acc, gold, _sp, _ac = await _setup(dut, cfg, p.seed + 1, 0.0)
    gen = _Gen(cfg, rng, spad, acc, gold)
    counter = CycleCounter(dut.clk)
    drv = StreamDriver(dut, "cmd", rng=prng, idle_prob=0.0, counter=counter)
    acc_words = cfg.acc_bytes // 4
    fixed = [
        Instr.make(Op.VADD, rows=4, n=64, src=0, src2=512, dst=1024),
        Instr.make(Op.VADD, rows=1, n=256, src=0, src2=512, dst=1024),
        Instr.make(Op.VREQ, rows=2, n=64, src=0, dst=0, param=4 * (acc_words - 2)),
        Instr.make(Op.VREQ, rows=3, n=8, per_channel=1, src=0, dst=0, param=256),
    ]
    # VRMS elements pass the 32x32 multiplier twice: rows and n of both parities
    fixed += [Instr.make(Op.VRMS, rows=r, n=n, src=0, src2=2048, dst=4096, param=0)
              for r, n in ((2, 2), (2, 7), (4, 1), (4, 10), (5, 33), (1, 64))]
    if cfg.spad_bytes >= 65536:  # long rows: wide row sums, long argmax indexes
        fixed += [
            Instr.make(Op.VARGMAX, rows=1, n=60000, src=0, dst=0),
            Instr.make(Op.VRMS, rows=1, n=8000, src=0, src2=8000, dst=16000, param=0, zp=3),
            Instr.make(Op.VSOFTMAX, rows=2, n=10000, src=0, src2=20000, dst=30000),
        ]
    cases: list = fixed + [Op(op) for _ in range(int(p.extra.get("reps", 2))) for op in VECTOR_OPS]
    results = {}
    for case in cases:
        if isinstance(case, Op):  # a random shape of this opcode, data written now
            instr = gen.make(case)
        else:
            instr = case
            t = instr.rows * instr.n
            if instr.op == Op.VREQ:
                count = instr.n if instr.per_channel else 1
                gen.put32(instr.src, rng.integers(-(1 << 20), 1 << 20, t))
                gen.put32(instr.param, [1 << 30] * count + [-3] * count)
            elif instr.op != Op.VADD:
                gen.put8(instr.src, rng.integers(-128, 128, t))
            if instr.op == Op.VRMS:
                gen.put8(instr.src2, rng.integers(-128, 128, instr.n))
                gen.put32(instr.param, list(nx.quantize_multiplier(2.0**-17)))
            elif instr.op == Op.VSOFTMAX:
                gen.put_bytes(instr.src2, np.asarray(rng.integers(0, 1 << 16, 256), "<u2")
                              .view(np.uint8))
        gold.check(instr, 0)
        gold.execute(instr, 0)
        n0 = drv.sent
        drv.send(pack_cmd(instr))
        done = await _wait_done(dut, 20 * (unit.cycles(instr) + 50), counter)
        assert drv.sent == n0 + 1
        got = done - drv.sent_cycles[-1]
        exp = unit.cycles(instr)
        _compare("SPAD", spad, gold.spad, instr, 1)
        _compare("ACC", acc, gold.acc, instr, 4)
        results[str(instr)] = (got, exp)
        dut._log.info("cycles %s: %d (formula %d)", instr, got, exp)
    bad = {k: v for k, v in results.items() if v[0] != v[1]}
    tb_report(cycles={k: v[0] for k, v in results.items()})
    assert not bad, f"cycle counts differ from {unit.__name__}.cycles: {bad}"
