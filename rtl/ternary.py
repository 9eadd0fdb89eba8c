"""MatMul-free ternary engine (the ``ternary`` compute engine, opcode GEMM_TERN)."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from tritium.rtl.systolic import GEMM_CMD_LAYOUT, fifo_room

from tritium.config import AcceleratorConfig

__all__ = ["GEMM_CMD_LAYOUT", "RES_FIFO_DEPTH", "TernaryEngine", "ternary_latency"]

#: 2-bit weight codes, as :func:`tritium.numerics.pack_ternary` writes them: bit 0 set means
#: "non-zero", bit 1 set (with bit 0) means "negative"; ``0b10`` is reserved and reads as 0.
CODE_POS, CODE_NEG = 0b01, 0b11


#: Output FIFO depth: a result is reserved from its tile's last beat until ``res`` takes it
#: (3 cycles with ``res`` always ready), so one-beat tiles back to back need 3 entries.
RES_FIFO_DEPTH = 3


def ternary_latency(beats: int) -> int:
    """Cycles from the first ``act``/``wgt`` transfer of a tile to its ``res`` transfer.

    ``beats`` = K / T beats, no idle input cycles, ``res`` ready: ``max(beats, 1) + 1``.
    """
    return max(beats, 1) + 1


def _tree_sum(terms: list) -> object:
    """Balanced adder tree (Amaranth widens each sum by one bit)."""
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class TernaryEngine(wiring.Component):
    """MatMul-free GEMM engine: int8 activations times ternary {-1, 0, +1} weights, add/sub only.

    ``L = cfg.ternary_lanes`` lanes compute ``L`` output channels of one activation row; each
    beat brings ``T = cfg.ternary_k`` activations and, for every lane, the ``T`` 2-bit weight
    codes of the same reduction indices. A tile of ``B`` beats (``K = B * T``) gives
    ``res[l] = sum_k a[k] * w[n0 + l, k]``, exactly :func:`tritium.numerics.gemm_ternary` of one
    row of ``A`` with the packed rows ``n0 .. n0 + L - 1``. There are no multipliers: each lane
    selects ``a``, ``~a`` or 0 per weight (``-a = ~a + 1``: the ``+1`` of every negative weight
    is added as a population count), sums the ``T`` terms with an adder tree into a pipeline
    register, and adds that to its int32 accumulator in the next cycle.

    Cycle contract: ``act`` and ``wgt`` transfer together, one beat per cycle, back-to-back
    tiles without gaps. With inputs never idle and ``res`` ready, a tile of ``B`` beats takes
    ``max(B, 1) + 1`` cycles (:func:`ternary_latency`) from its first ``act``/``wgt`` transfer
    to its ``res`` transfer. ``B = 0`` injects one zero beat instead of taking inputs.
    The pipeline never stalls (no enable fans out to the lanes' registers): a tile's last
    beat enters only when the output FIFO (:data:`RES_FIFO_DEPTH` results) has room for its
    result besides those of the tiles before it, so backpressure on ``res`` holds the input
    at a tile's last beat; no data is lost. Sums are exact for ``K < 2**24``.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Uses ``ternary_lanes`` (L) and ``ternary_k`` (T, a multiple of 4).

    Members
    -------
    act : In(stream.Signature(ArrayLayout(signed(8), T)))
        Element ``t`` = ``a[j*T + t]`` for beat ``j``.
    wgt : In(stream.Signature(ArrayLayout(ArrayLayout(unsigned(2), T), L)))
        Element ``[l][t]`` = code of ``w[n0 + l, j*T + t]``: the flat payload is the ``T/4``
        packed bytes (:func:`tritium.numerics.pack_ternary`) of chunk ``j`` of row ``n0``, then
        of row ``n0 + 1``, ... (lane ``l``, index ``t`` at payload bits ``2*(l*T + t) + 1 ..
        2*(l*T + t)``). Codes ``0b01`` = +1, ``0b11`` = -1, ``0b00``/``0b10`` = 0.
    cmd : In(stream.Signature(GEMM_CMD_LAYOUT))
        ``beats`` = B = K / T (bits 15..0); ``acc`` (bit 16): 1 adds to the previous tile's
        result, 0 starts from zero. One ``cmd`` per tile, before its data.
    res : Out(stream.Signature(ArrayLayout(signed(32), L)))
        Element ``l`` = the tile's sum for output channel ``n0 + l``; one beat per tile.
    busy : Out(1)
        A tile is loaded, in flight or waiting in the output FIFO.
    stall : Out(1)
        A tile's last beat waits this cycle for room in the output FIFO (``res``
        backpressure).
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.lanes = cfg.ternary_lanes
        self.k = cfg.ternary_k
        super().__init__(
            {
                "act": In(stream.Signature(data.ArrayLayout(signed(8), self.k))),
                "wgt": In(
                    stream.Signature(
                        data.ArrayLayout(data.ArrayLayout(unsigned(2), self.k), self.lanes)
                    )
                ),
                "cmd": In(stream.Signature(GEMM_CMD_LAYOUT)),
                "res": Out(stream.Signature(data.ArrayLayout(signed(32), self.lanes))),
                "busy": Out(1),
                "stall": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L, T = self.lanes, self.k

        m.submodules.ofifo = ofifo = fifo.SyncFIFO(width=32 * L, depth=RES_FIFO_DEPTH)
        room = Signal()  # registered: room for one more result (fifo_room)

        # ------------------------------------------------------------------ tile control
        loaded = Signal()
        rem = Signal(16)
        first = Signal()
        acc_flag = Signal()
        zero = Signal(init=1)  # rem == 0 and rem <= 1, kept as registers (timing)
        is_last = Signal(init=1)
        go = Signal()
        m.d.comb += [
            go.eq(loaded & (zero | (self.act.valid & self.wgt.valid)) & (~is_last | room)),
            self.act.ready.eq(go & ~zero),
            self.wgt.ready.eq(go & ~zero),
            self.cmd.ready.eq(~loaded | (go & is_last)),
        ]
        with m.If(go):
            m.d.sync += first.eq(0)
            with m.If(~zero):
                m.d.sync += [rem.eq(rem - 1), zero.eq(rem == 1), is_last.eq(rem <= 2)]
            with m.If(is_last):
                m.d.sync += loaded.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [
                loaded.eq(1),
                rem.eq(self.cmd.payload.beats),
                zero.eq(self.cmd.payload.beats == 0),
                is_last.eq(self.cmd.payload.beats <= 1),
                acc_flag.eq(self.cmd.payload.acc),
                first.eq(1),
            ]

        # ------------------------------------------------------------------ stage 1: trees
        v1 = Signal()
        clr1 = Signal()
        last1 = Signal()
        psum_shape = signed(8 + (T - 1).bit_length() + 1)  # |sum| <= 128 * T
        psum = [Signal(psum_shape, name=f"psum{lane}", reset_less=True) for lane in range(L)]
        m.d.sync += [v1.eq(go), clr1.eq(go & first & ~acc_flag), last1.eq(go & is_last)]
        for lane in range(L):
            terms = []
            negs = []
            for t in range(T):
                a = self.act.payload[t]
                code = self.wgt.payload[lane][t]
                nz, neg = code[0], code[1]
                # +a, ~a (= -a - 1) or 0; the missing +1 of each -a is counted in `negs`
                terms.append(Mux(nz, Mux(neg, ~a, a), 0))
                negs.append(nz & neg)
            total = _tree_sum(terms) + _tree_sum(negs)
            with m.If(go):
                m.d.sync += psum[lane].eq(Mux(zero, 0, total))

        # ------------------------------------------------------------------ stage 2: accumulate
        acc = [Signal(signed(32), name=f"acc{lane}", reset_less=True) for lane in range(L)]
        nxt = [Signal(signed(32), name=f"nxt{lane}") for lane in range(L)]
        for lane in range(L):
            m.d.comb += nxt[lane].eq(Mux(clr1, 0, acc[lane]) + psum[lane])
            with m.If(v1):
                m.d.sync += acc[lane].eq(nxt[lane])

        m.d.comb += room.eq(fifo_room(m, ofifo, 1, go & is_last))
        m.d.comb += [
            ofifo.w_en.eq(v1 & last1),  # room reserved at the tile's last beat
            ofifo.w_data.eq(Cat(*nxt)),
            self.res.valid.eq(ofifo.r_rdy),
            self.res.payload.eq(ofifo.r_data),
            ofifo.r_en.eq(self.res.ready),
            self.stall.eq(loaded & is_last & ~room),
            self.busy.eq(loaded | v1 | ofifo.r_rdy),
        ]
        return m
