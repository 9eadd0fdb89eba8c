"""The SoC (fpga/soc.py: accelerator + on-chip RAM + byte-stream bridge) on Verilator, driven
through tritium.protocol frames; plus pure-Python checks of the protocol encoder/decoder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tritium import protocol as pr
from tritium.config import PRESETS

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
