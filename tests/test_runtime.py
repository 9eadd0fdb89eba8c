"""Host runtime: the golden bridge (protocol + CSR semantics), the Device API and its errors, the
Runtime's per-step program updates, generation and evaluation on the golden device, the CLI."""

from __future__ import annotations

import json
import socket
import struct

import numpy as np
import pytest
from tritium.firmware.compiler import ReferenceState, compile_model, reference_step
from tritium.firmware.image import MemoryImage
from tritium.host import cli
from tritium.host.device import ConfigMismatch, Device, DeviceFault, DeviceNotFound
from tritium.host.evaluate import evaluate, load_int
from tritium.host.generate import evaluate_device, generate
from tritium.host.runtime import Runtime
from tritium.host.transport import GoldenBridge, GoldenTransport, ProtocolError

from tritium import protocol as P
from tritium.config import preset
from tritium.isa import (
    CSR,
    CSR_ID_VALUE,
    CTRL_RESET,
    CTRL_START,
    STATUS_DONE,
    STATUS_ERROR,
    ErrorCode,
    Instr,
    Op,
    encode_program,
)

TINY = preset("tiny")


def one(bridge: GoldenBridge, frame: bytes) -> P.Response:
    (r,) = P.ResponseParser().feed(bridge.feed(frame))
    assert r.crc_ok
    return r


# ----------------------------------------------------------------------------- bridge
def test_golden_bridge_csrs_and_memory():
    b = GoldenBridge(TINY)
    assert one(b, P.ping()).u32() == CSR_ID_VALUE
    assert one(b, P.read_csr(CSR.ID)).u32() == CSR_ID_VALUE
    assert one(b, P.read_csr(CSR.CONFIG_HASH)).u32() == TINY.hash32
    data = bytes(range(256))
    assert one(b, P.write_mem(0x400, data)).status == P.Status.OK
    assert one(b, P.read_mem(0x400, 256)).payload == data
    # a program: LOAD + STORE + HALT -> DONE, INSTRET 3
    img = MemoryImage(TINY, prog_bytes=64)
    src = img.place(np.arange(16, dtype=np.uint8))
    dst = img.alloc(16)
    img.set_program([Instr.make(Op.LOAD, rows=1, row_bytes=16, loc=0, dram=src),
                     Instr.make(Op.STORE, rows=1, row_bytes=16, loc=0, dram=dst),
                     Instr.make(Op.HALT)])
    for a, chunk in P.split_mem(0, img.mem[:img.top].tobytes()):
        assert one(b, P.write_mem(a, chunk)).ok
    one(b, P.write_csr(CSR.PROG_BASE, 0))
    one(b, P.write_csr(CSR.CTRL, CTRL_START))
    assert one(b, P.read_csr(CSR.STATUS)).u32() == STATUS_DONE
    assert one(b, P.read_csr(CSR.INSTRET)).u32() == 3
    assert one(b, P.read_csr(CSR.CYCLES_LO)).u32() == 0  # no clock in the golden model
    assert one(b, P.read_mem(dst, 16)).payload == bytes(range(16))
    one(b, P.write_csr(CSR.CTRL, CTRL_RESET))
    assert one(b, P.read_csr(CSR.STATUS)).u32() == 0
    assert one(b, P.read_csr(CSR.INSTRET)).u32() == 0


