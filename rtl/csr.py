"""Control/status registers: an AXI4-Lite slave implementing the :class:`tritium.isa.CSR` map.

Register map (32-bit registers, byte offsets; ``isa.CSR`` is the source of truth)::

    0x00 ID           RO  isa.CSR_ID_VALUE ("TRIT")
    0x04 VERSION      RO  isa.CSR_VERSION_VALUE
    0x08 CONFIG_HASH  RO  cfg.hash32
    0x0C CTRL         RW  bit 0 START (write 1: run from PROG_BASE; ignored while busy),
                          bit 1 RESET (write 1: abort a running program, clear STATUS, ERROR,
                          ERROR_PC and the counters), bit 2 IRQ_EN (read back)
    0x10 STATUS       RO  bit 0 BUSY, bit 1 DONE, bit 2 ERROR
    0x14 ERROR        RO  isa.ErrorCode of the fault (0 = none)
    0x18 ERROR_PC     RO  pc of the faulting instruction
    0x1C PROG_BASE    RW  byte address of the first instruction
    0x20 CYCLES_LO    RO  cycles with STATUS.BUSY since START (64-bit counter, low word)
    0x24 CYCLES_HI    RO  high word
    0x28 INSTRET      RO  instructions retired (dispatched; HALT included)
    0x2C WATCHDOG     RW  cycle budget of a run (init cfg.watchdog_cycles); exceeded ->
                          ErrorCode.WATCHDOG
    0x30 OVERLAP      RO  cycles in which the load or store unit AND a compute unit
                          (any GEMM engine or the vector unit) are busy at the same time
                          (``isa.CSR.OVERLAP``)
    0x40 + 8*i        RO  busy cycles of unit isa.UNITS[i] (load, store, systolic, ternary,
                          lut, vector)
    0x44 + 8*i        RO  stall cycles of unit isa.UNITS[i]

All counters are 32 bits (CYCLES 64) and are cleared by START and by RESET; they count only
while STATUS.BUSY. The counters of engines absent from the configuration do not exist (their
registers read 0, as an idle unit's would). ``irq = IRQ_EN & (DONE | ERROR)``.

AXI4-Lite behaviour: a write is taken when AW and W are both valid (then ``bvalid`` until
``bready``); a read is not accepted in a cycle in which a write is taken; a read of a register
answers the next cycle (PROG_BASE and WATCHDOG: the cycle after), a read of a counter within
``len(counter_slots()) + 2`` cycles (below). Unknown offsets read 0; writes to them and to
read-only registers are ignored; every response is OKAY.

PROG_BASE and WATCHDOG are two words of a block RAM (``reg_mem``), not registers: they take
their initial values with the bitstream (or the simulation's start) and keep what was
written over a reset of the clock domain. The ``watchdog`` output shows a WATCHDOG write two
cycles after its handshake (the controller registers it once more), and PROG_BASE is there
in the ``start`` cycle.

The counters live in a small memory (one 32-bit word each: two EBRs on iCE40, LUT RAM on ECP5)
with a narrow free-running pre-counter each (the count's low bits); a flush pointer brings one
word up to date per cycle, round robin. A counter read waits for its slot's flush and returns
the count as of two cycles before ``rvalid`` rises (exact, not a stale word). This replaced one
32-bit register and adder per counter (on the ``tiny`` iCE40 build: 796 -> 362 LUT4, 485 -> 250
FF, 362 -> 70 carry cells; free-running pre-counters, busy as their enable and a zero word
after START / RESET: -> 338 LUT4, 238 FF, 69 carry).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from tritium.config import ENGINES, AcceleratorConfig
from tritium.isa import CSR, CSR_ID_VALUE, CSR_VERSION_VALUE, UNITS

from .axi import AxiLiteSignature
from .scratchpad import COLLISION_FREE

__all__ = ["CSR_ADDR_WIDTH", "CSR_OVERLAP", "OVERLAP_UNITS", "CsrBlock"]

#: Offset of the OVERLAP counter (kept as a name for existing users).
CSR_OVERLAP = int(CSR.OVERLAP)
#: AXI4-Lite address width of the CSR block.
CSR_ADDR_WIDTH = 8
#: Units whose busy cycles count as "compute" for OVERLAP.
OVERLAP_UNITS = ("systolic", "ternary", "lut", "vector")


class CsrBlock(wiring.Component):
    """The CSR file and the performance counters (see the module docstring for the map).

    Cycle contract: ``start``/``reset`` are one-cycle pulses in the cycle after the AXI4-Lite
    write is accepted; counters count the status inputs of every cycle (a read returns the
    count as of two cycles before its ``rvalid``).

    Parameters
    ----------
    cfg : AcceleratorConfig
        Provides ``hash32`` (CONFIG_HASH) and ``watchdog_cycles`` (WATCHDOG's initial value).

    Members
    -------
    bus : In(AxiLiteSignature(addr_width=8))
        The register slave port.
    start, reset : Out(1)
        Pulses from CTRL writes.
    prog_base : Out(32)
        PROG_BASE, valid in the ``start`` cycle (only).
    watchdog : Out(32)
        WATCHDOG (from the second cycle after power-on; a write shows two cycles after its
        handshake).
    busy, done, error : In(1)
        STATUS bits (owned by the controller).
    err_code : In(8)
    err_pc : In(32)
    retire : In(1)
        One instruction retired this cycle.
    unit_busy, unit_stall : In(len(isa.UNITS))
        Per-unit activity, bit ``i`` for ``isa.UNITS[i]``.
    irq : Out(1)
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        n = len(UNITS)
        super().__init__(
            {
                "bus": In(AxiLiteSignature(addr_width=CSR_ADDR_WIDTH)),
                "start": Out(1),
                "reset": Out(1),
                "prog_base": Out(32),
                "watchdog": Out(32),
                "busy": In(1),
                "done": In(1),
                "error": In(1),
                "err_code": In(8),
                "err_pc": In(32),
                "retire": In(1),
                "unit_busy": In(n),
                "unit_stall": In(n),
                "irq": Out(1),
            }
        )
        #: The counters' words, one per :meth:`counter_slots` entry, and a last word that is
        #: never written (it reads as 0 for the flushes after START / RESET). The flush writes
        #: the slot read the cycle before, never the word read in its own cycle: no
        #: read/write collision logic is needed around the block RAM (``COLLISION_FREE``).
        self.counter_mem = Memory(shape=32, depth=1 << ceil_log2(len(self.counter_slots()) + 1),
                                  init=[], attrs={COLLISION_FREE: 1})
        #: PROG_BASE (word ``REG_PROG_BASE``) and WATCHDOG (word ``REG_WATCHDOG``) in block
        #: RAM instead of 64 flip-flops (whose inputs would be the bus's write data, one logic
        #: cell each), twice (one read and one write port each, written alike): ``reg_mem``'s
        #: read port reads PROG_BASE for START (in the cycle a CTRL write is taken, so
        #: ``prog_base`` holds it in the ``start`` cycle) and both registers for the bus (never
        #: while a write is taken); ``wd_mem``'s shows WATCHDOG to the controller (not enabled
        #: in the cycle of a write). No read meets a write of its memory: no collision logic.
        self.reg_mem, self.wd_mem = (
            Memory(shape=32, depth=2, init=[0, cfg.watchdog_cycles],
                   attrs={COLLISION_FREE: 1, "ram_style": "block"}) for _ in range(2))

    #: Words of :attr:`reg_mem`.
    REG_PROG_BASE, REG_WATCHDOG = 0, 1

    def counter_slots(self) -> list[tuple[str, int]]:
        """The counters, in the order of their slots in the counter memory: ``(name, offset)``
        (CYCLES low and high word, INSTRET, OVERLAP, then busy and stall of every present
        unit)."""
        slots = [("cycles_lo", int(CSR.CYCLES_LO)), ("cycles_hi", int(CSR.CYCLES_HI)),
                 ("instret", int(CSR.INSTRET)), ("overlap", CSR_OVERLAP)]
        for i, u in enumerate(UNITS):
            if u not in ENGINES or self.cfg.has(u):
                slots += [(f"busy_{u}", CSR.UNIT_BASE + 8 * i),
                          (f"stall_{u}", CSR.UNIT_BASE + 8 * i + 4)]
        return slots

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        irq_en = Signal()

        # ------------------------------------------------------------------ counters
        # Every counter is a word of a small memory plus a narrow free-running pre-counter that
        # holds the count's low bits. A flush pointer visits one slot per cycle: it reads the
        # slot's word and takes its pre-counter; the next cycle writes the word back with the
        # taken low bits and the high bits stepped if the low bits wrapped since the last flush
        # (a slot is flushed every len(slots) cycles, fewer events than the pre-counter's
        # range). START / RESET restart the round at slot 0, and its flushes read the
        # never-written last word instead of the slot's (count = low bits).
        slots = self.counter_slots()
        ns = len(slots)
        clear = Signal()
        m.d.comb += clear.eq(self.start | self.reset)
        dma = Signal()
        comp = Signal()
        m.d.comb += [
            dma.eq(self.unit_busy[UNITS.index("load")] | self.unit_busy[UNITS.index("store")]),
            comp.eq(Cat(self.unit_busy[UNITS.index(u)] for u in OVERLAP_UNITS).any()),
        ]
        carry = Signal()  # the CYCLES low word wrapped at its last flush: an event of the high
        # events of every slot but CYCLES_HI count only while busy (the pre-counters' enable)
        events = [1, carry, self.retire, dma & comp]  # (slot order of counter_slots)
        for name, _ in slots[4:]:
            kind, unit = name.split("_", 1)
            sig = self.unit_busy if kind == "busy" else self.unit_stall
            events.append(sig[UNITS.index(unit)])
        pw = ceil_log2(ns + 1)  # a pre-counter counts at most ns events between flushes
        pre = [Signal(pw, name=f"pre_{name}") for name, _ in slots]
        zero = self.counter_mem.depth - 1  # a word never written: reads as 0
        sweep = Signal(init=1)  # the reads see the zero word until ptr wraps

        m.submodules.cnt_mem = mem = self.counter_mem
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port()
        ptr = Signal(range(ns))  # the slot read this cycle
        f_v = Signal()  # a flush is in its write cycle
        f_slot = Signal(range(ns))
        f_pre = Signal(pw)  # the slot's pre-counter as of the read cycle
        f_sum = Signal(33)
        m.d.comb += [
            rd.addr.eq(Mux(sweep, zero, ptr)),
            rd.en.eq(1),
            # the low bits of a count are its pre-counter; the high bits step when the
            # pre-counter wrapped since the word was written (it cannot wrap twice)
            f_sum.eq(Cat(f_pre, rd.data[pw:] + (f_pre < rd.data[:pw]))),
            wr.addr.eq(f_slot),
            wr.data.eq(f_sum[:32]),
            wr.en.eq(f_v),
        ]
        # (a register: the low word's flush writes in the cycle slot 1 is read, so the carry
        # reaches CYCLES_HI's pre-counter after that read either way and its word in the next
        # round, as a combinational carry would; timing: on the ECP5-85F the flush adder's
        # carry into the pre-counter's adder was a failing path)
        m.d.sync += carry.eq(f_v & (f_slot == 0) & f_sum[32] & ~clear)
        m.d.sync += [ptr.eq(Mux(ptr == ns - 1, 0, ptr + 1)), f_v.eq(~clear), f_slot.eq(ptr),
                     f_pre.eq(Array(pre)[ptr])]
        for j in range(ns):
            if j == 1:  # CYCLES_HI: the low word's carry, also when no longer busy
                m.d.sync += pre[j].eq(pre[j] + events[j])
            else:
                with m.If(self.busy):
                    m.d.sync += pre[j].eq(pre[j] + events[j])
        with m.If(ptr == ns - 1):
            m.d.sync += sweep.eq(0)
        with m.If(clear):  # restart the round at slot 0, every slot's next read sees zero
            m.d.sync += [ptr.eq(0), sweep.eq(1), *[p.eq(0) for p in pre]]

        # ------------------------------------------------------------------ register reads
        regs = {
            CSR.ID: CSR_ID_VALUE,
            CSR.VERSION: CSR_VERSION_VALUE,
            CSR.CONFIG_HASH: self.cfg.hash32,
            CSR.CTRL: irq_en << 2,
            CSR.STATUS: Cat(self.busy, self.done, self.error),
            CSR.ERROR: self.err_code,
            CSR.ERROR_PC: self.err_pc,
        }
        # PROG_BASE / WATCHDOG in ``reg_mem`` (see ``__init__``)
        m.submodules.reg_mem = self.reg_mem
        m.submodules.wd_mem = self.wd_mem
        r_wr = self.reg_mem.write_port()
        r_a = self.reg_mem.read_port(transparent_for=())  # PROG_BASE for START; bus reads
        wd_wr = self.wd_mem.write_port()
        r_wd = self.wd_mem.read_port(transparent_for=())  # WATCHDOG, for the controller
        pb_w, wd_w = int(CSR.PROG_BASE) >> 2, int(CSR.WATCHDOG) >> 2
        take = Signal()  # (register writes, below) a write is taken this cycle
        m.d.comb += [
            r_wd.addr.eq(self.REG_WATCHDOG),
            r_wd.en.eq(~r_wr.en),
            wd_wr.addr.eq(r_wr.addr),
            wd_wr.data.eq(r_wr.data),
            wd_wr.en.eq(r_wr.en),
            self.watchdog.eq(r_wd.data),
            self.prog_base.eq(r_a.data),
        ]
        rvalid = Signal()
        rdata = Signal(32)
        rwait = Signal()  # a counter read waits for its slot's flush
        rslot = Signal(range(ns))
        rreg = Signal()  # a read of PROG_BASE / WATCHDOG: r_a has the word
        m.d.comb += [
            bus.arready.eq(~rvalid & ~rwait & ~rreg & ~take),
            bus.rvalid.eq(rvalid),
            bus.rdata.eq(rdata),
            bus.rresp.eq(0),
        ]
        with m.If(bus.arvalid & bus.arready), m.Switch(bus.araddr[2:]):
            for off, val in regs.items():
                with m.Case(int(off) >> 2):
                    m.d.sync += [rdata.eq(val), rvalid.eq(1)]
            with m.Case(pb_w, wd_w):
                m.d.comb += r_a.en.eq(1)
                m.d.sync += rreg.eq(1)
            for j, (_, off) in enumerate(slots):
                with m.Case(off >> 2):
                    m.d.sync += [rslot.eq(j), rwait.eq(1)]
            with m.Default():
                m.d.sync += [rdata.eq(0), rvalid.eq(1)]
        with m.Elif(rreg):
            m.d.sync += [rdata.eq(r_a.data), rvalid.eq(1), rreg.eq(0)]
        with m.Elif(rwait & f_v & (f_slot == rslot)):
            m.d.sync += [rdata.eq(f_sum[:32]), rvalid.eq(1), rwait.eq(0)]
        with m.Elif(bus.rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)

        # ------------------------------------------------------------------ register writes
        bvalid = Signal()
        m.d.comb += [
            take.eq(bus.awvalid & bus.wvalid & ~bvalid),
            bus.awready.eq(take),
            bus.wready.eq(take),
            bus.bvalid.eq(bvalid),
            bus.bresp.eq(0),
        ]
        start = Signal()
        reset = Signal()
        m.d.sync += [start.eq(0), reset.eq(0)]
        m.d.comb += [self.start.eq(start), self.reset.eq(reset)]
        with m.If(take):
            m.d.sync += bvalid.eq(1)
            with m.Switch(bus.awaddr[2:]):
                with m.Case(int(CSR.CTRL) >> 2):
                    m.d.sync += [
                        start.eq(bus.wdata[0]),
                        reset.eq(bus.wdata[1]),
                        irq_en.eq(bus.wdata[2]),
                    ]
                    m.d.comb += r_a.en.eq(1)  # (r_a.addr: PROG_BASE while a write is taken)
                with m.Case(pb_w, wd_w):
                    m.d.comb += r_wr.en.eq(1)
        with m.Elif(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)
        m.d.comb += [
            r_wr.addr.eq(bus.awaddr[2:] == wd_w),
            r_wr.data.eq(bus.wdata),
            r_a.addr.eq(~take & (bus.araddr[2:] == wd_w)),
        ]

        m.d.comb += self.irq.eq(irq_en & (self.done | self.error))
        return m
