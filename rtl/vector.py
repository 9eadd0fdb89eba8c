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

__all__ = ["VECTOR_OPS", "VectorUnit", "cmd_layout", "pack_cmd"]

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


class _Isqrt(Elaboratable):
    """``root = isqrt(x << 16)``, digit by digit, one result bit per cycle (24 cycles)."""

    def __init__(self):
        self.x = Signal(_ISQRT_BITS - 16)
        self.start = Signal()
        self.busy = Signal()
        self.root = Signal(_ISQRT_BITS // 2)

    def elaborate(self, platform):
        m = Module()
        steps = _ISQRT_BITS // 2
        xr = Signal(_ISQRT_BITS - 16)  # digits of x, then zeros (the << 16)
        rem = Signal(steps + 4)
        cnt = Signal(range(steps + 1))
        rem2 = Signal(steps + 4)
        trial = Signal(steps + 4)
        m.d.comb += [
            rem2.eq(Cat(xr[-2:], rem)),
            trial.eq(Cat(Const(1, 2), self.root)),
        ]
        with m.If(self.start):
            m.d.sync += [xr.eq(self.x), rem.eq(0), self.root.eq(0), cnt.eq(steps),
                         self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += [xr.eq(xr << 2), cnt.eq(cnt - 1)]
            with m.If(rem2 >= trial):
                m.d.sync += [rem.eq(rem2 - trial), self.root.eq(Cat(Const(1, 1), self.root))]
            with m.Else():
                m.d.sync += [rem.eq(rem2), self.root.eq(Cat(Const(0, 1), self.root))]
            with m.If(cnt == 1):
                m.d.sync += self.busy.eq(0)
        return m


class _Divider(Elaboratable):
    """Restoring unsigned divider ``q = num // den``, one quotient bit per cycle."""

    def __init__(self):
        self.num = Signal(_DIV_BITS)
        self.den = Signal(_DIV_BITS)
        self.start = Signal()
        self.busy = Signal()
        self.q = Signal(_DIV_BITS)

    def elaborate(self, platform):
        m = Module()
        rem = Signal(_DIV_BITS + 1)
        den = Signal(_DIV_BITS)
        cnt = Signal(range(_DIV_BITS + 1))
        rem2 = Signal(_DIV_BITS + 1)
        m.d.comb += rem2.eq(Cat(self.q[-1], rem))
        with m.If(self.start):
            m.d.sync += [self.q.eq(self.num), den.eq(self.den), rem.eq(0), cnt.eq(_DIV_BITS),
                         self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += cnt.eq(cnt - 1)
            with m.If(rem2 >= den):
                m.d.sync += [rem.eq(rem2 - den), self.q.eq(Cat(Const(1, 1), self.q))]
            with m.Else():
                m.d.sync += [rem.eq(rem2), self.q.eq(Cat(Const(0, 1), self.q))]
            with m.If(cnt == 1):
                m.d.sync += self.busy.eq(0)
        return m


class _Ctx:
    """Registered instruction fields shared by the two walkers and the datapath."""

    def __init__(self, aw: int):
        self.is_ = {op: Signal(name=f"is_{op.name.lower()}") for op in VECTOR_OPS}
        self.pc = Signal()
        self.rows = Signal(12)
        self.n = Signal(16)
        self.base = {b: Signal(aw, name=f"base_{b}") for b in _BASES}
        self.zp = Signal(signed(8))


class _Walker:
    """Loop nest (prologue, rows x passes x elements x operands) of one instruction.

    Two instances walk the same sequence: the issuer (read requests) and the collector (read
    responses), so requests and responses pair up by position alone.
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
                m.d.comb += self.last_c.eq(self.c == ctx.n - 1)

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
        m.d.comb += self.i.eq(self.rowbase + self.c)

        with m.If(self.start):
            m.d.sync += [
                self.active.eq(1),
                self.pidx.eq(Mux(has_pro, 0, 1)),
                self.r.eq(0),
                self.c.eq(0),
                self.k.eq(0),
                self.rowbase.eq(0),
            ]
        with m.Elif(self.step):
            with m.If(~self.last_k):
                m.d.sync += self.k.eq(self.k + 1)
            with m.Else():
                m.d.sync += self.k.eq(0)
                with m.If(~self.last_c):
                    m.d.sync += self.c.eq(self.c + 1)
                with m.Else():
                    m.d.sync += self.c.eq(0)
                    with m.If(self.pidx == 0):
                        m.d.sync += self.pidx.eq(1)
                    with m.Elif(self.pidx != npass):
                        m.d.sync += self.pidx.eq(self.pidx + 1)
                    with m.Else():
                        m.d.sync += self.pidx.eq(1)
                        with m.If(self.r == ctx.rows - 1):
                            m.d.sync += self.active.eq(0)
                        with m.Else():
                            m.d.sync += [
                                self.r.eq(self.r + 1),
                                self.rowbase.eq(self.rowbase + ctx.n),
                            ]


# ------------------------------------------------------------------------------ the unit
class VectorUnit(wiring.Component):
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
        Read responses each read port may have outstanding (default 4; 3 sustain one read per
        cycle from a memory answering in the cycle after a request, each extra cycle of read
        latency needs one more).

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
        requests are outstanding and the unit has room for all their responses.
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

    Cycle-level contract. Each instruction walks: an optional prologue, then for each row its
    passes of ``n`` elements; a pass issues ``K`` reads per element on one port (one request per
    cycle, at most ``depth`` outstanding), collects the responses in order into a 5-stage
    pipeline (operands, small multiply / table read, 32x32 multiply, rounding shift, write
    register) and writes one element per result. Row reductions (sum of squares, absmax, max,
    exp sum, argmax) are folded in as elements pass; at the end of a reduction pass the
    pipeline drains and the row's reciprocal is computed by a sequential isqrt (24 cycles) and
    divider (32 cycles). Nothing is data dependent. With every ``ready`` high and a memory that
    answers each read in the cycle after accepting it, an instruction takes, from the cycle its
    ``cmd`` transfers to its ``done`` pulse, with ``T = rows * n``:

    ============ ================================ =============================================
    op           reads per element (K)            cycles
    ============ ================================ =============================================
    VREQ         1 (per-channel: 3)               ``T + 8`` (per-channel ``3 T + 6``)
    VADD         2                                ``2 T + 6``
    VADD32       2                                ``2 T + 6``
    VMUL         2                                ``2 T + 8``
    VSCALE       1, + 1 scale read per row        ``T + rows + 6``
    VACT         1, + 256-byte table prologue     ``T + 262``
    VRMS         1 (sum of squares), 2            ``rows * (3 n + 65) + 34``
    VQUANT       1 (absmax), 1                    ``rows * (2 n + 39) + 6``
    VGATE        3                                ``3 T + 6``
    VSOFTMAX     1 (max), 1 (exp sum), 1          ``rows * (3 n + 39) + 518``
    VARGMAX      1                                ``rows * (n + 6) + 2``
    ============ ================================ =============================================

    Memory stalls and longer read latency add to these; elementwise ops move one element per
    ``K`` cycles in the steady state. The unit never raises ``valid`` of one stream in response to
    the ``ready`` of another in the same cycle (every ``valid`` comes from registered state), so the
    top may arbitrate the ports combinationally.

    Multipliers: one 32x32 signed (requantization, scales, reciprocal products; VRMS uses it
    twice per element, ``x*g*r`` then ``*M0``) and one 8x8 (``x*x``, ``x*g``, ``a*b``).
    """

    def __init__(self, cfg: AcceleratorConfig, depth: int = 4):
        if depth < 2:
            raise ValueError(f"depth={depth}; depth must be >= 2")
        self.cfg = cfg
        self.depth = depth
        self.spad_aw = ceil_log2(cfg.spad_bytes)
        self.acc_aw = ceil_log2(cfg.acc_bytes)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout())),
            "sp_rd": Out(stream.Signature(unsigned(self.spad_aw))),
            "sp_rdata": In(stream.Signature(unsigned(8))),
            "sp_wr": Out(stream.Signature(_wr_layout(self.spad_aw, 8))),
            "ac_rd": Out(stream.Signature(unsigned(self.acc_aw))),
            "ac_rdata": In(stream.Signature(unsigned(32))),
            "ac_wr": Out(stream.Signature(_wr_layout(self.acc_aw, 32))),
            "busy": Out(1),
            "done": Out(1),
            "stall": Out(1),
        })

    @staticmethod
    def cycles(instr: isa.Instr) -> int:
        """Cycles from the ``cmd`` transfer to the ``done`` pulse of ``instr`` with no stalls
        and one-cycle read latency (the table in the class docstring)."""
        op, rows, n = instr.op, instr.rows, instr.n
        t = rows * n
        if op not in VECTOR_OPS or rows == 0 or n == 0:
            return 2
        return {
            Op.VREQ: 3 * t + 9 if instr.per_channel else t + 11,
            Op.VADD: 2 * t + 9,
            Op.VADD32: 2 * t + 9,
            Op.VMUL: 2 * t + 11,
            Op.VSCALE: t + rows + 9,
            Op.VACT: t + 265,
            Op.VRMS: rows * (3 * n + 61) + 35,
            Op.VQUANT: rows * (2 * n + 36) + 9,
            Op.VGATE: 3 * t + 9,
            Op.VSOFTMAX: rows * (3 * n + 36) + 521,
            Op.VARGMAX: rows * (n + 3) + 8,
        }[op]

    def elaborate(self, platform):
        m = Module()
        aw = max(self.spad_aw, self.acc_aw)
        depth = self.depth
        ctx = _Ctx(aw)
        is_ = ctx.is_

        # ---------------------------------------------------------------- submodules
        m.submodules.sp_fifo = sp_fifo = SyncFIFO(width=8, depth=depth)
        m.submodules.ac_fifo = ac_fifo = SyncFIFO(width=32, depth=depth)
        m.submodules.isqrt = isq = _Isqrt()
        m.submodules.div = div = _Divider()
        m.submodules.table = table = Memory(shape=unsigned(16), depth=256, init=[])
        t_wr = table.write_port()
        t_rd = table.read_port()

        iss = _Walker(m, ctx, aw, "iss")
        col = _Walker(m, ctx, aw, "col")

        # ---------------------------------------------------------------- state
        # The multiplier's Y operand: M0 (VREQ per-tensor, VMUL), the row scale (VSCALE), the row
        # reciprocal (VRMS r, VQUANT / VSOFTMAX R) or 1 (the rest go through the multiplier as
        # x * 1). VRMS multiplies twice: by r (preg), then by M0 (qreg).
        preg = Signal(signed(32))
        qreg = Signal(signed(32))
        ts_reg = Signal(6)  # rounding shift: 31 - shift, 24 (VQUANT, VSOFTMAX), 7 (VGATE), 0
        num = Signal(16)  # VRMS isqrt(n << 16)
        ss = Signal(32)  # VRMS sum of squares
        esum = Signal(32)  # VSOFTMAX sum of exp
        amax = Signal(8)  # VQUANT max |x|
        mx = Signal(signed(8))  # VSOFTMAX row max
        best = Signal(signed(8))  # VARGMAX
        best_i = Signal(16)
        tab_lo = Signal(8)
        slot0 = Signal(signed(32))
        slot1 = Signal(signed(32))
        re_addr = Signal(aw)  # row-end write address (VQUANT m, VARGMAX index)

        # ---------------------------------------------------------------- command
        p = self.cmd.payload
        opc = Signal(isa.OPCODE_BITS)
        m.d.comb += self.cmd.ready.eq(~self.busy)
        accept = Signal()
        m.d.comb += accept.eq(self.cmd.valid & self.cmd.ready)
        known = Signal()
        m.d.comb += known.eq(
            (p.op >= int(VECTOR_OPS[0])) & (p.op <= int(VECTOR_OPS[-1])) & (p.rows != 0)
            & (p.n != 0)
        )
        with m.If(accept):
            m.d.sync += [
                opc.eq(p.op),
                ctx.pc.eq(p.per_channel),
                ctx.rows.eq(p.rows),
                ctx.n.eq(p.n),
                ctx.zp.eq(Mux((p.op == int(Op.VREQ)) | (p.op == int(Op.VMUL))
                              | (p.op == int(Op.VRMS)), p.zp, 0)),
                ctx.base["src"].eq(p.src),
                ctx.base["src2"].eq(p.src2),
                ctx.base["dst"].eq(p.dst),
                ctx.base["param"].eq(p.param),
                ctx.base["param_n"].eq(p.param + (p.n << 2)),
            ]
            for op in VECTOR_OPS:
                m.d.sync += is_[op].eq((p.op == int(op)) & known)

        # ---------------------------------------------------------------- issuer
        out_sp = Signal(range(depth + 1))
        out_ac = Signal(range(depth + 1))
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
            self.sp_rd.valid.eq(iss.active & (iss.space == _SPAD) & (out_sp != depth)),
            self.ac_rd.valid.eq(iss.active & (iss.space == _ACC) & (out_ac != depth)),
            self.sp_rd.payload.eq(addr),
            self.ac_rd.payload.eq(addr),
            iss.step.eq((self.sp_rd.valid & self.sp_rd.ready)
                        | (self.ac_rd.valid & self.ac_rd.ready)),
        ]
        # response FIFOs: never full thanks to the outstanding counters
        m.d.comb += [
            sp_fifo.w_data.eq(self.sp_rdata.payload),
            sp_fifo.w_en.eq(self.sp_rdata.valid),
            self.sp_rdata.ready.eq(sp_fifo.w_rdy),
            ac_fifo.w_data.eq(self.ac_rdata.payload),
            ac_fifo.w_en.eq(self.ac_rdata.valid),
            self.ac_rdata.ready.eq(ac_fifo.w_rdy),
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
        s1_col = Signal(16)
        s1_waddr = Signal(aw)
        s1_wacc = Signal()
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
        s2_sp = Signal(signed(18))
        s2_waddr = Signal(aw)
        s2_wacc = Signal()
        # S3: product
        s3_v = Signal()
        s3_pend = Signal()  # VRMS: second multiply (by M0) still to do
        s3_prod = Signal(signed(64))
        s3_ts = Signal(6)
        s3_off = Signal(signed(9))
        s3_cls = Signal(2)
        s3_waddr = Signal(aw)
        s3_wacc = Signal()
        # S4: shifted, saturated to 36 bits
        s4_v = Signal()
        s4_val = Signal(signed(32))
        s4_rnd = Signal()
        s4_off = Signal(signed(9))
        s4_cls = Signal(2)
        s4_waddr = Signal(aw)
        s4_wacc = Signal()
        # OUT: write request
        o_v = Signal()
        o_acc = Signal()
        o_addr = Signal(aw)
        o_data = Signal(32)

        out_acc_op = Signal()  # MAIN results go to ACC
        m.d.comb += out_acc_op.eq(is_[Op.VADD32] | is_[Op.VSCALE])

        # ---------------------------------------------------------------- handshakes
        o_ready = Signal()
        s4_ready = Signal()
        s3_ready = Signal()
        s2_ready = Signal()
        s1_ready = Signal()
        s2_leave = Signal()
        s1_leave = Signal()
        recirc = Signal()
        port_ready = Signal()
        m.d.comb += [
            port_ready.eq(Mux(o_acc, self.ac_wr.ready, self.sp_wr.ready)),
            o_ready.eq(~o_v | port_ready),
            s4_ready.eq(~s4_v | o_ready),
            recirc.eq(s3_v & s3_pend),
            s3_ready.eq(~s3_v | (~s3_pend & s4_ready)),
            s2_leave.eq(s2_v & (~s2_main | s3_ready)),
            s2_ready.eq(~s2_v | s2_leave),
            s1_leave.eq(s1_v & s2_ready),
            s1_ready.eq(~s1_v | s2_ready),
        ]
        empty = Signal()  # nothing in flight
        front_empty = Signal()  # every element collected so far has left S2 (reductions done)
        m.d.comb += [
            empty.eq(~(s1_v | s2_v | s3_v | s4_v | o_v)),
            front_empty.eq(~(s1_v | s2_v)),
        ]
        inject = Signal()
        inject_data = Signal(32)

        # ---------------------------------------------------------------- collector
        state = Signal(range(8))
        IDLE, START, PRO, RUN, DRAIN, RE_SQRT, RE_DIV, FINISH = range(8)
        rdata = Signal(signed(32))
        fifo_rdy = Signal()
        m.d.comb += [
            rdata.eq(Mux(col.space == _ACC, ac_fifo.r_data.as_signed(),
                         sp_fifo.r_data.as_signed())),
            fifo_rdy.eq(Mux(col.space == _ACC, ac_fifo.r_rdy, sp_fifo.r_rdy)),
        ]
        elem = Signal()  # this pop completes an element
        m.d.comb += elem.eq(((col.kind == _RED) | (col.kind == _MAIN)) & col.last_k)
        pop = Signal()
        m.d.comb += pop.eq((state == RUN) & col.active & fifo_rdy & (~elem | s1_ready))
        m.d.comb += [
            col.step.eq(pop),
            sp_fifo.r_en.eq(pop & (col.space == _SPAD)),
            ac_fifo.r_en.eq(pop & (col.space == _ACC)),
        ]
        pop_sp = Signal()
        pop_ac = Signal()
        m.d.comb += [pop_sp.eq(pop & (col.space == _SPAD)), pop_ac.eq(pop & (col.space == _ACC))]
        iss_sp = Signal()
        iss_ac = Signal()
        m.d.comb += [
            iss_sp.eq(self.sp_rd.valid & self.sp_rd.ready),
            iss_ac.eq(self.ac_rd.valid & self.ac_rd.ready),
        ]
        m.d.sync += [
            out_sp.eq(out_sp + iss_sp - pop_sp),
            out_ac.eq(out_ac + iss_ac - pop_ac),
        ]

        # side effects of pops that complete no element
        with m.If(pop), m.Switch(col.kind):
            with m.Case(_PARAM):
                with m.If(col.c == 0):
                    m.d.sync += [preg.eq(rdata), qreg.eq(rdata)]
                with m.Else():
                    m.d.sync += ts_reg.eq(31 - rdata[:6])
            with m.Case(_SCALE):
                m.d.sync += preg.eq(rdata)
            with m.Case(_TAB):
                m.d.sync += tab_lo.eq(rdata[:8])
            with m.Default():
                with m.If(col.k == 0):
                    m.d.sync += slot0.eq(rdata)
                with m.If(col.k == 1):
                    m.d.sync += slot1.eq(rdata)
        m.d.comb += [
            t_wr.en.eq(pop & (col.kind == _TAB) & (is_[Op.VACT] | col.c[0])),
            t_wr.addr.eq(Mux(is_[Op.VACT], col.c, col.c >> 1)),
            t_wr.data.eq(Mux(is_[Op.VACT], rdata[:16], Cat(tab_lo, rdata[:8]))),  # VACT: sext
        ]

        # S1 load
        with m.If(pop & elem):
            m.d.sync += [
                s1_v.eq(1),
                s1_red.eq(col.kind == _RED),
                s1_red2.eq(col.pidx == 2),
                s1_first.eq(col.c == 0),
                s1_a.eq(Mux(col.k == 0, rdata, slot0)),
                s1_b.eq(Mux(col.k == 1, rdata, Mux(col.k == 2, slot1, preg))),
                s1_c.eq(rdata),
                s1_col.eq(col.c),
                s1_waddr.eq(ctx.base["dst"] + Mux(out_acc_op, col.i << 2, col.i)),
                s1_wacc.eq(out_acc_op),
            ]
        with m.Elif(s1_leave):
            m.d.sync += s1_v.eq(0)

        # ---------------------------------------------------------------- S1 -> S2
        a8 = s1_a[:8].as_signed()
        tidx = Signal(8)
        d_sm = Signal(signed(10))
        m.d.comb += d_sm.eq(a8 - mx + 128)
        m.d.comb += tidx.eq(Mux(is_[Op.VACT], s1_a[:8] ^ 0x80, Mux(d_sm < 0, 0, d_sm[:8])))
        m.d.comb += [t_rd.addr.eq(tidx), t_rd.en.eq(s1_leave)]
        b8 = s1_b[:8].as_signed()
        c8 = s1_c[:8].as_signed()
        sp_next = Signal(signed(18))  # x*x, x*g, a*b, or VGATE's max(f, 0) * (h - c)
        m.d.comb += sp_next.eq(
            Mux(is_[Op.VGATE], Mux(a8 < 0, 0, a8), a8)
            * Mux(is_[Op.VGATE], c8 - b8, Mux(s1_red, a8, b8))
        )
        add_sum = Signal(signed(33))  # VADD, VADD32 (int8 operands are sign-extended)
        m.d.comb += add_sum.eq(s1_a + s1_b)
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

        with m.If(s1_leave):
            m.d.sync += [
                s2_v.eq(1),
                s2_main.eq(~s1_red),
                s2_first.eq(s1_first),
                s2_red2.eq(s1_red2),
                s2_sp.eq(sp_next),
                s2_waddr.eq(s1_waddr),
                s2_wacc.eq(s1_wacc),
                s2_xsel.eq(xsel),
                s2_x.eq(Mux(is_[Op.VADD] | is_[Op.VADD32],
                            Mux(add_sum > 2**31 - 1, 2**31 - 1,
                                Mux(add_sum < -(2**31), -(2**31), add_sum)),
                            s1_a)),
                s2_y.eq(Mux(y_from_b, s1_b, preg)),
                s2_ts.eq(Mux(is_[Op.VREQ] & ctx.pc, 31 - s1_c[:6], ts_reg)),
                s2_off.eq(Mux(is_[Op.VGATE], b8, ctx.zp)),
                s2_cls.eq(cls),
                s2_rms.eq(is_[Op.VRMS]),
            ]
            # reductions at S1
            with m.If(s1_red):
                with m.If(is_[Op.VQUANT]):
                    absx = Signal(8)
                    m.d.comb += absx.eq(Mux(a8 < 0, -a8, a8))
                    with m.If(s1_first | (absx > amax)):
                        m.d.sync += amax.eq(absx)
                with m.If(is_[Op.VSOFTMAX] & ~s1_red2), m.If(s1_first | (a8 > mx)):
                    m.d.sync += mx.eq(a8)
                with m.If(is_[Op.VARGMAX]), m.If(s1_first | (a8 > best)):
                    m.d.sync += [best.eq(a8), best_i.eq(s1_col)]
        with m.Elif(inject):  # row-end ACC write (VQUANT m, VARGMAX index) as an element
            m.d.sync += [
                s2_v.eq(1),
                s2_main.eq(1),
                s2_first.eq(0),
                s2_red2.eq(0),
                s2_waddr.eq(re_addr),
                s2_wacc.eq(1),
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
        # reductions at S2
        with m.If(s2_leave & ~s2_main):
            with m.If(is_[Op.VRMS]):
                m.d.sync += ss.eq(Mux(s2_first, 0, ss) + s2_sp[:15])
            with m.If(is_[Op.VSOFTMAX] & s2_red2):
                m.d.sync += esum.eq(Mux(s2_first, 0, esum) + t_rd.data)

        # ---------------------------------------------------------------- S2 -> S3: multiply
        mul_x = Signal(signed(32))
        mul_y = Signal(signed(32))
        x2 = Signal(signed(32))
        tab = Signal(signed(17))  # VACT entries are stored sign-extended, exp entries unsigned
        m.d.comb += [
            tab.eq(Cat(t_rd.data, is_[Op.VACT] & t_rd.data[15])),
            x2.eq(Mux(s2_xsel == _X_SP, s2_sp, Mux(s2_xsel == _X_TAB, tab, s2_x))),
            mul_x.eq(Mux(recirc, s3_prod[:32].as_signed(), x2)),
            mul_y.eq(Mux(recirc, qreg, s2_y)),
        ]
        prod = Signal(signed(64))
        m.d.comb += prod.eq(mul_x * mul_y)
        with m.If(recirc):
            m.d.sync += [s3_prod.eq(prod), s3_pend.eq(0)]
        with m.Elif(s3_ready):
            m.d.sync += [
                s3_v.eq(s2_v & s2_main),
                s3_pend.eq(s2_rms),
                s3_prod.eq(prod),
                s3_ts.eq(s2_ts),
                s3_off.eq(s2_off),
                s3_cls.eq(s2_cls),
                s3_waddr.eq(s2_waddr),
                s3_wacc.eq(s2_wacc),
            ]

        # ---------------------------------------------------------------- S3 -> S4: shift
        # Rounding shifts by ts >= 1 ((p + 2^(ts-1)) >> ts) are done as ((p >> (ts-1)) + 1) >> 1;
        # p >> (ts-1) only matters saturated to _Q_BITS (the result is clamped to int8 later).
        # ts == 0 (no shift): the int32 saturation of the product.
        shamt = Signal(6)
        m.d.comb += shamt.eq(Mux(s3_ts == 0, 0, s3_ts - 1))
        q = _rshift_sat(m, s3_prod, shamt, _Q_BITS)
        sign = s3_prod[-1]
        hi33 = s3_prod[31:]
        sat32 = Signal(signed(32))
        m.d.comb += sat32.eq(Mux((hi33 == 0) | (hi33 == (1 << 33) - 1), s3_prod[:32],
                                 Mux(sign, -(2**31), 2**31 - 1)))
        with m.If(s4_ready):
            m.d.sync += [
                s4_v.eq(s3_v & ~s3_pend),
                s4_val.eq(Mux(s3_ts == 0, sat32, q)),
                s4_rnd.eq(s3_ts != 0),
                s4_off.eq(s3_off),
                s4_cls.eq(s3_cls),
                s4_waddr.eq(s3_waddr),
                s4_wacc.eq(s3_wacc),
            ]

        # ---------------------------------------------------------------- S4 -> OUT: clamp
        # Every int8-class value fits 12 bits here: rounded (+-512) + off, or a+b / table.
        r10 = Signal(signed(_Q_BITS))
        t12 = Signal(signed(12))
        lo8 = Signal(signed(8))
        y8 = Signal(signed(8))
        m.d.comb += [
            r10.eq((s4_val[:_Q_BITS].as_signed() + 1) >> 1),
            t12.eq(Mux(s4_rnd, r10 + s4_off, s4_val[:12].as_signed())),
            lo8.eq(Mux(s4_cls == _CLS_Q127, -127, -128)),
            y8.eq(Mux(t12 > 127, 127, Mux(t12 < lo8, lo8, t12))),
        ]
        y = Mux(s4_cls == _CLS_I32, s4_val, y8)
        with m.If(o_ready):
            m.d.sync += [
                o_v.eq(s4_v),
                o_acc.eq(s4_wacc),
                o_addr.eq(s4_waddr),
                o_data.eq(y),
            ]
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
            col.start.eq(state == START),
            self.stall.eq(
                (self.sp_rd.valid & ~self.sp_rd.ready) | (self.ac_rd.valid & ~self.ac_rd.ready)
                | (o_v & ~port_ready)
            ),
        ]
        m_q = Signal(8)
        m.d.comb += m_q.eq(Mux(amax == 0, 1, amax))
        # sequential units' operands (sampled on start): isqrt(n << 16) in the VRMS prologue,
        # isqrt(ss << 16) per row; r = num // root (VRMS), R = (127 << 24) // m or // sum
        m.d.comb += [
            isq.x.eq(Mux(state == START, ctx.n, ss)),
            div.num.eq(Mux(is_[Op.VRMS], num << 15, 127 << 24)),
            div.den.eq(Mux(is_[Op.VRMS], Mux(isq.root == 0, 1, isq.root),
                           Mux(is_[Op.VQUANT], m_q, Mux(esum == 0, 1, esum)))),
        ]
        with m.Switch(state):
            with m.Case(IDLE), m.If(accept):
                m.d.sync += state.eq(Mux(known, START, FINISH))
            with m.Case(START):
                m.d.sync += [
                    preg.eq(1),
                    ts_reg.eq(Mux(is_[Op.VQUANT] | is_[Op.VSOFTMAX], 24,
                                  Mux(is_[Op.VGATE], 7, 0))),
                ]
                with m.If(is_[Op.VRMS]):
                    m.d.comb += isq.start.eq(1)
                    m.d.sync += state.eq(PRO)
                with m.Else():
                    m.d.sync += state.eq(RUN)
            with m.Case(PRO), m.If(~isq.busy):
                m.d.sync += [num.eq(isq.root), state.eq(RUN)]
            with m.Case(RUN):
                with m.If(~col.active):
                    m.d.sync += state.eq(FINISH)
                with m.Elif(pop & elem & col.last_c & (col.kind == _RED)
                            & ~(is_[Op.VSOFTMAX] & (col.pidx == 1))):
                    m.d.sync += [
                        state.eq(DRAIN),
                        re_addr.eq(Mux(is_[Op.VARGMAX], ctx.base["dst"], ctx.base["param"])
                                   + (col.r << 2)),
                    ]
            with m.Case(DRAIN), m.If(front_empty):
                with m.If(is_[Op.VRMS]):
                    m.d.comb += isq.start.eq(1)
                    m.d.sync += state.eq(RE_SQRT)
                with m.Elif(is_[Op.VQUANT]):
                    m.d.comb += [
                        inject.eq(1),
                        inject_data.eq(m_q),
                        div.start.eq(1),
                    ]
                    m.d.sync += state.eq(RE_DIV)
                with m.Elif(is_[Op.VSOFTMAX]):
                    m.d.comb += [
                        div.start.eq(1),
                    ]
                    m.d.sync += state.eq(RE_DIV)
                with m.Else():  # VARGMAX
                    m.d.comb += [inject.eq(1), inject_data.eq(best_i)]
                    m.d.sync += state.eq(RUN)
            with m.Case(RE_SQRT), m.If(~isq.busy):
                m.d.comb += [
                    div.start.eq(1),
                ]
                m.d.sync += state.eq(RE_DIV)
            with m.Case(RE_DIV), m.If(~div.busy):
                m.d.sync += [preg.eq(div.q), state.eq(RUN)]
            with m.Case(FINISH), m.If(empty):
                m.d.comb += self.done.eq(1)
                m.d.sync += state.eq(IDLE)
        return m
