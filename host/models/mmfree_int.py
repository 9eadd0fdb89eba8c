"""Integer MatMul-free LM: token-by-token decoding with tritium.numerics ops only.

This is the program the compiler lowers for the ``tiny`` preset (ternary engine + vector
unit). Every tensor is int8 (SPAD) or int32 (ACC); every step is one device op of
:class:`~tritium.host.models.intops.IntMachine`. It mirrors the float QAT model
:mod:`tritium.host.models.mmfree` quantization point by quantization point.

Static scales (from :func:`quantize`): the residual stream ``x`` is int8 with ONE static scale
``S = scale("res")`` shared by every layer (so ``VADD`` needs no rescale; every reader of the
residual is an RMSNorm, which is scale-invariant); the embedding is stored at ``S``.

Op sequence (``m = 1`` row per token; ``d`` model width, ``H`` GLU width, ``Vp = 72``)::

    LOAD      x      <- embed[token]                              [1, d] int8 (DMA row)
    per layer l (prefix "l{l}."):
      VRMS      xn     <- x            attn_norm                    int8
      BitLinear yf     <- xn           f_proj -> VREQ (scale f)     int8
      BitLinear yi     <- xn           i_proj -> VREQ (scale i)     int8
      BitLinear yg     <- xn           g_proj -> VREQ (scale g)     int8
      VACT      f      <- yf           sigmoid_table (Q0.7, f/128)  int8 in [0, 127]
      VACT      c      <- yi           silu_table                   int8 (scale c)
      VACT      sg     <- yg           silu_table                   int8 (scale sg)
      VGATE     h      <- f, c, h      h = (f h + (128 - f) c + 64) >> 7   (state, scale c)
      VRMS      hn     <- h            g_norm                       int8
      VMUL      oin    <- hn, sg       (M0, shift)                  int8
      BitLinear o      <- oin          o_proj -> VREQ (scale S)     int8
      VADD      x      <- x, o                                      int8 (saturating)
      VRMS      xn2    <- x            mlp_norm
      BitLinear acc    <- xn2          gate_proj, N = 2H, int32 (no VREQ yet)
      VREQ      gate   <- acc[:, :H]   (scale gate)
      VREQ      up     <- acc[:, H:]   (scale up)
      VACT      ga     <- gate         silu_table
      VMUL      p      <- ga, up       (M0, shift)
      BitLinear y      <- p            down_proj (K = H) -> VREQ (scale S)
      VADD      x      <- x, y
    VRMS      xf     <- x              final norm
    BitLinear acc    <- xf             lm_head (N = Vp, rows >= 65 are zero) -> int32 logits
    VREQ      logits8 <- acc           (scale logits)
    VARGMAX   next   <- logits8[:, :65]

    where "BitLinear y <- x  W -> VREQ" is
      VRMS      u   <- x      W.norm (gamma int8)              int8
      VQUANT    q,m <- u      q = round(127 u / m), m = max|u| per row
      GEMM_TERN acc <- q, W   (packed ternary, 4 weights / byte)  int32
      VSCALE    acc <- acc, m                                  int32
      VREQ      y   <- acc    real = a * s_u / (127 * s_y)     int8

Float logits for the loss: ``logits = acc * logit_scale`` (the lm_head accumulator after
VSCALE, ``logit_scale = a * s_u / 127``), columns ``:65``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tritium import numerics
from tritium.config import AcceleratorConfig, preset

from .intops import IntMachine, Requant, RMSNormInt, align, quant_static, scale_of
from .mmfree import MMFreeConfig

__all__ = [
    "PROGRAM_RESERVE",
    "BitLinearInt",
    "MMFreeInt",
    "MMFreeLayerInt",
    "bitlinear",
    "layer_step",
    "memory_footprint",
    "quantize",
]

#: Bytes reserved for the instruction stream and activation buffers (not part of the model).
PROGRAM_RESERVE = 8 * 1024


@dataclass
class BitLinearInt:
    """One BitLinear on the device.

    Attributes
    ----------
    name : str
    K, N : int
        Input width and output rows (``N`` padded to a multiple of 8 for the LM head).
    norm : RMSNormInt
        The internal RMSNorm (``VRMS``), output scale ``s_u``.
    w_packed : uint8 [N, K/4]
        ``numerics.pack_ternary`` of the absmean ternary weights.
    a : float
        Absmean weight scale.
    out : list of (start, stop, Requant, out_scale)
        ``VREQ`` segments over output columns (empty: the int32 accumulator is the output).
    """

    name: str
    K: int
    N: int
    norm: RMSNormInt
    w_packed: np.ndarray
    a: float
    out: list = field(default_factory=list)

    @property
    def acc_scale(self) -> float:
        """Real value of one unit of the accumulator after ``VSCALE``: ``a * s_u / 127``."""
        return self.a * self.norm.out_scale / 127.0

    @property
    def nbytes(self) -> int:
        return self.w_packed.size + sum(self.norm.nbytes) + sum(o[2].nbytes for o in self.out)


@dataclass
class MMFreeLayerInt:
    """Integer parameters of one HGRN-Bit block (see the module docstring for their use)."""

    attn_norm: RMSNormInt
    f_proj: BitLinearInt
    i_proj: BitLinearInt
    g_proj: BitLinearInt
    sigmoid_f: np.ndarray
    silu_c: np.ndarray
    silu_g: np.ndarray
    g_norm: RMSNormInt
    o_mul: Requant
    o_proj: BitLinearInt
    mlp_norm: RMSNormInt
    gate_proj: BitLinearInt
    silu_gate: np.ndarray
    p_mul: Requant
    down_proj: BitLinearInt


@dataclass
class MMFreeInt:
    """The integer MatMul-free model: parameters, static scales and the decode step."""

    cfg: MMFreeConfig
    embed: np.ndarray  # int8 [vocab_padded, d] at the residual scale
    layers: list[MMFreeLayerInt]
    norm: RMSNormInt
    lm_head: BitLinearInt
    logits_rq: Requant
    ranges: dict[str, float]
    kind: str = "mmfree"

    @property
    def res_scale(self) -> float:
        return scale_of(self.ranges, "res")

    @property
    def logit_scale(self) -> float:
        return self.lm_head.acc_scale

    def init_state(self) -> list[np.ndarray]:
        """Zero recurrent state: ``h`` int8 ``[1, d]`` per layer."""
        return [np.zeros((1, self.cfg.d), np.int8) for _ in self.layers]

    def step(self, token: int, state: list[np.ndarray], mach: IntMachine | None = None):
        """Decode one token: ``(logits_acc int32 [72], logits8 int8 [72], next_token, state)``.

        ``state`` is updated in place (and returned).
        """
        M = mach if mach is not None else IntMachine()
        M.LOAD("x", self.embed, token, "embed")
        for l, L in enumerate(self.layers):
            M[f"l{l}.h"] = state[l]
            layer_step(M, L, l)
            state[l] = M[f"l{l}.h"]
        M.VRMS("xf", "x", self.norm, "norm")
        bitlinear(M, self.lm_head, "xf", "logits")
        M.VREQ("logits8", "logits.acc", self.logits_rq, "logits")
        M.VARGMAX("next", "logits8", self.cfg.vocab)
        return M["logits.acc"][0], M["logits8"][0], int(M["next"][0]), state

    def decode_logits(self, tokens) -> np.ndarray:
        """Float logits ``[T, vocab]`` (``acc * logit_scale``) decoding ``tokens`` from zero."""
        state = self.init_state()
        out = []
        for tok in np.asarray(tokens):
            acc, _, _, state = self.step(int(tok), state)
            out.append(acc[: self.cfg.vocab].astype(np.float64) * self.logit_scale)
        return np.stack(out)

    def trace(self, token: int = 0) -> list:
        """The op records of one decode step (see :class:`~.intops.OpRecord`)."""
        M = IntMachine.tracing()
        self.step(token, self.init_state(), M)
        return M.trace


# ---------------------------------------------------------------------------- steps
def bitlinear(M: IntMachine, bl: BitLinearInt, src: str, dst: str) -> None:
    """BitLinear ``dst <- src``: VRMS, VQUANT, GEMM_TERN, VSCALE, then the VREQ segment(s).

    Tensors: ``{dst}.u``, ``{dst}.q``, ``{dst}.m``, ``{dst}.acc`` (int32, after VSCALE) and,
    for a single VREQ segment, ``dst`` itself.
    """
    M.VRMS(f"{dst}.u", src, bl.norm, f"{bl.name}.norm")
    M.VQUANT(f"{dst}.q", f"{dst}.m", f"{dst}.u")
    M.GEMM_TERN(f"{dst}.acc", f"{dst}.q", bl.w_packed, bl.K, f"{bl.name}.weight")
    M.VSCALE(f"{dst}.acc", f"{dst}.acc", f"{dst}.m")
    if len(bl.out) == 1:
        _, _, rq, _ = bl.out[0]
        M.VREQ(dst, f"{dst}.acc", rq, f"{bl.name}.out")


def layer_step(M: IntMachine, L: MMFreeLayerInt, l: int) -> None:
    """One block on ``x`` (in place) with recurrent state ``l{l}.h`` (in place)."""
    p = f"l{l}."
    # --- MLGRU token mixer
    M.VRMS(p + "xn", "x", L.attn_norm, p + "attn_norm")
    bitlinear(M, L.f_proj, p + "xn", p + "yf")
    bitlinear(M, L.i_proj, p + "xn", p + "yi")
    bitlinear(M, L.g_proj, p + "xn", p + "yg")
    M.VACT(p + "f", p + "yf", L.sigmoid_f, p + "sigmoid_f")
    M.VACT(p + "c", p + "yi", L.silu_c, p + "silu_c")
    M.VACT(p + "sg", p + "yg", L.silu_g, p + "silu_g")
    M.VGATE(p + "h", p + "f", p + "c")
    M.VRMS(p + "hn", p + "h", L.g_norm, p + "g_norm")
    M.VMUL(p + "oin", p + "hn", p + "sg", L.o_mul, p + "o_mul")
    bitlinear(M, L.o_proj, p + "oin", p + "o")
    M.VADD("x", "x", p + "o")
    # --- GLU channel mixer
    M.VRMS(p + "xn2", "x", L.mlp_norm, p + "mlp_norm")
    bitlinear(M, L.gate_proj, p + "xn2", p + "gu")
    (g0, g1, rq_gate, _), (u0, u1, rq_up, _) = L.gate_proj.out
    M[p + "gu.acc_gate"] = M[p + "gu.acc"][:, g0:g1]
    M[p + "gu.acc_up"] = M[p + "gu.acc"][:, u0:u1]
    M.VREQ(p + "gate", p + "gu.acc_gate", rq_gate, p + "gate_proj.out[:H]")
    M.VREQ(p + "up", p + "gu.acc_up", rq_up, p + "gate_proj.out[H:]")
    M.VACT(p + "ga", p + "gate", L.silu_gate, p + "silu_gate")
    M.VMUL(p + "p", p + "ga", p + "up", L.p_mul, p + "p_mul")
    bitlinear(M, L.down_proj, p + "p", p + "y")
    M.VADD("x", "x", p + "y")


# ---------------------------------------------------------------------------- quantizer
def _bitlinear(P: Mapping[str, np.ndarray], pname: str, rname: str, ranges, out_points,
               n_pad: int | None = None) -> BitLinearInt:
    w = np.asarray(P[pname + ".weight"], np.float64)
    wt, a = numerics.ternary_absmean(w)
    N, K = wt.shape
    if n_pad is not None and n_pad > N:
        wt = np.concatenate([wt, np.zeros((n_pad - N, K), np.int8)])
    s_u = scale_of(ranges, rname + ".norm")
    norm = RMSNormInt.make(P[pname + ".norm"], s_u)
    out = []
    for start, stop, point in out_points:
        s_y = scale_of(ranges, point)
        out.append((start, stop, Requant.from_real(a * s_u / (127.0 * s_y)), s_y))
    return BitLinearInt(pname, K, wt.shape[0], norm, numerics.pack_ternary(wt), a, out)


def quantize(cfg: MMFreeConfig, params: Mapping[str, np.ndarray],
             ranges: Mapping[str, float]) -> MMFreeInt:
    """Build the integer model from float parameters and quantization ``ranges``.

    Weights: ``numerics.ternary_absmean`` then ``pack_ternary``; gains: int8 absmax; the
    embedding: int8 at the residual scale; multipliers: ``numerics.quantize_multiplier`` of
    the real ratios of the scales; tables: ``numerics.sigmoid_table`` / ``silu_table``.
    """
    R = dict(ranges)
    sc = lambda name: scale_of(R, name)
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    S = sc("res")
    emb = quant_static(P["embed"], S)
    embed = np.zeros((cfg.vocab_padded, cfg.d), np.int8)
    embed[: emb.shape[0]] = emb
    H = cfg.hidden
    layers = []
    for l in range(cfg.n_layers):
        pre, r = f"layers.{l}.", f"l{l}."
        mx = pre + "mixer."
        layers.append(MMFreeLayerInt(
            attn_norm=RMSNormInt.make(P[pre + "attn_norm"], sc(r + "attn_norm")),
            f_proj=_bitlinear(P, mx + "f_proj", r + "f_proj", R, [(0, cfg.d, r + "f")]),
            i_proj=_bitlinear(P, mx + "i_proj", r + "i_proj", R, [(0, cfg.d, r + "i")]),
            g_proj=_bitlinear(P, mx + "g_proj", r + "g_proj", R, [(0, cfg.d, r + "g")]),
            sigmoid_f=numerics.sigmoid_table(sc(r + "f")),
            silu_c=numerics.silu_table(sc(r + "i"), sc(r + "c")),
            silu_g=numerics.silu_table(sc(r + "g"), sc(r + "sg")),
            g_norm=RMSNormInt.make(P[mx + "g_norm"], sc(r + "g_norm")),
            o_mul=Requant.from_real(sc(r + "g_norm") * sc(r + "sg") / sc(r + "o_in")),
            o_proj=_bitlinear(P, mx + "o_proj", r + "o_proj", R, [(0, cfg.d, "res")]),
            mlp_norm=RMSNormInt.make(P[pre + "mlp_norm"], sc(r + "mlp_norm")),
            gate_proj=_bitlinear(P, pre + "mlp.gate_proj", r + "gate_proj", R,
                                 [(0, H, r + "gate"), (H, 2 * H, r + "up")]),
            silu_gate=numerics.silu_table(sc(r + "gate"), sc(r + "gate_act")),
            p_mul=Requant.from_real(sc(r + "gate_act") * sc(r + "up") / sc(r + "p")),
            down_proj=_bitlinear(P, pre + "mlp.down_proj", r + "down_proj", R,
                                 [(0, cfg.d, "res")]),
        ))
    lm_head = _bitlinear(P, "lm_head", "lm_head", R, [], n_pad=cfg.vocab_padded)
    logits_rq = Requant.from_real(lm_head.acc_scale / sc("logits"))
    return MMFreeInt(cfg, embed, layers, RMSNormInt.make(P["norm"], sc("norm")), lm_head,
                     logits_rq, R)


# ---------------------------------------------------------------------------- footprint
def memory_footprint(model: MMFreeInt, config: AcceleratorConfig | str = "tiny"
                     ) -> dict[str, int]:
    """Device-memory bytes of the model, each item padded to the bus width.

    Items: packed ternary weights (4 per byte), int8 embedding, int8 gains, int32 (M0, shift)
    parameter blocks, 256-byte activation tables, the recurrent state, and
    :data:`PROGRAM_RESERVE` for the program and activation buffers. ``"total"`` is their sum.
    """
    cfg = preset(config) if isinstance(config, str) else config
    al = lambda n: align(n, cfg.bus_bytes)
    out = {"weights_ternary": 0, "embedding": al(model.embed.nbytes), "gains": 0,
           "requant_params": 0, "tables": 0, "state": 0, "program_reserve": PROGRAM_RESERVE}

    def add_norm(n: RMSNormInt):
        out["gains"] += al(n.gamma.size)
        out["requant_params"] += al(n.rq.nbytes)

    def add_bl(b: BitLinearInt):
        out["weights_ternary"] += al(b.w_packed.size)
        add_norm(b.norm)
        out["requant_params"] += sum(al(rq.nbytes) for _, _, rq, _ in b.out)

    for L in model.layers:
        add_norm(L.attn_norm)
        add_norm(L.g_norm)
        add_norm(L.mlp_norm)
        for b in (L.f_proj, L.i_proj, L.g_proj, L.o_proj, L.gate_proj, L.down_proj):
            add_bl(b)
        out["tables"] += 4 * al(numerics.ACT_TABLE_SIZE)
        out["requant_params"] += al(L.o_mul.nbytes) + al(L.p_mul.nbytes)
        out["state"] += al(model.cfg.d)
    add_norm(model.norm)
    add_bl(model.lm_head)
    out["requant_params"] += al(model.logits_rq.nbytes)
    out["total"] = sum(out.values())
    out["budget"] = cfg.dev_mem_bytes
    return out
