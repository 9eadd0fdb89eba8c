"""cocotb module of the simulated device server (see :mod:`tritium.sim.server`)."""

import cocotb
from tritium.sim.server import serve as _serve


@cocotb.test()
async def serve(dut):
    """Serve the SoC's bridge on a TCP socket until the client leaves."""
    await _serve(dut)