def test_golden_bridge_faults_and_framing():
    b = GoldenBridge(TINY)
    b.dev.mem[:16] = 0xFF  # invalid opcode at 0
    one(b, P.write_csr(CSR.CTRL, CTRL_START))
    assert one(b, P.read_csr(CSR.STATUS)).u32() == STATUS_ERROR
    assert one(b, P.read_csr(CSR.ERROR)).u32() == ErrorCode.INVALID_OPCODE
    # framing errors
    frame = bytearray(P.read_csr(CSR.ID))
    frame[-1] ^= 0xFF
    assert one(b, bytes(frame)).status == P.Status.BAD_CRC
    assert one(b, b"\x00\x01\x02" + P.ping()[:0]).status == P.Status.BAD_SYNC
    bad = bytes([P.REQ_SYNC]) + struct.pack("<BIH", 0x7F, 0, 0)
    assert one(b, bad + bytes([P.crc8(bad[1:])])).status == P.Status.BAD_CMD
    assert one(b, P.encode_request(P.Cmd.READ_MEM, TINY.dev_mem_bytes - 4, 8)).status == \
        P.Status.BAD_ADDR
    assert one(b, P.ping()).u32() == CSR_ID_VALUE  # in sync again
    # a frame split over many feeds
    out = b"".join(b.feed(bytes([x])) for x in P.read_csr(CSR.CONFIG_HASH))
    assert P.ResponseParser().feed(out)[0].u32() == TINY.hash32


# ----------------------------------------------------------------------------- device
def test_device_open_run_fault_and_mismatch():
    with Device.open("golden", "tiny") as dev:
        assert dev.config_hash() == TINY.hash32
        dev.write_mem(0, bytes(16 * 4))  # zero word = invalid opcode 0x00
        with pytest.raises(DeviceFault, match=r"INVALID_OPCODE \(1\) at pc 0x0"):
            dev.run(0)
        res = dev.run(0, check=False)
        assert res.status == "error" and res.error == ErrorCode.INVALID_OPCODE
        img = MemoryImage(preset("base"), prog_bytes=16)
        with pytest.raises(ConfigMismatch, match="compiled for config 'base'"):
            dev.load(img)
        dev.write_mem(0, encode_program([Instr.make(Op.NOP), Instr.make(Op.HALT)]))
        r = dev.run(0)
        assert r.ok and r.instret == 2 and r.cycles is None
        assert dev.read_counters()["instret"] == 2
    with pytest.raises(ConfigMismatch):
        Device(GoldenTransport(TINY), preset("base")).check_config(preset("base"))


def test_device_not_found():
    with pytest.raises(DeviceNotFound, match="unknown"):
        Device.open("carrier-pigeon", "tiny")
    with pytest.raises(DeviceNotFound, match="--port"):
        Device.open("serial", "tiny")
    with pytest.raises(DeviceNotFound):
        Device.open("serial", "tiny", port="/dev/nonexistent-tritium-board")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    with pytest.raises(DeviceNotFound, match="cannot connect"):
        Device.open("sim", "tiny", port=port)


def test_protocol_error_on_refused_frame():
    t = GoldenTransport(TINY)
    with pytest.raises(ProtocolError, match="BAD_ADDR"):
        t.read_mem(TINY.dev_mem_bytes - 4, 8)


# ----------------------------------------------------------------------------- runtime
@pytest.fixture(scope="module")
def mm_runtime():
    m = load_int("mmfree")
    cm = compile_model(m, TINY)
    dev = Device.open("golden", TINY)
    yield Runtime(dev, cm)
    dev.close()


def test_runtime_steps_equal_reference_and_write_few_words(mm_runtime):
    rt = mm_runtime
    m = rt.compiled.model
    for _ in range(2):  # two sequences: reset() zeroes the recurrent state
        rt.reset()
        ref = ReferenceState(m)
        written = []
        for tok in [20, 43, 50, 1, 30]:
            r = rt.step(tok)
            o = reference_step(m, tok, ref)
            assert r.next == o.next
            np.testing.assert_array_equal(r.logits_acc, o.logits_acc)
            np.testing.assert_array_equal(r.logits8, o.logits8)
            assert r.run.instret == len(rt.compiled.program(tok))
            written.append(r.written)
        assert max(written[1:]) <= 16  # only the embedding-row LOAD changes per token


