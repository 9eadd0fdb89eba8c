"""DMA: 2-D strided AXI4 bursts between device memory and the scratchpads (LOAD / STORE).

Two independent units execute the load and store queues of the controller (without queues,
``cfg.queue_depth == 0``, one :class:`DmaUnit` holds both datapaths on one burst splitter):

* :class:`LoadUnit` (``LOAD``): reads ``rows`` rows of ``row_bytes`` at ``dram + r * stride``
  over AR/R and writes them to contiguous words of SPAD or ACC from ``loc``;
* :class:`StoreUnit` (``STORE``): reads contiguous SPAD/ACC words from ``loc`` and writes them
  over AW/W/B to ``rows`` rows at ``dram + r * stride``.

Each row is split into ``INCR`` bursts of at most 256 beats that never cross a 4 KiB page;
several bursts are outstanding at once (``max_outstanding``). The burst splitter's registers
are the AR/AW address and length (they advance on the address handshake). An
``SLVERR``/``DECERR`` response (``xRESP[1]`` set) marks the instruction as failed
(``ErrorCode.BUS_ERROR``): the unit still completes every burst it issued (the AXI protocol
requires it), writes nothing of an error beat, and reports ``done`` with ``err``.

:class:`AxiJoin` merges instruction fetch, the load unit and the store unit onto the single
AXI4 manager port of the top: AR is arbitrated (fetch first, the choice held while ``arvalid``
waits for ``arready``), R is routed by ``rid`` (:data:`ID_LOAD`, :data:`ID_FETCH`), AW/W/B
belong to the store unit.

Abort (``CTRL.RESET``, watchdog): a unit stops issuing bursts, drains the outstanding ones
(sending ``wstrb = 0`` beats for write bursts whose data had not been sent) and goes idle
without ``done``, so the AXI slave is never left with half a transaction.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import AcceleratorConfig
from tritium.isa import Op

from .axi import BURST_INCR, MAX_BURST_BEATS, PAGE_BYTES, Axi4Signature
from .controller import gt_const, instr_layout
from .scratchpad import MemPortSignature

__all__ = ["ID_FETCH", "ID_LOAD", "AxiJoin", "DmaUnit", "LoadUnit", "StoreUnit", "axi_signature"]

#: AXI IDs: the load unit's reads and all writes use 0, instruction fetch uses 1.
ID_LOAD = 0
ID_FETCH = 1
ID_WIDTH = 2
ADDR_WIDTH = 32


def axi_signature(cfg: AcceleratorConfig) -> Axi4Signature:
    """The device-memory AXI4 port of a config: 32-bit addresses, ``cfg.bus_width`` data."""
    return Axi4Signature(addr_width=ADDR_WIDTH, data_width=cfg.bus_width, id_width=ID_WIDTH)


def _log2(v: int) -> int:
    return (v - 1).bit_length()


def _ge_narrow(a, b) -> Value:
    """``a >= b`` (unsigned) for a narrow ``b``, as plain logic: yosys makes any comparison a
    carry chain (a logic cell per bit of ``a``, which cannot pack with a LUT)."""
    a, b = Value.cast(a), Value.cast(b)
    n = len(b)
    hi = a[n:].any() if len(a) > n else Const(0)
    return hi | Cat(*((b == v) & gt_const(a[:n], v - 1) for v in range(1 << n))).any()


def dev_addr_bits(cfg: AcceleratorConfig) -> int:
    """Width of the units' device-memory address registers: enough for ``dev_mem_bytes``
    (and for the 4 KiB page arithmetic). The controller's checker rejects every range outside
    device memory before dispatch, so no valid transfer needs more; the AXI address port
    stays :data:`ADDR_WIDTH` bits (the upper bits are zero)."""
    return max(12, _log2(cfg.dev_mem_bytes))


class _BurstSplitter:
    """Walks the rows of a 2-D transfer and cuts them into AXI bursts.

    ``start`` (driven high by a unit for one cycle) loads the instruction view ``d``;
    ``addr``/``beats`` is the next burst, stable until ``take`` (high in the cycle the burst's
    address handshake happens) consumes it; ``more`` is 1 while bursts remain. Units assign
    ``start``/``take`` only under their own conditions (``with m.If(...)``), so that two units
    of one module (:class:`DmaUnit`) can share a splitter.

    ``avail``: ``addr``/``beats`` is a burst to show (``more``, except in setup cycles);
    ``len`` is ``beats - 1`` (AXI ``xLEN``).

    ``lean`` (``words_bits``: width of a row's word count, which the scratchpad side bounds): a
    burst ends at the end of its row or at the next multiple of
    ``min(PAGE_BYTES, MAX_BURST_BEATS * bus_bytes)`` bytes, so one comparison gives its length
    (otherwise: at the row end, the 4 KiB page end or after ``MAX_BURST_BEATS`` beats,
    whichever comes first); a row's first burst is set up in a cycle of its own (after
    ``start`` and after the previous row's last burst), so the address and word count
    registers load from one source each besides their adders; ``rem`` and ``row_words`` hold
    one less than the count and ``len`` is computed first (``beats`` is ``len + 1``).
    """

    def __init__(self, m: Module, cfg: AcceleratorConfig, name: str, d, lean: bool = False,
                 words_bits: int = 0):
        self.name = name
        self.bb = cfg.bus_bytes
        lb = self.lb = _log2(self.bb)
        page_words = PAGE_BYTES // self.bb
        aw = dev_addr_bits(cfg)  # (a row's stride beyond device memory: rows == 1, unused)
        self.start = Signal(name=f"{name}_start")
        self.take = Signal(name=f"{name}_take")
        self.addr = Signal(aw, name=f"{name}_addr")
        self.row_addr = Signal(aw, name=f"{name}_row_addr")
        self.stride = Signal(aw, name=f"{name}_stride")
        wb = words_bits if lean else len(d.row_bytes) - lb
        self.row_words = Signal(wb, name=f"{name}_row_words")
        self.rem = Signal(wb, name=f"{name}_rem")  # words left in the current row
        self.rows = Signal(len(d.rows), name=f"{name}_rows")  # rows left, current included
        self.more = Signal(name=f"{name}_more")
        self.avail = Signal(name=f"{name}_avail")
        self.beats = Signal(range(MAX_BURST_BEATS + 1), name=f"{name}_beats")
        self.len = Signal(_log2(MAX_BURST_BEATS), name=f"{name}_len")
        word = self.addr[lb:]
        if lean:
            nb = _log2(min(page_words, MAX_BURST_BEATS))
            to_bnd = ~word[:nb]  # len of a burst to the boundary
            row_end = self.rem <= to_bnd  # (rem: words left - 1) the burst ends the row
            m.d.comb += [self.len.eq(Mux(row_end, self.rem[:nb], to_bnd)),
                         self.beats.eq(self.len + 1)]
        else:
            # the burst's length and whether it ends the row are registers, computed from the
            # address and word count of the last cycle (timing: no page compare between the
            # address register and AR/AW's length); so a burst is shown from the second cycle
            # after ``start`` or the last ``take`` (``fresh``: the registers are not yet valid)
            m.d.comb += self.len.eq(self.beats - 1)
            page_left = Signal(range(page_words + 1), name=f"{name}_page_left")
            m.d.comb += page_left.eq(page_words - word[: _log2(page_words)])
            fits_page = ~(page_left < self.rem)
            b = Mux(fits_page, self.rem, page_left)
            b_ok = b <= MAX_BURST_BEATS
            row_end = Signal(name=f"{name}_row_end")  # (beats == rem) the burst ends the row
            fresh = Signal(name=f"{name}_fresh")
            m.d.sync += [self.beats.eq(Mux(b_ok, b, MAX_BURST_BEATS)),
                         row_end.eq(fits_page & b_ok), fresh.eq(self.start | self.take)]

        if lean:
            self._walk_lean(m, aw, lb, d, row_end)
            return
        m.d.comb += self.avail.eq(self.more & ~fresh)
        with m.If(self.start):
            words = d.row_bytes >> lb
            m.d.sync += [
                self.addr.eq(d.dram),
                self.row_addr.eq(d.dram),
                self.stride.eq(d.stride),
                self.row_words.eq(words),
                self.rem.eq(words),
                self.rows.eq(d.rows),
                self.more.eq(1),
            ]
        with m.Elif(self.take):
            with m.If(row_end):
                m.d.sync += [
                    self.rows.eq(self.rows - 1),
                    self.row_addr.eq(self.row_addr + self.stride),
                    self.addr.eq(self.row_addr + self.stride),
                    self.rem.eq(self.row_words),
                ]
                with m.If(self.rows == 1):
                    m.d.sync += self.more.eq(0)
            with m.Else():
                m.d.sync += [
                    self.rem.eq(self.rem - self.beats),
                    self.addr.eq(self.addr + (self.beats << lb)),
                ]


    def _walk_lean(self, m: Module, aw: int, lb: int, d, row_end) -> None:
        """The ``lean`` walk: word addresses (the low bits of the byte addresses are 0) and
        a setup cycle before each row's first burst."""
        name = self.name
        raddr = Signal(aw - lb, name=f"{name}_word")
        rrow = Signal(aw - lb, name=f"{name}_row_word")
        rstride = Signal(aw - lb, name=f"{name}_stride_words")
        m.d.comb += [self.addr.eq(raddr << lb), self.row_addr.eq(rrow << lb),
                     self.stride.eq(rstride << lb)]
        setup = Signal(name=f"{name}_setup")  # load the row's first burst
        m.d.comb += self.avail.eq(self.more & ~setup)
        # (``take`` never comes with ``start`` or in a setup cycle; after a row's last burst
        # ``raddr``/``rem`` are loaded again before they are used)
        with m.If(setup):
            m.d.sync += [raddr.eq(rrow), self.rem.eq(self.row_words)]
        with m.Elif(self.take):
            m.d.sync += [raddr.eq(raddr + self.len + 1), self.rem.eq(self.rem - self.len - 1)]
        last_row = self.rows == 1
        with m.If(self.start):
            m.d.sync += [
                rrow.eq(d.dram >> lb),
                rstride.eq(d.stride >> lb),
                self.row_words.eq((d.row_bytes >> lb) - 1),
                self.rows.eq(d.rows),
            ]
        with m.Elif(self.take & row_end):
            m.d.sync += [self.rows.eq(self.rows - 1), rrow.eq(rrow + rstride)]
        m.d.sync += [
            self.more.eq(Mux(self.start, 1, self.more & ~(self.take & row_end & last_row))),
            setup.eq(self.start | (self.take & row_end & ~last_row)),
        ]


class _ShiftFIFO(wiring.Component):
    """A first-word-fall-through FIFO whose head is always entry 0 (entries shift on a read).

    The interface and timing of :class:`amaranth.lib.fifo.SyncFIFO` (``fwft``; no write while
    full, even with a read), without a read multiplexer: every entry loads either ``w_data``
    or the entry above it, so on iCE40 each entry bit is one LUT4 and its flip-flop.

    Members
    -------
    w_data : In(width)
    w_en : In(1)
    w_rdy : Out(1)
    r_data : Out(width)
    r_en : In(1)
    r_rdy : Out(1)
    """

    def __init__(self, width: int, depth: int):
        self.width = width
        self.depth = depth
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1),
        })

    def _level(self, m: Module):
        """The fill level and this cycle's push and pop (``w_rdy`` / ``r_rdy`` from it)."""
        level = Signal(range(self.depth + 1))
        push = Signal()
        pop = Signal()
        m.d.comb += [
            self.w_rdy.eq(level != self.depth),
            self.r_rdy.eq(level != 0),
            push.eq(self.w_en & self.w_rdy),
            pop.eq(self.r_en & self.r_rdy),
        ]
        m.d.sync += level.eq(level + push - pop)
        return level, push, pop

    def elaborate(self, platform):
        m = Module()
        n = self.depth
        level, push, pop = self._level(m)
        e = [Signal(self.width, name=f"e{i}") for i in range(n)]
        m.d.comb += self.r_data.eq(e[0])
        slot = Signal(range(n + 1))  # where a written word goes
        m.d.comb += slot.eq(level - pop)
        for i in range(n):
            with m.If(push & (slot == i)):
                m.d.sync += e[i].eq(self.w_data)
            if i + 1 < n:
                with m.Elif(pop):
                    m.d.sync += e[i].eq(e[i + 1])
        return m


