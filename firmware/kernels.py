"""Kernel library: instruction sequences for the common device-level operations.

Each kernel returns a list of :class:`~tritium.isa.Instr` (no HALT) and works on operands in
device memory, so kernels concatenate into programs. The hardware tracks dependencies between
its load / compute / store queues from address ranges, so a kernel that alternates between two
scratchpad buffers (double buffering) overlaps DMA with compute without explicit tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritium.config import AcceleratorConfig
from tritium.isa import ENGINE_GEMM, Instr, Op, Space

__all__ = ["GemmTiling", "plan_gemm", "tiled_gemm", "weight_row_bytes"]


def weight_row_bytes(engine: str, k: int, bits: int = 0) -> int:
    """Bytes one output channel's weights take in the engine's device layout."""
    return {"systolic": k, "ternary": k // 4, "lut": bits * k // 8}[engine]


def _k_unit(cfg: AcceleratorConfig, engine: str) -> int:
    """Smallest k-tile whose DMA rows (activation and packed weight) are bus-aligned."""
    bus = cfg.bus_bytes
    per_byte = {"systolic": 1, "ternary": 4, "lut": 8}[engine]
    unit = 8
    while unit % bus or (unit // per_byte) % bus or unit % per_byte:
        unit += 8
    return unit


@dataclass(frozen=True)
class GemmTiling:
    """Tile sizes of a tiled GEMM: ``tm`` x ``tk`` activations, ``tn`` output channels."""

    tm: int
    tk: int
    tn: int


def plan_gemm(
    cfg: AcceleratorConfig, m: int, k: int, n: int, engine: str, bits: int = 0
) -> GemmTiling:
    """Largest tiles that fit two buffers of A and W in SPAD and two C tiles in ACC.

    Raises ``ValueError`` when ``k`` or ``n`` cannot be tiled with bus-aligned DMA rows.
    """
    ku = _k_unit(cfg, engine)
    nu = max(1, cfg.bus_bytes // 4)
    if k % ku:
        raise ValueError(f"k={k} must be a multiple of {ku} for {engine} on {cfg.name!r}")
    if n % nu:
        raise ValueError(f"n={n} must be a multiple of {nu} on {cfg.name!r} (int32 C rows)")
    half_spad, half_acc = cfg.spad_bytes // 2, cfg.acc_bytes // 2
    best = None
    for tk in range(k, 0, -ku):
        if k % tk:
            continue
        for tn in range(n, 0, -nu):
            if n % tn:
                continue
            wbytes = tn * weight_row_bytes(engine, tk, bits)
            for tm in (min(m, 64), min(m, 16), min(m, 4), 1):
                if tm * tk + wbytes <= half_spad and 4 * tm * tn <= half_acc:
                    score = (tm * tn * tk, tk)
                    if best is None or score > best[0]:
                        best = (score, GemmTiling(tm, tk, tn))
                    break
    if best is None:
        raise ValueError(f"no tiling of {m}x{k}x{n} fits the scratchpads of {cfg.name!r}")
    return best[1]


def tiled_gemm(
    cfg: AcceleratorConfig,
    *,
    a: int,
    w: int,
    c: int,
    m: int,
    k: int,
    n: int,
    engine: str,
    bits: int = 0,
    tiling: GemmTiling | None = None,
) -> list[Instr]:
    """``C[m, n] = A[m, k] @ W[n, k]^T`` with operands in device memory.

    ``a``: int8 ``[m, k]`` row-major; ``w``: weights of ``engine`` in device layout (one row of
    :func:`weight_row_bytes` per output channel; LUT rows are ``bits`` planes of ``k/8``
    bytes); ``c``: int32 ``[m, n]`` row-major. Tiles alternate between two scratchpad buffers
    (double buffering) so that loads of the next tile overlap the current GEMM and the store
    of the previous C tile.
    """
    t = tiling or plan_gemm(cfg, m, k, n, engine, bits)
    op = ENGINE_GEMM[engine]
    half_spad, half_acc = cfg.spad_bytes // 2, cfg.acc_bytes // 2
    wrow = weight_row_bytes(engine, k, bits)
    prog: list[Instr] = []
    buf = 0  # alternates the A/W buffers per k-tile
    ctile = 0  # alternates the C buffers per output tile
    for m0 in range(0, m, t.tm):
        tm = min(t.tm, m - m0)
        for n0 in range(0, n, t.tn):
            tn = t.tn
            c_loc = (ctile % 2) * half_acc
            ctile += 1
            for kk, k0 in enumerate(range(0, k, t.tk)):
                base = (buf % 2) * half_spad
                a_loc, w_loc = base, base + tm * t.tk
                buf += 1
                prog.append(Instr.make(
                    Op.LOAD, space=Space.SPAD, rows=tm, row_bytes=t.tk, loc=a_loc,
                    dram=a + m0 * k + k0, stride=k,
                ))  # fmt: skip
                if engine == "lut":
                    # rows = (channel, plane) pairs, each a k-slice of a plane
                    prog.append(Instr.make(
                        Op.LOAD, space=Space.SPAD, rows=tn * bits, row_bytes=t.tk // 8,
                        loc=w_loc, dram=w + n0 * wrow + k0 // 8, stride=k // 8,
                    ))  # fmt: skip
                else:
                    per = weight_row_bytes(engine, t.tk)
                    off = weight_row_bytes(engine, k0)
                    prog.append(Instr.make(
                        Op.LOAD, space=Space.SPAD, rows=tn, row_bytes=per, loc=w_loc,
                        dram=w + n0 * wrow + off, stride=wrow,
                    ))  # fmt: skip
                prog.append(Instr.make(
                    op, accumulate=int(kk > 0), bits=bits, m=tm, k=t.tk, n=tn,
                    a=a_loc, w=w_loc, c=c_loc,
                ))  # fmt: skip
            prog.append(Instr.make(
                Op.STORE, space=Space.ACC, rows=tm, row_bytes=4 * tn, loc=c_loc,
                dram=c + 4 * (m0 * n + n0), stride=4 * n,
            ))  # fmt: skip
    return prog
