"""Controller: fetch, decode, check, dispatch to load / compute / store queues, track hazards.

Everything about instruction encodings comes from :mod:`tritium.isa`: :func:`instr_layout`
builds, for each opcode, a ``lib.data`` layout over the 128-bit instruction word whose fields
sit at the ``lsb``/``width`` of :data:`tritium.isa.FORMATS`; reserved-bit masks and the set of
valid opcodes are computed from the same table; the operand rules mirror
:meth:`tritium.golden.GoldenDevice.check` and the address ranges mirror
:func:`tritium.isa.footprint` (tests compare both on random instructions).

Pipeline (one instruction in flight in the front end; queues run concurrently behind it)::

    FETCH   pc checks (MISALIGNED, ADDRESS_RANGE), one AXI burst of 16 bytes (id ID_FETCH)
    DECODE  InstrChecker stage 1: opcode / reserved bits, engine present, operand and
            alignment rules, the operands of the range products
    CHECK   InstrChecker stage 2: the products (rows*row_bytes, m*k, n*k, ...)
    CHECK2  InstrChecker stage 3: start, length and end of every footprint range
    CHECK3  InstrChecker stage 4: every range inside its space, overlaps, per-space hulls
    DISPATCH first failing check, in golden order -> fault; else by opcode:
            NOP/JUMP retire at once, FENCE/HALT wait until every queue is empty,
            LOAD -> load queue, STORE -> store queue, GEMM_* / V* -> compute queue

Queues and dependency tracking: each queue is a ring of ``cfg.queue_depth`` slots holding the
instruction, its pc and its *footprint hulls* (per space DRAM/SPAD/ACC, the covering interval
of the ranges it reads and of those it writes, in blocks of 1/64 of the space: see
:data:`HAZARD_BLOCKS`). When an instruction is dispatched, its hulls
are compared with every occupied slot of the *other two* queues (all of them are older); a
read-after-write, write-after-read or write-after-write overlap sets a bit in the new slot's
``deps`` mask. A queue hands its oldest slot to its unit only when that mask is zero, and a
slot's bit is cleared everywhere when its unit reports ``done``. Order within a queue is
program order. So a LOAD into one scratchpad half overlaps a GEMM on the other half, while a
GEMM that reads what a LOAD writes waits for it: results equal sequential execution.
``VREQ``/``VMUL``/``VRMS`` check their (M0, shift) parameters in ACC at execution time
(``BAD_OPERAND``): dispatch stops behind them until they finish, so a fault leaves exactly
the state of sequential execution.

Faults: a failed check stops dispatch, waits until the queues drain (everything older
completes) and sets STATUS.ERROR with ERROR and ERROR_PC = the instruction's pc. A unit error
(AXI SLVERR/DECERR -> BUS_ERROR, bad parameters -> BAD_OPERAND) does the same with the pc of
the queue slot. The watchdog (cycles since START >= CSR WATCHDOG) and CTRL.RESET abort:
compute units are reset, the DMA units and the fetch port finish their outstanding AXI bursts
without writing, the queues are emptied; the watchdog then reports WATCHDOG at the pc of the
instruction being fetched/dispatched, RESET returns to idle.

Limitation: instruction fetch does not wait for queued STOREs, so a program that stores over
its own upcoming instructions must FENCE first (no tritium tool emits such code).
"""

from __future__ import annotations

import functools
import itertools

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import AcceleratorConfig
from tritium.golden import _acc_operands
from tritium.isa import (
    FORMATS,
    GEMM_ENGINE,
    INSTR_BITS,
    INSTR_BYTES,
    ErrorCode,
    Op,
)

from .axi import BURST_INCR, Axi4Signature

__all__ = [
    "QUEUES",
    "SERIAL_OPS",
    "SPACES",
    "Controller",
    "InstrChecker",
    "hazard_shift",
    "hull_blocks",
    "hull_layout",
    "instr_layout",
    "queue_of",
    "vec_ranges",
]

#: Queues, in index order.
QUEUES = ("load", "store", "compute")
#: Spaces of the footprint hulls, in index order.
SPACES = ("DRAM", "SPAD", "ACC")
#: Instructions that check ACC parameters when they execute: dispatch waits for them.
SERIAL_OPS = (Op.VREQ, Op.VMUL, Op.VRMS)
VEC_OPS = tuple(op for op in Op if FORMATS[op] and op.name.startswith("V"))
GEMM_OPS = tuple(GEMM_ENGINE)



def queue_of(op: Op) -> int | None:
    """Index in :data:`QUEUES` of the queue that executes ``op`` (None: the controller)."""
    if op == Op.LOAD:
        return 0
    if op == Op.STORE:
        return 1
    if op in GEMM_OPS or op in VEC_OPS:
        return 2
    return None


