"""The ``Device`` API: one accelerator behind a transport (golden, sim or serial).

Example
-------
>>> from tritium.host.device import Device
>>> from tritium.firmware.compiler import compile_model
>>> with Device.open("golden", "tiny") as dev:          # doctest: +SKIP
...     dev.load(compiled)                              # image (config hash checked)
...     res = dev.run(compiled.prog_base)               # RunResult(status, cycles, instret)
...     raw = dev.read_mem(*compiled.output_span())

Errors: :class:`DeviceNotFound` (nothing answers), :class:`ProtocolError` (frames lost or
refused), :class:`DeviceFault` (the device stopped with STATUS.ERROR: code name and pc),
:class:`ConfigMismatch` (an image compiled for another configuration than the device's
CONFIG_HASH), :class:`RunTimeout` (no DONE/ERROR in time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tritium.config import AcceleratorConfig, load_config
from tritium.isa import (
    CSR,
    CSR_ID_VALUE,
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

from .transport import (
    DeviceNotFound,
    ProtocolError,
    Transport,
    TritiumDeviceError,
    open_transport,
)

__all__ = [
    "ConfigMismatch",
    "Device",
    "DeviceFault",
    "DeviceNotFound",
    "ProtocolError",
    "RunResult",
    "RunTimeout",
    "TritiumDeviceError",
]

#: OVERLAP counter offset (tritium.rtl.csr.CSR_OVERLAP; not part of isa.CSR).
CSR_OVERLAP = 0x30


class DeviceFault(TritiumDeviceError):
    """The device stopped with STATUS.ERROR: ``code`` (ErrorCode), ``pc``."""

    def __init__(self, code: ErrorCode, pc: int, where: str = ""):
        self.code, self.pc = ErrorCode(code), pc
        super().__init__(f"device error {self.code.name} ({int(self.code)}) at pc {pc:#x}"
                         f"{where}")


class ConfigMismatch(TritiumDeviceError):
    """The image was compiled for a configuration other than the device's."""


class RunTimeout(TritiumDeviceError):
    """A program neither finished nor faulted within the host's timeout."""


@dataclass
class RunResult:
    """Outcome of :meth:`Device.run`.

    ``status``: ``"done"`` or ``"error"``; ``cycles``: CYCLES CSR (``None`` on the golden
    device, which has no clock); ``instret``: INSTRET CSR; ``error``/``error_pc``: ERROR and
    ERROR_PC; ``wall_s``: host seconds from START to the final STATUS read.
    """

    status: str
    cycles: int | None
    instret: int
    error: ErrorCode = ErrorCode.NONE
    error_pc: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "done"


class Device:
    """An accelerator reached through a :class:`~tritium.host.transport.Transport`.

    Use :meth:`open`; the object is a context manager (``close`` on exit).
    """

    def __init__(self, transport: Transport, config: AcceleratorConfig):
        self.transport = transport
        self.config = config

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, transport_name: str, config: AcceleratorConfig | str = "tiny", *,
             check: bool = True, **kw) -> Device:
        """Open ``transport_name`` (``golden``, ``sim``, ``serial``) for ``config`` (a preset
        name, JSON path or :class:`AcceleratorConfig`). ``kw`` go to the transport (``port``,
        ``baud``, ``timeout``...). With ``check``, the ID register must read "TRIT" and
        CONFIG_HASH must match ``config`` (else :class:`DeviceNotFound` /
        :class:`ConfigMismatch`)."""
        cfg = load_config(config) if isinstance(config, str) else config
        t = open_transport(transport_name, cfg, **kw)
        dev = cls(t, cfg)
        if check:
            try:
                dev.identify()
                dev.check_config(cfg)
            except BaseException:
                dev.close()
                raise
        return dev

    def identify(self) -> int:
        """Read ID; raises :class:`DeviceNotFound` unless it is "TRIT". Returns VERSION."""
        try:
            ident = self.transport.read_csr(CSR.ID)
        except ProtocolError as e:
            raise DeviceNotFound(f"{self.transport.name}: no tritium device answers ({e})") \
                from None
        if ident != CSR_ID_VALUE:
            raise DeviceNotFound(f"{self.transport.name}: ID register reads {ident:#010x}, "
                                 f"expected {CSR_ID_VALUE:#010x} ('TRIT'); wrong bitstream?")
        return self.transport.read_csr(CSR.VERSION)

    def config_hash(self) -> int:
        """The device's CONFIG_HASH CSR."""
        return self.transport.read_csr(CSR.CONFIG_HASH)

    def check_config(self, cfg: AcceleratorConfig, what: str = "configuration") -> None:
        """Raise :class:`ConfigMismatch` unless CONFIG_HASH equals ``cfg.hash32``."""
        got = self.config_hash()
        if got != cfg.hash32:
            raise ConfigMismatch(
                f"{what} was compiled for config {cfg.name!r} (hash {cfg.hash32:#010x}) but "
                f"the {self.transport.name} device reports CONFIG_HASH {got:#010x}; compile "
                "for the device's configuration or load the matching bitstream")

    # ---------------------------------------------------------------- memory
    def write_mem(self, addr: int, data) -> None:
        raw = bytes(np.asarray(data, np.uint8).tobytes()) if not isinstance(
            data, (bytes, bytearray, memoryview)) else bytes(data)
        if addr < 0 or addr + len(raw) > self.config.dev_mem_bytes:
            raise ValueError(f"write [{addr:#x}, {addr + len(raw):#x}) outside device memory "
                             f"[0, {self.config.dev_mem_bytes:#x})")
        self.transport.write_mem(addr, raw)

    def read_mem(self, addr: int, length: int) -> bytes:
        if addr < 0 or addr + length > self.config.dev_mem_bytes:
            raise ValueError(f"read [{addr:#x}, {addr + length:#x}) outside device memory")
        return self.transport.read_mem(addr, length)

    def load(self, image, addr: int = 0) -> int:
        """Write an image to device memory; returns the bytes written.

        ``image``: a :class:`~tritium.firmware.compiler.CompiledModel` or
        :class:`~tritium.firmware.image.MemoryImage` (its config hash is checked against the
        device, and only its used part ``[0, top)`` is written), or raw bytes / uint8 array.
        """
        img = getattr(image, "image", image)  # CompiledModel -> MemoryImage
        cfg = getattr(img, "cfg", None)
        if cfg is not None:
            self.check_config(cfg, "the image")
            raw = img.mem[:img.top].tobytes()
        else:
            raw = bytes(np.asarray(image, np.uint8).tobytes()) if not isinstance(
                image, (bytes, bytearray)) else bytes(image)
        bulk = getattr(self.transport, "bulk_write", None)
        if bulk is not None and len(raw) > 4096:
            bulk(addr, raw)
        else:
            self.write_mem(addr, raw)
        return len(raw)

    # ---------------------------------------------------------------- running
    def reset(self) -> None:
        """CTRL.RESET: abort a running program, clear STATUS/ERROR/counters."""
        self.transport.write_csr(CSR.CTRL, CTRL_RESET)

    def start(self, prog_base: int = 0) -> None:
        self.transport.write_csr(CSR.PROG_BASE, prog_base)
        self.transport.write_csr(CSR.CTRL, CTRL_START | CTRL_IRQ_EN)

    def wait(self, timeout: float = 600.0, poll: float = 0.0) -> int:
        """Poll STATUS until DONE or ERROR; returns STATUS."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.transport.read_csr(CSR.STATUS)
            if st & (STATUS_DONE | STATUS_ERROR) and not st & STATUS_BUSY:
                return st
            if time.monotonic() > deadline:
                raise RunTimeout(f"{self.transport.name}: program still running after "
                                 f"{timeout:g} s (STATUS {st:#x}); raise the timeout or check "
                                 "the program for a JUMP loop")
            if poll:
                time.sleep(poll)

    def run(self, prog_base: int = 0, *, timeout: float = 600.0, check: bool = True
            ) -> RunResult:
        """Run the program at ``prog_base`` to HALT. Raises :class:`DeviceFault` on
        STATUS.ERROR (``check=False``: return the result with ``status="error"``)."""
        t0 = time.perf_counter()
        self.start(prog_base)
        hook = getattr(self.transport, "wait_done", None)
        if hook is not None:  # simulator: run freely until irq instead of polling per cycle
            hook(self.config.watchdog_cycles + 64)
        st = self.wait(timeout)
        wall = time.perf_counter() - t0
        tr = self.transport
        instret = tr.read_csr(CSR.INSTRET)
        cycles = None
        if tr.has_cycles:
            cycles = tr.read_csr(CSR.CYCLES_LO) | (tr.read_csr(CSR.CYCLES_HI) << 32)
        if st & STATUS_ERROR:
            code = ErrorCode(tr.read_csr(CSR.ERROR))
            pc = tr.read_csr(CSR.ERROR_PC)
            res = RunResult("error", cycles, instret, code, pc, wall)
            if check:
                raise DeviceFault(code, pc, f" (program at {prog_base:#x}, "
                                            f"{tr.name} device)")
            return res
        return RunResult("done", cycles, instret, ErrorCode.NONE, 0, wall)

    def read_counters(self) -> dict[str, int | None]:
        """CYCLES, INSTRET, OVERLAP and every unit's busy/stall counter (of the last run;
        ``None`` where the device has no clock)."""
        tr = self.transport
        out: dict[str, int | None] = {"instret": tr.read_csr(CSR.INSTRET)}
        if not tr.has_cycles:
            out["cycles"] = None
            return out
        out["cycles"] = tr.read_csr(CSR.CYCLES_LO) | (tr.read_csr(CSR.CYCLES_HI) << 32)
        out["overlap"] = tr.read_csr(CSR_OVERLAP)
        for u in UNITS:
            out[f"{u}_busy"] = tr.read_csr(unit_csr(u, "busy"))
            out[f"{u}_stall"] = tr.read_csr(unit_csr(u, "stall"))
        return out

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Device({self.transport.name!r}, config={self.config.name!r})"
