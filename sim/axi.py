"""cocotb helpers around cocotbext-axi for the accelerator top (``tritium.rtl.top.TritiumTop``).

* :func:`attach_axi_ram`: a cocotbext-axi ``AxiRam`` on the top's ``m_axi`` port, with seeded
  random backpressure on all five channels (its pause generators) and optional address windows
  that answer ``SLVERR`` (:class:`ErrorWindows`), to test bus-error handling;
* :class:`CsrMaster`: an ``AxiLiteMaster`` on ``s_axil`` with CSR names;
* :func:`run_program`: load an image into the RAM, program ``PROG_BASE``, start via ``CTRL``,
  wait for ``STATUS`` done or error (on ``irq``, with a cycle timeout) and return the final
  memory image and the CSR values (:class:`RunResult`).

Example (inside a cocotb test)::

    from tritium.sim.axi import TopHarness
    h = await TopHarness.create(dut, cfg, seed=1)       # clock, reset, RAM, CSR master
    res = await h.run_program(image)                    # image: bytes / np.uint8 array
    assert res.status == "done"
    assert (res.mem == golden.run(cfg, image).mem).all()

The top's ports are found by prefix: ``m_axi__awaddr`` etc. (``AxiBus.from_prefix(dut,
"m_axi_")``) and ``s_axil__*``; clock ``clk``, reset ``rst`` (active high).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritium.config import AcceleratorConfig
from tritium.isa import (
    CSR,
    CTRL_IRQ_EN,
    CTRL_RESET,
    CTRL_START,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_ERROR,
    UNITS,
    ErrorCode,
    unit_csr,
)

__all__ = [
    "CSR_OVERLAP",
    "CsrMaster",
    "ErrorWindows",
    "RunResult",
    "TopHarness",
    "attach_axi_ram",
    "pause_generator",
]

# cocotbext-axi 0.1.28 warns on every AXI-Lite read about its own use of a deprecated field
warnings.filterwarnings("ignore", message="The data field will be removed")

#: Offset of the OVERLAP counter (from the one CSR map in tritium.isa).
CSR_OVERLAP = int(CSR.OVERLAP)


def pause_generator(rng: random.Random, prob: float):
    """Endless generator of pause flags, ``True`` with probability ``prob`` (for
    cocotbext-axi ``set_pause_generator``)."""
    while True:
        yield rng.random() < prob


@dataclass
class ErrorWindows:
    """Byte-address windows ``[lo, hi)`` where the RAM answers SLVERR (reads and/or writes)."""

    read: list[tuple[int, int]] = field(default_factory=list)
    write: list[tuple[int, int]] = field(default_factory=list)

    def hits(self, kind: str, addr: int, length: int) -> bool:
        for lo, hi in getattr(self, kind):
            if addr < hi and lo < addr + length:
                return True
        return False


def attach_axi_ram(dut: Any, cfg: AcceleratorConfig, *, seed: int = 0, pause: float = 0.3,
                   errors: ErrorWindows | None = None, prefix: str = "m_axi_"):
    """An ``AxiRam`` of ``cfg.dev_mem_bytes`` on ``dut``'s AXI4 manager port.

    Every channel (AW, W, B, AR, R) gets a random pause generator with probability ``pause``
    (0 disables backpressure). Accesses touching a window of ``errors`` answer SLVERR
    (cocotbext-axi turns an exception of the backing read/write into SLVERR).
    """
    from cocotbext.axi import AxiBus, AxiRam

    ram = AxiRam(AxiBus.from_prefix(dut, prefix), dut.clk, dut.rst, size=cfg.dev_mem_bytes)
    # SLVERR windows make the model warn on every beat: keep the log for real problems
    ram.write_if.log.setLevel("ERROR")
    ram.read_if.log.setLevel("ERROR")
    if pause > 0:
        rng = random.Random(seed)
        ram.write_if.aw_channel.set_pause_generator(pause_generator(random.Random(rng.random()),
                                                                    pause))
        ram.write_if.w_channel.set_pause_generator(pause_generator(random.Random(rng.random()),
                                                                   pause))
        ram.write_if.b_channel.set_pause_generator(pause_generator(random.Random(rng.random()),
                                                                   pause))
        ram.read_if.ar_channel.set_pause_generator(pause_generator(random.Random(rng.random()),
                                                                   pause))
        ram.read_if.r_channel.set_pause_generator(pause_generator(random.Random(rng.random()),
                                                                  pause))
    if errors is not None:
        rd, wr = ram.read_if, ram.write_if
        orig_read, orig_write = rd._read, wr._write

        async def _read(address, length):
            if errors.hits("read", address, length):
                raise OSError(f"SLVERR window read at {address:#x}")
            return await orig_read(address, length)

        async def _write(address, data):
            if errors.hits("write", address, len(data)):
                raise OSError(f"SLVERR window write at {address:#x}")
            return await orig_write(address, data)

        rd._read = _read
        wr._write = _write
    return ram


class CsrMaster:
    """AXI4-Lite master on the top's CSR port, addressed by :class:`tritium.isa.CSR` names."""

    def __init__(self, dut: Any, prefix: str = "s_axil_"):
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, prefix), dut.clk, dut.rst)
        self.axil.write_if.log.setLevel("WARNING")
        self.axil.read_if.log.setLevel("WARNING")

    async def read(self, reg: int) -> int:
        data = await self.axil.read(int(reg), 4)
        return int.from_bytes(data.data, "little")

    async def write(self, reg: int, value: int) -> None:
        await self.axil.write(int(reg), int(value).to_bytes(4, "little"))

    async def counters(self) -> dict[str, int]:
        """CYCLES, INSTRET, OVERLAP and every unit's busy/stall counter."""
        lo = await self.read(CSR.CYCLES_LO)
        hi = await self.read(CSR.CYCLES_HI)
        out = {"cycles": lo | (hi << 32), "instret": await self.read(CSR.INSTRET),
               "overlap": await self.read(CSR_OVERLAP)}
        for u in UNITS:
            out[f"{u}_busy"] = await self.read(unit_csr(u, "busy"))
            out[f"{u}_stall"] = await self.read(unit_csr(u, "stall"))
        return out


