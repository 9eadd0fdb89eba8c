"""cocotb scratchpad model: serves a unit's memory master ports from a NumPy byte array.

A unit that reads and writes a scratchpad through Amaranth ``lib.stream`` ports (a read-request
stream carrying an address, a read-response stream carrying data, a write stream carrying an
``{addr, data}`` struct) is served by one :class:`ScratchpadModel` per space. The model keeps the
cycle discipline of :mod:`tritium.sim.stream` (drive after ``RisingEdge``, sample in ``ReadOnly``)
and inserts random stalls on every stream:

* read requests: ``ready`` low with probability ``req_stall``;
* read responses: answered in request order, no earlier than ``latency`` cycles after the
  request was accepted, ``valid`` withheld with probability ``rsp_idle`` per cycle, held until
  the unit takes it (``ready``); data is the memory content when the request was accepted;
* writes: ``ready`` low with probability ``wr_stall``; a write is applied in the cycle it is
  accepted (after any read accepted in the same cycle: read-before-write, like a
  non-transparent block RAM port).

Addresses are byte addresses; each beat carries ``elem_bytes`` bytes, little-endian (1 for the
int8 SPAD, 4 for the int32 ACC). An out-of-range or misaligned address is recorded in
:attr:`ScratchpadModel.errors` and makes :meth:`ScratchpadModel.check` raise.

Example (inside a cocotb test)::

    spad = np.zeros(cfg.spad_bytes, np.uint8)
    sp = ScratchpadModel(dut, spad, rd="sp_rd", rdata="sp_rdata", wr="sp_wr", elem_bytes=1,
                         rng=random.Random(seed), req_stall=0.3, rsp_idle=0.3, wr_stall=0.3)
    ...                     # run the unit; spad is updated in place by its writes
    sp.check()              # no bad addresses seen
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["MemoryModelError", "ScratchpadModel"]


class MemoryModelError(AssertionError):
    """The unit used an address outside the memory or not aligned to the element size."""


def _port(dut: Any, prefix: str, member: str) -> Any:
    name = f"{prefix}__{member}"
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(f"DUT has no port {name!r}") from None


class ScratchpadModel:
    """One scratchpad behind a read-request / read-response / write port triple.

    Parameters
    ----------
    dut
        cocotb DUT handle.
    mem : numpy.ndarray of uint8
        The backing store, read and written in place (share it with the test's reference).
    rd, rdata, wr
        Stream member names (``"sp_rd"`` serves ``sp_rd__valid`` etc.); ``rdata`` and ``wr``
        may be ``None`` for a port triple without them.
    elem_bytes
        Bytes per beat (1 or 4); addresses must be multiples of it.
    addr_bits
        Width of the ``addr`` field at the bottom of the write payload (default: the payload
        width minus ``8 * elem_bytes``).
    clk
        Clock (default ``dut.clk``).
    rng
        Source of stalls (seed it!).
    req_stall, rsp_idle, wr_stall
        Stall probabilities per cycle (may be changed at any time).
    latency
        Minimum cycles from a request's acceptance to its response (>= 1).

    Attributes
    ----------
    reads, writes : int
        Beats transferred so far.
    errors : list of str
        Bad accesses seen.
    """

    def __init__(
        self,
        dut: Any,
        mem: np.ndarray,
        *,
        rd: str,
        rdata: str | None,
        wr: str | None,
        elem_bytes: int,
        addr_bits: int | None = None,
        clk: Any = None,
        rng: random.Random | None = None,
        req_stall: float = 0.0,
        rsp_idle: float = 0.0,
        wr_stall: float = 0.0,
        latency: int = 1,
    ):
        if mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError("mem must be a 1-D uint8 array")
        if elem_bytes not in (1, 2, 4, 8):
            raise ValueError(f"elem_bytes={elem_bytes}; elem_bytes must be 1, 2, 4 or 8")
        if latency < 1:
            raise ValueError(f"latency={latency}; latency must be >= 1")
        self.mem = mem
        self.eb = elem_bytes
        self.clk = clk if clk is not None else dut.clk
        self.rng = rng if rng is not None else random.Random(0)
        self.req_stall = req_stall
        self.rsp_idle = rsp_idle
        self.wr_stall = wr_stall
        self.latency = latency
        self.reads = 0
        self.writes = 0
        self.errors: list[str] = []
        self.rd_valid = _port(dut, rd, "valid")
        self.rd_ready = _port(dut, rd, "ready")
        self.rd_addr = _port(dut, rd, "payload")
        self.rsp = None
        if rdata is not None:
            self.rsp = (_port(dut, rdata, "valid"), _port(dut, rdata, "ready"),
                        _port(dut, rdata, "payload"))
            self.rsp[0].value = 0
        self.wr = None
        if wr is not None:
            self.wr = (_port(dut, wr, "valid"), _port(dut, wr, "ready"), _port(dut, wr, "payload"))
            width = len(self.wr[2])
            self.addr_bits = addr_bits if addr_bits is not None else width - 8 * elem_bytes
            self.wr[1].value = 0
        self.rd_ready.value = 0
        self._pending: deque[tuple[int, int]] = deque()
        self._current: int | None = None
        self._task = cocotb.start_soon(self._run())

    # ------------------------------------------------------------------ access
    def _bad(self, what: str, addr: int) -> bool:
        if addr % self.eb or addr + self.eb > self.mem.size:
            self.errors.append(
                f"{what} at address {addr:#x}: outside [0, {self.mem.size:#x}) or not a "
                f"multiple of {self.eb}"
            )
            return True
        return False

    def read(self, addr: int) -> int:
        """Element at byte address ``addr`` (unsigned, little-endian)."""
        return int.from_bytes(self.mem[addr : addr + self.eb].tobytes(), "little")

    def write(self, addr: int, value: int) -> None:
        """Store ``value`` (unsigned) at byte address ``addr``."""
        self.mem[addr : addr + self.eb] = np.frombuffer(
            (value & ((1 << (8 * self.eb)) - 1)).to_bytes(self.eb, "little"), np.uint8
        )

    def check(self) -> None:
        """Raise :class:`MemoryModelError` if any bad access was seen."""
        if self.errors:
            raise MemoryModelError(f"{len(self.errors)} bad access(es); first: {self.errors[0]}")

    @property
    def outstanding(self) -> int:
        """Read responses accepted but not yet delivered."""
        return len(self._pending) + (self._current is not None)

    def stop(self) -> None:
        self._task.cancel()

    # ------------------------------------------------------------------ cycle loop
    async def _run(self) -> None:
        cycle = 0
        rng = self.rng
        while True:
            await RisingEdge(self.clk)
            cycle += 1
            rd_ready = not (self.req_stall > 0 and rng.random() < self.req_stall)
            self.rd_ready.value = int(rd_ready)
            if self.rsp is not None:
                if (
                    self._current is None
                    and self._pending
                    and self._pending[0][0] <= cycle
                    and not (self.rsp_idle > 0 and rng.random() < self.rsp_idle)
                ):
                    self._current = self._pending.popleft()[1]
                    self.rsp[2].value = self._current
                self.rsp[0].value = int(self._current is not None)
            wr_ready = False
            if self.wr is not None:
                wr_ready = not (self.wr_stall > 0 and rng.random() < self.wr_stall)
                self.wr[1].value = int(wr_ready)
            await ReadOnly()
            if rd_ready and int(self.rd_valid.value):
                addr = self.rd_addr.value.to_unsigned()
                data = 0 if self._bad("read", addr) else self.read(addr)
                self._pending.append((cycle + self.latency, data))
                self.reads += 1
            if self.rsp is not None and self._current is not None and int(self.rsp[1].value):
                self._current = None
            if self.wr is not None and wr_ready and int(self.wr[0].value):
                word = self.wr[2].value.to_unsigned()
                addr = word & ((1 << self.addr_bits) - 1)
                data = word >> self.addr_bits
                if not self._bad("write", addr):
                    self.write(addr, data)
                self.writes += 1