@functools.cache
def instr_layout(op: Op) -> data.FlexibleLayout:
    """``lib.data`` layout of the 128-bit word of ``op``: ``op`` (bits 7..0) and every field of
    :data:`tritium.isa.FORMATS` at its ``lsb`` with its width and signedness."""
    fields = {"op": data.Field(unsigned(8), 0)}
    for f in FORMATS[Op(op)]:
        shape = signed(f.width) if f.signed else unsigned(f.width)
        fields[f.name] = data.Field(shape, f.lsb)
    return data.FlexibleLayout(INSTR_BITS, fields)


def _used_mask(op: Op) -> int:
    mask = 0xFF
    for f in FORMATS[op]:
        mask |= ((1 << f.width) - 1) << f.lsb
    return mask


def vec_ranges(op: Op) -> tuple[list, list]:
    """Address ranges of a vector op as ``(space, field, count)`` triples (reads, writes).

    ``count`` is a number of elements: ``"t"`` = rows*n, ``"n"``, ``"rows"``, ``"pc2"`` =
    2 * (n if per_channel else 1), or an int. Elements are 1 byte in SPAD, 4 in ACC. Mirrors
    :func:`tritium.isa.footprint` (checked by the tests).
    """
    t = "t"
    return {
        Op.VREQ: ([("ACC", "src", t), ("ACC", "param", "pc2")], [("SPAD", "dst", t)]),
        Op.VADD: ([("SPAD", "src", t), ("SPAD", "src2", t)], [("SPAD", "dst", t)]),
        Op.VADD32: ([("ACC", "src", t), ("ACC", "src2", t)], [("ACC", "dst", t)]),
        Op.VMUL: (
            [("SPAD", "src", t), ("SPAD", "src2", t), ("ACC", "param", 2)],
            [("SPAD", "dst", t)],
        ),
        Op.VSCALE: ([("ACC", "src", t), ("ACC", "src2", "rows")], [("ACC", "dst", t)]),
        Op.VACT: ([("SPAD", "src", t), ("SPAD", "src2", 256)], [("SPAD", "dst", t)]),
        Op.VRMS: (
            [("SPAD", "src", t), ("SPAD", "src2", "n"), ("ACC", "param", 2)],
            [("SPAD", "dst", t)],
        ),
        Op.VQUANT: ([("SPAD", "src", t)], [("SPAD", "dst", t), ("ACC", "param", "rows")]),
        Op.VGATE: (
            [("SPAD", "src", t), ("SPAD", "src2", t), ("SPAD", "dst", t)],
            [("SPAD", "dst", t)],
        ),
        Op.VSOFTMAX: ([("SPAD", "src", t), ("SPAD", "src2", 512)], [("SPAD", "dst", t)]),
        Op.VARGMAX: ([("SPAD", "src", t)], [("ACC", "dst", "rows")]),
    }[op]


def space_sizes(cfg: AcceleratorConfig) -> dict[str, int]:
    return {"DRAM": cfg.dev_mem_bytes, "SPAD": cfg.spad_bytes, "ACC": cfg.acc_bytes}


#: Hazard tracking resolves each space into at most about this many blocks: hulls hold block
#: indices (``lo`` rounded down, ``hi`` rounded up), so the comparators and the queue slots'
#: hull registers are a few bits wide instead of a full address. Coarser hulls only add
#: waits (two ranges in one block count as overlapping), never remove one.
HAZARD_BLOCKS = 64


