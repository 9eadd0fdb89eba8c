"""MatMul-free language model (HGRN-Bit), float reference with QAT fake-quant semantics.

Follows ridgerchu/matmulfreellm (Zhu et al., *Scalable MatMul-free Language Modeling*), line
numbers at commit a016f72:

* ``BitLinear`` — ``mmfreelm/ops/bitnet.py`` lines 45-87 (``forward`` 64-87):
  ``x' = RMSNorm(x)`` (own learned gain, ``eps=1e-8``), per-token absmax 8-bit
  ``activation_quant`` (lines 10-24: ``s = 127 / max(max|x'|, 1e-5)``,
  ``round(x' s).clamp(-128, 127) / s``), absmean ternary ``weight_quant`` (lines 27-41:
  ``a = max(mean|W|, 1e-5)``, ``round(W / a).clamp(-1, 1) * a``), both with a
  straight-through estimator, then ``F.linear`` (line 86); no bias. Written here as
  ``(q @ Wt^T) * a / s`` with integer ``Wt`` and ``q``.
* MLGRU token mixer — ``mmfreelm/layers/hgrn_bit.py``, ``HGRNBitAttention.forward``
  (lines 83-142): ``f = sigmoid(f_proj(x))`` (113), ``i = swiglu(i_proj(x), 1 - f)`` =
  ``SiLU(i) * (1 - f)`` (117), ``h_t = f * h_{t-1} + i`` (``fused_recurrent_hgrn``, 125),
  ``o = o_proj(g_norm(g_proj(x), h))`` (139-140) with ``g_norm = FusedRMSNormSwishGate``
  (``mmfreelm/modules/fused_norm_gate.py`` line 514; its kernel, line 128, computes
  ``RMSNorm(first arg) * second * sigmoid(second)``). We use the form ``DESIGN.md`` gives,
  ``o = o_proj(RMSNorm(h) * SiLU(g_proj(x)))`` (norm on the recurrent state, SiLU gate on
  ``g``, as in the paper's MLGRU), no short convolution, one head, ``expand_ratio = 1``, no
  lower bound (``use_lower_bound=False``; for layer 0 the lower bound is 0 anyway).
* GLU channel mixer — ``mmfreelm/models/hgrn_bit/modeling_hgrn_bit.py``, ``HGRNBitMLP``
  (lines 29-59): ``gate, y = gate_proj(x).chunk(2, -1)`` (57),
  ``down_proj(swiglu(gate, y))`` = ``down_proj(SiLU(gate) * y)`` (58).
* Blocks — same file, ``HGRNBitBlock.forward`` (lines 87-113): pre-norm residual,
  ``x += attn(attn_norm(x))`` (98), ``x += mlp(mlp_norm(x))`` (107-109); init
  ``_init_weights`` (128-156: N(0, 0.02), ``o_proj``/``down_proj`` divided by
  ``sqrt(2 n_layers)``); model — ``HGRNBitModel`` (159-279): embedding, blocks, final
  ``RMSNorm`` (262); ``HGRNBitForCausalLM``: ``lm_head = BitLinear(hidden, vocab)`` (288).

Quantization points (``B.fq``, see :mod:`.common`) mirror the integer model
:mod:`.mmfree_int`: the residual stream (``"res"``: embedding, every branch output, every
sum), every RMSNorm output, every BitLinear output that is stored as int8, the SiLU outputs,
the products, and the sigmoid forget gate on the fixed grid ``k / 128``, ``k`` in [0, 127].

Parameter names (float32 in checkpoints): ``embed`` [V, d]; per layer ``l``:
``layers.l.attn_norm`` [d], ``layers.l.mixer.{i,f,g,o}_proj.{norm,weight}``,
``layers.l.mixer.g_norm`` [d], ``layers.l.mlp_norm`` [d],
``layers.l.mlp.gate_proj.{norm [d], weight [2H, d]}``, ``layers.l.mlp.down_proj.{norm [H],
weight [d, H]}``; ``norm`` [d]; ``lm_head.{norm [d], weight [V, d]}``; quantization ranges
``range.<point>`` (scalars).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .common import NumpyBackend, cross_entropy, ranges_from_params, rmsnorm

__all__ = ["MMFreeConfig", "MMFreeModel", "forward", "init_params", "init_state", "step"]


@dataclass(frozen=True)
class MMFreeConfig:
    """Hyperparameters of the MatMul-free LM.

    Attributes
    ----------
    vocab : int
        Symbols (65 for tinyshakespeare).
    vocab_padded : int
        Rows of the embedding / LM head on the device (multiple of 8; padding rows are 0).
    d : int
        Model width (multiple of 8: GEMM ``k`` alignment).
    n_layers : int
    hidden : int
        GLU hidden width ``H`` (``gate_proj`` has ``2H`` outputs).
    ctx : int
        Training context length (the model is recurrent; decoding is not limited by it).
    norm_eps, bitlinear_eps : float
        RMSNorm epsilons of the block norms and of BitLinear's internal norm.
    """

    vocab: int = 65
    vocab_padded: int = 72
    d: int = 128
    n_layers: int = 2
    hidden: int = 256
    ctx: int = 128
    norm_eps: float = 1e-6
    bitlinear_eps: float = 1e-8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MMFreeConfig:
        return cls(**dict(d))


def init_params(cfg: MMFreeConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial float32 parameters: N(0, 0.02) weights (``initializer_range``), o_proj and
    down_proj scaled by ``1/sqrt(2 n_layers)`` (``HGRNBitPreTrainedModel._init_weights``),
    norm gains 1."""
    rng = np.random.default_rng(seed)
    d, h = cfg.d, cfg.hidden

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * 0.02 * scale).astype(np.float32)

    res = 1.0 / np.sqrt(2 * cfg.n_layers)
    p: dict[str, np.ndarray] = {"embed": normal(cfg.vocab, d)}
    for l in range(cfg.n_layers):
        pre = f"layers.{l}."
        p[pre + "attn_norm"] = np.ones(d, np.float32)
        for name in ("i", "f", "g"):
            p[pre + f"mixer.{name}_proj.norm"] = np.ones(d, np.float32)
            p[pre + f"mixer.{name}_proj.weight"] = normal(d, d)
        p[pre + "mixer.g_norm"] = np.ones(d, np.float32)
        p[pre + "mixer.o_proj.norm"] = np.ones(d, np.float32)
        p[pre + "mixer.o_proj.weight"] = normal(d, d, scale=res)
        p[pre + "mlp_norm"] = np.ones(d, np.float32)
        p[pre + "mlp.gate_proj.norm"] = np.ones(d, np.float32)
        p[pre + "mlp.gate_proj.weight"] = normal(2 * h, d)
        p[pre + "mlp.down_proj.norm"] = np.ones(h, np.float32)
        p[pre + "mlp.down_proj.weight"] = normal(d, h, scale=res)
    p["norm"] = np.ones(d, np.float32)
    p["lm_head.norm"] = np.ones(d, np.float32)
    p["lm_head.weight"] = normal(cfg.vocab, d)
    return p


