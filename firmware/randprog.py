"""Seeded random valid programs for regression (golden model now, RTL top later).

:func:`random_program` returns a :class:`~tritium.firmware.image.MemoryImage` holding a program
that mixes DMA, every GEMM engine the config has and every vector op, plus the random data it
works on. Every program is valid: it never faults on the golden model, so the RTL must finish it
and leave the same device memory image.

Shape of a program::

    LOAD  all of SPAD and ACC from random DRAM data       (no op reads stale scratchpad state)
    LOAD  parameter block (valid M0/shift) into ACC[P], tables into SPAD[T]
    N random ops: LOAD / STORE / GEMM_* / V* / FENCE / NOP  (never writing P, T or the program)
    STORE all of SPAD and ACC to a dump region             (scratchpad effects reach DRAM)
    HALT
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tritium import numerics as nx
from tritium.config import AcceleratorConfig
from tritium.isa import ENGINE_GEMM, INSTR_BYTES, Instr, Op, footprint, gemm_weight_bytes

from .image import MemoryImage

__all__ = ["random_program", "RandomProgram"]

_PARAM_CHANNELS = 64  # per-channel VREQ supports n <= this in random programs


@dataclass
class RandomProgram:
    image: MemoryImage
    instrs: list[Instr]
    dump_addr: int  # DRAM address of the final SPAD dump (ACC dump follows it)


def _valid_params(rng: np.random.Generator, count: int) -> np.ndarray:
    """M0 in [2^30, 2^31) and shifts mostly in a useful range, as int32 words M0..., shift..."""
    m0 = rng.integers(1 << 30, (1 << 31) - 1, count, dtype=np.int64)
    shift = rng.integers(-24, 2, count)
    extreme = rng.random(count) < 0.1
    shift[extreme] = rng.choice([-31, 30, 0], int(extreme.sum()))
    return np.concatenate([m0, shift]).astype("<i4")


class _Gen:
    def __init__(self, cfg: AcceleratorConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.bus = cfg.bus_bytes
        # protected regions at the top of each scratchpad
        self.channels = min(_PARAM_CHANNELS, cfg.acc_bytes // 64)
        self.param_bytes = 4 * 2 * self.channels + 8  # per-channel block, then one pair
        self.acc_free = cfg.acc_bytes - self.param_bytes  # ACC[P] = acc_free..
        self.spad_free = cfg.spad_bytes - 1024  # SPAD[T]: act table (256) + exp table (512)
        self.act_tab = self.spad_free
        self.exp_tab = self.spad_free + 512

    def ri(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return int(self.rng.integers(lo, hi + 1))

    def spad_addr(self, size: int, align: int = 1) -> int:
        hi = self.spad_free - size
        return self.ri(0, hi // align) * align

    def acc_addr(self, words: int) -> int:
        hi = (self.acc_free - 4 * words) // 4
        return 4 * self.ri(0, hi)

    # ------------------------------------------------------------------ op generators
    def dma(self, op: Op, dram_lo: int, dram_hi: int) -> Instr:
        bus = self.bus
        acc = self.rng.random() < 0.3
        space_free = self.acc_free if acc else self.spad_free
        rows = self.ri(1, 4)
        row_bytes = bus * self.ri(1, max(1, min(64, space_free // (rows * bus) // 4)))
        stride = row_bytes + bus * self.ri(0, 4) if rows > 1 else 0
        span = (rows - 1) * stride + row_bytes
        dram = dram_lo + bus * self.ri(0, (dram_hi - dram_lo - span) // bus)
        loc = bus * self.ri(0, (space_free - rows * row_bytes) // bus)
        return Instr.make(
            op, space=int(acc), rows=rows, row_bytes=row_bytes, loc=loc, dram=dram, stride=stride
        )

    def gemm(self) -> Instr:
        engine = self.cfg.engines[self.ri(0, len(self.cfg.engines) - 1)]
        op = ENGINE_GEMM[engine]
        m, k, n = self.ri(1, 6), 8 * self.ri(1, 8), self.ri(1, 12)
        bits = self.ri(1, self.cfg.lut_max_bits) if op == Op.GEMM_LUT else 0
        wt = int(op == Op.GEMM_I8 and self.rng.random() < 0.3)
        return Instr.make(
            op,
            accumulate=int(self.rng.random() < 0.4),
            wt=wt,
            bits=bits,
            m=m,
            k=k,
            n=n,
            a=self.spad_addr(m * k),
            w=self.spad_addr(gemm_weight_bytes(op, k, n, bits)),
            c=self.acc_addr(m * n),
        )

    def vector(self) -> Instr:
        """A random vector instruction whose written ranges coincide with or avoid its read
        ranges (partial overlaps are BAD_OPERAND)."""
        while True:
            instr = self._vector()
            reads, writes = footprint(instr)
            if all(
                ws != rs or w1 <= r0 or r1 <= w0 or (w0, w1) == (r0, r1)
                for ws, w0, w1 in writes
                for rs, r0, r1 in reads
            ):
                return instr

    def _vector(self) -> Instr:
        op = [
            Op.VREQ, Op.VADD, Op.VADD32, Op.VMUL, Op.VSCALE, Op.VACT,
            Op.VRMS, Op.VQUANT, Op.VGATE, Op.VSOFTMAX, Op.VARGMAX,
        ][self.ri(0, 10)]  # fmt: skip
        rows = self.ri(1, 4)
        n = self.ri(1, min(48, self.acc_free // 4 // 2 // rows))
        t = rows * n
        f = dict(rows=rows, n=n, zp=self.ri(-128, 127) if self.rng.random() < 0.3 else 0)
        p = self.acc_free  # per-channel parameter block
        pair = p + 8 * self.channels  # one (M0, shift) pair
        if op == Op.VREQ:
            pcm = int(self.rng.random() < 0.5)
            f.update(per_channel=pcm, src=self.acc_addr(t), dst=self.spad_addr(t),
                     param=p if pcm else pair)
        elif op == Op.VADD:
            f.update(src=self.spad_addr(t), src2=self.spad_addr(t), dst=self.spad_addr(t))
        elif op == Op.VADD32:
            f.update(src=self.acc_addr(t), src2=self.acc_addr(t), dst=self.acc_addr(t))
        elif op == Op.VMUL:
            f.update(src=self.spad_addr(t), src2=self.spad_addr(t), dst=self.spad_addr(t),
                     param=pair)
        elif op == Op.VSCALE:
            f.update(src=self.acc_addr(t), src2=self.acc_addr(rows), dst=self.acc_addr(t))
        elif op == Op.VACT:
            f.update(src=self.spad_addr(t), src2=self.act_tab, dst=self.spad_addr(t))
        elif op == Op.VRMS:
            f.update(src=self.spad_addr(t), src2=self.spad_addr(n), dst=self.spad_addr(t),
                     param=pair)
        elif op == Op.VQUANT:
            f.update(src=self.spad_addr(t), dst=self.spad_addr(t), param=self.acc_addr(rows))
        elif op == Op.VGATE:
            f.update(src=self.spad_addr(t), src2=self.spad_addr(t), dst=self.spad_addr(t))
        elif op == Op.VSOFTMAX:
            f.update(src=self.spad_addr(t), src2=self.exp_tab, dst=self.spad_addr(t))
        else:  # VARGMAX
            f.update(src=self.spad_addr(t), dst=self.acc_addr(rows))
        if op != Op.VREQ:
            f.pop("per_channel", None)
        if op not in (Op.VREQ, Op.VMUL, Op.VRMS):
            f["zp"] = 0
        if op == Op.VREQ and f["per_channel"]:
            f["n"] = self.channels  # the block holds M0[channels] then shift[channels]
            f["rows"] = min(rows, self.acc_free // 4 // 2 // self.channels)
        return Instr.make(op, **f)


def random_program(
    cfg: AcceleratorConfig,
    seed: int,
    n_ops: int = 24,
    mix: dict[str, float] | None = None,
) -> RandomProgram:
    """A random valid program and its memory image.

    Parameters
    ----------
    cfg : AcceleratorConfig
    seed : int
        Same seed, same config -> same program and data.
    n_ops : int
        Random operations between the set-up and the final dump.
    mix : dict, optional
        Relative weights of ``"dma"``, ``"gemm"``, ``"vector"``, ``"sync"``.
    """
    rng = np.random.default_rng(seed)
    g = _Gen(cfg, rng)
    mix = {"dma": 3.0, "gemm": 3.0, "vector": 4.0, "sync": 0.5, **(mix or {})}
    kinds = list(mix)
    probs = np.array([mix[k] for k in kinds], float)
    probs /= probs.sum()

    dma_rows = 2 * (-(-cfg.spad_bytes // 4096) + -(-cfg.acc_bytes // 4096))
    n_instr = n_ops + dma_rows + 8
    img = MemoryImage(cfg, prog_bytes=n_instr * INSTR_BYTES)
    bus = cfg.bus_bytes

    # data: scratchpad initial contents, parameters, tables, a scratch area, the dump
    init_spad = img.place(rng.integers(0, 256, cfg.spad_bytes, dtype=np.uint8), "init_spad")
    init_acc = rng.integers(0, 256, cfg.acc_bytes, dtype=np.uint8)
    # keep ACC words modest so VSCALE/VADD32 saturation and normal values both appear
    words = init_acc.view("<i4")
    small = rng.random(words.size) < 0.8
    words[small] = rng.integers(-(1 << 20), 1 << 20, int(small.sum()))
    init_acc = img.place(init_acc, "init_acc")
    params = img.place(
        np.concatenate([_valid_params(rng, g.channels), _valid_params(rng, 1)]), "params"
    )
    act = nx.make_table(np.tanh, 1 / 32, 1 / 127)
    exp = nx.exp_table(1 / 16)
    tables = img.place(
        np.concatenate([act.view(np.uint8), np.zeros(256, np.uint8), exp.view(np.uint8)]),
        "tables",
    )
    scratch_size = min(16 * 1024, cfg.dev_mem_bytes // 8)
    scratch = img.place(rng.integers(0, 256, scratch_size, dtype=np.uint8), "scratch")
    dump = img.alloc(cfg.spad_bytes + cfg.acc_bytes, "dump")

    def dma_all(op: Op, space: int, loc: int, size: int, dram: int) -> list[Instr]:
        out, row = [], min(size, 1 << 12)
        row -= row % bus
        for off in range(0, size, row):
            n = min(row, size - off)
            out.append(
                Instr.make(op, space=space, rows=1, row_bytes=n, loc=loc + off, dram=dram + off)
            )
        return out

    prog = []
    prog += dma_all(Op.LOAD, 0, 0, cfg.spad_bytes, init_spad)
    prog += dma_all(Op.LOAD, 1, 0, cfg.acc_bytes, init_acc)
    prog += dma_all(Op.LOAD, 1, g.acc_free, g.param_bytes, params)
    prog += dma_all(Op.LOAD, 0, g.spad_free, 1024, tables)
    for _ in range(n_ops):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        if kind == "dma":
            op = Op.LOAD if rng.random() < 0.5 else Op.STORE
            prog.append(g.dma(op, scratch, scratch + scratch_size))
        elif kind == "gemm":
            prog.append(g.gemm())
        elif kind == "vector":
            prog.append(g.vector())
        else:
            prog.append(Instr.make(Op.FENCE if rng.random() < 0.7 else Op.NOP))
    prog += dma_all(Op.STORE, 0, 0, cfg.spad_bytes, dump)
    prog += dma_all(Op.STORE, 1, 0, cfg.acc_bytes, dump + cfg.spad_bytes)
    prog.append(Instr.make(Op.HALT))
    img.set_program(prog)
    return RandomProgram(img, prog, dump)
