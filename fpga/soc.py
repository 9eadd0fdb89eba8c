"""The tritium SoC: accelerator + on-chip RAM as device memory + byte-stream bridge.

The same RTL runs in simulation (a cocotb driver or a socket server on ``rx``/``tx``) and on a
board (a UART on ``rx``/``tx``)::

    rx/tx bytes -> Bridge --AXI4-Lite--> TritiumTop.s_axil (CSRs)
                     |                  TritiumTop.m_axi --AXI4--> SocRam (device memory)
                     +------ word port -----------------------------^

:class:`SocRam` is ``cfg.dev_mem_bytes`` of :class:`amaranth.lib.memory.Memory` (``bus_bytes``
words) with an AXI4 slave (INCR bursts, one beat per cycle each way, reads and writes
concurrently; bursts starting outside the memory answer DECERR) and a word port for the
bridge (served in the cycles the AXI side leaves the memory port free).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from tritium.rtl.axi import RESP_DECERR, RESP_OKAY
from tritium.rtl.dma import axi_signature
from tritium.rtl.scratchpad import COLLISION_FREE, MemPortSignature, kept_register
from tritium.rtl.top import TritiumTop, delayed

from tritium.config import AcceleratorConfig

from .bridge import Bridge

__all__ = ["BANK_BYTES", "SLICE_BITS", "SocRam", "TritiumSoc", "ram_banks", "ram_slices"]

#: Device memory up to this size is one memory; a larger one is split into banks of this size
#: (64 KiB: 32 block RAMs of the ECP5, 2 KiB each), at most 16 of them. (16 KiB banks, 16 for
#: ``base``, made the ECP5-85F's routing congested beyond use: docs/fpga.md.)
BANK_BYTES = 64 * 1024


#: With a bus of 64 bits or more, each bank is split into slices of this many bits of the word,
#: each a memory with its own copy of the input registers: on the ECP5-85F one copy of a 64 KiB
#: bank's address fed 32 block RAMs, an 18 ns net; slices of 16 bits (8 block RAMs each) still
#: gave a 20 ns net from a slice's address copy to one of its block RAMs in stop 25, and
#: slices of 8 bits (4 block RAMs each) 15-18 ns nets in stop 27 (the worst path of one
#: build): the placer scatters a slice's block RAMs over the die's RAM rows (82 % of them are
#: used). Slices of 2 bits: one DP16KD (8 K x 2) each, its address copy beside it.
SLICE_BITS = 2

#: Slices (of the word) that share one kept copy of the read and write address registers; a
#: copy serves those slices of every bank (whose outputs the bank select joins). One copy per
#: slice (dc0936d: 3,328 flip-flops on ``base``) left every full build of stops 28-30
#: unroutable; one per 8 slices of a bank routed at 57.89 MHz, one per 2 slice columns across
#: the banks at 59.03 (stop 31, seed 2; docs/fpga.md).
ADDRESS_COPY_SLICES = 2


def ram_slices(cfg: AcceleratorConfig) -> int:
    """Slices of each :class:`SocRam` bank (see :data:`SLICE_BITS`): one with fewer than two
    banks or a bus narrower than 64 bits (the small devices), else ``bus_width / SLICE_BITS``."""
    if ram_banks(cfg) < 2 or cfg.bus_width < 64:
        return 1
    return cfg.bus_width // SLICE_BITS


def ram_banks(cfg: AcceleratorConfig) -> int:
    """Banks of :class:`SocRam`: ``dev_mem_bytes / BANK_BYTES``, between 1 and 16 (a power of
    two, as ``dev_mem_bytes``)."""
    return max(1, min(16, cfg.dev_mem_bytes // BANK_BYTES))


class SocRam(wiring.Component):
    """On-chip device memory with an AXI4 slave port and a bridge word port.

    Cycle contract: a read burst returns one beat per cycle (the first :attr:`latency` + 1
    cycles after AR) while ``rready`` is high; a write burst takes one beat per cycle, B one
    cycle after the last beat. One burst of each direction at a time. The bridge port is
    acknowledged in any cycle in which the AXI side does not use the memory's read (resp.
    write) port; its read data comes :attr:`latency` cycles after the acknowledgement
    (``rvalid``). With several banks, a read acknowledged in the same cycle as a write of
    its word returns an undefined word on the FPGA (the old one in simulation): no request
    orders the two, and the block RAMs have no collision logic.

    The memory's address, write data and byte enables are registered right before it, and
    its read data right after it: on the ECP5 the memory is 128 block RAMs spread over the
    die, and the logic that chooses a request (AXI or bridge) would otherwise share a clock
    period with the wires to all of them. Reads and writes pass the same input registers, so
    their order is kept. A memory of more than :data:`BANK_BYTES` is split into
    :func:`ram_banks` banks (``base``: 4), each with its own copy of the input registers
    (loaded only when a request addresses the bank, so synthesis keeps the copies apart and
    each sits next to its block RAMs) and its own output register, ahead of the registered
    bank select: no net runs from one register to every block RAM of the die (a 22 ns net on
    the ECP5-85F with one copy). With a wide bus each bank is also split into
    :func:`ram_slices` slices of the word (``ram_bank<i>_s<j>``), each with its own copy of the
    input registers. :attr:`latency` is 3 cycles with one bank, 5 with several.

    Members
    -------
    axi : In(Axi4Signature)
    port : In(MemPortSignature)
        Bridge access (word address, byte mask).
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.words = cfg.dev_mem_bytes // cfg.bus_bytes
        self.abits = max(1, (self.words - 1).bit_length())
        self.banks = ram_banks(cfg)
        #: cycles from a request's acknowledgement to its read data
        self.latency = 3 if self.banks == 1 else 5
        super().__init__(
            {
                "axi": In(axi_signature(cfg)),
                "port": In(MemPortSignature(self.abits, cfg.bus_bytes)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bb = cfg.bus_bytes
        lb = (bb - 1).bit_length()
        axi, port = self.axi, self.port
        # ------------------------------------------------------------------ reads
        r_active = Signal()
        r_addr = Signal(self.abits)
        r_left = Signal(9)
        r_id = Signal(len(axi.arid))
        r_bad = Signal()
        idw = len(axi.arid)
        # entries: data, last, bad, id (per beat: the next AR may arrive before they leave)
        L = self.latency
        m.submodules.rfifo = rfifo = fifo.SyncFIFO(width=8 * bb + 2 + idw, depth=L + 2)
        held = Signal(range(L + 3))
        m.d.comb += axi.arready.eq(~r_active)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [
                r_active.eq(1),
                r_addr.eq(axi.araddr[lb:]),
                r_left.eq(axi.arlen + 1),
                r_id.eq(axi.arid),
                r_bad.eq(axi.araddr >= cfg.dev_mem_bytes),
            ]
        issue = Signal()
        m.d.comb += issue.eq(r_active & (r_left != 0) & (held < L + 2))
        with m.If(issue):
            m.d.sync += [r_addr.eq(r_addr + 1), r_left.eq(r_left - 1)]
            with m.If(r_left == 1):
                m.d.sync += r_active.eq(0)
        # AXI read (issue, last, bad, id) and bridge read of each memory access on its way
        # through the memory pipeline
        p_rack = Signal()
        tag = Cat(issue, issue & (r_left == 1), r_bad, p_rack, r_id)
        for i in range(L):
            nxt_tag = Signal(len(tag), name=f"r_tag{i + 1}")
            m.d.sync += nxt_tag.eq(tag)
            tag = nxt_tag
        r_pend, r_last_pend, r_bad_pend, p_rvalid, r_id_pend = (
            tag[0], tag[1], tag[2], tag[3], tag[4:])
        rdata = Signal(8 * bb)  # the output register
        pop = Signal()
        m.d.comb += [
            rfifo.w_en.eq(r_pend),
            rfifo.w_data.eq(Cat(Mux(r_bad_pend, 0, rdata), r_last_pend, r_bad_pend,
                                r_id_pend)),
            axi.rvalid.eq(rfifo.r_rdy),
            axi.rdata.eq(rfifo.r_data[: 8 * bb]),
            axi.rlast.eq(rfifo.r_data[8 * bb]),
            axi.rid.eq(rfifo.r_data[8 * bb + 2 :]),
            axi.rresp.eq(Mux(rfifo.r_data[8 * bb + 1], RESP_DECERR, RESP_OKAY)),
            pop.eq(rfifo.r_rdy & axi.rready),
            rfifo.r_en.eq(pop),
        ]
        m.d.sync += held.eq(held + issue - pop)

        # ------------------------------------------------------------------ writes
        w_active = Signal()
        w_addr = Signal(self.abits)
        w_id = Signal(len(axi.awid))
        w_bad = Signal()
        b_valid = Signal()
        m.d.comb += axi.awready.eq(~w_active & ~b_valid)
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += [w_active.eq(1), w_addr.eq(axi.awaddr[lb:]), w_id.eq(axi.awid),
                         w_bad.eq(axi.awaddr >= cfg.dev_mem_bytes)]
        m.d.comb += axi.wready.eq(w_active)
        w_fire = Signal()
        m.d.comb += w_fire.eq(axi.wvalid & axi.wready)
        with m.If(w_fire):
            m.d.sync += w_addr.eq(w_addr + 1)
            with m.If(axi.wlast):
                m.d.sync += [w_active.eq(0), b_valid.eq(1)]
        with m.If(b_valid & axi.bready):
            m.d.sync += b_valid.eq(0)
        m.d.comb += [axi.bvalid.eq(b_valid), axi.bid.eq(w_id),
                     axi.bresp.eq(Mux(w_bad, RESP_DECERR, RESP_OKAY))]

        # ------------------------------------------------------------------ memory ports
        p_rd = port.en & ~port.we
        p_wr = port.en & port.we
        p_wack = Signal()
        m.d.comb += [
            p_rack.eq(p_rd & ~issue),
            p_wack.eq(p_wr & ~w_fire),
            port.ack.eq(p_rack | p_wack),
            port.rdata.eq(rdata),
        ]
        # the input registers
        ra = Signal(self.abits)
        wa = Signal(self.abits)
        wd = Signal(8 * bb)
        we = Signal(bb)
        m.d.sync += [
            ra.eq(Mux(issue, r_addr, port.addr)),
            wa.eq(Mux(w_fire, w_addr, port.addr)),
            wd.eq(Mux(w_fire, axi.wdata, port.wdata)),
            we.eq(Mux(w_fire, Mux(w_bad, 0, axi.wstrb), Mux(p_wack, port.wmask, 0))),
        ]
        m.d.comb += port.rvalid.eq(p_rvalid)
        nb = self.banks
        if nb == 1:
            m.submodules.mem = mem = memory.Memory(shape=8 * bb, depth=self.words, init=[])
            wp = mem.write_port(granularity=8)
            rp = mem.read_port(transparent_for=(wp,))
            m.d.comb += [rp.addr.eq(ra), wp.addr.eq(wa), wp.data.eq(wd), wp.en.eq(we)]
            m.d.sync += rdata.eq(rp.data)
            return m
        bbits = (nb - 1).bit_length()
        local = self.abits - bbits  # word address bits within a bank
        ns = ram_slices(cfg)
        sw = 8 * bb // ns  # bits per slice
        # sliced banks: the address copies serve the same slices of every bank (the slices
        # whose outputs the bank select joins), loaded every cycle (a bank's writes are
        # enabled by its byte enables alone)
        col_copies = [(kept_register(m, platform, ra[:local], f"ra_c{g}"),
                       kept_register(m, platform, wa[:local], f"wa_c{g}"))
                      for g in range(-(-ns // ADDRESS_COPY_SLICES))] if ns > 1 else []
        outs = []
        for i in range(nb):
            rsel = ra[local:] == i
            wsel = wa[local:] == i
            out = Signal(8 * bb, name=f"out{i}")  # the bank's output register
            for j in range(ns):
                # (the simulated device server's back door: ram_bank<i>, or its slices)
                mem = memory.Memory(shape=sw, depth=self.words // nb, init=[],
                                    attrs={COLLISION_FREE: 1, "ram_style": "block"})
                sfx = f"{i}_s{j}" if ns > 1 else f"{i}"
                m.submodules[f"ram_bank{sfx}"] = mem
                # (a slice narrower than a byte: one enable, its byte's)
                wp = mem.write_port(granularity=8) if sw >= 8 else mem.write_port()
                # no collision logic (COLLISION_FREE, not transparent): reads and writes
                # reach the block RAM two cycles after their acknowledgement (a read's
                # ``issue`` or the bridge port's, a W beat or the port's), so a read
                # acknowledged after a write sees it; only a read and a write of one word
                # acknowledged in the same cycle (no order between them: AXI's read and
                # write channels, or AXI and the bridge; the controller orders a load after
                # a store it overlaps) read an undefined word (the old one in simulation).
                # Collision logic cost each slice its two address copies compared and a
                # multiplexer after the block RAM (~3,100 LUT4 and ~2,000 FF over base's 128)
                rp = mem.read_port(transparent_for=())
                # the slice's input registers: write data and enables loaded only when the
                # bank is addressed; the address from kept copies (see ``col_copies``; plain
                # copies with the same input were merged by synthesis into one: stop 28's
                # seed 2 had the write address reach a slice's block RAM through a 17 ns net)
                if ns > 1:
                    b_ra, b_wa = col_copies[j // ADDRESS_COPY_SLICES]
                else:
                    b_ra = kept_register(m, platform, ra[:local], f"ra{i}", en=rsel)
                    b_wa = kept_register(m, platform, wa[:local], f"wa{i}", en=wsel)
                b_wd = Signal(sw, name=f"wd{sfx}")
                lo_b, hi_b = j * sw // 8, max(j * sw // 8 + 1, (j + 1) * sw // 8)
                b_we = Signal(hi_b - lo_b, name=f"we{sfx}")
                with m.If(wsel):
                    m.d.sync += b_wd.eq(wd[j * sw:(j + 1) * sw])
                m.d.sync += [b_we.eq(Mux(wsel, we[lo_b:hi_b], 0)),
                             out[j * sw:(j + 1) * sw].eq(rp.data)]
                m.d.comb += [rp.addr.eq(b_ra), wp.addr.eq(b_wa), wp.data.eq(b_wd),
                             wp.en.eq(b_we)]
            outs.append(out)
        # the bank of the read in the banks' output registers: three cycles after ``ra``
        bank = delayed(m, ra[local:], 3, "rbank")
        m.d.sync += rdata.eq(Array(outs)[bank])
        return m


class TritiumSoc(wiring.Component):
    """Accelerator + device memory + bridge (see the module docstring).

    Parameters
    ----------
    cfg : AcceleratorConfig
    timeout : int
        The bridge's inter-byte timeout in cycles.

    Members
    -------
    rx : In(stream.Signature(8))
        Host -> bridge bytes.
    tx : Out(stream.Signature(8))
        Bridge -> host bytes.
    irq : Out(1)
        The accelerator's interrupt (STATUS done/error with CTRL.IRQ_EN).
    busy, done, error : Out(1)
        The accelerator's STATUS bits (board status LEDs).
    """

    def __init__(self, cfg: AcceleratorConfig, timeout: int = 1 << 20):
        self.cfg = cfg
        self.timeout = timeout
        super().__init__(
            {
                "rx": In(stream.Signature(8)),
                "tx": Out(stream.Signature(8)),
                "irq": Out(1),
                "busy": Out(1),
                "done": Out(1),
                "error": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.acc = acc = TritiumTop(self.cfg)
        m.submodules.ram = ram = SocRam(self.cfg)
        m.submodules.bridge = br = Bridge(self.cfg, self.timeout)
        wiring.connect(m, acc.m_axi, ram.axi)
        wiring.connect(m, br.csr, acc.s_axil)
        wiring.connect(m, br.mem, ram.port)
        wiring.connect(m, wiring.flipped(self.rx), br.rx)
        wiring.connect(m, wiring.flipped(self.tx), br.tx)
        m.d.comb += [self.irq.eq(acc.irq), self.busy.eq(acc.busy), self.done.eq(acc.done),
                     self.error.eq(acc.error)]
        return m