class _RingFIFO(_ShiftFIFO):
    """A first-word-fall-through FIFO (members and timing as :class:`_ShiftFIFO`) whose
    entries stay where they are written: a write loads the entry at the write pointer, a read
    moves the read pointer, and ``r_data`` is the entry it selects. The read side touches only
    the pointers and the level, so a read enable that arrives late (the store's W handshake,
    from the device memory's ``wready`` and the controller's ``abort``) does not reach the
    entries' enables (timing: on the ECP5-85F that fan-out, 64 bits x 4 entries, was the
    worst path class of ``base``)."""

    def elaborate(self, platform):
        m = Module()
        n = self.depth
        _, push, pop = self._level(m)
        wptr = Signal(range(n))
        rptr = Signal(range(n))
        e = Array(Signal(self.width, name=f"e{i}", reset_less=True) for i in range(n))
        m.d.comb += self.r_data.eq(e[rptr])
        with m.If(push):
            m.d.sync += [e[wptr].eq(self.w_data), wptr.eq(Mux(wptr == n - 1, 0, wptr + 1))]
        with m.If(pop):
            m.d.sync += rptr.eq(Mux(rptr == n - 1, 0, rptr + 1))
        return m


class _TailFIFO(wiring.Component):
    """A two-entry first-word-fall-through FIFO (members as :class:`_ShiftFIFO`) whose
    writes always go to the tail entry, which moves to the head when that is free: ``w_data``
    feeds one register only (so a multiplexer in front of it packs with it), the head loads
    only from the tail. A word is readable two cycles after its write (one more than
    :class:`_ShiftFIFO`); ``w_rdy`` also while the tail moves."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        e0 = Signal(self.width, name="e0")
        e1 = Signal(self.width, name="e1")
        v0, v1 = Signal(), Signal()
        pop = Signal()
        move = Signal()
        push = Signal()
        m.d.comb += [
            self.r_data.eq(e0),
            self.r_rdy.eq(v0),
            pop.eq(self.r_en & v0),
            move.eq(v1 & (~v0 | pop)),
            self.w_rdy.eq(~v1 | move),
            push.eq(self.w_en & self.w_rdy),
        ]
        with m.If(move):
            m.d.sync += e0.eq(e1)
        with m.If(push):
            m.d.sync += e1.eq(self.w_data)
        m.d.sync += [v0.eq(move | (v0 & ~pop)), v1.eq(push | (v1 & ~move))]
        return m


def _show_burst(m: Module, axi, ch: str, sp, lb: int, valid) -> None:
    """Drive AXI address channel ``ch`` (``"ar"`` / ``"aw"``) with the splitter's next burst
    (id :data:`ID_LOAD`, INCR, full-width beats) and ``valid``."""
    m.d.comb += [
        getattr(axi, f"{ch}id").eq(ID_LOAD),
        getattr(axi, f"{ch}addr").eq(sp.addr),
        getattr(axi, f"{ch}len").eq(sp.len),
        getattr(axi, f"{ch}size").eq(lb),
        getattr(axi, f"{ch}burst").eq(BURST_INCR),
        getattr(axi, f"{ch}valid").eq(valid),
    ]


def _unit_members(cfg: AcceleratorConfig, spad_bits: int, acc_bits: int) -> dict:
    bb = cfg.bus_bytes
    return {
        "cmd": In(stream.Signature(instr_layout(Op.LOAD))),
        "axi": Out(axi_signature(cfg)),
        "spad": Out(MemPortSignature(spad_bits, bb)),
        "acc": Out(MemPortSignature(acc_bits, bb)),
        "done": Out(1),
        "err": Out(1),
        "abort": In(1),
        "busy": Out(1),
        "stall": Out(1),
        "idle": Out(1),
    }


class _Regs:
    """The per-instruction registers of a datapath: scratchpad word pointer, space, error
    flag, aborting and bursts outstanding. A unit's datapath assigns them only while it is
    active (or when it starts), so the two datapaths of a :class:`DmaUnit` (one instruction
    at a time) share one set."""

    def __init__(self, name: str, u, max_out: int):
        self.ptr = Signal(max(len(u.spad.addr), len(u.acc.addr)), name=f"{name}_ptr")
        self.ptr_load = Signal(name=f"{name}_ptr_load")  # (comb) ptr <- loc (a start)
        self.ptr_step = Signal(name=f"{name}_ptr_step")  # (comb) ptr <- ptr + 1
        self.space = Signal(name=f"{name}_space")
        self.errflag = Signal(name=f"{name}_errflag")
        self.aborting = Signal(name=f"{name}_aborting")
        self.count = Signal(range(max_out + 1), name=f"{name}_count")

    def drive_ptr(self, m: Module, loc, lb: int) -> None:
        """The pointer's one assignment (``loc``: the instruction's byte address)."""
        with m.If(self.ptr_load):
            m.d.sync += self.ptr.eq(loc >> lb)
        with m.Elif(self.ptr_step):
            m.d.sync += self.ptr.eq(self.ptr + 1)


def _load_path(m: Module, cfg: AcceleratorConfig, u, sp: _BurstSplitter, max_out: int,
               r: _Regs, abort=None, rslice: bool = False):
    """The load datapath of interface ``u`` (:func:`_unit_members`) on splitter ``sp``.

    ``abort``: the abort the datapath follows (default ``u.abort``; the queued units pass a
    registered copy). ``rslice``: R beats pass a two-entry FIFO (:class:`_RingFIFO`, its
    ``w_rdy`` a register) before the scratchpad write, so ``rready`` does not follow the
    scratchpad's arbitration (timing); a beat is written a cycle later."""
    lb = _log2(cfg.bus_bytes)
    axi = u.axi
    abort = u.abort if abort is None else abort
    active = Signal(name="ld_active")
    aborting, space, errflag, wptr = r.aborting, r.space, r.errflag, r.ptr
    outstanding = r.count  # accepted bursts
    ar_hold = Signal(name="ld_ar_hold")  # arvalid was up and not accepted: keep it up

    # ------------------------------------------------------------------ AR
    # The splitter's next burst is on AR; it advances on the handshake. The first one waits a
    # cycle (``ar_go``), so that the controller's fetch of the next instruction, which starts
    # in the cycle after acceptance, goes first instead of waiting behind the burst's data.
    ar_go = Signal(name="ld_ar_go")
    m.d.sync += ar_go.eq(active)
    ar_fire = Signal(name="ld_ar_fire")
    _show_burst(m, axi, "ar", sp, lb, ar_hold | (active & ar_go & sp.avail & ~aborting
                                               & ~abort & (outstanding < max_out)))
    m.d.comb += [
        ar_fire.eq(axi.arvalid & axi.arready),
        u.cmd.ready.eq(~active),
    ]
    with m.If(ar_fire):
        m.d.comb += sp.take.eq(1)
    r_last = Signal(name="ld_r_last")
    m.d.comb += r_last.eq(axi.rvalid & axi.rready & axi.rlast)
    m.d.sync += ar_hold.eq(axi.arvalid & ~axi.arready)
    with m.If(active):
        m.d.sync += outstanding.eq(outstanding + ar_fire - r_last)

    # ------------------------------------------------------------------ R -> scratchpad
    write = Signal(name="ld_write")
    if rslice:
        q = _RingFIFO(8 * cfg.bus_bytes + 1, 2)
        m.submodules.ld_rq = q
        m.d.comb += [q.w_en.eq(axi.rvalid), q.w_data.eq(Cat(axi.rdata, axi.rresp[1])),
                     axi.rready.eq(q.w_rdy)]
        beat_v, beat_data, bad = q.r_rdy, q.r_data[:-1], q.r_data[-1]
    else:
        beat_v, beat_data, bad = axi.rvalid, axi.rdata, axi.rresp[1]
    m.d.comb += write.eq(beat_v & ~bad & ~aborting & ~abort)
    for port, sel in ((u.spad, ~space), (u.acc, space)):
        m.d.comb += [
            port.addr.eq(wptr),
            port.en.eq(write & sel),
            port.we.eq(1),
            port.wdata.eq(beat_data),
            port.wmask.eq(-1),
        ]
    acked = Mux(space, u.acc.ack, u.spad.ack)
    done_beat = Signal(name="ld_beat")  # a beat leaves: written, or dropped (error, abort)
    if rslice:
        m.d.comb += [done_beat.eq(beat_v & Mux(write, acked, 1)), q.r_en.eq(done_beat)]
    else:
        m.d.comb += [axi.rready.eq(Mux(write, acked, 1)), done_beat.eq(axi.rvalid & axi.rready)]
    with m.If(done_beat):
        m.d.comb += r.ptr_step.eq(1)
        with m.If(bad):
            m.d.sync += errflag.eq(1)

    # ------------------------------------------------------------------ start / finish
    with m.If(u.cmd.valid & u.cmd.ready):
        d = u.cmd.payload
        m.d.sync += [active.eq(1), space.eq(d.space[0]), errflag.eq(0),
                     aborting.eq(0)]
        m.d.comb += r.ptr_load.eq(1)
        m.d.comb += sp.start.eq(1)
    with m.If(active & abort):
        m.d.sync += aborting.eq(1)
    finished = Signal(name="ld_finished")
    m.d.comb += finished.eq(active & (~sp.more | aborting) & ~ar_hold & (outstanding == 0)
                            & (~q.r_rdy if rslice else 1))
    with m.If(finished):
        m.d.sync += [active.eq(0), aborting.eq(0)]
        m.d.comb += [u.done.eq(~aborting & ~abort), u.err.eq(errflag)]

    m.d.comb += [
        u.busy.eq(active),
        u.stall.eq(active & ~(axi.rvalid & axi.rready)),
        # (an instruction finishes only with nothing outstanding)
        u.idle.eq(~active),
    ]


