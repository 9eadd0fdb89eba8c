"""The SoC (fpga/soc.py: accelerator + on-chip RAM + byte-stream bridge) on Verilator, driven
through tritium.protocol frames; plus pure-Python checks of the protocol encoder/decoder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tritium import protocol as pr
from tritium.config import PRESETS
from tritium.isa import CSR_ID_VALUE

TB_DIR = Path(__file__).parent / "cocotb"
TOP = "tritium_soc"
#: bridge inter-byte timeout of the simulated SoC (cycles)
TIMEOUT = 300


def _run(cfg_name: str, testcase: str, seed: int = 5):
    from tritium.fpga.soc import TritiumSoc
    from tritium.sim.build import run_cocotb

    factory = functools.partial(TritiumSoc, timeout=TIMEOUT)
    return run_cocotb(TOP, PRESETS[cfg_name], factory, "tb_soc", TB_DIR, testcase=testcase,
                      seed=seed, key_extra=f"timeout={TIMEOUT}")


def test_protocol_roundtrip():
    f = pr.write_mem(0x1234, b"\xa5\x5a\x00\xff")
    req = pr.decode_request(f)
    assert (req.cmd, req.addr, req.length, req.payload) == (pr.Cmd.WRITE_MEM, 0x1234, 4,
                                                             b"\xa5\x5a\x00\xff")
    assert pr.crc8(b"123456789") == 0xF4  # CRC-8/SMBUS check value
    p = pr.ResponseParser()
    stream = b"\x00\x11" + pr.encode_response(pr.Status.OK, b"abcd") + pr.encode_response(3)
    got = p.feed(stream[:5]) + p.feed(stream[5:])
    assert [r.status for r in got] == [pr.Status.OK, pr.Status.BAD_LEN]
    assert got[0].payload == b"abcd" and got[0].ok and p.skipped == 2
    bad = bytearray(pr.encode_response(0, b"xy"))
    bad[-1] ^= 1
    assert not pr.ResponseParser().feed(bytes(bad))[0].crc_ok
    with pytest.raises(pr.ProtocolError):
        pr.encode_request(pr.Cmd.READ_CSR, 0, 3)
    assert list(pr.split_mem(10, 600)) == [(10, 256), (266, 256), (522, 88)]


@pytest.mark.slow
def test_soc_program_over_bridge():
    run = _run("tiny", "soc_program")
    assert run.report["compared"] > 0


@pytest.mark.slow
def test_soc_malformed_frames():
    run = _run("tiny", "soc_malformed")
    assert set(run.report["malformed"]) == {
        "bad_sync", "bad_crc", "bad_len_csr", "bad_len_zero", "bad_len_big", "bad_cmd",
        "bad_addr_mem", "bad_addr_csr", "timeout",
    }


@pytest.mark.parametrize("cfg_name", ["tiny", "base"])
def test_bridge_edges(cfg_name):
    """The bridge alone (Amaranth simulator; device memory and a CSR slave modelled in Python):
    exact response frames at the edges of the header checks (last byte of device memory, high
    address bits, LEN 256 and above, the CSR window), bad CRC, a truncated frame, a run of
    garbage, with random idle cycles on rx and random backpressure on tx."""
    import random
    import struct

    from amaranth.sim import Simulator
    from tritium.fpga.bridge import Bridge

    cfg = PRESETS[cfg_name]
    size, bb = cfg.dev_mem_bytes, cfg.bus_bytes
    timeout = 60
    dut = Bridge(cfg, timeout)
    rng = random.Random(7)
    mem = bytearray(rng.randrange(256) for _ in range(size))
    regs = {0xFC: 0x1234_5678}
    out: list[int] = []
    done: list[str] = []

    def raw(cmd, addr, length, payload=b""):
        body = struct.pack("<BIH", cmd, addr, length) + payload
        return bytes([pr.REQ_SYNC]) + body + bytes([pr.crc8(body)])

    async def memory(ctx):
        ctx.set(dut.mem.ack, 1)
        p = dut.mem
        async for _, _, en, we, addr, wdata, wmask in ctx.tick().sample(
                p.en, p.we, p.addr, p.wdata, p.wmask):
            ctx.set(p.rvalid, en and not we)
            if en and we:
                for i in range(bb):
                    if wmask >> i & 1:
                        mem[addr * bb + i] = wdata >> 8 * i & 0xFF
            elif en:
                ctx.set(p.rdata, int.from_bytes(mem[addr * bb:(addr + 1) * bb], "little"))

    async def csr_slave(ctx):
        a = dut.csr
        for s in (a.arready, a.awready, a.wready):
            ctx.set(s, 1)
        rv = bv = False
        async for _, _, arv, ara, rr, awv, awa, wv, wd, br in ctx.tick().sample(
                a.arvalid, a.araddr, a.rready, a.awvalid, a.awaddr, a.wvalid, a.wdata,
                a.bready):
            rv = rv and not rr
            bv = bv and not br
            if arv:
                rv = True
                ctx.set(a.rdata, regs.get(ara, 0))
            if awv and wv:
                regs[awa] = wd
                bv = True
            ctx.set(a.rvalid, rv)
            ctx.set(a.bvalid, bv)

    async def sink(ctx):
        async for _, _, v, r, p in ctx.tick().sample(dut.tx.valid, dut.tx.ready, dut.tx.payload):
            if v and r:
                out.append(p)
            ctx.set(dut.tx.ready, rng.random() < 0.7)

    async def tb(ctx):
        async def send(data):
            for b in data:
                ctx.set(dut.rx.payload, b)
                ctx.set(dut.rx.valid, 1)
                await ctx.tick().until(dut.rx.ready)
                ctx.set(dut.rx.valid, 0)
                if rng.random() < 0.3:
                    await ctx.tick().repeat(rng.randrange(1, 4))

        async def expect(frame, status, payload=b"", name="", quiet=4 * timeout):
            out.clear()
            await send(frame)
            await ctx.tick().repeat(quiet)
            want = pr.encode_response(status, payload)
            assert bytes(out) == want, (name, bytes(out).hex(), want.hex())
            done.append(name)

        ping = struct.pack("<I", CSR_ID_VALUE)
        await expect(pr.ping(), pr.Status.OK, ping, "ping")
        data = bytes(rng.randrange(256) for _ in range(256))
        await expect(pr.write_mem(0x100, data), pr.Status.OK, name="write 256", quiet=1500)
        assert mem[0x100:0x200] == data
        await expect(pr.read_mem(0x100, 256), pr.Status.OK, data, "read 256", quiet=5000)
        await expect(pr.write_mem(size - 3, b"xyz"), pr.Status.OK, name="write last bytes")
        assert mem[size - 3:] == b"xyz"
        await expect(pr.read_mem(size - 1, 1), pr.Status.OK, b"z", "read last byte")
        await expect(pr.read_mem(size - 256, 256), pr.Status.OK, bytes(mem[-256:]),
                     "read last 256", quiet=5000)
        for addr, n in ((size - 255, 256), (size - 1, 2), (size, 1), (size << 1, 1),
                        (1 << 24, 1), (1 << 31, 4), (0xFFFF_FFFF, 1)):
            await expect(pr.read_mem(addr, n), pr.Status.BAD_ADDR, name=f"bad {addr:#x}+{n}")
        for cmd, n in ((pr.Cmd.READ_MEM, 257), (pr.Cmd.READ_MEM, 0x300), (pr.Cmd.WRITE_MEM, 0),
                       (pr.Cmd.READ_CSR, 0x104), (pr.Cmd.PING, 0x100), (pr.Cmd.PING, 4)):
            await expect(raw(cmd, 0, n), pr.Status.BAD_LEN, name=f"bad len {cmd} {n}")
        for cmd in (5, 7, 0x85, 0xFF):
            await expect(raw(cmd, 0, 0), pr.Status.BAD_CMD, name=f"bad cmd {cmd}")
        await expect(pr.read_csr(0xFC), pr.Status.OK, struct.pack("<I", regs[0xFC]), "csr fc")
        await expect(pr.write_csr(0x1C, 0xDEAD_BEEF), pr.Status.OK, name="write csr")
        assert regs[0x1C] == 0xDEAD_BEEF
        for off in (0x100, 0x1_0000, 0x1_0000_0000 - 4, 0x1E):
            await expect(raw(pr.Cmd.READ_CSR, off, 4), pr.Status.BAD_ADDR, name=f"csr {off:#x}")
        bad = bytearray(pr.write_mem(0x40, b"\xff" * 8))
        bad[-1] ^= 0x21
        await expect(bytes(bad), pr.Status.BAD_CRC, name="bad crc")
        assert mem[0x40:0x48] != b"\xff" * 8
        await expect(pr.write_mem(0x40, b"\xee" * 8)[:9], pr.Status.TIMEOUT, name="timeout")
        assert mem[0x40:0x48] != b"\xee" * 8
        await expect(pr.ping(), pr.Status.OK, ping, "ping after")  # (the timeout's rest dropped)
        await expect(b"\x00\x13\x37\x5a", pr.Status.BAD_SYNC, name="garbage")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(memory)
    sim.add_process(csr_slave)
    sim.add_process(sink)
    sim.add_testbench(tb)
    sim.run()
    assert len(done) == 33, done
