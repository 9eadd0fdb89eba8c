"""cocotb testbench of the SoC (fpga/soc.py): accelerator + on-chip RAM + byte-stream bridge.

Everything goes through the bridge's byte streams with tritium.protocol frames, as a host
would: program and data are written with WRITE_MEM, the accelerator is started and polled with
CSR frames, results are read back with READ_MEM and compared with tritium.golden.
"""

from __future__ import annotations

import random
import struct
from collections import deque

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from tritium.firmware import kernels_lm
from tritium.sim.build import tb_report, test_params
from tritium.sim.stream import StreamDriver, StreamSink

from tritium import golden
from tritium import protocol as pr
from tritium.isa import CSR, CSR_ID_VALUE, CTRL_RESET, CTRL_START, STATUS_DONE, STATUS_ERROR


class BridgeClient:
    """Host side of the bridge protocol on the SoC's ``rx``/``tx`` streams (random idle
    cycles on rx, random backpressure on tx)."""

    def __init__(self, dut, rng: random.Random, idle: float = 0.2, stall: float = 0.2):
        self.dut = dut
        self.drv = StreamDriver(dut, "rx", rng=rng, idle_prob=idle)
        self.parser = pr.ResponseParser()
        self.responses: deque[pr.Response] = deque()
        self.sink = StreamSink(dut, "tx", rng=rng, stall_prob=stall, callback=self._byte)

    def _byte(self, b: int) -> None:
        self.responses.extend(self.parser.feed(bytes([b & 0xFF])))

    async def request(self, frame: bytes, timeout: int = 200_000) -> pr.Response:
        self.drv.send_all(frame)
        for _ in range(timeout):
            if self.responses:
                return self.responses.popleft()
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"no response to {frame[:8].hex()}... in {timeout} cycles")

    async def quiet(self, cycles: int = 200) -> list[pr.Response]:
        """Wait until the bridge has been silent a while; return what arrived meanwhile."""
        await self.drv.wait_idle()
        await ClockCycles(self.dut.clk, cycles)
        out = list(self.responses)
        self.responses.clear()
        return out

    async def read_csr(self, off: int) -> int:
        r = await self.request(pr.read_csr(int(off)))
        assert r.ok, r
        return r.u32()

    async def write_csr(self, off: int, value: int) -> None:
        r = await self.request(pr.write_csr(int(off), value))
        assert r.ok, r

    async def write_mem(self, addr: int, data: bytes) -> None:
        for a, chunk in pr.split_mem(addr, data):
            r = await self.request(pr.write_mem(a, chunk))
            assert r.ok, r

    async def read_mem(self, addr: int, n: int) -> bytes:
        out = b""
        for a, k in pr.split_mem(addr, n):
            r = await self.request(pr.read_mem(a, k))
            assert r.ok and len(r.payload) == k, r
            out += r.payload
        return out


async def _start(dut, seed: int) -> BridgeClient:
    from cocotb.clock import Clock

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.rx__valid.value = 0
    dut.tx__ready.value = 0
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    return BridgeClient(dut, random.Random(seed))


def _ranges(mask: np.ndarray, gap: int = 64) -> list[tuple[int, int]]:
    """Coalesced [lo, hi) ranges of the True entries of ``mask``."""
    idx = np.flatnonzero(mask)
    out: list[list[int]] = []
    for i in idx:
        if out and i - out[-1][1] <= gap:
            out[-1][1] = i + 1
        else:
            out.append([int(i), int(i) + 1])
    return [(lo, hi) for lo, hi in out]


async def _run_image(c: BridgeClient, cfg, mem: np.ndarray, timeout_polls: int = 20_000):
    """Write the non-zero parts of ``mem``, run it, return (status, differing byte count,
    bytes compared) against the golden model."""
    exp = golden.run(cfg, mem).mem
    for lo, hi in _ranges(mem != 0):
        await c.write_mem(lo, mem[lo:hi].tobytes())
    await c.write_csr(CSR.PROG_BASE, 0)
    await c.write_csr(CSR.CTRL, CTRL_START)
    st = 0
    for _ in range(timeout_polls):
        st = await c.read_csr(CSR.STATUS)
        if st & (STATUS_DONE | STATUS_ERROR):
            break
    assert st & STATUS_DONE, f"STATUS={st:#x} ERROR={await c.read_csr(CSR.ERROR)}"
    bad, compared = 0, 0
    for lo, hi in _ranges(exp != mem):
        got = np.frombuffer(await c.read_mem(lo, hi - lo), np.uint8)
        bad += int((got != exp[lo:hi]).sum())
        compared += hi - lo
    return st, bad, compared