def _store_path(m: Module, cfg: AcceleratorConfig, u, sp: _BurstSplitter, max_out: int,
                r: _Regs, fifo_depth: int, lean: bool = False, abort=None):
    """The store datapath of interface ``u`` (:func:`_unit_members`) on splitter ``sp``.

    ``lean``: the W beats of one burst at a time: the next burst is shown on AW once every W
    beat of the previous one is sent (B responses may still be outstanding), and the
    scratchpad is read only for the beats of the burst being sent (no beat-count FIFO, no
    word count of the whole transfer), into a :class:`_TailFIFO` (two entries; a read also
    when one is popped in the same cycle: 2/3 of a beat per cycle, as two entries of
    :class:`_ShiftFIFO`)."""
    bb = cfg.bus_bytes
    lb = _log2(bb)
    axi = u.axi
    abort = u.abort if abort is None else abort  # (as in _load_path)
    active = Signal(name="st_active")
    aborting, space, errflag, rptr = r.aborting, r.space, r.errflag, r.ptr
    if not lean:
        rleft = Signal(len(rptr) + 1, name="st_rleft")  # words still to read from the scratchpad
        # rleft = rows * words per row, multiplied in the first active cycle from registers
        # of the command (timing: no multiplier between the controller's queue and rleft);
        # no read in that cycle
        st_init = Signal(name="st_init")
        rows_r = Signal(len(u.cmd.payload.rows), name="st_rows")
        words_r = Signal(len(u.cmd.payload.row_bytes) - lb, name="st_row_words")
    held = Signal(range(fifo_depth + 1), name="st_held")  # FIFO entries + reads in flight
    b_out = r.count  # AW bursts awaiting B
    aw_hold = Signal(name="st_aw_hold")  # awvalid was up and not accepted: keep it up
    if lean:  # the W burst: beats left - 1, and a flag
        w_left = Signal(_log2(MAX_BURST_BEATS), name="st_w_len")
        w_act = Signal(name="st_w_act")
        w_last = w_left == 0
    else:
        w_left = Signal(range(MAX_BURST_BEATS + 1), name="st_w_left")  # beats left in it
        w_act = w_left != 0
        w_last = w_left == 1
    stop = Signal(name="st_stop")
    m.d.comb += stop.eq(aborting | abort)

    dfifo = _TailFIFO(8 * bb) if lean else _RingFIFO(8 * bb, fifo_depth)
    m.submodules.st_dfifo = dfifo
    if not lean:
        # (beat counts of bursts whose W has not started: never more than ``b_out``)
        lfifo = _ShiftFIFO(9, max_out)
        m.submodules.st_lfifo = lfifo

    # ------------------------------------------------------------------ scratchpad reads
    rd = Signal(name="st_rd")
    pop = Signal(name="st_pop")
    if lean:
        # (a read may replace the word popped in this cycle; ``held`` never exceeds the
        # beats left, which a pop lowers as well)
        m.d.comb += rd.eq(active & ~stop & w_act & _ge_narrow(w_left, held) & ((held < 2) | pop))
    else:
        m.d.comb += rd.eq(active & ~stop & ~st_init & (rleft != 0) & (held < fifo_depth))
    for port, sel in ((u.spad, ~space), (u.acc, space)):
        m.d.comb += [port.addr.eq(rptr), port.en.eq(rd & sel), port.we.eq(0)]
    acked = Signal(name="st_acked")
    m.d.comb += acked.eq(rd & Mux(space, u.acc.ack, u.spad.ack))
    with m.If(acked):
        m.d.comb += r.ptr_step.eq(1)
        if not lean:
            m.d.sync += rleft.eq(rleft - 1)
    rvalid = Mux(space, u.acc.rvalid, u.spad.rvalid)
    m.d.comb += [
        dfifo.w_en.eq(rvalid),
        dfifo.w_data.eq(Mux(space, u.acc.rdata, u.spad.rdata)),
    ]

    # ------------------------------------------------------------------ AW
    # The splitter's next burst is on AW; it advances on the handshake. Its beat count goes
    # to the W side in the first cycle it is shown (W never waits for AW's handshake).
    aw_new = Signal(name="st_aw_new")
    w_free = ~w_act if lean else 1
    _show_burst(m, axi, "aw", sp, lb,
                aw_hold | (active & sp.avail & ~stop & (b_out < max_out) & w_free))
    m.d.comb += [
        aw_new.eq(axi.awvalid & ~aw_hold),
        axi.bready.eq(1),
        u.cmd.ready.eq(~active),
    ]
    with m.If(axi.awvalid & axi.awready):
        m.d.comb += sp.take.eq(1)
    if not lean:
        m.d.comb += [lfifo.w_en.eq(aw_new), lfifo.w_data.eq(sp.beats)]
    m.d.sync += aw_hold.eq(axi.awvalid & ~axi.awready)
    with m.If(active):
        m.d.sync += b_out.eq(b_out + aw_new - axi.bvalid)
    with m.If(axi.bvalid & axi.bresp[1]):
        m.d.sync += errflag.eq(1)

    # ------------------------------------------------------------------ W beats
    if lean:
        with m.If(aw_new):  # (no W burst: no beat this cycle)
            m.d.sync += [w_left.eq(sp.len), w_act.eq(1)]
    else:
        m.d.comb += lfifo.r_en.eq((w_left == 0) & lfifo.r_rdy)
        with m.If(lfifo.r_en):
            m.d.sync += w_left.eq(lfifo.r_data)
    m.d.comb += [
        axi.wvalid.eq(w_act & (dfifo.r_rdy | stop)),
        axi.wdata.eq(dfifo.r_data),
        axi.wstrb.eq(Mux(stop, 0, (1 << bb) - 1)),
        axi.wlast.eq(w_last),
    ]
    w_fire = Signal(name="st_w_fire")
    m.d.comb += w_fire.eq(axi.wvalid & axi.wready)
    with m.If(w_fire):
        m.d.sync += w_left.eq(w_left - 1)
        if lean:
            with m.If(w_last):
                m.d.sync += w_act.eq(0)
    m.d.comb += pop.eq(dfifo.r_rdy & ((w_fire & ~stop) | stop))
    m.d.comb += dfifo.r_en.eq(pop)
    m.d.sync += held.eq(held + acked - pop)

    # ------------------------------------------------------------------ start / finish
    if not lean:
        m.d.sync += st_init.eq(0)
        with m.If(st_init):
            m.d.sync += rleft.eq(rows_r * words_r)
    with m.If(u.cmd.valid & u.cmd.ready):
        d = u.cmd.payload
        m.d.sync += [active.eq(1), space.eq(d.space[0]), errflag.eq(0), aborting.eq(0)]
        m.d.comb += r.ptr_load.eq(1)
        if not lean:
            m.d.sync += [st_init.eq(1), rows_r.eq(d.rows), words_r.eq(d.row_bytes >> lb)]
        m.d.comb += sp.start.eq(1)
    with m.If(active & abort):
        m.d.sync += aborting.eq(1)
    finished = Signal(name="st_finished")
    m.d.comb += finished.eq(
        active
        & (~sp.more | aborting)
        & ~aw_hold
        & (b_out == 0)
        & (Const(1) if lean else ~lfifo.r_rdy)
        & ~w_act
        & (held == 0)
    )
    with m.If(finished):
        m.d.sync += [active.eq(0), aborting.eq(0)]
        m.d.comb += [u.done.eq(~aborting & ~abort), u.err.eq(errflag)]

    m.d.comb += [
        u.busy.eq(active),
        u.stall.eq(active & ~w_fire),
        # (an instruction finishes only with nothing outstanding)
        u.idle.eq(~active),
    ]


