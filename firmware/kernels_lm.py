"""Language-model step kernels built from the vector ops: an MLGRU step and an attention step.

Both return a list of :class:`~tritium.isa.Instr` (no HALT) that loads its operands from device
memory into scratchpad regions it allocates itself (:class:`Scratch`), computes, and stores its
results back, so a program is ``kernel(...) + [HALT]``. ``*_demo_image`` build a complete
:class:`~tritium.firmware.image.MemoryImage` with random operands and sensible quantisation
parameters (used by the RTL regression and the host demo).

MLGRU step (MatMul-free LM token mixer, ``rows`` tokens of width ``d``, state width ``dh``)::

    VRMS     xn = rmsnorm(x, gamma)                    (int8)
    VQUANT   xq, m = absmax_quantize(xn)               (int8, per-token m in ACC)
    GEMM_TERN x3: F, C, G = xq @ {Wf, Wc, Wg}^T        (int32, ternary weights)
    VSCALE   F, C, G *= m (per token)                  (dequantisation scale)
    VREQ     f8, c8, g8 = requantize(F, C, G)
    VACT     f = sigmoid(f8), c = silu(c8), g = silu(g8)
    VGATE    h = f * h + (1 - f) * c                   (the state, in place)
    VMUL     o = h * g                                 (input of the output projection)

Attention step (INT8 transformer, ``rows`` queries, ``t`` keys, head dims ``dk``/``dv``)::

    GEMM_I8        S = q @ K^T                          (K stored [t, dk])
    VREQ           s8 = requantize(S)
    VSOFTMAX       p = softmax(s8)                      (exp table, Q0.15)
    GEMM_I8 wt=1   O = p @ V                            (V stored [t, dv] = [k, n])
    VREQ           o8 = requantize(O)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tritium import numerics as nx
from tritium.config import AcceleratorConfig
from tritium.isa import Instr, Op, Space

from .image import MemoryImage
from .kernels import _k_unit

__all__ = [
    "Scratch",
    "attention_demo_image",
    "attention_step",
    "gemm_shape_over_spad",
    "mlgru_demo_image",
    "mlgru_step",
]


@dataclass
class Scratch:
    """Bump allocator for SPAD and ACC regions (bus-aligned, so regions are DMA-able)."""

    cfg: AcceleratorConfig
    spad_top: int = 0
    acc_top: int = 0
    names: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def _align(self, v: int) -> int:
        b = self.cfg.bus_bytes
        return -(-v // b) * b

    def spad(self, size: int, name: str = "") -> int:
        addr = self.spad_top
        self.spad_top += self._align(size)
        if self.spad_top > self.cfg.spad_bytes:
            raise MemoryError(f"SPAD full: {name} needs {size} bytes at {addr:#x}")
        self.names[name or f"spad{addr}"] = ("SPAD", addr, size)
        return addr

    def acc(self, words: int, name: str = "") -> int:
        addr = self.acc_top
        self.acc_top += self._align(4 * words)
        if self.acc_top > self.cfg.acc_bytes:
            raise MemoryError(f"ACC full: {name} needs {4 * words} bytes at {addr:#x}")
        self.names[name or f"acc{addr}"] = ("ACC", addr, 4 * words)
        return addr

    def padded(self, size: int) -> int:
        return self._align(size)


def _load(cfg, space: Space, loc: int, dram: int, size: int) -> Instr:
    """One-row LOAD of ``size`` bytes rounded up to the bus width."""
    b = cfg.bus_bytes
    return Instr.make(Op.LOAD, space=space, rows=1, row_bytes=-(-size // b) * b, loc=loc,
                      dram=dram)


def _store(cfg, space: Space, loc: int, dram: int, size: int) -> Instr:
    b = cfg.bus_bytes
    return Instr.make(Op.STORE, space=space, rows=1, row_bytes=-(-size // b) * b, loc=loc,
                      dram=dram)


#: Word offsets in the MLGRU parameter block (int32 pairs M0, shift).
MLGRU_PARAMS = ("rms", "f", "c", "g", "mul")
#: Word offsets in the attention parameter block.
ATTN_PARAMS = ("s", "o")


def mlgru_step(cfg: AcceleratorConfig, *, rows: int, d: int, dh: int, x: int, h: int,
               w_f: int, w_c: int, w_g: int, gamma: int, params: int, tables: int,
               h_out: int, o_out: int, sc: Scratch | None = None) -> list[Instr]:
    """One MLGRU step for ``rows`` tokens (see the module docstring).

    DRAM operands: ``x`` int8 [rows, d]; ``h`` int8 [rows, dh] (previous state); ``w_*``
    packed ternary [dh, d/4] (:func:`tritium.numerics.pack_ternary`); ``gamma`` int8 [d];
    ``params``: int32 (M0, shift) pairs in the order of :data:`MLGRU_PARAMS`; ``tables``: the
    sigmoid table (256 int8) then the SiLU table (256 int8). Results: ``h_out`` (new state,
    int8 [rows, dh]) and ``o_out`` (``h * silu(g)``, int8 [rows, dh]).
    """
    if d % 8:
        raise ValueError(f"d={d}; the GEMM reduction length must be a multiple of 8")
    sc = sc or Scratch(cfg)
    S, A = Space.SPAD, Space.ACC
    t_x, t_h = rows * d, rows * dh
    wbytes = dh * d // 4
    X = sc.spad(t_x, "x")
    H = sc.spad(t_h, "h")
    G = sc.spad(d, "gamma")
    T = sc.spad(512, "tables")
    WF, WC, WG = (sc.spad(wbytes, f"w_{n}") for n in "fcg")
    XN = sc.spad(t_x, "xn")
    XQ = sc.spad(t_x, "xq")
    F8, C8, G8 = (sc.spad(t_h, f"{n}8") for n in "fcg")
    FS, CS, GS = (sc.spad(t_h, f"{n}s") for n in "fcg")
    O = sc.spad(t_h, "o")
    P = sc.acc(2 * len(MLGRU_PARAMS), "params")
    M = sc.acc(rows, "m")
    AF, AC, AG = (sc.acc(t_h, f"acc_{n}") for n in "fcg")

    def par(name: str) -> int:
        return P + 8 * MLGRU_PARAMS.index(name)

    prog = [
        _load(cfg, S, X, x, t_x),
        _load(cfg, S, H, h, t_h),
        _load(cfg, S, G, gamma, d),
        _load(cfg, S, T, tables, 512),
        _load(cfg, A, P, params, 8 * len(MLGRU_PARAMS)),
        _load(cfg, S, WF, w_f, wbytes),
        _load(cfg, S, WC, w_c, wbytes),
        _load(cfg, S, WG, w_g, wbytes),
        Instr.make(Op.VRMS, rows=rows, n=d, src=X, src2=G, dst=XN, param=par("rms")),
        Instr.make(Op.VQUANT, rows=rows, n=d, src=XN, dst=XQ, param=M),
    ]
    for w, acc in ((WF, AF), (WC, AC), (WG, AG)):
        prog.append(Instr.make(Op.GEMM_TERN, m=rows, k=d, n=dh, a=XQ, w=w, c=acc))
    for acc in (AF, AC, AG):
        prog.append(Instr.make(Op.VSCALE, rows=rows, n=dh, src=acc, src2=M, dst=acc))
    for acc, out, name in ((AF, F8, "f"), (AC, C8, "c"), (AG, G8, "g")):
        prog.append(Instr.make(Op.VREQ, rows=rows, n=dh, src=acc, dst=out, param=par(name)))
    prog += [
        Instr.make(Op.VACT, rows=rows, n=dh, src=F8, src2=T, dst=FS),
        Instr.make(Op.VACT, rows=rows, n=dh, src=C8, src2=T + 256, dst=CS),
        Instr.make(Op.VACT, rows=rows, n=dh, src=G8, src2=T + 256, dst=GS),
        Instr.make(Op.VGATE, rows=rows, n=dh, src=FS, src2=CS, dst=H),
        Instr.make(Op.VMUL, rows=rows, n=dh, src=H, src2=GS, dst=O, param=par("mul")),
        _store(cfg, S, H, h_out, t_h),
        _store(cfg, S, O, o_out, t_h),
    ]
    return prog


def attention_step(cfg: AcceleratorConfig, *, rows: int, t: int, dk: int, dv: int, q: int,
                   k: int, v: int, params: int, exp_tab: int, out: int,
                   sc: Scratch | None = None) -> list[Instr]:
    """One attention head step: ``o8 = requant(softmax(requant(q K^T)) V)``.

    DRAM operands: ``q`` int8 [rows, dk], ``k`` int8 [t, dk], ``v`` int8 [t, dv], ``params``
    int32 (M0, shift) pairs in the order of :data:`ATTN_PARAMS`, ``exp_tab`` uint16 [256]
    (:func:`tritium.numerics.exp_table`). Result ``out`` int8 [rows, dv]. ``t`` and ``dk``
    are multiples of 8 (GEMM reduction lengths). Needs the systolic engine.
    """
    if t % 8 or dk % 8:
        raise ValueError(f"t={t}, dk={dk}; both must be multiples of 8")
    sc = sc or Scratch(cfg)
    S, A = Space.SPAD, Space.ACC
    Q = sc.spad(rows * dk, "q")
    K = sc.spad(t * dk, "k")
    V = sc.spad(t * dv, "v")
    E = sc.spad(512, "exp")
    S8 = sc.spad(rows * t, "s8")
    P8 = sc.spad(rows * t, "p8")
    O8 = sc.spad(rows * dv, "o8")
    P = sc.acc(2 * len(ATTN_PARAMS), "params")
    AS = sc.acc(rows * t, "acc_s")
    AO = sc.acc(rows * dv, "acc_o")
    return [
        _load(cfg, S, Q, q, rows * dk),
        _load(cfg, S, K, k, t * dk),
        _load(cfg, S, V, v, t * dv),
        _load(cfg, S, E, exp_tab, 512),
        _load(cfg, A, P, params, 8 * len(ATTN_PARAMS)),
        Instr.make(Op.GEMM_I8, m=rows, k=dk, n=t, a=Q, w=K, c=AS),
        Instr.make(Op.VREQ, rows=rows, n=t, src=AS, dst=S8, param=P),
        Instr.make(Op.VSOFTMAX, rows=rows, n=t, src=S8, src2=E, dst=P8),
        Instr.make(Op.GEMM_I8, wt=1, m=rows, k=t, n=dv, a=P8, w=V, c=AO),
        Instr.make(Op.VREQ, rows=rows, n=dv, src=AO, dst=O8, param=P + 8),
        _store(cfg, S, O8, out, rows * dv),
    ]


def _pairs(*reals: float) -> np.ndarray:
    out = []
    for r in reals:
        out += list(nx.quantize_multiplier(r))
    return np.array(out, "<i4")


def mlgru_demo_image(cfg: AcceleratorConfig, seed: int = 0, rows: int = 2,
                     d: int | None = None, dh: int | None = None) -> MemoryImage:
    """A complete program (MLGRU step + HALT) with random x, h, weights, gamma."""
    rng = np.random.default_rng(seed)
    d = d or (64 if cfg.spad_bytes >= 32 * 1024 else 32)
    dh = dh or d
    img = MemoryImage(cfg, prog_bytes=1024)
    x = img.place(rng.integers(-100, 101, (rows, d), dtype=np.int8), "x")
    h = img.place(rng.integers(-100, 101, (rows, dh), dtype=np.int8), "h")
    ws = [img.place(nx.pack_ternary(rng.integers(-1, 2, (dh, d))), f"w_{n}") for n in "fcg"]
    gamma = img.place(rng.integers(40, 100, d, dtype=np.int8), "gamma")
    # rms: y ~ x/rms * gamma * 2**15 * real -> aim for |y| ~ 40
    # f/c/g: acc ~ sqrt(d) * 127 * m (m ~ 100) -> aim for |y| ~ 60
    acc_scale = np.sqrt(d) * 60 * 100
    params = img.place(_pairs(40 / (70 * 2**15), 60 / acc_scale, 60 / acc_scale,
                              60 / acc_scale, 1 / 128), "params")
    sig = nx.sigmoid_table(1 / 16)
    silu = nx.silu_table(1 / 16, 1 / 16)
    tables = img.place(np.concatenate([sig.view(np.uint8), silu.view(np.uint8)]), "tables")
    h_out = img.alloc(rows * dh, "h_out")
    o_out = img.alloc(rows * dh, "o_out")
    prog = mlgru_step(cfg, rows=rows, d=d, dh=dh, x=x, h=h, w_f=ws[0], w_c=ws[1], w_g=ws[2],
                      gamma=gamma, params=params, tables=tables, h_out=h_out, o_out=o_out)
    img.set_program(prog + [Instr.make(Op.HALT)])
    return img


def attention_demo_image(cfg: AcceleratorConfig, seed: int = 0, rows: int = 4, t: int = 32,
                         dk: int = 32, dv: int = 32) -> MemoryImage:
    """A complete program (attention step + HALT) with random q, K, V."""
    rng = np.random.default_rng(seed)
    img = MemoryImage(cfg, prog_bytes=1024)
    q = img.place(rng.integers(-100, 101, (rows, dk), dtype=np.int8), "q")
    k = img.place(rng.integers(-100, 101, (t, dk), dtype=np.int8), "k")
    v = img.place(rng.integers(-100, 101, (t, dv), dtype=np.int8), "v")
    s_scale = np.sqrt(dk) * 60 * 60
    params = img.place(_pairs(50 / s_scale, 1 / 127), "params")
    exp_tab = img.place(nx.exp_table(1 / 16), "exp")
    out = img.alloc(rows * dv, "out")
    prog = attention_step(cfg, rows=rows, t=t, dk=dk, dv=dv, q=q, k=k, v=v, params=params,
                          exp_tab=exp_tab, out=out)
    img.set_program(prog + [Instr.make(Op.HALT)])
    return img


def gemm_shape_over_spad(cfg: AcceleratorConfig, engine: str, bits: int = 0) -> tuple:
    """A small ``(m, k, n)`` whose A and W together exceed the scratchpad (so the tiled GEMM
    must stream tiles), tileable on ``cfg`` (k a multiple of the engine's k-unit, n of the
    int32 bus unit)."""
    ku = _k_unit(cfg, engine)
    nu = max(1, cfg.bus_bytes // 4)
    per_byte = {"systolic": 1, "ternary": 4, "lut": 8 / max(bits, 1)}[engine]
    m = {"systolic": 2 * cfg.sa_rows, "ternary": 4, "lut": 2}[engine]
    k = max(ku, 256 if engine == "systolic" else 512)
    k = -(-k // ku) * ku
    n = nu
    while m * k + int(n * k / per_byte) <= cfg.spad_bytes:
        n += nu
    return m, k, n
