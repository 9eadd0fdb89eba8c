"""The vector unit: the eleven ``V*`` instructions, memory to memory.

See :class:`VectorUnit`. The numerics are those of :mod:`tritium.numerics` as sequenced by
``tritium.golden.GoldenDevice._vector``; :func:`cmd_layout` and :func:`pack_cmd` give the command
payload, which is the low bits of the 128-bit instruction word.
"""

from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from tritium import isa
from tritium.config import AcceleratorConfig

from .scratchpad import kept_register, registered_product

__all__ = ["VECTOR_OPS", "VectorUnit", "VectorUnitBase", "cmd_layout", "pack_cmd", "vector_unit_members"]

Op = isa.Op

#: The opcodes the vector unit executes, in opcode order.
VECTOR_OPS: tuple[Op, ...] = tuple(op for op in Op if op.name.startswith("V"))

# Pass kinds. Every instruction is a prologue pass (optional) followed, for each row, by the
# passes of _ROW_PASSES; a pass visits L elements and reads K operands per element.
_PARAM, _TAB, _SCALE, _RED, _MAIN = range(5)
_SPAD, _ACC = 0, 1

_ROW_PASSES: dict[Op, tuple[int, ...]] = {
    Op.VREQ: (_MAIN,),
    Op.VADD: (_MAIN,),
    Op.VADD32: (_MAIN,),
    Op.VMUL: (_MAIN,),
    Op.VSCALE: (_SCALE, _MAIN),
    Op.VACT: (_MAIN,),
    Op.VRMS: (_RED, _MAIN),
    Op.VQUANT: (_RED, _MAIN),
    Op.VGATE: (_MAIN,),
    Op.VSOFTMAX: (_RED, _RED, _MAIN),
    Op.VARGMAX: (_RED,),
}
# Prologue: (M0, shift) from ACC[param] (VREQ per-tensor, VMUL, VRMS) or a table from SPAD[src2].
_PROLOGUE = {Op.VREQ: _PARAM, Op.VMUL: _PARAM, Op.VRMS: _PARAM, Op.VACT: _TAB, Op.VSOFTMAX: _TAB}
# Operand reads: (space, base field, index) with index i = row * n + col, c = col, r = row.
_PASS_READS = {
    _PARAM: ((_ACC, "param", "c"),),
    _TAB: ((_SPAD, "src2", "c"),),
    _SCALE: ((_ACC, "src2", "r"),),
    _RED: ((_SPAD, "src", "i"),),
}
_MAIN_READS: dict[Op, tuple[tuple[int, str, str], ...]] = {
    Op.VREQ: ((_ACC, "src", "i"),),  # per-channel: + (ACC, param, c), (ACC, param + 4n, c)
    Op.VADD: ((_SPAD, "src", "i"), (_SPAD, "src2", "i")),
    Op.VADD32: ((_ACC, "src", "i"), (_ACC, "src2", "i")),
    Op.VMUL: ((_SPAD, "src", "i"), (_SPAD, "src2", "i")),
    Op.VSCALE: ((_ACC, "src", "i"),),
    Op.VACT: ((_SPAD, "src", "i"),),
    Op.VRMS: ((_SPAD, "src", "i"), (_SPAD, "src2", "c")),
    Op.VQUANT: ((_SPAD, "src", "i"),),
    Op.VGATE: ((_SPAD, "src", "i"), (_SPAD, "src2", "i"), (_SPAD, "dst", "i")),
    Op.VSOFTMAX: ((_SPAD, "src", "i"),),
    Op.VARGMAX: (),
}
_VREQ_PC_READS = ((_ACC, "src", "i"), (_ACC, "param", "c"), (_ACC, "param_n", "c"))
_BASES = ("src", "src2", "dst", "param", "param_n")
_INDEXES = ("i", "c", "r")

# Tag of a read: what the collector does with its response.
_TAG = data.StructLayout({
    "kind": unsigned(3),
    "k": unsigned(2),  # operand index within the element
    "elem": unsigned(1),  # last operand of a reduction / output element
    "first": unsigned(1),  # first element of its pass (column 0)
    "c0": unsigned(1),  # column parity (PARAM: 0 = M0, 1 = shift)
    "red2": unsigned(1),  # VSOFTMAX exp-sum pass
    "space": unsigned(1),
    "rowend": unsigned(1),  # last read of the row's reduction: row-end work follows
})

# What an element carries from stage to stage after S2: rounding shift, output offset, clamp
# class, row-end word.
_ELEM_CTL = data.StructLayout({
    "ts": unsigned(6), "off": signed(9), "cls": unsigned(2), "re": unsigned(1),
})

# Output clamp classes.
_CLS_I8, _CLS_Q127, _CLS_I32 = 0, 1, 2
# Multiplier X operand sources in stage 2: register, small product, table entry.
_X_REG, _X_SP, _X_TAB = 0, 1, 2

_ISQRT_BITS = 48  # isqrt input width: sum_sq << 16 < 2**46, n << 16 < 2**32
_DIV_BITS = 32  # divider: numerator < 2**31, divisor < 2**32


def cmd_layout() -> data.StructLayout:
    """Payload layout of :attr:`VectorUnit.cmd`: ``op`` then the ``_VEC`` fields of
    :data:`tritium.isa.FORMATS`, each at its bit position in the instruction word (so the payload
    is the low ``size`` bits of the 128-bit instruction)."""
    fields = {"op": unsigned(isa.OPCODE_BITS)}
    vec = isa.FORMATS[Op.VREQ]
    for f in vec:
        fields[f.name] = signed(f.width) if f.signed else unsigned(f.width)
    layout = data.StructLayout(fields)
    for f in vec:
        if layout[f.name].offset != f.lsb:  # pragma: no cover - isa packs fields upward
            raise AssertionError(f"cmd field {f.name} at {layout[f.name].offset}, isa has {f.lsb}")
    return layout


def pack_cmd(instr: isa.Instr) -> int:
    """The :attr:`VectorUnit.cmd` payload of a decoded vector instruction."""
    if instr.op not in VECTOR_OPS:
        raise ValueError(f"{instr.op.name} is not a vector instruction")
    return isa.encode(instr) & ((1 << cmd_layout().size) - 1)


def _wr_layout(aw: int, dw: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(aw), "data": unsigned(dw)})


def vector_unit_members(cfg: AcceleratorConfig) -> dict:
    """The members (ports) of a vector unit for ``cfg``: :class:`VectorUnit` and
    :class:`tritium.rtl.serial_vector.SerialVectorUnit` have the same ones."""
    spad_aw, acc_aw = ceil_log2(cfg.spad_bytes), ceil_log2(cfg.acc_bytes)
    return {
        "cmd": In(stream.Signature(cmd_layout())),
        "sp_rd": Out(stream.Signature(unsigned(spad_aw))),
        "sp_rdata": In(stream.Signature(unsigned(8))),
        "sp_wr": Out(stream.Signature(_wr_layout(spad_aw, 8))),
        "ac_rd": Out(stream.Signature(unsigned(acc_aw))),
        "ac_rdata": In(stream.Signature(unsigned(32))),
        "ac_wr": Out(stream.Signature(_wr_layout(acc_aw, 32))),
        "busy": Out(1),
        "done": Out(1),
        "stall": Out(1),
    }


# ------------------------------------------------------------------------------ helpers
_Q_BITS = 11  # p >> (ts - 1) is kept saturated to this many bits (see VectorUnit.elaborate)