def test_generate_greedy_is_the_reference_argmax(mm_runtime):
    rt = mm_runtime
    m = rt.compiled.model
    from tritium.host import data

    tok = data.tokenizer()
    res = generate(rt, "ROMEO:", 12)
    st = m.init_state()
    ids = list(tok.encode("ROMEO:"))
    for t in ids:
        _, _, nxt, st = m.step(t, st)
    out = []
    for _ in range(12):
        out.append(nxt)
        _, _, nxt, st = m.step(nxt, st)
    assert res.text == tok.decode(out)
    assert res.steps == 6 + 12 and res.cycles is None
    assert res.instret_per_token == len(rt.compiled.program(0))
    sampled = generate(rt, "ROMEO:", 12, temperature=0.8, seed=3)
    again = generate(rt, "ROMEO:", 12, temperature=0.8, seed=3)
    assert sampled.text == again.text


def test_gpt_rewindows_past_the_context():
    """Past ctx positions the generator restarts from the last ctx/2 tokens (as a host loop
    over the integer reference does)."""
    from test_compiler import small_model
    from tritium.host import data

    m = small_model("gpt", 4, ctx=16)
    cm = compile_model(m, preset("base"))
    tok = data.tokenizer()
    prompt = "First Citizen:"  # 14 characters
    with Device.open("golden", "base") as dev:
        rt = Runtime(dev, cm)
        res = generate(rt, prompt, 6)
        assert rt.pos == 11  # 16 positions, then 8 re-fed + 3 more
    hist = list(tok.encode(prompt))
    st = m.init_state()
    for t in hist:
        _, _, nxt, st = m.step(t, st)
    out = []
    for _ in range(6):
        out.append(nxt)
        hist.append(nxt)
        if st["pos"] >= 16:
            st = m.init_state()
            for t in hist[-8:]:
                _, _, nxt, st = m.step(t, st)
        else:
            _, _, nxt, st = m.step(nxt, st)
    assert res.text == tok.decode(out)


@pytest.mark.parametrize("name", ["mmfree", "gpt"])
def test_device_eval_equals_reference_and_tracks_float(name):
    """On a 128-character held-out slice: device logits == integer reference bit for bit,
    and the device loss is within 3 % of the float QAT model's."""
    cfg = "tiny" if name == "mmfree" else "base"
    cm = compile_model(load_int(name), preset(cfg))
    with Device.open("golden", cfg) as dev:
        r = evaluate_device(Runtime(dev, cm), name, n_chars=128, progress=False)
    assert r["exact"] and r["loss"] == r["ref_loss"]
    fl, _ = evaluate(name, "float", 128)
    assert abs(r["loss"] - fl) / fl < 0.03, (r["loss"], fl)


# ----------------------------------------------------------------------------- CLI
def test_cli_generate_json(capsys):
    assert cli.main(["generate", "--model", "mmfree", "-n", "5", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["steps"] == 6 + 5 and len(rep["text"]) == 5
    assert rep["cycles_per_token"] is None and rep["instructions_per_token"] > 100
    assert rep["engines"] == ["ternary"]


def test_cli_user_errors(capsys):
    assert cli.main(["generate", "--model", "mmfree", "--engine", "lut", "-n", "1"]) == 2
    assert "not in config 'tiny'" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "gpt", "--device", "serial", "-n", "1"]) == 2
    assert "--port" in capsys.readouterr().err


def test_demo_generates_and_checks():
    from tritium.host.demo import demo

    lines: list[str] = []
    assert demo(out=lines.append)
    text = "\n".join(lines)
    assert "ROMEO:" in text and "all checks passed" in text


def test_gpt_needs_no_kv_cache_clearing():
    """Stale KV-cache rows of an earlier sequence never contribute (rows >= t are never read
    by q.K^T and meet zero probabilities in P.V), so reset() writes nothing for the GPT."""
    from test_compiler import small_model

    m = small_model("gpt", 5, ctx=16)
    cm = compile_model(m, preset("base"))
    assert cm.state_regions() == []
    rng = np.random.default_rng(0)
    with Device.open("golden", "base") as dev:
        rt = Runtime(dev, cm)
        for name in ("K", "V"):
            addr, n = cm.out[name]
            dev.write_mem(addr, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        rt.reset()
        ref = ReferenceState(m)
        for tok in [3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7]:
            r, o = rt.step(tok), reference_step(m, tok, ref)
            np.testing.assert_array_equal(r.logits_acc, o.logits_acc)
