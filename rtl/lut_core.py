"""LUT tensor core (the ``lut`` compute engine, opcode GEMM_LUT), after Mo et al., *LUT Tensor
Core*: int8 activations times 1..4-bit weights by table lookup, weights bit-serial.

Besides the component this module holds the stream formats (:data:`LUT_CMD_LAYOUT`,
:func:`lut_cmd`), the beat order a producer must follow (:func:`lut_act_beats`,
:func:`lut_wgt_beats`, derived from the device layout of
:func:`tritium.numerics.pack_lut_weights`) and the cycle contract (:func:`lut_tile_cycles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import AcceleratorConfig, ConfigError

__all__ = [
    "LUT_ACC_BITS",
    "LUT_CMD_LAYOUT",
    "LUT_DEPTH",
    "LutCore",
    "lut_act_beats",
    "lut_cmd",
    "lut_tile_cycles",
    "lut_wgt_beats",
]

#: Payload of the ``cmd`` stream: ``k`` (bits 15..0) the reduction length K of the tile,
#: ``acc`` (bit 16) 1 = add this tile to the previous tile's result (K split across tiles),
#: 0 = start from zero, ``bits`` (bits 19..17) the weight width 1..``lut_max_bits``.
#: ``k`` and ``acc`` sit where the systolic engine's ``GEMM_CMD_LAYOUT`` has ``beats``/``acc``.
LUT_CMD_LAYOUT = data.StructLayout({"k": unsigned(16), "acc": unsigned(1), "bits": unsigned(3)})

#: Pipeline depth D: clock edges from a tile's last ``wgt`` transfer to its ``res`` beat being
#: valid: lookup register, accumulators, output FIFO write.
LUT_DEPTH = 3

#: Width of the per-lane plane-weighted accumulators and of the activation-sum accumulator.
#: One bit more than the int32 result, so ``(total - sum(a)) >> 1`` is exact modulo 2**32 even
#: when ``acc`` chains wrap (the golden model wraps GEMM accumulation to int32 the same way).
LUT_ACC_BITS = 33


def lut_cmd(k: int, bits: int, acc: bool = False) -> int:
    """The ``cmd`` payload (as an integer, :data:`LUT_CMD_LAYOUT`) of one tile."""
    if not 0 <= k < 1 << 16:
        raise ValueError(f"k={k}; k must be in [0, 65535]")
    if not 0 <= bits < 8:
        raise ValueError(f"bits={bits}; bits must fit the 3-bit field (valid: 1..4)")
    return k | (int(bool(acc)) << 16) | (bits << 17)


def lut_tile_cycles(k: int, g: int, bits: int) -> int:
    """Clock cycles from a tile's ``cmd`` transfer to its ``res`` transfer (no stalls).

    ``(k // g) * bits + LUT_DEPTH``: on an idle core with ``cmd`` and the first ``act`` beat
    transferring in cycle 0, the ``(k // g) * bits`` ``wgt`` beats transfer in cycles
    ``1 .. (k // g) * bits`` and ``res`` in cycle ``(k // g) * bits + 3``.
    """
    return max(1, k // g) * bits + LUT_DEPTH


def lut_act_beats(a_row: Sequence[int], g: int) -> list[list[int]]:
    """``act`` beats of one tile: ``K / g`` groups, beat ``q`` = ``a_row[q*g : (q+1)*g]``."""
    k = len(a_row)
    if k % g:
        raise ValueError(f"K={k} must be a multiple of g={g}")
    return [[int(v) for v in a_row[q * g : (q + 1) * g]] for q in range(k // g)]


def lut_wgt_beats(packed: Any, g: int) -> list[list[int]]:
    """``wgt`` beats of one tile from device-layout weights, in the order the core takes them.

    Parameters
    ----------
    packed : array_like of uint8, shape (L, bits, K // 8)
        :func:`tritium.numerics.pack_lut_weights` of the tile's ``L`` output channels (row ``n``
        is output channel = lane ``n``; pad missing channels with zero bytes).
    g : int
        Group size (``cfg.lut_group``, divides 8).

    Returns
    -------
    list of list of int
        Beat ``q * bits + i`` (group ``q`` outer, plane ``i`` inner) holds one ``g``-bit field
        per lane: ``(packed[n][i][q*g // 8] >> (q*g % 8)) & (2**g - 1)``, i.e. bit ``j`` of
        lane ``n``'s field is bit ``i`` of ``u = w + 2**(bits-1)`` of weight ``k = q*g + j``.
    """
    lanes = len(packed)
    bits = len(packed[0])
    nbytes = len(packed[0][0])
    mask = (1 << g) - 1
    beats = []
    for q in range(nbytes * 8 // g):
        byte, sh = divmod(q * g, 8)
        for i in range(bits):
            beats.append([(int(packed[n][i][byte]) >> sh) & mask for n in range(lanes)])
    return beats


def _mux_tree(sel: Value, entries: list[Value]) -> Value:
    """``entries[sel]`` as a binary tree of 2:1 muxes (``len(entries) == 2**len(sel)``).

    Written out because indexing a ``lib.data`` array with a signal emits ``table >> (idx *
    width)`` (a ``$mul`` by a constant feeding a barrel shifter).
    """
    level = list(entries)
    for b in range(len(sel)):
        level = [Mux(sel[b], level[i + 1], level[i]) for i in range(0, len(level), 2)]
    assert len(level) == 1
    return level[0]


class LutCore(wiring.Component):
    """LUT tensor core: one output row (``L = cfg.lut_lanes`` channels) per tile, table lookup
    with symmetric tables of groups of ``g = cfg.lut_group`` int8 activations, weights of
    ``1 .. cfg.lut_max_bits`` bits processed one bit plane per cycle. No multipliers.

    A tile computes ``res[n] = sum_k a[k] * w[n, k]`` for an int8 activation row ``a`` of length
    ``K`` and ``bits``-bit weights ``w`` of ``L`` output channels, bit-exactly
    :func:`tritium.numerics.gemm_lut` (``= gemm_i8`` on :func:`~tritium.numerics.unpack_lut_weights`).
    The *table-precompute unit* turns each ``act`` beat (one group ``x_0 .. x_{g-1}``) into the
    ``2**(g-1)`` entries ``T[p] = x_{g-1} + sum_{j<g-1} (bit j of p ? +x_j : -x_j)``
    (:func:`~tritium.numerics.lut_tables`) with ``2**g - 2`` adders, registered. The *lookup
    array* takes one ``wgt`` beat per cycle, plane ``i`` of the group: lane ``n``'s ``g`` bits
    ``P`` select ``T[P & m]`` if bit ``g-1`` of ``P`` is set, else ``-T[~P & m]``
    (``m = 2**(g-1) - 1``), and its accumulator adds that value shifted left by ``i`` (a
    shift mux). Plane 0 of each group also adds ``T[m] = sum(x)`` to a shared activation-sum
    accumulator; after the tile's last beat ``(acc[n] - asum) >> 1`` of every lane is written
    into a 2-entry output FIFO (exact: ``sum_i 2**i (2 b_i - 1) = 2 u - (2**bits - 1)``
    hence ``= 2 w + 1``). Accumulators are :data:`LUT_ACC_BITS` = 33 bits, results int32 (mod
    ``2**32`` across ``acc`` chains, as the golden model wraps).

    Cycle contract: the ``wgt`` stream moves one beat per cycle, the ``act`` stream one beat per
    group (every ``bits`` cycles), ``cmd`` one per tile; a tile takes ``(K // g) * bits`` ``wgt``
    beats (group-major, plane-minor: :func:`lut_wgt_beats`). With inputs never idle and ``res``
    ready, a full tile (``L`` channels x ``K``) takes exactly
    ``T = (K / g) * bits + D`` cycles from its ``cmd`` transfer to its ``res`` transfer, with
    pipeline depth ``D = LUT_DEPTH = 3`` (:func:`lut_tile_cycles`): on an idle core ``cmd`` and
    the first ``act`` group transfer in cycle 0 (cmd and table registers), the ``wgt`` beats in
    cycles ``1 .. (K/g)*bits``, and the last beat passes the lookup register, the accumulators
    and the output FIFO write, so ``res`` is valid in cycle ``(K/g)*bits + 3``. Further,
    back-to-back tiles keep ``wgt`` moving every cycle (the next ``cmd`` is taken in the cycle
    of the previous tile's last ``wgt`` beat, the next group's table is loaded in the cycle of
    the previous group's last plane), so tiles complete every ``(K // g) * bits`` cycles.
    ``act`` is prefetched one group ahead, across tile boundaries. What stalls the core: a
    missing ``wgt`` beat (bubble), a missing ``act`` group or ``cmd`` (``wgt`` not ready), and
    ``res`` backpressure, which holds the whole pipeline (``stall``) only in a cycle where a
    finished tile meets a full output FIFO; nothing is dropped. ``K`` must be a
    positive multiple of ``g`` (the ISA's multiple of 8 is); the core takes ``max(1, K // g)``
    groups. ``bits`` outside ``1 .. lut_max_bits`` is clamped into that range (the controller
    rejects such instructions first), so the core never hangs.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Uses ``lut_group`` (g), ``lut_lanes`` (L), ``lut_max_bits``; ``"lut"`` must be in
        ``cfg.engines``.

    Members
    -------
    act : In(stream.Signature(ArrayLayout(signed(8), g)))
        One activation group per beat: element ``j`` = ``a[q*g + j]`` for group ``q``
        (payload bits ``8j+7 .. 8j``). ``K / g`` beats per tile (:func:`lut_act_beats`).
    wgt : In(stream.Signature(ArrayLayout(unsigned(g), L)))
        One bit plane of one group for all lanes per beat: element ``n`` (payload bits
        ``g*n+g-1 .. g*n``) holds bit ``i`` of ``u = w + 2**(bits-1)`` of weights
        ``k = q*g .. q*g+g-1`` of channel ``n`` (weight ``q*g + j`` in bit ``j``), which is
        ``(packed[n, i, q*g // 8] >> (q*g % 8)) & (2**g - 1)`` of the device layout
        (:func:`~tritium.numerics.pack_lut_weights`). Order: group ``q`` outer, plane
        ``i = 0 .. bits-1`` inner (:func:`lut_wgt_beats`); ``(K / g) * bits`` beats per tile.
    cmd : In(stream.Signature(LUT_CMD_LAYOUT))
        ``k`` (bits 15..0) = K, ``acc`` (bit 16): 1 adds to the previous tile's result,
        0 starts from zero; ``bits`` (bits 19..17) = weight width. One per tile (:func:`lut_cmd`).
    res : Out(stream.Signature(ArrayLayout(signed(32), L)))
        Element ``n`` (bits ``32n+31 .. 32n``) = output channel ``n``; one beat per tile.
    busy : Out(1)
        A tile is loaded, in flight or waiting on ``res``.
    stall : Out(1)
        The pipeline is held this cycle by ``res`` backpressure.
    """

    def __init__(self, cfg: AcceleratorConfig):
        if not cfg.has("lut"):
            raise ConfigError(
                f"engines={cfg.engines!r}; config {cfg.name!r} has no LUT tensor core, add "
                "'lut' to engines to build LutCore"
            )
        self.cfg = cfg
        self.g = cfg.lut_group
        self.lanes = cfg.lut_lanes
        self.max_bits = cfg.lut_max_bits
        super().__init__(
            {
                "act": In(stream.Signature(data.ArrayLayout(signed(8), self.g))),
                "wgt": In(stream.Signature(data.ArrayLayout(unsigned(self.g), self.lanes))),
                "cmd": In(stream.Signature(LUT_CMD_LAYOUT)),
                "res": Out(stream.Signature(data.ArrayLayout(signed(32), self.lanes))),
                "busy": Out(1),
                "stall": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        g, L, mb = self.g, self.lanes, self.max_bits
        lg = g.bit_length() - 1
        e = 1 << (g - 1)
        tw = 8 + lg  # |T| <= 128 g
        pw = max(1, (mb - 1).bit_length())  # plane index width

        adv = Signal()  # the pipeline advances this cycle (not held by res backpressure)

        # ------------------------------------------------------------------ tile control
        busy = Signal()  # a cmd is loaded and has wgt beats left
        rem_g = Signal(16)  # groups left after the current one
        plane = Signal(pw)
        lastp = Signal(pw)  # bits - 1 of the loaded cmd
        accf = Signal()
        first = Signal()  # the next beat is the tile's first
        tv = Signal()  # the table register holds the current group's table
        table = Signal(data.ArrayLayout(signed(tw), e), name="tab", reset_less=True)

        fire = Signal()  # a wgt beat transfers
        last_plane = Signal()
        last_beat = Signal()
        m.d.comb += [
            last_plane.eq(plane == lastp),
            last_beat.eq(last_plane & (rem_g == 0)),
            self.wgt.ready.eq(busy & tv & adv),
            fire.eq(self.wgt.valid & self.wgt.ready),
            self.cmd.ready.eq(~busy | (fire & last_beat)),
            self.act.ready.eq(~tv | (fire & last_plane)),
        ]
        with m.If(fire):
            m.d.sync += first.eq(0)
            with m.If(last_plane):
                m.d.sync += [plane.eq(0), rem_g.eq(rem_g - 1)]
            with m.Else():
                m.d.sync += plane.eq(plane + 1)
            with m.If(last_beat):
                m.d.sync += busy.eq(0)
        c = self.cmd.payload
        groups = c.k >> lg
        bits = Signal(3)  # cmd bits clamped into 1 .. lut_max_bits
        m.d.comb += bits.eq(Mux(c.bits == 0, 1, Mux(c.bits > mb, mb, c.bits)))
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [
                busy.eq(1),
                rem_g.eq(Mux(groups == 0, 0, groups - 1)),
                plane.eq(0),
                lastp.eq(bits - 1),
                accf.eq(c.acc),
                first.eq(1),
            ]

        # ------------------------------------------------------------------ table precompute
        # Entry p after processing x_{g-2} .. x_j: index bits (g-2 .. j) choose the signs.
        x = [self.act.payload[j] for j in range(g)]
        ents = [x[g - 1]]
        for j in reversed(range(g - 1)):
            n_terms = g - j  # terms summed so far, including x_j
            w = 8 + (n_terms - 1).bit_length()
            ents = [(t + s)[:w].as_signed() for t in ents for s in (-x[j], x[j])]
        with m.If(self.act.valid & self.act.ready):
            m.d.sync += [tv.eq(1)] + [table[p].eq(ents[p]) for p in range(e)]
        with m.Elif(fire & last_plane):
            m.d.sync += tv.eq(0)

        # ------------------------------------------------------------------ lookup (stage 1)
        v0 = Signal()
        clr0 = Signal()
        last0 = Signal()
        plane0 = Signal(pw)
        val0 = [Signal(signed(tw + 1), name=f"val{n}", reset_less=True) for n in range(L)]
        sum0 = Signal(signed(tw), reset_less=True)
        vals = []
        for n in range(L):
            pat = self.wgt.payload[n]
            top = pat[g - 1]
            idx = pat[: g - 1] ^ ~top.replicate(g - 1)  # P or ~P, low g-1 bits
            looked = Signal(signed(tw), name=f"look{n}")
            m.d.comb += looked.eq(_mux_tree(idx, [table[p] for p in range(e)]))
            vals.append(Mux(top, looked, -looked))
        with m.If(adv):
            m.d.sync += [
                v0.eq(fire),
                clr0.eq(first & ~accf),
                last0.eq(last_beat),
                plane0.eq(plane),
                sum0.eq(Mux(plane == 0, table[e - 1], 0)),
            ]
            m.d.sync += [val0[n].eq(vals[n]) for n in range(L)]

        # ------------------------------------------------------------------ accumulate (stage 2)
        acc = [Signal(signed(LUT_ACC_BITS), name=f"acc{n}", reset_less=True) for n in range(L)]
        asum = Signal(signed(LUT_ACC_BITS), reset_less=True)
        pend = Signal()  # the accumulators hold a finished tile for the output FIFO
        with m.If(adv):
            m.d.sync += pend.eq(v0 & last0)
            with m.If(v0):
                for n in range(L):
                    m.d.sync += acc[n].eq(Mux(clr0, 0, acc[n]) + (val0[n] << plane0))
                m.d.sync += asum.eq(Mux(clr0, 0, asum) + sum0)

        # ------------------------------------------------------------------ result (stage 3)
        # A finished tile's (acc - asum) >> 1 goes into a 2-entry output FIFO (as in the other
        # GEMM engines): res backpressure holds the pipeline only when a tile finishes while
        # the FIFO is full.
        m.submodules.ofifo = ofifo = fifo.SyncFIFO(width=32 * L, depth=2)
        m.d.comb += [
            adv.eq(~pend | ofifo.w_rdy),
            ofifo.w_en.eq(pend & ofifo.w_rdy),
            ofifo.w_data.eq(Cat((acc[n] - asum)[1:LUT_ACC_BITS] for n in range(L))),
            self.res.valid.eq(ofifo.r_rdy),
            self.res.payload.eq(ofifo.r_data),
            ofifo.r_en.eq(self.res.ready),
            self.stall.eq(~adv),
            self.busy.eq(busy | v0 | pend | ofifo.r_rdy),
        ]
        return m
