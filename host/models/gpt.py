"""Small INT8 GPT, float reference with QAT fake-quant semantics and a KV cache.

A pre-norm decoder-only transformer (GPT-2 layout with RMSNorm and no biases): learned token
and position embeddings, per block ``x += Wo(MHA(RMSNorm(x)))`` with causal softmax attention
over ``n_heads`` heads and ``x += W2(GELU(W1(RMSNorm(x))))`` (exact erf GELU), final RMSNorm
and an untied LM head.

Quantization (Jacob et al. 2018; Krishnamoorthi 2018): weights int8 symmetric per output
channel (``numerics.int8_per_channel``), activations int8 symmetric per tensor with static
scales (the named points ``B.fq`` of :mod:`.common`), int32 accumulators. Every GEMM is
computed from integer-valued operands, ``(xi @ wi^T) * s_x * s_w``, as the systolic array
does; attention probabilities are on the grid ``k / 127`` (``numerics.softmax``).

Quantization points, per layer ``l``: ``l.ln1``, ``l.q``, ``l.k``, ``l.v``, ``l.score``
(``q.k / sqrt(head_dim)``), ``l.attn`` (heads' outputs), ``l.ln2``, ``l.fc1``, ``l.gelu``; plus
``res`` (residual stream: both embeddings, every branch output and every sum) and ``ln_f``.

Parameter names: ``tok_emb`` [V, d], ``pos_emb`` [ctx, d], per layer
``layers.l.ln1`` [d], ``layers.l.attn.{wq,wk,wv,wo}`` [d, d], ``layers.l.ln2`` [d],
``layers.l.mlp.fc1`` [mlp, d], ``layers.l.mlp.fc2`` [d, mlp]; ``ln_f`` [d]; ``lm_head`` [V, d];
quantization ranges ``range.<point>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .common import NumpyBackend, cross_entropy, ranges_from_params, rmsnorm

__all__ = ["GPTConfig", "GPTModel", "forward", "init_cache", "init_params", "step"]


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of the INT8 GPT.

    Attributes
    ----------
    vocab, vocab_padded : int
        Symbols and device rows of the embedding / LM head (multiple of 8).
    d : int
        Model width (multiple of 8).
    n_layers, n_heads : int
        ``head_dim = d / n_heads`` must be a multiple of 8 (GEMM ``k`` of ``q.K^T``).
    mlp : int
        MLP hidden width.
    ctx : int
        Context length: number of position embeddings and KV-cache rows.
    norm_eps : float
    """

    vocab: int = 65
    vocab_padded: int = 72
    d: int = 64
    n_layers: int = 3
    n_heads: int = 4
    mlp: int = 256
    ctx: int = 128
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTConfig:
        return cls(**dict(d))


