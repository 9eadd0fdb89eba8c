"""UART receiver and transmitter (8N1) with byte streams, for the board bridge.

:func:`baud_divisor` turns a clock frequency (``cfg.clock_mhz`` or the frequency a PLL really
reaches) and a baud rate into clocks per bit, and refuses a rate the clock cannot make within
:data:`MAX_BAUD_ERROR`. :class:`UartTx` and :class:`UartRx` are the two halves;
:class:`Uart` joins them with a receive FIFO so that a consumer which pauses for a few
byte times (the bridge while it waits on the AXI bus) loses nothing.

Line format: idle high, one start bit (0), 8 data bits LSB first, one stop bit (1), no parity.

Example
-------
>>> from tritium.rtl.uart import Uart, baud_divisor
>>> baud_divisor(24e6, 115_200)
208
>>> uart = Uart(divisor=baud_divisor(24e6, 115_200))     # doctest: +SKIP
>>> # uart.rxd <- pin, uart.txd -> pin; uart.rx: bytes received, uart.tx: bytes to send
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .scratchpad import COLLISION_FREE

__all__ = ["MAX_BAUD_ERROR", "MIN_DIVISOR", "Uart", "UartError", "UartRx", "UartTx",
           "baud_divisor"]

#: Largest relative baud-rate error :func:`baud_divisor` accepts (both ends together may be off
#: by about 4% before the last bit is sampled outside its cell).
MAX_BAUD_ERROR = 0.02
#: Fewest clocks per bit: the receiver samples in the middle of a bit and needs room for the
#: two-flip-flop synchronizer.
MIN_DIVISOR = 4


class UartError(ValueError):
    """A baud rate the clock cannot make (divisor too small or rate error too large)."""


def baud_divisor(clock_hz: float, baud: int) -> int:
    """Clocks per bit for ``baud`` at ``clock_hz``, rounded to the nearest integer.

    Raises
    ------
    UartError
        When the divisor is below :data:`MIN_DIVISOR` or the resulting rate is off by more than
        :data:`MAX_BAUD_ERROR` (the message gives the rate the clock would make).
    """
    if baud <= 0 or clock_hz <= 0:
        raise UartError(f"baud={baud}, clock={clock_hz} Hz; both must be > 0")
    div = round(clock_hz / baud)
    if div < MIN_DIVISOR:
        raise UartError(
            f"baud={baud} at {clock_hz / 1e6:g} MHz gives {clock_hz / baud:.2f} clocks per bit; "
            f"need >= {MIN_DIVISOR}: lower the baud rate or raise the clock"
        )
    err = abs(clock_hz / div - baud) / baud
    if err > MAX_BAUD_ERROR:
        raise UartError(
            f"baud={baud} at {clock_hz / 1e6:g} MHz: divisor {div} gives "
            f"{clock_hz / div:.0f} baud ({err:.1%} off, limit {MAX_BAUD_ERROR:.0%}); "
            f"choose a baud rate closer to clock / integer"
        )
    return div


class UartTx(wiring.Component):
    """8N1 transmitter.

    A byte is taken from ``data`` when the line is idle or in the last cycle of a stop bit, and
    shifted out in ``10 * divisor`` cycles (start, 8 data bits LSB first, stop): back-to-back
    bytes leave with no idle time between frames; the start bit begins the cycle after the
    byte is taken.

    Parameters
    ----------
    divisor : int
        Clocks per bit (:func:`baud_divisor`).

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send.
    txd : Out(1)
        Serial line (idle 1).
    busy : Out(1)
        A frame is on the line.
    """

    def __init__(self, divisor: int):
        if divisor < MIN_DIVISOR:
            raise UartError(f"divisor={divisor}; divisor must be >= {MIN_DIVISOR}")
        self.divisor = divisor
        super().__init__({
            "data": In(stream.Signature(8)),
            "txd": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cnt = Signal(range(self.divisor))
        bits = Signal(4)  # bits left to send, current included
        shreg = Signal(10, init=0x3FF)
        last = (bits == 1) & (cnt == 0)  # the last cycle of the stop bit
        m.d.comb += [self.txd.eq(shreg[0]), self.busy.eq(bits != 0),
                     self.data.ready.eq((bits == 0) | last)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.data.payload, Const(1, 1))),
                         bits.eq(10), cnt.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(cnt == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), bits.eq(bits - 1),
                             cnt.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += cnt.eq(cnt - 1)
        return m


class UartRx(wiring.Component):
    """8N1 receiver.

    ``rxd`` passes a two-flip-flop synchronizer. A falling edge starts a frame; the start bit is
    checked half a bit later (a glitch shorter than that is ignored), then every bit is sampled
    in its middle. A byte whose stop bit is 1 is offered on ``data``; one whose stop bit is 0
    pulses ``frame_err`` and is dropped, and the receiver waits for the line to go high again
    (a break never turns into bytes). The receiver is ready for the next start bit half a bit
    after the middle of the stop bit, so senders up to ~4 % fast are tolerated.

    ``data`` holds one byte; a byte that arrives while the previous one still waits is dropped
    and pulses ``overrun`` (:class:`Uart` puts a FIFO behind the receiver).

    Parameters
    ----------
    divisor : int
        Clocks per bit.
    hold : bool
        ``True``: ``data`` is a byte register as above. ``False`` (for a FIFO behind the
        receiver): ``data.valid`` is a one-cycle pulse with the shift register as payload, and a
        byte that finds ``data.ready`` low is dropped with ``overrun``.

    Members
    -------
    rxd : In(1)
        Serial line (asynchronous; idle 1).
    data : Out(stream.Signature(8))
        Bytes received.
    frame_err, overrun : Out(1)
        One-cycle pulses.
    active : Out(1)
        A frame (or a break) is being received.
    """

    def __init__(self, divisor: int, hold: bool = True):
        if divisor < MIN_DIVISOR:
            raise UartError(f"divisor={divisor}; divisor must be >= {MIN_DIVISOR}")
        self.divisor = divisor
        self.hold = hold
        super().__init__({
            "rxd": In(1, init=1),
            "data": Out(stream.Signature(8)),
            "frame_err": Out(1),
            "overrun": Out(1),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rxd, rx, init=1)
        cnt = Signal(range(div))
        nbit = Signal(range(9))
        shreg = Signal(8)

        if self.hold:
            with m.If(self.data.valid & self.data.ready):
                m.d.sync += self.data.valid.eq(0)
        else:
            m.d.comb += self.data.payload.eq(shreg)

        with m.FSM(name="uart_rx") as fsm:
            with m.State("IDLE"), m.If(~rx):
                m.d.sync += cnt.eq(div // 2 - 1)
                m.next = "START"
            with m.State("START"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Elif(rx):  # glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [cnt.eq(div - 1), nbit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), cnt.eq(div - 1),
                                 nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(cnt != 0):
                    m.d.sync += cnt.eq(cnt - 1)
                with m.Elif(rx):
                    if self.hold:
                        with m.If(self.data.valid & ~self.data.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    else:
                        m.d.comb += [self.data.valid.eq(1), self.overrun.eq(~self.data.ready)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.frame_err.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"), m.If(rx):
                m.next = "IDLE"
        m.d.comb += self.active.eq(~fsm.ongoing("IDLE"))
        return m


class Uart(wiring.Component):
    """UART with a receive FIFO: :class:`UartRx` + :class:`UartTx` behind byte streams.

    Cycle contract: a received byte appears on ``rx`` three cycles after the middle of its
    stop bit (two-flip-flop synchronizer, FIFO write); ``rx_fifo`` bytes (rounded up to a power
    of two) may wait there (a consumer that does not take them for longer loses the newest ones
    and sees ``overrun``). ``tx`` bytes leave back to back, ``10 * divisor`` cycles each.

    Parameters
    ----------
    divisor : int
        Clocks per bit (:func:`baud_divisor`).
    rx_fifo : int
        Depth of the receive FIFO in bytes, rounded up to a power of two (0: only the
        receiver's one-byte register). The FIFO is a memory written straight from the
        receiver's shift register.

    Members
    -------
    rxd : In(1)
        Serial input pin (from the host's TX).
    txd : Out(1)
        Serial output pin (to the host's RX).
    rx : Out(stream.Signature(8))
        Bytes received from the host.
    tx : In(stream.Signature(8))
        Bytes to send to the host.
    frame_err, overrun : Out(1)
        One-cycle error pulses of the receiver.
    rx_active, tx_active : Out(1)
        A frame is being received / sent (for activity LEDs).
    """

    def __init__(self, divisor: int, rx_fifo: int = 16):
        if divisor < MIN_DIVISOR:
            raise UartError(f"divisor={divisor}; divisor must be >= {MIN_DIVISOR}")
        if rx_fifo < 0:
            raise UartError(f"rx_fifo={rx_fifo}; rx_fifo must be >= 0")
        self.divisor = divisor
        self.rx_fifo = rx_fifo
        super().__init__({
            "rxd": In(1, init=1),
            "txd": Out(1, init=1),
            "rx": Out(stream.Signature(8)),
            "tx": In(stream.Signature(8)),
            "frame_err": Out(1),
            "overrun": Out(1),
            "rx_active": Out(1),
            "tx_active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = urx = UartRx(self.divisor, hold=not self.rx_fifo)
        m.submodules.tx = utx = UartTx(self.divisor)
        m.d.comb += [
            urx.rxd.eq(self.rxd),
            self.txd.eq(utx.txd),
            self.frame_err.eq(urx.frame_err),
            self.overrun.eq(urx.overrun),
            self.rx_active.eq(urx.active),
            self.tx_active.eq(utx.busy),
        ]
        wiring.connect(m, wiring.flipped(self.tx), utx.data)
        if self.rx_fifo:
            # The receiver's shift register goes straight into the FIFO memory (no byte
            # register in between); rx.payload is the read port's data, addressed with the
            # read pointer of the next cycle, or in the cycle after a write of the word that
            # was read (an empty FIFO) the shift register, which still holds the byte then
            # (the receiver shifts again only a bit time later): write-through without the
            # copy of the written byte that a transparent block RAM port needs.
            k = max(1, ceil_log2(self.rx_fifo))
            mem = Memory(shape=8, depth=1 << k, init=[], attrs={COLLISION_FREE: 1})
            m.submodules.rx_fifo = mem
            wr = mem.write_port()
            rd = mem.read_port(transparent_for=())
            w = Signal(k + 1)
            r = Signal(k + 1)
            r_next = Signal(k + 1)
            full = Signal()
            thru = Signal()  # the word read in the previous cycle was written then
            m.d.sync += thru.eq(wr.en & (wr.addr == rd.addr))
            # The write happens in the cycle after the receiver offers the byte (a register:
            # timing, on the ECP5-85F the receiver sits by its pin and the FIFO's block RAM
            # and pointer elsewhere). The shift register still holds the byte then (see above);
            # a read in between only frees room, and the next byte is a frame away.
            wen = Signal()
            m.d.sync += wen.eq(urx.data.valid & ~full)
            m.d.comb += [
                full.eq((w[:k] == r[:k]) & (w[k] != r[k])),
                urx.data.ready.eq(~full),
                wr.addr.eq(w[:k]),
                wr.data.eq(urx.data.payload),
                wr.en.eq(wen),
                self.rx.valid.eq(w != r),
                r_next.eq(r + (self.rx.valid & self.rx.ready)),
                rd.addr.eq(r_next[:k]),
                self.rx.payload.eq(Mux(thru, urx.data.payload, rd.data)),
            ]
            m.d.sync += [w.eq(w + wr.en), r.eq(r_next)]
        else:
            wiring.connect(m, urx.data, wiring.flipped(self.rx))
        return m
