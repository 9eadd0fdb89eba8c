"""AXI4 and AXI4-Lite interface signatures shared by the DMA, the CSR block and the top.

Both signatures are *flat*: every AXI signal is one member named exactly as in the AMBA
specification without the channel separator (``awaddr``, ``wdata``, ``rresp``...), so that an
interface member ``m_axi`` of a component becomes the Verilog ports ``m_axi__awaddr``,
``m_axi__wdata``... and cocotbext-axi finds them with ``AxiBus.from_prefix(dut, "m_axi_")``
(it joins prefix and signal name with ``_``).

Directions are those of the **manager** (master): a manager port is
``Out(Axi4Signature(...))``, a subordinate (slave) port ``In(Axi4Signature(...))``.

Only the signals tritium uses are present: no ``lock``/``cache``/``prot``/``qos``/``region``/
``user`` (cocotbext-axi treats them as optional). Bursts are always ``INCR`` with
``size = log2(data_bytes)``.

Constants
---------
``RESP_OKAY``, ``RESP_EXOKAY``, ``RESP_SLVERR``, ``RESP_DECERR``: ``xRESP`` codes; bit 1 set
means an error response.
``BURST_INCR``: the ``xBURST`` code of incrementing bursts.
``MAX_BURST_BEATS``: 256 (AXI4 INCR); ``PAGE_BYTES``: 4096 (no burst may cross it).
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "BURST_INCR",
    "MAX_BURST_BEATS",
    "PAGE_BYTES",
    "RESP_DECERR",
    "RESP_EXOKAY",
    "RESP_OKAY",
    "RESP_SLVERR",
    "Axi4Signature",
    "AxiLiteSignature",
]

RESP_OKAY = 0b00
RESP_EXOKAY = 0b01
RESP_SLVERR = 0b10
RESP_DECERR = 0b11
BURST_INCR = 0b01
MAX_BURST_BEATS = 256
PAGE_BYTES = 4096


class Axi4Signature(wiring.Signature):
    """AXI4 full interface (manager view): AW, W, B, AR, R channels.

    Parameters
    ----------
    addr_width : int
        ``awaddr``/``araddr`` bits.
    data_width : int
        ``wdata``/``rdata`` bits (32, 64 or 128); ``wstrb`` has ``data_width // 8`` bits.
    id_width : int
        ``awid``/``bid``/``arid``/``rid`` bits.

    Members
    -------
    aw* : awid, awaddr, awlen(8), awsize(3), awburst(2), awvalid (Out), awready (In)
    w*  : wdata, wstrb, wlast, wvalid (Out), wready (In)
    b*  : bid, bresp(2), bvalid (In), bready (Out)
    ar* : arid, araddr, arlen(8), arsize(3), arburst(2), arvalid (Out), arready (In)
    r*  : rid, rdata, rresp(2), rlast, rvalid (In), rready (Out)
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 2):
        self.addr_width = addr_width
        self.data_width = data_width
        self.id_width = id_width
        super().__init__(
            {
                "awid": Out(id_width),
                "awaddr": Out(addr_width),
                "awlen": Out(8),
                "awsize": Out(3),
                "awburst": Out(2),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width),
                "wstrb": Out(data_width // 8),
                "wlast": Out(1),
                "wvalid": Out(1),
                "wready": In(1),
                "bid": In(id_width),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "arid": Out(id_width),
                "araddr": Out(addr_width),
                "arlen": Out(8),
                "arsize": Out(3),
                "arburst": Out(2),
                "arvalid": Out(1),
                "arready": In(1),
                "rid": In(id_width),
                "rdata": In(data_width),
                "rresp": In(2),
                "rlast": In(1),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    def __eq__(self, other):
        return (
            isinstance(other, Axi4Signature)
            and (self.addr_width, self.data_width, self.id_width)
            == (other.addr_width, other.data_width, other.id_width)
        )

    def __hash__(self):
        return hash((Axi4Signature, self.addr_width, self.data_width, self.id_width))

    def __repr__(self):
        return (
            f"Axi4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
            f"id_width={self.id_width})"
        )


class AxiLiteSignature(wiring.Signature):
    """AXI4-Lite interface (manager view), 32-bit data.

    Parameters
    ----------
    addr_width : int
        ``awaddr``/``araddr`` bits.

    Members
    -------
    aw* : awaddr, awvalid (Out), awready (In)
    w*  : wdata(32), wstrb(4), wvalid (Out), wready (In)
    b*  : bresp(2), bvalid (In), bready (Out)
    ar* : araddr, arvalid (Out), arready (In)
    r*  : rdata(32), rresp(2), rvalid (In), rready (Out)
    """

    def __init__(self, *, addr_width: int = 8):
        self.addr_width = addr_width
        super().__init__(
            {
                "awaddr": Out(addr_width),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(32),
                "wstrb": Out(4),
                "wvalid": Out(1),
                "wready": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "araddr": Out(addr_width),
                "arvalid": Out(1),
                "arready": In(1),
                "rdata": In(32),
                "rresp": In(2),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    def __eq__(self, other):
        return isinstance(other, AxiLiteSignature) and self.addr_width == other.addr_width

    def __hash__(self):
        return hash((AxiLiteSignature, self.addr_width))

    def __repr__(self):
        return f"AxiLiteSignature(addr_width={self.addr_width})"
