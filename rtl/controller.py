"""Controller: fetch, decode, check, dispatch to load / compute / store queues, track hazards.

Everything about instruction encodings comes from :mod:`tritium.isa`: :func:`instr_layout`
builds, for each opcode, a ``lib.data`` layout over the 128-bit instruction word whose fields
sit at the ``lsb``/``width`` of :data:`tritium.isa.FORMATS`; reserved-bit masks and the set of
valid opcodes are computed from the same table; the operand rules mirror
:meth:`tritium.golden.GoldenDevice.check` and the address ranges mirror
:func:`tritium.isa.footprint` (tests compare both on random instructions).

Pipeline (one instruction in flight in the front end; queues run concurrently behind it)::

    FETCH   pc checks (MISALIGNED, ADDRESS_RANGE), one AXI burst of 16 bytes (id ID_FETCH)
    DECODE  start the InstrChecker on the fetched word
    CHECK   until the checker is done: opcode / reserved bits, engine present, operand and
            alignment rules; the range-length products (rows*row_bytes, m*k, n*k, ...) by a
            shift-and-add multiplier; every footprint range inside its space, partial
            overlaps, per-space hulls, one range per cycle (see InstrChecker)
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

Without queues (``cfg.queue_depth == 0``, the ``tiny`` preset: the smallest controller): one
instruction executes at a time and there are no slots, hulls or hazard comparators. The front
end fetches and checks the next instruction while the unit runs and hands it over when the
unit is done; the executing instruction's fault, being the oldest, replaces one the front end
found meanwhile. ``mmfree`` on ``tiny``: 116,449 cycles per token against 107,195 with
one-slot queues (+8.6 %), for 1,760 fewer iCE40 logic cells (-11 %).

Faults: a failed check stops dispatch, waits until the queues drain (everything older
completes) and sets STATUS.ERROR with ERROR and ERROR_PC = the instruction's pc. A unit error
(AXI SLVERR/DECERR -> BUS_ERROR, bad parameters -> BAD_OPERAND) does the same with the pc of
the queue slot; it replaces a check fault latched meanwhile (that instruction is younger), and
the first unit error stays (two queued instructions of different queues that both fault are
reported in the order they finish). The watchdog (cycles since START >= CSR WATCHDOG, acted on one cycle later:
the compare is registered, and so is the limit it reads) and CTRL.RESET abort:
compute units are reset, the DMA units and the fetch port finish their outstanding AXI bursts
without writing, the queues are emptied; the watchdog then reports WATCHDOG at the pc of the
instruction being fetched/dispatched (or the fault already pending), RESET returns to idle. In
the cycle an abort starts, the pc and the error registers keep their values (no copies of them
are kept for the abort).

Limitation: instruction fetch does not wait for queued STOREs, so a program that stores over
its own upcoming instructions must FENCE first (no tritium tool emits such code).
"""

from __future__ import annotations

import functools

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
#: From this target clock (MHz) up, the instruction checker computes its products and scans
#: its ranges in a pipeline; below, it works bit-serially (fewer LUTs, more cycles).
PIPELINE_MHZ = 50.0

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


def _intern(lst: list, val) -> int:
    """The index of ``val`` in ``lst`` (compared by ``repr``: Amaranth values have no
    equality), appending it when absent: the tables of distinct checker sources."""
    for i, have in enumerate(lst):
        if repr(have) == repr(val):
            return i
    lst.append(val)
    return len(lst) - 1


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


def gt_const(v, c: int) -> Value:
    """``v > c`` (unsigned ``v``, constant ``c``) as plain logic: yosys maps a comparison to
    an adder (a carry chain, one LUT4 per bit) even against a constant."""
    v = Value.cast(v)
    if c < 0:
        return Const(1)
    if c >= (1 << len(v)) - 1:
        return Const(0)
    terms, eq = [], []
    for i in reversed(range(len(v))):
        if not (c >> i) & 1:
            terms.append(Cat(v[i], *eq).all())
        eq.append(v[i] if (c >> i) & 1 else ~v[i])
    return Cat(*terms).any()