def init_params(cfg: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 style init: N(0, 0.02), residual projections scaled by ``1/sqrt(2 n_layers)``."""
    rng = np.random.default_rng(seed)
    d = cfg.d

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * 0.02 * scale).astype(np.float32)

    res = 1.0 / math.sqrt(2 * cfg.n_layers)
    p: dict[str, np.ndarray] = {"tok_emb": normal(cfg.vocab, d), "pos_emb": normal(cfg.ctx, d)}
    for l in range(cfg.n_layers):
        pre = f"layers.{l}."
        p[pre + "ln1"] = np.ones(d, np.float32)
        for w in ("wq", "wk", "wv"):
            p[pre + f"attn.{w}"] = normal(d, d)
        p[pre + "attn.wo"] = normal(d, d, scale=res)
        p[pre + "ln2"] = np.ones(d, np.float32)
        p[pre + "mlp.fc1"] = normal(cfg.mlp, d)
        p[pre + "mlp.fc2"] = normal(d, cfg.mlp, scale=res)
    p["ln_f"] = np.ones(d, np.float32)
    p["lm_head"] = normal(cfg.vocab, d)
    return p


# ---------------------------------------------------------------------------- layers
def linear(B, x, xname: str | None, w, out: str | None):
    """``x @ w^T`` with int8 per-channel weights; ``x`` is fake-quantized at point ``xname``.

    Integer model: ``GEMM_I8`` then per-channel ``VREQ`` to point ``out`` (None: int32 out).
    """
    if B.quant:
        xi, sx = B.int_of(xname, x)
        wi, sw = B.int8_channel(w)
        y = B.matmul(xi, wi.T) * (sx * sw)
    else:
        y = B.matmul(x, w.T)
    return y if out is None else B.fq(out, y)


def _heads(x, n_heads: int):
    """``[..., T, d] -> [..., H, T, hd]``."""
    hd = x.shape[-1] // n_heads
    return x.reshape(tuple(x.shape[:-1]) + (n_heads, hd)).swapaxes(-2, -3)


def _merge(x):
    """``[..., H, T, hd] -> [..., T, d]``."""
    x = x.swapaxes(-2, -3)
    return x.reshape(tuple(x.shape[:-2]) + (x.shape[-2] * x.shape[-1],))


def attention(B, cfg: GPTConfig, l: int, q, k, v, causal: bool):
    """Softmax attention of ``q [..., H, Tq, hd]`` over ``k, v [..., H, Tk, hd]``."""
    r = f"l{l}."
    inv = 1.0 / math.sqrt(cfg.head_dim)
    if B.quant:
        qi, sq = B.int_of(r + "q", q)
        ki, sk = B.int_of(r + "k", k)
        scores = B.matmul(qi, ki.swapaxes(-1, -2)) * (sq * sk * inv)  # GEMM_I8
    else:
        scores = B.matmul(q, k.swapaxes(-1, -2)) * inv
    scores = B.fq(r + "score", scores)  # VREQ
    if causal:
        scores = B.causal_mask(scores)
    p = B.fq_grid(B.softmax(scores), 1.0 / 127.0, 0, 127)  # VSOFTMAX
    if B.quant:
        vi, sv = B.int_of(r + "v", v)
        pi = B.ste(p * 127.0, B.round(p * 127.0))
        a = B.matmul(pi, vi) * (sv / 127.0)  # GEMM_I8 (W = V stored K x N)
    else:
        a = B.matmul(p, v)
    return B.fq(r + "attn", a)  # VREQ


def block(B, P, cfg: GPTConfig, l: int, x, cache: dict | None):
    """One transformer block on ``x [..., T, d]``.

    With ``cache`` (a dict with ``k``/``v`` of shape ``[..., H, t, hd]`` or absent) the new keys
    and values are appended and attention runs over the whole cache (no mask needed: the
    queries are the newest positions, all keys precede them)."""
    pre, r = f"layers.{l}.", f"l{l}."
    xn = B.fq(r + "ln1", rmsnorm(B, x, B.gamma(P[pre + "ln1"]), cfg.norm_eps))
    q = _heads(linear(B, xn, r + "ln1", P[pre + "attn.wq"], r + "q"), cfg.n_heads)
    k = _heads(linear(B, xn, r + "ln1", P[pre + "attn.wk"], r + "k"), cfg.n_heads)
    v = _heads(linear(B, xn, r + "ln1", P[pre + "attn.wv"], r + "v"), cfg.n_heads)
    if cache is None:
        a = attention(B, cfg, l, q, k, v, causal=True)
    else:
        if "k" in cache:
            k = B.concat([cache["k"], k], axis=-2)
            v = B.concat([cache["v"], v], axis=-2)
        cache["k"], cache["v"] = k, v
        a = attention(B, cfg, l, q, k, v, causal=q.shape[-2] > 1)
    o = linear(B, _merge(a), r + "attn", P[pre + "attn.wo"], "res")
    x = B.residual_add(x, o)
    xn = B.fq(r + "ln2", rmsnorm(B, x, B.gamma(P[pre + "ln2"]), cfg.norm_eps))
    h = linear(B, xn, r + "ln2", P[pre + "mlp.fc1"], r + "fc1")
    g = B.fq(r + "gelu", B.gelu(h))  # VACT gelu_table
    o = linear(B, g, r + "gelu", P[pre + "mlp.fc2"], "res")
    return B.residual_add(x, o)


def forward(B, P, cfg: GPTConfig, tokens, cache: list | None = None, pos0: int = 0):
    """Logits ``[..., T, vocab]`` for ``tokens [..., T]`` at positions ``pos0 ..``.

    ``cache`` (from :func:`init_cache`) is extended in place; without it the sequence is
    processed with a causal mask.
    """
    T = tokens.shape[-1]
    if pos0 + T > cfg.ctx:
        raise ValueError(f"positions {pos0}..{pos0 + T - 1} exceed the context of {cfg.ctx}")
    x = B.residual_add(B.fq("res", P["tok_emb"][tokens]), B.fq("res", P["pos_emb"][pos0:pos0 + T]))
    for l in range(cfg.n_layers):
        x = block(B, P, cfg, l, x, None if cache is None else cache[l])
    xf = B.fq("ln_f", rmsnorm(B, x, B.gamma(P["ln_f"]), cfg.norm_eps))
    logits = linear(B, xf, "ln_f", P["lm_head"], None)
    B.observe("logits", logits)
    return logits


def init_cache(cfg: GPTConfig) -> list[dict]:
    """An empty KV cache (one dict per layer)."""
    return [{} for _ in range(cfg.n_layers)]


def step(B, P, cfg: GPTConfig, token, cache: list[dict], pos: int):
    """Decode ``token [...]`` at position ``pos``: logits ``[..., vocab]``; extends ``cache``."""
    tok = np.asarray(token)[..., None]
    return forward(B, P, cfg, tok, cache, pos)[..., 0, :]


class GPTModel:
    """NumPy float GPT bound to parameters (and QAT ranges); see :class:`.mmfree.MMFreeModel`."""

    kind = "gpt"

    def __init__(self, cfg: GPTConfig, params: Mapping[str, np.ndarray], mode: str | None = None):
        self.cfg = cfg
        ranges = ranges_from_params(params)
        if mode is None:
            mode = "apply" if ranges else "float"
        self.B = NumpyBackend(mode, ranges)
        self.params = {k: np.asarray(v, np.float64) for k, v in params.items()
                       if not k.startswith("range.")}

    def forward(self, tokens) -> np.ndarray:
        return forward(self.B, self.params, self.cfg, np.asarray(tokens))

    def init_state(self, batch_shape: tuple[int, ...] = ()) -> dict:
        """Decode state: the KV cache and the next position."""
        return {"cache": init_cache(self.cfg), "pos": 0}

    def step(self, token, state):
        logits = step(self.B, self.params, self.cfg, token, state["cache"], state["pos"])
        state["pos"] += 1
        return logits, state

    def loss(self, tokens) -> float:
        tokens = np.asarray(tokens)
        return cross_entropy(self.forward(tokens[..., :-1]), tokens[..., 1:])