def _rshift_sat(m: Module, v, sh, w_out: int) -> Signal:
    """``clamp(v >> sh, w_out-bit signed)`` for a signed ``v`` and an unsigned ``sh``.

    A logarithmic shifter (largest step first) that keeps, after each step, only the bits that
    can still reach the ``w_out``-bit result; a bit dropped unshifted must equal the sign, or
    the result saturates. About ``w_out * len(sh) + 2**len(sh)`` muxes instead of
    ``len(v) * len(sh)``.
    """
    sign = v[-1]
    cur, width = v.as_unsigned(), len(v)
    ovf_terms = []
    for k in reversed(range(len(sh))):
        amt = 1 << k
        keep = min(width, w_out + amt - 1)
        if keep < width:  # not shifting now: these bits leave the window for good
            ovf_terms.append(~sh[k] & (cur[keep:width] != sign.replicate(width - keep)))
        shifted = Cat(cur[amt:width], sign.replicate(amt))[:keep]
        nxt = Signal(keep, name=f"rsh_{k}")
        m.d.comb += nxt.eq(Mux(sh[k], shifted, cur[:keep]))
        cur, width = nxt, keep
    ovf_terms.append(cur[-1] != sign)
    out = Signal(signed(w_out), name="rsh_sat")
    lim = 1 << (w_out - 1)
    m.d.comb += out.eq(Mux(Cat(*ovf_terms).any(), Mux(sign, -lim, lim - 1), cur.as_signed()))
    return out


def _requant_shamt(ts):
    """(``ts == 0``, the shift of :func:`_requant_shift`: ``ts - 1``, or 0 for ``ts == 0``)."""
    return ts == 0, Mux(ts == 0, 0, ts - 1)[:6]


def _requant_shift(m: Module, prod, tz, shamt):
    """First half of the output stage: for ``ts >= 1`` (rounding shift), ``p >> (ts - 1)``
    saturated to ``_Q_BITS`` bits (sign-extended to 32); for ``ts == 0``, the int32 saturation
    of the 64-bit product ``prod``. ``tz`` and ``shamt`` are :func:`_requant_shamt` of ``ts``
    (the caller registers them, so no subtraction sits in front of the shifter).

    Rounding shifts by ts >= 1 ((p + 2^(ts-1)) >> ts) are done as ((p >> (ts-1)) + 1) >> 1
    (:func:`_requant_clamp`); p >> (ts-1) only matters saturated to _Q_BITS (the result is
    clamped to int8 later).
    """
    q = _rshift_sat(m, prod, shamt, _Q_BITS)
    sign = prod[-1]
    hi33 = prod[31:]
    sat32 = Signal(signed(32))
    m.d.comb += sat32.eq(Mux((hi33 == 0) | (hi33 == (1 << 33) - 1), prod[:32],
                             Mux(sign, -(2**31), 2**31 - 1)))
    return Mux(tz, sat32, q)


def _requant_clamp(m: Module, val, rnd, off21, cls):
    """Second half of the output stage: the element written, from :func:`_requant_shift`'s
    ``val``: with ``rnd`` (``ts >= 1``) ``((val + 1) >> 1) + off``, else ``val``; clamped to
    int8 (``_CLS_I8``), to ``[-127, 127]`` (``_CLS_Q127``) or passed whole (``_CLS_I32``).
    ``off21`` is ``2 * off + 1`` (a register: the caller shifts ``off`` in for free)."""
    # Every int8-class value fits 12 bits here: rounded (+-512) + off, or a+b / table.
    # Timing: ((val + 1) >> 1) + off == (val + 2 off + 1) >> 1, one adder instead of two,
    # and the clamp tests bits instead of comparing (no carry chains after the adder).
    s13 = Signal(signed(13))
    t12 = Signal(signed(12))
    y8 = Signal(signed(8))
    m.d.comb += [
        s13.eq(val[:_Q_BITS].as_signed() + off21),
        t12.eq(Mux(rnd, s13 >> 1, val[:12].as_signed())),
    ]
    top = t12[7:]  # 5 bits: all equal to the sign exactly when t12 fits int8
    over = ~t12[-1] & top.any()  # > 127
    under = t12[-1] & ~top.all()  # < -128
    q127 = cls == _CLS_Q127
    low = under | (q127 & t12[-1] & top.all() & ~t12[:7].any())  # below the class's minimum
    m.d.comb += y8.eq(Mux(over, 127, Mux(low, Mux(q127, -127, -128), t12[:8])))
    return Mux(cls == _CLS_I32, val, y8)