class LoadUnit(wiring.Component):
    """Executes ``LOAD``: device memory (AXI AR/R) -> SPAD/ACC.

    Cycle contract: one instruction at a time; the next burst is shown on AR from the second
    cycle after the instruction is accepted, the following one in the second cycle after
    each address handshake (the splitter registers a burst's length; one burst every two
    cycles while ``arready`` stays high) while fewer than
    ``max_outstanding`` are outstanding; every R beat goes through a two-entry FIFO into the
    scratchpad, written the cycle after it is accepted at the earliest (``rready`` is the
    FIFO's registered room, not the scratchpad port's ``ack``), so throughput is one beat per
    cycle when the memory and the scratchpad allow. ``done`` pulses (with ``err`` on an error
    response) one cycle after the last beat is written. ``abort`` is followed one cycle
    later (a register: timing).

    Parameters
    ----------
    cfg : AcceleratorConfig
    spad_bits, acc_bits : int
        Word-address widths of the SPAD and ACC ports.
    max_outstanding : int
        Read bursts in flight at most.

    Members
    -------
    cmd : In(stream.Signature(instr_layout(Op.LOAD)))
        The instruction (accepted when idle).
    axi : Out(Axi4Signature)
        AR/R channels used (AW/W/B idle).
    spad, acc : Out(MemPortSignature)
        Write ports into the scratchpads.
    done, err : Out(1)
        Completion pulse and its error flag (BUS_ERROR).
    abort : In(1)
        Stop issuing, drain outstanding bursts, go idle without ``done``.
    busy, stall : Out(1)
        Executing an instruction; executing but no beat moved this cycle.
    idle : Out(1)
        Nothing in progress and no AXI transaction outstanding.
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int,
                 max_outstanding: int = 4):
        self.cfg = cfg
        self.max_out = max_outstanding
        super().__init__(_unit_members(cfg, spad_bits, acc_bits))

    def elaborate(self, platform):
        m = Module()
        sp = _BurstSplitter(m, self.cfg, "ld", self.cmd.payload)
        r = _Regs("ld", self, self.max_out)
        # timing (the queued configurations, large devices): the controller's abort is
        # followed a cycle later, and R beats pass a slice before the scratchpad
        abort = Signal(name="ld_abort")
        m.d.sync += abort.eq(self.abort)
        _load_path(m, self.cfg, self, sp, self.max_out, r, abort=abort, rslice=True)
        r.drive_ptr(m, self.cmd.payload.loc, sp.lb)
        return m


class StoreUnit(wiring.Component):
    """Executes ``STORE``: SPAD/ACC -> device memory (AXI AW/W/B).

    Cycle contract: a prefetcher reads scratchpad words into a ``fifo_depth`` FIFO (one per
    cycle when the scratchpad port is free, from the second cycle of the instruction on); AW
    bursts are shown as :class:`LoadUnit` shows AR bursts (each from the second cycle after
    the instruction's start or the last burst's handshake: the splitter registers a burst's
    length), while fewer than ``max_outstanding`` await their B response; W beats follow
    the AW order (a burst's beats may start before its address handshake), one per cycle
    while data is buffered. ``done`` pulses (with ``err`` on an error response) once every B
    response has arrived. ``abort`` is followed one cycle later, as in :class:`LoadUnit`.

    Parameters and members as :class:`LoadUnit` (``spad``/``acc`` are read ports here; ``axi``
    uses AW/W/B).
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int,
                 max_outstanding: int = 4, fifo_depth: int = 4):
        self.cfg = cfg
        self.max_out = max_outstanding
        self.fifo_depth = fifo_depth
        super().__init__(_unit_members(cfg, spad_bits, acc_bits))

    def elaborate(self, platform):
        m = Module()
        sp = _BurstSplitter(m, self.cfg, "st", self.cmd.payload)
        r = _Regs("st", self, self.max_out)
        abort = Signal(name="st_abort")  # (timing: as the load unit's)
        m.d.sync += abort.eq(self.abort)
        _store_path(m, self.cfg, self, sp, self.max_out, r, self.fifo_depth, abort=abort)
        r.drive_ptr(m, self.cmd.payload.loc, sp.lb)
        return m


