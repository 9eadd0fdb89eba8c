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
``bready``); a read answers the next cycle. Unknown offsets read 0; writes to them and to
read-only registers are ignored; every response is OKAY.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tritium.config import ENGINES, AcceleratorConfig
from tritium.isa import CSR, CSR_ID_VALUE, CSR_VERSION_VALUE, UNITS

from .axi import AxiLiteSignature

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
    write is accepted; counters update every cycle from the status inputs.

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
    prog_base, watchdog : Out(32)
        PROG_BASE and WATCHDOG.
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
                "watchdog": Out(32, init=cfg.watchdog_cycles),
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

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        irq_en = Signal()
        cycles = Signal(64)
        instret = Signal(32)
        overlap = Signal(32)
        present = [i for i, u in enumerate(UNITS) if u not in ENGINES or self.cfg.has(u)]
        ubusy = {i: Signal(32, name=f"busy_{UNITS[i]}") for i in present}
        ustall = {i: Signal(32, name=f"stall_{UNITS[i]}") for i in present}

        # ------------------------------------------------------------------ counters
        clear = Signal()
        m.d.comb += clear.eq(self.start | self.reset)
        dma = Signal()
        comp = Signal()
        m.d.comb += [
            dma.eq(self.unit_busy[UNITS.index("load")] | self.unit_busy[UNITS.index("store")]),
            comp.eq(Cat(self.unit_busy[UNITS.index(u)] for u in OVERLAP_UNITS).any()),
        ]
        with m.If(clear):
            m.d.sync += [c.eq(0) for c in (cycles, instret, overlap, *ubusy.values(),
                                           *ustall.values())]
        with m.Elif(self.busy):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(self.retire):
                m.d.sync += instret.eq(instret + 1)
            with m.If(dma & comp):
                m.d.sync += overlap.eq(overlap + 1)
            for i in present:
                with m.If(self.unit_busy[i]):
                    m.d.sync += ubusy[i].eq(ubusy[i] + 1)
                with m.If(self.unit_stall[i]):
                    m.d.sync += ustall[i].eq(ustall[i] + 1)

        # ------------------------------------------------------------------ register reads
        regs = {
            CSR.ID: CSR_ID_VALUE,
            CSR.VERSION: CSR_VERSION_VALUE,
            CSR.CONFIG_HASH: self.cfg.hash32,
            CSR.CTRL: irq_en << 2,
            CSR.STATUS: Cat(self.busy, self.done, self.error),
            CSR.ERROR: self.err_code,
            CSR.ERROR_PC: self.err_pc,
            CSR.PROG_BASE: self.prog_base,
            CSR.CYCLES_LO: cycles[:32],
            CSR.CYCLES_HI: cycles[32:],
            CSR.INSTRET: instret,
            CSR.WATCHDOG: self.watchdog,
            CSR_OVERLAP: overlap,
        }
        for i in present:
            regs[CSR.UNIT_BASE + 8 * i] = ubusy[i]
            regs[CSR.UNIT_BASE + 8 * i + 4] = ustall[i]

        rvalid = Signal()
        rdata = Signal(32)
        m.d.comb += [
            bus.arready.eq(~rvalid),
            bus.rvalid.eq(rvalid),
            bus.rdata.eq(rdata),
            bus.rresp.eq(0),
        ]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += rvalid.eq(1)
            with m.Switch(bus.araddr[2:]):
                for off, val in regs.items():
                    with m.Case(int(off) >> 2):
                        m.d.sync += rdata.eq(val)
                with m.Default():
                    m.d.sync += rdata.eq(0)
        with m.Elif(bus.rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)

        # ------------------------------------------------------------------ register writes
        bvalid = Signal()
        take = Signal()
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
                with m.Case(int(CSR.PROG_BASE) >> 2):
                    m.d.sync += self.prog_base.eq(bus.wdata)
                with m.Case(int(CSR.WATCHDOG) >> 2):
                    m.d.sync += self.watchdog.eq(bus.wdata)
        with m.Elif(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)

        m.d.comb += self.irq.eq(irq_en & (self.done | self.error))
        return m
