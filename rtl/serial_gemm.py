"""A small ternary GEMM unit for the smallest FPGAs: one output element at a time.

:class:`SerialTernaryGemm` executes ``GEMM_TERN`` like :class:`tritium.rtl.top.GemmUnit` on the
ternary engine (same ports, same results), but without the engine, its gathers, walkers and
output FIFOs: per output element it reads A's row one aligned 4-byte group ("quad") per
request and W's packed row one byte per quad, adds or subtracts the four activations of each
quad as its arrives, and writes the int32 result to ACC. ``AcceleratorConfig.ternary_serial``
selects it (the ``tiny`` preset); ``ternary_lanes`` and ``ternary_k`` are then unused.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.utils import ceil_log2

from tritium.config import AcceleratorConfig
from tritium.isa import Op

from .controller import instr_layout

__all__ = ["SerialTernaryGemm"]

#: Activations (and 2-bit weight codes) one step consumes: one aligned quad of A.
STEP_K = 4


class SerialTernaryGemm(wiring.Component):
    """``GEMM_TERN`` one output element at a time (see the module docstring).

    For each row ``i`` of A and each output channel ``o``: A row ``i`` (``k`` bytes at
    ``a + i * k``) is read as the aligned quads that hold it, one ``act_port`` request per
    quad (a step); the quad's four activations arrive in the cycle after the acknowledge and
    are added at once, times the four 2-bit codes latched at the request (``+a``, ``~a`` with
    the missing ``+1`` counted, or 0, as :class:`tritium.rtl.ternary.TernaryEngine`). The
    codes come from W's bytes, which stream on ``wgt_port`` through one word register over the
    whole row of A (W row ``o + 1`` follows W row ``o``): with ``a % 4 != 0`` a quad's codes
    straddle two W bytes (the previous one is kept) and the row takes one more quad, whose
    codes past the row are zero, as are those of the first quad before it. Unaligned A thus
    costs no byte shifter on the activations. The element's accumulator starts from 0, or from
    the old ACC value with ``accumulate`` (read before the first step; int32 wrap-around), and
    is written to ``c + 4 * (i * n + o)`` after the last step.

    Cycle contract: with every port acknowledging at once, an element takes
    ``ceil((a % 4 + k) / 4)`` quad requests plus ``k / 16``-ish W word reads (one SPAD read
    per cycle; A and W never request in the same cycle), and four more cycles (last quad, ACC
    write, element setup, first request). ``done`` pulses in the cycle after the last ACC
    write is acknowledged. Counters are as wide as the SPAD/ACC ports allow (the controller's
    checker keeps every operand range inside them).

    ``held``: the command's payload stays on ``cmd`` until ``done`` (the
    :class:`~tritium.rtl.top.ComputeUnit` without queues hands the instruction over at its
    end), so the fields that stay constant (``k``, ``n``, ``w``, ``a % 4``, ``accumulate``)
    are read from it instead of being copied at the handshake.

    Members: as :class:`tritium.rtl.top.GemmUnit` (``cmd``, ``done``, ``act_port``,
    ``wgt_port``, ``wb_rd``, ``wb_wr``, ``busy``, ``stall``: executing and no step this cycle).
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int,
                 held: bool = False):
        from .top import gemm_unit_members  # top imports this module lazily (gemm_unit)

        self.cfg = cfg
        self.held = held
        super().__init__(gemm_unit_members(cfg, spad_bits, acc_bits))

    def elaborate(self, platform):
        m = Module()
        bb = self.cfg.bus_bytes
        lb = ceil_log2(bb)
        qb = lb - 2  # bits of a quad's index in a word
        sba = len(self.act_port.addr) + lb  # SPAD byte-address bits
        ca = len(self.wb_rd.addr) + qb  # bits of an int32 index in ACC
        ap, wp, rd, wr = self.act_port, self.wgt_port, self.wb_rd, self.wb_wr

        # ------------------------------------------------------------------ instruction
        f = data.View(instr_layout(Op.GEMM_TERN), self.cmd.payload)
        kq = Signal(sba - 1)  # k / 4 (k <= SPAD size)
        nn = Signal(ca + 1)  # n (m * n <= ACC size / 4)
        rows = Signal(ca + 1)  # rows of A left, the current one included
        cols = Signal(ca + 1)  # output channels left in the row, the current one included
        accum = Signal()
        aoff = Signal(2)  # a % 4
        w0 = Signal(sba)  # w
        arow = Signal(sba - 2)  # first quad of the current row of A
        cidx = Signal(ca)  # int32 index in ACC of the current element
        acc = Signal(32)
        fixed = [kq.eq(f.k >> 2), nn.eq(f.n), accum.eq(f.accumulate), aoff.eq(f.a[:2]),
                 w0.eq(f.w)]
        if self.held:
            m.d.comb += fixed

        # ------------------------------------------------------------------ element walkers
        aptr = Signal(sba - 2)  # next quad to request
        left = Signal(sba - 1)  # quads with a W byte still to request in this element
        extra = Signal()  # then (a % 4 != 0) one more quad, W byte 0
        wq = Signal(8 * bb, reset_less=True)  # the W word being used
        wptr = Signal(sba - lb)  # next W word to read
        wbyte = Signal(lb)  # byte of the next W byte in the word
        wvalid = Signal()  # wq holds it
        wrst = Signal()  # a new row of A starts: rewind the W stream and the channels
        prevb = Signal(8)  # the previous W byte of this element (0 before the first)
        codes = Signal(8)  # codes of the quad in flight
        a_last = Signal()  # the quad in flight is the element's last
        a_sel = Signal(max(1, qb))  # its index in the word

        run = Signal()
        elem = Signal()
        more_w = left != 0
        # the W byte of the next quad: from wq, or straight from the port in the cycle a word
        # arrives whose first byte it is (a word read after the previous one was used up)
        w_new = wp.rvalid & (wbyte == 0)
        wbyte_in = Mux(wp.rvalid, wp.rdata[:8], wq.word_select(wbyte, 8))
        cur = Mux(more_w, wbyte_in, 0)
        m.d.comb += [
            ap.addr.eq(aptr >> qb), ap.we.eq(0),
            ap.en.eq(run & (more_w | extra) & (~more_w | wvalid | w_new)),
            wp.addr.eq(wptr), wp.we.eq(0),
            wp.en.eq(run & more_w & ~wvalid & ~wp.rvalid),
        ]
        with m.If(wp.en & wp.ack):
            m.d.sync += wptr.eq(wptr + 1)
        with m.If(wp.rvalid):
            m.d.sync += [wq.eq(wp.rdata), wvalid.eq(1)]
        a_ack = ap.en & ap.ack
        aptr_inc = Signal(sba - 2)
        m.d.comb += aptr_inc.eq(aptr + 1)
        win = Cat(prevb, cur)
        last_req = Signal()
        m.d.comb += last_req.eq(((left == 1) & ~extra) | ~more_w)
        with m.If(a_ack & last_req & (cols == 1)):
            # the next row starts after this quad, or (a % 4 != 0) in it
            m.d.sync += arow.eq(Mux(aoff != 0, aptr, aptr_inc))
        with m.If(a_ack):
            m.d.sync += [
                aptr.eq(aptr_inc),
                a_last.eq(last_req),
                a_sel.eq(aptr[:qb] if qb else 0),
                codes.eq(Array(win[8 - 2 * j: 16 - 2 * j] for j in range(4))[aoff]),
                prevb.eq(cur),
            ]
            with m.If(more_w):
                m.d.sync += [left.eq(left - 1), wbyte.eq(wbyte + 1)]
                with m.If(wbyte == bb - 1):
                    m.d.sync += wvalid.eq(0)
            with m.Else():
                m.d.sync += extra.eq(0)

        # ------------------------------------------------------------------ one step
        x_word = ap.rdata.word_select(a_sel, 32) if qb else ap.rdata[:32]
        terms, negs = [], []
        for t in range(STEP_K):
            x = x_word[8 * t: 8 * t + 8].as_signed()
            nz, neg = codes[2 * t], codes[2 * t + 1]
            terms.append(Mux(nz, Mux(neg, ~x, x), 0))
            negs.append(nz & neg)
        # two-operand adders kept apart (``keep``), each with one of the four ``+1`` as its
        # carry-in, so that each maps to a carry chain instead of one multi-operand sum of
        # full adders in LUTs
        s01 = Signal(signed(9), attrs={"keep": 1})
        s23 = Signal(signed(9), attrs={"keep": 1})
        dot = Signal(signed(10), attrs={"keep": 1})
        m.d.comb += [s01.eq(terms[0] + terms[1] + negs[0]), s23.eq(terms[2] + terms[3] + negs[2]),
                     dot.eq(s01 + s23 + negs[1])]

        # ------------------------------------------------------------------ ACC ports
        lane = cidx[:qb] if qb else Const(0, 1)
        m.d.comb += [
            rd.addr.eq(cidx >> qb), rd.we.eq(0),
            wr.addr.eq(cidx >> qb), wr.we.eq(1),
            wr.wdata.eq(Cat([acc] * (bb // 4))),
            wr.wmask.eq(Const(0xF, bb) << (lane * 4) if qb else Const(0xF, 4)),
        ]
        with m.If(rd.rvalid):  # (first cycle of RUN: no quad arrives yet)
            m.d.sync += acc.eq(rd.rdata.word_select(lane, 32) if qb else rd.rdata[:32])
        with m.If(ap.rvalid):
            m.d.sync += acc.eq(acc + dot + negs[3])

        # ------------------------------------------------------------------ sequencing
        with m.If(elem):
            m.d.sync += [aptr.eq(arow), left.eq(kq), extra.eq(aoff != 0), prevb.eq(0),
                         acc.eq(0)]
            with m.If(wrst):
                m.d.sync += [wptr.eq(w0 >> lb), wbyte.eq(w0[:lb]), wvalid.eq(0), cols.eq(nn),
                             wrst.eq(0)]
        busy = Signal()
        with m.FSM(name="sgemm"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [rows.eq(f.m), arow.eq(f.a >> 2), cidx.eq(f.c >> 2),
                                 wrst.eq(1)]
                    if not self.held:
                        m.d.sync += fixed
                    m.next = "ELEM"
            with m.State("ELEM"):  # set up the element; with accumulate read the old value
                m.d.comb += [busy.eq(1), elem.eq(1), rd.en.eq(accum)]
                with m.If(~accum | rd.ack):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [busy.eq(1), run.eq(1)]
                with m.If(ap.rvalid & a_last):
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [busy.eq(1), wr.en.eq(1)]
                with m.If(wr.ack):
                    m.d.sync += [cidx.eq(cidx + 1), cols.eq(cols - 1)]
                    m.next = "ELEM"
                    with m.If(cols == 1):
                        m.d.sync += [rows.eq(rows - 1), wrst.eq(1)]
                        with m.If(rows == 1):
                            m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        m.d.comb += [
            self.busy.eq(busy),
            self.stall.eq(busy & ~ap.rvalid),
        ]
        return m