# ---------------------------------------------------------------------------- layers
def bitlinear(B, P, pname: str, rname: str, x, cfg: MMFreeConfig, out: str | None = None):
    """BitLinear ``pname`` on ``x`` (quantization points prefixed ``rname``).

    ``u = fq(RMSNorm_gamma(x))``; ``q, r = absmax(u)``; ``y = (q @ Wt^T) * a / r``; then
    ``fq(out, y)`` unless ``out`` is None (LM head: int32 logits). Integer model:
    VRMS -> VQUANT -> GEMM_TERN -> VSCALE -> VREQ.
    """
    u = rmsnorm(B, x, B.gamma(P[pname + ".norm"]), cfg.bitlinear_eps)
    u = B.fq(rname + ".norm", u)
    floor = B.scale(rname + ".norm") if B.quant else 1e-5
    q, r = B.absmax_int(u, floor)
    wt, a = B.ternary(P[pname + ".weight"])
    y = B.matmul(q, wt.T) * (a / r)
    return y if out is None else B.fq(out, y)


def mlgru(B, P, cfg: MMFreeConfig, l: int, x, h):
    """MLGRU token mixer over ``x [..., T, d]`` from state ``h [..., d]``; returns
    ``(o [..., T, d], h_T)``."""
    pre, r = f"layers.{l}.mixer.", f"l{l}."
    yf = bitlinear(B, P, pre + "f_proj", r + "f_proj", x, cfg, out=r + "f")
    yi = bitlinear(B, P, pre + "i_proj", r + "i_proj", x, cfg, out=r + "i")
    yg = bitlinear(B, P, pre + "g_proj", r + "g_proj", x, cfg, out=r + "g")
    f = B.fq_grid(B.sigmoid(yf), 1.0 / 128.0, 0, 127)  # VACT sigmoid_table (Q0.7)
    c = B.fq(r + "c", B.silu(yi))  # VACT silu_table; h shares c's scale
    sg = B.fq(r + "sg", B.silu(yg))  # VACT silu_table
    # VGATE per token: (f*h + (128-f)*c + 64) >> 7, h on the scale of c
    hseq, h = B.gate_scan(f, c, h, B.scale(r + "c") if B.quant else None)
    hn = B.fq(r + "g_norm", rmsnorm(B, hseq, B.gamma(P[pre + "g_norm"]), cfg.norm_eps))
    o_in = B.fq(r + "o_in", hn * sg)  # VMUL
    o = bitlinear(B, P, pre + "o_proj", r + "o_proj", o_in, cfg, out="res")
    return o, h


