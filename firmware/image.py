"""Device-memory images: a program plus the data it works on, laid out for one config.

Memory map used by everything tritium builds (the hardware imposes none of it except that the
program must start at PROG_BASE and every DMA address be bus-aligned)::

    0x0000 .. prog_bytes      program (16-byte instructions, PROG_BASE = 0)
    prog_bytes .. top         data regions allocated upward by :meth:`MemoryImage.alloc`,
                              each aligned to the bus width
    .. dev_mem_bytes          free

:class:`MemoryImage` is the one place that allocates and fills device memory; the compiler,
the random-program generator and the tests all use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tritium.config import AcceleratorConfig
from tritium.isa import INSTR_BYTES, Instr, encode_program

__all__ = ["MemoryImage", "Region"]


@dataclass(frozen=True)
class Region:
    """A named, allocated range of device memory."""

    name: str
    addr: int
    size: int

    @property
    def end(self) -> int:
        return self.addr + self.size


@dataclass
class MemoryImage:
    """A zeroed device-memory image with a bump allocator for data regions.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Sets the image size and the alignment (``cfg.bus_bytes``).
    prog_bytes : int
        Bytes reserved for the program at address 0.
    """

    cfg: AcceleratorConfig
    prog_bytes: int = 4096
    mem: np.ndarray = field(init=False)
    regions: dict[str, Region] = field(init=False, default_factory=dict)
    _top: int = field(init=False)

    def __post_init__(self) -> None:
        self.mem = np.zeros(self.cfg.dev_mem_bytes, np.uint8)
        self.prog_bytes = self._align(self.prog_bytes)
        if self.prog_bytes > self.cfg.dev_mem_bytes:
            raise ValueError(
                f"prog_bytes={self.prog_bytes} exceeds device memory ({self.cfg.dev_mem_bytes})"
            )
        self._top = self.prog_bytes

    def _align(self, v: int) -> int:
        a = max(self.cfg.bus_bytes, INSTR_BYTES)
        return -(-v // a) * a

    @property
    def top(self) -> int:
        """First free byte above the allocated data."""
        return self._top

    def alloc(self, size: int, name: str | None = None) -> int:
        """Reserve ``size`` bytes (rounded up to the bus width) and return the address."""
        if size < 0:
            raise ValueError(f"size={size}; size must be >= 0")
        addr = self._top
        end = addr + self._align(size)
        if end > self.cfg.dev_mem_bytes:
            raise MemoryError(
                f"device memory full: {name or 'region'} needs {size} bytes at {addr:#x}, "
                f"{self.cfg.name!r} has {self.cfg.dev_mem_bytes} bytes "
                f"({self.cfg.dev_mem_bytes - addr} free)"
            )
        self._top = end
        if name is not None:
            if name in self.regions:
                raise ValueError(f"region {name!r} allocated twice")
            self.regions[name] = Region(name, addr, size)
        return addr

    def put(self, addr: int, data) -> None:
        """Write bytes (or any array's raw little-endian bytes) at ``addr``."""
        raw = np.frombuffer(_as_bytes(data), np.uint8)
        if addr < 0 or addr + raw.size > self.mem.size:
            raise ValueError(f"write of {raw.size} bytes at {addr:#x} leaves device memory")
        self.mem[addr : addr + raw.size] = raw

    def place(self, data, name: str | None = None) -> int:
        """Allocate room for ``data``, write it there and return the address."""
        raw = _as_bytes(data)
        addr = self.alloc(len(raw), name)
        self.put(addr, raw)
        return addr

    def set_program(self, instrs: list[Instr]) -> None:
        """Encode ``instrs`` at address 0; they must fit in ``prog_bytes``."""
        blob = encode_program(instrs)
        if len(blob) > self.prog_bytes:
            raise ValueError(
                f"program of {len(instrs)} instructions ({len(blob)} bytes) exceeds the "
                f"{self.prog_bytes} bytes reserved"
            )
        self.mem[: self.prog_bytes] = 0
        self.mem[: len(blob)] = np.frombuffer(blob, np.uint8)

    def read(self, addr: int, size: int) -> bytes:
        return self.mem[addr : addr + size].tobytes()


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    arr = np.ascontiguousarray(data)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()
