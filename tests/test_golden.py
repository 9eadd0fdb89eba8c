"""Golden model: instruction semantics checked against independent NumPy computations, faults
with their codes and pcs, and random valid programs."""

import numpy as np
import pytest

from tritium import numerics as nx
from tritium.config import preset
from tritium.firmware.image import MemoryImage
from tritium.firmware.randprog import random_program
from tritium.golden import DeviceError, GoldenDevice, run
from tritium.isa import INSTR_BYTES, ErrorCode, Instr, Op, encode

BASE = preset("base")
TINY = preset("tiny")


def load(dram, loc, nbytes, space=0, rows=1, stride=0):
    return Instr.make(
        Op.LOAD, space=space, rows=rows, row_bytes=nbytes, loc=loc, dram=dram, stride=stride
    )


def store(dram, loc, nbytes, space=0, rows=1, stride=0):
    return Instr.make(
        Op.STORE, space=space, rows=rows, row_bytes=nbytes, loc=loc, dram=dram, stride=stride
    )


HALT = Instr.make(Op.HALT)


def run_prog(cfg, img, prog):
    img.set_program(prog)
    return run(cfg, img.mem)


@pytest.mark.parametrize("engine", ["systolic", "ternary", "lut"])
def test_gemm_engines_match_plain_matmul(engine):
    rng = np.random.default_rng(1)
    m, k, n = 5, 32, 12
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    if engine == "systolic":
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        packed, op, bits = w, Op.GEMM_I8, 0
    elif engine == "ternary":
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        packed, op, bits = nx.pack_ternary(w), Op.GEMM_TERN, 0
    else:
        bits = 3
        w = rng.integers(-4, 4, (n, k)).astype(np.int8)
        packed, op = nx.pack_lut_weights(w, bits), Op.GEMM_LUT
    bias = rng.integers(-1000, 1000, (m, n)).astype("<i4")
    img = MemoryImage(BASE)
    pa, pw, pb = img.place(a), img.place(packed), img.place(bias)
    out = img.alloc(m * n * 4)
    wbytes = packed.size
    prog = [
        load(pa, 0, a.size),
        load(pw, 1024, -(-wbytes // 8) * 8),
        load(pb, 0, bias.size * 4, space=1),
        Instr.make(op, accumulate=1, bits=bits, m=m, k=k, n=n, a=0, w=1024, c=0),
        store(out, 0, -(-m * n * 4 // 8) * 8, space=1),
        HALT,
    ]
    res = run_prog(BASE, img, prog)
    got = res.mem[out : out + m * n * 4].view("<i4").reshape(m, n)
    want = a.astype(np.int64) @ w.astype(np.int64).T + bias
    np.testing.assert_array_equal(got, want)
    assert res.instret == len(prog)


def test_gemm_i8_transposed_and_accumulate_wraps():
    rng = np.random.default_rng(2)
    m, k, n = 2, 8, 4
    a = np.full((m, k), -128, np.int8)
    wt = np.full((k, n), -128, np.int8)
    img = MemoryImage(BASE)
    pa, pw = img.place(a), img.place(wt)
    # preload C with INT32_MAX so that adding k*2^14 wraps
    c0 = np.full(m * n, 2**31 - 1, "<i4")
    pc = img.place(c0)
    out = img.alloc(m * n * 4)
    prog = [
        load(pa, 0, 16),
        load(pw, 64, 32),
        load(pc, 0, 32, space=1),
        Instr.make(Op.GEMM_I8, accumulate=1, wt=1, m=m, k=k, n=n, a=0, w=64, c=0),
        store(out, 0, 32, space=1),
        HALT,
    ]
    res = run_prog(BASE, img, prog)
    got = res.mem[out : out + 32].view("<i4")
    want = (np.int64(2**31 - 1) + k * 128 * 128 + 2**31) % 2**32 - 2**31
    assert (got == want).all() and want < 0
    del rng


def test_strided_dma_gathers_rows():
    img = MemoryImage(BASE)
    src = img.place(np.arange(256, dtype=np.uint8))
    out = img.alloc(64)
    # 4 rows of 8 bytes, stride 32: bytes 0..7, 32..39, 64..71, 96..103
    prog = [load(src, 0, 8, rows=4, stride=32), store(out, 0, 32), HALT]
    res = run_prog(BASE, img, prog)
    want = np.concatenate([np.arange(r * 32, r * 32 + 8) for r in range(4)])
    np.testing.assert_array_equal(res.mem[out : out + 32], want)


def _vec_setup(rng, rows, n):
    img = MemoryImage(BASE)
    x = rng.integers(-128, 128, rows * n).astype(np.int8)
    y = rng.integers(-128, 128, rows * n).astype(np.int8)
    return img, x, y


def test_vector_ops_match_numerics():
    rng = np.random.default_rng(3)
    rows, n = 3, 16
    img, x, y = _vec_setup(rng, rows, n)
    acc = rng.integers(-(2**31), 2**31, rows * n, dtype=np.int64).astype("<i4")
    m0, sh = nx.quantize_multiplier(0.0123)
    params = np.array([m0, sh], "<i4")
    gamma = rng.integers(-128, 128, n).astype(np.int8)
    f = rng.integers(0, 128, rows * n).astype(np.int8)
    tab = nx.make_table(np.tanh, 1 / 32, 1 / 127)
    px, py, pacc, pp, pg, pf, pt = (img.place(v) for v in (x, y, acc, params, gamma, f, tab))
    out = img.alloc(4096)
    t = rows * n
    V = dict(rows=rows, n=n)
    prog = [
        load(px, 0, t), load(py, 64, t), load(pg, 128, 16), load(pf, 192, t), load(pt, 256, 256),
        load(pacc, 0, t * 4, space=1), load(pp, 256, 8, space=1),
        Instr.make(Op.VREQ, **V, src=0, dst=512, param=256, zp=-3),
        Instr.make(Op.VADD, **V, src=0, src2=64, dst=576),
        Instr.make(Op.VMUL, **V, src=0, src2=64, dst=640, param=256, zp=5),
        Instr.make(Op.VACT, **V, src=0, src2=256, dst=704),
        Instr.make(Op.VRMS, **V, src=0, src2=128, dst=768, param=256),
        Instr.make(Op.VQUANT, **V, src=0, dst=832, param=512),
        Instr.make(Op.VARGMAX, **V, src=64, dst=528),
        store(out, 0, 1024),
        # VGATE updates h in place (h_prev = y copy at 896)
        load(py, 896, t),
        Instr.make(Op.VGATE, **V, src=192, src2=0, dst=896),
        store(out + 1024, 896, t),
        store(out + 2048, 512, 64, space=1),
        HALT,
    ]  # fmt: skip
    res = run_prog(BASE, img, prog)
    o = res.mem[out : out + 4096]

    def i8(off):
        return o[off : off + t].view(np.int8).reshape(rows, n)

    X, Y = x.reshape(rows, n), y.reshape(rows, n)
    np.testing.assert_array_equal(i8(512), nx.requantize(acc.reshape(rows, n), m0, sh, -3))
    np.testing.assert_array_equal(i8(576), np.clip(X.astype(int) + Y, -128, 127))
    np.testing.assert_array_equal(i8(640), nx.mul_requantize(X, Y, m0, sh, 5))
    np.testing.assert_array_equal(i8(704), tab[X.astype(int) + 128])
    np.testing.assert_array_equal(i8(768), nx.rmsnorm(X, gamma, m0, sh))
    q, mm = nx.absmax_quantize(X)
    np.testing.assert_array_equal(i8(832), q)
    np.testing.assert_array_equal(o[2048 : 2048 + 4 * rows].view("<i4"), mm)
    np.testing.assert_array_equal(o[2064 : 2064 + 4 * rows].view("<i4"), Y.argmax(axis=1))
    F = f.reshape(rows, n).astype(int)
    h = (F * Y + (128 - F) * X + 64) >> 7
    np.testing.assert_array_equal(o[1024 : 1024 + t].view(np.int8).reshape(rows, n), h)


def test_softmax_vadd32_vscale():
    rng = np.random.default_rng(4)
    rows, n = 2, 24
    img = MemoryImage(BASE)
    x = rng.integers(-128, 128, rows * n).astype(np.int8)
    tab = nx.exp_table(1 / 16)
    a = rng.integers(-(2**31), 2**31, rows * n, dtype=np.int64).astype("<i4")
    b = rng.integers(-(2**31), 2**31, rows * n, dtype=np.int64).astype("<i4")
    s = np.array([3, -70000], "<i4")
    px, pt, pa, pb, ps = (img.place(v) for v in (x, tab, a, b, s))
    out = img.alloc(1024)
    t = rows * n
    prog = [
        load(px, 0, t), load(pt, 512, 512),
        load(pa, 0, 4 * t, space=1), load(pb, 256, 4 * t, space=1), load(ps, 512, 8, space=1),
        Instr.make(Op.VSOFTMAX, rows=rows, n=n, src=0, src2=512, dst=64),
        Instr.make(Op.VADD32, rows=rows, n=n, src=0, src2=256, dst=600),
        Instr.make(Op.VSCALE, rows=rows, n=n, src=0, src2=512, dst=0),
        store(out, 64, 48),
        store(out + 64, 0, 4 * t, space=1), store(out + 256, 600, 4 * t, space=1),
        HALT,
    ]  # fmt: skip
    res = run_prog(BASE, img, prog)
    o = res.mem[out:]
    np.testing.assert_array_equal(o[:t].view(np.int8), nx.softmax(x.reshape(rows, n), tab).ravel())
    A, B = a.astype(np.int64), b.astype(np.int64)
    np.testing.assert_array_equal(o[256 : 256 + 4 * t].view("<i4"), np.clip(A + B, -(2**31), 2**31 - 1))
    sc = (A.reshape(rows, n) * s[:, None].astype(np.int64)).ravel()
    np.testing.assert_array_equal(o[64 : 64 + 4 * t].view("<i4"), np.clip(sc, -(2**31), 2**31 - 1))


def test_jump_loops_and_watchdog():
    img = MemoryImage(TINY)
    img.set_program([Instr.make(Op.NOP), Instr.make(Op.JUMP, target=0)])
    with pytest.raises(DeviceError) as e:
        run(TINY, img.mem, max_instructions=1000)
    assert e.value.code == ErrorCode.WATCHDOG
    # JUMP over a bad instruction reaches HALT
    img.set_program([Instr.make(Op.JUMP, target=32), Instr.make(Op.NOP), HALT])
    img.mem[16] = 0x00  # invalid opcode never executed
    assert run(TINY, img.mem).halt_pc == 32


def _fault(cfg, prog, raw=None):
    img = MemoryImage(cfg)
    img.set_program(prog)
    if raw is not None:
        pc, word = raw
        img.mem[pc : pc + 16] = np.frombuffer(word.to_bytes(16, "little"), np.uint8)
    with pytest.raises(DeviceError) as e:
        run(cfg, img.mem)
    return e.value


def test_faults_carry_code_and_pc():
    nop = Instr.make(Op.NOP)
    e = _fault(BASE, [nop, nop, HALT], raw=(16, 0x00))
    assert (e.code, e.pc) == (ErrorCode.INVALID_OPCODE, 16)
    e = _fault(BASE, [nop, HALT], raw=(0, encode(nop) | (1 << 100)))
    assert e.code == ErrorCode.INVALID_OPCODE and "reserved" in e.reason
    e = _fault(BASE, [load(BASE.dev_mem_bytes - 8, 0, 16), HALT])
    assert (e.code, e.pc) == (ErrorCode.ADDRESS_RANGE, 0)
    e = _fault(BASE, [nop, load(4, 0, 8), HALT])
    assert (e.code, e.pc) == (ErrorCode.MISALIGNED, 16)
    e = _fault(BASE, [load(0, BASE.spad_bytes - 8, 16), HALT])
    assert e.code == ErrorCode.ADDRESS_RANGE and "SPAD" in e.reason
    e = _fault(TINY, [Instr.make(Op.GEMM_I8, m=1, k=8, n=1), HALT])
    assert e.code == ErrorCode.ENGINE_ABSENT and "systolic" in e.reason
    e = _fault(BASE, [Instr.make(Op.GEMM_TERN, m=1, k=12, n=1), HALT])
    assert e.code == ErrorCode.BAD_OPERAND and "k=12" in e.reason
    e = _fault(BASE, [Instr.make(Op.GEMM_LUT, m=1, k=8, n=1, bits=5), HALT])
    assert e.code == ErrorCode.BAD_OPERAND
    e = _fault(BASE, [Instr.make(Op.VREQ, rows=1, n=4, src=2, dst=0, param=0), HALT])
    assert e.code == ErrorCode.MISALIGNED
    # shift of 40 in the parameter block
    img = MemoryImage(BASE)
    p = img.place(np.array([1 << 30, 40], "<i4"))
    img.set_program([load(p, 0, 8, space=1), Instr.make(Op.VREQ, rows=1, n=4, param=0), HALT])
    with pytest.raises(DeviceError) as ei:
        run(BASE, img.mem)
    assert (ei.value.code, ei.value.pc) == (ErrorCode.BAD_OPERAND, INSTR_BYTES)
    # running off the end of memory
    img = MemoryImage(TINY)
    img.set_program([Instr.make(Op.JUMP, target=TINY.dev_mem_bytes)])
    with pytest.raises(DeviceError) as ei:
        run(TINY, img.mem)
    assert ei.value.code == ErrorCode.ADDRESS_RANGE


def test_faulting_instruction_writes_nothing():
    img = MemoryImage(BASE)
    src = img.place(np.arange(1, 17, dtype=np.uint8))
    prog = [load(src, 0, 16), store(BASE.dev_mem_bytes - 8, 0, 16), HALT]
    img.set_program(prog)
    dev = GoldenDevice(BASE, img.mem)
    with pytest.raises(DeviceError):
        dev.run()
    assert not dev.mem[-8:].any()
    np.testing.assert_array_equal(dev.spad[:16], np.arange(1, 17))


def test_image_size_checked():
    with pytest.raises(ValueError, match="dev_mem_bytes"):
        run(BASE, np.zeros(100, np.uint8))


@pytest.mark.parametrize("cfg", [TINY, BASE], ids=["tiny", "base"])
def test_random_programs_run_and_are_deterministic(cfg):
    ops = set()
    for seed in range(12):
        rp = random_program(cfg, seed, n_ops=30)
        res = run(cfg, rp.image.mem)
        again = run(cfg, random_program(cfg, seed, n_ops=30).image.mem)
        np.testing.assert_array_equal(res.mem, again.mem)
        # the dump holds the final scratchpads
        np.testing.assert_array_equal(res.mem[rp.dump_addr : rp.dump_addr + cfg.spad_bytes], res.spad)
        ops |= {i.op for _, i in res.trace}
    present = {Op.GEMM_I8: "systolic", Op.GEMM_TERN: "ternary", Op.GEMM_LUT: "lut"}
    for op, eng in present.items():
        assert (op in ops) == cfg.has(eng)
    assert {Op.VREQ, Op.VGATE, Op.VSOFTMAX, Op.VRMS, Op.LOAD, Op.STORE} <= ops


def test_partial_overlap_is_bad_operand_but_in_place_is_fine():
    img = MemoryImage(BASE)
    # in place: identical ranges
    img.set_program([Instr.make(Op.VADD, rows=1, n=16, src=0, src2=64, dst=0), HALT])
    run(BASE, img.mem)
    img.set_program([Instr.make(Op.VADD, rows=1, n=16, src=0, src2=64, dst=8), HALT])
    with pytest.raises(DeviceError) as e:
        run(BASE, img.mem)
    assert e.value.code == ErrorCode.BAD_OPERAND and "overlapping" in e.value.reason
    # VRMS writing over its gamma vector
    img.set_program([Instr.make(Op.VRMS, rows=2, n=8, src=0, src2=24, dst=16, param=0), HALT])
    with pytest.raises(DeviceError):
        run(BASE, img.mem)
