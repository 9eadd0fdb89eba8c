"""Array backend shared by the NumPy float references and the PyTorch QAT trainer.

The float models (:mod:`.mmfree`, :mod:`.gpt`) are written once, against the small interface
of :class:`NumpyBackend`; ``host/train.py`` subclasses it with PyTorch primitives, so the
network trained with quantization-aware training (QAT) and the NumPy reference that evaluates
it are the same code.

Fake quantization
-----------------
Every place where the integer model (:mod:`.mmfree_int`, :mod:`.gpt_int`) stores an int8
tensor with a *static* scale is a named *quantization point*: the float model calls
``B.fq(name, x)`` there. A point's scale is ``range / 127`` where ``range`` is the largest
``|x|`` expected there; the forward value is ``clamp(round_half_away(x / s), -128, 127) * s``
(straight-through estimator in training). ``range`` comes from

* ``mode="train"`` (PyTorch only): an exponential moving average of the per-step maximum of
  ``|x|`` (several calls with one name in one step, like the residual stream ``"res"``, share
  one range: the step maximum over all of them);
* ``mode="calibrate"``: values pass through unquantized and ``ranges[name]`` records the
  maximum ``|x|`` seen (post-training calibration);
* ``mode="apply"``: fixed ``ranges`` (e.g. those stored in a checkpoint as ``range.<name>``).

``mode="float"`` disables all static quantization (the architecture's own quantizers, BitLinear
ternary weights and per-token absmax activations and the int8 per-channel GPT weights, stay).

Rounding follows :mod:`tritium.numerics`: ``round_half_away`` for requantization and tables,
``floor(x + 1/2)`` for the MLGRU gate (arithmetic shift); integer-valued GEMM operands make the
matrix products exact in float64, so a full-sequence forward and token-by-token decoding
produce the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tritium import numerics

__all__ = ["QUANT_MODES", "RANGE_PREFIX", "NumpyBackend", "cross_entropy", "rmsnorm"]

QUANT_MODES = ("float", "apply", "calibrate", "train")
#: Checkpoint parameter-name prefix of stored quantization ranges (``range.<point>``).
RANGE_PREFIX = "range."
#: Per-token absmax floor of the float reference (matmulfreellm ``clamp_(min=1e-5)``).
ABSMAX_EPS = 1e-5


class NumpyBackend:
    """float64 NumPy primitives plus the fake-quantization state.

    Parameters
    ----------
    mode : {"float", "apply", "calibrate"}
        See the module docstring.
    ranges : mapping of str to float, optional
        Ranges per quantization point (required by ``"apply"``).
    """

    xp = np

    def __init__(self, mode: str = "apply", ranges: Mapping[str, float] | None = None):
        if mode not in QUANT_MODES or mode == "train":
            raise ValueError(f"mode={mode!r}; NumpyBackend modes are float, apply, calibrate")
        self.mode = mode
        self.ranges: dict[str, Any] = dict(ranges or {})

    # ------------------------------------------------------------------ primitives
    def asarray(self, a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    @staticmethod
    def round(x):
        """Round half away from zero (``numerics.round_half_away`` on floats)."""
        return np.sign(x) * np.floor(np.abs(x) + 0.5)

    @staticmethod
    def floor(x):
        return np.floor(x)

    @staticmethod
    def clip(x, lo, hi):
        return np.clip(x, lo, hi)

    @staticmethod
    def abs(x):
        return np.abs(x)

    @staticmethod
    def sqrt(x):
        return np.sqrt(x)

    @staticmethod
    def amax(x):
        """Max over the last axis, keepdims."""
        return np.max(x, axis=-1, keepdims=True)

    @staticmethod
    def mean(x):
        """Mean over the last axis, keepdims."""
        return np.mean(x, axis=-1, keepdims=True)

    @staticmethod
    def maximum(x, c):
        return np.maximum(x, c)

    @staticmethod
    def sigmoid(x):
        return numerics.sigmoid(x)

    @staticmethod
    def silu(x):
        return numerics.silu(x)

    @staticmethod
    def gelu(x):
        return numerics.gelu(x)

    @staticmethod
    def softmax(x):
        m = np.max(x, axis=-1, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=-1, keepdims=True)

    @staticmethod
    def causal_mask(scores):
        """Set entries above the diagonal of the last two axes to -inf."""
        t, s = scores.shape[-2:]
        keep = np.tril(np.ones((t, s), dtype=bool), k=s - t)
        return np.where(keep, scores, -np.inf)

    @staticmethod
    def matmul(a, b):
        """``a @ b``; a stack of rows times a matrix runs as one 2-D BLAS call (batched 3-D
        matmul is far slower on a busy multi-threaded BLAS)."""
        if np.ndim(b) == 2 and np.ndim(a) > 2:
            out = np.reshape(a, (-1, a.shape[-1])) @ b
            return out.reshape(a.shape[:-1] + (b.shape[-1],))
        return a @ b

    @staticmethod
    def stack(xs: Iterable, axis: int):
        return np.stack(list(xs), axis=axis)

    @staticmethod
    def concat(xs: Iterable, axis: int):
        return np.concatenate(list(xs), axis=axis)

    @staticmethod
    def zeros(shape, like=None):
        return np.zeros(shape, dtype=np.float64)

    @staticmethod
    def ste(x, q):
        """Straight-through estimator: forward ``q``, gradient of ``x`` (NumPy: just ``q``)."""
        return q

    @staticmethod
    def detach(x):
        return x

    def gate_scan(self, f, c, h, s=None):
        """MLGRU recurrence over the time axis -2: ``h_t = f_t h_{t-1} + (1 - f_t) c_t``.

        With a static scale ``s`` each ``h_t`` is rounded as ``VGATE`` does,
        ``clamp(floor(h_t / s + 1/2), -128, 127) * s`` (``numerics.mlgru_gate``:
        ``(f*h + (128-f)*c + 64) >> 7``; the straight-through gradient is that of the float
        recurrence). Returns ``(h_seq [..., T, d], h_T)``.
        """
        hs = []
        for t in range(f.shape[-2]):
            v = f[..., t, :] * h + (1.0 - f[..., t, :]) * c[..., t, :]
            if s is not None:
                v = self.clip(self.floor(v / s + 0.5), -128, 127) * s
            h = v
            hs.append(h)
        return self.stack(hs, axis=-2), h

    # ------------------------------------------------------------------ quantization
    @property
    def quant(self) -> bool:
        """True when static fake quantization is applied."""
        return self.mode in ("apply", "train")

    def _batch_absmax(self, x):
        return float(np.max(np.abs(x))) if np.size(x) else 0.0

    def observe(self, name: str, x) -> None:
        """Record ``max|x|`` for ``name`` (calibrate mode)."""
        if self.mode == "calibrate":
            v = self._batch_absmax(x)
            if math.isfinite(v):
                self.ranges[name] = max(float(self.ranges.get(name, 0.0)), v)

    def range_of(self, name: str):
        try:
            return self.ranges[name]
        except KeyError:
            raise KeyError(
                f"no quantization range for point {name!r}; calibrate the model first or load "
                "a checkpoint trained with QAT"
            ) from None

    def scale(self, name: str):
        """Static scale (real value of one int8 step) of quantization point ``name``."""
        return self.maximum(self.range_of(name), 1e-8) / 127.0

    def fq(self, name: str, x):
        """Fake-quantize ``x`` to int8 with the static scale of point ``name``."""
        self.observe(name, x)
        if not self.quant:
            return x
        s = self.scale(name)
        return self.ste(x, self.clip(self.round(x / s), -128, 127) * s)

    def fq_grid(self, x, step: float, lo: int, hi: int):
        """Fake-quantize to a fixed grid ``k * step``, ``k`` in ``[lo, hi]`` (table formats)."""
        if not self.quant:
            return x
        return self.ste(x, self.clip(self.round(x / step), lo, hi) * step)

    def int_of(self, name: str, x):
        """Integer code of an already fake-quantized ``x`` at point ``name`` (STE-scaled)."""
        s = self.detach(self.scale(name))
        return self.ste(x / s, self.round(x / s)), s

    def absmax_int(self, u, floor):
        """Per-token absmax codes of BitLinear's activation quantizer (``VQUANT``).

        Returns ``(q, r)``: integer-valued ``q = clamp(floor(u * r + 1/2), -128, 127)`` (STE)
        with the detached per-row factor ``r = 127 / max(max|u|, floor)``, so ``u ~= q / r``.
        matmulfreellm ``activation_quant`` (``mmfreelm/ops/bitnet.py``) rounds half to even;
        ``numerics.absmax_quantize`` rounds half up, which this follows.
        """
        m = self.detach(self.maximum(self.amax(self.abs(u)), floor))
        r = 127.0 / m
        return self.ste(u * r, self.clip(self.floor(u * r + 0.5), -128, 127)), r

    def gamma(self, g):
        """RMSNorm gain as stored on the device: int8, per-tensor absmax scale."""
        if not self.quant:
            return g
        s = self.detach(self.maximum(self.amax(self.abs(g)), 1e-8) / 127.0)
        return self.ste(g, self.clip(self.round(g / s), -127, 127) * s)

    def residual_add(self, x, y, name: str = "res"):
        """``x + y`` saturated to the int8 range of the residual stream (``VADD``)."""
        v = x + y
        self.observe(name, v)
        if not self.quant:
            return v
        s = self.scale(name)
        return self.ste(v, self.clip(v, -128 * s, 127 * s))

    # ------------------------------------------------------------------ weight quantizers
    def ternary(self, w):
        """Absmean ternary weights: ``(wt, a)`` with ``w ~= wt * a``, ``wt`` in {-1, 0, 1}.

        ``wt`` carries a straight-through gradient ``1/a``; ``a`` is detached, as in
        matmulfreellm ``mmfreelm/ops/bitnet.py`` ``weight_quant`` (used via ``w + (wq -
        w).detach()`` in ``BitLinear.forward``).
        """
        a = self.detach(self.maximum(self.mean(self.abs(w).reshape(1, -1)), 1e-5)).reshape(())
        wt = self.ste(w / a, self.clip(self.round_even(w / a), -1, 1))
        return wt, a

    def int8_channel(self, w):
        """Per-output-channel int8 weights ``(wi, s)``: ``w ~= wi * s[:, None]``."""
        s = self.detach(self.maximum(self.amax(self.abs(w)), 1e-8) / 127.0)  # [N, 1]
        wi = self.ste(w / s, self.clip(self.round_even(w / s), -127, 127))
        return wi, s.reshape(-1)

    @staticmethod
    def round_even(x):
        """Round half to even (``numerics.ternary_absmean`` / ``int8_per_channel``)."""
        return np.rint(x)


def rmsnorm(B: NumpyBackend, x, g, eps: float):
    """``x / sqrt(mean(x**2) + eps) * g`` over the last axis."""
    return x / B.sqrt(B.mean(x * x) + eps) * g


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of integer ``targets`` under ``logits[..., V]``."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    t = np.asarray(targets)
    picked = np.take_along_axis(z, t[..., None], axis=-1)[..., 0]
    return float(np.mean(lse - picked))


def ranges_from_params(params: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The ``range.<point>`` entries of a checkpoint's parameters, as floats by point name."""
    n = len(RANGE_PREFIX)
    return {k[n:]: float(np.asarray(v).reshape(-1)[0]) for k, v in params.items()
            if k.startswith(RANGE_PREFIX)}
