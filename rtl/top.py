"""The accelerator top: controller + DMA + scratchpads + compute engines + vector unit + CSRs.

``TritiumTop(cfg)`` has three ports: an AXI4 manager for device memory (``m_axi``), an
AXI4-Lite subordinate for the CSRs (``s_axil``) and ``irq``. Inside::

            s_axil -> CsrBlock <-> Controller --fetch--\\
                                     |  load/store/compute queues
                         LoadUnit  StoreUnit  ComputeUnit
                            |  \\     /  |      |  GemmUnit(systolic|ternary|lut), VectorUnit
                            |   AxiJoin -> m_axi
                         SPAD (BankedMemory)   ACC (BankedMemory)   <- every unit has ports

The compute unit runs one instruction at a time. A GEMM goes to the :class:`GemmUnit` of its
engine: three walkers turn ``C[m,n] (+)= A[m,k] W^T`` into the engine's tiles (``cmd``), its
activation beats and its weight beats, each beat assembled by a :class:`Gather` from the SPAD;
a writer stores the ``res`` beats into ACC (read-add-write when ``accumulate``). Vector
instructions go to :class:`tritium.rtl.vector.VectorUnit` through stream-to-port adapters;
VREQ/VMUL/VRMS first have their (M0, shift) parameters checked (``BAD_OPERAND`` as
:mod:`tritium.golden`). Engines absent from ``cfg.engines`` are not built (the controller
rejects their GEMMs with ``ENGINE_ABSENT``).
"""

from __future__ import annotations

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    DomainRenamer,
    Instance,
    Module,
    Mux,
    ResetInserter,
    ResetSignal,
    Signal,
    signed,
    unsigned,
)
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import ENGINES, AcceleratorConfig
from tritium.isa import ENGINE_GEMM, INSTR_BITS, UNITS, ErrorCode, Op

from .axi import AxiLiteSignature
from .controller import SERIAL_OPS, VEC_OPS, Controller, instr_layout
from .csr import CSR_ADDR_WIDTH, CsrBlock
from .dma import AxiJoin, DmaUnit, LoadUnit, StoreUnit, axi_signature
from .scratchpad import (
    MemPortSignature,
    ReadSlice,
    acc_latency,
    acc_memory,
    kept_lut,
    kept_register,
    late_select,
    spad_latency,
    spad_memory,
)

__all__ = ["ComputeUnit", "Gather", "GemmUnit", "TritiumTop", "delayed", "gemm_unit",
           "scratchpad_bits", "vector_unit"]


def _log2(v: int) -> int:
    return (v - 1).bit_length()


def _engine_class(name: str):
    if name == "systolic":
        from .systolic import SystolicArray

        return SystolicArray
    if name == "ternary":
        from .ternary import TernaryEngine

        return TernaryEngine
    from .lut_core import LutCore

    return LutCore


