"""A small vector unit for the smallest FPGAs: one element at a time.

:class:`SerialVectorUnit` executes the eleven ``V*`` instructions like
:class:`tritium.rtl.vector.VectorUnit` (same ports, same port contract, same results) but is built
for area: no pipeline, no read FIFOs, no table memory, and the 32x32 multiply done in four cycles
on one 16x16 multiplier. ``AcceleratorConfig.vector_serial`` selects it (the ``tiny`` preset).
"""

from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, signed

from tritium import isa

from .vector import (
    _ACC,
    _SPAD,
    VECTOR_OPS,
    VectorUnitBase,
    _Ctx,
    _rshift_sat,
)

__all__ = ["SerialVectorUnit"]

Op = isa.Op

# Main states. A pass state issues the reads of its elements and collects their responses.
(_IDLE, _START, _RE_SQRT2, _PARAM, _ROW, _SCALE, _RED1, _RED2, _RE_SQRT, _RE_DIV, _MAIN, _NEXT,
 _FINISH) = range(13)
_PASSES = (_PARAM, _SCALE, _RED1, _RED2, _MAIN)
# Element execution states.
_E_IDLE, _E_MUL, _E_OUT = range(3)

# Operand reads of a main-pass element, in order: (space, base, index); index i = row * n + col,
# c = col, t = the table entry of the element read first (VACT byte, VSOFTMAX two bytes).
_MAIN_READS: dict[Op, tuple[tuple[int, str, str], ...]] = {
    Op.VREQ: ((_ACC, "src", "i"),),  # per-channel: + (ACC, param, c), (ACC, param, n + c)
    Op.VADD: ((_SPAD, "src", "i"), (_SPAD, "src2", "i")),
    Op.VADD32: ((_ACC, "src", "i"), (_ACC, "src2", "i")),
    Op.VMUL: ((_SPAD, "src", "i"), (_SPAD, "src2", "i")),
    Op.VSCALE: ((_ACC, "src", "i"),),
    Op.VACT: ((_SPAD, "src", "i"), (_SPAD, "src2", "t")),
    Op.VRMS: ((_SPAD, "src", "i"), (_SPAD, "src2", "c")),
    Op.VQUANT: ((_SPAD, "src", "i"),),
    Op.VGATE: ((_SPAD, "src", "i"), (_SPAD, "src2", "i"), (_SPAD, "dst", "i")),
    Op.VSOFTMAX: ((_SPAD, "src", "i"), (_SPAD, "src2", "t"), (_SPAD, "src2", "t")),
    Op.VARGMAX: (),
}
# per-channel VREQ: rptr = param + 4 n, the shift words
_VREQ_PC_READS = ((_ACC, "src", "i"), (_ACC, "param", "c"), (_ACC, "rptr", "c"))
_BASES = ("src", "src2", "dst", "param", "rptr")
_INDEXES = ("i", "c", "t", "k", "n")


class _SerialMath(Elaboratable):
    """Sequential ``root = isqrt(x << 16)`` (48 cycles) and ``q = num // den`` (32 cycles) on
    one subtractor and one remainder, like :class:`tritium.rtl.vector._SeqMath`, but bringing
    down one bit a cycle for both (the root's trial subtraction every second cycle), and for
    the two numerators :class:`SerialVectorUnit` divides, which are not loaded: their bits are
    brought down as the division runs, ``127 << 24`` from the cycle count and (with
    ``num_root``) ``root << 15`` from ``root`` itself, which shifts out (``root < 2**16``
    then: the root of ``n << 16``). ``x`` is sampled on ``start_sqrt``; ``den`` is not
    registered (the caller keeps it steady through the division); ``busy`` is high from the
    next cycle until the result is ready.
    """

    def __init__(self, dw: int = 32):
        self.dw = dw  # divisor width (<= 32)
        self.x = Signal(32)
        self.den = Signal(dw)
        self.num_root = Signal()
        self.start_sqrt = Signal()
        self.start_div = Signal()
        self.busy = Signal()
        self.root = Signal(24)
        self.q = Signal(32)  # the radicand shifts out as quotient bits shift in

    def elaborate(self, platform):
        m = Module()
        dw = max(self.dw, 26)  # the root's trial 4 root + 1 < 2**26
        rem = Signal(dw + 1)
        sqrt = Signal()
        cnt = Signal(range(49))
        bring = Signal()  # the next bit of the radicand / numerator (bit cnt - 1)
        rem2 = Signal(dw + 2)
        sub = Signal(dw + 1)
        diff = Signal(dw + 3)
        trial = Signal()
        m.d.comb += [
            bring.eq(Mux(sqrt, self.q[-1],
                         Mux(self.num_root, self.root[16], (cnt >= 25) & (cnt != 32)))),
            rem2.eq(Cat(bring, rem)),
            sub.eq(Mux(sqrt, Cat(Const(1, 2), self.root), self.den)),
            diff.eq(rem2 - sub),
            trial.eq(~sqrt | cnt[0]),
        ]
        ge = ~diff[-1]
        with m.If(self.start_sqrt):
            m.d.sync += [self.q.eq(self.x), self.root.eq(0), sqrt.eq(1), cnt.eq(48)]
        with m.Elif(self.start_div):
            m.d.sync += [sqrt.eq(0), cnt.eq(32)]
        with m.Elif(self.busy):
            m.d.sync += [
                cnt.eq(cnt - 1),
                rem.eq(Mux(ge & trial, diff, rem2)),
                self.q.eq(Cat(ge & ~sqrt, self.q)),
            ]
            with m.If(trial):
                m.d.sync += self.root.eq(Cat(ge & sqrt, self.root))
            with m.If(cnt == 1):
                m.d.sync += self.busy.eq(0)
        with m.If(self.start_sqrt | self.start_div):
            m.d.sync += [rem.eq(0), self.busy.eq(1)]
        return m


