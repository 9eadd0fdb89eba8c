"""Kernel library on the golden model: tiled GEMMs larger than the scratchpad."""

import numpy as np
import pytest

from tritium import numerics as nx
from tritium.config import preset
from tritium.firmware.image import MemoryImage
from tritium.firmware.kernels import GemmTiling, plan_gemm, tiled_gemm
from tritium.golden import run
from tritium.isa import Instr, Op


def _weights(rng, engine, n, k, bits):
    if engine == "systolic":
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        return w, w
    if engine == "ternary":
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        return w, nx.pack_ternary(w)
    lo = -(1 << (bits - 1))
    w = rng.integers(lo, -lo, (n, k)).astype(np.int8)
    return w, nx.pack_lut_weights(w, bits)


@pytest.mark.parametrize(
    "cfg_name, engine, bits, tiling",
    [
        ("base", "systolic", 0, None),
        ("base", "ternary", 0, GemmTiling(4, 64, 8)),
        ("base", "lut", 2, GemmTiling(3, 64, 4)),
        ("base", "lut", 4, None),
        ("tiny", "ternary", 0, None),
    ],
)
def test_tiled_gemm_matches_matmul(cfg_name, engine, bits, tiling):
    cfg = preset(cfg_name)
    rng = np.random.default_rng(7)
    m, k, n = 7, 256, 16
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w, packed = _weights(rng, engine, n, k, bits)
    img = MemoryImage(cfg, prog_bytes=16 * 512)
    pa, pw, pc = img.place(a), img.place(packed), img.alloc(4 * m * n)
    prog = tiled_gemm(cfg, a=pa, w=pw, c=pc, m=m, k=k, n=n, engine=engine, bits=bits,
                      tiling=tiling)
    img.set_program(prog + [Instr.make(Op.HALT)])
    res = run(cfg, img.mem)
    got = res.mem[pc : pc + 4 * m * n].view("<i4").reshape(m, n)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ w.astype(np.int64).T)
    assert sum(i.op == Op.LOAD for _, i in res.trace) >= 2


def test_gemm_larger_than_scratchpad():
    """A [64 x 512] x [512 x 64] int8 GEMM on tiny-sized buffers: operands (64 KiB of weights
    as int8) far exceed the 8 KiB scratchpad, so the kernel must tile."""
    cfg = preset("base").replace(spad_bytes=8 * 1024, acc_bytes=2048)
    rng = np.random.default_rng(8)
    m, k, n = 64, 512, 64
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    t = plan_gemm(cfg, m, k, n, "systolic")
    assert t.tm * t.tk + t.tn * t.tk <= cfg.spad_bytes // 2
    img = MemoryImage(cfg, prog_bytes=16 * 4096)
    pa, pw, pc = img.place(a), img.place(w), img.alloc(4 * m * n)
    prog = tiled_gemm(cfg, a=pa, w=pw, c=pc, m=m, k=k, n=n, engine="systolic")
    img.set_program(prog + [Instr.make(Op.HALT)])
    res = run(cfg, img.mem)
    got = res.mem[pc : pc + 4 * m * n].view("<i4").reshape(m, n)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ w.astype(np.int64).T)


def test_plan_rejects_unaligned():
    with pytest.raises(ValueError, match="multiple of"):
        plan_gemm(preset("base"), 4, 36, 8, "ternary")