def _div_const(m: Module, x, d: int, nbits: int, name: str) -> Signal:
    """``x // d`` for a constant ``d`` and ``0 <= x < 2**nbits`` (multiply by reciprocal)."""
    out = Signal(nbits, name=name)
    if d & (d - 1) == 0:
        m.d.comb += out.eq(x >> _log2(d))
        return out
    s = nbits + d.bit_length()
    mul = -(-(1 << s) // d)
    m.d.comb += out.eq((x * mul) >> s)
    return out


def scratchpad_bits(cfg: AcceleratorConfig) -> tuple[int, int]:
    """Word-address widths ``(spad_bits, acc_bits)`` of the SPAD and ACC scratchpads."""
    return (max(1, _log2(cfg.spad_bytes // cfg.bus_bytes)),
            max(1, _log2(cfg.acc_bytes // cfg.bus_bytes)))


class Gather(wiring.Component):
    """Assembles one beat of ``lanes`` bytes from the SPAD through two-word caches.

    Lane ``i`` reads the byte at ``base + (i // group) * gstride + (i % group) * ostride`` when
    ``i // group < glim`` and ``klo <= i % group < khi`` (else it gives 0).

    The cache is organised in *units* of two words each (entries A and B, tagged with their
    word address). When the lanes of a group read contiguous bytes (``ostride`` is 1, i.e. not
    ``var_ostride``) and a group is at most one word long, one unit serves the whole group:
    its bytes lie in the word ``w0`` holding the group's first byte and, when the group
    straddles a word boundary, in ``w0 + 1``; each lane selects its byte from those two words.
    Otherwise (``var_ostride``, one-byte groups, groups longer than a word) every lane is its
    own unit. A unit keeps the word it uses and, when the port has nothing more urgent to do
    and the unit does not straddle, prefetches the following word, so a walker that steps
    through rows of A/W finds the next word there when it crosses a word boundary. Missing
    words are read first, one per cycle; every unit that needs a returned word takes it. A
    unit keeps the words of its own reads in flight (two slots) and does not ask for one of
    them again; two units that miss the same word may each ask for it. A straddling group
    holds both its words and so cannot prefetch: rows that start off a word boundary take
    about three cycles per beat.

    Timing: every unit's address is a register. ``base`` is the beat's base address and
    ``base_adv`` the next beat's, the one the walker moves to when the beat is taken
    (``take``, i.e. ``valid`` and the consumer accepts): the unit registers
    ``(base_adv if take else base) + offset``, both sums computed before ``take`` is known, so
    the tag compares start from registers. The base may change without ``take`` only while
    ``flush`` (instruction start). The lane masks are registered the same way from the
    limits (``glim``, ``klo``, ``khi``) and the next beat's (``glim_adv``, ...), so the
    limit compares are not in the path from ``take`` to ``valid``; in the cycle after a
    flush the masks are those of the old limits and ``valid`` stays low. The unit offsets
    ``(i // group) * gstride + (i % group) * ostride`` are registered (two register stages:
    ``gstride``/``ostride`` are per-instruction constants); with more than
    :attr:`REGISTER_UNITS` units (:attr:`REGISTER_UNITS_STAGED` with ``fill_stage``) the
    missing and prefetch words are registered before one of
    them is selected, and the request is registered: a word found missing in cycle t is
    requested in cycle t+2 (t+1 with few units). With more than :attr:`REGISTER_HIT_UNITS`
    units the hits (an entry holds the unit's word, or the next one) are registers, computed
    a cycle ahead from the next tags (a returned word's) and both candidate addresses, and a
    grouped unit's ``span`` flags (which lanes read ``w0 + 1``) are always registers loaded
    with the address, so the loop ``valid -> take -> address`` holds no compare; the next
    word's sums come from a second registered offset (``loff + word``), not from ``+ 1``.
    ``base`` and ``base_adv`` should then be registers (the GEMM walkers run a beat ahead to
    give them). Registered hits cost no cycles (they are computed ahead); registered miss
    candidates cost one cycle per miss, so the small gathers keep those combinational.
    Tags are true word addresses and a returned word fills a unit only when it is a word the
    unit needs (or the next one) at that time, so offsets, addresses or requests that are a few
    cycles stale (after ``flush``) cost time, never correctness.

    Cycle contract: ``valid`` (with ``req``) when every enabled lane holds its byte; data are
    combinational from the cache, so a beat can be taken every cycle while units hit. ``flush``
    empties the caches and drops the pending request (done at each instruction start, so no
    stale SPAD data survive). ``latency``: the port's read latency (1, or 2 where the SPAD
    registers its read data); with 2, a word read before a flush arrives in the cycle after it
    and is not taken. ``tagged``: the port is a tagged one behind a
    :class:`~tritium.rtl.scratchpad.ReadSlice` (``latency`` is then the nominal latency, 3 for
    ``base``: answers may come later). Each read is tagged with its word address and a flush
    epoch; an answer fills by its returned tag, and one from before the last flush is not
    taken however late it comes.

    ``fill_stage`` (``req`` must then be low in a flush cycle, as the GEMM units keep it:
    they raise it with ``run``, the cycle after ``setup``): the hits are registers whatever
    the number of units, and a returned
    word is written into a unit's cache one cycle later. The unit decides which entry the
    word fills in the cycle it returns (its tag compares) and registers that decision; in the
    next cycle the decision (a register next to the lines) enables the write of the word and
    its tag, which the gather holds in registers of its own
    (:func:`~tritium.rtl.scratchpad.kept_register`: not merged with another gather's copy of
    the same port). Timing: the compares and the enables of a unit's 2 x ``8 * word_bytes``
    line flip-flops are separate register stages (on the ECP5-85F the fill was the worst
    path class). A word is then usable one cycle later than without the stage. Decisions
    see the pending write (an entry about to be written counts as holding its word), so a
    word returning right behind another keeps it, and a pending word is not read again.

    Members
    -------
    base, gstride, ostride : In(24)
    base_adv : In(24)
        Without ``fill_stage``: the next beat's base (a register of the walker).
    base_adv_next, base_adv_load : In(24), In(1)
        With ``fill_stage``, instead of ``base_adv``: the walker's ``base_adv`` register
        changes in this cycle (``base_adv_load``: a flush, or the walker steps) to
        ``base_adv_next`` (its start value in a flush cycle, its advanced value when the
        walker steps; ignored while ``base_adv_load`` is low). Each cache unit keeps its own
        copy of the register, loaded with them (timing: no single register fans out to every
        unit's address adders, and ``take`` reaches the copies' clock enables, not a
        multiplexer in front of them).
    take : In(1)
    glim, klo, khi, glim_adv, klo_adv, khi_adv : In(24)
    req, flush : In(1)
    valid : Out(1)
    data : Out(ArrayLayout(unsigned(8), lanes))
    port : Out(MemPortSignature)
    """

    def __init__(self, lanes: int, group: int, word_bytes: int, addr_bits: int,
                 var_ostride: bool = False, latency: int = 1, tagged: bool = False,
                 fill_stage: bool = False):
        if word_bytes < 2 or word_bytes & (word_bytes - 1):
            raise ValueError(f"word_bytes={word_bytes}; must be a power of two >= 2")
        if not tagged and latency not in (1, 2):
            raise ValueError(f"latency={latency}; the SPAD answers after 1 or 2 cycles")
        if tagged and latency < 1:
            raise ValueError(f"latency={latency}; must be >= 1")
        if fill_stage and not tagged:
            raise ValueError("fill_stage needs a tagged port (the GEMM units' sliced reads)")
        self.latency = latency  # the port's read latency (ack -> rvalid; nominal if tagged)
        self.tagged = tagged
        self.fill_stage = fill_stage  # a returned word is written one cycle later (timing)
        self.lanes = lanes
        self.group = group
        self.word_bytes = word_bytes
        self.addr_bits = addr_bits
        self.var_ostride = var_ostride  # else ``ostride`` is 1 (the port is ignored)
        #: one cache unit per group (True) or per lane (False)
        self.grouped = not var_ostride and 1 < group <= word_bytes
        # with the fill stage the next beat's base arrives as the value the walker's register
        # will hold next cycle (``base_adv_next``); each cache unit keeps its own copy of it
        next_base = ({"base_adv_next": In(24), "base_adv_load": In(1)} if fill_stage
                     else {"base_adv": In(24)})
        super().__init__(
            {
                "base": In(24),
                **next_base,
                "take": In(1),
                "gstride": In(24),
                "ostride": In(24, init=1),
                "glim": In(24),
                "klo": In(24),
                "khi": In(24),
                "glim_adv": In(24),
                "klo_adv": In(24),
                "khi_adv": In(24),
                "req": In(1),
                "flush": In(1),
                "valid": Out(1),
                "data": Out(data.ArrayLayout(unsigned(8), lanes)),
                "port": Out(MemPortSignature(addr_bits, word_bytes,
                                             self.tag_bits(addr_bits) if tagged else 0)),
            }
        )

    @staticmethod
    def tag_bits(addr_bits: int) -> int:
        """Tag width of a tagged gather's port: the word address and the flush epoch."""
        return addr_bits + 1

    #: up to this many cache units, the miss/prefetch candidates are not registered
    REGISTER_UNITS = 8
    #: the same for ``fill_stage`` gathers (the GEMM units' on the large devices; timing: the
    #: miss compares and an 8-way selection tree into the request register were a failing
    #: path of the 8-unit gathers on the ECP5-85F)
    REGISTER_UNITS_STAGED = 4
    #: above this many cache units, the hits that make ``valid`` are registers
    REGISTER_HIT_UNITS = 4
    #: with the fill stage: cycles after a flush before the hits may be set (see ``ahead``)
    SETTLE = 4

    def units(self) -> list[tuple[int, int, list[int]]]:
        """Cache units as ``(group, offset of the unit's first lane, [lane, ...])``: the lanes
        of a unit read consecutive bytes from the unit's address on."""
        n, g = self.lanes, self.group
        if self.grouped:
            return [(j, 0, list(range(j * g, min(n, (j + 1) * g)))) for j in range(-(-n // g))]
        return [(i // g, i % g, [i]) for i in range(n)]

    def elaborate(self, platform):
        m = Module()
        g, wb = self.group, self.word_bytes
        lb = _log2(wb)
        aw = self.addr_bits
        ab = aw + lb  # byte-address bits that matter (higher ones are cut off by the SPAD)
        port = self.port
        # Data registers (addresses, tags, lines, masks) are reset-less: each is loaded before it
        # is used (``flush`` at every instruction start clears the valid bits, which reset), so
        # the reset reaches only the control flags (timing: on the ECP5-85F the reset net to the
        # lines' and tags' sync-reset pins, across the die, was a third of the failing paths).
        if_tag = Signal(aw, reset_less=True)  # word of the read arriving now
        rq_v = Signal()  # registered request
        rq_a = Signal(aw, reset_less=True)
        flushed = Signal()  # the masks were registered from the limits of before the flush
        m.d.sync += flushed.eq(self.flush)
        if self.tagged:
            # the answer names its word and the flush epoch it was asked in: words read
            # before a flush (however late they answer) are not taken
            epoch = Signal()
            with m.If(self.flush):
                m.d.sync += epoch.eq(~epoch)
            m.d.comb += [port.tag.eq(Cat(rq_a, epoch)), if_tag.eq(port.rtag[:aw])]
            ret = port.rvalid & (port.rtag[aw] == epoch)
            stale = self.flush
        else:
            ret = port.rvalid
            # the word of the read acknowledged ``latency`` cycles ago (a delay line)
            prev_a = rq_a
            for d in range(self.latency - 1):
                da = Signal(aw, name=f"acked_a{d}", reset_less=True)
                m.d.sync += da.eq(prev_a)
                prev_a = da
            m.d.sync += if_tag.eq(prev_a)
            if self.latency == 2:
                # a read acknowledged in the cycle before a flush arrives after it: not taken
                stale = self.flush | flushed
            else:
                stale = self.flush

        def unit_reads(u):
            """Cache unit ``u``'s reads in flight: two slots (valid, word), slot 0 loaded
            when the request register takes the unit's miss of ``w0``, slot 1 its miss or
            prefetch of ``w0 + 1``; a slot clears when its word returns (or at a flush). A
            unit asks for a word only when no slot of its own holds it, so it does not ask
            again while its read is on the way (however late a tagged answer comes); a word
            another unit has asked for may be asked for again, which costs a cycle of the
            port, never a wrong word (timing: on the ECP5-85F comparing every unit's words
            with the request register and each acknowledged read's word fanned those
            registers out to two compares per unit, the LUT weight gather's 16 units the
            router's most congested nets). Returns the slots and ``holds(word)``."""
            slots = [(Signal(name=f"pv{k}_{u}"), Signal(aw, name=f"pa{k}_{u}", reset_less=True))
                     for k in range(2)]
            for pv, pa in slots:
                with m.If(self.flush | (ret & (if_tag == pa))):
                    m.d.sync += pv.eq(0)

            def holds(word):
                return Cat(*(pv & (pa == word) for pv, pa in slots)).any()
            return slots, holds

        # registered address terms: per group, per offset, then per unit
        goffs = [Signal(ab, name=f"goff{j}", reset_less=True)
                 for j in range(-(-self.lanes // g))]
        for j, sig in enumerate(goffs):
            m.d.sync += sig.eq(j * self.gstride)
        if self.var_ostride:
            ooffs = [Signal(ab, name=f"ooff{j}", reset_less=True)
                     for j in range(min(g, self.lanes))]
            for j, sig in enumerate(ooffs):
                m.d.sync += sig.eq(j * self.ostride)
        else:
            ooffs = [Const(j, ab) for j in range(min(g, self.lanes))]
        oks, misses, miss_as, prefs, pref_as = [], [], [], [], []
        miss_slots, pref_slots = [], []  # the unit's read slot each candidate loads
        units = self.units()
        # (the GEMM units' staged gathers always: their one-unit activation gathers' compare
        # fed ``take`` and the walkers' registers on the ECP5-85F)
        reg_hits = len(units) > self.REGISTER_HIT_UNITS or self.fill_stage

        if self.fill_stage:
            # the word and tag written in the cycle after they return (see the docstring)
            wr_tag = kept_register(m, platform, if_tag, "wr_tag")
            wr_data = kept_register(m, platform, port.rdata, "wr_data")
        else:
            wr_tag, wr_data = if_tag, port.rdata

        # With the fill stage, the hits' candidate for a cycle without ``take`` is the unit's
        # address register (``addr``, ``nxt``), which equals ``base + loff`` once the offsets
        # have settled after a flush (``loff`` lags the strides by two register stages, one
        # more where a stride is itself registered): the hits are 0 for ``SETTLE`` cycles
        # after a flush (no word can have arrived by then: a read takes longer), so no adder
        # sits in front of the hits' compares on that side (timing). Each unit holds its hits
        # low from a register of its own (``quiet<u>``), set from the cycle after a flush: the
        # hits computed in the flush cycle itself are not used (``valid`` is low in the cycle
        # after a flush), and the flush does not fan out to every hit.
        unsettled = self.flush
        if self.fill_stage:
            settle = Signal(range(self.SETTLE + 1))
            with m.If(self.flush):
                m.d.sync += settle.eq(self.SETTLE)
            with m.Elif(settle != 0):
                m.d.sync += settle.eq(settle - 1)
            quiet_next = Signal()  # ``settle != 0`` in the next cycle
            m.d.comb += quiet_next.eq(self.flush | (settle > 1))

        def by_take(pair, name):
            """``take ? adv : cur`` of ``pair = (adv, cur)``, a register's next value; with
            the fill stage ``take`` on the last LUT (:func:`~tritium.rtl.scratchpad.
            late_select`; timing: the take loop)."""
            if self.fill_stage:
                return late_select(m, platform, self.take, *pair, name)
            return Mux(self.take, *pair)

        def ahead(tag, v, write, cand_adv, cand_cur):
            """A hit register's next value as (if the beat is taken, if not): entry (``tag``,
            ``v``; ``write``: it takes ``wr_tag`` now) holds the word the unit addresses next
            cycle (``cand_adv`` if the beat is taken, else ``cand_cur``); 0 while
            ``unsettled`` (no fill stage)."""
            def at(c):
                return ~unsettled & Mux(write, wr_tag == c, v & (tag == c))
            return at(cand_adv), at(cand_cur)

        def ahead_d(d, v, write, wd, c, bh, cand_cur, tag, k, quiet, wr_eq):
            """``ahead`` for the fill-stage gathers, whose next-beat candidate
            ``(badv + loff)[lb:] + k`` is not summed: it equals ``bh + c + k`` (``bh`` the
            walker copy's word bits, ``c`` the carry out of the byte bits), so an entry holds
            it when ``bh == tag - loff[lb:] - k - c``; ``d[j]`` / ``wd[j]`` hold the entry's /
            the written word's ``tag - loff[lb:] - j``, registered with the tag (timing: no
            carry chain in front of the hits' compares). On the side without ``take`` the
            written word's compare with ``cand_cur`` (the unit's ``w0`` / ``w0 + 1``) is the
            unit's register ``wr_eq`` (``wr_w0`` / ``wr_w1``, equal to it once the offsets
            have settled, i.e. whenever ``quiet`` is low; timing: the gather's ``wr_tag``
            reaches no unit's hit logic)."""
            def adv(ds):
                return bh == Mux(c, ds[k + 1], ds[k])
            at_adv = Mux(write, adv(wd), v & adv(d))
            at_cur = Mux(write, wr_eq, v & (tag == cand_cur))
            return ~quiet & at_adv, ~quiet & at_cur

        def unit_hit(ent, k, cand_cur, uc):
            """The next value of a hit register of entry ``ent`` = (tag, valid, written now,
            differences) for the word ``w0 + k``, as (if the beat is taken, if not; see
            :func:`by_take`); ``uc``: the unit's (next-beat sums) or,
            with the fill stage, (written word's differences, carry, ``bh``, quiet, its
            ``wr_w0`` / ``wr_w1``)."""
            tag, v, write, d = ent
            if d is None:
                sa_w, sa_n = uc
                return ahead(tag, v, write, sa_n if k else sa_w, cand_cur)
            wd, cy, bh, quiet, wr_eqs = uc
            return ahead_d(d, v, write, wd, cy, bh, cand_cur, tag, k, quiet, wr_eqs[k])

        for u, (grp, uoff, lanes) in enumerate(units):
            straddle = len(lanes) > 1  # a grouped unit: its bytes may run into w0 + 1
            uq = (kept_register(m, platform, quiet_next, f"quiet{u}", reset=True)
                  if self.fill_stage else None)
            # a unit whose offset is 0 for any strides (group 0, offset 0) uses constants:
            # registers with a constant input and another initial value are merged by
            # synthesis across the whole design (on the ECP5-85F one such flip-flop fed
            # units of two GEMM units through a 12 ns net)
            zero_off = grp == 0 and uoff == 0
            if zero_off:
                loff = Const(0, ab)
            else:
                loff = Signal(ab, name=f"loff{u}", reset_less=True)
                m.d.sync += loff.eq(goffs[grp] + ooffs[uoff])
            addr = Signal(ab, name=f"addr{u}", reset_less=True)  # registered: base + loff of this cycle
            addr_d = Signal(ab, name=f"addr_d{u}")
            sum_cur = Signal(ab, name=f"sum_cur{u}")  # this beat's address, the next beat's
            sum_adv = Signal(ab, name=f"sum_adv{u}")
            if self.fill_stage:
                # the unit's own copy of the walker's register (``base_adv``: loaded with its
                # next value; timing: the walker's register fanned out to every unit's adders
                # across the die, now one register next to each unit's adders does)
                badv = kept_register(m, platform, self.base_adv_next[:ab], f"badv{u}",
                                     en=self.base_adv_load)
            else:
                badv = self.base_adv
            nxt_d = Signal(aw, name=f"next_d{u}")
            sa_n = Signal(aw, name=f"sa_n{u}")  # the next word of sum_adv / sum_cur
            sc_n = Signal(aw, name=f"sc_n{u}")
            if reg_hits and (straddle or self.fill_stage):
                # timing: from a second registered offset (loff + one word), not by a + 1
                # (one carry chain from the base register, not two in a row)
                if zero_off:
                    loffn = Const(wb, ab)
                else:
                    loffn = Signal(ab, name=f"loffn{u}", reset_less=True)
                    m.d.sync += loffn.eq(goffs[grp] + ooffs[uoff] + wb)
                m.d.comb += [sa_n.eq((badv + loffn)[lb:]),
                             sc_n.eq((self.base + loffn)[lb:])]
            else:
                m.d.comb += [sa_n.eq(sum_adv[lb:] + 1), sc_n.eq(sum_cur[lb:] + 1)]
            lo = Signal(lb, name=f"lo{u}")
            w0 = Signal(aw, name=f"need{u}")
            nxt = Signal(aw, name=f"next{u}", reset_less=True)
            m.d.sync += [addr.eq(addr_d), nxt.eq(nxt_d)]
            tag_a = Signal(aw, name=f"tag_a{u}", reset_less=True)
            tag_b = Signal(aw, name=f"tag_b{u}", reset_less=True)
            v_a = Signal(name=f"v_a{u}")
            v_b = Signal(name=f"v_b{u}")
            line_a = Signal(8 * wb, name=f"line_a{u}", reset_less=True)
            line_b = Signal(8 * wb, name=f"line_b{u}", reset_less=True)
            hit_a0 = Signal(name=f"hit_a{u}")   # entry A holds w0
            hit_b0 = Signal(name=f"hit_b{u}")
            hit_a1 = Signal(name=f"a_next{u}")  # entry A holds w0 + 1
            hit_b1 = Signal(name=f"b_next{u}")
            need0 = Signal(name=f"need0_{u}")   # an enabled lane reads from w0
            need1 = Signal(name=f"need1_{u}")   # ... from w0 + 1 (the group straddles)
            have0 = hit_a0 | hit_b0
            have1 = hit_a1 | hit_b1
            m.d.comb += [
                sum_cur.eq(self.base + loff),
                sum_adv.eq(badv + loff),
                addr_d.eq(Mux(self.take, sum_adv, sum_cur)),
                nxt_d.eq(Mux(self.take, sa_n, sc_n)),
                w0.eq(addr[lb:]),
            ]
            # the byte select's byte index: with the fill stage a copy of the address
            # register's byte bits of its own (timing: ``addr`` sits by the adders and the
            # compares, the copy can sit by the lines and the byte multiplexers)
            m.d.comb += lo.eq(kept_register(m, platform, addr_d[:lb], f"lo_sel{u}")
                              if self.fill_stage else addr[:lb])
            if self.fill_stage:
                # the decision of the last cycle (pfill) writes now; the entries as they are
                # after that write decide this cycle's fill and the misses
                pf_a = Signal(name=f"pfill_a{u}")
                pf_b = Signal(name=f"pfill_b{u}")
                wr_a = Signal(name=f"wr_a{u}")
                wr_b = Signal(name=f"wr_b{u}")
                m.d.comb += [wr_a.eq(pf_a & ~self.flush), wr_b.eq(pf_b & ~self.flush)]
                # the word being written is w0 / w0 + 1: compared a cycle ahead (the word
                # returning now against both candidates of the next address; timing: no tag
                # compare in front of the misses and the request's selection tree)
                wr_w0 = Signal(name=f"wr_w0_{u}")
                wr_w1 = Signal(name=f"wr_w1_{u}")
                # (the no-take side from the address registers, as the hits: equal to the sums
                # once the offsets settle; before, a wrong flag costs a fill or a read, never
                # a wrong word, the hits being from the tags)
                m.d.sync += [wr_w0.eq(by_take((if_tag == sum_adv[lb:], if_tag == w0),
                                              f"nwr_w0_{u}")),
                             wr_w1.eq(by_take((if_tag == sa_n, if_tag == nxt), f"nwr_w1_{u}"))]
                ha0, hb0 = Mux(pf_a, wr_w0, hit_a0), Mux(pf_b, wr_w0, hit_b0)
                ha1, hb1 = Mux(pf_a, wr_w1, hit_a1), Mux(pf_b, wr_w1, hit_b1)
            else:
                ha0, hb0, ha1, hb1 = hit_a0, hit_b0, hit_a1, hit_b1
            hv0, hv1 = ha0 | hb0, ha1 | hb1  # w0, w0 + 1 held (or being written)
            if self.fill_stage:
                # (see ``ahead_d``) the word bits of this unit's offset, the carry of the
                # next beat's byte bits, the differences of the returning word (registered
                # as ``wr_tag``), of each entry (loaded with its tag); ``loff`` is settled
                # before a word can return after a flush (``SETTLE``)
                nd = 3 if straddle else 2
                lh = loff[lb:]
                # ``cy`` is a register of its own, loaded with the carry of the value ``badv``
                # takes (and this cycle's ``loff``, equal to the next one's once the offsets
                # have settled: a cycle before ``quiet`` drops), the load enable on the last
                # LUT (``late_select``, as in the take loop; timing: on the ECP5-85F the
                # carry's adder sat between the walker copy and every compare of the hits)
                cy = kept_register(m, platform, late_select(
                    m, platform, self.base_adv_load,
                    (self.base_adv_next[:lb] + loff[:lb]) >= wb, (badv[:lb] + loff[:lb]) >= wb,
                    f"ncy{u}"), f"cy{u}")
                wd = [Signal(aw, name=f"wr_d{j}_{u}", reset_less=True) for j in range(nd)]
                d_a = [Signal(aw, name=f"d{j}_a{u}", reset_less=True) for j in range(nd)]
                d_b = [Signal(aw, name=f"d{j}_b{u}", reset_less=True) for j in range(nd)]
                m.d.sync += [wd[j].eq(if_tag - lh - j) for j in range(nd)]
            # a returned word fills entry A or B (see below)
            e0 = ret & (if_tag == w0) & ~hv0  # w0 arrives: keep the entry holding w0 + 1
            e1 = ret & (if_tag == nxt) & ~hv1  # w0 + 1 arrives: keep the entry holding w0
            fill_a = Signal(name=f"fill_a{u}")
            fill_b = Signal(name=f"fill_b{u}")
            m.d.comb += [fill_a.eq(~stale & Mux(e0, ~ha1, e1 & ~ha0)),
                         fill_b.eq(~stale & Mux(e0, ha1, e1 & ha0))]
            if self.fill_stage:
                m.d.sync += [pf_a.eq(fill_a), pf_b.eq(fill_b)]
                # the hits' "entry takes the word now" is the decision register alone: in a
                # flush cycle a hit may then come out 1 for an entry the flush empties, but
                # the hits of that cycle are not used (``valid`` is low in the cycle after a
                # flush; a miss may wait a cycle) and those of the next SETTLE cycles are 0
                # (timing: the flush, which reaches every unit, is not in front of the hits'
                # compares and selects)
                hw_a, hw_b = pf_a, pf_b
            else:
                wr_a, wr_b = fill_a, fill_b
                hw_a, hw_b = wr_a, wr_b
            if reg_hits:
                # Timing (many units): the hits that make ``valid`` are registers, computed
                # one cycle ahead from the next tags and the next address (both candidates of
                # ``take``), so no tag compare sits in the loop valid -> take -> address.
                sa_w, sc_w = sum_adv[lb:], sum_cur[lb:]
                if self.fill_stage:
                    sc_w = w0  # (settled: addr == base + loff)
                    uc = (wd, cy, badv[lb:], uq, (wr_w0, wr_w1))
                else:
                    uc = (sa_w, sa_n)
                ent_a = (tag_a, v_a, hw_a, d_a if self.fill_stage else None)
                ent_b = (tag_b, v_b, hw_b, d_b if self.fill_stage else None)
                nb0 = by_take(unit_hit(ent_b, 0, sc_w, uc), f"nhit_b{u}")
                m.d.sync += [hit_a0.eq(by_take(unit_hit(ent_a, 0, sc_w, uc), f"nhit_a{u}")),
                             hit_b0.eq(nb0)]
            else:
                m.d.comb += [hit_a0.eq(v_a & (tag_a == w0)), hit_b0.eq(v_b & (tag_b == w0))]
            if reg_hits and straddle:
                cur_n = nxt if self.fill_stage else sc_n
                nb1 = by_take(unit_hit(ent_b, 1, cur_n, uc), f"nb_next{u}")
                m.d.sync += [hit_a1.eq(by_take(unit_hit(ent_a, 1, cur_n, uc), f"na_next{u}")),
                             hit_b1.eq(nb1)]
            else:
                m.d.comb += [hit_a1.eq(v_a & (tag_a == nxt)), hit_b1.eq(v_b & (tag_b == nxt))]
            # the byte select's "entry B holds w0 / w0 + 1": with the fill stage a copy of the
            # hit registers of its own (timing: the hits sit by the tag compares, the lines
            # and the data path elsewhere; the copy can sit by the lines)
            sel_b0, sel_b1 = hit_b0, hit_b1
            if self.fill_stage:
                sel_b0 = kept_register(m, platform, nb0, f"sel_b{u}")
                if straddle:
                    sel_b1 = kept_register(m, platform, nb1, f"sel_bn{u}")
            n0, n1 = [], []
            # (fill stage) the next cycle's need flags for both candidates of ``take``
            n0_adv, n0_cur, n1_adv, n1_cur = [], [], [], []
            for o, i in enumerate(lanes):
                off = uoff + o
                # registered like the address: this beat's mask or, on take, the next one's
                # (with the fill stage a register of its own: a GEMM unit's constant limits
                # make some masks constant, and synthesis merges such registers across the
                # design, see ``zero_off``)
                m_adv = (grp < self.glim_adv) & (off >= self.klo_adv) & (off < self.khi_adv)
                m_cur = (grp < self.glim) & (off >= self.klo) & (off < self.khi)
                mask_next = by_take((m_adv, m_cur), f"nmask{i}")
                if self.fill_stage:
                    mask = kept_register(m, platform, mask_next, f"mask{i}")
                else:
                    mask = Signal(name=f"mask{i}", reset_less=True)
                    m.d.sync += mask.eq(mask_next)
                if o == 0:
                    n0.append(mask)
                    n0_adv.append(m_adv)
                    n0_cur.append(m_cur)
                    byte = Mux(sel_b0, line_b, line_a).word_select(lo, 8)
                else:
                    span = Signal(name=f"span{i}", reset_less=True)  # lane i's byte is in w0 + 1
                    # registered like ``addr`` (timing: no compare in the take loop)
                    s_adv = sum_adv[:lb] >= wb - o
                    s_cur = sum_cur[:lb] >= wb - o
                    m.d.sync += span.eq(by_take((s_adv, s_cur), f"nspan{i}"))
                    n0.append(mask & ~span)
                    n1.append(mask & span)
                    n0_adv.append(m_adv & ~s_adv)
                    n0_cur.append(m_cur & ~s_cur)
                    n1_adv.append(m_adv & s_adv)
                    n1_cur.append(m_cur & s_cur)
                    idx = Signal(lb, name=f"idx{i}")
                    m.d.comb += idx.eq(lo + o)  # modulo the word
                    use_b = Mux(span, sel_b1, sel_b0)
                    byte = Mux(use_b, line_b.word_select(idx, 8), line_a.word_select(idx, 8))
                m.d.comb += self.data[i].eq(Mux(mask, byte, 0))
            m.d.comb += [need0.eq(Cat(n0).any()), need1.eq(Cat(n1).any() if n1 else 0)]
            if self.fill_stage:
                # ``valid``'s terms are registers of their own, each loaded with the next
                # cycle's ``~need | have`` for w0 and, when the group straddles, for w0 + 1
                # (the same values as need0 / have0 ...; timing: the AND over the units that
                # makes ``valid`` reads one register per term, no LUT in front of it)
                terms = [(n0_adv, n0_cur, sc_w)]
                if n1:
                    terms.append((n1_adv, n1_cur, cur_n))
                for k, (need_adv, need_cur, cand_cur) in enumerate(terms):
                    r_ok = Signal(name=f"rok{k}_{u}")
                    (ha_adv, ha_cur), (hb_adv, hb_cur) = (unit_hit(ent_a, k, cand_cur, uc),
                                                          unit_hit(ent_b, k, cand_cur, uc))
                    m.d.sync += r_ok.eq(by_take((~Cat(need_adv).any() | ha_adv | hb_adv,
                                                 ~Cat(need_cur).any() | ha_cur | hb_cur),
                                                f"nok{k}_{u}"))
                    oks.append(r_ok)
            else:
                oks.append((~need0 | have0) & (~need1 | have1))
            # demand misses (w0 first), then the prefetch of the next word, each unless a
            # read of the unit's own asks for it already
            slots, asked = unit_reads(u)
            misses.append(need0 & ~hv0 & ~asked(w0))
            miss_as.append(w0)
            miss_slots.append(slots[0])
            if n1:
                misses.append(need1 & ~hv1 & ~asked(nxt))
                miss_as.append(nxt)
                miss_slots.append(slots[1])
            prefs.append(need0 & hv0 & ~need1 & ~hv1 & ~asked(nxt))
            pref_as.append(nxt)
            pref_slots.append(slots[1])
            with m.If(self.flush):
                m.d.sync += [v_a.eq(0), v_b.eq(0)]
            with m.If(wr_a):
                m.d.sync += v_a.eq(1)
            with m.If(wr_b):
                m.d.sync += v_b.eq(1)
            # the line and its tag: with the fill stage, enabled by the decision register alone
            # (a write in a flush cycle is harmless: the entry's valid bit stays clear; timing:
            # the flush does not fan out to the lines' enables)
            # (with the fill stage the lines' enables are copies of the decision registers of
            # their own: timing, the decision sits by the hits' logic, the lines by the byte
            # multiplexers; on the ECP5-85F one such net was 14.8 ns)
            if self.fill_stage:
                ln_a = kept_register(m, platform, fill_a, f"pfill_line_a{u}", reset=True)
                ln_b = kept_register(m, platform, fill_b, f"pfill_line_b{u}", reset=True)
            else:
                ln_a, ln_b = wr_a, wr_b
            with m.If(pf_a if self.fill_stage else wr_a):
                m.d.sync += tag_a.eq(wr_tag)
                if self.fill_stage:
                    m.d.sync += [d.eq(w) for d, w in zip(d_a, wd)]
            with m.If(ln_a):
                m.d.sync += line_a.eq(wr_data)
            with m.If(pf_b if self.fill_stage else wr_b):
                m.d.sync += tag_b.eq(wr_tag)
                if self.fill_stage:
                    m.d.sync += [d.eq(w) for d, w in zip(d_b, wd)]
            with m.If(ln_b):
                m.d.sync += line_b.eq(wr_data)

        def first(flags, vals):
            """(any flag set, value of the first set flag): a balanced tree, log2(n) deep."""
            items = list(zip(flags, vals))
            while len(items) > 1:
                nxt_items = []
                for k in range(0, len(items) - 1, 2):
                    (fa, va), (fb, vb) = items[k], items[k + 1]
                    nxt_items.append((fa | fb, Mux(fa, va, vb)))
                if len(items) % 2:
                    nxt_items.append(items[-1])
                items = nxt_items
            return items[0]

        def registered(flags, vals, kind):
            """The candidates one cycle later (timing: the tag compares and the selection
            tree are separate stages), less the one requested in the meantime (by its
            index: ``chosen``, registered with the request, so no address compare with the
            request register sits in front of the tree; a unit that shares the word with
            another may ask for it once more, which costs a cycle of the port, never a wrong
            word). With a few units the tree is short and the extra cycle of miss latency
            would cost more (a unit that needs a new word every beat waits for it): kept
            combinational. Returns the flags, the values and the ``chosen`` registers
            (None when not registered)."""
            limit = self.REGISTER_UNITS_STAGED if self.fill_stage else self.REGISTER_UNITS
            if len(units) <= limit:
                return flags, vals, None
            out_f, out_v = [], []
            chosen = Signal(len(flags), name=f"{kind}_chosen")
            for k, (f_, v_) in enumerate(zip(flags, vals)):
                rf = Signal(name=f"{kind}_f{k}")
                rv = Signal(aw, name=f"{kind}_a{k}", reset_less=True)
                m.d.sync += [rf.eq(f_ & ~self.flush), rv.eq(v_)]
                out_f.append(rf & ~chosen[k])
                out_v.append(rv)
            return out_f, out_v, chosen

        def first_onehot(flags):
            """One-hot of the first set flag (prefix OR, log2(n) deep)."""
            n = len(flags)
            pre = list(flags)  # pre[k]: any of flags[0..k]
            d = 1
            while d < n:
                pre = [pre[k] | pre[k - d] if k >= d else pre[k] for k in range(n)]
                d *= 2
            return [flags[k] & ~pre[k - 1] if k else flags[0] for k in range(n)]

        miss_f, miss_v, miss_ch = registered(misses, miss_as, "miss")
        pref_f, pref_v, pref_ch = registered(prefs, pref_as, "pref")
        any_miss, miss_a = first(miss_f, miss_v)
        any_pref, pref_a = first(pref_f, pref_v)
        load = Signal()  # the request register takes a word this cycle
        m.d.comb += load.eq(~self.flush & (~rq_v | port.ack) & self.req)
        with m.If(self.flush):
            m.d.sync += rq_v.eq(0)
        with m.Elif(~rq_v | port.ack):
            m.d.sync += [rq_v.eq(self.req & (any_miss | any_pref)),
                         rq_a.eq(Mux(any_miss, miss_a, pref_a))]
        # the candidate the request register takes (one-hot): its unit's read slot loads.
        # ``load`` (behind the port's ``ack``) on each slot enable's last LUT (``kept_lut``;
        # timing: on the ECP5-85F abc put it in front of the first-flag prefix chain)
        # With the fill stage ``req`` is low in a flush cycle (see ``valid`` below), so each
        # enable is ``load``'s terms in its own LUT, ``c & req & (~rq_v | ack)`` (timing: on
        # the ECP5-85F ``load``'s LUT and its net to every slot were in a failing path from
        # the shared port's ``ready`` and the unit's ``req``).
        def take(c, name):
            if self.fill_stage:
                return kept_lut(m, platform, lambda c_, r, v, a: c_ & r & (~v | a),
                                [c, self.req, rq_v, port.ack], name)
            return kept_lut(m, platform, lambda c_, l_: c_ & l_, [c, load], name)
        miss_cand = first_onehot(miss_f)
        pref_cand = [c & ~any_miss for c in first_onehot(pref_f)]
        miss_take = Cat(take(c, f"miss_take{k}") for k, c in enumerate(miss_cand))
        pref_take = Cat(take(c, f"pref_take{k}") for k, c in enumerate(pref_cand))
        for takes, slots, vals in ((miss_take, miss_slots, miss_v),
                                   (pref_take, pref_slots, pref_v)):
            for k, ((pv, pa), v_) in enumerate(zip(slots, vals)):
                with m.If(takes[k]):  # (after the slot's clear: a new read of the word wins)
                    m.d.sync += [pv.eq(1), pa.eq(v_)]
        if miss_ch is not None:
            m.d.sync += [miss_ch.eq(miss_take), pref_ch.eq(pref_take)]
        m.d.comb += [
            port.we.eq(0),
            port.addr.eq(rq_a),
        ]
        if self.fill_stage:
            # (``req`` is low in a flush cycle: the flush is not in ``valid``'s path, nor in
            # the port's enable; timing)
            m.d.comb += [port.en.eq(rq_v & self.req),
                         self.valid.eq(self.req & Cat(oks).all() & ~flushed)]
        else:
            m.d.comb += [port.en.eq(rq_v & self.req & ~self.flush),
                         self.valid.eq(self.req & Cat(oks).all() & ~self.flush & ~flushed)]
        return m


class _TileLoop:
    """Outer (``LM`` rows of A per tile) x inner (``LN`` output channels per tile) loop."""

    def __init__(self, m: Module, name: str, lm: int, ln: int, mm, nn, comb_flags=True):
        self.m, self.name, self.lm, self.ln, self.mm, self.nn = m, name, lm, ln, mm, nn
        self.orem = Signal(13, name=f"{name}_orem")  # rows left: m - row0
        self.nrem = Signal(17, name=f"{name}_nrem")  # channels left: n - n0
        self.last_n = self.last = None  # without comb_flags: the owner's registered flags
        if comb_flags:
            self.last_n = Signal(name=f"{name}_last_n")
            self.last = Signal(name=f"{name}_last")
            m.d.comb += [
                self.last_n.eq(self.nrem <= ln),
                self.last.eq(self.last_n & (self.orem <= lm)),
            ]

    def reset(self) -> list:
        return [self.orem.eq(self.mm), self.nrem.eq(self.nn)]

    def regs(self) -> tuple:
        return self.orem, self.nrem

    def advance(self, assign=None) -> None:
        """Move to the next tile: ``assign(*stmts)`` makes the assignments (default: sync,
        under the caller's conditions)."""
        m = self.m
        if assign is None:
            def assign(*stmts):
                m.d.sync += list(stmts)
        with m.If(self.last_n):
            assign(self.orem.eq(self.orem - self.lm), self.nrem.eq(self.nn))
        with m.Else():
            assign(self.nrem.eq(self.nrem - self.ln))


def gemm_read_slice(cfg: AcceleratorConfig) -> bool:
    """Whether the parallel GEMM units' SPAD reads go through a :class:`~tritium.rtl.
    scratchpad.ReadSlice` (tagged ports): with queues, i.e. where the SPAD registers its read
    data (:func:`~tritium.rtl.scratchpad.spad_latency` > 1: the large devices, whose timing
    the path through the bank arbiter limits)."""
    return spad_latency(cfg) > 1


def gemm_unit_members(cfg: AcceleratorConfig, spad_bits: int, acc_bits: int,
                      tag_bits: int = 0) -> dict:
    """The members of a GEMM unit (:class:`GemmUnit`, :class:`~tritium.rtl.serial_gemm.
    SerialTernaryGemm`): see :class:`GemmUnit`. ``tag_bits``: the SPAD ports' tag width
    (tagged ports, see :class:`~tritium.rtl.scratchpad.MemPortSignature`)."""
    bb = cfg.bus_bytes
    return {
        "cmd": In(stream.Signature(unsigned(INSTR_BITS))),
        "done": Out(1),
        "act_port": Out(MemPortSignature(spad_bits, bb, tag_bits)),
        "wgt_port": Out(MemPortSignature(spad_bits, bb, tag_bits)),
        "wb_rd": Out(MemPortSignature(acc_bits, bb)),
        "wb_wr": Out(MemPortSignature(acc_bits, bb)),
        "busy": Out(1),
        "stall": Out(1),
    }


class GemmUnit(wiring.Component):
    """Runs GEMM instructions on one engine (``systolic``, ``ternary`` or ``lut``).

    Tiles: systolic ``R x C`` blocks of C (``cfg.sa_rows`` x ``cfg.sa_cols``), K beats of one
    column of A and one column of W^T each; ternary/LUT one row of A times ``L`` output
    channels (``cfg.ternary_lanes`` / ``cfg.lut_lanes``), ``ceil(k / ternary_k)`` beats /
    ``k / lut_group`` activation groups and ``k / lut_group * bits`` weight planes. Every tile
    starts from zero (``acc = 0``); ``accumulate`` is applied by the writer (ACC read + add +
    write, int32 wrap-around as the golden model). Lanes beyond ``m``/``n``/``k`` are fed zeros
    and their results are not written.

    Cycle contract: the activation and weight gathers each deliver a beat per cycle while their
    lane caches hit (a new SPAD word per lane every ``bus_bytes`` beats along a row, prefetched;
    systolic ``wt=1`` weights need a read per beat); the writer stores one int32 per cycle
    through a two-entry write queue (also with ``accumulate``: the old values are read
    through a second port, as many elements ahead as the ACC's read latency). ``done``
    pulses when the last result is in ACC (the queue is empty).

    Members
    -------
    cmd : In(stream.Signature(128))
        The (checked) GEMM instruction word.
    done : Out(1)
    act_port, wgt_port : Out(MemPortSignature)   (SPAD)
    wb_rd, wb_wr : Out(MemPortSignature)         (ACC: old values, results)
    busy, stall : Out(1)
        Executing; executing while the engine takes no weight beat.
    """

    def __init__(self, cfg: AcceleratorConfig, engine: str, spad_bits: int, acc_bits: int):
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}; must be one of {ENGINES}")
        self.cfg = cfg
        self.engine = engine
        if engine == "systolic":
            self.lm, self.ln = cfg.sa_rows, cfg.sa_cols
            self.act_lanes, self.act_group = cfg.sa_rows, 1
            self.wgt_lanes, self.wgt_group = cfg.sa_cols, 1
        elif engine == "ternary":
            self.lm, self.ln = 1, cfg.ternary_lanes
            self.act_lanes, self.act_group = cfg.ternary_k, cfg.ternary_k
            self.wgt_lanes = cfg.ternary_lanes * cfg.ternary_k // 4
            self.wgt_group = cfg.ternary_k // 4
        else:
            self.lm, self.ln = 1, cfg.lut_lanes
            self.act_lanes, self.act_group = cfg.lut_group, cfg.lut_group
            # one lane per (channel, plane): every plane keeps its own cached word
            self.wgt_lanes = cfg.lut_lanes * cfg.lut_max_bits
            self.wgt_group = cfg.lut_max_bits
        #: the SPAD ports are tagged and read through a ReadSlice (:func:`gemm_read_slice`)
        self.tagged = gemm_read_slice(cfg)
        tag_bits = Gather.tag_bits(spad_bits) if self.tagged else 0
        super().__init__(gemm_unit_members(cfg, spad_bits, acc_bits, tag_bits))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        eng_name = self.engine
        bb = cfg.bus_bytes
        lb = _log2(bb)
        LM, LN = self.lm, self.ln
        m.submodules.engine = eng = _engine_class(eng_name)(cfg)
        # tagged: the reads pass a ReadSlice (its register adds to the SPAD's latency); the
        # gathers then also write their caches in a stage of their own (timing)
        tg = self.tagged
        lat = ReadSlice.nominal_latency(spad_latency(cfg)) if tg else spad_latency(cfg)
        m.submodules.ag = ag = Gather(self.act_lanes, self.act_group, bb, len(self.act_port.addr),
                                      latency=lat, tagged=tg, fill_stage=tg)
        m.submodules.wg = wg = Gather(self.wgt_lanes, self.wgt_group, bb, len(self.wgt_port.addr),
                                      var_ostride=eng_name == "lut", latency=lat, tagged=tg,
                                      fill_stage=tg)
        wiring.connect(m, wiring.flipped(self.act_port), ag.port)
        wiring.connect(m, wiring.flipped(self.wgt_port), wg.port)

        # ------------------------------------------------------------------ instruction
        f = data.View(instr_layout(Op.GEMM_I8), self.cmd.payload)
        mm = Signal(12)
        kk = Signal(16)
        nn = Signal(16)
        a = Signal(21)
        w = Signal(21)
        c = Signal(21)
        accum = Signal()
        wt = Signal()
        bits = Signal(3)
        run = Signal()
        setup = Signal()
        m.d.comb += [self.cmd.ready.eq(~run & ~setup)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [
                mm.eq(f.m), kk.eq(f.k), nn.eq(f.n), a.eq(f.a), w.eq(f.w), c.eq(f.c),
                accum.eq(f.accumulate), wt.eq(f.wt), bits.eq(f.bits), setup.eq(1),
            ]
        m.d.comb += [ag.flush.eq(setup), wg.flush.eq(setup)]

        # derived per-instruction constants (registered in the setup cycle)
        k4 = kk >> 2
        kb = kk >> 3
        bkb = Signal(20)  # bits * k/8: LUT weight bytes per channel
        m.d.sync += bkb.eq(bits * kb)
        # the walkers' last-beat compares take these from registers (no adder in the path to
        # the advanced addresses): the last beat of a row is the one at offset >= k - step
        step = {"systolic": 1, "ternary": cfg.ternary_k, "lut": cfg.lut_group}[eng_name]
        k_step = Signal(signed(18))
        bits1 = Signal(3)
        m.d.sync += [k_step.eq(kk - step), bits1.eq(bits - 1)]
        n4 = Signal(20)
        m.d.comb += n4.eq(nn << 2)

        ci = _TileLoop(m, "ci", LM, LN, mm, nn)
        aw_ = _TileLoop(m, "aw", LM, LN, mm, nn, comb_flags=False)
        ww_ = _TileLoop(m, "ww", LM, LN, mm, nn, comb_flags=False)
        ci_done = Signal()
        a_done = Signal()
        w_done = Signal()

        # ------------------------------------------------------------------ tile commands
        desc_layout = data.StructLayout(
            {"addr": unsigned(22), "rows": unsigned(8), "cols": unsigned(9)}
        )
        m.submodules.dfifo = dfifo = fifo.SyncFIFO(width=desc_layout.size, depth=4)
        crow = Signal(24)  # c + 4 * row0 * n
        cn0 = Signal(20)  # 4 * n0
        if eng_name == "lut":
            beats_cmd = kk
            m.d.comb += [
                eng.cmd.payload.k.eq(kk),
                eng.cmd.payload.bits.eq(bits),
                eng.cmd.payload.acc.eq(0),
            ]
        elif eng_name == "ternary":
            beats_cmd = _div_const(m, kk + (cfg.ternary_k - 1), cfg.ternary_k, 17, "tbeats")
            m.d.comb += [eng.cmd.payload.beats.eq(beats_cmd), eng.cmd.payload.acc.eq(0)]
        else:
            m.d.comb += [eng.cmd.payload.beats.eq(kk), eng.cmd.payload.acc.eq(0)]
        desc = Signal(desc_layout)
        m.d.comb += [
            desc.addr.eq(crow + cn0),
            desc.rows.eq(Mux(ci.orem < LM, ci.orem, LM)),
            desc.cols.eq(Mux(ci.nrem < LN, ci.nrem, LN)),
            eng.cmd.valid.eq(run & ~ci_done & dfifo.w_rdy),
            dfifo.w_en.eq(eng.cmd.valid & eng.cmd.ready),
            dfifo.w_data.eq(desc),
        ]
        with m.If(eng.cmd.valid & eng.cmd.ready):
            ci.advance()
            with m.If(ci.last):
                m.d.sync += ci_done.eq(1)
            with m.If(ci.last_n):
                m.d.sync += [crow.eq(crow + (n4 * LM)), cn0.eq(0)]
            with m.Else():
                m.d.sync += cn0.eq(cn0 + 4 * LN)

        # ------------------------------------------------------------------ walkers
        # A gathered beat (act_in / wgt_in) goes through a register slice into the engine:
        # the gather's address-compare-select logic and the engine's input registers are
        # separate register stages (ECP5 timing). a_fire / w_fire: a beat leaves its gather.
        a_fire = Signal()
        w_fire = Signal()
        # The walkers run one beat ahead of the gathers (timing): their registers hold the
        # state after the presented beat, the gathers' ``base_adv`` and ``*_adv`` limits, and
        # the presented beat's values are ``_p`` copies loaded when a beat is taken. At the
        # start the copies get the first beat and one ``prime`` step moves the walkers to the
        # second (two cycles after setup, when the walkers' registered flags are valid); no
        # beat is taken before it.
        # ``prime`` is a register, high in the second cycle after setup (timing: it joins
        # ``fire`` in the walkers' and the cache units' load enables as one more register
        # input, not through a LUT of its own; ``run`` cannot fall before prime: the walkers
        # have not moved)
        prime = Signal()
        primed = Signal()
        prime_wait = Signal()
        a_step = Signal()  # the A walker moves: a beat is taken, or prime
        w_step = Signal()
        a_load = Signal()  # the A walker's registers load: setup, or a step
        w_load = Signal()
        primed_next = Mux(setup, 0, primed | prime)
        # (a_fire, a_step, a_load, ...: one LUT each after the gather's valid and R's room,
        # set below with ``kept_lut``)
        m.d.sync += prime.eq(run & prime_wait & ~setup)
        with m.If(setup):
            m.d.sync += [primed.eq(0), prime_wait.eq(1)]
        with m.Elif(run):
            m.d.sync += prime_wait.eq(0)
            with m.If(prime):
                m.d.sync += primed.eq(1)
        act_in = Signal(eng.act.payload.shape())
        wgt_in = Signal(eng.wgt.payload.shape())
        # (LUT engine: R holds the weight gather's raw beat, ``wgt_in`` then, and ``wgt_post``
        # forms the engine's beat from it; set below)
        wgt_post = None
        # a_done / w_done: the walker has moved past the last beat (it is presented).
        # The gathers' ``req``: running, and the last beat not taken yet; registers loaded
        # with the value they take (timing: on the ECP5-85F a LUT of ``run`` and a "last beat
        # taken" register, and its net, sat in the take loop in front of the gather's ``valid``)
        fin = Signal()  # the instruction ends (set below)
        a_req = Signal()
        w_req = Signal()
        with m.If(setup):
            m.d.sync += [a_req.eq(1), w_req.eq(1)]
        with m.Else():
            with m.If(fin | (a_fire & a_done)):
                m.d.sync += a_req.eq(0)
            with m.If(fin | (w_fire & w_done)):
                m.d.sync += w_req.eq(0)
        m.d.comb += [ag.req.eq(a_req), wg.req.eq(w_req)]
        abase = Signal(24)
        aoff = Signal(17)  # beat offset along k (kk, j*T or q*g)
        wbase = Signal(24)
        wsub = Signal(17)  # systolic wt: kk index; ternary: j*T; lut: q*g
        plane = Signal(3)
        # registered gather bases: acur = abase + aoff, wcur = wbase + (engine's offset)
        acur = Signal(24)
        wcur = Signal(24)

        # lane limits kk - aoff and k/4 - wsub/4 of the ternary gathers, kept as registers
        akhi = Signal(17)
        wkhi = Signal(17)

        start_stmts = [
            abase.eq(a), aoff.eq(0), wbase.eq(w), wsub.eq(0), plane.eq(0),
            acur.eq(a), wcur.eq(w),
            crow.eq(c), cn0.eq(0), ci_done.eq(0), a_done.eq(0), w_done.eq(0),
            *ci.reset(), *aw_.reset(), *ww_.reset(),
        ]
        # Walker updates happen when the walker steps (a_step / w_step: a beat is taken, or
        # prime). The walker registers hold the beat after the presented one: the gathers get
        # them as the next beat's base and limits (``base_adv``, ``*_adv``: registers), and
        # the presented beat's as ``_p`` copies (``present``). A step's new values (acur_adv,
        # ..., the "advanced" values) are computed from the walker's registers alone and only
        # feed registers.
        advanced = {}  # id(register) -> its value after a step (combinational)
        fire_of = {}  # id(register) -> the step (a_step / w_step) that moves it
        load_of = {}  # id(register) -> its load enable (a_load / w_load: setup or the step)
        loaded = []  # (register, its value when it loads): walker registers, present copies
        for reg, fire, load in ((acur, a_step, a_load), (akhi, a_step, a_load),
                                (aoff, a_step, a_load), *((r, a_step, a_load) for r in aw_.regs()),
                                (wcur, w_step, w_load), (wkhi, w_step, w_load),
                                (wsub, w_step, w_load), (plane, w_step, w_load),
                                *((r, w_step, w_load) for r in ww_.regs())):
            adv = Signal.like(reg, name=f"{reg.name}_adv")
            m.d.comb += adv.eq(reg)
            loaded.append((reg, adv))
            advanced[id(reg)] = adv
            fire_of[id(reg)] = fire
            load_of[id(reg)] = load

        def flag(name, cond, *regs):
            """A register holding ``cond(*regs)`` of the walker registers (all moved by the
            same take) as they are after this cycle, i.e. ``cond`` of their current values from
            the next cycle on (the setup cycle's flags may be stale: the gathers give no beat
            in the cycle after a flush). Timing: the walkers' compares leave the paths to the
            advanced values, and the take only selects between two compares made before it."""
            f = Signal(name=name)
            fire = fire_of[id(regs[0])]
            m.d.sync += f.eq(late_select(m, platform, fire, cond(*(advanced[id(r)] for r in regs)),
                                         cond(*regs), f"{name}_next"))
            return f

        for lp in (aw_, ww_):
            lp.last_n = flag(f"{lp.name}_last_n", lambda o, n, lp=lp: n <= lp.ln, *lp.regs())
            lp.last = flag(f"{lp.name}_last",
                           lambda o, n, lp=lp: (n <= lp.ln) & (o <= lp.lm), *lp.regs())
        a_row_end = flag("a_row_end", lambda o: o >= k_step, aoff)  # last beat of a row
        w_row_end = flag("w_row_end", lambda o: o >= k_step, wsub)

        def take(fire, *stmts):
            """Assignments that happen when a beat is taken (``fire``); those to acur / wcur
            set their ``_adv`` value instead, whether or not the beat is taken."""
            plain = []
            for st in stmts:
                if id(st.lhs) in advanced:
                    m.d.comb += advanced[id(st.lhs)].eq(st.rhs)
                else:
                    plain.append(st)
            if plain:
                with m.If(fire):
                    m.d.sync += plain

        def take_a(*stmts):
            take(a_step, *stmts)

        def take_w(*stmts):
            take(w_step, *stmts)

        def a_next_tile(step):
            """End of a row of A: next tile's rows (``abase += step`` after its last
            channel tile), or done."""
            aw_.advance(take_a)
            with m.If(aw_.last_n):
                take_a(abase.eq(abase + step), acur.eq(abase + step))
            with m.If(aw_.last):
                take_a(a_done.eq(1))

        def w_next_tile(step):
            """End of a channel tile's weights: the next channel tile (``wbase += step``),
            back to ``w`` for the next row tile, or done."""
            ww_.advance(take_w)
            with m.If(ww_.last_n):
                take_w(wbase.eq(w), wcur.eq(w))
            with m.Else():
                take_w(wbase.eq(wbase + step), wcur.eq(wbase + step))
            with m.If(ww_.last):
                take_w(w_done.eq(1))

        def start_of(reg, hold=False):
            """Walker register ``reg``'s value at an instruction's start (set in setup);
            with ``hold``, ``reg`` itself where it has none (it holds)."""
            start = [st.rhs for st in start_stmts if st.lhs is reg]
            if hold and not start:
                return reg
            assert len(start) == 1, reg
            return start[0]

        def present(reg):
            """The presented beat's copy of walker register ``reg``: its start value at setup,
            the walker's value when it steps (a beat is taken, or prime)."""
            p = Signal.like(reg, name=f"{reg.name}_p")
            start_stmts.append(p.eq(start_of(reg)))
            loaded.append((p, reg))
            load_of[id(p)] = load_of[id(reg)]
            return p

        def next_value(reg):
            """Walker register ``reg``'s change: (whether it changes in this cycle, to what):
            its start value in the setup cycle, its advanced value when its walker steps."""
            return load_of[id(reg)], Mux(setup, start_of(reg), advanced[id(reg)])

        m.d.comb += [ag.take.eq(a_fire), wg.take.eq(w_fire)]
        for gat, reg in ((ag, acur), (wg, wcur)):
            if gat.fill_stage:
                # (the gather's cache units keep copies of the register, loaded as it is)
                load, value = next_value(reg)
                m.d.comb += [gat.base_adv_load.eq(load), gat.base_adv_next.eq(value)]
            else:
                m.d.comb += gat.base_adv.eq(reg)
        if eng_name == "systolic":
            m.d.comb += [
                ag.base.eq(present(acur)),
                ag.gstride.eq(kk),
                ag.glim.eq(present(aw_.orem)),
                ag.glim_adv.eq(aw_.orem),
                ag.khi.eq(1),
                ag.khi_adv.eq(1),
                act_in.eq(ag.data),
                wg.base.eq(present(wcur)),
                wg.gstride.eq(Mux(wt, 1, kk)),
                wg.glim.eq(present(ww_.nrem)),
                wg.glim_adv.eq(ww_.nrem),
                wg.khi.eq(1),
                wg.khi_adv.eq(1),
                wgt_in.eq(wg.data),
            ]
            take_a(aoff.eq(aoff + 1), acur.eq(acur + 1))
            with m.If(a_row_end):
                take_a(aoff.eq(0), acur.eq(abase))
                a_next_tile(kk * LM)
            take_w(wsub.eq(wsub + 1), wcur.eq(wcur + Mux(wt, nn, 1)))
            with m.If(w_row_end):
                take_w(wsub.eq(0), wcur.eq(wbase))
                w_next_tile(Mux(wt, LN, kk * LN))
        elif eng_name == "ternary":
            T = cfg.ternary_k
            start_stmts += [akhi.eq(kk), wkhi.eq(k4)]
            m.d.comb += [
                ag.base.eq(present(acur)),
                ag.gstride.eq(0),
                ag.glim.eq(1),
                ag.glim_adv.eq(1),
                ag.khi.eq(present(akhi)),
                ag.khi_adv.eq(akhi),
                act_in.eq(ag.data),
                wg.base.eq(present(wcur)),
                wg.gstride.eq(k4),
                wg.glim.eq(present(ww_.nrem)),
                wg.glim_adv.eq(ww_.nrem),
                wg.khi.eq(present(wkhi)),
                wg.khi_adv.eq(wkhi),
                wgt_in.eq(wg.data),
            ]
            take_a(aoff.eq(aoff + T), acur.eq(acur + T), akhi.eq(akhi - T))
            with m.If(a_row_end):
                take_a(aoff.eq(0), acur.eq(abase), akhi.eq(kk))
                a_next_tile(kk)
            take_w(wsub.eq(wsub + T), wcur.eq(wcur + T // 4), wkhi.eq(wkhi - T // 4))
            with m.If(w_row_end):
                take_w(wsub.eq(0), wcur.eq(wbase), wkhi.eq(k4))
                w_next_tile(k4 * LN)
        else:  # lut
            G = cfg.lut_group
            gmask = (1 << G) - 1
            plane_p = present(plane)
            m.d.comb += [
                ag.base.eq(present(acur)),
                ag.gstride.eq(0),
                ag.glim.eq(1),
                ag.glim_adv.eq(1),
                ag.khi.eq(G),
                ag.khi_adv.eq(G),
                act_in.eq(ag.data),
                wg.base.eq(present(wcur)),
                wg.gstride.eq(bkb),
                wg.ostride.eq(kb),
                wg.glim.eq(present(ww_.nrem)),
                wg.glim_adv.eq(ww_.nrem),
                wg.klo.eq(plane_p),
                wg.klo_adv.eq(plane),
                wg.khi.eq(plane_p + 1),
                wg.khi_adv.eq(plane + 1),
            ]
            shift = present(wsub)[:3] if G < 8 else Const(0, 3)
            mb = cfg.lut_max_bits
            # R holds the gather's bytes and the shift; the weight bits are formed behind it
            # (timing: the plane OR and the shift were 4 LUT levels between the cache units'
            # byte selects and R)
            wgt_in = Cat(wg.data.as_value(), shift)

            def wgt_post(raw):
                """The engine's weight beat from R's raw beat: the gather enables only the
                lane of plane ``plane_p`` (``klo``/``khi``) and gives 0 on the others, so
                their OR is that lane's byte (no select by ``plane_p``)."""
                lanes_ = data.ArrayLayout(unsigned(8), LN * mb)(raw[:LN * mb * 8])
                sh = raw[LN * mb * 8:]
                out = Signal(eng.wgt.payload.shape(), name="wgt_post")
                for i in range(LN):
                    byte = lanes_[i * mb]
                    for p_ in range(1, mb):
                        byte = byte | lanes_[i * mb + p_]
                    m.d.comb += out[i].eq((byte >> sh) & gmask)
                return out
            take_a(aoff.eq(aoff + G), acur.eq(acur + G))
            with m.If(a_row_end):
                take_a(aoff.eq(0), acur.eq(abase))
                a_next_tile(kk)
            take_w(plane.eq(plane + 1))
            with m.If(flag("w_plane_end", lambda p: p == bits1, plane)):
                take_w(plane.eq(0), wsub.eq(wsub + G), wcur.eq(wbase + ((wsub + G) >> 3)))
                with m.If(w_row_end):
                    take_w(wsub.eq(0), wcur.eq(wbase))
                    w_next_tile(bkb * LN)

        # Between a gather and its engine input: a register R that takes each beat as it
        # leaves the gather (no multiplexer in front of it: the gather's data path ends at R,
        # next to it, not at the engine; timing), then the engine's input register E with a
        # spare S (a skid buffer): R hands its beat to E when E is free after this cycle (S
        # first, keeping the order), else to S. A beat leaves the gather unless R and S are
        # both full, so ``fire`` (and the walkers' registers it enables) does not wait on the
        # engine's ``ready``; R's payload loads whenever it may, valid or not, so that the
        # gather's valid enables only the valid bits. A beat reaches the engine a cycle later
        # than without R.
        # (after the engines' sections: the LUT engine's replaces ``wgt_in``, sets ``wgt_post``)
        for fire, step, load, gat, in_, st, nm, post in (
                (a_fire, a_step, a_load, ag, act_in, eng.act, "act", None),
                (w_fire, w_step, w_load, wg, wgt_in, eng.wgt, "wgt", wgt_post)):
            r_v = Signal(name=f"{nm}_r_v")
            r_p = Signal(len(in_) if post else st.payload.shape(), name=f"{nm}_r")
            sk_v = Signal(name=f"{nm}_skid_v")
            sk_p = Signal(st.payload.shape(), name=f"{nm}_skid")
            full = r_v & sk_v
            e_free = ~st.valid | st.ready  # the engine's register is free after this cycle
            # ``room``: ~full & primed, a register loaded with its next value (timing: one
            # LUT less between R's and S's valid bits and ``fire``, whose net reaches every
            # walker register and every cache unit of the gather)
            room = Signal(name=f"{nm}_room")
            r_v_next = Mux(full, 1, fire)
            sk_v_next = ~e_free & (sk_v | r_v)
            m.d.sync += room.eq(~(r_v_next & sk_v_next) & primed_next)
            m.d.comb += [
                fire.eq(kept_lut(m, platform, lambda v, r: v & r, [gat.valid, room],
                                 f"{nm}_fire")),
                step.eq(kept_lut(m, platform, lambda p, v, r: p | (v & r),
                                 [prime, gat.valid, room], f"{nm}_step")),
                load.eq(kept_lut(m, platform, lambda s_, p, v, r: s_ | p | (v & r),
                                 [setup, prime, gat.valid, room], f"{nm}_load")),
            ]
            # R and S load from registers only (timing: the engine's ``ready``, which couples
            # the A and W inputs, reaches E and the valid bits, not R's or S's payload); while
            # both are full R waits, and moves on in the cycle after S has gone to E
            with m.If(~full):
                m.d.sync += [r_v.eq(fire), r_p.eq(in_)]
            if post is not None:
                r_p = post(r_p)  # the engine's beat, formed behind R
            with m.If(~sk_v):
                m.d.sync += sk_p.eq(r_p)
            with m.If(e_free):
                with m.If(sk_v):
                    m.d.sync += [st.valid.eq(1), st.payload.eq(sk_p), sk_v.eq(0)]
                with m.Else():
                    m.d.sync += [st.valid.eq(r_v), st.payload.eq(r_p)]
            with m.Elif(~sk_v):
                m.d.sync += sk_v.eq(r_v)

        # ------------------------------------------------------------------ writer
        # One int32 per cycle: element e is written while element e+1 (accumulate) is read
        # through the second port; the old values wait in a two-entry FIFO. The elements come
        # straight from the head of the engine's output FIFO, which is popped at the end of
        # the beat (no copy of the whole result row).
        rbuf = eng.res.payload.as_value()
        rfull = eng.res.valid
        cur = data.View(desc_layout, dfifo.r_data)
        beats_per_tile = LM  # systolic: R rows per tile; ternary/LUT: 1
        rb = Signal(range(beats_per_tile + 1))  # res beat within the tile
        er = Signal(range(LN + 1))  # next element to read (accumulate)
        ew = Signal(range(LN + 1))  # next element to write
        row = Signal(24)  # ACC byte address of element 0 of res beat rb
        started = Signal()  # row is set up for the current descriptor
        # the old values: reads answer ``ac_lat`` cycles after their ack; up to ``ac_lat``
        # in flight and one waiting keep one element per cycle
        ac_lat = acc_latency(cfg)
        # (one entry more for the select stage X below: an old value leaves when X's element
        # goes into the write queue, a cycle after the element is selected)
        m.submodules.ofifo = ofifo = fifo.SyncFIFO(width=32, depth=2 + ac_lat)
        pends = [Signal(name=f"pend{k}") for k in range(ac_lat)]  # acknowledged k + 1 ago
        inflight = sum(pends)
        rlane = Signal(max(1, lb - 2))
        rd, wr = self.wb_rd, self.wb_wr
        raddr = Signal(24)
        waddr = Signal(24)
        m.d.comb += [raddr.eq(row + (er << 2)), waddr.eq(row + (ew << 2))]
        lane_of = (lambda a: a[2:lb]) if lb > 2 else (lambda a: Const(0, 1))
        active = Signal()
        # Compares against the descriptor at the FIFO head (stable while ``started``) are
        # registers, computed from the counters' next values (timing: no compare between the
        # ACC port's ``ack`` and the engine's result credit)
        row_ok = Signal()  # rb < rows
        er_in = Signal()  # er < cols
        ew_in = Signal()  # ew < cols
        ew_last = Signal()  # ew == cols - 1
        m.d.comb += active.eq(dfifo.r_rdy & started & rfull & row_ok)
        # reads of old values
        m.d.comb += [
            rd.addr.eq(raddr >> lb),
            rd.we.eq(0),
            rd.en.eq(active & accum & er_in & ((ofifo.level + inflight) < 2 + ac_lat)),
        ]
        rd_ack = Signal()
        queued = Signal()  # element ew goes into the select stage X
        m.d.comb += rd_ack.eq(rd.en & rd.ack)
        if ac_lat == 1:
            with m.If(rd_ack):
                m.d.sync += rlane.eq(lane_of(raddr))
        else:  # the lane of the read acknowledged ``ac_lat`` cycles ago
            rlane = delayed(m, lane_of(raddr), ac_lat, "rlane")
        m.d.sync += [p_.eq(q_) for p_, q_ in zip(pends, [rd_ack] + pends[:-1])]
        m.d.comb += [
            ofifo.w_en.eq(pends[-1]),
            ofifo.w_data.eq(rd.rdata.word_select(rlane, 32) if lb > 2 else rd.rdata[:32]),
        ]
        # writes: element ew is selected into the register stage X (``queued``), then, with
        # the old value added (accumulate), goes into the write queue (timing: the result
        # select and the accumulate adder are a register stage apart; the select sits by
        # the engine's result FIFO, the adder by the old values and the queue)
        x_v = Signal()
        x_val = Signal(32, reset_less=True)
        x_addr = Signal(len(wr.addr), reset_less=True)
        x_lane = Signal(max(1, lb - 2), reset_less=True)
        x_take = Signal()  # X's element goes into the write queue
        x_ready = Signal()  # X takes an element this cycle (it is empty or leaves)
        r_ahead = Signal()  # er > ew (registered, from the counters' next values below)
        wdata = Signal(32)
        m.d.comb += [
            wdata.eq(Mux(accum, ofifo.r_data + x_val, x_val)),
            x_ready.eq(~x_v | x_take),
            # (accumulate: only an element whose old value has been read, ``er > ew``: the
            # counters restart at the end of the beat, so a read not yet asked for when the
            # beat's last element is selected would never be)
            queued.eq(active & ew_in & x_ready & (~accum | r_ahead)),
        ]
        with m.If(x_ready):
            m.d.sync += [x_v.eq(queued), x_val.eq(rbuf.word_select(ew, 32)),
                         x_addr.eq(waddr >> lb), x_lane.eq(lane_of(waddr))]
        # The writes go to the ACC port from a two-entry queue (timing: the accumulate adder
        # is a register stage apart from the ACC's write multiplexers and block RAMs, and the
        # writer's flow does not wait on the port's ``ack`` but on the queue's registered
        # room). Every element of C is written once per instruction and read (accumulate)
        # before its write: no read meets a queued write of its word.
        wq_layout = data.StructLayout({"addr": unsigned(len(wr.addr)), "data": unsigned(32),
                                       "lane": unsigned(max(1, lb - 2))})
        m.submodules.wq = wq = fifo.SyncFIFO(width=wq_layout.size, depth=2)
        wq_head = data.View(wq_layout, wq.r_data)
        wq_tail = data.View(wq_layout, wq.w_data)
        m.d.comb += [
            wq.w_en.eq(x_v & (~accum | ofifo.r_rdy)),
            x_take.eq(wq.w_en & wq.w_rdy),
            wq_tail.addr.eq(x_addr),
            wq_tail.data.eq(wdata),
            wq_tail.lane.eq(x_lane),
            wr.addr.eq(wq_head.addr),
            wr.we.eq(1),
            wr.en.eq(wq.r_rdy),
            wr.wdata.eq(Cat([wq_head.data] * (bb // 4))),
            wr.wmask.eq(Const(0xF, bb) << (wq_head.lane * 4) if lb > 2 else Const(0xF, 4)),
            wq.r_en.eq(wr.ack),
        ]
        beat_end = Signal()
        start_row = Signal()  # set up the descriptor at the FIFO head
        m.d.comb += [
            beat_end.eq((queued & ew_last) | (dfifo.r_rdy & started & rfull & ~row_ok)),
            ofifo.r_en.eq(x_take & accum),
            start_row.eq(dfifo.r_rdy & ~started),
        ]
        last_beat = rb == beats_per_tile - 1
        # the counters' next values within a beat, and the flags of the next cycle
        er_nb = Mux(rd_ack, er + 1, er)
        ew_nb = Mux(queued, ew + 1, ew)
        rb_nb = Mux(last_beat, 0, rb + 1)  # after beat_end
        zero = start_row | beat_end  # er, ew (and rb at start_row) restart from 0
        # (the flags' compares are of the registers, for both outcomes of ``rd_ack`` and
        # ``queued``, which then select among them; timing: ``rd_ack`` comes from the ACC
        # arbiter, and was in front of a carry chain)
        m.d.sync += [
            er.eq(Mux(zero, 0, er_nb)),
            ew.eq(Mux(zero, 0, ew_nb)),
            # er_nb > ew_nb
            r_ahead.eq(~zero & Mux(rd_ack, Mux(queued, er > ew, er >= ew),
                                   Mux(queued, er > ew + 1, er > ew))),
            er_in.eq(zero | Mux(rd_ack, er + 1 < cur.cols, er < cur.cols)),  # cols >= 1
            ew_in.eq(zero | Mux(queued, ew + 1 < cur.cols, ew < cur.cols)),
            ew_last.eq(Mux(zero, cur.cols == 1,
                           Mux(queued, ew + 2 == cur.cols, ew + 1 == cur.cols))),
        ]
        with m.If(start_row):
            m.d.sync += [row.eq(cur.addr), started.eq(1), rb.eq(0), row_ok.eq(1)]  # rows >= 1
        m.d.comb += eng.res.ready.eq(beat_end)
        with m.If(beat_end):
            m.d.sync += [rb.eq(rb_nb), row.eq(row + n4), row_ok.eq(rb_nb < cur.rows)]
            with m.If(last_beat):
                m.d.sync += started.eq(0)
        m.d.comb += dfifo.r_en.eq(beat_end & last_beat)

        # ------------------------------------------------------------------ sequencing
        # The walker registers and their present copies load on their walker's load enable
        # alone (setup, or a step), with the start value in setup (timing: the enable is the
        # one LUT ``kept_lut`` makes, not an OR of setup behind the step's LUT)
        loaded_ids = {id(r) for r, _ in loaded}
        for reg, value in loaded:
            with m.If(load_of[id(reg)]):
                m.d.sync += reg.eq(Mux(setup, start_of(reg, hold=True), value))
        with m.If(setup):
            m.d.sync += [setup.eq(0), run.eq(1),
                         *(st for st in start_stmts if id(st.lhs) not in loaded_ids)]
        m.d.comb += fin.eq(run & ci_done & ~dfifo.r_rdy & ~x_v & ~wq.r_rdy & ~setup)
        with m.If(fin):
            m.d.sync += run.eq(0)
        m.d.comb += [
            self.done.eq(fin),
            self.busy.eq(run | setup),
            self.stall.eq((run | setup) & ~(eng.wgt.valid & eng.wgt.ready)),
        ]
        return m


def gemm_unit(cfg: AcceleratorConfig, engine: str, spad_bits: int, acc_bits: int,
              held: bool = False):
    """The GEMM unit of ``engine``: :class:`GemmUnit`, or for ``ternary`` with
    ``cfg.ternary_serial`` the :class:`~tritium.rtl.serial_gemm.SerialTernaryGemm` (``held``:
    its command stays on ``cmd`` until ``done``)."""
    if engine == "ternary" and cfg.ternary_serial:
        from .serial_gemm import SerialTernaryGemm

        return SerialTernaryGemm(cfg, spad_bits, acc_bits, held=held)
    return GemmUnit(cfg, engine, spad_bits, acc_bits)


def vector_unit_class(cfg: AcceleratorConfig):
    """The vector unit's class: :class:`~tritium.rtl.vector.VectorUnit`, or with
    ``cfg.vector_serial`` the :class:`~tritium.rtl.serial_vector.SerialVectorUnit`."""
    if cfg.vector_serial:
        from .serial_vector import SerialVectorUnit

        return SerialVectorUnit
    from .vector import VectorUnit

    return VectorUnit


def vector_unit(cfg: AcceleratorConfig, depth: int = 4, held: bool = False):
    """The vector unit of ``cfg`` (:func:`vector_unit_class`; same ports; ``held``: its
    command stays on ``cmd`` until ``done``, serial unit only)."""
    cls = vector_unit_class(cfg)
    return cls(cfg, depth=depth, held=held) if cfg.vector_serial else cls(cfg, depth=depth)


class _ReadAdapter:
    """VectorUnit element read stream -> word MemPort (byte/word select).

    The requests pass through a two-entry FIFO, so neither the port's ``en``/``addr`` nor the
    unit's ``ready`` is combinational through the bank arbiter (timing); reads answer two
    cycles after the unit's request (the unit's ``depth`` covers it). ``direct``: no FIFO (the
    request goes straight to the port, ``ready`` is the port's ``ack``; reads answer in the
    next cycle), for the serial vector unit of the small, slow-clocked configurations.
    ``mem_latency``: the port's own read latency (``ack`` -> ``rvalid``), added to those.
    """

    LATENCY = 2

    @staticmethod
    def latency(direct: bool, mem_latency: int = 1) -> int:
        return (1 if direct else _ReadAdapter.LATENCY) + mem_latency - 1

    def __init__(self, m, req, resp, port, elem_bytes: int, word_bytes: int, name: str,
                 direct: bool = False, mem_latency: int = 1):
        lb = _log2(word_bytes)
        le = _log2(elem_bytes)
        off = Signal(max(1, lb - le), name=f"{name}_off")  # element offset of the word arriving
        if direct:
            valid, addr, ready = req.valid, req.payload, req.ready
        else:
            q = fifo.SyncFIFO(width=len(req.payload), depth=2)
            m.submodules[f"{name}_q"] = q
            m.d.comb += [q.w_data.eq(req.payload), q.w_en.eq(req.valid), req.ready.eq(q.w_rdy)]
            valid, addr, ready = q.r_rdy, q.r_data, q.r_en
        m.d.comb += [
            port.en.eq(valid),
            port.we.eq(0),
            port.addr.eq(addr >> lb),
            ready.eq(port.ack),
            resp.valid.eq(port.rvalid),
        ]
        if lb > le:
            if mem_latency == 1:
                with m.If(port.ack):
                    m.d.sync += off.eq(addr[le:lb])
            else:  # the offsets of acknowledged reads, as long as the latency
                off = delayed(m, addr[le:lb], mem_latency, f"{name}_off")
            m.d.comb += resp.payload.eq(port.rdata.word_select(off, 8 * elem_bytes))
        else:
            m.d.comb += resp.payload.eq(port.rdata[: 8 * elem_bytes])


def _write_adapter(m, wr, port, elem_bytes: int, word_bytes: int, name: str,
                   direct: bool = False):
    """VectorUnit element write stream -> word MemPort, through a two-entry FIFO (the unit's
    ``ready`` is not combinational through the bank arbiter). Returns the FIFO's "holds a
    write" flag: a vector instruction is complete only when it is low. ``direct``: no FIFO
    (``ready`` is the port's ``ack``; the flag is constant 0)."""
    lb = _log2(word_bytes)
    le = _log2(elem_bytes)
    emask = (1 << elem_bytes) - 1
    if direct:
        valid, head, ready, pending = wr.valid, wr.payload, wr.ready, Const(0)
    else:
        q = fifo.SyncFIFO(width=len(wr.payload.as_value()), depth=2)
        m.submodules[f"{name}_q"] = q
        head = data.View(wr.payload.shape(), q.r_data)
        m.d.comb += [q.w_data.eq(wr.payload), q.w_en.eq(wr.valid), wr.ready.eq(q.w_rdy)]
        valid, ready, pending = q.r_rdy, q.r_en, q.r_rdy
    m.d.comb += [
        port.en.eq(valid),
        port.we.eq(1),
        port.addr.eq(head.addr >> lb),
        port.wdata.eq(Cat([head.data] * (word_bytes // elem_bytes))),
        ready.eq(port.ack),
    ]
    if lb > le:
        sel = head.addr[le:lb]
        m.d.comb += port.wmask.eq(Const(emask, word_bytes) << (sel * elem_bytes))
    else:
        m.d.comb += port.wmask.eq(emask)
    return pending


def delayed(m: Module, value, cycles: int, name: str) -> Signal:
    """``value`` as it was ``cycles`` (>= 1) cycles ago: a chain of registers."""
    for d in range(cycles):
        reg = Signal(len(value), name=name if d == cycles - 1 else f"{name}{d}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def _share_port(m: Module, port, clients: dict, name: str, latency: int = 1,
                answers: list | None = None, ready=None) -> None:
    """Connect several :class:`MemPortSignature` clients to one ``port`` (client view).

    ``clients`` maps a name to ``(client port, select)``; at most one ``select`` is high at a
    time and only the selected client's requests reach ``port``. A read's ``rvalid`` goes back
    to the client whose request was acknowledged (``latency`` cycles before), also when its
    select has dropped since. A tagged ``port`` (a :class:`~tritium.rtl.scratchpad.ReadSlice`'s,
    whose latency varies) carries the client's tag and the client's index above it
    (``port.tag_bits`` >= the widest client tag + ``ceil(log2(len(clients)))``): the answer
    goes to the client its tag names. ``answers`` (tagged ports): each client's own
    ``(rvalid, rtag)``, e.g. a :class:`~tritium.rtl.scratchpad.ReadSlice`'s per-owner
    registers, in place of the port's ``rvalid`` routed by the owner field and its ``rtag``.
    ``ready``: the port acknowledges every request while it is high (``ack = en & ready``, a
    :class:`~tritium.rtl.scratchpad.ReadSlice`'s): each client's ``ack`` is then its own
    ``en & select & ready`` (timing: not the port's ``ack``, which the multiplexers of every
    client's request and select sit in front of; on the ECP5-85F one unit's select reached
    another unit's request register through them).
    """
    if len(clients) == 1:
        (c, _), = clients.values()
        wiring.connect(m, wiring.flipped(port), c)
        return
    tb = port.signature.tag_bits
    ct = max(c.signature.tag_bits for c, _ in clients.values())  # the clients' tags
    for idx, (k, (c, sel)) in enumerate(clients.items()):
        with m.If(sel):
            m.d.comb += [port.en.eq(c.en), port.addr.eq(c.addr), port.we.eq(c.we),
                         port.wdata.eq(c.wdata), port.wmask.eq(c.wmask)]
            if tb:  # the client's tag, then its index: the owner of the answer
                m.d.comb += port.tag.eq(Cat(c.tag if c.signature.tag_bits else Const(0, ct),
                                            Const(idx, tb - ct)))
        rvalid, rtag = answers[idx] if answers else (None, port.rtag if tb else None)
        if tb:
            if rvalid is None:
                rvalid = port.rvalid & (port.rtag[ct:] == idx)
            if c.signature.tag_bits:
                m.d.comb += c.rtag.eq(rtag[:c.signature.tag_bits])
        else:  # acknowledged ``latency`` cycles ago for this client
            rvalid = port.rvalid & delayed(m, port.ack & sel, latency, f"{name}_{k}_owner")
        ack = port.ack & sel if ready is None else c.en & sel & ready
        m.d.comb += [c.ack.eq(ack), c.rvalid.eq(rvalid), c.rdata.eq(port.rdata)]


class ComputeUnit(wiring.Component):
    """The compute queue's executor: one GEMM or vector instruction at a time.

    Cycle contract: one instruction at a time; GEMMs run on their engine's :class:`GemmUnit`,
    vector ops on the VectorUnit; VREQ/VMUL/VRMS first read their ``2 * count`` parameter words
    from ACC (back to back, one per cycle) and, when an M0 is negative or a shift is outside
    ``[-31, 30]``, finish with ``err`` and ``code = BAD_OPERAND`` once every word is back
    (nothing written). ``cmd`` is accepted (``ready``) in the cycle its unit accepts it (or,
    with bad parameters, the cycle before ``done``), so its payload, which the stream rules
    keep stable until then, is not copied; a ``valid`` dropped before that (an abort)
    abandons the instruction. ``done`` pulses at the end of every instruction. Without queues
    (``cfg.queue_depth == 0``, :attr:`hold`) every instruction is accepted when it has
    finished, ``done`` in the next cycle: the payload stays on ``cmd`` while it runs, and the
    serial units read their constant fields from it instead of copying them (the controller
    fetches the next instruction after the handover).

    Members
    -------
    cmd : In(stream.Signature(128))
    done, err : Out(1)
    code : Out(4)
    sp : Out(MemPortSignature).array(n_sp)     SPAD ports (see :attr:`sp_ports`)
    ac : Out(MemPortSignature).array(n_ac)     ACC ports
    unit_busy, unit_stall : Out(4)
        systolic, ternary, lut, vector (the compute part of :data:`tritium.isa.UNITS`).
    """

    def __init__(self, cfg: AcceleratorConfig, spad_bits: int, acc_bits: int):
        self.cfg = cfg
        self.spad_bits = spad_bits
        self.acc_bits = acc_bits
        self.engines = tuple(cfg.engines)
        #: no queues: ``cmd`` is accepted when the instruction ends (see the class docstring)
        self.hold = cfg.queue_depth == 0
        #: port names, in order; the GEMM units share act / wgt / wbr / wbw (one runs at a time)
        self.sp_ports = ["act", "wgt", "vec_rd", "vec_wr"]
        self.ac_ports = ["wbr", "wbw", "vec_rd", "vec_wr", "param"]
        bb = cfg.bus_bytes
        super().__init__(
            {
                "cmd": In(stream.Signature(unsigned(INSTR_BITS))),
                "done": Out(1),
                "err": Out(1),
                "code": Out(4),
                "sp": Out(MemPortSignature(spad_bits, bb)).array(len(self.sp_ports)),
                "ac": Out(MemPortSignature(acc_bits, bb)).array(len(self.ac_ports)),
                "unit_busy": Out(4),
                "unit_stall": Out(4),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bb = cfg.bus_bytes
        lb = _log2(bb)
        sp = dict(zip(self.sp_ports, self.sp))
        ac = dict(zip(self.ac_ports, self.ac))

        # Without queues the instruction is handed over (``cmd.ready``) at its end, so the
        # units may read its fields from ``cmd`` while they run (no copies of them).
        hold = self.hold
        gemms = {}
        for e in self.engines:
            gu = gemm_unit(cfg, e, self.spad_bits, self.acc_bits, held=hold)
            m.submodules[f"gemm_{e}"] = gu
            gemms[e] = gu
        sp_lat = spad_latency(cfg)
        ac_lat = acc_latency(cfg)
        # each unit's ``busy`` as it will be next cycle (it starts with the command's
        # acceptance and ends with ``done``)
        busy_next = {e: (gu.cmd.valid & gu.cmd.ready) | (gu.busy & ~gu.done)
                     for e, gu in gemms.items()}
        for name, mem, attr, lat in (("act", sp, "act_port", sp_lat),
                                     ("wgt", sp, "wgt_port", sp_lat),
                                     ("wbr", ac, "wb_rd", ac_lat), ("wbw", ac, "wb_wr", 1)):
            # a shared port's selects: per port a register of its own equal to each unit's
            # ``busy`` (timing: on the ECP5-85F a unit's ``setup`` register, ORed into
            # ``busy``, reached every shared port's multiplexers and arbiters through one
            # 5.7 ns net)
            clients = {e: (getattr(gu, attr),
                           gu.busy if len(gemms) == 1 else
                           kept_register(m, platform, busy_next[e], f"{name}_sel_{e}",
                                         reset=True))
                       for e, gu in gemms.items()}
            port = mem[name]
            ct = max(c.signature.tag_bits for c, _ in clients.values())
            answers = ready = None
            if ct:  # tagged GEMM ports: their reads through a ReadSlice (gemm_read_slice)
                ob = (len(clients) - 1).bit_length()  # the owner index (0 bits for one)
                rs = ReadSlice(self.spad_bits, bb, ct + ob, lat, owners=len(clients),
                               owner_bits=ob)
                m.submodules[f"{name}_slice"] = rs
                wiring.connect(m, rs.mem, wiring.flipped(port))
                port = wiring.flipped(rs.client)
                # each GEMM unit's own registers of the answer (timing: next to its gathers)
                answers = list(zip(rs.owner_rvalid, rs.owner_rtag))
                ready = rs.ready
            _share_port(m, port, clients, name, lat, answers, ready)
        # outstanding reads: 3 for one read per cycle at 1 cycle of latency, +1 per extra cycle
        # the serial vector unit (small, slow-clocked configurations) talks to the ports
        # without the adapters' timing FIFOs
        direct = cfg.vector_serial
        m.submodules.vector = vu = vector_unit(
            cfg, depth=2 + _ReadAdapter.latency(direct, max(sp_lat, ac_lat)), held=hold)
        _ReadAdapter(m, vu.sp_rd, vu.sp_rdata, sp["vec_rd"], 1, bb, "vsp", direct, sp_lat)
        _ReadAdapter(m, vu.ac_rd, vu.ac_rdata, ac["vec_rd"], 4, bb, "vac", direct, ac_lat)
        wq_sp = _write_adapter(m, vu.sp_wr, sp["vec_wr"], 1, bb, "vspw", direct)
        wq_ac = _write_adapter(m, vu.ac_wr, ac["vec_wr"], 4, bb, "vacw", direct)

        # The instruction stays on ``cmd`` (stream rule: payload stable while valid and not
        # ready) until the unit that executes it accepts it, so no copy of it is kept here.
        word = self.cmd.payload
        opc = word[:8]
        v = data.View(instr_layout(Op.VREQ), word)
        m.d.comb += vu.cmd.payload.eq(word[: len(vu.cmd.payload.as_value())])
        for e, gu in gemms.items():
            m.d.comb += gu.cmd.payload.eq(word)

        # parameter checker
        # The words are read back to back (one per cycle while the port acknowledges) and
        # each returned word is checked into a sticky flag; the verdict comes from that register
        # once every word is back (timing: ACC block RAM -> compare -> register).
        pport = ac["param"]
        # the checker has judged the parameter range (ADDRESS_RANGE): it lies inside ACC, so
        # an ACC byte address and an ACC word count are wide enough
        paddr = Signal(self.acc_bits + lb)
        pw = (cfg.acc_bytes // 4).bit_length()
        pleft = Signal(pw)  # words left to request
        prcv = Signal(pw)  # words left to receive
        pm0 = Signal(pw)  # M0 words among those left to receive (they come first)
        pbad = Signal()  # a word received so far is out of range
        pword_lane = Signal(max(1, lb - 2))  # 32-bit lane of the word acknowledged last cycle
        m.d.comb += [pport.addr.eq(paddr >> lb), pport.we.eq(0)]
        if lb > 2 and ac_lat > 1:
            # the lane of the word acknowledged ``ac_lat`` cycles ago (``paddr`` moves on ack)
            pword_lane = delayed(m, paddr[2:lb], ac_lat, "pword_lane")
        if lb > 2:
            pword = pport.rdata.word_select(pword_lane, 32)
        else:
            pword = pport.rdata[:32]
        # with queues (the large devices) each returned word is judged from a register of it,
        # one cycle later (timing: no lane select and range compares between the ACC's block
        # RAM and ``pbad``); the small ones judge it as it arrives
        if cfg.queue_depth:
            pv = Signal()  # a word returned in PREAD last cycle
            pword_r = Signal(32)
            m.d.sync += [pv.eq(0), pword_r.eq(pword)]
            sval = pword_r.as_signed()
        else:
            pv = pport.rvalid
            sval = pword.as_signed()
        vbusy = Signal()
        pbusy = Signal()

        def withdrawn():
            """Before acceptance: the controller withdrew the instruction (an abort)."""
            with m.If(~self.cmd.valid):
                m.next = "IDLE"

        # the opcode's unit, decoded in IDLE and registered for DISPATCH (the payload is
        # stable while ``valid``): no opcode decode in front of the dispatch
        is_gemm = {e: Signal(name=f"is_gemm_{e}") for e in gemms}
        is_param = Signal()
        is_vec = Signal()
        with m.FSM(name="comp"):
            with m.State("IDLE"):
                m.d.sync += [*(is_gemm[e].eq(opc == ENGINE_GEMM[e]) for e in gemms),
                             is_param.eq(Cat(opc == int(o) for o in SERIAL_OPS).any()),
                             is_vec.eq(Cat(opc == int(o) for o in VEC_OPS).any())]
                with m.If(self.cmd.valid):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                for e, gu in gemms.items():
                    with m.If(is_gemm[e]):
                        m.d.comb += gu.cmd.valid.eq(self.cmd.valid)
                        with m.If(gu.cmd.valid & gu.cmd.ready):
                            m.d.comb += self.cmd.ready.eq(~hold)
                            m.next = f"WAIT_{e}"
                with m.If(is_param):
                    count = Mux((opc == Op.VREQ) & v.per_channel, v.n, 1)
                    m.d.sync += [paddr.eq(v.param), pleft.eq(count << 1),
                                 prcv.eq(count << 1), pm0.eq(count), pbad.eq(0)]
                    m.next = "PREAD"
                with m.Elif(is_vec):
                    m.next = "VEC"
                withdrawn()
            with m.State("PREAD"):
                m.d.comb += [pbusy.eq(1), pport.en.eq(pleft != 0)]
                with m.If(pport.ack):
                    m.d.sync += [paddr.eq(paddr + 4), pleft.eq(pleft - 1)]
                    if lb > 2 and ac_lat == 1:
                        m.d.sync += pword_lane.eq(paddr[2:lb])
                if cfg.queue_depth:
                    with m.If(pport.rvalid):
                        m.d.sync += pv.eq(1)
                with m.If(pv):
                    bad = Mux(pm0 != 0, sval < 0, (sval < -31) | (sval > 30))
                    m.d.sync += [prcv.eq(prcv - 1), pbad.eq(pbad | bad)]
                    with m.If(pm0 != 0):
                        m.d.sync += pm0.eq(pm0 - 1)
                with m.If(prcv == 0):
                    m.next = "PJUDGE"
                withdrawn()
            with m.State("PJUDGE"):
                m.d.comb += pbusy.eq(1)
                with m.If(pbad):  # accept it, then report the fault
                    m.d.comb += self.cmd.ready.eq(1)
                    m.next = "PFAIL"
                with m.Else():
                    m.next = "VEC"
                withdrawn()
            with m.State("PFAIL"):
                m.d.comb += [pbusy.eq(1), self.done.eq(1), self.err.eq(1),
                             self.code.eq(ErrorCode.BAD_OPERAND)]
                m.next = "IDLE"
            with m.State("VEC"):
                m.d.comb += vu.cmd.valid.eq(self.cmd.valid)
                with m.If(vu.cmd.valid & vu.cmd.ready):
                    m.d.comb += self.cmd.ready.eq(~hold)
                    m.next = "WAIT_VEC"
                withdrawn()
            with m.State("WAIT_VEC"), m.If(vu.done):
                m.next = "VEC_DRAIN"
            # hold: the instruction is accepted in the cycle its unit has finished, ``done``
            # follows in the next one (as after a parameter fault)
            end = "HANDOVER" if hold else "IDLE"
            with m.State("VEC_DRAIN"), m.If(~wq_sp & ~wq_ac):
                m.d.comb += [self.done.eq(~hold), self.cmd.ready.eq(hold)]
                m.next = end
            for e, gu in gemms.items():
                with m.State(f"WAIT_{e}"), m.If(gu.done):
                    m.d.comb += [self.done.eq(~hold), self.cmd.ready.eq(hold)]
                    m.next = end
            if hold:
                with m.State("HANDOVER"):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += vbusy.eq(vu.busy | pbusy | wq_sp | wq_ac)

        order = ("systolic", "ternary", "lut")
        for i, e in enumerate(order):
            if e in gemms:
                m.d.comb += [self.unit_busy[i].eq(gemms[e].busy),
                             self.unit_stall[i].eq(gemms[e].stall)]
        m.d.comb += [self.unit_busy[3].eq(vbusy), self.unit_stall[3].eq(vu.stall)]
        return m


class TritiumTop(wiring.Component):
    """The tritium accelerator (see the module docstring for the block diagram).

    Parameters
    ----------
    cfg : AcceleratorConfig

    Members
    -------
    m_axi : Out(Axi4Signature(addr_width=32, data_width=cfg.bus_width, id_width=2))
        Device memory. Reads use ids 0 (DMA) and 1 (instruction fetch); writes use id 0.
    s_axil : In(AxiLiteSignature(addr_width=8))
        CSRs (:mod:`tritium.rtl.csr`).
    irq : Out(1)
        ``CTRL.IRQ_EN & (STATUS.DONE | STATUS.ERROR)``.
    busy, done, error : Out(1)
        The STATUS bits (for status LEDs).
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__(
            {
                "m_axi": Out(axi_signature(cfg)),
                "s_axil": In(AxiLiteSignature(addr_width=CSR_ADDR_WIDTH)),
                "irq": Out(1),
                "busy": Out(1),
                "done": Out(1),
                "error": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        sbits, abits = scratchpad_bits(cfg)

        m.submodules.csr = csr = CsrBlock(cfg)
        m.submodules.ctrl = ctrl = Controller(cfg, axi_signature(cfg))
        if cfg.queue_depth:
            m.submodules.load = ld = LoadUnit(cfg, sbits, abits)
            m.submodules.store = st = StoreUnit(cfg, sbits, abits)
        else:
            # one instruction at a time: the load and store datapaths share one burst
            # splitter, and a store overlaps nothing: two words of prefetch (2/3 of a beat
            # per cycle) instead of four
            m.submodules.dma = dma = DmaUnit(cfg, sbits, abits, fifo_depth=2)
            ld, st = dma.load, dma.store
        comp = ComputeUnit(cfg, sbits, abits)
        if getattr(platform, "family", None) == "ecp5":
            # Timing (ECP5 boards): the compute unit's reset (the SoC's, or an abort) reaches
            # its thousands of flip-flops through a global network (a DCCA buffer) instead of
            # one fabric net across the die (on the ULX3S that net took 20 ns). The unit runs
            # in a local domain on the same clock whose reset is the buffer's output: the
            # ResetInserter below (the simulated form) with a buffer in the reset.
            m.domains.comp = ClockDomain("comp", local=True)
            comp_rst = Signal()
            m.submodules.comp_rst = Instance("DCCA", i_CLKI=ResetSignal("sync") | ctrl.abort,
                                             i_CE=1, o_CLKO=comp_rst)
            m.d.comb += [ClockSignal("comp").eq(ClockSignal("sync")),
                         ResetSignal("comp").eq(comp_rst)]
            m.submodules.compute = DomainRenamer({"sync": "comp"})(comp)
        else:
            m.submodules.compute = ResetInserter({"sync": ctrl.abort})(comp)
        m.submodules.join = join = AxiJoin(cfg)
        n_sp = 2 + len(comp.sp_ports)
        n_ac = 2 + len(comp.ac_ports)
        # Without queues one unit runs at a time, so only a unit's own read and write ports
        # can meet on a word in one cycle (the DMA's load and store never run together).
        sp_i = {n: 2 + i for i, n in enumerate(comp.sp_ports)}
        ac_i = {n: 2 + i for i, n in enumerate(comp.ac_ports)}
        # A vector unit that never reads and writes in one cycle needs no hold-back.
        vec_apart = vector_unit_class(cfg).READS_APART
        sp_pairs = [] if vec_apart else [(sp_i["vec_rd"], sp_i["vec_wr"])]
        ac_pairs = [(ac_i["wbr"], ac_i["wbw"])]
        if not vec_apart:
            ac_pairs.append((ac_i["vec_rd"], ac_i["vec_wr"]))
        # ... and only one unit's ports request at a time: a port yields to its own unit's
        # ports only (the DMA's load and store datapaths; the GEMM engines; the vector unit;
        # the compute unit's parameter reader, which reads before the vector unit starts)
        def unit_of(name):
            return "vec" if name.startswith("vec") else "param" if name == "param" else "gemm"

        dma2 = ["dma", "dma"]
        m.submodules.spad = spad = spad_memory(cfg, n_sp, sp_pairs,
                                               dma2 + [unit_of(n) for n in comp.sp_ports])
        m.submodules.acc = acc = acc_memory(cfg, n_ac, ac_pairs,
                                            dma2 + [unit_of(n) for n in comp.ac_ports])

        wiring.connect(m, wiring.flipped(self.s_axil), csr.bus)
        wiring.connect(m, wiring.flipped(self.m_axi), join.bus)
        wiring.connect(m, ctrl.axi, join.fetch)
        wiring.connect(m, ld.axi, join.load)
        wiring.connect(m, st.axi, join.store)
        wiring.connect(m, ld.spad, spad.ports[0])
        wiring.connect(m, st.spad, spad.ports[1])
        wiring.connect(m, ld.acc, acc.ports[0])
        wiring.connect(m, st.acc, acc.ports[1])
        for i in range(len(comp.sp_ports)):
            wiring.connect(m, comp.sp[i], spad.ports[2 + i])
        for i in range(len(comp.ac_ports)):
            wiring.connect(m, comp.ac[i], acc.ports[2 + i])

        m.d.comb += [
            ctrl.start.eq(csr.start),
            ctrl.reset.eq(csr.reset),
            ctrl.prog_base.eq(csr.prog_base),
            ctrl.watchdog.eq(csr.watchdog),
            csr.busy.eq(ctrl.busy),
            csr.done.eq(ctrl.done),
            csr.error.eq(ctrl.error),
            csr.err_code.eq(ctrl.err_code),
            csr.err_pc.eq(ctrl.err_pc),
            csr.retire.eq(ctrl.retire),
            self.irq.eq(csr.irq),
            self.busy.eq(ctrl.busy),
            self.done.eq(ctrl.done),
            self.error.eq(ctrl.error),
            # queues
            ld.cmd.valid.eq(ctrl.load_cmd.valid),
            ld.cmd.payload.eq(ctrl.load_cmd.payload),
            ctrl.load_cmd.ready.eq(ld.cmd.ready),
            st.cmd.valid.eq(ctrl.store_cmd.valid),
            st.cmd.payload.eq(ctrl.store_cmd.payload),
            ctrl.store_cmd.ready.eq(st.cmd.ready),
            comp.cmd.valid.eq(ctrl.comp_cmd.valid),
            comp.cmd.payload.eq(ctrl.comp_cmd.payload),
            ctrl.comp_cmd.ready.eq(comp.cmd.ready),
            ctrl.load_idle.eq(ld.idle),
            ctrl.store_idle.eq(st.idle),
            ld.abort.eq(ctrl.abort),
            st.abort.eq(ctrl.abort),
        ]
        if cfg.queue_depth:
            # timing (large devices): the compute unit's end of an instruction reaches the
            # controller's queues and fault registers a cycle later, so the path from a GEMM
            # unit's control registers to them is not one cycle across the die (the compute
            # unit starts its next instruction two cycles after ``done`` at the earliest, so
            # the controller still sees every ``done`` before the next acceptance). The same
            # for the load and store units: their ``done`` depends on ``abort`` and the AXI
            # handshakes, a path controller -> DMA -> controller; the queue offers a unit its
            # next instruction only after the head's ``done`` has moved the head.
            m.d.sync += [ctrl.comp_done.eq(comp.done & ~ctrl.abort), ctrl.comp_err.eq(comp.err),
                         ctrl.comp_code.eq(comp.code),
                         ctrl.load_done.eq(ld.done & ~ctrl.abort), ctrl.load_err.eq(ld.err),
                         ctrl.store_done.eq(st.done & ~ctrl.abort), ctrl.store_err.eq(st.err)]
        else:
            m.d.comb += [ctrl.comp_done.eq(comp.done), ctrl.comp_err.eq(comp.err),
                         ctrl.comp_code.eq(comp.code),
                         ctrl.load_done.eq(ld.done), ctrl.load_err.eq(ld.err),
                         ctrl.store_done.eq(st.done), ctrl.store_err.eq(st.err)]
        ub = Signal(len(UNITS))
        us = Signal(len(UNITS))
        m.d.comb += [
            ub[UNITS.index("load")].eq(ld.busy),
            us[UNITS.index("load")].eq(ld.stall),
            ub[UNITS.index("store")].eq(st.busy),
            us[UNITS.index("store")].eq(st.stall),
        ]
        for i, u in enumerate(("systolic", "ternary", "lut", "vector")):
            m.d.comb += [ub[UNITS.index(u)].eq(comp.unit_busy[i]),
                         us[UNITS.index(u)].eq(comp.unit_stall[i])]
        if cfg.queue_depth:
            # timing (large devices): the units' busy/stall flags reach the CSR counters a
            # cycle late, through registers (the counters' utilisation figures shift by a
            # cycle; the path from a GEMM unit's control registers across the die to the
            # counters' adders was among the failing ones on the ECP5-85F)
            m.d.sync += [csr.unit_busy.eq(ub), csr.unit_stall.eq(us)]
        else:
            m.d.comb += [csr.unit_busy.eq(ub), csr.unit_stall.eq(us)]
        return m