class InstrChecker(wiring.Component):
    """Decode and check one instruction word, over several cycles with one adder per job.

    Pulse ``start`` with the instruction in ``word`` and hold ``word`` stable until ``done``
    (a level, cleared by the next ``start``; ``start`` restarts a check in progress). Then
    ``code``, ``queue``, ``serial`` and ``hull`` describe the word. ``code`` is the
    :class:`~tritium.isa.ErrorCode` of the first failing check in the order of
    :meth:`tritium.golden.GoldenDevice.check` (decode, engine, operands, alignment, ranges,
    partial read/write overlap); the ACC parameter values of VREQ/VMUL/VRMS are checked by the
    compute unit when the instruction executes.

    Steps at :data:`PIPELINE_MHZ` and above (a small FSM; nothing here needs a multiplier or a
    comparator per pair of ranges):

    ``MUL``
        the field checks are registered; the three range-length products (rows*row_bytes,
        m*k, n*k, ...) are computed one after the other by a shift-and-add multiplier that
        saturates at the range width and stops when the multiplier's remaining bits are zero
        (``bit_length`` cycles each, plus one).
    ``SCAN``
        each of the instruction's (at most four) ranges, writes first, is a *slot*: one
        cycle selects a slot's start and length, the next computes its saturated end, the
        third judges it: its end
        against its space's size (ADDRESS_RANGE), a read slot against the write slot of its
        space (partial overlap, BAD_OPERAND), and the fourth widens its space's read or write
        hull (block indices, :func:`hull_blocks`).
    ``FINAL``
        the error code, queue and hull are registered; ``done``.

    A check takes ``9 + sum(bit_length(multiplier) + 1)`` cycles, the multipliers being the
    row counts (``rows``, ``rows - 1``, ``m``) and the weight bytes per row (``k / 4``, ...).

    Below :data:`PIPELINE_MHZ` (``cfg.clock_mhz``; ``tiny``) the checker is *bit-serial*
    instead, for the fewest LUTs: no field reaches the range arithmetic in parallel. Every
    range end is ``start + sum((x << ps) * y)`` over at most two terms (a table per opcode
    class, slot and term, e.g. ``loc + row_bytes * rows``, ``dram + row_bytes * 1 + stride *
    (rows - 1)``, ``c + (n << 2) * m``); one multiplexer selects a bit of ``word`` per cycle:

    ``SLOT``
        the next slot (writes first); a slot whose condition is false is skipped.
    ``SETUP``, ``LOADX``, ``SCALE``, ``MUL`` (per term)
        ``x`` is shifted in from its field MSB first, then doubled ``ps`` times; the ``y``
        field is read LSB first (``rows - 1`` by a serial decrement), and each one bit adds
        ``x`` into the accumulator as ``x`` doubles (saturating: bits past the range width
        set an overflow flag). The slot's start is the term ``start * 1``.
    ``JUDGE``
        as stage B above (end against its space's size; partial overlap with slot 0).
    ``FINAL``
        as above; the field checks are read from ``word`` (stable until ``done``).

    A slot takes ``2 + sum(1 + width(x) + ps + width(y))`` cycles (a field's width, 1 for a
    constant): e.g. 53 for ``dst + n * rows`` (20 + 16 + 12 bits), so a VADD takes 162
    cycles, a GEMM 165-220, a LOAD or STORE about 150 (the controller checks the next
    instruction while a unit executes the previous one).

    Members
    -------
    word : In(128)
    start : In(1)
    done : Out(1)
    code : Out(4)
    queue : Out(2)
        Index into :data:`QUEUES`, 3 for instructions the controller handles itself.
    serial : Out(1)
        The instruction is one of :data:`SERIAL_OPS`.
    hull : Out(hull_layout(cfg))
    """

    #: Range slots: no instruction has more than this many ranges.
    SLOTS = 4

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        #: The products and the three-stage SCAN above (clocks of 50 MHz and more); below,
        #: the bit-serial form.
        self.pipelined = cfg.clock_mhz >= PIPELINE_MHZ
        super().__init__(
            {
                "word": In(INSTR_BITS),
                "start": In(1),
                "done": Out(1),
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
        d = data.View(instr_layout(Op.LOAD), w)
        g = data.View(instr_layout(Op.GEMM_I8), w)
        v = data.View(instr_layout(Op.VREQ), w)

        def is_op(*ops):
            return Cat(opc == int(o) for o in ops).any()

        # ------------------------------------------------------------------ field checks
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

        def misal(val, unit):
            return (val & (unit - 1)) != 0 if unit > 1 else Const(0)

        gemm_bad = (
            (g.m == 0)
            | (g.n == 0)
            | ~gt_const(g.k, 7)
            | (g.k[:3] != 0)
            | (is_op(Op.GEMM_LUT) & ((g.bits == 0) | gt_const(g.bits, cfg.lut_max_bits)))
            | (~is_op(Op.GEMM_LUT) & (g.bits != 0))
            | (~is_op(Op.GEMM_I8) & g.wt)
        )
        dma_bad = (
            gt_const(d.space, 1)
            | (d.rows == 0)
            | (d.row_bytes == 0)
            | (gt_const(d.rows, 1) & (d.stride < d.row_bytes))
        )
        dma_mis = misal(d.dram, bus) | misal(d.row_bytes, bus) | misal(d.stride, bus) | misal(
            d.loc, bus
        )
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

        if not self.pipelined:
            self._elaborate_serial(m, Cat(invalid, absent, bad, mis), d, g, v, is_op)
            return m

        # ------------------------------------------------------------------ products
        # Range ends are computed saturated at SAT: an end beyond every space is reported the
        # same, and the ranges of instructions that pass the range check are exact.
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
        # weight bytes per row: k (GEMM_I8), k/4 (GEMM_TERN), bits * k/8 (GEMM_LUT, bits 1..4;
        # an absent engine's ranges are never judged: ENGINE_ABSENT comes first)
        k8 = g.k >> 3
        lut_kk = (Mux(g.bits[0], k8, 0) + Mux(g.bits[1], k8 << 1, 0) + Mux(g.bits[2], k8 << 2, 0)
                  if cfg.has("lut") else 0)
        kk = Mux(is_op(Op.GEMM_I8), g.k, Mux(is_op(Op.GEMM_TERN), g.k >> 2, lut_kk))
        # (multiplicand, multiplier) of each product; the multiplier is the operand with the
        # fewest bits in practice (a row count), as the multiplier stops at its last one bit.
        operands = [
            (Mux(is_dma, d.row_bytes, Mux(is_gemm, g.k, v.n)),
             Mux(is_dma, d.rows, Mux(is_gemm, g.m, v.rows))),
            (Mux(is_dma, sat(d.stride, "stride_sat"), g.n), Mux(is_dma, d.rows - 1, g.m)[:12]),
            (g.n, kk),
        ]
        YW = max(len(Value.cast(y)) for _, y in operands)
        x = Signal(W)
        x_over = Signal()  # x has been shifted past W bits
        y = Signal(YW)
        acc = Signal(W)
        acc_over = Signal()
        prod = [Signal(W, name=f"p{i + 1}") for i in range(len(operands))]
        pidx = Signal(range(len(operands)))
        fields = Signal(4)  # invalid, absent, bad, mis

        # ------------------------------------------------------------------ ranges
        t_acc = sat(prod[0] << 2, "t_acc")
        c_acc = sat(prod[1] << 2, "c_acc")
        dram_len = sat(prod[1] + d.row_bytes, "dram_len")
        pc2 = Mux(v.per_channel, v.n << 3, 8)

        def ranges_of(op):
            """(space, start, length, cond) lists (reads, writes) of ``op`` in hardware."""
            if op in (Op.LOAD, Op.STORE):
                dram = ("DRAM", d.dram, dram_len, Const(1))
                loc_s = ("SPAD", d.loc, prod[0], d.space == 0)
                loc_a = ("ACC", d.loc, prod[0], d.space == 1)
                return ([dram], [loc_s, loc_a]) if op == Op.LOAD else ([loc_s, loc_a], [dram])
            if op in GEMM_OPS:
                c = ("ACC", g.c, c_acc, Const(1))
                reads = [("SPAD", g.a, prod[0], Const(1)), ("SPAD", g.w, prod[2], Const(1)),
                         ("ACC", g.c, c_acc, g.accumulate)]
                return reads, [c]
            if op in VEC_OPS:
                counts = {"t": (prod[0], t_acc), "n": (v.n, v.n << 2),
                          "rows": (v.rows, v.rows << 2), "pc2": (None, pc2)}
                out = []
                for lst in vec_ranges(op):
                    rs = []
                    for space, fname, cnt in lst:
                        if isinstance(cnt, str):
                            n = counts[cnt][space == "ACC"]
                        else:
                            n = Const(cnt * (4 if space == "ACC" else 1), 12)
                        rs.append((space, getattr(v, fname), n, Const(1)))
                    out.append(rs)
                return tuple(out)
            return [], []

        def slots_of(op):
            """``(dir, space, start, length, cond, partner)`` of each slot of ``op``, writes
            first; ``partner``: a read range has a write range in its space (always slot 0)."""
            reads, writes = ranges_of(op)
            slots = [("w", *r) for r in writes] + [("r", *r) for r in reads]
            assert len(slots) <= self.SLOTS, op
            out = []
            for dr, sp, start, length, cond in slots:
                part = [j for j, s in enumerate(slots) if s[0] == "w" and s[1] == sp]
                assert dr == "w" or part in ([], [0]), op
                out.append((dr, sp, start, length, cond, dr == "r" and bool(part)))
            return out

        # SCAN is a four-stage pipeline: (A) slot k's start and length; (E) its saturated
        # end, direction and space; (B) the slot is judged; (H) the hull is widened by it
        # (from the slot's block bounds, registered in B: timing, the bound adder and the
        # hull compares are separate stages). Without the pipeline (slow clocks) all of it
        # happens in the cycle of slot k.
        NS = self.SLOTS
        k = Signal(range(NS + 3))
        c_st = Signal(W)
        c_ln = Signal(W)
        c_cd = Signal()
        a_k = Signal(range(NS))
        a_valid = Signal()
        a_st = Signal(W)
        a_ln = Signal(W)
        a_cd = Signal()
        j_k = Signal(range(NS))
        j_valid = Signal()
        j_st = Signal(W)
        j_en = Signal(W)
        j_cd = Signal()
        a_wr = Signal()  # slot a_k's direction, space and partner flag (decoded in stage E)
        a_sp = Signal(range(len(SPACES)))
        a_part = Signal()
        j_wr = Signal()
        j_sp = Signal(range(len(SPACES)))
        j_part = Signal()
        # The slots of every opcode as a table: (opcode, slot) -> small indices into the
        # distinct starts, lengths and conditions (one wide mux each, not one per opcode).
        starts, lengths, conds = [], [], []

        table = {}
        for op in Op:
            for i, (dr, sp, start, length, cond, part) in enumerate(slots_of(op)):
                table[(int(op), i)] = (_intern(starts, Value.cast(start)),
                                       _intern(lengths, Value.cast(length)),
                                       _intern(conds, Value.cast(cond)), dr == "w",
                                       SPACES.index(sp), part)
        st_sel = Signal(range(max(2, len(starts))))
        ln_sel = Signal(range(max(2, len(lengths))))
        cd_sel = Signal(range(max(2, len(conds))))
        c_any = Signal()  # the opcode has a slot k (k >= NS reads as an alias: a_valid is low)
        with m.Switch(Cat(k[:2], opc)):
            for (op, i), (si, li, ci, _, _, _) in table.items():
                with m.Case(i | op << 2):
                    m.d.comb += [st_sel.eq(si), ln_sel.eq(li), cd_sel.eq(ci), c_any.eq(1)]
        st_raw = Signal(max(len(src) for src in starts))
        with m.Switch(st_sel):
            for i, src in enumerate(starts):
                with m.Case(i):
                    m.d.comb += st_raw.eq(src)
        with m.Switch(ln_sel):
            for i, src in enumerate(lengths):
                with m.Case(i):
                    m.d.comb += c_ln.eq(src)
        with m.Switch(cd_sel):
            for i, src in enumerate(conds):
                with m.Case(i):
                    m.d.comb += c_cd.eq(src & c_any)
        m.d.comb += c_st.eq(sat(st_raw, "st_sat"))
        with m.Switch(Cat(a_k, opc)):
            for (op, i), (_, _, _, wr, sp, part) in table.items():
                with m.Case(i | op << 2):
                    m.d.comb += [a_wr.eq(wr), a_sp.eq(sp), a_part.eq(part)]
        a_en = sat(a_st + a_ln, "a_end")
        pw_st = Signal(W)  # slot 0 (a write), the partner of the reads of its space
        pw_en = Signal(W)
        pw_cd = Signal()
        live = j_valid & j_cd
        j_over = Signal()
        with m.Switch(j_sp):
            for i, sp in enumerate(SPACES):
                with m.Case(i):
                    m.d.comb += j_over.eq(j_en > sizes[sp])
        j_pov = (j_part & pw_cd & (pw_st < j_en) & (j_st < pw_en)
                 & ((j_st != pw_st) | (j_en != pw_en)))
        range_err = Signal()
        overlap = Signal()  # a written range partially overlaps a read range (BAD_OPERAND)
        hull = Signal(hull_layout(cfg))
        # stage H: the judged slot's block bounds in each space's blocks
        h_live = Signal()
        h_clear = Signal()  # clear the hull (SCAN's first cycle)
        h_wr = Signal()
        h_sp = Signal(range(len(SPACES)))
        h_lo, h_hi = [], []
        for si, spn in enumerate(SPACES):
            lo_b, hi_b = self._hull_bounds(si, j_st, j_en)
            h_lo.append(Signal(len(lo_b), name=f"h_lo_{spn}"))
            h_hi.append(Signal(len(hi_b), name=f"h_hi_{spn}"))

        # ------------------------------------------------------------------ FSM
        code, queue = self._code_queue(m, opc, fields, range_err, overlap)

        def load_product(i):
            xv, yv = operands[i]
            m.d.sync += [x.eq(xv), x_over.eq(0), y.eq(yv), acc.eq(0), acc_over.eq(0),
                         pidx.eq(i)]

        def on_start():
            """``start`` (re)starts a check from any state."""
            with m.If(self.start):
                m.d.sync += [self.done.eq(0), fields.eq(Cat(invalid, absent, bad, mis))]
                load_product(0)
                m.next = "MUL"

        with m.FSM(name="check"):
            with m.State("IDLE"):
                on_start()
            with m.State("MUL"):
                with m.If(y == 0):
                    for i in range(len(operands)):
                        with m.If(pidx == i):
                            m.d.sync += prod[i].eq(Mux(acc_over, SAT, acc))
                            if i + 1 < len(operands):
                                load_product(i + 1)
                            else:
                                m.d.sync += [k.eq(0), range_err.eq(0), overlap.eq(0),
                                             h_clear.eq(1), pw_cd.eq(0), a_valid.eq(0),
                                             h_live.eq(0),
                                             j_valid.eq(0)]
                                m.next = "SCAN"
                with m.Else():
                    with m.If(y[0]):
                        total = acc + x
                        m.d.sync += [acc.eq(total[:W]), acc_over.eq(acc_over | x_over | total[W])]
                    m.d.sync += [x.eq(x << 1), x_over.eq(x_over | x[W - 1]), y.eq(y >> 1)]
                on_start()
            with m.State("SCAN"):
                # stages A and E
                m.d.sync += [a_st.eq(c_st), a_ln.eq(c_ln), a_cd.eq(c_cd), a_k.eq(k),
                             a_valid.eq(k < NS),
                             j_st.eq(a_st), j_en.eq(a_en), j_cd.eq(a_cd), j_k.eq(a_k),
                             j_valid.eq(a_valid), j_wr.eq(a_wr), j_sp.eq(a_sp),
                             j_part.eq(a_part)]
                m.d.sync += k.eq(k + 1)
                # stage B
                with m.If(live):
                    with m.If(j_over):
                        m.d.sync += range_err.eq(1)
                    with m.If(j_pov):
                        m.d.sync += overlap.eq(1)
                with m.If(j_valid & (j_k == 0)):
                    m.d.sync += [pw_st.eq(j_st), pw_en.eq(j_en), pw_cd.eq(j_cd)]
                # stage H
                m.d.sync += [h_live.eq(live), h_wr.eq(j_wr), h_sp.eq(j_sp), h_clear.eq(0)]
                for si in range(len(SPACES)):
                    lo_b, hi_b = self._hull_bounds(si, j_st, j_en)
                    m.d.sync += [h_lo[si].eq(lo_b), h_hi[si].eq(hi_b)]
                with m.If(k == NS + 2):
                    m.next = "FINAL"
                on_start()
            self._final_state(m, code, queue, is_op(*SERIAL_OPS), hull, on_start)
        # The hull's enables come from the registers ``h_clear`` and ``h_live`` alone, not from
        # the FSM's state and the multiplier's end (timing). ``h_clear`` (set by the end of
        # MUL) clears it in SCAN's first cycle; ``h_live`` is low from then until the first
        # judged slot reaches stage H, and low again in FINAL (no slot is judged in SCAN's
        # last two cycles). After a restart from SCAN the hull may widen in MUL: SCAN clears
        # it before it is used.
        with m.If(h_clear):
            m.d.sync += hull.eq(0)
        with m.Elif(h_live):
            self._hull_update(m, hull, h_wr, h_sp, None, None, bounds=(h_lo, h_hi))
        return m

    def _final_state(self, m, code, queue, serial, hull, on_start):
        """The FSM's ``FINAL`` state (both forms): register the outputs, ``done``."""
        with m.State("FINAL"):
            m.d.sync += [self.code.eq(code), self.queue.eq(queue), self.serial.eq(serial),
                         self.hull.eq(hull), self.done.eq(1)]
            m.next = "IDLE"
            on_start()

    @staticmethod
    def _code_queue(m, opc, fields, range_err, overlap):
        """The error code (first failing check, golden order) and the queue index of ``opc``."""
        code = Signal(4)
        with m.If(fields[0]):
            m.d.comb += code.eq(ErrorCode.INVALID_OPCODE)
        with m.Elif(fields[1]):
            m.d.comb += code.eq(ErrorCode.ENGINE_ABSENT)
        with m.Elif(fields[2]):
            m.d.comb += code.eq(ErrorCode.BAD_OPERAND)
        with m.Elif(fields[3]):
            m.d.comb += code.eq(ErrorCode.MISALIGNED)
        with m.Elif(range_err):
            m.d.comb += code.eq(ErrorCode.ADDRESS_RANGE)
        with m.Elif(overlap):
            m.d.comb += code.eq(ErrorCode.BAD_OPERAND)
        queue = Signal(2, init=3)
        with m.Switch(opc):
            for op in Op:
                q = queue_of(op)
                if q is not None:
                    with m.Case(int(op)):
                        m.d.comb += queue.eq(q)
            with m.Default():
                m.d.comb += queue.eq(3)
        return code, queue

    def _hull_bounds(self, si, st, en):
        """The block bounds of ``[st, en)`` (byte addresses) in space index ``si``: the
        first block and one past the last (:func:`hull_blocks`)."""
        sh = hazard_shift(space_sizes(self.cfg)[SPACES[si]])
        return (None if st is None else st >> sh,
                None if en is None else (en >> sh) + (en[:sh] != 0 if sh else 0))

    def _hull_update(self, m, hull, wr, sp, st, en, lo=True, hi=True, bounds=None):
        """Widen the read (``wr`` = 0) or write hull of space index ``sp`` by ``[st, en)``
        (byte addresses; blocks of :func:`hull_blocks`). ``lo`` / ``hi``: update only the low
        (from ``st``) or the high bound and the valid flag (from ``en``). ``bounds``: the
        block bounds per space, ``([lo, ...], [hi, ...])``, instead of ``st`` / ``en``."""
        for dname in ("r", "w"):
            for si, spn in enumerate(SPACES):
                if bounds is not None:
                    lo_b, hi_b = bounds[0][si], bounds[1][si]
                else:
                    lo_b, hi_b = self._hull_bounds(si, st, en)
                lo_b = lo_b if lo else None
                hi_b = hi_b if hi else None
                hv = getattr(hull, f"{spn}_{dname}_v")
                hlo = getattr(hull, f"{spn}_{dname}_lo")
                hhi = getattr(hull, f"{spn}_{dname}_hi")
                with m.If((wr == (dname == "w")) & (sp == si)):
                    if lo:
                        with m.If(~hv | (lo_b < hlo)):
                            m.d.sync += hlo.eq(lo_b)
                    if hi:
                        m.d.sync += hv.eq(1)
                        with m.If(~hv | (hi_b > hhi)):
                            m.d.sync += hhi.eq(hi_b)

    def _elaborate_serial(self, m, fields_now, d, g, v, is_op):
        """The checker below :data:`PIPELINE_MHZ`, bit-serial (see the class docstring): the
        fields are read one bit per cycle through one bit multiplexer of the word, and every
        range end ``start + x1*y1 + x2*y2`` is accumulated by one shift-and-add multiplier."""
        cfg = self.cfg
        sizes = space_sizes(cfg)
        w = self.word
        opc = w[:8]
        # (ends up to the largest size are exact in W bits; larger ones set ``acc_over``)
        W = max(sizes.values()).bit_length()
        # A read range has a partner (a write range in its space) only in SPAD/ACC; when no
        # range is outside its space, every start and end fits in OW bits.
        OW = max(sizes["SPAD"], sizes["ACC"]).bit_length()

        def fld(op, name, drop=0):
            """("field", lsb, width) of field ``name`` of ``op`` without its ``drop`` low bits."""
            f = next(f for f in FORMATS[op] if f.name == name)
            return ("field", f.lsb + drop, f.width - drop)

        ONE = ("one",)
        PCX = ("pcx",)  # x = n if per_channel else 1 (VREQ's parameter count)
        VN = fld(Op.VREQ, "n")

        def dec(f):  # the field minus one (rows - 1; rows >= 1 when it matters)
            return ("dec", *f[1:])

        present = [op for op in GEMM_OPS if cfg.has(GEMM_ENGINE[op])]

        def kk_of(op):
            # weight bytes per row: k (GEMM_I8), k/4 (GEMM_TERN), bits * k/8 (GEMM_LUT,
            # bits 1..4); an absent engine's ranges are never judged (ENGINE_ABSENT first)
            if op == Op.GEMM_I8:
                return fld(op, "k")
            if op == Op.GEMM_TERN:
                return fld(op, "k", 2)
            k8 = g.k >> 3
            return ("value", Mux(g.bits[0], k8, 0) + Mux(g.bits[1], k8 << 1, 0)
                    + Mux(g.bits[2], k8 << 2, 0))

        def counts(op, space, cnt):
            e = 2 if space == "ACC" else 0  # log2 of the element size
            if cnt == "t":
                return [(VN, fld(op, "rows"), e)]
            if cnt == "n":
                return [(VN, ONE, e)]
            if cnt == "rows":
                return [(ONE, fld(op, "rows"), e)]
            if cnt == "pc2":
                return [(PCX, ONE, e + 1)]
            nbytes = cnt << e
            assert nbytes & (nbytes - 1) == 0, cnt
            return [(ONE, ONE, nbytes.bit_length() - 1)]

        def ranges_of(op):
            """(space, start, terms, cond) lists (reads, writes): the range is
            ``[start, start + sum((x << ps) * y for (x, y, ps) in terms))``."""
            if op in (Op.LOAD, Op.STORE):
                rb, rows = fld(op, "row_bytes"), fld(op, "rows")
                dram = ("DRAM", fld(op, "dram"),
                        [(rb, ONE, 0), (fld(op, "stride"), dec(rows), 0)], None)
                loc_s = ("SPAD", fld(op, "loc"), [(rb, rows, 0)], 0)
                loc_a = ("ACC", fld(op, "loc"), [(rb, rows, 0)], 1)
                return ([dram], [loc_s, loc_a]) if op == Op.LOAD else ([loc_s, loc_a], [dram])
            if op in GEMM_OPS:
                kk = kk_of(op if op in present or not present else present[0])
                gm, gn = fld(op, "m"), fld(op, "n")
                c = [(gn, gm, 2)]
                return ([("SPAD", fld(op, "a"), [(fld(op, "k"), gm, 0)], None),
                         ("SPAD", fld(op, "w"), [(gn, kk, 0)], None),
                         ("ACC", fld(op, "c"), c, "acc")],
                        [("ACC", fld(op, "c"), c, None)])
            if op in VEC_OPS:
                return tuple([(sp, fld(op, fname), counts(op, sp, cnt), None)
                              for sp, fname, cnt in lst] for lst in vec_ranges(op))
            return [], []

        xs, ys, classes = [ONE, VN], [ONE], []

        # opcode -> class (the same slots); (class, slot) -> (write, space, partner, cond);
        # (class, slot, term) -> (x source, y source, ps, last)
        op_cls, slot_tab, term_tab = {}, {}, {}
        NT = 1
        for op in Op:
            reads, writes = ranges_of(op)
            slots = [("w", *r) for r in writes] + [("r", *r) for r in reads]
            assert len(slots) <= self.SLOTS, op
            rows = []
            for i, (dr, sp, start, terms, cond) in enumerate(slots):
                part = [j for j, s in enumerate(slots) if s[0] == "w" and s[1] == sp]
                assert dr == "w" or part in ([], [0]), op
                part = dr == "r" and bool(part)
                assert not part or sp != "DRAM", op
                terms = [(start, ONE, 0), *terms]
                NT = max(NT, len(terms))
                rows.append((dr == "w", SPACES.index(sp), part, cond,
                             [(None if xv is PCX else _intern(xs, xv), _intern(ys, yv), ps,
                               ti == len(terms) - 1) for ti, (xv, yv, ps) in enumerate(terms)]))
            if rows:
                op_cls[int(op)] = ci = _intern(classes, rows) + 1  # class 0: no ranges
                for i, (wr, sp, part, cond, terms) in enumerate(rows):
                    slot_tab[(ci, i)] = (wr, sp, part, cond)
                    for ti, tv in enumerate(terms):
                        term_tab[(ci, i, ti)] = tv
        PSW = max(ps for _, _, ps, _ in term_tab.values()).bit_length()
        FW = max(f[2] for f in xs + ys if f[0] in ("field", "dec"))
        FW = max([FW, *(len(f[1]) for f in ys if f[0] == "value")])

        NS = self.SLOTS
        # the opcode's class, registered (valid from SLOT on: ``word`` is stable from
        # ``start``), so the opcode decode is not in front of the slot and term tables
        cls = Signal(range(len(classes) + 1))
        cls_now = Signal.like(cls)
        with m.Switch(opc):
            for op, ci in op_cls.items():
                with m.Case(op):
                    m.d.comb += cls_now.eq(ci)
        m.d.sync += cls.eq(cls_now)
        k = Signal(range(NS + 1))  # slot
        t = Signal(range(NT))  # term of the slot (0: its start)
        p = Signal(range(INSTR_BITS))  # bit pointer into the word
        cnt = Signal(range(FW))  # remaining bits of the phase, minus one
        borrow = Signal()  # of the serial decrement (rows - 1)
        x = Signal(W)
        x_over = Signal()  # x has been shifted past W bits
        acc = Signal(W)
        acc_over = Signal()
        # the read slot's start against slot 0: start < its end, start != its start
        st_lt = Signal()
        st_ne = Signal()
        pw_st = Signal(OW)  # slot 0 (a write), the partner of the reads of its space
        pw_en = Signal(OW)
        pw_cd = Signal()
        range_err = Signal()
        overlap = Signal()  # a written range partially overlaps a read range (BAD_OPERAND)
        hull = Signal(hull_layout(cfg))
        fields = fields_now  # invalid, absent, bad, mis (``word`` is stable until ``done``)

        # slot k of the class: its direction, space, partner flag and condition (live)
        s_wr = Signal()
        s_sp = Signal(range(len(SPACES)))
        s_part = Signal()
        s_live = Signal()
        conds = {None: Const(1), 0: d.space == 0, 1: d.space == 1, "acc": g.accumulate}
        with m.Switch(Cat(k[:2], cls)):
            for (ci, i), (wr, sp, part, cond) in slot_tab.items():
                with m.Case(i | ci << 2):
                    m.d.comb += [s_wr.eq(wr), s_sp.eq(sp), s_part.eq(part),
                                 s_live.eq(conds[cond])]
        # term t of slot k: its sources
        xsel = Signal(range(max(2, len(xs))))
        ysel = Signal(range(max(2, len(ys))))
        ps_sel = Signal(PSW)
        last = Signal()
        with m.Switch(Cat(t, k[:2], cls)):
            for (ci, i, tt), (xi, yi, pv, ls) in term_tab.items():
                with m.Case(tt | i << len(t) | ci << (len(t) + 2)):
                    xv = Mux(v.per_channel, 1, 0) if xi is None else xi  # VN or ONE
                    m.d.comb += [xsel.eq(xv), ysel.eq(yi), ps_sel.eq(pv), last.eq(ls)]
        # the x source: its msb and width (MSB first); the y source: its lsb and width
        x_msb, x_len, x_one = Signal.like(p), Signal.like(cnt), Signal()
        with m.Switch(xsel):
            for i, f in enumerate(xs):
                with m.Case(i):
                    if f[0] == "one":
                        m.d.comb += x_one.eq(1)
                    else:
                        m.d.comb += [x_msb.eq(f[1] + f[2] - 1), x_len.eq(f[2] - 1)]
        y_lsb, y_len, y_kind = Signal.like(p), Signal.like(cnt), Signal(2)  # one, field, dec, value
        y_val = Signal(FW)
        with m.Switch(ysel):
            for i, f in enumerate(ys):
                with m.Case(i):
                    if f[0] == "one":
                        m.d.comb += y_kind.eq(0)
                    elif f[0] == "value":
                        m.d.comb += [y_kind.eq(3), y_len.eq(len(f[1]) - 1), y_val.eq(f[1])]
                    else:
                        m.d.comb += [y_kind.eq(1 if f[0] == "field" else 2), y_lsb.eq(f[1]),
                                     y_len.eq(f[2] - 1)]
        # the bit multiplexer
        bits = sorted({b for f in xs + ys if f[0] in ("field", "dec")
                       for b in range(f[1], f[1] + f[2])})
        b = Signal()
        with m.Switch(p):
            for i in bits:
                with m.Case(i):
                    m.d.comb += b.eq(w[i])
        if any(f[0] == "value" for f in ys):
            with m.If(y_kind == 3):
                m.d.comb += b.eq(y_val.bit_select(p[: len(cnt)], 1))

        code, queue = self._code_queue(m, opc, fields, range_err, overlap)

        def on_start():
            with m.If(self.start):
                m.d.sync += [self.done.eq(0), k.eq(0), range_err.eq(0), overlap.eq(0),
                             hull.eq(0), pw_cd.eq(0)]
                m.next = "SLOT"

        # (the end ``acc`` is exact when ``acc_over`` is low; else ADDRESS_RANGE decides the
        # code and the hull and the overlap do not matter)
        # (the start is compared when it is known, in ``acc`` after term 0, the end in JUDGE)
        en = acc
        en_o = en[:OW]
        pov = (pw_st < en_o) & st_lt & (st_ne | (en_o != pw_en))
        over = Signal()
        with m.Switch(s_sp):
            for i, sp in enumerate(SPACES):
                with m.Case(i):
                    m.d.comb += over.eq(acc_over | gt_const(acc, sizes[sp]))

        def shift_x(bit):
            m.d.sync += [x.eq(Cat(bit, x[:-1])), x_over.eq(x_over | x[W - 1])]

        def to_y():
            m.d.sync += [p.eq(y_lsb), cnt.eq(y_len), borrow.eq(1)]
            m.next = "MUL"

        p_up = Signal()  # the pointer counts up (MUL) or down (LOADX): one adder
        p_step = (p + Cat(Const(1, 1), (~p_up).replicate(len(p) - 1)))[: len(p)]  # p +- 1

        with m.FSM(name="check"):
            with m.State("IDLE"):
                on_start()
            with m.State("SLOT"):
                with m.If(k == NS):
                    m.next = "FINAL"
                with m.Elif(s_live):
                    m.d.sync += [t.eq(0), acc.eq(0), acc_over.eq(0)]
                    m.next = "SETUP"
                with m.Else():
                    m.d.sync += k.eq(k + 1)
                on_start()
            with m.State("SETUP"):  # term t: x = 0, point at its x source's msb
                m.d.sync += [x.eq(0), x_over.eq(0), p.eq(x_msb), cnt.eq(x_len)]
                with m.If(t == 1):  # acc = the slot's start
                    m.d.sync += [st_lt.eq(en_o < pw_en), st_ne.eq(en_o != pw_st)]
                    with m.If(k == 0):
                        m.d.sync += pw_st.eq(en_o)
                    self._hull_update(m, hull, s_wr, s_sp, acc, None, hi=False)
                m.next = "LOADX"
                on_start()
            with m.State("LOADX"):  # x, MSB first
                shift_x(x_one | b)
                m.d.sync += [p.eq(p_step), cnt.eq(cnt - 1)]
                with m.If(x_one | (cnt == 0)):
                    with m.If(ps_sel != 0):
                        m.d.sync += cnt.eq(ps_sel - 1)
                        m.next = "SCALE"
                    with m.Else():
                        to_y()
                on_start()
            with m.State("SCALE"):  # x <<= ps
                shift_x(0)
                m.d.sync += cnt.eq(cnt - 1)
                with m.If(cnt == 0):
                    to_y()
                on_start()
            with m.State("MUL"):  # y, LSB first: acc += x for each one bit, x <<= 1
                yb = Signal()
                with m.Switch(y_kind):
                    with m.Case(0):
                        m.d.comb += yb.eq(1)
                    with m.Case(2):
                        m.d.comb += yb.eq(b ^ borrow)
                    with m.Default():
                        m.d.comb += yb.eq(b)
                m.d.sync += borrow.eq(borrow & ~b)
                with m.If(yb):
                    total = acc + x
                    m.d.sync += [acc.eq(total[:W]), acc_over.eq(acc_over | x_over | total[W])]
                shift_x(0)
                m.d.comb += p_up.eq(1)
                m.d.sync += [p.eq(p_step), cnt.eq(cnt - 1)]
                with m.If((y_kind == 0) | (cnt == 0)):
                    m.d.sync += t.eq(t + 1)
                    with m.If(last):
                        m.next = "JUDGE"
                    with m.Else():
                        m.next = "SETUP"
                on_start()
            with m.State("JUDGE"):
                with m.If(over):
                    m.d.sync += range_err.eq(1)
                with m.If(s_part & pw_cd & pov):
                    m.d.sync += overlap.eq(1)
                with m.If(k == 0):
                    m.d.sync += [pw_en.eq(en_o), pw_cd.eq(1)]
                self._hull_update(m, hull, s_wr, s_sp, None, en, lo=False)
                m.d.sync += k.eq(k + 1)
                m.next = "SLOT"
                on_start()
            self._final_state(m, code, queue, is_op(*SERIAL_OPS), hull, on_start)


class Controller(wiring.Component):
    """Instruction fetch, checks, queues with dependency tracking, watchdog, status.

    See the module docstring for the pipeline and the hazard rules.

    Cycle contract: an instruction that goes to a queue takes ``fetch latency + 3`` cycles
    plus the checker's (:class:`InstrChecker`) in the front end (fetch, DECODE, CHECK,
    DISPATCH); the front end checks the next instruction while the queues execute earlier
    ones, and dispatch stalls while the target
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
        dev = cfg.dev_mem_bytes
        AW = dev.bit_length()  # a fetched instruction's pc + 16 <= dev fits AW bits

        pc = Signal(32)
        ir = Signal(INSTR_BITS)
        m.d.comb += chk.word.eq(ir)
        err_code = Signal(4)  # an ErrorCode
        err_pc = Signal(32)
        err_pend = Signal()  # a fault is latched; stop dispatching
        unit_err = Signal()  # ... and it is a unit's (an executed instruction's)
        wd = Signal(32)

        # ------------------------------------------------------------------ fetch port
        ar_valid = Signal()
        f_out = Signal()  # a fetch burst is outstanding
        beat = Signal(range(beats + 1))
        f_err = Signal()
        f_done = Signal()
        m.d.comb += [
            axi.arid.eq(1),
            # a fetch is issued only for a pc below ``dev`` (FETCH's checks): its high bits are 0
            axi.araddr.eq(pc[:AW]),
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
        cmds = (self.load_cmd, self.store_cmd, self.comp_cmd)
        dones = (self.load_done, self.store_done, self.comp_done)
        errs = (self.load_err, self.store_err, self.comp_err)
        aborting = Signal()
        enq = Signal()
        all_empty = Signal()
        queue_full = Signal()
        # a unit finishes an instruction with a fault (per queue) and that instruction's pc
        ufault = [Signal(name=f"ufault{q}") for q in range(len(QUEUES))]
        if D:
            clear_queues, comp_empty, upc = self._queues(
                m, chk, ir, pc, cmds, dones, errs, aborting, enq, all_empty, queue_full,
                ufault)
            wait_prev = Const(0)
        else:
            # No queues: one instruction executes at a time (``x_busy``, in queue ``x_q``,
            # from ``x_pc``); the front end fetches and checks the next one meanwhile and
            # hands it over once that one is done. The units take their fields from the
            # command when they accept it, so ``ir`` is free after the handover.
            x_busy = Signal()
            x_q = Signal(2)
            x_pc = Signal(AW - 4)  # its bits 4 .. AW-1 (the others are 0: see ``pc_next``)
            wait_prev = x_busy
            m.d.comb += all_empty.eq(~x_busy)
            for c in cmds:
                m.d.comb += c.payload.eq(ir)

            def clear_queues():
                m.d.sync += x_busy.eq(0)

        # ------------------------------------------------------------------ main FSM
        opc = ir[:8]
        is_halt, is_fence, is_jump = Signal(), Signal(), Signal()
        target = data.View(instr_layout(Op.JUMP), ir).target
        pc_mis = pc[:4] != 0
        pc_range = gt_const(pc, dev - INSTR_BYTES)
        # The pc of a fetched instruction passed both checks: it is a multiple of 16 below
        # ``dev``, so only its bits 4 .. AW-1 can be non-zero and ``pc + 16 <= dev`` fits AW bits.
        pc_next = Cat(Const(0, 4), (pc[4:AW] + 1)[: AW - 4])
        wd_hit = Signal()  # registered (timing: it gates ``enq``): one cycle after the compare
        # the limit is registered next to the compare (timing: on the ECP5-85F the CSR's
        # memory read -> the 32-bit compare -> ``wd_hit`` was a failing path); a WATCHDOG
        # write reaches the compare a cycle later
        wd_lim = Signal(32)
        m.d.sync += [wd_lim.eq(self.watchdog), wd_hit.eq(wd >= wd_lim)]
        # what the abort ends in: back to IDLE (RESET), WATCHDOG at ``pc``, or the fault that
        # was pending when the watchdog hit (``err_code``, ``err_pc``). ``pc`` and the error
        # registers keep their values from the cycle the abort starts (see ``guard_fire``).
        abort_kind = Signal(2)
        AB_IDLE, AB_WATCHDOG, AB_KEEP = 0, 1, 2
        status_busy = Signal()
        status_done = Signal()
        status_err = Signal()

        def fault(code, at=pc):
            m.d.sync += [err_pend.eq(1), err_code.eq(code), err_pc.eq(at)]

        def run_guard():
            """In every running state: CTRL.RESET and the watchdog abort (they win over
            whatever the state decided, being the last assignments to ``m.next``)."""
            with m.If(self.reset):
                m.d.sync += abort_kind.eq(AB_IDLE)
                m.next = "ABORT"
            with m.Elif(wd_hit):
                # keep the first fault, just stop waiting; else WATCHDOG
                m.d.sync += abort_kind.eq(Mux(err_pend, AB_KEEP, AB_WATCHDOG))
                m.next = "ABORT"

        def begin():
            m.d.sync += [pc.eq(self.prog_base), wd.eq(0), wd_hit.eq(0), err_pend.eq(0),
                         unit_err.eq(0),
                         err_code.eq(0), err_pc.eq(0)]
            m.next = "FETCH"

        # (queues) DISPATCH enqueues: the checked word is neither faulty nor one of the
        # controller's own opcodes (``to_queue``, registered in CHECK from the checker's
        # registered outputs), nothing waits or faults, its queue has room; one flat AND of
        # registers (timing: on the ECP5-85F the checker's code -> DISPATCH's priority chain
        # -> ``enq`` -> the queue slots failed)
        to_queue = Signal()
        fsm_dispatch = Signal()
        if D:
            m.d.comb += enq.eq(fsm_dispatch & to_queue & ~err_pend & ~queue_full & ~self.reset
                               & ~wd_hit)
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
            with m.State("DECODE"):  # ir holds the fetched word: check it
                m.d.comb += chk.start.eq(1)
                m.next = "CHECK"
                run_guard()
            with m.State("CHECK"):
                # the controller's own opcodes, decoded while the checker runs (``ir`` is
                # stable) and registered for DISPATCH: no opcode decode in front of its pc
                m.d.sync += [is_halt.eq(opc == Op.HALT), is_fence.eq(opc == Op.FENCE),
                             is_jump.eq(opc == Op.JUMP)]
                if D:  # (as DISPATCH's decisions before the enqueue read them)
                    m.d.sync += to_queue.eq((chk.code == 0) & (opc != Op.HALT)
                                            & (opc != Op.FENCE) & (opc != Op.JUMP)
                                            & (chk.queue != 3))
                with m.If(chk.done):
                    m.next = "DISPATCH"
                run_guard()
            with m.State("DISPATCH"):
                with m.If(wait_prev):
                    pass  # no queues: the previous instruction is still executing
                with m.Elif(err_pend):
                    m.next = "DRAIN"
                with m.Elif(chk.code != 0):
                    fault(chk.code)
                    m.next = "DRAIN"
                with m.Elif(is_halt), m.If(all_empty):
                    m.d.comb += self.retire.eq(1)
                    m.next = "DONE"
                with m.Elif(is_fence), m.If(all_empty):
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(pc_next)
                    m.next = "FETCH"
                with m.Elif(is_jump):
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(target)
                    m.next = "FETCH"
                with m.Elif(chk.queue == 3):  # NOP
                    m.d.comb += self.retire.eq(1)
                    m.d.sync += pc.eq(pc_next)
                    m.next = "FETCH"
                with m.Elif(~queue_full):
                    if D:
                        m.d.comb += self.retire.eq(1)
                        with m.If(chk.serial):
                            m.next = "SERIAL"
                        with m.Else():
                            m.d.sync += pc.eq(pc_next)
                            m.next = "FETCH"
                    else:
                        go = Signal()
                        with m.Switch(chk.queue):
                            for q in range(len(QUEUES)):
                                with m.Case(q):
                                    m.d.comb += [cmds[q].valid.eq(~self.reset & ~wd_hit),
                                                 go.eq(cmds[q].valid & cmds[q].ready)]
                        with m.If(go):
                            m.d.comb += self.retire.eq(1)
                            m.d.sync += [x_busy.eq(1), x_q.eq(chk.queue), x_pc.eq(pc[4:AW]),
                                         pc.eq(pc_next)]
                            m.next = "FETCH"
                run_guard()
            if D:
                with m.State("SERIAL"):
                    with m.If(comp_empty):
                        with m.If(err_pend):
                            m.next = "DRAIN"
                        with m.Else():
                            m.d.sync += pc.eq(pc_next)
                            m.next = "FETCH"
                    run_guard()
            with m.State("DRAIN"):
                with m.If(all_empty & ~f_out & ~ar_valid):
                    m.next = "ERROR"
                run_guard()
            with m.State("ABORT"):
                m.d.comb += aborting.eq(1)
                with m.If(self.reset):
                    m.d.sync += abort_kind.eq(AB_IDLE)
                with m.If(self.load_idle & self.store_idle & ~f_out & ~ar_valid):
                    clear_queues()
                    m.d.sync += unit_err.eq(0)
                    with m.If(self.reset | (abort_kind == AB_IDLE)):
                        m.d.sync += [err_pend.eq(0), err_code.eq(0), err_pc.eq(0)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += err_pend.eq(1)
                        with m.If(abort_kind == AB_WATCHDOG):
                            m.d.sync += [err_code.eq(ErrorCode.WATCHDOG), err_pc.eq(pc)]
                        m.next = "ERROR"

        m.d.comb += fsm_dispatch.eq(fsm.ongoing("DISPATCH"))
        is_running = Signal()
        m.d.comb += is_running.eq(
            Cat(fsm.ongoing(st) for st in
                ("FETCH", "FETCH_WAIT", "DECODE", "CHECK", "DISPATCH", "DRAIN",
                 *(("SERIAL",) if D else ()))).any()
        )
        if not D:
            x_done = Signal()
            with m.Switch(x_q):
                for q in range(len(QUEUES)):
                    with m.Case(q):
                        m.d.comb += [x_done.eq(dones[q]), ufault[q].eq(x_busy & dones[q] &
                                                                        errs[q])]
            with m.If(x_busy & x_done & ~aborting):
                m.d.sync += x_busy.eq(0)
            upc = [Cat(Const(0, 4), x_pc)] * len(QUEUES)
        # Unit faults, after the FSM's assignments so that they win: an instruction a unit
        # ran is older than the one the front end is fetching or checking, so its fault
        # replaces a fault the front end latched meanwhile (sequential semantics); the first
        # unit fault stays. (Aborting: the abort's own outcome decides.)
        with m.If(~unit_err & ~aborting):
            for q in range(len(QUEUES)):
                with (m.If if q == 0 else m.Elif)(ufault[q]):
                    m.d.sync += [err_pend.eq(1), unit_err.eq(1), err_pc.eq(upc[q]),
                                 err_code.eq(ErrorCode.BUS_ERROR if q < 2 else self.comp_code)]
        with m.If(is_running):
            m.d.sync += wd.eq(wd + 1)
        # The cycle an abort starts (run_guard): ``pc`` and the error registers keep their
        # values (whatever the state or a unit fault would write), as the abort reports them.
        with m.If(is_running & (self.reset | wd_hit)):
            m.d.sync += [pc.eq(pc), err_code.eq(err_code), err_pc.eq(err_pc)]

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

    def _queues(self, m, chk, ir, pc, cmds, dones, errs, aborting, enq, all_empty,
                queue_full, ufault):
        """The three queues of ``depth`` slots with their hazard tracking (see the module
        docstring). Sets ``ufault[q]`` when queue ``q``'s head finishes with a fault; returns
        a function that empties the queues (abort), the compute queue's emptiness and the
        head slots' pcs."""
        cfg = self.cfg
        D = self.depth
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
        completing = Signal(Q * D)  # slot finishes this cycle
        for q in range(Q):
            for i in range(D):
                m.d.comb += completing[q * D + i].eq(dones[q] & (head[q] == i) & s_valid[q][i])

        def nxt(p):
            return Mux(p == D - 1, 0, p + 1)

        q_empty = [Signal(name=f"q{q}_empty") for q in range(Q)]
        upc = []
        q_full = []
        for q in range(Q):
            m.d.comb += q_empty[q].eq(~Cat(s_valid[q]).any())
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
            # The head is offered from registers, a cycle after it qualifies (timing: no path
            # head -> slot multiplexers -> the unit's handshake -> the slot's issued bit, and
            # the unit loads the instruction from a register): ``offer`` is the qualification of
            # the last cycle, less a head that was taken or finished in it (the next head is
            # offered a cycle later); the head's word stays in its slot while it is the head.
            offer = Signal(name=f"q{q}_offer")
            oword = Signal(INSTR_BITS, name=f"q{q}_oword")
            m.d.sync += [
                offer.eq(hv & ~hiss & (hdeps == 0) & ~(c.valid & c.ready) & ~(dones[q] & hv)
                         & ~aborting),
                oword.eq(hword),
            ]
            m.d.comb += [
                c.valid.eq(offer & ~aborting),
                c.payload.eq(oword),
            ]
            for i in range(D):
                with m.If(c.valid & c.ready & (head[q] == i)):
                    m.d.sync += s_issued[q][i].eq(1)
            with m.If(dones[q] & hv):
                for i in range(D):
                    with m.If(head[q] == i):
                        m.d.sync += [s_valid[q][i].eq(0), s_issued[q][i].eq(0)]
                m.d.sync += head[q].eq(nxt(head[q]))
            m.d.comb += ufault[q].eq(dones[q] & hv & errs[q])
            upc.append(hpc)
        m.d.comb += all_empty.eq(Cat(*q_empty).all())

        # dependencies of the instruction in the checker against every occupied slot. The
        # hull compares are registered (timing: the checker's hull register -> the range
        # compares -> the slots' dependency bits was one cycle across the die): DISPATCH
        # enqueues at the earliest in the cycle after the checker's ``done``, whose hull was
        # registered with ``done``, and an occupied slot's hull does not change (a slot is
        # filled only by an enqueue, after which the next DISPATCH is cycles away)
        new_deps = Signal(Q * D)
        conf = Signal(Q * D)
        for q in range(Q):
            for i in range(D):
                m.d.sync += conf[q * D + i].eq(hulls_conflict(chk.hull, s_hull[q][i]))
                m.d.comb += new_deps[q * D + i].eq(
                    s_valid[q][i] & ~completing[q * D + i] & conf[q * D + i]
                )
        # clear the bits of completing slots
        for q in range(Q):
            for i in range(D):
                m.d.sync += s_deps[q][i].eq(s_deps[q][i] & ~completing)

        enq_q = chk.queue
        for q in range(Q):
            # A free slot at the tail takes the checked instruction's pc, word and hull in
            # every cycle: only its valid, issued and dependency bits wait for ``enq`` (timing:
            # ``enq`` does not fan out to the slots' wide registers).
            for i in range(D):
                with m.If(~s_valid[q][i] & (tail[q] == i)):
                    m.d.sync += [
                        s_pc[q][i].eq(pc),
                        s_word[q][i].eq(ir),
                        s_hull[q][i].eq(chk.hull),
                    ]
            with m.If(enq & (enq_q == q)):
                other = Cat(
                    Const(0, D) if q2 == q else new_deps[q2 * D : (q2 + 1) * D] for q2 in range(Q)
                )
                for i in range(D):
                    with m.If(tail[q] == i):
                        m.d.sync += [
                            s_valid[q][i].eq(1),
                            s_issued[q][i].eq(0),
                            s_deps[q][i].eq(other & ~completing),
                        ]
                m.d.sync += tail[q].eq(nxt(tail[q]))
        # registered (timing: the checker's queue -> the full flags -> DISPATCH's decision ->
        # retire and the state was a path across the die): a cycle stale, which only delays
        # a dispatch by a cycle after a slot frees (slots fill only by an enqueue, and the next
        # DISPATCH is cycles after one; the first DISPATCH cycle comes after the checker's
        # ``done``, whose ``queue`` was registered with it)
        with m.Switch(enq_q):
            for q in range(Q):
                with m.Case(q):
                    m.d.sync += queue_full.eq(q_full[q])

        def clear():
            for q in range(Q):
                m.d.sync += [head[q].eq(0), tail[q].eq(0)]
                for i in range(D):
                    m.d.sync += [s_valid[q][i].eq(0), s_issued[q][i].eq(0)]

        return clear, q_empty[2], upc