@cocotb.test()
async def soc_program(dut):
    """Program + data over the bridge, start via CSR, poll STATUS, results == golden."""
    p = test_params()
    cfg = p.cfg
    c = await _start(dut, p.seed)
    r = await c.request(pr.ping())
    assert r.ok and r.u32() == CSR_ID_VALUE, r
    assert await c.read_csr(CSR.CONFIG_HASH) == cfg.hash32
    img = kernels_lm.mlgru_demo_image(cfg, seed=p.seed)
    _, bad, compared = await _run_image(c, cfg, img.mem)
    assert compared > 0 and bad == 0, f"{bad} of {compared} result bytes differ"
    cycles = await c.read_csr(CSR.CYCLES_LO)
    # a second program on the same device (scratchpads and RAM keep their contents)
    img2 = kernels_lm.mlgru_demo_image(cfg, seed=p.seed + 1)
    mem2 = img2.mem.copy()
    _, bad2, compared2 = await _run_image(c, cfg, mem2)
    assert bad2 == 0, f"{bad2} of {compared2} result bytes differ"
    tb_report(compared=int(compared + compared2), cycles=int(cycles))


@cocotb.test()
async def soc_malformed(dut):
    """Bad sync, bad CRC, bad length, unknown command, bad address, truncated frame: each gets
    its error response, nothing is written, and the bridge keeps working."""
    p = test_params()
    c = await _start(dut, p.seed)
    seen = []

    def raw(cmd, addr, length, payload=b"", crc=None):
        body = struct.pack("<BIH", cmd, addr, length) + payload
        return bytes([pr.REQ_SYNC]) + body + bytes([pr.crc8(body) if crc is None else crc])

    async def expect(frame, status, name):
        c.drv.send_all(frame)
        got = await c.quiet(400)
        assert got and got[0].status == status, (name, got)
        assert all(r.status == pr.Status.BAD_SYNC for r in got[1:]), (name, got)
        r = await c.request(pr.ping())  # still alive
        assert r.ok and r.u32() == CSR_ID_VALUE, (name, r)
        seen.append(name)

    addr = 0x800
    await c.write_mem(addr, bytes(range(16)))
    await expect(b"\x00\x13\x37garbage", pr.Status.BAD_SYNC, "bad_sync")
    good = pr.write_mem(addr, b"\xff" * 16)
    await expect(good[:-1] + bytes([good[-1] ^ 0x55]), pr.Status.BAD_CRC, "bad_crc")
    assert await c.read_mem(addr, 16) == bytes(range(16)), "a frame with a bad CRC wrote"
    await expect(raw(pr.Cmd.READ_CSR, 0, 2), pr.Status.BAD_LEN, "bad_len_csr")
    await expect(raw(pr.Cmd.WRITE_MEM, addr, 0), pr.Status.BAD_LEN, "bad_len_zero")
    await expect(raw(pr.Cmd.READ_MEM, addr, pr.MAX_LEN + 1), pr.Status.BAD_LEN, "bad_len_big")
    await expect(raw(0x7E, 0, 4, b"abcd"), pr.Status.BAD_CMD, "bad_cmd")
    await expect(raw(pr.Cmd.READ_MEM, p.cfg.dev_mem_bytes - 4, 8), pr.Status.BAD_ADDR,
                 "bad_addr_mem")
    await expect(raw(pr.Cmd.READ_CSR, 0x102, 4), pr.Status.BAD_ADDR, "bad_addr_csr")
    # truncated frame: the bridge times out (TritiumSoc built with a short timeout)
    await expect(pr.write_mem(addr, b"\xee" * 8)[:6], pr.Status.TIMEOUT, "timeout")
    assert await c.read_mem(addr, 16) == bytes(range(16)), "a truncated frame wrote"
    # header error with a payload containing sync bytes: the rest is dropped/answered
    await c.write_mem(addr, b"\x01\x02\x03\x04")
    assert await c.read_mem(addr, 4) == b"\x01\x02\x03\x04"
    # CSR path still fine: reset the accelerator, read STATUS
    await c.write_csr(CSR.CTRL, CTRL_RESET)
    assert (await c.read_csr(CSR.STATUS)) & 0x7 == 0
    tb_report(malformed=seen)
