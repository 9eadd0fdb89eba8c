"""A small ternary GEMM unit for the smallest FPGAs: one output element at a time.

:class:`SerialTernaryGemm` executes ``GEMM_TERN`` like :class:`tritium.rtl.top.GemmUnit` on the
ternary engine (same ports, same results), but without the engine, its gathers, walkers and
output FIFOs: it streams one row of A and one packed row of W from the SPAD, adds or subtracts
four activations per step, and writes each int32 result (plus the old value with
``accumulate``) to ACC. ``AcceleratorConfig.ternary_serial`` selects it (the ``tiny`` preset);
``ternary_lanes`` and ``ternary_k`` are then unused.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.utils import ceil_log2

from tritium.config import AcceleratorConfig
from tritium.isa import Op

from .controller import instr_layout
from .ternary import _tree_sum

__all__ = ["ByteStream", "SerialTernaryGemm"]

#: Activations (and 2-bit weight codes) one step consumes.
STEP_K = 4


class ByteStream(Elaboratable):
    """Consecutive bytes of a word memory, ``nbytes`` per step, from any byte address.

    ``start`` (a pulse, with ``addr`` = byte address and ``length`` = bytes) drops what the
    stream holds and reads the words ``addr // word_bytes`` .. that hold ``length`` bytes, one
    request per cycle while at most ``depth`` words are held or in flight. ``valid``: the next
    ``nbytes`` bytes are on ``data`` (byte 0 lowest); ``step`` consumes them. The caller steps at
    most ``length / nbytes`` times per start (``nbytes`` divides ``word_bytes``). The port must
    answer a read in the cycle after its ``ack`` (:class:`MemPortSignature`); ``en`` drops only
    in a ``start`` cycle.
    """

    def __init__(self, port, word_bytes: int, nbytes: int, byte_addr_bits: int,
                 len_bits: int, depth: int):
        if word_bytes % nbytes:
            raise ValueError(f"nbytes={nbytes} must divide word_bytes={word_bytes}")
        self.port = port
        self.wb = word_bytes
        self.nbytes = nbytes
        self.depth = depth
        self.start = Signal()
        self.addr = Signal(byte_addr_bits)
        self.length = Signal(len_bits)
        self.valid = Signal()
        self.step = Signal()
        self.data = Signal(8 * nbytes)

    def elaborate(self, platform):
        m = Module()
        wb, nb, depth = self.wb, self.nbytes, self.depth
        lb = ceil_log2(wb)
        port = self.port
        q = [Signal(8 * wb, name=f"q{j}", reset_less=True) for j in range(depth)]
        n = Signal(range(depth + 1))  # words held
        inflight = Signal()  # a read was acknowledged last cycle: its word arrives now
        left = Signal(len(self.length) + 1)  # words still to request
        waddr = Signal(len(port.addr))
        pos = Signal(max(1, lb))  # byte offset of the next step in q[0]

        cross = pos + nb >= wb if lb else Const(1)  # the step finishes q[0]
        pop = Signal()
        app = Signal()
        m.d.comb += [
            port.en.eq(~self.start & (left != 0) & (n + inflight < depth)),
            port.addr.eq(waddr),
            port.we.eq(0),
            self.valid.eq((n >= 1) & ((pos + nb <= wb) | (n >= 2))),
            pop.eq(self.step & cross),
            app.eq(port.rvalid & ~self.start),
        ]
        window = Cat(q[0], q[1]) if depth > 1 else q[0]
        m.d.comb += self.data.eq(window.bit_select(pos * 8, 8 * nb) if lb else q[0][: 8 * nb])
        m.d.sync += inflight.eq(port.en & port.ack)
        with m.If(port.en & port.ack):
            m.d.sync += [waddr.eq(waddr + 1), left.eq(left - 1)]
        with m.If(self.step):
            m.d.sync += pos.eq(pos + nb)  # wraps at word_bytes (pos is lb bits)
        for j in range(depth):
            shifted = q[j + 1] if j + 1 < depth else q[j]
            with m.If(app & (n - pop == j)):
                m.d.sync += q[j].eq(port.rdata)
            with m.Elif(pop):
                m.d.sync += q[j].eq(shifted)
        m.d.sync += n.eq(n - pop + app)
        with m.If(self.start):
            off = self.addr[:lb] if lb else Const(0, 1)
            m.d.sync += [
                n.eq(0),
                pos.eq(off),
                waddr.eq(self.addr >> lb),
                left.eq((off + self.length + (wb - 1)) >> lb),
            ]
        return m


class SerialTernaryGemm(wiring.Component):
    """``GEMM_TERN`` one output element at a time (see the module docstring).

    For each row ``i`` of A and each output channel ``o``: stream A row ``i`` (``k`` bytes at
    ``a + i * k``) on ``act_port`` and W row ``o`` (``k / 4`` packed bytes at ``w + o * k / 4``)
    on ``wgt_port``; every step adds four activations times their weights (``+a``, ``~a`` with
    the missing ``+1`` counted, or 0, as :class:`tritium.rtl.ternary.TernaryEngine`); the sum
    goes to a result register that the writer stores at ``c + 4 * (i * n + o)`` (reading the
    old value first with ``accumulate``, int32 wrap-around) while the next element streams.

    Cycle contract: with both ports acknowledging every request, an element takes
    ``k / 4`` steps plus about three cycles to restart the streams; on one SPAD bank the two
    streams share one read per cycle (``k / 4 + k / 16`` words per element). ``done`` pulses
    when the last result is in ACC. Sums are exact for ``k < 2**16`` (24-bit accumulator).

    Members: as :class:`tritium.rtl.top.GemmUnit` (``cmd``, ``done``, ``act_port``,
    ``wgt_port``, ``wb_rd``, ``wb_wr``, ``busy``, ``stall``: executing and no step this cycle).
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int):
        from .top import gemm_unit_members  # top imports this module lazily (gemm_unit)

        self.cfg = cfg
        super().__init__(gemm_unit_members(cfg, spad_bits, acc_bits))

    def elaborate(self, platform):
        m = Module()
        bb = self.cfg.bus_bytes
        lb = ceil_log2(bb)
        sba = len(self.act_port.addr) + lb  # SPAD byte-address bits
        aba = len(self.wb_rd.addr) + lb  # ACC byte-address bits

        # ------------------------------------------------------------------ instruction
        f = data.View(instr_layout(Op.GEMM_TERN), self.cmd.payload)
        kk = Signal(16)
        nn = Signal(16)
        w = Signal(sba)
        accum = Signal()
        rows = Signal(12)  # rows of A left, the current one included
        cols = Signal(16)  # output channels left in the row, the current one included
        arow = Signal(sba)  # a + i * k
        wrow = Signal(sba)  # w + o * k / 4
        caddr = Signal(aba)  # ACC byte address of the next result
        steps = Signal(15)  # steps left in the element
        acc = Signal(signed(24))

        m.submodules.sa = sa = ByteStream(self.act_port, bb, STEP_K, sba, 16, depth=3)
        m.submodules.sw = sw = ByteStream(self.wgt_port, bb, STEP_K // 4, sba, 16, depth=2)
        m.d.comb += [sa.addr.eq(arow), sa.length.eq(kk), sw.addr.eq(wrow),
                     sw.length.eq(kk >> 2)]

        # one step: four activations, four 2-bit codes
        terms, negs = [], []
        for t in range(STEP_K):
            x = sa.data[8 * t: 8 * t + 8].as_signed()
            nz, neg = sw.data[2 * t], sw.data[2 * t + 1]
            terms.append(Mux(nz, Mux(neg, ~x, x), 0))
            negs.append(nz & neg)
        total = Signal(signed(24))
        m.d.comb += total.eq(acc + _tree_sum(terms) + _tree_sum(negs))

        # ------------------------------------------------------------------ writer
        res = Signal(signed(24))
        res_addr = Signal(aba)
        res_v = Signal()  # res waits to be written
        old_v = Signal()  # with accumulate: the old value has been read (in ``old``)
        rd_pend = Signal()
        old = Signal(32)
        wlane = (lambda x: x[2:lb]) if lb > 2 else (lambda x: Const(0, 1))
        rd, wr = self.wb_rd, self.wb_wr
        m.d.comb += [
            rd.addr.eq(res_addr >> lb), rd.we.eq(0),
            rd.en.eq(res_v & accum & ~old_v & ~rd_pend),
        ]
        m.d.sync += rd_pend.eq(rd.en & rd.ack)
        with m.If(rd.rvalid & rd_pend):
            m.d.sync += [old.eq(rd.rdata.word_select(wlane(res_addr), 32) if lb > 2
                                else rd.rdata[:32]),
                         old_v.eq(1)]
        wdata = Signal(32)
        m.d.comb += [
            wdata.eq(Mux(accum, old + res, res)),
            wr.addr.eq(res_addr >> lb), wr.we.eq(1),
            wr.en.eq(res_v & (~accum | old_v)),
            wr.wdata.eq(Cat([wdata] * (bb // 4))),
            wr.wmask.eq(Const(0xF, bb) << (wlane(res_addr) * 4) if lb > 2 else Const(0xF, 4)),
        ]
        wdone = Signal()
        m.d.comb += wdone.eq(wr.en & wr.ack)
        with m.If(wdone):
            m.d.sync += [res_v.eq(0), old_v.eq(0)]

        # ------------------------------------------------------------------ sequencing
        go = Signal()  # a step happens this cycle
        last = steps == 1
        m.d.comb += go.eq(sa.valid & sw.valid & (~last | ~res_v | wdone))
        running = Signal()
        with m.FSM(name="sgemm"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [
                        kk.eq(f.k), nn.eq(f.n), w.eq(f.w), accum.eq(f.accumulate),
                        rows.eq(f.m), cols.eq(f.n), arow.eq(f.a), wrow.eq(f.w),
                        caddr.eq(f.c),
                    ]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [running.eq(1), sa.start.eq(1), sw.start.eq(1)]
                m.d.sync += [steps.eq(kk >> 2), acc.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [running.eq(1), sa.step.eq(go), sw.step.eq(go)]
                with m.If(go):
                    m.d.sync += [acc.eq(total), steps.eq(steps - 1)]
                    with m.If(last):
                        m.d.sync += [res.eq(total), res_addr.eq(caddr), res_v.eq(1),
                                     caddr.eq(caddr + 4)]
                        with m.If(cols != 1):
                            m.d.sync += [cols.eq(cols - 1), wrow.eq(wrow + (kk >> 2))]
                            m.next = "START"
                        with m.Else():
                            m.d.sync += [cols.eq(nn), wrow.eq(w), arow.eq(arow + kk),
                                         rows.eq(rows - 1)]
                            m.next = "NEXT_ROW"
            with m.State("NEXT_ROW"):
                m.d.comb += running.eq(1)
                with m.If(rows == 0):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "START"
            with m.State("DRAIN"):
                m.d.comb += running.eq(1)
                with m.If(~res_v):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += [
            self.busy.eq(running),
            self.stall.eq(running & ~go),
        ]
        return m