class SerialVectorUnit(VectorUnitBase):
    """Vector unit for area: ``VREQ`` .. ``VARGMAX`` one element at a time, bit-exact with
    ``tritium.golden`` like :class:`tritium.rtl.vector.VectorUnit`.

    Parameters, members, the port contract (one element per beat, ``sp_rdata.ready`` and
    ``ac_rdata.ready`` constantly high, at most ``depth`` reads outstanding, reads of SPAD and
    ACC never outstanding together, no ``valid`` depending combinationally on a ``ready``, ``busy``
    / ``done`` / ``stall``) and the in-place restrictions are those of :class:`VectorUnit`; in
    addition the VACT and VSOFTMAX tables are read from the SPAD element by element, so an
    instruction must not write over its own table.

    Cycle-level contract. An instruction walks an optional prologue (VREQ per-tensor / VMUL /
    VRMS: the two (M0, shift) words), then for each row its passes of ``n`` elements: VSCALE
    reads the row's scale first; VRMS, VQUANT, VSOFTMAX and VARGMAX a reduction pass (VSOFTMAX
    two: max, then exp sum), after which the row's reciprocal is computed with the sequential
    isqrt / divider ``_SerialMath`` (VRMS: ``isqrt(ss << 16)``, ``isqrt(n << 16)``, 48
    cycles each, and the 32-cycle division; VQUANT, VSOFTMAX: the division) and the row-end word
    (VQUANT ``m``, VARGMAX index) is written; then the output pass. Reduction passes read one
    element per cycle (up to ``depth`` outstanding) and fold each response into the row's sum
    or max as it arrives. Output passes fetch one element at a time (its ``K`` operands back to
    back; a VACT / VSOFTMAX table entry after the element's value has arrived) into operand
    registers, from which the executor multiplies it (the next element's reads start once it
    has been taken: their answers land after its last multiply cycle); the executor
    multiplies ``X * Y`` (``X``: the operand, the 9x9 product or the sum of two operands,
    registered; ``Y``: M0, the row scale or reciprocal, or 1) as four 16x16 partial products on
    one multiplier, summed in a shifting accumulator (VRMS multiplies twice: by ``r``, then the
    product's low word, straight from the product registers, by M0), puts the shifted result
    into a write register in the next cycle and goes on; the write (the output stage of
    :class:`VectorUnit` with ``p >> (ts - 1)`` saturated to 10 bits, rounded and clamped in
    front of the write data) is presented only while no read is, and no read is issued while
    a presented write waits. Registers sit on every memory boundary: a read is issued into a
    request register (base and scaled index, added behind it), its answer is registered
    before use, and ``stall`` reports the cycle before. Every pass
    starts when the previous one has finished (no read outstanding, every element written).
    Nothing depends on data. With every ``ready`` high and a memory answering each read in the
    cycle after its request, an instruction takes, from the cycle its ``cmd`` transfers to its
    ``done`` pulse (:meth:`cycles`):

    ============ ================================ =============================================
    op           reads per element                cycles
    ============ ================================ =============================================
    VREQ         1 (per-channel: 3)               ``rows * (5 n + 9) + 8``
                                                  (per-channel ``rows * (12 n + 4) + 2``)
    VADD         2                                ``rows * (6 n + 9) + 2``
    VADD32       2                                ``rows * (6 n + 9) + 2``
    VMUL         2                                ``rows * (6 n + 9) + 8``
    VSCALE       1, + 1 scale per row             ``rows * (5 n + 14) + 2``
    VACT         2 (value, table byte)            ``rows * (9 n + 9) + 2``
    VRMS         1 (sum of squares), then 2       ``rows * (10 n + 146) + 8``
    VQUANT       1 (absmax), then 1               ``rows * (6 n + 46) + 2``
    VGATE        3                                ``rows * (7 n + 9) + 2``
    VSOFTMAX     1 (max), 3 (exp sum), then 3     ``rows * (23 n + 51) + 2``
    VARGMAX      1                                ``rows * (n + 12) + 2``
    ============ ================================ =============================================

    (:meth:`cycles` is the reference; the table is its summary.) Memory stalls and longer read
    latency add to these. In the ``tiny`` SoC the mmfree model's decode step took 220,444
    cycles with this unit behind the adapters' request FIFOs (reads answering two cycles after
    the request), 165,301 with :class:`VectorUnit` (1.33x; the vector instructions are a
    minority of its cycles); connected directly (reads answer in the next cycle) and with the
    stop-15 DMA, 218,739; with the 48-cycle isqrt (VRMS rows 48 cycles longer), 219,699. Executing
    straight from the operand registers (no X register) took it from about 229,700 to 234,169
    in the SoC of that time (``tritium generate --model mmfree --device sim -n 26``).

    Multipliers: one 16x16 (17x17 signed) multiplier for the 32x32 products and one 9x9 signed
    (``x*x``, ``x*g``, ``a*b``, VGATE ``f * (h - c)``): 2 SB_MAC16 on iCE40.

    Size (yosys ``stat``, ``tritium build --unit vector`` with ``vector_serial``): tiny / iCE40
    1,467 LUT4, 455 FF, 296 SB_CARRY, 2 SB_MAC16, no block RAM (VectorUnit: 2,220 LUT4,
    1,413 FF, 402 SB_CARRY, 5 SB_MAC16, 1 EBR). The largest parts: the isqrt / divider (about
    150 LUT4), the 64-bit rounding shift with its saturation (about 130), address generation
    (about 110), the multiplier's accumulator and operand muxes.
    """

    #: The unit never presents a read and a write in the same cycle (a read waits while a
    #: write is pending), so its read and write ports need no clash hold-back in the memory.
    READS_APART = True

    @staticmethod
    def cycles(instr: isa.Instr) -> int:
        """Cycles from the ``cmd`` transfer to the ``done`` pulse of ``instr`` with no stalls
        and one-cycle read latency (the table in the class docstring)."""
        op, rows, n = instr.op, instr.rows, instr.n
        if op not in VECTOR_OPS or rows == 0 or n == 0:
            return 2
        return {
            Op.VREQ: rows * (12 * n + 4) + 2 if instr.per_channel else rows * (5 * n + 9) + 8,
            Op.VADD: rows * (6 * n + 9) + 2,
            Op.VADD32: rows * (6 * n + 9) + 2,
            Op.VMUL: rows * (6 * n + 9) + 8,
            Op.VSCALE: rows * (5 * n + 14) + 2,
            Op.VACT: rows * (9 * n + 9) + 2,
            Op.VRMS: rows * (10 * n + 146) + 8,
            Op.VQUANT: rows * (6 * n + 46) + 2,
            Op.VGATE: rows * (7 * n + 9) + 2,
            Op.VSOFTMAX: rows * (23 * n + 51) + 2,
            Op.VARGMAX: rows * (n + 12) + 2,
        }[op]

    def elaborate(self, platform):
        m = Module()
        aw = max(self.spad_aw, self.acc_aw)
        depth = self.depth
        ctx = _Ctx(aw)
        is_ = ctx.is_

        state = Signal(range(13))
        accept, known = ctx.command(m, self.cmd, self.busy, self.held)
        pc = Signal()  # per-channel VREQ
        m.d.comb += pc.eq(ctx.pc & is_[Op.VREQ])

        # ---------------------------------------------------------------- registers
        preg = Signal(signed(32))  # Y: M0, the row scale (VSCALE) or 1
        # rounding shift ts - 1 (ts: 31 - shift, 24 for VQUANT, VSOFTMAX, 7 for VGATE; 0 for the
        # ops without rounding)
        ts_reg = Signal(6)
        # VRMS sum of squares (then the row's isqrt(ss << 16)), VSOFTMAX exp sum, VARGMAX index
        # of the max
        rsum = Signal(min(32, self.spad_aw + 16))  # n <= spad bytes: sums < 2**(spad_aw + 16)
        m.submodules.seq = seq = _SerialMath(len(rsum))  # den: root, m or sum, steady
        rmax = Signal(signed(9))  # VQUANT max |x|, VSOFTMAX / VARGMAX max x
        slot0 = Signal(signed(33))  # operands of the element being fetched (VADD: a + b)
        slot1 = Signal(8)
        slot2 = Signal(8)
        wptr = Signal(aw)  # next output element
        # next ACC row-end word (VQUANT, VARGMAX), row scale (VSCALE) or shift word (per-channel
        # VREQ)
        rptr = Signal(self.acc_aw)
        rowbase = Signal(aw)
        ri = Signal(aw)  # rowbase + c, kept (no adder in front of the address adder)
        c = Signal(self.spad_aw + 1)  # elements of the pass whose reads have all been issued
        k = Signal(2)  # next read's operand
        kc = Signal(2)  # next response's operand
        outst = Signal(range(depth + 1))
        elem_ready = Signal()  # an output element's operands are complete
        rvalid = Signal()  # a read's answer, registered (collector)
        wv = Signal()  # the write register holds a result (executor)
        rdata = Signal(signed(32))
        red_d = Signal()  # a reduction element's sum update is due (one cycle after its data)
        out_acc = Signal()  # output elements go to ACC
        m.d.comb += out_acc.eq(is_[Op.VADD32] | is_[Op.VSCALE])

        # ---------------------------------------------------------------- pass walker
        in_pass = Signal()
        m.d.comb += in_pass.eq(Cat(*(state == s for s in _PASSES)).any())
        space = Signal()
        big_k = Signal(2)  # reads per element - 1
        base_sel = Signal(range(len(_BASES)))
        idx_sel = Signal(range(len(_INDEXES)))
        dep = Signal()  # this read's address depends on a response (table entry)

        def reads(rd):
            for j, (sp, b, ix) in enumerate(rd):
                with m.If(k == j):
                    m.d.comb += [space.eq(sp), base_sel.eq(_BASES.index(b)),
                                 idx_sel.eq(_INDEXES.index(ix)), dep.eq(ix == "t")]
            m.d.comb += big_k.eq(max(len(rd) - 1, 0))

        with m.Switch(state):
            with m.Case(_START):  # no read: base + offset gives rptr its start (k == 0)
                m.d.comb += [
                    space.eq(_ACC),
                    base_sel.eq(Mux(is_[Op.VQUANT] | pc, _BASES.index("param"),
                                    Mux(is_[Op.VSCALE], _BASES.index("src2"),
                                        _BASES.index("dst")))),
                    idx_sel.eq(Mux(pc, _INDEXES.index("n"), _INDEXES.index("k"))),
                ]
            with m.Case(_PARAM):
                reads(((_ACC, "param", "k"), (_ACC, "param", "k")))
            with m.Case(_SCALE):
                reads(((_ACC, "rptr", "c"),))
            with m.Case(_RED1):
                reads(((_SPAD, "src", "i"),))
            with m.Case(_RED2):
                reads(_MAIN_READS[Op.VSOFTMAX])
            with m.Case(_MAIN):
                for op, rd in _MAIN_READS.items():
                    with m.If(is_[op]):
                        if op == Op.VREQ:
                            with m.If(pc):
                                reads(_VREQ_PC_READS)
                            with m.Else():
                                reads(rd)
                        else:
                            reads(rd)

        # elements of the pass whose reads are still to issue (a down counter: no compare of
        # ``c`` with the command's ``n`` in front of the issue and pass-end logic)
        left = Signal(self.spad_aw + 1)
        last_elem = Signal()
        m.d.comb += last_elem.eq(left == 0)
        # table index: VACT x + 128, VSOFTMAX 2 * clamp(x - max + 128, 0, 255) + byte
        x8 = slot0[:8].as_signed()
        d_sm = Signal(signed(10))
        # x - max + 128 as (x + 128) - max: one subtractor (VACT: rmax = 0, x + 128)
        m.d.comb += d_sm.eq((slot0[:8] ^ 0x80) - rmax[:8].as_signed())
        tidx = Signal(9)
        d8 = Mux(d_sm < 0, 0, d_sm[:8])
        m.d.comb += tidx.eq(Mux(is_[Op.VACT], d8, Cat(k[1], d8)))
        base = Signal(aw)
        idx = Signal(aw)
        bases = {**ctx.base, "rptr": rptr}
        with m.Switch(base_sel):
            for j, b in enumerate(_BASES):
                with m.Case(j):
                    m.d.comb += base.eq(bases[b])
        with m.Switch(idx_sel):
            for j, (ix, v) in enumerate(zip(_INDEXES, (ri, c, tidx, k, ctx.n))):
                assert _INDEXES[j] == ix
                with m.Case(j):
                    m.d.comb += idx.eq(v)
        # the selected base and (scaled) index are registered with the request and added
        # behind the register (rq_base + rq_off): no adder between the selection and it
        off = Signal(aw)
        m.d.comb += off.eq(Mux(space == _ACC, idx << 2, idx))

        e_state = Signal(range(3))
        mstep = Signal(2)
        inject = Signal()  # a row-end word enters the executor
        e_idle = Signal()
        m.d.comb += e_idle.eq(e_state == _E_IDLE)
        take = Signal()  # the executor takes the fetched element this cycle
        # A new output element is fetched only when the previous one's operands have all
        # arrived (nothing outstanding, no answer in the register) and been taken (per-channel
        # VREQ: and executed, its M0 and shift land in preg / ts_reg). Its answers land after
        # the taken element's last multiply cycle, so the executor's state does not matter.
        first_ok = Signal()
        m.d.comb += first_ok.eq(
            (k != 0) | (state != _MAIN)
            | ((outst == 0) & ~rvalid & ~elem_ready & (~pc | e_idle))
        )
        can_issue = Signal()
        rq_v = Signal()
        # A read is issued into a request register (rq), which presents it to the memory: no
        # logic between the address adders and the memory. A result waiting to be written is
        # presented only while no read is, and once presented no read is issued until it has
        # been taken: the unit never reads and writes in one cycle, so the memory need not
        # hold back a read of the word being written (READS_APART).
        wr_ok = Signal()
        m.d.comb += can_issue.eq(in_pass & ~last_elem & (outst != depth) & first_ok
                                 & (~wv | rq_v | wr_ok)
                                 & (~dep | ((outst == 0) & ~rvalid)))
        rq_ac = Signal()
        rq_base = Signal(aw)
        rq_off = Signal(aw)
        rq_addr = Signal(aw)
        rq_ack = Signal()
        step = Signal()
        m.d.comb += [
            self.sp_rd.valid.eq(rq_v & ~rq_ac),
            self.ac_rd.valid.eq(rq_v & rq_ac),
            rq_addr.eq(rq_base + rq_off),
            self.sp_rd.payload.eq(rq_addr),
            self.ac_rd.payload.eq(rq_addr),
            rq_ack.eq((self.sp_rd.valid & self.sp_rd.ready) | (self.ac_rd.valid & self.ac_rd.ready)),
            step.eq(can_issue & (~rq_v | rq_ack)),
        ]
        with m.If(step):
            m.d.sync += [rq_v.eq(1), rq_ac.eq(space == _ACC), rq_base.eq(base), rq_off.eq(off)]
        with m.Elif(rq_ack):
            m.d.sync += rq_v.eq(0)
        with m.If(step):
            with m.If(k == big_k):
                m.d.sync += [k.eq(0), c.eq(c + 1), ri.eq(ri + 1), left.eq(left - 1)]
            with m.Else():
                m.d.sync += k.eq(k + 1)
            with m.If(state == _SCALE):
                m.d.sync += rptr.eq(rptr + 4)

        # ---------------------------------------------------------------- collector
        # Responses arrive in request order (a pass reads one space) and are used as they come.
        # A response is registered before it is used (rvalid, rdata): no logic between the
        # memory's read data and the unit's registers. ``outst`` counts reads the memory has
        # not answered; an answer still in the register is ``rvalid``.
        m.d.comb += [self.sp_rdata.ready.eq(1), self.ac_rdata.ready.eq(1)]
        raw = Signal(signed(32))
        m.d.comb += raw.eq(Mux(self.ac_rdata.valid, self.ac_rdata.payload.as_signed(),
                               self.sp_rdata.payload.as_signed()))
        m.d.sync += [
            rvalid.eq(self.sp_rdata.valid | self.ac_rdata.valid),
            rdata.eq(raw),
            outst.eq(outst + step - (self.sp_rdata.valid | self.ac_rdata.valid)),
        ]
        elem_done = Signal()
        m.d.comb += elem_done.eq(rvalid & (kc == big_k))
        with m.If(rvalid):
            m.d.sync += kc.eq(Mux(kc == big_k, 0, kc + 1))
        shift_in = Signal(6)
        m.d.comb += shift_in.eq(30 - rdata[:6])
        with m.If(rvalid), m.Switch(state):
            with m.Case(_PARAM):
                with m.If(kc == 0):
                    m.d.sync += preg.eq(rdata)
                with m.Else():
                    m.d.sync += ts_reg.eq(shift_in)
            with m.Case(_SCALE):
                m.d.sync += preg.eq(rdata)
            with m.Default():
                with m.If((kc == 0) | ((kc == 1) & is_[Op.VACT])):
                    m.d.sync += slot0.eq(rdata)
                with m.If((kc == 1) & (is_[Op.VADD] | is_[Op.VADD32])):
                    m.d.sync += slot0.eq(slot0 + rdata)
                with m.If(pc):
                    with m.If(kc == 1):
                        m.d.sync += preg.eq(rdata)
                    with m.If(kc == 2):
                        m.d.sync += ts_reg.eq(shift_in)
                with m.Else():
                    with m.If((kc == 1) | (state == _RED1)):
                        m.d.sync += slot1.eq(rdata[:8])
                    with m.If(kc == 2):
                        m.d.sync += slot2.eq(rdata[:8])
        with m.If(inject):  # the row-end word is X of its multiply by 1
            m.d.sync += slot0.eq(rsum[:16])
        with m.If(elem_done & (state == _MAIN)):
            m.d.sync += elem_ready.eq(1)
        with m.Elif(take):
            m.d.sync += elem_ready.eq(0)

        # reductions: max / absmax / argmax as the value arrives, sums one cycle later; the
        # value compared (VQUANT |x|) is registered with the response
        rv = Signal(signed(9))
        r8 = raw[:8].as_signed()
        neg = is_[Op.VQUANT] & r8[7]  # |x|: (x ^ -1) + 1
        m.d.sync += rv.eq((r8.as_signed() ^ neg.replicate(9).as_signed()) + neg)
        with m.If(rvalid & (state == _RED1) & (rv > rmax)):
            m.d.sync += rmax.eq(rv)
            # VARGMAX: the index; VQUANT: m = max(max |x|, 1) (rmax, rsum start at 1)
            with m.If(is_[Op.VARGMAX] | is_[Op.VQUANT]):
                m.d.sync += rsum.eq(Mux(is_[Op.VARGMAX], wptr, rv))
        m.d.sync += red_d.eq(elem_done & (((state == _RED1) & is_[Op.VRMS]) | (state == _RED2)))
        # the 9x9 product: x*x (VRMS sums), x*g (VRMS), a*b (VMUL), max(f, 0) * (h - c) (VGATE)
        sp = Signal(signed(18))
        b8 = slot1.as_signed()
        m.d.comb += sp.eq(
            Mux(is_[Op.VGATE], Mux(x8 < 0, 0, x8), x8)
            * Mux(is_[Op.VGATE], slot2.as_signed() - b8, b8)
        )

        # ---------------------------------------------------------------- executor
        second = Signal()  # VRMS: the multiply by M0 follows
        re = Signal()  # a row-end word (VQUANT m, VARGMAX index), not an output element
        acc = Signal(signed(35))  # product >> (16 * shifts so far)
        lo0 = Signal(16)
        lo1 = Signal(16)
        prod = Signal(signed(64))
        m.d.comb += prod.eq(Cat(lo0, lo1, acc[:32]))
        y = Signal(signed(32))
        m.d.comb += y.eq(Mux(~re & ((is_[Op.VRMS] & second) | is_[Op.VQUANT] | is_[Op.VSOFTMAX]),
                             seq.q, preg))
        # one 17x17 signed multiplier: X half mstep[1] times Y half mstep[0] (high halves signed)
        hx, hy = mstep[1], mstep[0]

        # X, from the operand registers: the first operand (VADD, VADD32: the 33-bit sum), the 9x9
        # product (VGATE: f * (h - c) + 128 c, rounded by ts = 7 to the gate's
        # ((f h + (128 - f) c + 64) >> 7)) or the exp table entry
        xnew = Signal(signed(33))
        with m.If(is_[Op.VMUL] | is_[Op.VRMS] | is_[Op.VGATE]):
            m.d.comb += xnew.eq(sp + Mux(is_[Op.VGATE], b8 << 7, 0))
        with m.Elif(is_[Op.VSOFTMAX]):
            m.d.comb += xnew.eq(Cat(slot1, slot2))
        with m.Else():
            m.d.comb += xnew.eq(slot0)
        with m.If(red_d):
            m.d.sync += rsum.eq(rsum + xnew[:16])  # VRMS x * x, VSOFTMAX the exp entry
        # X is registered (the 9x9 product is not in series with the 17x17 multiply): it is
        # complete in the cycle after the element's last operand arrived, before the executor
        # can take it, and the next element's operands arrive after its last multiply step;
        # a row-end word enters with its value
        xr = Signal(signed(33))
        with m.If(inject):
            m.d.sync += xr.eq(rsum[:16])
        with m.Else():
            m.d.sync += xr.eq(xnew)
        xop = Mux(is_[Op.VRMS] & ~second, Cat(lo0, lo1, lo1[15]), xr)
        ma = Cat(Mux(hx, xop[16:32], xop[:16]), hx & xop[32]).as_signed()
        mb = Cat(Mux(hy, y[16:], y[:16]), hy & y[31]).as_signed()
        pp = Signal(signed(34))
        m.d.comb += pp.eq(ma * mb)
        # partial products ll, lh, hl, hh: the accumulator shifts right by 16 before lh and hh
        acc_in = Mux(mstep == 0, 0, Mux(mstep[0], acc >> 16, acc))

        # Output stage. ACC words (VADD32, VSCALE, row-end words): the int32 saturation of the
        # product. Bytes: ((p >> (ts - 1)) + 1) >> 1) + zp for the ops that round (ts >= 1),
        # else p, clamped to int8 (VQUANT: [-127, 127]); p >> (ts - 1) only matters saturated
        # to 10 bits (see tritium.rtl.vector._requant_shift).
        wr_acc = Signal()
        m.d.comb += wr_acc.eq(re | out_acc)
        rnd = (is_[Op.VREQ] | is_[Op.VMUL] | is_[Op.VRMS] | is_[Op.VQUANT] | is_[Op.VGATE]
               | is_[Op.VSOFTMAX])
        # 10 bits suffice: a saturated q rounds to +-256, still out of int8 after + zp
        q = _rshift_sat(m, prod, ts_reg, 10)
        hi33 = prod[31:]
        sat32 = Signal(32)
        m.d.comb += sat32.eq(Mux((hi33 == 0) | (hi33 == (1 << 33) - 1), prod[:32],
                                 Mux(prod[-1], -(2**31), 2**31 - 1)))
        # ((q + 1) >> 1) + zp = (q + 2 zp + 1) >> 1; then the int8 clamp from the high bits
        # (from the write register's q: the byte's rounding and clamp sit in front of the
        # memory's write data, not behind the shifter)
        w_q = Signal(signed(10))
        t = Signal(signed(10))
        y = Signal(8)
        y8 = Signal(8)
        hi = t[7:]
        m.d.comb += [
            t.eq(Mux(rnd, (w_q + Cat(Const(1, 1), ctx.zp).as_signed()) >> 1, w_q)),
            y.eq(Mux((hi != 0) & (hi != 0b111), Mux(t[-1], 0x80, 0x7F), t[:8])),
            y8.eq(Cat(y[0] | (is_[Op.VQUANT] & (y == 0x80)), y[1:])),  # VQUANT: >= -127
        ]
        # The result is registered (E_OUT, when the write register is free) and written from
        # there while the executor goes on: no logic between the product and the memory's
        # write data, and no write ``ready`` in the executor's control.
        w_acc = Signal()  # ... for ACC
        w_re = Signal()  # ... a row-end word (to rptr)
        w_word = Signal(32)
        load = Signal()
        m.d.comb += [
            load.eq((e_state == _E_OUT) & ~wv),
            self.sp_wr.valid.eq(wv & ~rq_v & ~w_acc),
            self.ac_wr.valid.eq(wv & ~rq_v & w_acc),
            self.sp_wr.payload.addr.eq(wptr),
            self.sp_wr.payload.data.eq(y8),  # bytes go to SPAD, words to ACC: no mux
            self.ac_wr.payload.addr.eq(Mux(w_re, rptr, wptr)),
            self.ac_wr.payload.data.eq(w_word),
            wr_ok.eq((self.sp_wr.valid & self.sp_wr.ready) | (self.ac_wr.valid & self.ac_wr.ready)),
        ]
        with m.If(load):
            m.d.sync += [wv.eq(1), w_acc.eq(wr_acc), w_re.eq(re), w_q.eq(q),
                         w_word.eq(sat32)]
        with m.Elif(wr_ok):
            m.d.sync += wv.eq(0)
        with m.If(rvalid & is_[Op.VARGMAX]):  # VARGMAX: wptr counts the row's responses
            m.d.sync += wptr.eq(wptr + Mux(out_acc, 4, 1))  # (+ 1)
        with m.If(wr_ok):
            with m.If(w_re):
                m.d.sync += rptr.eq(rptr + 4)
            with m.Else():
                m.d.sync += wptr.eq(wptr + Mux(out_acc, 4, 1))
        free = Signal()
        m.d.comb += [
            free.eq(e_idle | load),
            take.eq(elem_ready & free),
        ]
        with m.If(take | inject):
            m.d.sync += [
                e_state.eq(_E_MUL),
                mstep.eq(0),
                second.eq(~inject & is_[Op.VRMS]),
                re.eq(inject),
            ]
        with m.Elif(e_state == _E_MUL):
            m.d.sync += [acc.eq(acc_in + pp), mstep.eq(mstep + 1)]
            with m.If(mstep == 1):
                m.d.sync += lo0.eq(acc[:16])
            with m.If(mstep == 3):
                m.d.sync += lo1.eq(acc[:16])
                with m.If(second):  # VRMS: t = {lo1, lo0} is X of the multiply by M0
                    m.d.sync += second.eq(0)
                with m.Else():
                    m.d.sync += e_state.eq(_E_OUT)
        with m.Elif(load):
            m.d.sync += e_state.eq(_E_IDLE)

        # ---------------------------------------------------------------- control
        quiet = Signal()  # nothing outstanding, fetched, executing or to write
        m.d.comb += quiet.eq((outst == 0) & ~rvalid & ~elem_ready & e_idle & ~red_d & ~wv)
        pass_end = Signal()
        m.d.comb += pass_end.eq(last_elem & quiet)
        m.d.comb += self.busy.eq(state != _IDLE)
        # stall is registered (it reports the cycle before): the port's ready depends on the
        # address (a read held back behind a write of the same word), and the stall counter's
        # adder should not sit behind the address adders
        m.d.sync += self.stall.eq(
            (self.sp_rd.valid & ~self.sp_rd.ready) | (self.ac_rd.valid & ~self.ac_rd.ready)
            | (self.sp_wr.valid & ~self.sp_wr.ready) | (self.ac_wr.valid & ~self.ac_wr.ready)
        )
        m.d.comb += [
            # VRMS row end: isqrt(ss << 16) (kept in rsum), isqrt(n << 16), then
            # r = (isqrt(n << 16) << 15) // max(isqrt(ss << 16), 1); VQUANT, VSOFTMAX:
            # R = (127 << 24) // m or // max(sum, 1)
            seq.x.eq(Mux(state == _RE_SQRT, ctx.n, rsum)),
            seq.num_root.eq(is_[Op.VRMS]),
            seq.den.eq(Mux(rsum == 0, 1, rsum)),  # VQUANT: m (rsum is free)
        ]

        def begin(st):  # enter a pass
            m.d.sync += [state.eq(st), c.eq(0), k.eq(0), ri.eq(rowbase),
                         left.eq(1 if st in (_PARAM, _SCALE) else ctx.n)]

        has_red = is_[Op.VRMS] | is_[Op.VQUANT] | is_[Op.VSOFTMAX] | is_[Op.VARGMAX]
        start_d = Signal()  # the cycle after START: rq_addr is rptr's start
        m.d.sync += start_d.eq(state == _START)
        with m.If(start_d):
            m.d.sync += rptr.eq(rq_addr)
        with m.Switch(state):
            with m.Case(_IDLE), m.If(accept):
                m.d.sync += state.eq(Mux(known, _START, _FINISH))
            with m.Case(_START):
                m.d.sync += [
                    wptr.eq(ctx.base["dst"]),
                    rq_base.eq(base),  # rptr's start, taken from rq_addr next cycle
                    rq_off.eq(off),
                    preg.eq(1),
                    ts_reg.eq(Mux(is_[Op.VQUANT] | is_[Op.VSOFTMAX], 23,
                                  Mux(is_[Op.VGATE], 6, 0))),
                    rowbase.eq(0),
                ]
                with m.If((is_[Op.VREQ] & ~ctx.pc) | is_[Op.VMUL] | is_[Op.VRMS]):
                    begin(_PARAM)
                with m.Else():
                    m.d.sync += state.eq(_ROW)
            with m.Case(_PARAM), m.If(pass_end):
                m.d.sync += state.eq(_ROW)
            with m.Case(_ROW):
                with m.If(is_[Op.VARGMAX]):
                    m.d.sync += wptr.eq(0)
                m.d.sync += [
                    rsum.eq(is_[Op.VQUANT]),
                    rmax.eq(Mux(is_[Op.VQUANT], 1, Mux(is_[Op.VACT], 0, -128))),
                ]
                with m.If(is_[Op.VSCALE]):
                    begin(_SCALE)
                with m.Elif(has_red):
                    begin(_RED1)
                with m.Else():
                    begin(_MAIN)
            with m.Case(_SCALE), m.If(pass_end):
                begin(_MAIN)
            with m.Case(_RED1), m.If(pass_end):
                with m.If(is_[Op.VSOFTMAX]):
                    begin(_RED2)
                    m.d.sync += rsum.eq(0)
                with m.Elif(is_[Op.VRMS]):
                    m.d.comb += seq.start_sqrt.eq(1)
                    m.d.sync += state.eq(_RE_SQRT)
                with m.Elif(is_[Op.VQUANT]):
                    m.d.comb += [inject.eq(1), seq.start_div.eq(1)]
                    m.d.sync += state.eq(_RE_DIV)
                with m.Else():  # VARGMAX
                    m.d.comb += inject.eq(1)
                    m.d.sync += state.eq(_NEXT)
            with m.Case(_RED2), m.If(pass_end):
                m.d.comb += seq.start_div.eq(1)
                m.d.sync += state.eq(_RE_DIV)
            with m.Case(_RE_SQRT), m.If(~seq.busy):
                m.d.comb += seq.start_sqrt.eq(1)
                m.d.sync += [rsum.eq(seq.root), state.eq(_RE_SQRT2)]
            with m.Case(_RE_SQRT2), m.If(~seq.busy):
                m.d.comb += seq.start_div.eq(1)
                m.d.sync += state.eq(_RE_DIV)
            with m.Case(_RE_DIV), m.If(~seq.busy):
                begin(_MAIN)
            with m.Case(_MAIN), m.If(pass_end):
                m.d.sync += state.eq(_NEXT)
            with m.Case(_NEXT), m.If(quiet):
                with m.If(ctx.rows == 1):
                    m.d.sync += state.eq(_FINISH)
                with m.Else():
                    m.d.sync += [ctx.rows.eq(ctx.rows - 1), rowbase.eq(rowbase + ctx.n),
                                 state.eq(_ROW)]
            with m.Case(_FINISH), m.If(quiet):
                m.d.comb += self.done.eq(1)
                m.d.sync += state.eq(_IDLE)
        return m
