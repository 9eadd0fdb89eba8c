"""Integer GPT: token-by-token decoding with a KV cache, tritium.numerics ops only.

The program the compiler lowers for the ``base`` preset (systolic array + vector unit). It
mirrors the float QAT model :mod:`tritium.host.models.gpt` point by point. Weights are int8 per
output channel (``numerics.int8_per_channel``); activations int8 with static per-tensor
scales; the residual stream has ONE static scale ``S = scale("res")`` for all layers (token and
position embeddings are stored at ``S``).

Op sequence for the token at position ``pos`` (``t = pos + 1`` keys; ``hd`` head width)::

    LOAD      tok  <- tok_emb[token]                 [1, d] int8 (DMA row)
    LOAD      pos  <- pos_emb[pos]
    VADD      x    <- tok, pos
    per layer l (prefix "l{l}."):
      VRMS      xn   <- x            ln1
      GEMM_I8   acc  <- xn, Wqkv     [3d, d] int8 (rows: q, k, v)
      VREQ      qkv  <- acc          per channel (scales q | k | v)
      STORE     K[l][:, pos, :] <- k ; V[l][:, pos, :] <- v   (KV cache, [H, ctx, hd] per layer)
      per head h:
        GEMM_I8   s    <- q_h, K[l][h, :t]          k = hd, n = t        int32 [1, t]
        VREQ      sc   <- s          real = s_q s_k / (sqrt(hd) s_score)
        VSOFTMAX  p    <- sc         exp_table(s_score); p / 127          int8 [1, t]
        (p is zero-padded to t8 = ceil8(t) columns)
        GEMM_I8   o    <- p, V[l][h, :t8]  (wt: V stored K x N)  k = t8, n = hd
        VREQ      a[:, h*hd:(h+1)*hd] <- o   real = s_v / (127 s_attn)
      GEMM_I8   acc  <- a, Wo        VREQ per channel -> o (scale S)
      VADD      x    <- x, o
      VRMS      xn2  <- x            ln2
      GEMM_I8   acc  <- xn2, W1      VREQ per channel -> h1 (scale fc1)
      VACT      g    <- h1           gelu_table
      GEMM_I8   acc  <- g, W2        VREQ per channel -> y (scale S)
      VADD      x    <- x, y
    VRMS      xf     <- x            ln_f
    GEMM_I8   acc    <- xf, Whead    [72, d] (rows >= 65 zero): int32 logits
    VREQ      logits8 <- acc         per channel
    VARGMAX   next   <- logits8[:, :65]

Float logits for the loss: ``acc * logit_scale[c]`` (``s_lnf * s_w[c]``), columns ``:65``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tritium import numerics
from tritium.config import AcceleratorConfig, preset

from .gpt import GPTConfig
from .intops import IntMachine, Requant, RMSNormInt, align, ceil8, quant_static, scale_of

__all__ = [
    "PROGRAM_RESERVE",
    "GPTInt",
    "GPTLayerInt",
    "layer_step",
    "memory_footprint",
    "quantize",
]

#: Bytes reserved for the instruction stream and activation buffers (not part of the model).
PROGRAM_RESERVE = 8 * 1024


@dataclass
class GPTLayerInt:
    """Integer parameters of one transformer block."""

    ln1: RMSNormInt
    w_qkv: np.ndarray  # int8 [3d, d]
    qkv_rq: Requant  # per channel [3d]
    score_rq: Requant
    exp_table: np.ndarray  # uint16 [256]
    pv_rq: Requant
    w_o: np.ndarray  # int8 [d, d]
    o_rq: Requant  # per channel [d]
    ln2: RMSNormInt
    w_1: np.ndarray  # int8 [mlp, d]
    fc1_rq: Requant
    gelu: np.ndarray  # int8 [256]
    w_2: np.ndarray  # int8 [d, mlp]
    fc2_rq: Requant


@dataclass
class GPTInt:
    """The integer GPT: parameters, static scales and the decode step."""

    cfg: GPTConfig
    tok_emb: np.ndarray  # int8 [vocab_padded, d]
    pos_emb: np.ndarray  # int8 [ctx, d]
    layers: list[GPTLayerInt]
    ln_f: RMSNormInt
    w_head: np.ndarray  # int8 [vocab_padded, d]
    logit_scale: np.ndarray  # float [vocab_padded]
    logits_rq: Requant
    ranges: dict[str, float]
    kind: str = "gpt"

    def init_state(self) -> dict:
        """Empty KV cache (int8 ``[n_layers, H, ctx, hd]`` for K and V) and position 0."""
        c = self.cfg
        shape = (c.n_layers, c.n_heads, c.ctx, c.head_dim)
        return {"K": np.zeros(shape, np.int8), "V": np.zeros(shape, np.int8), "pos": 0}

    def step(self, token: int, state: dict, mach: IntMachine | None = None):
        """Decode one token: ``(logits_acc int32 [72], logits8 int8 [72], next, state)``."""
        pos = state["pos"]
        if pos >= self.cfg.ctx:
            raise ValueError(f"position {pos} is past the context of {self.cfg.ctx}; "
                             "start a new window (init_state)")
        M = mach if mach is not None else IntMachine()
        M.LOAD("tok", self.tok_emb, token, "tok_emb")
        M.LOAD("pos", self.pos_emb, pos, "pos_emb")
        M.VADD("x", "tok", "pos")
        for l, L in enumerate(self.layers):
            layer_step(M, L, l, self.cfg, state["K"][l], state["V"][l], pos)
        M.VRMS("xf", "x", self.ln_f, "ln_f")
        M.GEMM_I8("logits.acc", "xf", self.w_head, "lm_head")
        M.VREQ("logits8", "logits.acc", self.logits_rq, "logits")
        M.VARGMAX("next", "logits8", self.cfg.vocab)
        state["pos"] = pos + 1
        return M["logits.acc"][0], M["logits8"][0], int(M["next"][0]), state

    def decode_logits(self, tokens) -> np.ndarray:
        """Float logits ``[T, vocab]`` decoding ``tokens`` (T <= ctx) from an empty cache."""
        state = self.init_state()
        out = []
        for tok in np.asarray(tokens):
            acc, _, _, state = self.step(int(tok), state)
            v = self.cfg.vocab
            out.append(acc[:v].astype(np.float64) * self.logit_scale[:v])
        return np.stack(out)

    def trace(self, token: int = 0) -> list:
        M = IntMachine.tracing()
        self.step(token, self.init_state(), M)
        return M.trace


def layer_step(M: IntMachine, L: GPTLayerInt, l: int, cfg: GPTConfig, K: np.ndarray,
               V: np.ndarray, pos: int) -> None:
    """One block on ``x`` (in place); writes row ``pos`` of this layer's cache ``K, V``
    (``[H, ctx, hd]`` int8) and attends over rows ``0..pos``."""
    p, d, H, hd = f"l{l}.", cfg.d, cfg.n_heads, cfg.head_dim
    M.VRMS(p + "xn", "x", L.ln1, p + "ln1")
    M.GEMM_I8(p + "qkv.acc", p + "xn", L.w_qkv, p + "w_qkv")
    M.VREQ(p + "qkv", p + "qkv.acc", L.qkv_rq, p + "qkv")
    qkv = M[p + "qkv"][0]
    M[p + "k"], M[p + "v"] = qkv[None, d:2 * d], qkv[None, 2 * d:]
    M.STORE(K, (slice(None), pos), p + "k", f"{p}K[:, {pos}]")
    M.STORE(V, (slice(None), pos), p + "v", f"{p}V[:, {pos}]")
    t, t8 = pos + 1, ceil8(pos + 1)
    heads = []
    for h in range(H):
        q = f"{p}h{h}."
        M[q + "q"] = qkv[None, h * hd:(h + 1) * hd]
        M.GEMM_I8(q + "s", q + "q", K[h, :t], f"{p}K[{h}, :{t}]")
        M.VREQ(q + "sc", q + "s", L.score_rq, p + "score")
        M.VSOFTMAX(q + "p", q + "sc", L.exp_table, p + "exp_table")
        M[q + "p8"] = np.zeros((1, t8), np.int8)
        M[q + "p8"][:, :t] = M[q + "p"]
        M.GEMM_I8(q + "o", q + "p8", V[h, :t8], f"{p}V[{h}, :{t8}]", w_transposed=True)
        M.VREQ(q + "a", q + "o", L.pv_rq, p + "pv")
        heads.append(M[q + "a"])
    M[p + "a"] = np.concatenate(heads, axis=1)
    M.GEMM_I8(p + "o.acc", p + "a", L.w_o, p + "w_o")
    M.VREQ(p + "o", p + "o.acc", L.o_rq, p + "o")
    M.VADD("x", "x", p + "o")
    M.VRMS(p + "xn2", "x", L.ln2, p + "ln2")
    M.GEMM_I8(p + "h1.acc", p + "xn2", L.w_1, p + "w_1")
    M.VREQ(p + "h1", p + "h1.acc", L.fc1_rq, p + "fc1")
    M.VACT(p + "g", p + "h1", L.gelu, p + "gelu")
    M.GEMM_I8(p + "y.acc", p + "g", L.w_2, p + "w_2")
    M.VREQ(p + "y", p + "y.acc", L.fc2_rq, p + "fc2")
    M.VADD("x", "x", p + "y")


def quantize(cfg: GPTConfig, params: Mapping[str, np.ndarray], ranges: Mapping[str, float]
             ) -> GPTInt:
    """Build the integer GPT from float parameters and quantization ``ranges``."""
    R = dict(ranges)
    sc = lambda name: scale_of(R, name)
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    S = sc("res")
    tok = np.zeros((cfg.vocab_padded, cfg.d), np.int8)
    tok[: cfg.vocab] = quant_static(P["tok_emb"], S)
    pos = quant_static(P["pos_emb"], S)
    inv = 1.0 / math.sqrt(cfg.head_dim)
    layers = []
    for l in range(cfg.n_layers):
        pre, r = f"layers.{l}.", f"l{l}."
        wq, sq_w = numerics.int8_per_channel(P[pre + "attn.wq"])
        wk, sk_w = numerics.int8_per_channel(P[pre + "attn.wk"])
        wv, sv_w = numerics.int8_per_channel(P[pre + "attn.wv"])
        s_in = sc(r + "ln1")
        real_qkv = np.concatenate([s_in * sq_w / sc(r + "q"), s_in * sk_w / sc(r + "k"),
                                   s_in * sv_w / sc(r + "v")])
        wo, so_w = numerics.int8_per_channel(P[pre + "attn.wo"])
        w1, s1_w = numerics.int8_per_channel(P[pre + "mlp.fc1"])
        w2, s2_w = numerics.int8_per_channel(P[pre + "mlp.fc2"])
        layers.append(GPTLayerInt(
            ln1=RMSNormInt.make(P[pre + "ln1"], s_in),
            w_qkv=np.concatenate([wq, wk, wv]),
            qkv_rq=Requant.from_real(real_qkv),
            score_rq=Requant.from_real(sc(r + "q") * sc(r + "k") * inv / sc(r + "score")),
            exp_table=numerics.exp_table(sc(r + "score")),
            pv_rq=Requant.from_real(sc(r + "v") / (127.0 * sc(r + "attn"))),
            w_o=wo,
            o_rq=Requant.from_real(sc(r + "attn") * so_w / S),
            ln2=RMSNormInt.make(P[pre + "ln2"], sc(r + "ln2")),
            w_1=w1,
            fc1_rq=Requant.from_real(sc(r + "ln2") * s1_w / sc(r + "fc1")),
            gelu=numerics.gelu_table(sc(r + "fc1"), sc(r + "gelu")),
            w_2=w2,
            fc2_rq=Requant.from_real(sc(r + "gelu") * s2_w / S),
        ))
    wh, sh_w = numerics.int8_per_channel(P["lm_head"])
    w_head = np.zeros((cfg.vocab_padded, cfg.d), np.int8)
    w_head[: cfg.vocab] = wh
    s_head = np.ones(cfg.vocab_padded)
    s_head[: cfg.vocab] = sh_w
    logit_scale = sc("ln_f") * s_head
    return GPTInt(cfg, tok, pos, layers, RMSNormInt.make(P["ln_f"], sc("ln_f")), w_head,
                  logit_scale, Requant.from_real(logit_scale / sc("logits")), R)


def memory_footprint(model: GPTInt, config: AcceleratorConfig | str = "base") -> dict[str, int]:
    """Device-memory bytes of the model, each item padded to the bus width: int8 weights,
    embeddings, gains, (M0, shift) parameter blocks, tables, the KV cache for the whole
    context, and :data:`PROGRAM_RESERVE`. ``"total"`` is their sum."""
    cfg = preset(config) if isinstance(config, str) else config
    al = lambda n: align(n, cfg.bus_bytes)
    c = model.cfg
    out = {"weights_int8": 0, "embedding": al(model.tok_emb.nbytes) + al(model.pos_emb.nbytes),
           "gains": 0, "requant_params": 0, "tables": 0,
           "kv_cache": 2 * c.n_layers * c.n_heads * al(c.ctx * c.head_dim),
           "program_reserve": PROGRAM_RESERVE}

    def add_norm(n: RMSNormInt):
        out["gains"] += al(n.gamma.size)
        out["requant_params"] += al(n.rq.nbytes)

    for L in model.layers:
        add_norm(L.ln1)
        add_norm(L.ln2)
        for w in (L.w_qkv, L.w_o, L.w_1, L.w_2):
            out["weights_int8"] += al(w.size)
        for rq in (L.qkv_rq, L.score_rq, L.pv_rq, L.o_rq, L.fc1_rq, L.fc2_rq):
            out["requant_params"] += al(rq.nbytes)
        out["tables"] += al(L.exp_table.nbytes) + al(L.gelu.nbytes)
    add_norm(model.ln_f)
    out["weights_int8"] += al(model.w_head.size)
    out["requant_params"] += al(model.logits_rq.nbytes)
    out["total"] = sum(out.values())
    out["budget"] = cfg.dev_mem_bytes
    return out