def glu(B, P, cfg: MMFreeConfig, l: int, x):
    """GLU channel mixer ``down(SiLU(gate) * up)``."""
    pre, r = f"layers.{l}.mlp.", f"l{l}."
    y = bitlinear(B, P, pre + "gate_proj", r + "gate_proj", x, cfg)
    H = cfg.hidden
    gate = B.fq(r + "gate", y[..., :H])  # VREQ (first half)
    up = B.fq(r + "up", y[..., H:])  # VREQ (second half)
    a = B.fq(r + "gate_act", B.silu(gate))  # VACT silu_table
    p = B.fq(r + "p", a * up)  # VMUL
    return bitlinear(B, P, pre + "down_proj", r + "down_proj", p, cfg, out="res")


def block(B, P, cfg: MMFreeConfig, l: int, x, h):
    """One HGRN-Bit block on ``x [..., T, d]``; returns ``(x, h)``."""
    pre, r = f"layers.{l}.", f"l{l}."
    xn = B.fq(r + "attn_norm", rmsnorm(B, x, B.gamma(P[pre + "attn_norm"]), cfg.norm_eps))
    o, h = mlgru(B, P, cfg, l, xn, h)
    x = B.residual_add(x, o)
    xn = B.fq(r + "mlp_norm", rmsnorm(B, x, B.gamma(P[pre + "mlp_norm"]), cfg.norm_eps))
    x = B.residual_add(x, glu(B, P, cfg, l, xn))
    return x, h


def head(B, P, cfg: MMFreeConfig, x):
    """Final norm + BitLinear LM head -> float logits ``[..., T, vocab]``."""
    xf = B.fq("norm", rmsnorm(B, x, B.gamma(P["norm"]), cfg.norm_eps))
    logits = bitlinear(B, P, "lm_head", "lm_head", xf, cfg)
    B.observe("logits", logits)  # int8 logits exist only for on-device argmax
    return logits


def init_state(B, cfg: MMFreeConfig, batch_shape: tuple[int, ...] = ()) -> list:
    """Zero recurrent state: one ``h [*batch_shape, d]`` per layer."""
    return [B.zeros(batch_shape + (cfg.d,)) for _ in range(cfg.n_layers)]


def forward(B, P, cfg: MMFreeConfig, tokens, state: list | None = None):
    """Logits ``[..., T, vocab]`` for ``tokens [..., T]`` and the final state."""
    x = B.fq("res", P["embed"][tokens])
    if state is None:
        state = init_state(B, cfg, tuple(tokens.shape[:-1]))
    new_state = []
    for l in range(cfg.n_layers):
        x, h = block(B, P, cfg, l, x, state[l])
        new_state.append(h)
    return head(B, P, cfg, x), new_state


def step(B, P, cfg: MMFreeConfig, token, state: list):
    """Decode one token (``token [...]``): logits ``[..., vocab]`` and the new state."""
    tok = np.asarray(token)[..., None]
    logits, state = forward(B, P, cfg, tok, state)
    return logits[..., 0, :], state


# ---------------------------------------------------------------------------- wrapper
class MMFreeModel:
    """NumPy float model bound to parameters (and QAT ranges).

    Parameters
    ----------
    cfg : MMFreeConfig
    params : mapping of str to array
        Float parameters; ``range.*`` entries give the quantization ranges.
    mode : {"apply", "float", "calibrate"}
        ``"apply"`` (default when ranges exist) runs the QAT model exactly as trained.
    """

    kind = "mmfree"

    def __init__(self, cfg: MMFreeConfig, params: Mapping[str, np.ndarray],
                 mode: str | None = None):
        self.cfg = cfg
        ranges = ranges_from_params(params)
        if mode is None:
            mode = "apply" if ranges else "float"
        self.B = NumpyBackend(mode, ranges)
        self.params = {k: np.asarray(v, np.float64) for k, v in params.items()
                       if not k.startswith("range.")}

    def forward(self, tokens) -> np.ndarray:
        """Float logits ``[..., T, vocab]`` of a full sequence from the zero state."""
        logits, _ = forward(self.B, self.params, self.cfg, np.asarray(tokens))
        return logits

    def init_state(self, batch_shape: tuple[int, ...] = ()) -> list:
        return init_state(self.B, self.cfg, batch_shape)

    def step(self, token, state):
        """``(logits [..., vocab], state)`` after one token."""
        return step(self.B, self.params, self.cfg, token, state)

    def loss(self, tokens) -> float:
        """Mean next-token cross-entropy (nats) of windows ``tokens [..., T+1]``."""
        tokens = np.asarray(tokens)
        return cross_entropy(self.forward(tokens[..., :-1]), tokens[..., 1:])
