"""Byte-stream bridge: the SoC's host interface (CSR and memory access over a pair of byte
streams), speaking the protocol of :mod:`tritium.protocol` (also in ``docs/bridge.md``).

Summary of the protocol (see :mod:`tritium.protocol` for the full rules)::

    request  : 0xA5 | CMD | ADDR[4] LE | LEN[2] LE | PAYLOAD[LEN] | CRC-8
    response : 0x5A | STATUS | LEN[2] LE | PAYLOAD[LEN] | CRC-8
    CMD      : 0 PING, 1 READ_CSR, 2 WRITE_CSR, 3 READ_MEM, 4 WRITE_MEM
    STATUS   : 0 OK, 1 BAD_SYNC, 2 BAD_CMD, 3 BAD_LEN, 4 BAD_ADDR, 5 BAD_CRC, 6 TIMEOUT
    CRC-8    : poly 0x07, init 0, over every byte after the sync byte

The bridge is transport-agnostic: ``rx``/``tx`` are ``lib.stream`` byte streams, so a UART
(on a board) or a cocotb driver (in simulation) plugs in directly.

Robustness: a byte other than 0xA5 where a frame must start is answered once with BAD_SYNC
and the following non-sync bytes are dropped silently; header errors (unknown command, a length
the command does not allow, an address outside the CSR window or device memory) are answered
with their status right after the header, and the rest of that frame is dropped up to the next
0xA5; writes are buffered and performed only once the CRC matched; a frame that stops
arriving for ``timeout`` cycles is answered with TIMEOUT. The parser therefore always returns
to waiting for a sync byte: no byte sequence wedges it.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from tritium.rtl.axi import AxiLiteSignature
from tritium.rtl.csr import CSR_ADDR_WIDTH
from tritium.rtl.scratchpad import MemPortSignature

from tritium.config import AcceleratorConfig
from tritium.isa import CSR_ID_VALUE
from tritium.protocol import CSR_SPACE, MAX_LEN, REQ_SYNC, RESP_SYNC, Cmd, Status

__all__ = ["Bridge", "crc8_next"]


def crc8_next(m: Module, crc, byte, name: str = "crc") -> Signal:
    """Combinational CRC-8 (poly 0x07) update of ``crc`` with ``byte`` (one Signal per bit
    step, so the expression stays linear in size)."""
    c = Signal(8, name=f"{name}_in")
    m.d.comb += c.eq(crc ^ byte)
    for i in range(8):
        n = Signal(8, name=f"{name}_s{i}")
        m.d.comb += n.eq(Mux(c[7], ((c << 1) ^ 0x07)[:8], (c << 1)[:8]))
        c = n
    return c


class Bridge(wiring.Component):
    """Protocol engine between a byte stream pair and the SoC (CSRs + device memory).

    Cycle contract: one ``rx`` byte per cycle while parsing (``rx.ready`` is low only while a
    command executes or a response is sent); one ``tx`` byte per cycle while responding (memory
    reads add two cycles per byte); CSR accesses take one AXI4-Lite transaction.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Device memory size (``dev_mem_bytes``) and word width (``bus_bytes``).
    timeout : int
        Cycles without a byte inside a frame before it is abandoned with TIMEOUT.

    Members
    -------
    rx : In(stream.Signature(8))
        Request bytes.
    tx : Out(stream.Signature(8))
        Response bytes.
    csr : Out(AxiLiteSignature(addr_width=8))
        To the accelerator's CSR slave.
    mem : Out(MemPortSignature)
        Word port into device memory (byte accesses use ``wmask``).
    """

    def __init__(self, cfg: AcceleratorConfig, timeout: int = 1 << 20):
        self.cfg = cfg
        self.timeout = timeout
        words = cfg.dev_mem_bytes // cfg.bus_bytes
        super().__init__(
            {
                "rx": In(stream.Signature(8)),
                "tx": Out(stream.Signature(8)),
                "csr": Out(AxiLiteSignature(addr_width=CSR_ADDR_WIDTH)),
                "mem": Out(MemPortSignature(max(1, (words - 1).bit_length()), cfg.bus_bytes)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bb = cfg.bus_bytes
        lb = (bb - 1).bit_length()
        rx, tx, axil, mem = self.rx, self.tx, self.csr, self.mem

        buf = memory.Memory(shape=8, depth=MAX_LEN, init=[])
        m.submodules.buf = buf
        bwr = buf.write_port()
        brd = buf.read_port()

        cmd = Signal(8)
        addr = Signal(32)
        length = Signal(16)
        hdr = Signal(range(8))
        crc = Signal(8)
        idx = Signal(17)
        status = Signal(8)
        word = Signal(32)  # CSR data / last 4 payload bytes
        garbage = Signal()  # drop non-sync bytes silently
        timer = Signal(range(self.timeout + 1))
        rlen = Signal(16)  # response payload length
        rsrc_mem = Signal()  # response payload comes from memory
        tcrc = Signal(8)
        have = Signal()
        tbyte = Signal(8)
        lane = Signal(max(1, lb))

        rx_fire = Signal()
        m.d.comb += rx_fire.eq(rx.valid & rx.ready)
        byte = rx.payload
        rx_crc = crc8_next(m, crc, byte, "rxcrc")

        def respond(st, n=0, from_mem=False):
            m.d.sync += [status.eq(st), rlen.eq(n), rsrc_mem.eq(int(from_mem)), idx.eq(0),
                         have.eq(0)]
            m.next = "T_SYNC"

        mem_end = addr + length
        cmd_ok = Cat(cmd == int(c) for c in Cmd).any()
        len_ok = Mux(cmd == Cmd.PING, length == 0,
                     Mux((cmd == Cmd.READ_CSR) | (cmd == Cmd.WRITE_CSR), length == 4,
                         (length >= 1) & (length <= MAX_LEN)))
        is_csr = (cmd == Cmd.READ_CSR) | (cmd == Cmd.WRITE_CSR)
        is_mem = (cmd == Cmd.READ_MEM) | (cmd == Cmd.WRITE_MEM)
        addr_ok = Mux(is_csr, (addr < CSR_SPACE) & (addr[:2] == 0),
                      Mux(is_mem, mem_end <= cfg.dev_mem_bytes, 1))

        def frame_timer():
            """Inside a frame: count idle cycles, abandon the frame with TIMEOUT."""
            with m.If(rx_fire):
                m.d.sync += timer.eq(0)
            with m.Else():
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self.timeout - 1):
                    m.d.sync += garbage.eq(1)
                    respond(Status.TIMEOUT)

        pend = Signal()  # a memory read for the response is in flight
        tx_byte = Signal(8)
        a_idx = Signal(32)  # the memory byte of payload byte idx (WRITE_MEM, READ_MEM)
        m.d.comb += a_idx.eq(addr + idx)

        with m.FSM(name="bridge") as fsm:
            with m.State("IDLE"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx_fire):
                    with m.If(byte == REQ_SYNC):
                        m.d.sync += [crc.eq(0), hdr.eq(0), garbage.eq(0), timer.eq(0),
                                     length.eq(0)]
                        m.next = "HDR"
                    with m.Elif(~garbage):
                        m.d.sync += garbage.eq(1)
                        respond(Status.BAD_SYNC)
            with m.State("HDR"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(rx_crc), hdr.eq(hdr + 1)]
                    with m.Switch(hdr):
                        with m.Case(0):
                            m.d.sync += cmd.eq(byte)
                        for i in range(4):
                            with m.Case(1 + i):
                                m.d.sync += addr[8 * i : 8 * i + 8].eq(byte)
                        with m.Case(5):
                            m.d.sync += length[:8].eq(byte)
                        with m.Case(6):
                            m.d.sync += length[8:].eq(byte)
                            m.next = "CHECK"
                frame_timer()
            with m.State("CHECK"):
                with m.If(~cmd_ok):
                    m.d.sync += garbage.eq(1)
                    respond(Status.BAD_CMD)
                with m.Elif(~len_ok):
                    m.d.sync += garbage.eq(1)
                    respond(Status.BAD_LEN)
                with m.Elif(~addr_ok):
                    m.d.sync += garbage.eq(1)
                    respond(Status.BAD_ADDR)
                with m.Elif((cmd == Cmd.WRITE_CSR) | (cmd == Cmd.WRITE_MEM)):
                    m.d.sync += idx.eq(0)
                    m.next = "PAYLOAD"
                with m.Else():
                    m.next = "CRC"
            with m.State("PAYLOAD"):
                m.d.comb += [rx.ready.eq(1), bwr.addr.eq(idx), bwr.data.eq(byte),
                             bwr.en.eq(rx_fire)]
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(rx_crc), idx.eq(idx + 1),
                                 word.eq(Cat(word[8:], byte))]
                    with m.If(idx == length - 1):
                        m.next = "CRC"
                frame_timer()
            with m.State("CRC"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx_fire):
                    with m.If(byte != crc):
                        respond(Status.BAD_CRC)
                    with m.Else():
                        m.d.sync += idx.eq(0)
                        m.next = "EXEC"
                frame_timer()
            with m.State("EXEC"), m.Switch(cmd):
                with m.Case(Cmd.PING):
                    m.d.sync += word.eq(CSR_ID_VALUE)
                    respond(Status.OK, 4)
                with m.Case(Cmd.READ_CSR):
                    m.next = "CSR_AR"
                with m.Case(Cmd.WRITE_CSR):
                    m.next = "CSR_AW"
                with m.Case(Cmd.READ_MEM):
                    respond(Status.OK, length, from_mem=True)
                with m.Case(Cmd.WRITE_MEM):
                    m.next = "WM_READ"
            with m.State("CSR_AR"):
                m.d.comb += [axil.araddr.eq(addr), axil.arvalid.eq(1)]
                with m.If(axil.arready):
                    m.next = "CSR_R"
            with m.State("CSR_R"):
                m.d.comb += axil.rready.eq(1)
                with m.If(axil.rvalid):
                    m.d.sync += word.eq(axil.rdata)
                    respond(Status.OK, 4)
            with m.State("CSR_AW"):
                aw_done = Signal()
                w_done = Signal()
                m.d.comb += [
                    axil.awaddr.eq(addr), axil.awvalid.eq(~aw_done),
                    axil.wdata.eq(word), axil.wstrb.eq(0xF), axil.wvalid.eq(~w_done),
                ]
                aw_ok = aw_done | axil.awready
                w_ok = w_done | axil.wready
                with m.If(aw_ok & w_ok):
                    m.d.sync += [aw_done.eq(0), w_done.eq(0)]
                    m.next = "CSR_B"
                with m.Else():
                    m.d.sync += [aw_done.eq(aw_ok), w_done.eq(w_ok)]
            with m.State("CSR_B"):
                m.d.comb += axil.bready.eq(1)
                with m.If(axil.bvalid):
                    respond(Status.OK)
            # WRITE_MEM: buffer byte idx -> memory byte addr + idx
            with m.State("WM_READ"):
                m.d.comb += brd.addr.eq(idx)
                m.next = "WM_WRITE"
            with m.State("WM_WRITE"):
                a = a_idx
                m.d.comb += [
                    brd.addr.eq(idx),
                    mem.addr.eq(a >> lb),
                    mem.en.eq(1),
                    mem.we.eq(1),
                    mem.wdata.eq(Cat([brd.data] * bb)),
                    mem.wmask.eq(Const(1, bb) << (a[:lb] if lb else 0)),
                ]
                with m.If(mem.ack):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == length - 1):
                        respond(Status.OK)
                    with m.Else():
                        m.next = "WM_READ"

            # ------------------------------------------------------------------ response
            # every response byte goes through tx_byte; one CRC update for all of them
            with m.State("T_SYNC"):
                m.d.comb += [tx.valid.eq(1), tx_byte.eq(RESP_SYNC)]
                with m.If(tx.ready):
                    m.next = "T_STATUS"
            with m.State("T_STATUS"):
                m.d.comb += [tx.valid.eq(1), tx_byte.eq(status)]
                with m.If(tx.ready):
                    m.next = "T_LEN0"
            with m.State("T_LEN0"):
                m.d.comb += [tx.valid.eq(1), tx_byte.eq(rlen[:8])]
                with m.If(tx.ready):
                    m.next = "T_LEN1"
            with m.State("T_LEN1"):
                m.d.comb += [tx.valid.eq(1), tx_byte.eq(rlen[8:])]
                with m.If(tx.ready):
                    m.next = "T_PAY"
                    with m.If(rlen == 0):
                        m.next = "T_CRC"
            with m.State("T_PAY"):
                with m.If(rsrc_mem & ~have):
                    # fetch the byte: a read request, then its data in the next cycle
                    with m.If(~pend):
                        m.d.comb += [mem.addr.eq(a_idx >> lb), mem.en.eq(1), mem.we.eq(0)]
                        with m.If(mem.ack):
                            m.d.sync += [lane.eq(a_idx[:lb] if lb else 0), pend.eq(1)]
                    with m.Elif(mem.rvalid):
                        m.d.sync += [tbyte.eq(mem.rdata.word_select(lane, 8) if lb
                                              else mem.rdata[:8]), have.eq(1), pend.eq(0)]
                with m.Else():
                    m.d.comb += [tx.valid.eq(1),
                                 tx_byte.eq(Mux(rsrc_mem, tbyte, word.word_select(idx[:2], 8)))]
                    with m.If(tx.ready):
                        m.d.sync += [idx.eq(idx + 1), have.eq(0)]
                        with m.If(idx == rlen - 1):
                            m.next = "T_CRC"
            with m.State("T_CRC"):
                m.d.comb += [tx.valid.eq(1), tx_byte.eq(tcrc)]
                with m.If(tx.ready):
                    m.next = "IDLE"

        m.d.comb += tx.payload.eq(tx_byte)
        tx_crc = crc8_next(m, tcrc, tx_byte, "tcrc")
        with m.If(tx.valid & tx.ready):  # the CRC covers every byte after the sync byte
            m.d.sync += tcrc.eq(Mux(fsm.ongoing("T_SYNC"), 0, tx_crc))
        return m
