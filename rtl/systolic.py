"""INT8 output-stationary systolic array (the ``systolic`` compute engine, opcode GEMM_I8)."""

from __future__ import annotations

from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import AcceleratorConfig

from .scratchpad import registered_product

__all__ = ["GEMM_CMD_LAYOUT", "HeadRegisterFIFO", "SystolicArray", "fifo_room", "systolic_fifo_rows",
           "systolic_latency"]

#: Payload of the ``cmd`` stream shared by the GEMM engines: ``beats`` (bits 15..0) is the
#: number of ``act``/``wgt`` beats of the tile (0 gives an all-zero product), ``acc`` (bit 16)
#: adds the tile's product to the previous tile's result instead of starting from zero.
GEMM_CMD_LAYOUT = data.StructLayout({"beats": unsigned(16), "acc": unsigned(1)})


def systolic_fifo_rows(rows: int, cols: int) -> int:
    """Output FIFO depth, in rows: a tile's rows are reserved from its last beat until ``res``
    takes them (``rows + cols + 4`` cycles with ``res`` always ready), tiles' last beats are
    at least ``max(rows, cols)`` cycles apart, and the next tile needs ``rows`` more."""
    period = max(rows, cols)
    return rows * (-(-(rows + cols + 4) // period) + 1)


def fifo_room(m: Module, ofifo: fifo.SyncFIFO, per_tile: int, reserve) -> Signal:
    """Output-FIFO credit of an engine that never stalls: ``reserve`` (a tile's last beat
    enters) books ``per_tile`` entries, each entry the consumer takes frees one. Returns a
    register: 1 when ``per_tile`` more entries are free (the next last beat may enter)."""
    reserved = Signal(range(ofifo.depth + 1))  # entries booked and not yet taken
    booked = Signal(range(ofifo.depth + per_tile + 1))  # ... with this cycle's reserve
    room = Signal()
    pop = ofifo.r_en & ofifo.r_rdy
    # (the consumer's take only selects between results computed without it: timing, the
    # writer's take logic -> the adder -> the compare was a path of the systolic GEMM unit)
    m.d.comb += booked.eq(reserved + Mux(reserve, per_tile, 0))
    m.d.sync += [reserved.eq(Mux(pop, booked - 1, booked)),
                 room.eq(Mux(pop, booked <= ofifo.depth - per_tile + 1,
                             booked <= ofifo.depth - per_tile))]
    return room


def systolic_latency(rows: int, cols: int, k: int) -> int:
    """Cycles from the first ``act``/``wgt`` transfer of a tile to its last ``res`` transfer.

    ``k`` beats, no idle input cycles, ``res`` always ready: ``max(k, 1) + rows + cols + 2``
    (the PEs register each product before adding it; the output FIFO's head is a register).
    """
    return max(k, 1) + rows + cols + 2


class HeadRegisterFIFO(Elaboratable):
    """A FIFO of ``depth`` entries whose head (``r_data``) is a register: a
    :class:`~amaranth.lib.fifo.SyncFIFO` of ``depth - 1`` entries (LUT RAM, read without a
    clock) in front of it. The members are those of ``SyncFIFO`` (``w_en``, ``w_data``,
    ``w_rdy``, ``r_en``, ``r_data``, ``r_rdy``, ``depth``); an entry is readable in the second
    cycle after its write, and one entry per cycle passes through."""

    def __init__(self, width: int, depth: int):
        if depth < 2:
            raise ValueError(f"depth={depth}; must be at least 2")
        self.width, self.depth = width, depth
        self.w_en, self.w_rdy, self.r_en, self.r_rdy = Signal(), Signal(), Signal(), Signal()
        self.w_data, self.r_data = Signal(width), Signal(width)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = fifo.SyncFIFO(width=self.width, depth=self.depth - 1)
        load = Signal()  # the head is empty or leaves now: the next entry moves up
        m.d.comb += [
            inner.w_en.eq(self.w_en),
            inner.w_data.eq(self.w_data),
            self.w_rdy.eq(inner.w_rdy),
            load.eq(inner.r_rdy & (~self.r_rdy | self.r_en)),
            inner.r_en.eq(load),
        ]
        with m.If(load):
            m.d.sync += [self.r_data.eq(inner.r_data), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m


#: Control travelling with each beat: ``v`` a beat (data or zero beat) is present, ``clr`` first
#: beat of a tile that starts from zero, ``last`` last beat of a tile (capture the result).
_CTRL = data.StructLayout({"v": 1, "clr": 1, "last": 1})


class SystolicArray(wiring.Component):
    """R x C output-stationary INT8 array with int32 accumulators (``R, C = cfg.sa_rows,
    cfg.sa_cols``).

    One tile computes ``res = A @ W.T`` for ``A`` int8 ``[R, K]`` and ``W`` int8 ``[C, K]``,
    exactly :func:`tritium.numerics.gemm_i8` ``(A, W)``. Each beat ``k`` brings column ``k`` of
    ``A`` on ``act`` and column ``k`` of ``W.T`` (weights of the C output channels) on ``wgt``;
    the tile's ``K`` comes first on ``cmd``. The result leaves on ``res`` as ``R`` beats, row
    ``r`` of the ``R x C`` tile per beat, rows in order. Row ``r`` of ``A`` enters processing
    element (PE) row ``r`` delayed by ``r`` cycles and moves right, channel ``c`` of ``W`` enters
    PE column ``c`` delayed by ``c`` cycles and moves down, so PE ``(r, c)`` (one multiplier
    with a product register, one int32 accumulator, one result register) sees beat ``k`` at
    cycle ``k + r + c``. Results
    are captured per PE at the tile's last beat, so the next tile streams in without a gap, and
    drain one row per cycle into an output FIFO of :func:`systolic_fifo_rows` rows.

    Cycle contract: ``act`` and ``wgt`` transfer together (both valid), one beat per cycle.
    With ``res`` ready and inputs never idle, a tile of ``K`` beats takes
    ``max(K, 1) + R + C + 2`` cycles (:func:`systolic_latency`) from its first ``act``/``wgt``
    transfer to its last ``res`` transfer (``K + C + 3`` to the first ``res`` beat), and
    back-to-back tiles sustain one beat per cycle when ``K >= max(R, C)``; a shorter tile's last
    beat waits until ``max(R, C)`` cycles after the previous tile's last beat (so that result
    rows never collide). ``K = 0`` injects one zero beat instead of taking inputs. The array
    itself never stalls (no enable fans out to its registers): a tile's last beat enters only
    when the output FIFO has room for its ``R`` rows besides the rows of the tiles before it
    (a count of reserved rows, freed as ``res`` takes them), so backpressure on ``res`` holds
    the input at a tile's last beat; no data is lost. The FIFO is deep enough that ``res``
    always ready never holds the input. Accumulators are 32 bits: sums up to
    ``K <= 131071`` of int8 products
    (and chains of ``acc`` tiles within that bound) are exact.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Uses ``sa_rows`` (R) and ``sa_cols`` (C).

    Members
    -------
    act : In(stream.Signature(ArrayLayout(signed(8), R)))
        Element ``r`` = ``A[r, k]``: one column of the activation tile per beat.
    wgt : In(stream.Signature(ArrayLayout(signed(8), C)))
        Element ``c`` = ``W[c, k]`` (output channel ``c``, reduction index ``k``).
    cmd : In(stream.Signature(GEMM_CMD_LAYOUT))
        ``beats`` = K (number of ``act``/``wgt`` beats, bits 15..0), ``acc`` (bit 16): 1 adds
        to the previous tile's result (K split across tiles), 0 starts from zero. One ``cmd``
        per tile, before its data.
    res : Out(stream.Signature(ArrayLayout(signed(32), C)))
        Element ``c`` of beat ``r`` = ``(A @ W.T)[r, c]``; ``R`` beats per tile.
    busy : Out(1)
        A tile is loaded, in flight or waiting in the output FIFO.
    stall : Out(1)
        A tile's last beat waits this cycle for room in the output FIFO (``res``
        backpressure).
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.rows = cfg.sa_rows
        self.cols = cfg.sa_cols
        super().__init__(
            {
                "act": In(stream.Signature(data.ArrayLayout(signed(8), self.rows))),
                "wgt": In(stream.Signature(data.ArrayLayout(signed(8), self.cols))),
                "cmd": In(stream.Signature(GEMM_CMD_LAYOUT)),
                "res": Out(stream.Signature(data.ArrayLayout(signed(32), self.cols))),
                "busy": Out(1),
                "stall": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        period = max(R, C)  # minimum spacing, in cycles, of two tiles' last beats

        depth = systolic_fifo_rows(R, C)
        # the FIFO's head is a register (timing: on the ECP5-85F the LUT RAM's read address,
        # fanned out to every row bit, and its read multiplexers sat in front of the GEMM
        # writer's element select and accumulate adder)
        m.submodules.ofifo = ofifo = HeadRegisterFIFO(width=32 * C, depth=depth)
        room = Signal()  # registered: room for one more tile's R rows (fifo_room)

        # ------------------------------------------------------------------ tile control
        loaded = Signal()  # a cmd is loaded
        rem = Signal(16)  # beats still to inject (0 with `loaded`: the K=0 zero beat)
        first = Signal()
        acc_flag = Signal()
        since = Signal(range(period), init=period - 1)  # cycles since the last `last` beat
        zero = Signal(init=1)  # rem == 0 and rem <= 1, kept as registers (timing)
        is_last = Signal(init=1)
        go = Signal()  # inject a beat this cycle
        m.d.comb += [
            go.eq(
                loaded
                & (zero | (self.act.valid & self.wgt.valid))
                & (~is_last | ((since == period - 1) & room))
            ),
            self.act.ready.eq(go & ~zero),
            self.wgt.ready.eq(go & ~zero),
            self.cmd.ready.eq(~loaded | (go & is_last)),
        ]
        with m.If(go & is_last):
            m.d.sync += since.eq(0)
        with m.Elif(since != period - 1):
            m.d.sync += since.eq(since + 1)
        m.d.comb += room.eq(fifo_room(m, ofifo, R, go & is_last))
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

        # ------------------------------------------------------------------ skew / pipeline
        # ctrl[i]: control of the beat that is i cycles past the input registers; PE (r, c)
        # multiplies a_line[r][r + c] by w_line[c][r + c] into its product register and adds
        # that product under ctrl[r + c + 1]; row r is complete at ctrl[r + C + 1].
        ctrl = [Signal(_CTRL, name=f"ctrl{i}") for i in range(R + C + 1)]
        a_line = [
            [Signal(signed(8), name=f"a{r}_{j}", reset_less=True) for j in range(r + C)]
            for r in range(R)
        ]
        w_line = [
            [Signal(signed(8), name=f"w{c}_{j}", reset_less=True) for j in range(c + R)]
            for c in range(C)
        ]
        m.d.sync += [
            ctrl[0].v.eq(go),
            ctrl[0].clr.eq(go & first & ~acc_flag),
            ctrl[0].last.eq(go & is_last),
        ]
        m.d.sync += [ctrl[i + 1].eq(ctrl[i]) for i in range(R + C)]
        with m.If(go):
            for r in range(R):
                m.d.sync += a_line[r][0].eq(Mux(zero, 0, self.act.payload[r]))
            for c in range(C):
                m.d.sync += w_line[c][0].eq(Mux(zero, 0, self.wgt.payload[c]))
        for line in a_line + w_line:
            m.d.sync += [line[j + 1].eq(line[j]) for j in range(len(line) - 1)]

        # ------------------------------------------------------------------ PEs
        shadow = [[None] * C for _ in range(R)]
        for r in range(R):
            for c in range(C):
                acc = Signal(signed(32), name=f"acc{r}_{c}", reset_less=True)
                out = Signal(signed(32), name=f"out{r}_{c}", reset_less=True)
                nxt = Signal(signed(32), name=f"nxt{r}_{c}")
                cc = ctrl[r + c + 1]
                # in the MULT18X18D's output register on the ECP5 (timing: the DSP column
                # is far from the PE's fabric registers)
                prod = registered_product(m, platform, a_line[r][r + c], w_line[c][r + c], 1,
                                          name=f"prod{r}_{c}", width=16)
                m.d.comb += nxt.eq(Mux(cc.clr, 0, acc) + prod)
                with m.If(cc.v):
                    m.d.sync += acc.eq(nxt)
                    with m.If(cc.last):
                        m.d.sync += out.eq(nxt)
                shadow[r][c] = out

        # ------------------------------------------------------------------ drain
        row_rdy = Cat(ctrl[r + C + 1].last for r in range(R))  # at most one bit set
        row_sel = [Mux(row_rdy[r], Cat(*shadow[r]), 0) for r in range(R)]
        wdata = row_sel[0]
        for x in row_sel[1:]:
            wdata = wdata | x
        m.d.comb += [
            ofifo.w_en.eq(row_rdy.any()),  # room reserved at the tile's last beat
            ofifo.w_data.eq(wdata),
            self.res.valid.eq(ofifo.r_rdy),
            self.res.payload.eq(ofifo.r_data),
            ofifo.r_en.eq(self.res.ready),
            self.stall.eq(loaded & is_last & ~room),
            self.busy.eq(loaded | Cat(x.v for x in ctrl).any() | ofifo.r_rdy),
        ]
        return m