@dataclass
class RunResult:
    """Outcome of :meth:`TopHarness.run_program`.

    ``status`` is ``"done"``, ``"error"`` or ``"timeout"``; ``error`` the ErrorCode,
    ``error_pc`` the pc; ``mem`` the final device memory; ``counters`` the CSR counters;
    ``wall_cycles`` the cycles from START to irq measured by the testbench.
    """

    status: str
    error: ErrorCode
    error_pc: int
    mem: np.ndarray
    counters: dict[str, int]
    wall_cycles: int


class TopHarness:
    """Clock + reset + AxiRam + CSR master around a ``TritiumTop`` DUT."""

    def __init__(self, dut: Any, cfg: AcceleratorConfig, ram: Any, csr: CsrMaster):
        self.dut, self.cfg, self.ram, self.csr = dut, cfg, ram, csr

    @classmethod
    async def create(cls, dut: Any, cfg: AcceleratorConfig, *, seed: int = 0,
                     pause: float = 0.3, errors: ErrorWindows | None = None,
                     period_ns: float = 10) -> TopHarness:
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge

        Clock(dut.clk, period_ns, unit="ns").start()
        ram = attach_axi_ram(dut, cfg, seed=seed, pause=pause, errors=errors)
        csr = CsrMaster(dut)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 5)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        return cls(dut, cfg, ram, csr)

    def load(self, image) -> None:
        """Copy a device-memory image (bytes or uint8 array, at most dev_mem_bytes) to RAM."""
        raw = bytes(np.asarray(image, dtype=np.uint8).tobytes()) if not isinstance(
            image, (bytes, bytearray)) else bytes(image)
        self.ram.write(0, raw)
        if len(raw) < self.cfg.dev_mem_bytes:
            self.ram.write(len(raw), bytes(self.cfg.dev_mem_bytes - len(raw)))

    def memory(self) -> np.ndarray:
        return np.frombuffer(self.ram.read(0, self.cfg.dev_mem_bytes), np.uint8).copy()

    async def reset_device(self) -> None:
        """CTRL.RESET, then wait until STATUS reads idle."""
        await self.csr.write(CSR.CTRL, CTRL_RESET)
        for _ in range(10_000):
            if not (await self.csr.read(CSR.STATUS)) & STATUS_BUSY:
                return
        raise AssertionError("device still busy 10000 CSR reads after CTRL.RESET")

    async def start(self, prog_base: int = 0, watchdog: int | None = None) -> None:
        await self.csr.write(CSR.PROG_BASE, prog_base)
        if watchdog is not None:
            await self.csr.write(CSR.WATCHDOG, watchdog)
        await self.csr.write(CSR.CTRL, CTRL_START | CTRL_IRQ_EN)
        # the START pulse is registered: let the controller leave DONE/ERROR (irq drops)
        from cocotb.triggers import ClockCycles

        await ClockCycles(self.dut.clk, 3)

    async def wait(self, timeout_cycles: int) -> tuple[str, int]:
        """Wait for irq (done/error) at most ``timeout_cycles``; returns (status, cycles)."""
        from cocotb.triggers import ClockCycles

        dut = self.dut
        waited = 0
        step = 50
        while waited < timeout_cycles and not int(dut.irq.value):
            await ClockCycles(dut.clk, step)
            waited += step
        st = await self.csr.read(CSR.STATUS)
        if st & STATUS_ERROR:
            return "error", waited
        if st & STATUS_DONE:
            return "done", waited
        return "timeout", waited

    async def run_program(self, image=None, *, prog_base: int = 0,
                          timeout_cycles: int = 2_000_000, watchdog: int | None = None,
                          load: bool = True) -> RunResult:
        """Load ``image`` (unless ``load`` is False), run from ``prog_base``, collect results."""
        if load and image is not None:
            self.load(image)
        await self.start(prog_base, watchdog)
        status, cycles = await self.wait(timeout_cycles)
        err = ErrorCode(await self.csr.read(CSR.ERROR))
        epc = await self.csr.read(CSR.ERROR_PC)
        counters = await self.csr.counters()
        return RunResult(status, err, epc, self.memory(), counters, cycles)


async def run_program(dut: Any, cfg: AcceleratorConfig, image, **kw) -> RunResult:
    """One-shot: a fresh :class:`TopHarness` (clock, reset, RAM with backpressure) runs
    ``image``; keyword arguments go to :meth:`TopHarness.run_program` (``seed``/``pause``
    to the harness)."""
    seed = kw.pop("seed", 0)
    pause = kw.pop("pause", 0.3)
    h = await TopHarness.create(dut, cfg, seed=seed, pause=pause)
    return await h.run_program(image, **kw)