class DmaUnit(wiring.Component):
    """A :class:`LoadUnit` and a :class:`StoreUnit` that never run at the same time, on one
    :class:`_BurstSplitter` (its address, row, stride and count registers and their adders).

    For a controller without queues (``cfg.queue_depth == 0``), which hands a unit the next
    instruction only after the previous one is done or every unit is idle (abort): the
    caller must not offer ``load.cmd`` and ``store.cmd`` while the other unit is busy or in
    the same cycle. Each side's cycle contract is that of its unit, except that the splitter
    and the store side are ``lean`` (:class:`_BurstSplitter`, :func:`_store_path`): bursts also
    end at multiples of ``min(PAGE_BYTES, MAX_BURST_BEATS * bus_bytes)`` bytes (1 KiB on a
    32-bit bus), each row costs one setup cycle, and a store sends the W beats of one burst at
    a time (its next AW waits for them), reading the scratchpad only for that burst into a
    two-entry :class:`_TailFIFO` (``fifo_depth`` is not used).

    Parameters
    ----------
    cfg : AcceleratorConfig
    spad_bits, acc_bits : int
        Word-address widths of the SPAD and ACC ports.
    max_outstanding : int
        Bursts in flight at most (each side).
    fifo_depth : int
        The store side's prefetch FIFO.

    Members
    -------
    load, store : Out(Signature(...))
        The members of :class:`LoadUnit` and :class:`StoreUnit`.
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int,
                 max_outstanding: int = 4, fifo_depth: int = 4):
        self.cfg = cfg
        self.max_out = max_outstanding
        self.fifo_depth = fifo_depth
        unit = wiring.Signature(_unit_members(cfg, spad_bits, acc_bits))
        super().__init__({"load": Out(unit), "store": Out(unit)})

    def elaborate(self, platform):
        m = Module()
        ld, st = self.load.cmd, self.store.cmd
        d = data.View(instr_layout(Op.LOAD),
                      Mux(st.valid, st.payload.as_value(), ld.payload.as_value()))
        r = _Regs("dma", self.load, self.max_out)
        sp = _BurstSplitter(m, self.cfg, "dma", d, lean=True, words_bits=len(r.ptr) + 1)
        _load_path(m, self.cfg, self.load, sp, self.max_out, r)
        _store_path(m, self.cfg, self.store, sp, self.max_out, r, self.fifo_depth, lean=True)
        r.drive_ptr(m, d.loc, sp.lb)
        return m


class AxiJoin(wiring.Component):
    """Merge instruction fetch (reads), the load unit (reads) and the store unit (writes)
    onto one AXI4 manager port.

    Members
    -------
    fetch, load, store : In(Axi4Signature)
        The three managers (fetch and load use AR/R only, store AW/W/B only).
    bus : Out(Axi4Signature)
        The shared port.
    """

    def __init__(self, cfg: AcceleratorConfig):
        sig = axi_signature(cfg)
        super().__init__(
            {"fetch": In(sig), "load": In(sig), "store": In(sig), "bus": Out(sig)}
        )

    def elaborate(self, platform):
        m = Module()
        bus, f, ld, st = self.bus, self.fetch, self.load, self.store
        # Fetch first, except while the load's AR waits for its handshake (AXI: a shown
        # address stays until accepted); a waiting fetch keeps its arvalid, so keeps the bus.
        ld_wait = Signal()
        owner = Signal()  # 1: fetch
        m.d.comb += owner.eq(f.arvalid & ~ld_wait)
        m.d.sync += ld_wait.eq(~owner & ld.arvalid & ~bus.arready)
        m.d.comb += [
            bus.arid.eq(Mux(owner, ID_FETCH, ID_LOAD)),
            bus.araddr.eq(Mux(owner, f.araddr, ld.araddr)),
            bus.arlen.eq(Mux(owner, f.arlen, ld.arlen)),
            bus.arsize.eq(Mux(owner, f.arsize, ld.arsize)),
            bus.arburst.eq(Mux(owner, f.arburst, ld.arburst)),
            bus.arvalid.eq(Mux(owner, f.arvalid, ld.arvalid)),
            f.arready.eq(owner & bus.arready),
            ld.arready.eq(~owner & bus.arready),
        ]
        to_fetch = bus.rid == ID_FETCH
        for dst, sel in ((f, to_fetch), (ld, ~to_fetch)):
            m.d.comb += [
                dst.rid.eq(bus.rid),
                dst.rdata.eq(bus.rdata),
                dst.rresp.eq(bus.rresp),
                dst.rlast.eq(bus.rlast),
                dst.rvalid.eq(bus.rvalid & sel),
            ]
        m.d.comb += bus.rready.eq(Mux(to_fetch, f.rready, ld.rready))
        m.d.comb += [
            bus.awid.eq(st.awid),
            bus.awaddr.eq(st.awaddr),
            bus.awlen.eq(st.awlen),
            bus.awsize.eq(st.awsize),
            bus.awburst.eq(st.awburst),
            bus.awvalid.eq(st.awvalid),
            st.awready.eq(bus.awready),
            bus.wdata.eq(st.wdata),
            bus.wstrb.eq(st.wstrb),
            bus.wlast.eq(st.wlast),
            bus.wvalid.eq(st.wvalid),
            st.wready.eq(bus.wready),
            st.bid.eq(bus.bid),
            st.bresp.eq(bus.bresp),
            st.bvalid.eq(bus.bvalid),
            bus.bready.eq(st.bready),
        ]
        return m
