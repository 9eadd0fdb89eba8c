"""``tritium demo``: a first run that needs nothing but NumPy.

Runs a double-buffered tiled GEMM on every engine of the ``base`` preset on the golden device,
checks each result against a plain NumPy matmul, then runs a few random programs, and prints
what it did.
"""

from __future__ import annotations

import time

import numpy as np

from tritium import numerics as nx
from tritium.config import preset
from tritium.firmware.image import MemoryImage
from tritium.firmware.kernels import tiled_gemm
from tritium.firmware.randprog import random_program
from tritium.golden import run
from tritium.isa import Instr, Op


def _pack(engine: str, w: np.ndarray, bits: int) -> np.ndarray:
    if engine == "ternary":
        return nx.pack_ternary(w)
    if engine == "lut":
        return nx.pack_lut_weights(w, bits)
    return w


def demo(out=print) -> bool:
    """Run the demo; returns True when every check passed."""
    cfg = preset("base")
    rng = np.random.default_rng(0)
    m, k, n = 16, 512, 64
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    weights = {
        ("systolic", 0): rng.integers(-128, 128, (n, k)).astype(np.int8),
        ("ternary", 0): rng.integers(-1, 2, (n, k)).astype(np.int8),
        ("lut", 2): rng.integers(-2, 2, (n, k)).astype(np.int8),
        ("lut", 4): rng.integers(-8, 8, (n, k)).astype(np.int8),
    }
    out(f"tritium demo: {m}x{k} @ {k}x{n} GEMM on preset 'base' ({cfg.hash}), golden device")
    out(f"{'engine':<10} {'weights':>8} {'instrs':>7} {'w bytes':>8} {'check':>6}")
    ok = True
    for (engine, bits), w in weights.items():
        packed = _pack(engine, w, bits)
        img = MemoryImage(cfg, prog_bytes=16 * 256)
        pa, pw, pc = img.place(a), img.place(packed), img.alloc(4 * m * n)
        prog = tiled_gemm(cfg, a=pa, w=pw, c=pc, m=m, k=k, n=n, engine=engine, bits=bits)
        img.set_program(prog + [Instr.make(Op.HALT)])
        res = run(cfg, img.mem)
        got = res.mem[pc : pc + 4 * m * n].view("<i4").reshape(m, n)
        good = bool((got == a.astype(np.int64) @ w.astype(np.int64).T).all())
        ok &= good
        kind = f"int{bits}" if bits else ("ternary" if engine == "ternary" else "int8")
        out(f"{engine:<10} {kind:>8} {res.instret:>7} {packed.nbytes:>8} "
            f"{'ok' if good else 'FAIL':>6}")
    t0 = time.perf_counter()
    count = 0
    for seed in range(8):
        rp = random_program(cfg, seed, n_ops=40)
        count += run(cfg, rp.image.mem).instret
    dt = time.perf_counter() - t0
    out(f"8 random programs, {count} instructions, {count / dt:,.0f} instr/s on the golden model")
    out("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok
