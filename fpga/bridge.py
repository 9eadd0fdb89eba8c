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
from tritium.rtl.controller import gt_const
from tritium.rtl.csr import CSR_ADDR_WIDTH
from tritium.rtl.scratchpad import COLLISION_FREE, MemPortSignature

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

    Cycle contract: the CRC-8 is computed one bit per cycle, so every byte that it covers
    (request header and payload, response status, length and payload) is taken from ``rx`` or
    offered on ``tx`` 8 cycles after it is present (sync and CRC bytes: at once); ``rx.ready`` is
    also low while a command executes or a response is sent; memory reads add two cycles per
    response byte; CSR accesses take one AXI4-Lite transaction. (At 24 MHz a UART byte at
    1 Mbaud takes 240 cycles.) The timeout counts the cycles in which a frame's next byte is
    awaited and not offered.

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
        aw = (cfg.dev_mem_bytes - 1).bit_length()  # device memory byte-address bits
        rx, tx, axil, mem = self.rx, self.tx, self.csr, self.mem

        # (the read port's data are used only in WM_WRITE, after a cycle without a write: the
        # collision of PAYLOAD's writes with the read of the same word is don't-care)
        buf = memory.Memory(shape=8, depth=MAX_LEN, init=[], attrs={COLLISION_FREE: 1})
        m.submodules.buf = buf
        bwr = buf.write_port()
        brd = buf.read_port()

        # request header, kept only as far as the checks and the transfer need it
        cmd = Signal(3)
        cmd_bad = Signal()  # CMD >= 5
        addr = Signal(aw)  # ADDR below the device memory size ...
        ahi = Signal()  # ... and whether any higher ADDR bit is set
        lo = Signal(8)  # LEN[7:0]
        len8 = Signal()  # LEN[8]
        lhi_bad = Signal()  # LEN[15:9] != 0
        hdr = Signal(range(8))
        idx = Signal(8)  # payload byte index
        crc = Signal(8)  # CRC-8 of the request, then of the response
        kb = Signal(4)  # bit step of the serial CRC; kb[3]: the current byte is in the CRC
        status = Signal(3)
        rpay = Signal()  # the response carries a payload
        word = Signal(32)  # CSR data: shifted in from the payload, shifted out to tx
        have = Signal()  # word[:8] holds memory byte idx of a READ_MEM response
        pend = Signal()  # a memory read for it is in flight
        garbage = Signal()  # drop non-sync bytes silently
        tw = max(2, self.timeout).bit_length()
        timer = Signal(tw + 1)  # counts down to -1 (the top bit) while no byte arrives
        waiting = Signal()  # inside a frame, no byte offered
        m.d.sync += timer.eq(Mux(waiting, timer - 1, self.timeout - 2))

        ping = cmd == Cmd.PING
        is_csr = (cmd == Cmd.READ_CSR) | (cmd == Cmd.WRITE_CSR)
        is_mem = (cmd == Cmd.READ_MEM) | (cmd == Cmd.WRITE_MEM)
        rmem = cmd == Cmd.READ_MEM
        len9 = Cat(lo, len8)
        len0 = lo == 0
        len_ok = ~lhi_bad & Mux(ping, ~len8 & len0,
                                Mux(is_csr, ~len8 & (lo == 4), len8 == len0))
        # memory range: addr + LEN <= dev_mem_bytes; with LEN <= 256 only an address in the
        # last 256 bytes can overrun
        tail = Signal(9)
        m.d.comb += tail.eq(addr[:8] + len9)
        top = addr[8:].all() if aw > 8 else 1
        mem_ok = ~top | ~tail[8] | (tail[:8] == 0)
        csr_ok = (addr[:2] == 0) & (addr[(CSR_SPACE - 1).bit_length():] == 0)
        addr_ok = ~ahi & Mux(is_csr, csr_ok, Mux(is_mem, mem_ok, 1))
        rl = Mux(ping, 4, lo)  # response payload length (mod 256) when rpay

        a_idx = Signal(aw)  # the memory byte of payload byte idx
        m.d.comb += a_idx.eq(addr + idx)
        lane = a_idx[:lb] if lb else 0
        idx_last = Signal()
        m.d.comb += idx_last.eq((idx + 1)[:8] == rl)  # rl == lo unless PING

        # bytes through the serial CRC: rx.payload while receiving, the response byte after
        tx_byte = Signal(8)
        phase = Signal()  # a byte that goes into the CRC is present
        m.d.comb += [
            tx.payload.eq(tx_byte),
            mem.addr.eq(a_idx >> lb),
            mem.wdata.eq(Cat([brd.data] * bb)),
            mem.wmask.eq(Const(1, bb) << lane),
            brd.addr.eq(idx),
            bwr.addr.eq(idx),
            bwr.data.eq(rx.payload),
            axil.araddr.eq(addr),
            axil.awaddr.eq(addr),
            axil.wdata.eq(word),
            axil.wstrb.eq(0xF),
        ]
        with m.If(phase & ~kb[3]):
            fb = crc[7] ^ tx_byte.bit_select(~kb[:3], 1)
            m.d.sync += [crc.eq(Cat(fb, crc[0] ^ fb, crc[1] ^ fb, crc[2:7])), kb.eq(kb + 1)]

        def respond(st, pay=False):
            m.d.sync += [status.eq(st), rpay.eq(int(pay)), idx.eq(0), have.eq(0)]
            if st not in (Status.OK, Status.BAD_CRC):
                m.d.sync += garbage.eq(1)
            m.next = "T_SYNC"

        def take(serial: bool):
            """Receive a byte (after its 8 CRC steps when ``serial``); returns the fire."""
            m.d.comb += tx_byte.eq(rx.payload)
            if serial:
                m.d.comb += [phase.eq(rx.valid), rx.ready.eq(kb[3])]
            else:
                m.d.comb += rx.ready.eq(1)
            m.d.comb += waiting.eq(~rx.valid)
            with m.If(~rx.valid & timer[-1]):
                respond(Status.TIMEOUT)
            fire = rx.valid & rx.ready
            with m.If(fire):
                m.d.sync += kb.eq(0)
            return fire

        def send(byte, serial: bool, ok=1):
            """Send ``byte`` (after its 8 CRC steps when ``serial``); returns the fire."""
            m.d.comb += tx_byte.eq(byte)
            if serial:
                m.d.comb += [phase.eq(ok), tx.valid.eq(kb[3])]
            else:
                m.d.comb += tx.valid.eq(1)
            fire = tx.valid & tx.ready
            with m.If(fire):
                m.d.sync += kb.eq(0)
            return fire

        with m.FSM(name="bridge"):
            with m.State("IDLE"):
                m.d.comb += rx.ready.eq(1)
                m.d.sync += [crc.eq(0), hdr.eq(0), ahi.eq(0)]
                with m.If(rx.valid):
                    with m.If(rx.payload == REQ_SYNC):
                        m.d.sync += garbage.eq(0)
                        m.next = "HDR"
                    with m.Elif(~garbage):
                        respond(Status.BAD_SYNC)
            with m.State("HDR"):
                byte = rx.payload
                with m.If(take(True)):
                    m.d.sync += hdr.eq(hdr + 1)
                    with m.Switch(hdr):
                        with m.Case(0):
                            m.d.sync += [cmd.eq(byte), cmd_bad.eq(gt_const(byte, len(Cmd) - 1))]
                        for i in range(4):
                            with m.Case(1 + i):
                                lo_b, hi_b = 8 * i, 8 * i + 8
                                if lo_b < aw:
                                    m.d.sync += addr[lo_b:min(hi_b, aw)].eq(byte)
                                if hi_b > aw:
                                    k = max(0, aw - lo_b)
                                    with m.If(byte[k:].any()):
                                        m.d.sync += ahi.eq(1)
                        with m.Case(5):
                            m.d.sync += lo.eq(byte)
                        with m.Case(6):
                            m.d.sync += [len8.eq(byte[0]), lhi_bad.eq(byte[1:].any())]
                            m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(cmd_bad):
                    respond(Status.BAD_CMD)
                with m.Elif(~len_ok):
                    respond(Status.BAD_LEN)
                with m.Elif(~addr_ok):
                    respond(Status.BAD_ADDR)
                with m.Elif((cmd == Cmd.WRITE_CSR) | (cmd == Cmd.WRITE_MEM)):
                    m.d.sync += idx.eq(0)
                    m.next = "PAYLOAD"
                with m.Else():
                    m.next = "CRC"
            with m.State("PAYLOAD"), m.If(take(True)):
                m.d.comb += bwr.en.eq(1)
                m.d.sync += [idx.eq(idx + 1), word.eq(Cat(word[8:], rx.payload))]
                with m.If(idx_last):
                    m.next = "CRC"
            with m.State("CRC"), m.If(take(False)):
                with m.If(rx.payload != crc):
                    respond(Status.BAD_CRC)
                with m.Else():
                    m.d.sync += idx.eq(0)
                    m.next = "EXEC"
            with m.State("EXEC"), m.Switch(cmd):
                with m.Case(Cmd.PING):
                    m.d.sync += word.eq(CSR_ID_VALUE)
                    respond(Status.OK, pay=True)
                with m.Case(Cmd.READ_CSR):
                    m.next = "CSR_AR"
                with m.Case(Cmd.WRITE_CSR):
                    m.next = "CSR_AW"
                with m.Case(Cmd.READ_MEM):
                    respond(Status.OK, pay=True)
                with m.Default():
                    m.next = "WM_READ"
            with m.State("CSR_AR"):
                m.d.comb += axil.arvalid.eq(1)
                with m.If(axil.arready):
                    m.next = "CSR_R"
            with m.State("CSR_R"):
                m.d.comb += axil.rready.eq(1)
                with m.If(axil.rvalid):
                    m.d.sync += word.eq(axil.rdata)
                    respond(Status.OK, pay=True)
            with m.State("CSR_AW"):
                aw_done = Signal()
                w_done = Signal()
                m.d.comb += [axil.awvalid.eq(~aw_done), axil.wvalid.eq(~w_done)]
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
                m.next = "WM_WRITE"
            with m.State("WM_WRITE"):
                m.d.comb += [mem.en.eq(1), mem.we.eq(1)]
                with m.If(mem.ack):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx_last):
                        respond(Status.OK)
                    with m.Else():
                        m.next = "WM_READ"

            # ------------------------------------------------------------------ response
            with m.State("T_SYNC"), m.If(send(RESP_SYNC, False)):
                m.d.sync += crc.eq(0)
                m.next = "T_STATUS"
            with m.State("T_STATUS"), m.If(send(status, True)):
                m.next = "T_LEN0"
            with m.State("T_LEN0"), m.If(send(Mux(rpay, rl, 0), True)):
                m.next = "T_LEN1"
            with m.State("T_LEN1"), m.If(send(rpay & len8, True)):
                m.next = "T_PAY"
                with m.If(~rpay):
                    m.next = "T_CRC"
            with m.State("T_PAY"):
                with m.If(rmem & ~have):
                    # fetch the byte: a read request, then its data in the next cycle
                    with m.If(~pend):
                        m.d.comb += mem.en.eq(1)
                        with m.If(mem.ack):
                            m.d.sync += pend.eq(1)
                    with m.Elif(mem.rvalid):
                        m.d.sync += [word[:8].eq(mem.rdata.word_select(lane, 8) if lb
                                                 else mem.rdata[:8]), have.eq(1), pend.eq(0)]
                with m.If(send(word[:8], True, ok=have | ~rmem)):
                    m.d.sync += [idx.eq(idx + 1), have.eq(0),
                                 word.eq(Cat(word[8:], rx.payload))]
                    with m.If(idx_last):
                        m.next = "T_CRC"
            with m.State("T_CRC"), m.If(send(crc, False)):
                m.next = "IDLE"
        return m