def hazard_shift(size: int) -> int:
    """log2 of the hazard block size (bytes) of a space of ``size`` bytes."""
    return max(0, (size // HAZARD_BLOCKS).bit_length() - 1)


def hull_blocks(size: int, lo: int, hi: int) -> tuple[int, int]:
    """The block interval ``[lo, hi)`` that the byte interval ``[lo, hi)`` of a space of
    ``size`` bytes maps to in a hull (the reference for the checker's hull outputs)."""
    g = hazard_shift(size)
    return lo >> g, (hi + (1 << g) - 1) >> g


@functools.cache
def _hull_layout(dram: int, spad: int, acc: int) -> data.StructLayout:
    fields = {}
    for name, size in zip(SPACES, (dram, spad, acc)):
        w = hull_blocks(size, 0, size)[1].bit_length()
        for d in ("r", "w"):
            fields[f"{name}_{d}_v"] = unsigned(1)
            fields[f"{name}_{d}_lo"] = unsigned(w)
            fields[f"{name}_{d}_hi"] = unsigned(w)
    return data.StructLayout(fields)


def hull_layout(cfg: AcceleratorConfig) -> data.StructLayout:
    """Per-space read/write covering block intervals ``[lo, hi)`` of an instruction (``_v``:
    any), in blocks of ``2**hazard_shift(size)`` bytes (:func:`hull_blocks`)."""
    s = space_sizes(cfg)
    return _hull_layout(s["DRAM"], s["SPAD"], s["ACC"])


def hulls_conflict(a, b) -> object:
    """1 when instruction hulls ``a`` and ``b`` (views of :func:`hull_layout`) have a RAW,
    WAR or WAW overlap in some space."""
    terms = []

    def ov(x, dx, y, dy):
        return (
            getattr(x, f"{dx}_v")
            & getattr(y, f"{dy}_v")
            & (getattr(x, f"{dx}_lo") < getattr(y, f"{dy}_hi"))
            & (getattr(y, f"{dy}_lo") < getattr(x, f"{dx}_hi"))
        )

    for sp in SPACES:

        class _S:
            pass

        xa, xb = _S(), _S()
        for d in ("r", "w"):
            for k in ("v", "lo", "hi"):
                setattr(xa, f"{d}_{k}", getattr(a, f"{sp}_{d}_{k}"))
                setattr(xb, f"{d}_{k}", getattr(b, f"{sp}_{d}_{k}"))
        terms += [ov(xa, "w", xb, "r"), ov(xa, "w", xb, "w"), ov(xa, "r", xb, "w")]
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


class InstrChecker(wiring.Component):
    """Decode and check one instruction word: a four-stage pipeline.

    ``code``, ``queue``, ``serial`` and ``hull`` describe the ``word`` presented
    :attr:`LATENCY` (4) cycles earlier (hold ``word`` stable that long). ``code`` is the
    :class:`~tritium.isa.ErrorCode` of the first failing check in the order of
    :meth:`tritium.golden.GoldenDevice.check` (decode, engine, operands, alignment, ranges,
    partial read/write overlap); the ACC parameter values of VREQ/VMUL/VRMS are checked by the
    compute unit when the instruction executes.

    Stages: (1) field checks, the operands of the range-length products; (2) the products;
    (3) each range's start, length and end (saturated) in one of four slots; (4) range and
    overlap checks, hulls. Each stage is a register stage (ECP5 timing).

    Members
    -------
    word : In(128)
    code : Out(4)
    queue : Out(2)
        Index into :data:`QUEUES`, 3 for instructions the controller handles itself.
    serial : Out(1)
        The instruction is one of :data:`SERIAL_OPS`.
    hull : Out(hull_layout(cfg))
    """

    #: Cycles from ``word`` to the outputs.
    LATENCY = 4

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__(
            {
                "word": In(INSTR_BITS),
                "code": Out(4),
                "queue": Out(2),
                "serial": Out(1),
                "hull": Out(hull_layout(cfg)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bus = cfg.bus_bytes
        sizes = space_sizes(cfg)
        w = self.word
        opc = w[:8]
        v_dma = data.View(instr_layout(Op.LOAD), w)
        v_gemm = data.View(instr_layout(Op.GEMM_I8), w)
        v_vec = data.View(instr_layout(Op.VREQ), w)

        def is_op(*ops):
            return Cat(opc == int(o) for o in ops).any()

        # ------------------------------------------------------------------ stage 1
        invalid = Signal()
        absent = Signal()
        bad = Signal()
        mis = Signal()
        valid_terms = []
        for op in Op:
            rsv = ((1 << INSTR_BITS) - 1) & ~_used_mask(op)
            valid_terms.append((opc == int(op)) & ((w & rsv) == 0))
        m.d.comb += invalid.eq(~Cat(valid_terms).any())

        absent_ops = [op for op in GEMM_OPS if not cfg.has(GEMM_ENGINE[op])]
        m.d.comb += absent.eq(is_op(*absent_ops) if absent_ops else 0)

        def misal(v, unit):
            return (v & (unit - 1)) != 0 if unit > 1 else Const(0)

        g = v_gemm
        gemm_bad = (
            (g.m == 0)
            | (g.n == 0)
            | (g.k < 8)
            | (g.k[:3] != 0)
            | (is_op(Op.GEMM_LUT) & ((g.bits == 0) | (g.bits > cfg.lut_max_bits)))
            | (~is_op(Op.GEMM_LUT) & (g.bits != 0))
            | (~is_op(Op.GEMM_I8) & g.wt)
        )
        d = v_dma
        dma_bad = (
            (d.space > 1)
            | (d.rows == 0)
            | (d.row_bytes == 0)
            | ((d.rows > 1) & (d.stride < d.row_bytes))
        )
        dma_mis = misal(d.dram, bus) | misal(d.row_bytes, bus) | misal(d.stride, bus) | misal(
            d.loc, bus
        )
        v = v_vec
        vec_bad = (v.rows == 0) | (v.n == 0) | (~is_op(Op.VREQ) & v.per_channel)
        vec_mis_terms = []
        for op in VEC_OPS:
            names = _acc_operands(op)
            if names:
                any_mis = Cat(misal(getattr(v, nm), 4) for nm in names).any()
                vec_mis_terms.append(is_op(op) & any_mis)
        vec_mis = Cat(vec_mis_terms).any() if vec_mis_terms else Const(0)
        with m.If(is_op(*GEMM_OPS)):
            m.d.comb += [bad.eq(gemm_bad), mis.eq(misal(g.c, 4))]
        with m.Elif(is_op(Op.LOAD, Op.STORE)):
            m.d.comb += [bad.eq(dma_bad), mis.eq(dma_mis)]
        with m.Elif(is_op(*VEC_OPS)):
            m.d.comb += [bad.eq(vec_bad), mis.eq(vec_mis)]

        # products for the ranges, saturated at SAT (operands multiplexed first: one multiplier
        # per product). Every range end is computed saturated: an end > space size is reported
        # the same, and ranges of instructions that pass the range check are exact.
        W = max(sizes.values()).bit_length() + 1
        SAT = (1 << W) - 1

        def sat(x, name):
            out = Signal(W, name=name)
            x = x.as_value() if hasattr(x, "as_value") else x
            if len(x) > W:
                m.d.comb += out.eq(Mux(x[W:].any(), SAT, x[:W]))
            else:
                m.d.comb += out.eq(x)
            return out

        is_dma = is_op(Op.LOAD, Op.STORE)
        is_gemm = is_op(*GEMM_OPS)
        a1 = Mux(is_dma, d.rows, Mux(is_gemm, g.m, v.rows))
        b1 = Mux(is_dma, d.row_bytes, Mux(is_gemm, g.k, v.n))
        a2 = Mux(is_dma, d.rows - 1, g.m)
        b2 = Mux(is_dma, sat(d.stride, "stride_sat"), g.n)
        kk = Mux(is_op(Op.GEMM_I8), g.k, Mux(is_op(Op.GEMM_TERN), g.k >> 2, g.bits * (g.k >> 3)))
        # the multiplier operands are registered: decode + mux, then multiply + saturate
        ops = []
        for name, x in (("a1", a1), ("b1", b1), ("a2", a2), ("b2", b2), ("nn", g.n),
                        ("kk", kk)):
            x = Value.cast(x)
            r = Signal(x.shape(), name=f"{name}_q")
            m.d.sync += r.eq(x)
            ops.append(r)
        w0 = Signal(INSTR_BITS)
        s0 = Signal(4)  # invalid, absent, bad, mis
        m.d.sync += [w0.eq(w), s0.eq(Cat(invalid, absent, bad, mis))]

        # ------------------------------------------------------------------ stage 2
        p1 = Signal(W)
        p2 = Signal(W)
        p3 = Signal(W)
        w1 = Signal(INSTR_BITS)
        s1 = Signal(4)
        m.d.sync += [
            w1.eq(w0),
            s1.eq(s0),
            p1.eq(sat(ops[0] * ops[1], "p1_sat")),
            p2.eq(sat(ops[2] * ops[3], "p2_sat")),
            p3.eq(sat(ops[4] * ops[5], "p3_sat")),
        ]

        # ------------------------------------------------------------------ stage 3
        # Each instruction has at most four ranges; they go to "slots" 0..3 (reads, then
        # writes), so the adders and comparators exist once per slot, not once per opcode.
        opc1 = w1[:8]
        d1 = data.View(instr_layout(Op.LOAD), w1)
        g1 = data.View(instr_layout(Op.GEMM_I8), w1)
        v1 = data.View(instr_layout(Op.VREQ), w1)
        t_acc = sat(p1 << 2, "t_acc")
        c_acc = sat(p2 << 2, "c_acc")
        dram_len = sat(p2 + d1.row_bytes, "dram_len")
        pc2 = Mux(v1.per_channel, v1.n << 3, 8)

        def ranges_of(op):
            """(space, start, length, cond) lists (reads, writes) of ``op`` in hardware."""
            if op in (Op.LOAD, Op.STORE):
                dram = ("DRAM", d1.dram, dram_len, Const(1))
                loc_s = ("SPAD", d1.loc, p1, d1.space == 0)
                loc_a = ("ACC", d1.loc, p1, d1.space == 1)
                return ([dram], [loc_s, loc_a]) if op == Op.LOAD else ([loc_s, loc_a], [dram])
            if op in GEMM_OPS:
                c = ("ACC", g1.c, c_acc, Const(1))
                reads = [("SPAD", g1.a, p1, Const(1)), ("SPAD", g1.w, p3, Const(1)),
                         ("ACC", g1.c, c_acc, g1.accumulate)]
                return reads, [c]
            if op in VEC_OPS:
                counts = {"t": (p1, t_acc), "n": (v1.n, v1.n << 2),
                          "rows": (v1.rows, v1.rows << 2), "pc2": (None, pc2)}
                out = []
                for lst in vec_ranges(op):
                    rs = []
                    for space, fname, cnt in lst:
                        if isinstance(cnt, str):
                            n = counts[cnt][space == "ACC"]
                        else:
                            n = Const(cnt * (4 if space == "ACC" else 1), 12)
                        rs.append((space, getattr(v1, fname), n, Const(1)))
                    out.append(rs)
                return tuple(out)
            return [], []

        NS = 4
        st1 = [Signal(W, name=f"r{i}_start1") for i in range(NS)]
        ln1 = [Signal(W, name=f"r{i}_len1") for i in range(NS)]
        cd1 = [Signal(name=f"r{i}_cond1") for i in range(NS)]
        with m.Switch(opc1):
            for op in Op:
                reads, writes = ranges_of(op)
                if not reads and not writes:
                    continue
                with m.Case(int(op)):
                    for i, (_, start, length, cond) in enumerate(reads + writes):
                        m.d.comb += [st1[i].eq(sat(start, None)), ln1[i].eq(length),
                                     cd1[i].eq(cond)]

        # ------------------------------------------------------------------ stage 4
        st = [Signal(W, name=f"r{i}_start") for i in range(NS)]
        en = [Signal(W, name=f"r{i}_end") for i in range(NS)]
        cd = [Signal(name=f"r{i}_cond") for i in range(NS)]
        opc2 = Signal(8)
        s2 = Signal(4)
        m.d.sync += [opc2.eq(opc1), s2.eq(s1)]
        for i in range(NS):
            m.d.sync += [st[i].eq(st1[i]), en[i].eq(sat(st1[i] + ln1[i], f"r{i}_end1")),
                         cd[i].eq(cd1[i])]
        over = [{sp: en[i] > sizes[sp] for sp in SPACES} for i in range(NS)]
        lt = {(i, j): st[i] < st[j] for i in range(NS) for j in range(NS) if i != j}
        gt = {(i, j): en[i] > en[j] for i in range(NS) for j in range(NS) if i != j}
        pov = {}
        for i in range(NS):
            for j in range(i + 1, NS):
                pov[i, j] = pov[j, i] = (st[j] < en[i]) & (st[i] < en[j]) & (
                    (st[i] != st[j]) | (en[i] != en[j]))

        range_err = Signal()
        overlap = Signal()  # a written range partially overlaps a read range (BAD_OPERAND)
        hull = Signal(hull_layout(cfg))
        with m.Switch(opc2):
            for op in Op:
                reads, writes = ranges_of(op)
                if not reads and not writes:
                    continue
                slots = [("r", *r) for r in reads] + [("w", *r) for r in writes]
                assert len(slots) <= NS, op
                with m.Case(int(op)):
                    m.d.comb += range_err.eq(
                        Cat(cd[i] & over[i][sl[1]] for i, sl in enumerate(slots)).any())
                    ovl = [cd[i] & cd[j] & pov[i, j]
                           for i, si in enumerate(slots) if si[0] == "w"
                           for j, sj in enumerate(slots) if sj[0] == "r" and sj[1] == si[1]]
                    if ovl:
                        m.d.comb += overlap.eq(Cat(ovl).any())
                    for dname in ("r", "w"):
                        for sp in SPACES:
                            sel = [i for i, sl in enumerate(slots) if sl[:2] == (dname, sp)]
                            if not sel:
                                continue
                            lo, hi = [], []
                            for i in sel:
                                others = [j for j in sel if j != i]
                                win_lo = cd[i] & Cat(
                                    ~cd[j] | (~lt[j, i] if i < j else lt[i, j])
                                    for j in others).all() if others else cd[i]
                                win_hi = cd[i] & Cat(
                                    ~cd[j] | (~gt[j, i] if i < j else gt[i, j])
                                    for j in others).all() if others else cd[i]
                                lo.append(Mux(win_lo, st[i], 0))
                                hi.append(Mux(win_hi, en[i], 0))
                            lo_v = lo[0]
                            hi_v = hi[0]
                            for x in lo[1:]:
                                lo_v = lo_v | x
                            for x in hi[1:]:
                                hi_v = hi_v | x
                            sh = hazard_shift(sizes[sp])
                            m.d.comb += [
                                getattr(hull, f"{sp}_{dname}_v").eq(Cat(cd[i] for i in sel).any()),
                                getattr(hull, f"{sp}_{dname}_lo").eq(lo_v >> sh),
                                getattr(hull, f"{sp}_{dname}_hi").eq(
                                    (hi_v >> sh) + (hi_v[:sh] != 0 if sh else 0)),
                            ]

        code = Signal(4)
        with m.If(s2[0]):
            m.d.comb += code.eq(ErrorCode.INVALID_OPCODE)
        with m.Elif(s2[1]):
            m.d.comb += code.eq(ErrorCode.ENGINE_ABSENT)
        with m.Elif(s2[2]):
            m.d.comb += code.eq(ErrorCode.BAD_OPERAND)
        with m.Elif(s2[3]):
            m.d.comb += code.eq(ErrorCode.MISALIGNED)
        with m.Elif(range_err):
            m.d.comb += code.eq(ErrorCode.ADDRESS_RANGE)
        with m.Elif(overlap):
            m.d.comb += code.eq(ErrorCode.BAD_OPERAND)

        queue = Signal(2, init=3)
        with m.Switch(opc2):
            for op in Op:
                q = queue_of(op)
                if q is not None:
                    with m.Case(int(op)):
                        m.d.comb += queue.eq(q)
            with m.Default():
                m.d.comb += queue.eq(3)
        serial = Cat(opc2 == int(o) for o in SERIAL_OPS).any()
        m.d.sync += [
            self.code.eq(code),
            self.queue.eq(queue),
            self.serial.eq(serial),
            self.hull.eq(hull),
        ]
        return m


class Controller(wiring.Component):
    """Instruction fetch, checks, queues with dependency tracking, watchdog, status.

    See the module docstring for the pipeline and the hazard rules.

    Cycle contract: an instruction that goes to a queue takes about ``fetch latency + 6``
    cycles in the front end (fetch, DECODE, CHECK, CHECK2, CHECK3, DISPATCH); dispatch stalls while the target
    queue is full (``depth`` slots, the executing one included), behind FENCE/HALT until the
    queues are empty, and behind VREQ/VMUL/VRMS until they finish.

    Parameters
    ----------
    cfg : AcceleratorConfig
        ``cfg.queue_depth`` slots per queue.

    Members
    -------
    axi : Out(Axi4Signature)
        Instruction fetch (AR/R only; :class:`tritium.rtl.dma.AxiJoin` routes it).
    start, reset : In(1)
        CSR pulses.
    prog_base, watchdog : In(32)
    busy, done, error : Out(1)
    err_code : Out(8)
    err_pc : Out(32)
    retire : Out(1)
    load_cmd, store_cmd, comp_cmd : Out(stream.Signature(128))
        Instructions to the load unit, the store unit and the compute unit.
    load_done, store_done, comp_done : In(1)
        The unit finished its current instruction; ``*_err`` with it flags a fault,
        ``comp_code`` is the compute fault's ErrorCode (load/store faults are BUS_ERROR).
    load_err, store_err, comp_err : In(1)
    comp_code : In(4)
    load_idle, store_idle : In(1)
        The DMA units have no AXI transaction outstanding (abort completion).
    abort : Out(1)
        Held while aborting (reset/watchdog).
    """

    def __init__(self, cfg: AcceleratorConfig, axi_sig: Axi4Signature = None):
        self.cfg = cfg
        self.depth = cfg.queue_depth
        if axi_sig is None:
            axi_sig = Axi4Signature(addr_width=32, data_width=cfg.bus_width, id_width=2)
        cmd = stream.Signature(unsigned(INSTR_BITS))
        super().__init__(
            {
                "axi": Out(axi_sig),
                "start": In(1),
                "reset": In(1),
                "prog_base": In(32),
                "watchdog": In(32),
                "busy": Out(1),
                "done": Out(1),
                "error": Out(1),
                "err_code": Out(8),
                "err_pc": Out(32),
                "retire": Out(1),
                "load_cmd": Out(cmd),
                "store_cmd": Out(cmd),
                "comp_cmd": Out(cmd),
                "load_done": In(1),
                "store_done": In(1),
                "comp_done": In(1),
                "load_err": In(1),
                "store_err": In(1),
                "comp_err": In(1),
                "comp_code": In(4),
                "load_idle": In(1),
                "store_idle": In(1),
                "abort": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D = self.depth
        bb = cfg.bus_bytes
        lb = (bb - 1).bit_length()
        beats = INSTR_BYTES // bb
        axi = self.axi
        m.submodules.checker = chk = InstrChecker(cfg)

        pc = Signal(32)
        ir = Signal(INSTR_BITS)
        m.d.comb += chk.word.eq(ir)
        err_code = Signal(8)
        err_pc = Signal(32)
        err_pend = Signal()  # a fault is latched; stop dispatching
        wd = Signal(32)

        # ------------------------------------------------------------------ fetch port
        ar_valid = Signal()
        f_out = Signal()  # a fetch burst is outstanding
        beat = Signal(range(beats + 1))
        f_err = Signal()
        f_done = Signal()
        m.d.comb += [
            axi.arid.eq(1),
            axi.araddr.eq(pc),
            axi.arlen.eq(beats - 1),
            axi.arsize.eq(lb),
            axi.arburst.eq(BURST_INCR),
            axi.arvalid.eq(ar_valid),
            axi.rready.eq(1),
        ]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [ar_valid.eq(0), f_out.eq(1), beat.eq(0), f_err.eq(0)]
        with m.If(axi.rvalid & f_out):
            m.d.sync += beat.eq(beat + 1)
            if beats == 1:
                m.d.sync += ir.eq(axi.rdata)
            else:
                m.d.sync += ir.eq(Cat(ir[8 * bb :], axi.rdata))
            with m.If(axi.rresp[1]):
                m.d.sync += f_err.eq(1)
            with m.If(axi.rlast):
                m.d.sync += f_out.eq(0)
                m.d.comb += f_done.eq(1)

        # ------------------------------------------------------------------ queues
        hl = hull_layout(cfg)
        Q = len(QUEUES)
        s_valid = [[Signal(name=f"q{q}_v{i}") for i in range(D)] for q in range(Q)]
        s_issued = [[Signal(name=f"q{q}_iss{i}") for i in range(D)] for q in range(Q)]
        s_pc = [[Signal(32, name=f"q{q}_pc{i}") for i in range(D)] for q in range(Q)]
        s_word = [[Signal(INSTR_BITS, name=f"q{q}_w{i}") for i in range(D)] for q in range(Q)]
        s_hull = [[Signal(hl, name=f"q{q}_h{i}") for i in range(D)] for q in range(Q)]
        s_deps = [[Signal(Q * D, name=f"q{q}_dep{i}") for i in range(D)] for q in range(Q)]
        head = [Signal(range(D), name=f"q{q}_head") for q in range(Q)]
        tail = [Signal(range(D), name=f"q{q}_tail") for q in range(Q)]
        cmds = (self.load_cmd, self.store_cmd, self.comp_cmd)
        dones = (self.load_done, self.store_done, self.comp_done)
        errs = (self.load_err, self.store_err, self.comp_err)

        aborting = Signal()
        completing = Signal(Q * D)  # slot finishes this cycle
        for q in range(Q):
            for i in range(D):
                m.d.comb += completing[q * D + i].eq(dones[q] & (head[q] == i) & s_valid[q][i])

        def nxt(p):
            return Mux(p == D - 1, 0, p + 1)

        q_empty = []
        q_full = []
        for q in range(Q):
            q_empty.append(~Cat(s_valid[q]).any())
            q_full.append(Cat(s_valid[q]).all())
            hv = Signal(name=f"q{q}_hv")
            hiss = Signal(name=f"q{q}_hiss")
            hdeps = Signal(Q * D, name=f"q{q}_hdeps")
            hword = Signal(INSTR_BITS, name=f"q{q}_hword")
            hpc = Signal(32, name=f"q{q}_hpc")
            with m.Switch(head[q]):
                for i in range(D):
                    with m.Case(i):
                        m.d.comb += [
                            hv.eq(s_valid[q][i]),
                            hiss.eq(s_issued[q][i]),
                            hdeps.eq(s_deps[q][i]),
                            hword.eq(s_word[q][i]),
                            hpc.eq(s_pc[q][i]),
                        ]
            c = cmds[q]
            m.d.comb += [
                c.valid.eq(hv & ~hiss & (hdeps == 0) & ~aborting),
                c.payload.eq(hword),
            ]
            for i in range(D):
                with m.If(c.valid & c.ready & (head[q] == i)):
                    m.d.sync += s_issued[q][i].eq(1)
            with m.If(dones[q] & hv):
                for i in range(D):
                    with m.If(head[q] == i):
                        m.d.sync += [s_valid[q][i].eq(0), s_issued[q][i].eq(0)]
                m.d.sync += head[q].eq(nxt(head[q]))
                with m.If(errs[q] & ~err_pend):
                    m.d.sync += [
                        err_pend.eq(1),
                        err_pc.eq(hpc),
                        err_code.eq(ErrorCode.BUS_ERROR if q < 2 else self.comp_code),
                    ]
        all_empty = Signal()
        m.d.comb += all_empty.eq(Cat(*q_empty).all())

        # dependencies of the instruction in the checker against every occupied slot
        new_deps = Signal(Q * D)
        for q in range(Q):
            for i in range(D):
                m.d.comb += new_deps[q * D + i].eq(
                    s_valid[q][i] & ~completing[q * D + i] & hulls_conflict(chk.hull, s_hull[q][i])
                )
        # clear the bits of completing slots
        for q in range(Q):
            for i in range(D):
                m.d.sync += s_deps[q][i].eq(s_deps[q][i] & ~completing)

        enq = Signal()
        enq_q = chk.queue
        for q in range(Q):
            with m.If(enq & (enq_q == q)):
                other = Cat(
                    Const(0, D) if q2 == q else new_deps[q2 * D : (q2 + 1) * D] for q2 in range(Q)
                )
                for i in range(D):
                    with m.If(tail[q] == i):
                        m.d.sync += [
                            s_valid[q][i].eq(1),
                            s_issued[q][i].eq(0),
                            s_pc[q][i].eq(pc),
                            s_word[q][i].eq(ir),
                            s_hull[q][i].eq(chk.hull),
                            s_deps[q][i].eq(other & ~completing),
                        ]
                m.d.sync += tail[q].eq(nxt(tail[q]))
        queue_full = Signal()
        with m.Switch(enq_q):
            for q in range(Q):
                with m.Case(q):
                    m.d.comb += queue_full.eq(q_full[q])

        # ------------------------------------------------------------------ main FSM
        opc = ir[:8]
        target = data.View(instr_layout(Op.JUMP), ir).target
        dev = cfg.dev_mem_bytes
        pc_mis = pc[:4] != 0
        pc_range = pc > dev - INSTR_BYTES
        wd_hit = Signal()
        m.d.comb += wd_hit.eq(wd >= self.watchdog)
        abort_code = Signal(8)  # 0: return to IDLE after the abort; else report it
        abort_pc = Signal(32)
        status_busy = Signal()
        status_done = Signal()
        status_err = Signal()

        def fault(code, at=pc):
            m.d.sync += [err_pend.eq(1), err_code.eq(code), err_pc.eq(at)]

        def run_guard():
            """In every running state: CTRL.RESET and the watchdog abort (they win over
            whatever the state decided, being the last assignments to ``m.next``)."""
            with m.If(self.reset):
                m.d.sync += [abort_code.eq(0), abort_pc.eq(pc)]
                m.next = "ABORT"
            with m.Elif(wd_hit):
                with m.If(err_pend):  # keep the first fault, just stop waiting
                    m.d.sync += [abort_code.eq(err_code), abort_pc.eq(err_pc)]
                with m.Else():
                    m.d.sync += [abort_code.eq(ErrorCode.WATCHDOG), abort_pc.eq(pc)]
                m.next = "ABORT"

        def begin():
            m.d.sync += [pc.eq(self.prog_base), wd.eq(0), err_pend.eq(0),
                         err_code.eq(0), err_pc.eq(0)]
            m.next = "FETCH"

        with m.FSM(name="ctrl") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    begin()
                with m.Elif(self.reset):
                    m.d.sync += [err_code.eq(0), err_pc.eq(0), err_pend.eq(0)]
            with m.State("DONE"):
                m.d.comb += status_done.eq(1)
                with m.If(self.start):
                    begin()
                with m.Elif(self.reset):
                    m.next = "IDLE"
            with m.State("ERROR"):
                m.d.comb += status_err.eq(1)
                with m.If(self.start):
                    begin()
                with m.Elif(self.reset):
                    m.d.sync += [err_code.eq(0), err_pc.eq(0), err_pend.eq(0)]
                    m.next = "IDLE"

            with m.State("FETCH"):
                with m.If(err_pend):
                    m.next = "DRAIN"
                with m.Elif(pc_mis):
                    fault(ErrorCode.MISALIGNED)
                    m.next = "DRAIN"
                with m.Elif(pc_range):
                    fault(ErrorCode.ADDRESS_RANGE)
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += ar_valid.eq(1)
                    m.next = "FETCH_WAIT"
                run_guard()
            with m.State("FETCH_WAIT"):
                with m.If(f_done):
                    with m.If(f_err | axi.rresp[1]):
                        fault(ErrorCode.BUS_ERROR)
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "DECODE"
                run_guard()
            # one state per register stage of the checker
            check_states = ("DECODE", "CHECK", "CHECK2", "CHECK3", "DISPATCH")
            assert len(check_states) == InstrChecker.LATENCY + 1
            for state, after in itertools.pairwise(check_states):
                with m.State(state):
                    m.next = after
                    run_guard()
            with m.State("DISPATCH"):
                with m.If(err_pend):
                    m.next = "DRAIN"
                with m.Elif(chk.code != 0):
                    fault(chk.code)
                    m.next = "DRAIN"
                with m.Elif(opc == Op.HALT), m.If(all_empty):
                    m.d.comb += self.retire.eq(1)
                    m.next = "DONE"
                with m.Elif(opc == Op.FENCE), m.If(all_empty):
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(pc + INSTR_BYTES)
                    m.next = "FETCH"
                with m.Elif(opc == Op.JUMP):
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(target)
                    m.next = "FETCH"
                with m.Elif(chk.queue == 3):  # NOP
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(pc + INSTR_BYTES)
                    m.next = "FETCH"
                with m.Elif(~queue_full):
                    m.d.comb += [enq.eq(~self.reset & ~wd_hit), self.retire.eq(1)]
                    with m.If(chk.serial):
                        m.next = "SERIAL"
                    with m.Else():
                        m.d.sync += pc.eq(pc + INSTR_BYTES)
                        m.next = "FETCH"
                run_guard()
            with m.State("SERIAL"):
                with m.If(q_empty[2]):
                    with m.If(err_pend):
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += pc.eq(pc + INSTR_BYTES)
                        m.next = "FETCH"
                run_guard()
            with m.State("DRAIN"):
                with m.If(all_empty & ~f_out & ~ar_valid):
                    m.next = "ERROR"
                run_guard()
            with m.State("ABORT"):
                m.d.comb += aborting.eq(1)
                with m.If(self.reset):
                    m.d.sync += abort_code.eq(0)
                with m.If(self.load_idle & self.store_idle & ~f_out & ~ar_valid):
                    for q in range(Q):
                        m.d.sync += [head[q].eq(0), tail[q].eq(0)]
                        for i in range(D):
                            m.d.sync += [s_valid[q][i].eq(0), s_issued[q][i].eq(0)]
                    with m.If(self.reset | (abort_code == 0)):
                        m.d.sync += [err_pend.eq(0), err_code.eq(0), err_pc.eq(0)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [err_pend.eq(1), err_code.eq(abort_code),
                                     err_pc.eq(abort_pc)]
                        m.next = "ERROR"

        is_running = Signal()
        m.d.comb += is_running.eq(
            Cat(fsm.ongoing(st) for st in
                ("FETCH", "FETCH_WAIT", "DECODE", "CHECK", "CHECK2", "CHECK3", "DISPATCH",
                              "SERIAL", "DRAIN")).any()
        )
        with m.If(is_running):
            m.d.sync += wd.eq(wd + 1)

        m.d.comb += [
            status_busy.eq(~status_done & ~status_err & (is_running | aborting)),
            self.busy.eq(status_busy),
            self.done.eq(status_done),
            self.error.eq(status_err),
            self.err_code.eq(err_code),
            self.err_pc.eq(err_pc),
            self.abort.eq(aborting),
        ]
        return m