class _SeqMath(Elaboratable):
    """Sequential integer square root and divider sharing one subtractor and remainder.

    ``start_sqrt``: ``root = isqrt(x << 16)``, one result bit per cycle (24 cycles).
    ``start_div``: ``q = num // den`` (restoring), one quotient bit per cycle (32 cycles).
    Operands are sampled on the start cycle (with ``hold_den``, ``den`` is not registered: the
    caller keeps it steady until the division is done); ``busy`` is high from the next cycle
    until the result is ready; ``root`` is kept through a following division.
    """

    def __init__(self, hold_den: bool = False):
        self.hold_den = hold_den
        self.x = Signal(32)
        self.num = Signal(_DIV_BITS)
        self.den = Signal(_DIV_BITS)
        self.start_sqrt = Signal()
        self.start_div = Signal()
        self.busy = Signal()
        self.root = Signal(_ISQRT_BITS // 2)
        self.q = Signal(_DIV_BITS)  # the numerator shifts out as quotient bits shift in

    def elaborate(self, platform):
        m = Module()
        rem = Signal(_DIV_BITS + 1)
        den = self.den if self.hold_den else Signal(_DIV_BITS)
        sqrt = Signal()
        cnt = Signal(range(_DIV_BITS + 1))
        rem2 = Signal(_DIV_BITS + 2)
        sub = Signal(_DIV_BITS + 1)
        ge = Signal()
        m.d.comb += [
            # sqrt: bring down two bits, trial (root << 2) | 1; div: one bit, the divisor
            rem2.eq(Mux(sqrt, Cat(self.q[-2:], rem), Cat(self.q[-1], rem))),
            sub.eq(Mux(sqrt, Cat(Const(1, 2), self.root), den)),
            ge.eq(rem2 >= sub),
        ]
        with m.If(self.start_sqrt):
            m.d.sync += [self.q.eq(self.x), rem.eq(0), self.root.eq(0), sqrt.eq(1),
                         cnt.eq(_ISQRT_BITS // 2), self.busy.eq(1)]
        with m.Elif(self.start_div):
            m.d.sync += [self.q.eq(self.num), rem.eq(0), sqrt.eq(0), cnt.eq(_DIV_BITS),
                         self.busy.eq(1)]
            if not self.hold_den:
                m.d.sync += den.eq(self.den)
        with m.Elif(self.busy):
            m.d.sync += [cnt.eq(cnt - 1), rem.eq(Mux(ge, rem2 - sub, rem2))]
            with m.If(sqrt):
                m.d.sync += [self.q.eq(self.q << 2), self.root.eq(Cat(ge, self.root))]
            with m.Else():
                m.d.sync += self.q.eq(Cat(ge, self.q))
            with m.If(cnt == 1):
                m.d.sync += self.busy.eq(0)
        return m


class _Ctx:
    """Registered instruction fields shared by the issuer walker and the datapath."""

    def __init__(self, aw: int):
        self.is_ = {op: Signal(name=f"is_{op.name.lower()}") for op in VECTOR_OPS}
        self.pc = Signal()
        self.rows = Signal(12)
        self.n = Signal(16)
        self.rows_m1 = Signal(12)
        self.n_m1 = Signal(16)
        self.base = {b: Signal(aw, name=f"base_{b}") for b in _BASES}
        self.zp = Signal(signed(8))

    def command(self, m: Module, cmd, busy, held: bool = False) -> tuple[Signal, Signal]:
        """Accept ``cmd`` while not ``busy`` and register its fields. Returns ``(accept,
        known)``: the transfer, and whether it is a vector instruction with work to do
        (``rows``, ``n`` nonzero); ``is_`` flags are set only for known ones. ``held``: the
        payload stays on ``cmd`` until the instruction is done, so ``n`` and the bases of
        the operands are read from it (not copied)."""
        p = cmd.payload
        m.d.comb += cmd.ready.eq(~busy)
        accept = Signal()
        m.d.comb += accept.eq(cmd.valid & cmd.ready)
        known = Signal()
        m.d.comb += known.eq(
            (p.op >= int(VECTOR_OPS[0])) & (p.op <= int(VECTOR_OPS[-1])) & (p.rows != 0)
            & (p.n != 0)
        )
        fixed = [
            self.n.eq(p.n),
            self.base["src"].eq(p.src),
            self.base["src2"].eq(p.src2),
            self.base["dst"].eq(p.dst),
            self.base["param"].eq(p.param),
        ]
        if held:
            m.d.comb += fixed
        with m.If(accept):
            m.d.sync += [
                self.pc.eq(p.per_channel),
                self.rows.eq(p.rows),
                self.rows_m1.eq(p.rows - 1),
                self.n_m1.eq(p.n - 1),
                self.zp.eq(Mux((p.op == int(Op.VREQ)) | (p.op == int(Op.VMUL))
                               | (p.op == int(Op.VRMS)), p.zp, 0)),
                self.base["param_n"].eq(p.param + (p.n << 2)),
            ]
            if not held:
                m.d.sync += fixed
            for op in VECTOR_OPS:
                m.d.sync += self.is_[op].eq((p.op == int(op)) & known)
        return accept, known


class _Walker:
    """Loop nest (prologue, rows x passes x elements x operands) of one instruction: the
    issuer's position. Each read carries a tag (:data:`_TAG`) derived from it to the collector.
    """

    def __init__(self, m: Module, ctx: _Ctx, aw: int, name: str):
        self.start = Signal(name=f"{name}_start")
        self.step = Signal(name=f"{name}_step")
        self.active = Signal(name=f"{name}_active")
        self.pidx = Signal(2, name=f"{name}_pidx")
        self.r = Signal(12, name=f"{name}_r")
        self.c = Signal(16, name=f"{name}_c")
        self.k = Signal(2, name=f"{name}_k")
        self.rowbase = Signal(aw, name=f"{name}_rowbase")
        self.kind = Signal(3, name=f"{name}_kind")
        self.last_k = Signal(name=f"{name}_last_k")
        self.last_c = Signal(name=f"{name}_last_c")
        self.space = Signal(name=f"{name}_space")
        self.base_sel = Signal(range(len(_BASES)), name=f"{name}_base_sel")
        self.idx_sel = Signal(range(len(_INDEXES)), name=f"{name}_idx_sel")
        # ``rowbase + c``: a register that steps with ``c`` and ``rowbase`` (timing: no adder
        # in front of the issuer's address adder)
        self.i = Signal(aw, name=f"{name}_i")
        is_ = ctx.is_

        has_pro = Signal(name=f"{name}_has_pro")
        npass = Signal(2, name=f"{name}_npass")
        m.d.comb += has_pro.eq(
            (is_[Op.VREQ] & ~ctx.pc) | is_[Op.VMUL] | is_[Op.VRMS] | is_[Op.VACT]
            | is_[Op.VSOFTMAX]
        )
        for op, passes in _ROW_PASSES.items():
            with m.If(is_[op]):
                m.d.comb += npass.eq(len(passes))
                with m.If(self.pidx == 0):
                    m.d.comb += self.kind.eq(_PROLOGUE.get(op, _PARAM))
                for p, kd in enumerate(passes, 1):
                    with m.If(self.pidx == p):
                        m.d.comb += self.kind.eq(kd)

        # operand count K, pass length L, and where each operand lives
        m.d.comb += self.last_k.eq(self.k == 0)
        with m.Switch(self.kind):
            with m.Case(_PARAM):
                m.d.comb += self.last_c.eq(self.c == 1)
            with m.Case(_TAB):
                m.d.comb += self.last_c.eq(self.c == Mux(is_[Op.VSOFTMAX], 511, 255))
            with m.Case(_SCALE):
                m.d.comb += self.last_c.eq(1)
            with m.Default():
                m.d.comb += self.last_c.eq(self.c == ctx.n_m1)

        def reads(rd):
            for k, (space, base, idx) in enumerate(rd):
                with m.If(self.k == k):
                    m.d.comb += [
                        self.space.eq(space),
                        self.base_sel.eq(_BASES.index(base)),
                        self.idx_sel.eq(_INDEXES.index(idx)),
                    ]
            m.d.comb += self.last_k.eq(self.k == max(len(rd) - 1, 0))

        with m.Switch(self.kind):
            for kd, rd in _PASS_READS.items():
                with m.Case(kd):
                    reads(rd)
            with m.Case(_MAIN):
                for op, rd in _MAIN_READS.items():
                    with m.If(is_[op]):
                        if op == Op.VREQ:
                            with m.If(ctx.pc):
                                reads(_VREQ_PC_READS)
                            with m.Else():
                                reads(rd)
                        else:
                            reads(rd)

        with m.If(self.start):
            m.d.sync += [
                self.active.eq(1),
                self.pidx.eq(Mux(has_pro, 0, 1)),
                self.r.eq(0),
                self.c.eq(0),
                self.k.eq(0),
                self.rowbase.eq(0),
                self.i.eq(0),
            ]
        with m.Elif(self.step):
            with m.If(~self.last_k):
                m.d.sync += self.k.eq(self.k + 1)
            with m.Else():
                m.d.sync += self.k.eq(0)
                with m.If(~self.last_c):
                    m.d.sync += [self.c.eq(self.c + 1), self.i.eq(self.i + 1)]
                with m.Else():
                    m.d.sync += [self.c.eq(0), self.i.eq(self.rowbase)]
                    with m.If(self.pidx == 0):
                        m.d.sync += self.pidx.eq(1)
                    with m.Elif(self.pidx != npass):
                        m.d.sync += self.pidx.eq(self.pidx + 1)
                    with m.Else():
                        m.d.sync += self.pidx.eq(1)
                        with m.If(self.r == ctx.rows_m1):
                            m.d.sync += self.active.eq(0)
                        with m.Else():
                            m.d.sync += [
                                self.r.eq(self.r + 1),
                                self.rowbase.eq(self.rowbase + ctx.n),
                                self.i.eq(self.rowbase + ctx.n),
                            ]


# ------------------------------------------------------------------------------ the unit
class VectorUnitBase(wiring.Component):
    """What every vector unit shares: the constructor (``cfg``, ``depth`` = reads that may be
    outstanding, >= 2; ``held``: the command's payload stays on ``cmd`` until ``done``, see
    ``_Ctx.command``) and the members of :func:`vector_unit_members`."""

    def __init__(self, cfg: AcceleratorConfig, depth: int = 4, held: bool = False):
        if depth < 2:
            raise ValueError(f"depth={depth}; depth must be >= 2")
        self.cfg = cfg
        self.depth = depth
        self.held = held
        self.spad_aw = ceil_log2(cfg.spad_bytes)
        self.acc_aw = ceil_log2(cfg.acc_bytes)
        super().__init__(vector_unit_members(cfg))

    #: Whether the unit never presents a read and a write in the same cycle (then the
    #: scratchpads need not hold back its reads of a word it writes, ``clash_pairs``).
    READS_APART = False


class VectorUnit(VectorUnitBase):
    """Vector unit: executes ``VREQ`` .. ``VARGMAX`` memory-to-memory, bit-exact with
    ``tritium.golden`` (see :data:`tritium.isa.SEMANTICS` and :mod:`tritium.numerics`).

    The controller hands over one decoded instruction on :attr:`cmd`; the unit reads its operands
    from the int8 scratchpad (SPAD) and the int32 accumulator scratchpad (ACC) through read
    request/response streams, computes, and writes results through write streams, so the top can
    arbitrate and stall every port. All ports carry **one element per beat**: SPAD beats are one
    byte at a byte address, ACC beats one little-endian int32 at a byte address that is a multiple
    of 4 (write beats always write the whole element, so no byte mask is needed).
    ``cfg.vec_lanes`` is not used yet (one element per cycle at most).

    Parameters
    ----------
    cfg : AcceleratorConfig
        Sizes the address ports (``ceil_log2(cfg.spad_bytes)``, ``ceil_log2(cfg.acc_bytes)``
        bits; higher address bits of the command are ignored).
    depth : int
        Reads that may be outstanding (both ports together; default 4). 3 sustain one read per
        cycle from a memory answering in the cycle after a request; each extra cycle of read
        latency needs one more.

    Members
    -------
    cmd : In(stream.Signature(cmd_layout()))
        Instruction: ``op`` (8-bit opcode) and the ``_VEC`` fields ``per_channel``, ``rows``,
        ``n``, ``src``, ``src2``, ``dst``, ``param``, ``zp`` of :data:`tritium.isa.FORMATS`, at
        their instruction-word bit positions (the payload is the low 125 bits of the instruction
        word; :func:`pack_cmd`). Accepted (``ready``) only while idle. Operands must already have
        passed the golden model's checks (``rows``, ``n >= 1``, parameters in range, footprint
        inside the scratchpads); ``rows == 0``, ``n == 0`` or a non-vector opcode completes at once
        with no memory traffic.
    sp_rd : Out(stream.Signature(unsigned(spad_aw)))
        SPAD read requests: byte address.
    sp_rdata : In(stream.Signature(unsigned(8)))
        SPAD read responses, in request order. ``ready`` is always high: at most ``depth``
        reads are outstanding and the unit has room for all their responses. The unit switches
        between reading SPAD and ACC only when no read is outstanding, so the responses of the
        two ports never interleave.
    sp_wr : Out(stream.Signature(StructLayout({"addr": spad_aw, "data": 8})))
        SPAD writes (``addr`` in the low bits of the payload).
    ac_rd, ac_rdata, ac_wr
        The same for ACC: byte addresses (multiples of 4), 32-bit data.
    busy : Out(1)
        An instruction is in flight (from the ``cmd`` transfer until ``done``).
    done : Out(1)
        One-cycle pulse: the instruction has finished, every write has been accepted.
    stall : Out(1)
        Busy and held up by memory this cycle (a request or write waiting for ``ready``).

    Semantics and restrictions: results equal ``GoldenDevice`` executing the instruction as
    long as no element written lands on an address the same instruction reads later. Reads run
    ahead of writes, so exact in-place operation (``dst == src``, or VGATE's ``h_prev``) is fine,
    but e.g. ``dst = src + 1``, a VRMS output over gamma or a VSCALE output over the scales of
    later rows reads already-written values.

    Cycle-level contract. Each instruction walks an optional prologue (the two (M0, shift) words
    of VREQ per-tensor / VMUL / VRMS, or the 256-byte VACT / 512-byte VSOFTMAX table, which is
    copied into a local 256 x 16 block RAM), then for each row its passes of ``n`` elements. A
    pass issues ``K`` reads per element on one port (one request per cycle, at most ``depth``
    outstanding, each tagged with what its response is for), collects the responses in request
    order through one FIFO and feeds one element per
    ``K`` responses into a 7-stage pipeline: operands; 9x9 multiply / table read; multiplier
    operands; the four 16x16 partial products of the 32x32 multiply; their sum; rounding
    shift; write register. Row reductions (sum of squares, absmax, max, exp
    sum, argmax) are folded in as elements pass stages 1-2. After a row's reduction pass the
    collector waits for that pass to leave stage 2, then computes the row's reciprocal with a
    sequential isqrt (24 cycles, VRMS) and divider (32 cycles, VRMS / VQUANT / VSOFTMAX) before
    the row's output pass; the reads of later passes keep running ahead meanwhile (up to
    ``depth``). Row-end ACC writes (VQUANT ``m``, VARGMAX index) flow through the pipeline like
    elements. Nothing depends on data. With every ``ready`` high and a memory that answers each
    read in the cycle after accepting it, an instruction takes, from the cycle its ``cmd``
    transfers to its ``done`` pulse (:meth:`cycles`), with ``T = rows * n``:

    ============ ================================ =============================================
    op           reads per element (K)            cycles
    ============ ================================ =============================================
    VREQ         1 (per-channel: 3)               ``T + 13`` (per-channel ``3 T + 11``)
    VADD         2                                ``2 T + 11``
    VADD32       2                                ``2 T + 11``
    VMUL         2                                ``2 T + 15``
    VSCALE       1, + 1 scale per row             ``T + rows + 11``
    VACT         1, + 256 table bytes             ``T + 267``
    VRMS         1 (sum of squares), then 2       ``rows * (3 n + 61) + 41 - n % 2``
    VQUANT       1 (absmax), then 1               ``rows * (2 n + 36) + 11``
    VGATE        3                                ``3 T + 11``
    VSOFTMAX     1 (max), 1 (exp sum), then 1     ``rows * (3 n + 36) + 523``
    VARGMAX      1                                ``rows * (n + 3) + 10``
    ============ ================================ =============================================

    i.e. one read per cycle plus a fixed latency of 11 cycles (command register, first request,
    memory, response FIFO, 7 stages), plus the row-end work (VMUL, VRMS: + 2 cycles where the
    reads switch from ACC parameters to SPAD data: both ports share one response FIFO, so the
    issuer changes ports only when no read is outstanding). Memory stalls and longer read
    latency add to these. No ``valid`` output depends combinationally on any ``ready`` input
    (every ``valid`` comes from registered state), so the top may arbitrate the ports
    combinationally; ``sp_rdata.ready`` and ``ac_rdata.ready`` are constantly high.

    Multipliers: one 32x32 signed in two register stages (partial products, sum; one 32x32
    multiply in one cycle alone limits the ECP5-85F to 75 MHz) for requantization ``x * M0``,
    VSCALE and the reciprocal products; VRMS uses it twice per element, ``(x*g) * r`` then
    ``* M0``: its element leaves the sum stage back into the partial-product stage, and two
    VRMS elements swap between the two stages, so its 2 reads per element still set the pace
    (an even ``n`` costs one cycle more at the end, the pairing of the last two elements) and one 9x9 signed (``x*x``, ``x*g``, ``a*b``, VGATE ``f * (h - c)``):
    5 SB_MAC16 on iCE40, 5 MULT18X18D on ECP5. Requantization ``(p + 2^(ts-1)) >> ts`` with
    ``ts = 31 - shift`` in ``[1, 62]`` is computed as ``((p >> (ts-1)) + 1) >> 1`` with
    ``p >> (ts-1)`` saturated to 11 bits (enough for the int8 clamp that follows), so the 64-bit
    barrel shifter keeps only the bits that can reach the result.

    Size (yosys ``stat``, :func:`tritium.fpga.synth.synth_unit` ``"vector"``, when written):
    tiny / iCE40 about 2,100 LUT4, 1,150 FF, 5 SB_MAC16, 1 EBR; base / ECP5 about 1,950 LUT4,
    1,000 FF, 5 MULT18X18D, 1 DP16KD. Roughly a quarter is control and address generation, a
    quarter the 32x32 multiplier with its operand muxes, a tenth the saturating shifter.
    """

    @staticmethod
    def cycles(instr: isa.Instr) -> int:
        """Cycles from the ``cmd`` transfer to the ``done`` pulse of ``instr`` with no stalls
        and one-cycle read latency (the table in the class docstring)."""
        op, rows, n = instr.op, instr.rows, instr.n
        t = rows * n
        if op not in VECTOR_OPS or rows == 0 or n == 0:
            return 2
        return {
            Op.VREQ: 3 * t + 11 if instr.per_channel else t + 13,
            Op.VADD: 2 * t + 11,
            Op.VADD32: 2 * t + 11,
            Op.VMUL: 2 * t + 15,
            Op.VSCALE: t + rows + 11,
            Op.VACT: t + 267,
            Op.VRMS: rows * (3 * n + 61) + 41 - n % 2,
            Op.VQUANT: rows * (2 * n + 36) + 11,
            Op.VGATE: 3 * t + 11,
            Op.VSOFTMAX: rows * (3 * n + 36) + 523,
            Op.VARGMAX: rows * (n + 3) + 10,
        }[op]

    def elaborate(self, platform):
        m = Module()
        aw = max(self.spad_aw, self.acc_aw)
        depth = self.depth
        ctx = _Ctx(aw)
        is_ = ctx.is_

        # ---------------------------------------------------------------- submodules
        m.submodules.rfifo = rfifo = SyncFIFO(width=32, depth=depth)
        m.submodules.seq = seq = _SeqMath()
        m.submodules.table = table = Memory(shape=unsigned(16), depth=256, init=[])
        t_wr = table.write_port()
        t_rd = table.read_port()

        iss = _Walker(m, ctx, aw, "iss")
        # Each read carries a tag (what its response is for) from the issuer to the collector.
        m.submodules.tfifo = tfifo = SyncFIFO(width=data.Layout.cast(_TAG).size, depth=depth)
        itag = data.View(_TAG, tfifo.w_data)
        tag = data.View(_TAG, tfifo.r_data)

        # ---------------------------------------------------------------- state
        # The multiplier's Y operand: M0 (VREQ per-tensor, VMUL), the row scale (VSCALE), the row
        # reciprocal (VRMS r, VQUANT / VSOFTMAX R) or 1 (the rest go through the multiplier as
        # x * 1). VRMS multiplies twice: by r (preg), then by M0 (qreg).
        preg = Signal(signed(32))
        qreg = Signal(signed(32))
        ts_reg = Signal(6)  # rounding shift: 31 - shift, 24 (VQUANT, VSOFTMAX), 7 (VGATE), 0
        num = Signal(16)  # VRMS isqrt(n << 16)
        rsum = Signal(32)  # row sum: VRMS sum of squares, VSOFTMAX sum of exp
        rmax = Signal(signed(9))  # row max: VQUANT max |x|, VSOFTMAX max x, VARGMAX max x
        best_i = Signal(16)  # VARGMAX: first index of the max
        tab_lo = Signal(8)
        slot0 = Signal(signed(32))
        slot1 = Signal(signed(32))
        # write addresses: results leave in order, so two counters replace per-element addresses
        wptr = Signal(aw)  # next output element (dst + i or dst + 4 i)
        rptr = Signal(aw)  # next row-end word (VQUANT param + 4 r, VARGMAX dst + 4 r)

        # ---------------------------------------------------------------- command
        accept, known = ctx.command(m, self.cmd, self.busy)

        out_acc_op = Signal()  # output elements go to ACC
        m.d.comb += out_acc_op.eq(is_[Op.VADD32] | is_[Op.VSCALE])

        # ---------------------------------------------------------------- issuer
        # Reads outstanding (issued, response not yet collected). Responses of both ports share
        # one FIFO: the issuer switches ports only when nothing is outstanding, so responses
        # arrive in issue order.
        outst = Signal(range(depth + 1))
        last_space = Signal()
        can_issue = Signal()
        m.d.comb += can_issue.eq(iss.active & (outst != depth)
                                 & ((outst == 0) | (last_space == iss.space)))
        base = Signal(aw)
        idx = Signal(aw)
        addr = Signal(aw)
        with m.Switch(iss.base_sel):
            for j, b in enumerate(_BASES):
                with m.Case(j):
                    m.d.comb += base.eq(ctx.base[b])
        m.d.comb += idx.eq(Mux(iss.idx_sel == 0, iss.i, Mux(iss.idx_sel == 1, iss.c, iss.r)))
        m.d.comb += addr.eq(base + Mux(iss.space == _ACC, idx << 2, idx))
        m.d.comb += [
            self.sp_rd.valid.eq(can_issue & (iss.space == _SPAD)),
            self.ac_rd.valid.eq(can_issue & (iss.space == _ACC)),
            self.sp_rd.payload.eq(addr),
            self.ac_rd.payload.eq(addr),
            iss.step.eq((self.sp_rd.valid & self.sp_rd.ready)
                        | (self.ac_rd.valid & self.ac_rd.ready)),
        ]
        with m.If(iss.step):
            m.d.sync += last_space.eq(iss.space)
        m.d.comb += [
            tfifo.w_en.eq(iss.step),
            itag.kind.eq(iss.kind),
            itag.k.eq(iss.k),
            itag.elem.eq(((iss.kind == _RED) | (iss.kind == _MAIN)) & iss.last_k),
            itag.first.eq(iss.c == 0),
            itag.c0.eq(iss.c[0]),
            itag.red2.eq(iss.pidx == 2),
            itag.space.eq(iss.space),
            # last read of a row's reduction pass (VSOFTMAX: of its second one)
            itag.rowend.eq((iss.kind == _RED) & iss.last_k & iss.last_c
                           & ~(is_[Op.VSOFTMAX] & (iss.pidx == 1))),
        ]
        # response FIFO: never full thanks to the outstanding counter
        m.d.comb += [
            rfifo.w_data.eq(Mux(self.sp_rdata.valid, self.sp_rdata.payload,
                                self.ac_rdata.payload)),
            rfifo.w_en.eq(self.sp_rdata.valid | self.ac_rdata.valid),
            self.sp_rdata.ready.eq(rfifo.w_rdy),
            self.ac_rdata.ready.eq(rfifo.w_rdy),
        ]

        # ---------------------------------------------------------------- pipeline registers
        # S1: operands of one element
        s1_v = Signal()
        s1_red = Signal()
        s1_red2 = Signal()
        s1_first = Signal()
        s1_a = Signal(signed(32))
        s1_b = Signal(signed(32))
        s1_c = Signal(signed(8))
        red_i = Signal(16)  # index of the next reduction element in its row (VARGMAX)
        tab_c = Signal(9)  # table prologue byte counter
        # S2: multiplier operands, small product, table data
        s2_v = Signal()
        s2_main = Signal()
        s2_first = Signal()
        s2_red2 = Signal()
        s2_x = Signal(signed(32))
        s2_xsel = Signal(2)
        s2_y = Signal(signed(32))
        s2_ts = Signal(6)
        s2_off = Signal(signed(9))
        s2_cls = Signal(2)
        s2_rms = Signal()
        s2_re = Signal()  # a row-end word, not an output element
        # M: the multiplier's operands (X selected: register, small product or table entry)
        m_v = Signal()
        m_rms = Signal()
        m_x = Signal(signed(32))
        m_y = Signal(signed(32))
        m_ctl = Signal(_ELEM_CTL)
        # MK: a spare register in front of M (a skid buffer): S2 hands an element over whenever
        # the spare is empty, so S2's and S1's handshakes (and the FIFO pop behind them) do not
        # wait on the ready chain of M, P, S3, S4 and OUT (timing)
        mk_v = Signal()
        mk_rms = Signal()
        mk_x = Signal(signed(32))
        mk_y = Signal(signed(32))
        mk_ctl = Signal(_ELEM_CTL)
        # P: the four 16x16 partial products of the 32x32 multiply
        p_v = Signal()
        p_pend = Signal()
        p_ctl = Signal(_ELEM_CTL)
        # S3: product
        s3_v = Signal()
        s3_pend = Signal()  # VRMS: second multiply (by M0) still to do
        s3_prod = Signal(signed(64))
        s3_ctl = Signal(_ELEM_CTL)
        s3_off, s3_cls, s3_re = s3_ctl.off, s3_ctl.cls, s3_ctl.re
        # _requant_shamt of S3's ts, loaded with s3_ctl (timing: on the ECP5-85F the ts - 1
        # carry chain sat in front of the 64-bit shifter, a failing path)
        s3_tz = Signal()
        s3_sh = Signal(6)
        # S4: shifted, saturated to 36 bits
        s4_v = Signal()
        s4_val = Signal(signed(32))
        s4_rnd = Signal()
        s4_off = Signal(signed(11))  # 2 * off + 1 (see _requant_clamp)
        s4_cls = Signal(2)
        s4_re = Signal()
        # OUT: write request
        o_v = Signal()
        o_re = Signal()
        o_acc = Signal()
        o_addr = Signal(aw)
        m.d.comb += [o_acc.eq(o_re | out_acc_op), o_addr.eq(Mux(o_re, rptr, wptr))]
        o_data = Signal(32)
        # skid register behind OUT: S4 hands over whenever it is empty, so the write ports'
        # ready does not run back through the pipeline's ready chain (timing)
        k_v = Signal()
        k_re = Signal()
        k_data = Signal(32)


        # ---------------------------------------------------------------- handshakes
        o_ready = Signal()
        s4_ready = Signal()
        m_ready = Signal()
        m_leave = Signal()
        p_ready = Signal()
        p_leave = Signal()
        s3_out = Signal()
        s2_ready = Signal()
        s1_ready = Signal()
        s2_leave = Signal()
        s1_leave = Signal()
        recirc = Signal()
        port_ready = Signal()
        m.d.comb += [
            port_ready.eq(Mux(o_acc, self.ac_wr.ready, self.sp_wr.ready)),
            o_ready.eq(~k_v),
            s4_ready.eq(~s4_v | o_ready),
            s3_out.eq(s3_v & ~s3_pend & s4_ready),
            # P moves on when S3 is free or frees up (its element leaves, or recirculates: then
            # the two swap). P takes nothing while S3 recirculates, and takes an element behind
            # one that will recirculate only when that one will too (VRMS): two VRMS elements
            # swap between P and S3 and leave in order, one every two cycles.
            p_leave.eq(p_v & (~s3_v | s3_out | recirc)),
            p_ready.eq(~recirc & (~p_v | (p_leave & (~p_pend | m_rms)))),
            m_leave.eq(m_v & p_ready),
            m_ready.eq(~m_v | m_leave),
            s2_leave.eq(s2_v & (~s2_main | ~mk_v)),
            s2_ready.eq(~s2_v | s2_leave),
            s1_leave.eq(s1_v & s2_ready),
            s1_ready.eq(~s1_v | s2_ready),
        ]
        empty = Signal()  # nothing in flight
        front_empty = Signal()  # every element collected so far has left S2 (reductions done)
        m.d.comb += [
            empty.eq(~(s1_v | s2_v | mk_v | m_v | p_v | s3_v | s4_v | o_v | k_v)),
            front_empty.eq(~(s1_v | s2_v)),
        ]
        inject = Signal()
        inject_data = Signal(32)

        # ---------------------------------------------------------------- collector
        state = Signal(range(8))
        IDLE, START, PRO, RUN, DRAIN, RE_SQRT, RE_DIV, FINISH = range(8)
        rdata = Signal(signed(32))
        m.d.comb += rdata.eq(Mux(tag.space == _ACC, rfifo.r_data.as_signed(),
                                 rfifo.r_data[:8].as_signed()))
        elem = Signal()  # this pop completes an element
        m.d.comb += elem.eq(tag.elem)
        pop = Signal()
        m.d.comb += pop.eq((state == RUN) & rfifo.r_rdy & (~elem | s1_ready))
        m.d.comb += [
            tfifo.r_en.eq(pop),
            rfifo.r_en.eq(pop),
        ]
        m.d.sync += outst.eq(outst + iss.step - pop)

        # side effects of pops that complete no element
        with m.If(pop), m.Switch(tag.kind):
            with m.Case(_PARAM):
                with m.If(~tag.c0):
                    m.d.sync += [preg.eq(rdata), qreg.eq(rdata)]
                with m.Else():
                    m.d.sync += ts_reg.eq(31 - rdata[:6])
            with m.Case(_SCALE):
                m.d.sync += preg.eq(rdata)
            with m.Case(_TAB):
                m.d.sync += [tab_lo.eq(rdata[:8]), tab_c.eq(tab_c + 1)]
            with m.Default():
                with m.If(tag.k == 0):
                    m.d.sync += slot0.eq(rdata)
                with m.If(tag.k == 1):
                    m.d.sync += slot1.eq(rdata)
        m.d.comb += [
            t_wr.en.eq(pop & (tag.kind == _TAB) & (is_[Op.VACT] | tab_c[0])),
            t_wr.addr.eq(Mux(is_[Op.VACT], tab_c, tab_c >> 1)),
            t_wr.data.eq(Mux(is_[Op.VACT], rdata[:16], Cat(tab_lo, rdata[:8]))),  # VACT: sext
        ]

        # S1 load
        # the reduction value of the element (VQUANT |x|, else x: the low byte of S1's A), loaded
        # with S1 (timing: on the ECP5-85F the negation sat between S1's A and the row-max
        # compare, a failing path)
        s1_rv = Signal(signed(9))
        ld_a = Mux(tag.k == 0, rdata, slot0)  # S1's A as it loads
        ld_a8 = ld_a[:8].as_signed()
        with m.If(pop & elem):
            m.d.sync += [
                s1_rv.eq(Mux(is_[Op.VQUANT] & (ld_a8 < 0), -ld_a8, ld_a8)),
                s1_v.eq(1),
                s1_red.eq(tag.kind == _RED),
                s1_red2.eq(tag.red2),
                s1_first.eq(tag.first),
                s1_a.eq(ld_a),
                s1_b.eq(Mux(tag.k == 1, rdata, Mux(tag.k == 2, slot1, preg))),
                s1_c.eq(rdata),
            ]
        with m.Elif(s1_leave):
            m.d.sync += s1_v.eq(0)

        # ---------------------------------------------------------------- S1 -> S2
        a8 = s1_a[:8].as_signed()
        # The table is read as an element enters S1, its word registered (``t_q``) as the
        # element leaves S1 for S2 (timing: the block RAM's clock-to-out and its route have a
        # cycle of their own; on the ECP5-85F the table -> ``rsum`` adder / ``m_x`` paths
        # failed). The index is the arriving element's: VACT x ^ 0x80, VSOFTMAX x - max + 128
        # (clamped at 0) with the row max as it is after this cycle (the reduction element
        # leaving S1 may still raise it; see the row max below). No cycle moves. Both indices,
        # from S1's element and from the row max register, are formed side by side and the
        # row-max compare only selects between them (timing: on the ECP5-85F the compare,
        # then the subtraction sat in front of the table's address, a failing path).
        upd_max = Signal()  # the reduction element in S1 sets the row max (and VARGMAX's index)
        m.d.comb += upd_max.eq(s1_v & s1_red & ~s1_red2 & (s1_first | (s1_rv > rmax)))

        def sm_index(mx, name):
            d = Signal(signed(10), name=f"d_sm_{name}")
            m.d.comb += d.eq(ld_a8 - mx[:8].as_signed() + 128)
            return Mux(d < 0, 0, d[:8])

        tidx = Signal(8)
        m.d.comb += tidx.eq(Mux(is_[Op.VACT], ld_a8[:8] ^ 0x80,
                                Mux(upd_max, sm_index(s1_rv, "s1"), sm_index(rmax, "rmax"))))
        m.d.comb += [t_rd.addr.eq(tidx), t_rd.en.eq(pop & elem)]
        t_q = Signal(16)
        with m.If(s1_leave):
            m.d.sync += t_q.eq(t_rd.data)
        b8 = s1_b[:8].as_signed()
        c8 = s1_c[:8].as_signed()
        # S2's small product: x*x, x*g, a*b, or VGATE's max(f, 0) * (h - c), loaded with S2 (on
        # the ECP5 into the DSP's own output register: registered_product; timing)
        s2_sp = registered_product(m, platform, Mux(is_[Op.VGATE], Mux(a8 < 0, 0, a8), a8),
                                   Mux(is_[Op.VGATE], c8 - b8, Mux(s1_red, a8, b8)),
                                   s1_leave, "s2_sp", 18)
        add_sum = Signal(32)  # VADD, VADD32 (int8 operands are sign-extended), saturated
        add_ovf = Signal()
        m.d.comb += [
            add_sum.eq(s1_a + s1_b),
            add_ovf.eq((s1_a[31] == s1_b[31]) & (add_sum[31] != s1_a[31])),
        ]
        # per-instruction constants of the S2 load
        y_from_b = Signal()
        xsel = Signal(2)
        cls = Signal(2)
        m.d.comb += [
            y_from_b.eq(is_[Op.VREQ] | is_[Op.VSCALE] | is_[Op.VQUANT] | is_[Op.VSOFTMAX]
                        | is_[Op.VACT]),
            xsel.eq(Mux(is_[Op.VMUL] | is_[Op.VRMS] | is_[Op.VGATE], _X_SP,
                        Mux(is_[Op.VACT] | is_[Op.VSOFTMAX], _X_TAB, _X_REG))),
            cls.eq(Mux(out_acc_op, _CLS_I32, Mux(is_[Op.VQUANT], _CLS_Q127, _CLS_I8))),
        ]

        # reductions at S1: the element's value (``s1_rv``) and its index in the row (in every
        # cycle, not under ``s1_leave``: the row max below reads them while the element waits)
        rv = s1_rv
        ridx = Mux(s1_first, 0, red_i)
        with m.If(s1_leave):
            m.d.sync += [
                s2_v.eq(1),
                s2_main.eq(~s1_red),
                s2_first.eq(s1_first),
                s2_red2.eq(s1_red2),
                s2_re.eq(0),
                s2_xsel.eq(xsel),
                s2_x.eq(Mux(is_[Op.VADD] | is_[Op.VADD32],
                            Mux(add_ovf, Mux(s1_a[31], -(2**31), 2**31 - 1), add_sum[:32]),
                            s1_a)),
                s2_y.eq(Mux(y_from_b, s1_b, preg)),
                s2_ts.eq(Mux(is_[Op.VREQ] & ctx.pc, 31 - s1_c[:6], ts_reg)),
                s2_off.eq(Mux(is_[Op.VGATE], b8, ctx.zp)),
                s2_cls.eq(cls),
                s2_rms.eq(is_[Op.VRMS]),
            ]
            with m.If(s1_red):
                m.d.sync += red_i.eq(ridx + 1)
        with m.Elif(inject):  # row-end ACC write (VQUANT m, VARGMAX index) as an element
            m.d.sync += [
                s2_v.eq(1),
                s2_main.eq(1),
                s2_first.eq(0),
                s2_red2.eq(0),
                s2_re.eq(1),
                s2_xsel.eq(_X_REG),
                s2_x.eq(inject_data),
                s2_y.eq(1),
                s2_ts.eq(0),
                s2_off.eq(0),
                s2_cls.eq(_CLS_I32),
                s2_rms.eq(0),
            ]
        with m.Elif(s2_leave):
            m.d.sync += s2_v.eq(0)

        # the row max (and VARGMAX's index of it) from the reduction element in S1, also in the
        # cycles it waits there: a max is idempotent, so an element that waits writes the same
        # values again (timing: S1's ``leave``, behind the ready chain of S2 and the spare,
        # is not in the registers' enable; on the ECP5-85F that was a failing path)
        with m.If(upd_max):
            m.d.sync += [rmax.eq(rv), best_i.eq(ridx)]
        # reductions at S2
        with m.If(s2_leave & ~s2_main), m.If(is_[Op.VRMS] | s2_red2):
            m.d.sync += rsum.eq(Mux(s2_first, 0, rsum)
                                + Mux(is_[Op.VRMS], s2_sp[:15], t_q))

        # ---------------------------------------------------------------- S2 -> M -> P -> S3
        # Three register stages: the operands (the table read and the X select end at M), the
        # partial products (P), their sum (S3). A VRMS element leaves S3 once more through P for
        # its second multiply (by M0).
        tab = Signal(signed(17))  # VACT entries are stored sign-extended, exp entries unsigned
        m.d.comb += tab.eq(Cat(t_q, is_[Op.VACT] & t_q[15]))
        offer = Signal()  # S2 hands a main element over (to M, or to the spare MK)
        in_x = Signal(signed(32))
        in_ctl = Signal(_ELEM_CTL)
        m.d.comb += [
            offer.eq(s2_v & s2_main & ~mk_v),
            in_x.eq(Mux(s2_xsel == _X_SP, s2_sp, Mux(s2_xsel == _X_TAB, tab, s2_x))),
            in_ctl.eq(Cat(s2_ts, s2_off, s2_cls, s2_re)),
        ]
        with m.If(m_ready):  # M is free after this cycle: the spare first, then S2
            with m.If(mk_v):
                m.d.sync += [m_v.eq(1), m_rms.eq(mk_rms), m_x.eq(mk_x), m_y.eq(mk_y),
                             m_ctl.eq(mk_ctl), mk_v.eq(0)]
            with m.Else():
                m.d.sync += [m_v.eq(offer), m_rms.eq(s2_rms), m_x.eq(in_x), m_y.eq(s2_y),
                             m_ctl.eq(in_ctl)]
        with m.Elif(~mk_v):  # M stays: S2's element (if any) waits in the spare
            m.d.sync += [mk_v.eq(offer), mk_rms.eq(s2_rms), mk_x.eq(in_x), mk_y.eq(s2_y),
                         mk_ctl.eq(in_ctl)]
        mul_x = Signal(signed(32))
        mul_y = Signal(signed(32))
        # ``recirc`` (= s3_v & s3_pend) as registers of their own, loaded with the value it
        # takes (an element with a second multiply to come enters S3): one for the control,
        # one for the multiplier's operand selects (timing: on the ECP5-85F S3's flags reached
        # the DSPs' inputs through two LUTs and a 6 ns net)
        recirc_next = p_leave & p_pend
        recirc_mul = kept_register(m, platform, recirc_next, "recirc_mul", reset=True)
        m.d.comb += [
            recirc.eq(kept_register(m, platform, recirc_next, "recirc_ctl", reset=True)),
            mul_x.eq(Mux(recirc_mul, s3_prod[:32].as_signed(), m_x)),
            mul_y.eq(Mux(recirc_mul, qreg, m_y)),
        ]
        xl, xh = mul_x[:16], mul_x[16:].as_signed()
        yl, yh = mul_y[:16], mul_y[16:].as_signed()
        # the partial products' registers load in both cases below (on the ECP5 they are the
        # DSPs' own output registers: registered_product)
        p_en = Signal()
        m.d.comb += p_en.eq(recirc | p_ready)
        p_ll = registered_product(m, platform, xl, yl, p_en, "p_ll", 32)
        p_lh = registered_product(m, platform, xl, yh, p_en, "p_lh", 33)
        p_hl = registered_product(m, platform, xh, yl, p_en, "p_hl", 33)
        p_hh = registered_product(m, platform, xh, yh, p_en, "p_hh", 32)
        with m.If(recirc):
            m.d.sync += [
                p_v.eq(1),
                p_pend.eq(0),
                p_ctl.eq(s3_ctl),
            ]
        with m.Elif(p_ready):
            m.d.sync += [
                p_v.eq(m_v),
                p_pend.eq(m_rms),
                p_ctl.eq(m_ctl),
            ]
        with m.Elif(p_leave):
            m.d.sync += p_v.eq(0)
        prod = Signal(signed(64))
        m.d.comb += prod.eq(p_ll + ((p_lh + p_hl) << 16) + (p_hh << 32))
        with m.If(p_leave):
            m.d.sync += [
                s3_v.eq(1),
                s3_pend.eq(p_pend),
                s3_prod.eq(prod),
                s3_ctl.eq(p_ctl),
                Cat(s3_tz, s3_sh).eq(Cat(*_requant_shamt(p_ctl.ts))),
            ]
        with m.Elif(s3_out | recirc):
            m.d.sync += s3_v.eq(0)

        # ---------------------------------------------------------------- S3 -> S4: shift
        val = _requant_shift(m, s3_prod, s3_tz, s3_sh)
        with m.If(s4_ready):
            m.d.sync += [
                s4_v.eq(s3_v & ~s3_pend),
                s4_val.eq(val),
                s4_rnd.eq(~s3_tz),
                s4_off.eq(Cat(Const(1, 1), s3_off).as_signed()),
                s4_cls.eq(s3_cls),
                s4_re.eq(s3_re),
            ]

        # ---------------------------------------------------------------- S4 -> OUT: clamp
        y = _requant_clamp(m, s4_val, s4_rnd, s4_off, s4_cls)
        with m.If(~o_v | port_ready):  # OUT is free after this cycle: skid first, then S4
            with m.If(k_v):
                m.d.sync += [o_v.eq(1), o_re.eq(k_re), o_data.eq(k_data), k_v.eq(0)]
            with m.Else():
                m.d.sync += [o_v.eq(s4_v), o_re.eq(s4_re), o_data.eq(y)]
        with m.Elif(o_ready):  # OUT stays: S4's element (if any) waits in the skid register
            m.d.sync += [k_v.eq(s4_v), k_re.eq(s4_re), k_data.eq(y)]
        with m.If(o_v & port_ready):
            with m.If(o_re):
                m.d.sync += rptr.eq(rptr + 4)
            with m.Else():
                m.d.sync += wptr.eq(wptr + Mux(out_acc_op, 4, 1))
        m.d.comb += [
            self.sp_wr.valid.eq(o_v & ~o_acc),
            self.ac_wr.valid.eq(o_v & o_acc),
            self.sp_wr.payload.addr.eq(o_addr),
            self.sp_wr.payload.data.eq(o_data[:8]),
            self.ac_wr.payload.addr.eq(o_addr),
            self.ac_wr.payload.data.eq(o_data),
        ]

        # ---------------------------------------------------------------- control
        m.d.comb += [
            self.busy.eq(state != IDLE),
            iss.start.eq(state == START),
            self.stall.eq(
                (self.sp_rd.valid & ~self.sp_rd.ready) | (self.ac_rd.valid & ~self.ac_rd.ready)
                | (o_v & ~port_ready)
            ),
        ]
        m_q = Signal(8)
        m.d.comb += m_q.eq(Mux(rmax == 0, 1, rmax))
        # sequential units' operands (sampled on start): isqrt(n << 16) in the VRMS prologue,
        # isqrt(ss << 16) per row; r = num // root (VRMS), R = (127 << 24) // m or // sum
        m.d.comb += [
            seq.x.eq(Mux(state == START, ctx.n, rsum)),
            seq.num.eq(Mux(is_[Op.VRMS], num << 15, 127 << 24)),
            seq.den.eq(Mux(is_[Op.VRMS], Mux(seq.root == 0, 1, seq.root),
                           Mux(is_[Op.VQUANT], m_q, Mux(rsum == 0, 1, rsum)))),
        ]
        with m.Switch(state):
            with m.Case(IDLE), m.If(accept):
                m.d.sync += state.eq(Mux(known, START, FINISH))
            with m.Case(START):
                m.d.sync += [
                    wptr.eq(ctx.base["dst"]),
                    tab_c.eq(0),
                    rptr.eq(Mux(is_[Op.VQUANT], ctx.base["param"], ctx.base["dst"])),
                    preg.eq(1),
                    ts_reg.eq(Mux(is_[Op.VQUANT] | is_[Op.VSOFTMAX], 24,
                                  Mux(is_[Op.VGATE], 7, 0))),
                ]
                with m.If(is_[Op.VRMS]):
                    m.d.comb += seq.start_sqrt.eq(1)
                    m.d.sync += state.eq(PRO)
                with m.Else():
                    m.d.sync += state.eq(RUN)
            with m.Case(PRO), m.If(~seq.busy):
                m.d.sync += [num.eq(seq.root), state.eq(RUN)]
            with m.Case(RUN):
                with m.If(~iss.active & (outst == 0)):
                    m.d.sync += state.eq(FINISH)
                with m.Elif(pop & tag.rowend):
                    m.d.sync += state.eq(DRAIN)
            with m.Case(DRAIN), m.If(front_empty):
                with m.If(is_[Op.VRMS]):
                    m.d.comb += seq.start_sqrt.eq(1)
                    m.d.sync += state.eq(RE_SQRT)
                with m.Elif(is_[Op.VQUANT]):
                    m.d.comb += [
                        inject.eq(1),
                        inject_data.eq(m_q),
                        seq.start_div.eq(1),
                    ]
                    m.d.sync += state.eq(RE_DIV)
                with m.Elif(is_[Op.VSOFTMAX]):
                    m.d.comb += [
                        seq.start_div.eq(1),
                    ]
                    m.d.sync += state.eq(RE_DIV)
                with m.Else():  # VARGMAX
                    m.d.comb += [inject.eq(1), inject_data.eq(best_i)]
                    m.d.sync += state.eq(RUN)
            with m.Case(RE_SQRT), m.If(~seq.busy):
                m.d.comb += [
                    seq.start_div.eq(1),
                ]
                m.d.sync += state.eq(RE_DIV)
            with m.Case(RE_DIV), m.If(~seq.busy):
                m.d.sync += [preg.eq(seq.q), state.eq(RUN)]
            with m.Case(FINISH), m.If(empty):
                m.d.comb += self.done.eq(1)
                m.d.sync += state.eq(IDLE)
        return m
