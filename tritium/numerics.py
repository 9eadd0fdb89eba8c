"""Bit-exact integer semantics of the tritium accelerator.

This module is the single source of truth for every integer operation the hardware performs.
The RTL (:mod:`tritium.rtl`), the golden ISA interpreter (:mod:`tritium.golden`), the compiler
and the model runtime all import it, and the cocotb regressions compare the hardware against
it bit for bit.  Everything is pure NumPy, vectorised over arrays, with ``int64``
intermediates wherever a product or a sum could leave 32 bits.

Conventions
-----------
* Integers are signed two's complement unless a name says otherwise (``uint8`` packed
  weights, ``uint16`` exponent tables).
* ``>>`` is an *arithmetic* right shift, i.e. it rounds towards minus infinity (floor).
  "Rounding shifts" add half an LSB first: ``(x + (1 << (s - 1))) >> s`` rounds half up.
* ``//`` on non-negative operands is an unsigned integer divide (the hardware divider).
* Saturation ("clamp") always means clamping to the signed range of the named width.
* Every public function validates its inputs and raises :class:`ValueError` on bad shapes,
  dtypes or ranges.  Where a result cannot be represented (a contract the caller must keep,
  e.g. an ``int32`` accumulator that would overflow) :class:`OverflowError` is raised.
  Nothing ever wraps silently.

Contents
--------
* GEMM: :func:`gemm_i8` (int8 x int8 -> int32), ternary weights (:func:`pack_ternary`,
  :func:`unpack_ternary`, :func:`gemm_ternary`) and the LUT tensor core path for 1..4-bit
  weights (:func:`pack_lut_weights`, :func:`unpack_lut_weights`, :func:`lut_tables`,
  :func:`lut_lookup`, :func:`gemm_lut`).
* Requantization, bit-identical to the TFLite int8 reference kernels:
  :func:`quantize_multiplier`, :func:`multiply_by_quantized_multiplier`, :func:`requantize`.
* Elementwise: :func:`saturating_add`, :func:`mul_requantize`, :func:`mul_scalar_sat32`.
* Integer RMSNorm: :func:`isqrt`, :func:`rms_reciprocal`, :func:`rmsnorm`.
* 256-entry activation tables: :func:`make_table`, :func:`table_lookup` and builders
  :func:`sigmoid_table`, :func:`silu_table`, :func:`gelu_table`, :func:`exp_table`.
* Integer :func:`softmax`, :func:`argmax`, the MLGRU gate :func:`mlgru_gate` and dynamic
  per-token quantization :func:`absmax_quantize`.
* Host-side float quantizers (model code / QAT): :func:`ternary_absmean`,
  :func:`int8_per_channel`, :func:`absmax_quantize_float`, :func:`lowbit_symmetric`, and the
  rounding helpers :func:`round_half_away`, :func:`round_half_even`.

References
----------
* TFLite ``QuantizeMultiplier``: ``tensorflow/lite/kernels/internal/quantization_util.cc``.
* TFLite ``MultiplyByQuantizedMultiplier`` (single and double rounding):
  ``tensorflow/lite/kernels/internal/common.cc`` / ``common.h``.
* gemmlowp ``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``:
  ``fixedpoint/fixedpoint.h`` in google/gemmlowp.
* Z. Mo et al., "LUT Tensor Core: A Software-Hardware Co-Design for LUT-Based Low-Bit LLM
  Inference" (2024/2025): offset-binary bit planes and symmetric (half-size) tables.
* ridgerchu/matmulfreellm, ``mmfreelm/ops/bitnet.py`` (``weight_quant``,
  ``activation_quant``): BitNet b1.58 absmean ternary weights and per-token absmax
  activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ABSMAX_FRAC_BITS",
    "ABSMAX_INPUT_MAX",
    "ABSMAX_QMAX",
    "ACT_TABLE_SIZE",
    "EXP_ONE",
    "EXP_Q",
    "INT8_MAX",
    "INT8_MIN",
    "INT16_MAX",
    "INT16_MIN",
    "INT32_MAX",
    "INT32_MIN",
    "LUT_GROUP_SIZES",
    "LUT_MAX_BITS",
    "MLGRU_Q",
    "RMS_IN_SHIFT",
    "RMS_OUT_Q",
    "ROUNDING_MODES",
    "SHIFT_MAX",
    "SHIFT_MIN",
    "SIGMOID_OUT_SCALE",
    "SOFTMAX_OUT_MAX",
    "SOFTMAX_RECIP_SHIFT",
    "TERNARY_CODE_NEG",
    "TERNARY_CODE_POS",
    "TERNARY_CODE_RESERVED",
    "TERNARY_CODE_ZERO",
    "UINT16_MAX",
    "absmax_quantize",
    "absmax_quantize_float",
    "argmax",
    "exp",
    "exp_table",
    "gelu",
    "gelu_table",
    "gemm_i8",
    "gemm_lut",
    "gemm_ternary",
    "int8_per_channel",
    "isqrt",
    "lowbit_symmetric",
    "lut_lookup",
    "lut_table_entries",
    "lut_tables",
    "make_table",
    "mlgru_gate",
    "mul_requantize",
    "mul_scalar_sat32",
    "multiply_by_quantized_multiplier",
    "pack_lut_weights",
    "pack_ternary",
    "quantize_multiplier",
    "requantize",
    "rms_reciprocal",
    "rmsnorm",
    "round_half_away",
    "round_half_even",
    "saturating_add",
    "sigmoid",
    "sigmoid_table",
    "silu",
    "silu_table",
    "softmax",
    "table_lookup",
    "ternary_absmean",
    "unpack_lut_weights",
    "unpack_ternary",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

INT8_MIN: int = -128
INT8_MAX: int = 127
INT16_MIN: int = -(1 << 15)
INT16_MAX: int = (1 << 15) - 1
INT32_MIN: int = -(1 << 31)
INT32_MAX: int = (1 << 31) - 1
INT64_MAX: int = (1 << 63) - 1
UINT16_MAX: int = (1 << 16) - 1

#: Number of entries of an activation table (one per int8 input value, index = q + 128).
ACT_TABLE_SIZE: int = 256
#: The softmax exponent table is Q0.15: exp(0) is stored as ``EXP_ONE = 2**15 - 1``.
EXP_Q: int = 15
EXP_ONE: int = (1 << EXP_Q) - 1
#: Softmax normaliser: ``R = (SOFTMAX_OUT_MAX << SOFTMAX_RECIP_SHIFT) // sum(e)``.
SOFTMAX_RECIP_SHIFT: int = 24
SOFTMAX_OUT_MAX: int = 127
#: Dynamic per-token quantization: ``q = round(ABSMAX_QMAX * x / max|x|)``.
ABSMAX_QMAX: int = 127
#: Fraction bits of the absmax reciprocal ``R = (127 << ABSMAX_FRAC_BITS) // m``.
ABSMAX_FRAC_BITS: int = 24
#: Largest ``|x|`` accepted by :func:`absmax_quantize`.
ABSMAX_INPUT_MAX: int = 1 << 23
#: RMSNorm: sums are pre-shifted by 16 before the integer square root; 1/rms is Q.15.
RMS_IN_SHIFT: int = 16
RMS_OUT_Q: int = 15
#: MLGRU gate: the forget gate ``f`` is Q0.7 (``f / 128``).
MLGRU_Q: int = 7
#: Output scale of :func:`sigmoid_table` (outputs in [0, 127] mean [0, 127/128]).
SIGMOID_OUT_SCALE: float = 1.0 / 128.0
#: Valid range of the requantization exponent (TFLite single rounding).
SHIFT_MIN: int = -31
SHIFT_MAX: int = 30
ROUNDING_MODES: tuple[str, ...] = ("single", "double")

#: 2-bit ternary codes (little-endian within each byte, weight k at bits 2*(k%4)+1..2*(k%4)).
TERNARY_CODE_ZERO: int = 0b00
TERNARY_CODE_POS: int = 0b01
TERNARY_CODE_NEG: int = 0b11
TERNARY_CODE_RESERVED: int = 0b10  # decodes as 0
#: Activation group sizes supported by the LUT tensor core, and the widest weight.
LUT_GROUP_SIZES: tuple[int, ...] = (1, 2, 4, 8)
LUT_MAX_BITS: int = 4

# Exact float64 BLAS is used for integer GEMMs whose every partial sum is below 2**53.
_F64_EXACT: int = 1 << 53
# Upper bound on the number of int64 elements a chunk of the LUT gather may materialise.
_LUT_CHUNK_ELEMS: int = 1 << 22


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _int_array(x: Any, name: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Return ``x`` as an ``int64`` array after checking it holds integers in ``[lo, hi]``."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name} has values above the int64 range")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (lo is not None or hi is not None):
        amin, amax = int(arr.min()), int(arr.max())
        if lo is not None and amin < lo:
            raise ValueError(f"{name} has value {amin} below the allowed range [{lo}, {hi}]")
        if hi is not None and amax > hi:
            raise ValueError(f"{name} has value {amax} above the allowed range [{lo}, {hi}]")
    return arr


def _int_scalar(x: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``x`` as a Python int after checking it is an integer scalar in ``[lo, hi]``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"{name} must be an integer scalar, got {x!r}")  # noqa: TRY004
    v = int(x)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name}={v} out of range [{lo}, {hi}]")
    return v


def _float_array(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite ``float64`` array."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _pos_float(x: Any, name: str) -> float:
    """Return ``x`` as a finite, strictly positive Python float."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {x!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name}={v!r} must be finite and > 0")
    return v


def _check_ndim(arr: np.ndarray, ndim: int, name: str) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")


def _check_rows(arr: np.ndarray, name: str) -> None:
    """Row-wise ops need at least one axis with at least one element on it."""
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last axis, got shape {arr.shape}")


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding={rounding!r} must be one of {ROUNDING_MODES}")


def _to_int32(v: np.ndarray, what: str) -> np.ndarray:
    """Cast an int64 array to int32, raising OverflowError if any value does not fit."""
    if v.size and (int(v.min()) < INT32_MIN or int(v.max()) > INT32_MAX):
        raise OverflowError(f"{what} does not fit in int32 (range [{v.min()}, {v.max()}])")
    return v.astype(np.int32)


def _exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """Exact ``a @ b`` for int64 matrices whose partial sums are bounded by ``bound``.

    float64 BLAS is exact when every product and partial sum is an integer below 2**53 in
    magnitude (any summation order is then exact), which is much faster than NumPy's integer
    matmul.  Otherwise fall back to int64 (exact as long as no int64 overflow occurs, which
    the callers' bounds guarantee).
    """
    if bound < _F64_EXACT:
        return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


# --------------------------------------------------------------------------------------------
# Rounding helpers
# --------------------------------------------------------------------------------------------


def round_half_away(x: npt.ArrayLike) -> np.ndarray:
    """Round to nearest, ties away from zero (C ``std::round`` / TFLite ``TfLiteRound``).

    Parameters
    ----------
    x : array_like of float
        Finite values with ``|x| < 2**63``.

    Returns
    -------
    numpy.ndarray of int64
        Same shape as ``x``.

    Notes
    -----
    Computed as ``trunc(x) + sign(x) * (|x - trunc(x)| >= 0.5)``; ``x - trunc(x)`` is exact in
    binary floating point, so unlike ``floor(x + 0.5)`` this never double-rounds (e.g.
    ``0.49999999999999994`` rounds to 0).
    """
    arr = _float_array(x, "x")
    if arr.size and float(np.max(np.abs(arr))) >= 2.0**63:
        raise ValueError("x has values outside the int64 range")
    t = np.trunc(arr)
    frac = np.abs(arr - t)
    r = t + np.sign(arr) * (frac >= 0.5)
    if r.size and float(np.max(np.abs(r))) >= 2.0**63:
        raise ValueError("x rounds outside the int64 range")
    return r.astype(np.int64)


def round_half_even(x: npt.ArrayLike) -> np.ndarray:
    """Round to nearest, ties to even (IEEE default, ``numpy.rint``, ``torch.round``).

    Parameters
    ----------
    x : array_like of float
        Finite values with ``|x| < 2**63``.

    Returns
    -------
    numpy.ndarray of int64
    """
    arr = _float_array(x, "x")
    r = np.rint(arr)
    if r.size and float(np.max(np.abs(r))) >= 2.0**63:
        raise ValueError("x has values outside the int64 range")
    return r.astype(np.int64)


# --------------------------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------------------------


def gemm_i8(a: npt.ArrayLike, w: npt.ArrayLike, w_transposed: bool = False) -> np.ndarray:
    """Exact int8 x int8 matrix product with an int32 result.

    ``out[m, n] = sum_k a[m, k] * w[n, k]``.

    Parameters
    ----------
    a : array_like of int, shape (M, K)
        Activations, values in [-128, 127].
    w : array_like of int, shape (N, K), or (K, N) if ``w_transposed``
        Weights; row ``n`` holds the weights of output channel ``n``.  Values in [-128, 127].
    w_transposed : bool, optional
        If true, ``w`` is given as ``[K, N]``.

    Returns
    -------
    numpy.ndarray of int32, shape (M, N)

    Raises
    ------
    ValueError
        On non-2-D inputs, mismatched ``K`` or values outside int8.
    OverflowError
        If an output does not fit in int32 (possible only for ``K > 2**17``).
    """
    a_ = _int_array(a, "a", INT8_MIN, INT8_MAX)
    w_ = _int_array(w, "w", INT8_MIN, INT8_MAX)
    _check_ndim(a_, 2, "a")
    _check_ndim(w_, 2, "w")
    wt = w_ if w_transposed else w_.T  # [K, N]
    if a_.shape[1] != wt.shape[0]:
        raise ValueError(f"K mismatch: a is {a_.shape}, w is {w_.shape} "
                         f"(w_transposed={w_transposed})")
    k = a_.shape[1]
    out = _exact_matmul(a_, wt, k * (1 << 14))
    return _to_int32(out, "gemm_i8 result")


def _ternary_codes(packed: np.ndarray) -> np.ndarray:
    """uint8[N, K/4] -> 2-bit codes int64[N, K] (weight k at bits 2*(k%4)+1..2*(k%4))."""
    shifts = np.arange(0, 8, 2, dtype=np.int64)
    codes = (packed[:, :, None] >> shifts) & 0b11
    return codes.reshape(packed.shape[0], -1)


def _check_packed_ternary(packed: Any, k: Any) -> tuple[np.ndarray, int]:
    p = _int_array(packed, "packed", 0, 255)
    _check_ndim(p, 2, "packed")
    k_ = _int_scalar(k, "K", 1)
    if k_ % 4:
        raise ValueError(f"K={k_} must be a multiple of 4")
    if p.shape[1] != k_ // 4:
        raise ValueError(f"packed has {p.shape[1]} bytes per row, K={k_} needs {k_ // 4}")
    return p, k_


def pack_ternary(w: npt.ArrayLike) -> np.ndarray:
    """Pack ternary weights, four per byte.

    Weight ``k`` of a row lives at bits ``[2*(k%4)+1 : 2*(k%4)]`` of byte ``k // 4``
    (little-endian within the byte).  Codes: ``0b00 = 0``, ``0b01 = +1``, ``0b11 = -1``;
    ``0b10`` is reserved (never produced, decodes as 0).

    Parameters
    ----------
    w : array_like of int, shape (N, K)
        Values in {-1, 0, 1}; ``K`` a positive multiple of 4.

    Returns
    -------
    numpy.ndarray of uint8, shape (N, K // 4)
    """
    w_ = _int_array(w, "w", -1, 1)
    _check_ndim(w_, 2, "w")
    n, k = w_.shape
    if k < 1 or k % 4:
        raise ValueError(f"K={k} must be a positive multiple of 4")
    codes = np.where(w_ == 1, TERNARY_CODE_POS, np.where(w_ == -1, TERNARY_CODE_NEG, 0))
    codes = codes.reshape(n, k // 4, 4) << np.arange(0, 8, 2, dtype=np.int64)
    return codes.sum(axis=2).astype(np.uint8)


def unpack_ternary(packed: npt.ArrayLike, K: int) -> np.ndarray:
    """Inverse of :func:`pack_ternary`.

    Parameters
    ----------
    packed : array_like of uint8, shape (N, K // 4)
    K : int
        Number of weights per row (positive multiple of 4).

    Returns
    -------
    numpy.ndarray of int8, shape (N, K)
        Values in {-1, 0, 1}; the reserved code ``0b10`` decodes as 0.
    """
    p, _ = _check_packed_ternary(packed, K)
    codes = _ternary_codes(p)
    out = np.where(codes == TERNARY_CODE_POS, 1, np.where(codes == TERNARY_CODE_NEG, -1, 0))
    return out.astype(np.int8)


def gemm_ternary(a: npt.ArrayLike, packed: npt.ArrayLike, K: int) -> np.ndarray:
    """int8 activations times packed ternary weights, by add / subtract / skip.

    ``out[m, n] = sum_{k: w=+1} a[m, k] - sum_{k: w=-1} a[m, k]``, which equals
    ``gemm_i8(a, unpack_ternary(packed, K))``.

    Parameters
    ----------
    a : array_like of int, shape (M, K)
        Activations in [-128, 127].
    packed : array_like of uint8, shape (N, K // 4)
        Weights as produced by :func:`pack_ternary`.
    K : int
        Reduction length (positive multiple of 4).

    Returns
    -------
    numpy.ndarray of int32, shape (M, N)
    """
    p, k = _check_packed_ternary(packed, K)
    a_ = _int_array(a, "a", INT8_MIN, INT8_MAX)
    _check_ndim(a_, 2, "a")
    if a_.shape[1] != k:
        raise ValueError(f"a has K={a_.shape[1]}, packed weights have K={k}")
    codes = _ternary_codes(p)
    add = (codes == TERNARY_CODE_POS).astype(np.int64)  # [N, K]
    sub = (codes == TERNARY_CODE_NEG).astype(np.int64)
    bound = k * (1 << 7)
    out = _exact_matmul(a_, add.T, bound) - _exact_matmul(a_, sub.T, bound)
    return _to_int32(out, "gemm_ternary result")


def lut_table_entries(g: int) -> int:
    """Entries of one symmetric LUT for a group of ``g`` activations: ``2**(g-1)``."""
    g_ = _check_group(g)
    return 1 << (g_ - 1)


def _check_group(g: Any) -> int:
    g_ = _int_scalar(g, "g")
    if g_ not in LUT_GROUP_SIZES:
        raise ValueError(f"g={g_} must be one of {LUT_GROUP_SIZES}")
    return g_


def _check_bits(bits: Any) -> int:
    return _int_scalar(bits, "bits", 1, LUT_MAX_BITS)


def _check_packed_lut(packed: Any, bits: Any, k: Any) -> tuple[np.ndarray, int, int]:
    b = _check_bits(bits)
    k_ = _int_scalar(k, "K", 1)
    if k_ % 8:
        raise ValueError(f"K={k_} must be a multiple of 8")
    p = _int_array(packed, "packed", 0, 255)
    _check_ndim(p, 3, "packed")
    if p.shape[1:] != (b, k_ // 8):
        raise ValueError(f"packed has shape {p.shape}, expected (N, {b}, {k_ // 8}) for "
                         f"bits={b}, K={k_}")
    return p, b, k_


def pack_lut_weights(w: npt.ArrayLike, bits: int) -> np.ndarray:
    """Pack signed ``bits``-bit weights into offset-binary bit planes (LUT tensor core).

    With ``u = q + 2**(bits-1)`` in ``[0, 2**bits)``, plane ``i`` of row ``n`` holds bit ``i``
    of ``u``: byte ``j``, bit ``t`` is bit ``i`` of ``u[n, 8*j + t]``.  Flattened row-major,
    the result is the device layout: per output channel, planes ``i = 0 .. bits-1``, each
    ``K / 8`` bytes.

    Parameters
    ----------
    w : array_like of int, shape (N, K)
        Values in ``[-2**(bits-1), 2**(bits-1) - 1]``; ``K`` a positive multiple of 8.
    bits : int
        Weight width, 1..4.  ``bits = 1`` represents {-1, 0}.

    Returns
    -------
    numpy.ndarray of uint8, shape (N, bits, K // 8)
    """
    b = _check_bits(bits)
    half = 1 << (b - 1)
    w_ = _int_array(w, "w", -half, half - 1)
    _check_ndim(w_, 2, "w")
    k = w_.shape[1]
    if k < 1 or k % 8:
        raise ValueError(f"K={k} must be a positive multiple of 8")
    u = w_ + half
    planes = (u[:, None, :] >> np.arange(b, dtype=np.int64)[None, :, None]) & 1  # [N, b, K]
    return np.packbits(planes.astype(np.uint8), axis=-1, bitorder="little")


def unpack_lut_weights(packed: npt.ArrayLike, bits: int, K: int) -> np.ndarray:
    """Inverse of :func:`pack_lut_weights`.

    Parameters
    ----------
    packed : array_like of uint8, shape (N, bits, K // 8)
    bits : int
        Weight width, 1..4.
    K : int
        Weights per row (positive multiple of 8).

    Returns
    -------
    numpy.ndarray of int8, shape (N, K)
    """
    p, b, k = _check_packed_lut(packed, bits, K)
    planes = _lut_planes(p, k)  # [N, b, K]
    u = (planes << np.arange(b, dtype=np.int64)[None, :, None]).sum(axis=1)
    return (u - (1 << (b - 1))).astype(np.int8)


def _lut_planes(p: np.ndarray, k: int) -> np.ndarray:
    """uint8[N, b, K/8] -> bits int64[N, b, K]."""
    return np.unpackbits(p.astype(np.uint8), axis=-1, count=k, bitorder="little").astype(
        np.int64
    )


def lut_tables(a_group_row: npt.ArrayLike, g: int) -> np.ndarray:
    """Build the symmetric (half-size) lookup tables for groups of ``g`` activations.

    For a group ``x_0 .. x_{g-1}`` and ``p`` in ``[0, 2**(g-1))``:
    ``T[p] = x_{g-1} + sum_{j < g-1} (x_j if bit j of p else -x_j)``, i.e. the dot product of
    the group with the sign vector whose top sign is fixed at +1.  The other half of the
    full ``2**g`` table is the negation (see :func:`lut_lookup`).

    Parameters
    ----------
    a_group_row : array_like of int, shape (..., g)
        Activations in [-128, 127]; the last axis is one group.
    g : int
        Group size, one of 1, 2, 4, 8.

    Returns
    -------
    numpy.ndarray of int32, shape (..., 2**(g-1))
        ``|T| <= 128 * g``.
    """
    g_ = _check_group(g)
    x = _int_array(a_group_row, "a_group_row", INT8_MIN, INT8_MAX)
    if x.ndim < 1 or x.shape[-1] != g_:
        raise ValueError(f"a_group_row must have last axis of length g={g_}, got {x.shape}")
    return _lut_tables_i64(x, g_).astype(np.int32)


def _lut_tables_i64(x: np.ndarray, g: int) -> np.ndarray:
    e = 1 << (g - 1)
    p = np.arange(e, dtype=np.int64)
    signs = 2 * ((p[:, None] >> np.arange(g - 1, dtype=np.int64)[None, :]) & 1) - 1  # [e, g-1]
    return x[..., g - 1 : g] + (x[..., None, : g - 1] * signs).sum(axis=-1)


def lut_lookup(table: npt.ArrayLike, pattern: npt.ArrayLike, g: int) -> np.ndarray:
    """Look up a full ``g``-bit sign pattern in a symmetric table.

    Bit ``j`` of ``pattern`` is the offset-binary bit of weight ``j`` of the group (1 means
    sign +1, 0 means -1).  If bit ``g-1`` is set the result is ``T[P & (2**(g-1) - 1)]``,
    otherwise ``-T[~P & (2**(g-1) - 1)]``.

    Parameters
    ----------
    table : array_like of int, shape (..., 2**(g-1))
        Tables from :func:`lut_tables`.
    pattern : array_like of int, broadcastable to ``table.shape[:-1]``
        Patterns in ``[0, 2**g)``.
    g : int
        Group size, one of 1, 2, 4, 8.

    Returns
    -------
    numpy.ndarray of int32
        ``sum_j (2 * bit_j(P) - 1) * x_j``.
    """
    g_ = _check_group(g)
    e = 1 << (g_ - 1)
    t = _int_array(table, "table", INT32_MIN, INT32_MAX)
    if t.ndim < 1 or t.shape[-1] != e:
        raise ValueError(f"table must have last axis of length 2**(g-1)={e}, got {t.shape}")
    pat = _int_array(pattern, "pattern", 0, (1 << g_) - 1)
    try:
        shape = np.broadcast_shapes(t.shape[:-1], pat.shape)
    except ValueError:
        raise ValueError(f"pattern shape {pat.shape} does not broadcast with table "
                         f"shape {t.shape[:-1]}") from None
    top = (pat >> (g_ - 1)) & 1
    idx = np.where(top == 1, pat, ~pat) & (e - 1)
    t_b = np.broadcast_to(t, shape + (e,))
    idx_b = np.broadcast_to(idx, shape)[..., None]
    vals = np.take_along_axis(t_b, idx_b, axis=-1)[..., 0]
    return _to_int32(np.where(np.broadcast_to(top, shape) == 1, vals, -vals), "lut_lookup")


def gemm_lut(a: npt.ArrayLike, packed: npt.ArrayLike, bits: int, K: int, g: int) -> np.ndarray:
    """int8 activations times bit-plane packed low-bit weights, the LUT tensor core way.

    For each row of ``a`` and each group of ``g`` activations, build the ``2**(g-1)``-entry
    symmetric table (:func:`lut_tables`).  For each bit plane ``i``, each group's ``g``
    weight bits form a pattern that is looked up (:func:`lut_lookup`) and summed over the
    groups into ``partial_i = dot(s_i, a)`` with ``s_i = 2 * bit_i - 1``.  Then
    ``total = sum_i partial_i << i`` and ``out = (total - sum(a_row)) >> 1`` (``total -
    sum(a)`` is always even, so the shift is exact).  Since ``q = (sum_i 2**i s_i - 1) / 2``
    this equals ``gemm_i8(a, unpack_lut_weights(packed, bits, K))``.

    Parameters
    ----------
    a : array_like of int, shape (M, K)
        Activations in [-128, 127].
    packed : array_like of uint8, shape (N, bits, K // 8)
        Weights from :func:`pack_lut_weights`.
    bits : int
        Weight width, 1..4.
    K : int
        Reduction length; a positive multiple of 8 (hence of every ``g``).
    g : int
        Activation group size, one of 1, 2, 4, 8.

    Returns
    -------
    numpy.ndarray of int32, shape (M, N)
    """
    p, b, k = _check_packed_lut(packed, bits, K)
    g_ = _check_group(g)
    if k % g_:
        raise ValueError(f"K={k} must be a multiple of g={g_}")
    a_ = _int_array(a, "a", INT8_MIN, INT8_MAX)
    _check_ndim(a_, 2, "a")
    if a_.shape[1] != k:
        raise ValueError(f"a has K={a_.shape[1]}, packed weights have K={k}")
    m, n, ng, e = a_.shape[0], p.shape[0], k // g_, 1 << (g_ - 1)

    tables = _lut_tables_i64(a_.reshape(m, ng, g_), g_)  # [M, G, e]
    planes = _lut_planes(p, k).reshape(n, b, ng, g_)  # [N, b, G, g]
    pats = (planes << np.arange(g_, dtype=np.int64)).sum(axis=-1)  # [N, b, G]
    top = (pats >> (g_ - 1)) & 1
    idx = np.where(top == 1, pats, ~pats) & (e - 1)  # [N, b, G]
    sign = 2 * top - 1
    grp = np.arange(ng)

    total = np.zeros((m, n), dtype=np.int64)
    rows = max(1, _LUT_CHUNK_ELEMS // max(1, n * ng))
    for m0 in range(0, m, rows):
        t = tables[m0 : m0 + rows]  # [mc, G, e]
        for i in range(b):
            looked = t[:, grp[None, :], idx[:, i, :]]  # [mc, N, G]
            partial = (looked * sign[None, :, i, :]).sum(axis=-1)  # dot(s_i, a)
            total[m0 : m0 + rows] += partial << i
    num = total - a_.sum(axis=1)[:, None]
    assert not np.any(num & 1), "LUT GEMM numerator must be even"
    return _to_int32(num >> 1, "gemm_lut result")


# --------------------------------------------------------------------------------------------
# Requantization (TFLite / gemmlowp)
# --------------------------------------------------------------------------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Quantize a non-negative real multiplier as ``M0 * 2**(shift - 31)``.

    Exactly TFLite's ``QuantizeMultiplier`` (``tensorflow/lite/kernels/internal/
    quantization_util.cc``, single-rounding build): ``real == 0 -> (0, 0)``; otherwise
    ``q, shift = frexp(real)`` (``q`` in [0.5, 1)), ``M0 = round_half_away(q * 2**31)``; if
    ``M0 == 2**31`` then ``M0 //= 2; shift += 1``; if ``shift < -31`` the multiplier is
    flushed to ``(0, 0)``; if ``shift > 30`` it saturates to ``(2**31 - 1, 30)``.

    Parameters
    ----------
    real : float
        Finite, ``>= 0``.

    Returns
    -------
    M0 : int
        In ``[0, 2**31 - 1]``; ``M0 >= 2**30`` unless the multiplier was flushed to zero.
    shift : int
        In ``[-31, 30]``; positive means a left shift.

    Notes
    -----
    For ``2**-32 <= real < 2**31`` (no flush / saturation) the relative error of
    ``M0 * 2**(shift - 31)`` is at most ``2**-31``.
    """
    if isinstance(real, (bool, np.bool_)):
        raise ValueError(f"real must be a float, got {real!r}")  # noqa: TRY004
    try:
        r = float(real)
    except (TypeError, ValueError):
        raise ValueError(f"real must be a float, got {real!r}") from None
    if not math.isfinite(r):
        raise ValueError(f"real={r!r} must be finite")
    if r < 0.0:
        raise ValueError(f"real={r!r} must be >= 0 (single-rounding multipliers are unsigned)")
    if r == 0.0:
        return 0, 0
    q, shift = math.frexp(r)
    q_fixed = int(round_half_away(q * float(1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < SHIFT_MIN:
        shift, q_fixed = 0, 0
    if shift > SHIFT_MAX:
        shift, q_fixed = SHIFT_MAX, INT32_MAX
    return q_fixed, shift


def _check_multiplier(m0: Any, shift: Any) -> tuple[np.ndarray, np.ndarray]:
    m = _int_array(m0, "M0")
    s = _int_array(shift, "shift")
    if m.size and (int(m.min()) < 0 or int(m.max()) > INT32_MAX):
        bad = int(m.min()) if int(m.min()) < 0 else int(m.max())
        raise ValueError(f"M0={bad} out of range [0, {INT32_MAX}]")
    if s.size and (int(s.min()) < SHIFT_MIN or int(s.max()) > SHIFT_MAX):
        bad = int(s.min()) if int(s.min()) < SHIFT_MIN else int(s.max())
        raise ValueError(f"shift={bad} out of range [{SHIFT_MIN}, {SHIFT_MAX}]")
    return m, s


def _trunc_div_pow2(v: np.ndarray, e: int) -> np.ndarray:
    """C-style (truncating) division of int64 ``v`` by ``2**e``."""
    return np.where(v >= 0, v >> e, -((-v) >> e))


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32-valued int64 arrays."""
    overflow = (a == b) & (a == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _trunc_div_pow2(ab + nudge, 31)
    return np.where(overflow, INT32_MAX, high)


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT`` (round half away from zero), exponent in [0, 31]."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _mbqm(
    x: np.ndarray, m: np.ndarray, s: np.ndarray, rounding: str, strict: bool = True
) -> np.ndarray:
    """MultiplyByQuantizedMultiplier on validated int64 arrays; returns int64.

    With ``strict`` (the TFLite function itself) a single-rounding result outside int32 raises;
    without it (:func:`requantize`) the wide result is returned for the caller's clamp.
    """
    if rounding == "single":
        total_shift = 31 - s
        rnd = np.int64(1) << (total_shift - 1)
        out = (x * m + rnd) >> total_shift
        if strict and out.size and (int(out.min()) < INT32_MIN or int(out.max()) > INT32_MAX):
            raise OverflowError(
                "multiply_by_quantized_multiplier: result does not fit in int32 "
                f"(range [{out.min()}, {out.max()}]); TFLite treats this as undefined"
            )
        return out
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    xl = x << left
    if xl.size and (int(xl.min()) < INT32_MIN or int(xl.max()) > INT32_MAX):
        raise OverflowError(
            "multiply_by_quantized_multiplier (double rounding): x * 2**shift overflows int32 "
            "(undefined behaviour in TFLite/gemmlowp)"
        )
    return _rounding_divide_by_pot(_srdhm(xl, m), right)


def multiply_by_quantized_multiplier(
    x: npt.ArrayLike, M0: npt.ArrayLike, shift: npt.ArrayLike, rounding: str = "single"
) -> np.ndarray:
    """Fixed-point multiply ``x * M0 * 2**(shift - 31)``, rounded, as TFLite does.

    ``rounding="single"`` is TFLite's ``MultiplyByQuantizedMultiplier`` built with
    ``TFLITE_SINGLE_ROUNDING`` (``tensorflow/lite/kernels/internal/common.cc``)::

        total_shift = 31 - shift
        result = (x * M0 + (1 << (total_shift - 1))) >> total_shift   # int64, floor shift

    i.e. round half up.  ``rounding="double"`` is the classic gemmlowp path::

        RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**max(shift, 0), M0),
                            max(-shift, 0))

    with gemmlowp's definitions (``fixedpoint/fixedpoint.h``): the doubling high multiply
    rounds half away from zero with a truncating division, and RoundingDivideByPOT rounds
    half away from zero.

    Parameters
    ----------
    x : array_like of int
        Values in int32 range.
    M0 : array_like of int
        Multiplier(s) in ``[0, 2**31 - 1]``, broadcast against ``x``.
    shift : array_like of int
        Exponent(s) in ``[-31, 30]``, broadcast against ``x``.
    rounding : {"single", "double"}

    Returns
    -------
    numpy.ndarray of int32
        Broadcast shape of the inputs.

    Raises
    ------
    ValueError
        On out-of-range inputs or an unknown rounding mode.
    OverflowError
        Single rounding: if a result does not fit in int32 (TFLite ``DCHECK``s this).
        Double rounding: if ``x * 2**shift`` overflows int32 (undefined behaviour in C).
    """
    _check_rounding(rounding)
    x_ = _int_array(x, "x", INT32_MIN, INT32_MAX)
    m, s = _check_multiplier(M0, shift)
    try:
        x_, m, s = np.broadcast_arrays(x_, m, s)
    except ValueError:
        raise ValueError(f"x {x_.shape}, M0 {m.shape} and shift {s.shape} do not broadcast") \
            from None
    return _mbqm(x_, m, s, rounding).astype(np.int32)


def _channel_param(v: Any, name: str, acc_shape: tuple[int, ...]) -> np.ndarray:
    """Validate a per-tensor (scalar) or per-channel (last axis) parameter."""
    arr = np.asarray(v)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-D per-channel array, got {arr.shape}")
    if arr.ndim == 1:
        n = acc_shape[-1] if acc_shape else None
        if arr.shape[0] not in (1, n):
            raise ValueError(f"{name} has {arr.shape[0]} channels, the last axis of the "
                             f"accumulator has {n}")
    return arr


def requantize(
    acc: npt.ArrayLike,
    M0: npt.ArrayLike,
    shift: npt.ArrayLike,
    zero_point: int = 0,
    qmin: int = INT8_MIN,
    qmax: int = INT8_MAX,
    rounding: str = "single",
) -> np.ndarray:
    """Requantize int32 accumulators: ``clamp(mbqm(acc, M0, shift) + zero_point, qmin, qmax)``.

    Bit-identical to the TFLite int8 reference kernels' output stage.  Where TFLite's
    ``DCHECK`` would fire (single rounding: the scaled value leaves int32, possible only with
    large positive shifts) the device keeps the 64-bit value and the clamp saturates it, so
    requantization never traps on data.

    Parameters
    ----------
    acc : array_like of int, shape (..., N)
        Accumulators in int32 range.
    M0, shift : int or array_like of int, shape (N,)
        Per-tensor scalars or per-channel arrays broadcast along the LAST axis (channel =
        column ``n`` of an ``[M, N]`` accumulator).  See
        :func:`multiply_by_quantized_multiplier` for ranges.
    zero_point : int
        Output zero point, int32 range.
    qmin, qmax : int
        Clamp bounds, ``INT32_MIN <= qmin <= qmax <= INT32_MAX``.
    rounding : {"single", "double"}

    Returns
    -------
    numpy.ndarray of int8 if ``[qmin, qmax]`` lies within int8, else int32.
    """
    _check_rounding(rounding)
    a = _int_array(acc, "acc", INT32_MIN, INT32_MAX)
    m_arr = _channel_param(M0, "M0", a.shape)
    s_arr = _channel_param(shift, "shift", a.shape)
    m, s = _check_multiplier(m_arr, s_arr)
    zp = _int_scalar(zero_point, "zero_point", INT32_MIN, INT32_MAX)
    lo = _int_scalar(qmin, "qmin", INT32_MIN, INT32_MAX)
    hi = _int_scalar(qmax, "qmax", INT32_MIN, INT32_MAX)
    if lo > hi:
        raise ValueError(f"qmin={lo} > qmax={hi}")
    a, m, s = np.broadcast_arrays(a, m, s)
    y = np.clip(_mbqm(a, m, s, rounding, strict=False) + zp, lo, hi)
    out_dtype = np.int8 if (lo >= INT8_MIN and hi <= INT8_MAX) else np.int32
    return y.astype(out_dtype)


# --------------------------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------------------------


def saturating_add(a: npt.ArrayLike, b: npt.ArrayLike, bits: int = 8) -> np.ndarray:
    """Saturating signed addition: ``clamp(a + b)`` to the signed ``bits`` range.

    Parameters
    ----------
    a, b : array_like of int
        Broadcastable; values within the signed ``bits`` range.
    bits : {8, 32}

    Returns
    -------
    numpy.ndarray of int8 (``bits=8``) or int32 (``bits=32``)
    """
    if bits not in (8, 32) or isinstance(bits, bool):
        raise ValueError(f"bits={bits!r} must be 8 or 32")
    lo, hi = (INT8_MIN, INT8_MAX) if bits == 8 else (INT32_MIN, INT32_MAX)
    a_ = _int_array(a, "a", lo, hi)
    b_ = _int_array(b, "b", lo, hi)
    try:
        s = np.clip(a_ + b_, lo, hi)
    except ValueError:
        raise ValueError(f"a {a_.shape} and b {b_.shape} do not broadcast") from None
    return s.astype(np.int8 if bits == 8 else np.int32)


def mul_requantize(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    M0: npt.ArrayLike,
    shift: npt.ArrayLike,
    zero_point: int = 0,
    rounding: str = "single",
) -> np.ndarray:
    """Elementwise int8 product, requantized to int8.

    ``requantize(int32(a) * int32(b), M0, shift, zero_point)`` (the product is exact:
    ``|a * b| <= 2**14``).

    Parameters
    ----------
    a, b : array_like of int
        Broadcastable, int8 range.
    M0, shift : int or array_like of int, shape (N,)
        As in :func:`requantize` (per-tensor or per last-axis channel).
    zero_point : int
    rounding : {"single", "double"}

    Returns
    -------
    numpy.ndarray of int8
    """
    a_ = _int_array(a, "a", INT8_MIN, INT8_MAX)
    b_ = _int_array(b, "b", INT8_MIN, INT8_MAX)
    try:
        prod = a_ * b_
    except ValueError:
        raise ValueError(f"a {a_.shape} and b {b_.shape} do not broadcast") from None
    return requantize(prod, M0, shift, zero_point, INT8_MIN, INT8_MAX, rounding)


def mul_scalar_sat32(x: npt.ArrayLike, s: npt.ArrayLike) -> np.ndarray:
    """Multiply int32 values by an int32 scale, saturating to int32.

    Used to apply a per-token absmax scale to accumulators.

    Parameters
    ----------
    x : array_like of int, shape (..., N)
        int32 range.
    s : int or array_like of int
        A scalar, or per-row scales of shape ``x.shape[:-1]`` (e.g. ``x`` is ``[M, N]`` and
        ``s`` is ``[M]``), broadcast along the last axis.  int32 range.

    Returns
    -------
    numpy.ndarray of int32
        ``clamp(x * s, INT32_MIN, INT32_MAX)`` (the product is exact in int64).
    """
    x_ = _int_array(x, "x", INT32_MIN, INT32_MAX)
    s_ = _int_array(s, "s", INT32_MIN, INT32_MAX)
    if s_.ndim:
        if x_.ndim < 1 or s_.shape != x_.shape[:-1]:
            raise ValueError(f"s must be a scalar or have shape x.shape[:-1]; got s {s_.shape}"
                             f", x {x_.shape}")
        s_ = s_[..., None]
    return np.clip(x_ * s_, INT32_MIN, INT32_MAX).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Integer RMSNorm
# --------------------------------------------------------------------------------------------


def isqrt(v: Any) -> Any:
    """Exact integer square root ``floor(sqrt(v))`` for non-negative integers.

    Parameters
    ----------
    v : int or array_like of int
        Non-negative.  A Python ``int`` may be arbitrarily large; arrays must be int64-range.

    Returns
    -------
    int or numpy.ndarray of int64
        A Python ``int`` for a Python ``int`` (or NumPy integer scalar) input, else an array.

    Notes
    -----
    Arrays use a float64 estimate followed by exact integer corrections (comparisons are
    made by division so nothing overflows int64).
    """
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        if v < 0:
            raise ValueError(f"isqrt of negative value {int(v)}")
        return math.isqrt(int(v))
    x = _int_array(v, "v", 0)
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    for _ in range(4):  # float64 estimate is off by at most one; iterate to be safe
        too_big = (r > 0) & (r > x // np.maximum(r, 1))  # r * r > x
        r = r - too_big
        r1 = r + 1
        too_small = r1 <= x // r1  # (r + 1)**2 <= x
        r = r + too_small
        if not (np.any(too_big) or np.any(too_small)):
            break
    return r


def rms_reciprocal(sum_sq: Any, n: int) -> Any:
    """Integer reciprocal RMS: ``r = (isqrt(n << 16) << 15) // max(isqrt(sum_sq << 16), 1)``.

    ``r ~= 2**15 / rms`` with ``rms = sqrt(sum_sq / n)`` (both square roots carry 8 fraction
    bits).  For ``sum_sq == 0`` the divisor is 1.

    Parameters
    ----------
    sum_sq : int or array_like of int
        Sum of squares of a row, ``>= 0``.  ``sum_sq << 16`` must fit int64 for arrays.
    n : int
        Row length, ``>= 1``.

    Returns
    -------
    int or numpy.ndarray of int64
        Python ``int`` for a scalar ``sum_sq``.
    """
    n_ = _int_scalar(n, "n", 1, 1 << 40)
    num = math.isqrt(n_ << RMS_IN_SHIFT) << RMS_OUT_Q
    if isinstance(sum_sq, (int, np.integer)) and not isinstance(sum_sq, (bool, np.bool_)):
        if sum_sq < 0:
            raise ValueError(f"sum_sq={int(sum_sq)} must be >= 0")
        return num // max(math.isqrt(int(sum_sq) << RMS_IN_SHIFT), 1)
    ss = _int_array(sum_sq, "sum_sq", 0, INT64_MAX >> RMS_IN_SHIFT)
    return np.int64(num) // np.maximum(isqrt(ss << RMS_IN_SHIFT), 1)


def rmsnorm(
    x: npt.ArrayLike,
    gamma: npt.ArrayLike,
    M0: int,
    shift: int,
    zero_point: int = 0,
    rounding: str = "single",
) -> np.ndarray:
    """Integer RMSNorm over the last axis.

    Per row: ``ss = sum(x**2)`` (int64), ``r = rms_reciprocal(ss, n)``,
    ``t_i = x_i * gamma_i * r`` (must fit int32), ``y = requantize(t, M0, shift, zero_point)``.

    Float meaning: ``y ~= x / rms(x) * gamma * 2**15 * real + zero_point`` with
    ``real = M0 * 2**(shift - 31)`` and ``rms(x) = sqrt(mean(x**2))``.  The input scale
    cancels; with gamma scale ``s_g`` and output scale ``s_y`` choose
    ``real = s_g / (2**15 * s_y)``.  There is no explicit epsilon: both square roots are
    floors with 8 fraction bits, and the divisor is clamped to ``>= 1`` (an all-zero row
    gives ``t = 0``), which plays the role of epsilon.  Relative error of ``r`` against
    ``2**15 / rms`` is below about ``2 / (256 * sqrt(min(ss, n)))`` plus ``1 / r``.

    Parameters
    ----------
    x : array_like of int, shape (..., n)
        int8 range.
    gamma : array_like of int, shape (n,)
        int8 range.
    M0, shift : int
        Per-tensor multiplier (see :func:`quantize_multiplier`).
    zero_point : int
    rounding : {"single", "double"}

    Returns
    -------
    numpy.ndarray of int8, same shape as ``x``.

    Raises
    ------
    OverflowError
        If some ``t_i`` does not fit int32.  Since ``|x_i| <= sqrt(ss)``,
        ``|x_i| * r <= (256/255) * 2**15 * sqrt(n)``, so ``|t_i| <= (256/255) * 2**22 *
        sqrt(n)``, which fits int32 for every ``n <= 2**16`` (the bound is reached only
        for ``n`` around ``2.6e5``).
    """
    x_ = _int_array(x, "x", INT8_MIN, INT8_MAX)
    g_ = _int_array(gamma, "gamma", INT8_MIN, INT8_MAX)
    _check_rows(x_, "x")
    n = x_.shape[-1]
    if g_.shape != (n,):
        raise ValueError(f"gamma must have shape ({n},), got {g_.shape}")
    m0 = _int_scalar(M0, "M0", 0, INT32_MAX)
    sh = _int_scalar(shift, "shift", SHIFT_MIN, SHIFT_MAX)
    ss = (x_ * x_).sum(axis=-1)
    r = rms_reciprocal(ss, n)
    t = x_ * g_ * r[..., None]
    t32 = _to_int32(t, "rmsnorm intermediate x * gamma * r")
    return requantize(t32, m0, sh, zero_point, INT8_MIN, INT8_MAX, rounding)


# --------------------------------------------------------------------------------------------
# Float reference functions and 256-entry tables
# --------------------------------------------------------------------------------------------


def sigmoid(x: npt.ArrayLike) -> np.ndarray:
    """Logistic sigmoid ``1 / (1 + exp(-x))`` in float64 (overflow-free form)."""
    v = np.asarray(x, dtype=np.float64)
    z = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def silu(x: npt.ArrayLike) -> np.ndarray:
    """SiLU / swish ``x * sigmoid(x)`` in float64."""
    v = np.asarray(x, dtype=np.float64)
    return v * sigmoid(v)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: npt.ArrayLike) -> np.ndarray:
    """Exact (erf-based) GELU ``0.5 * x * (1 + erf(x / sqrt(2)))`` in float64."""
    v = np.asarray(x, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    return 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))


def exp(x: npt.ArrayLike) -> np.ndarray:
    """``exp(x)`` in float64."""
    return np.exp(np.asarray(x, dtype=np.float64))


_TABLE_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


def make_table(
    fn: Callable[[np.ndarray], npt.ArrayLike],
    in_scale: float,
    out_scale: float,
    in_zero_point: int = 0,
    out_zero_point: int = 0,
    out_dtype: npt.DTypeLike = np.int8,
) -> np.ndarray:
    """Tabulate a float function over every int8 input.

    Entry ``i`` corresponds to the int8 input ``q = i - 128``::

        T[i] = clamp(round_half_away(fn((q - in_zero_point) * in_scale) / out_scale)
                     + out_zero_point, out_dtype range)

    all in float64.

    Parameters
    ----------
    fn : callable
        Float function; called once with a float64 array of the 256 real inputs (a function
        that only takes scalars is applied element by element).
    in_scale, out_scale : float
        Positive, finite quantization scales.
    in_zero_point, out_zero_point : int
    out_dtype : dtype
        One of int8, uint8, int16, uint16, int32.

    Returns
    -------
    numpy.ndarray of ``out_dtype``, shape (256,)
    """
    si = _pos_float(in_scale, "in_scale")
    so = _pos_float(out_scale, "out_scale")
    izp = _int_scalar(in_zero_point, "in_zero_point", INT32_MIN, INT32_MAX)
    ozp = _int_scalar(out_zero_point, "out_zero_point", INT32_MIN, INT32_MAX)
    dt = np.dtype(out_dtype)
    if dt not in [np.dtype(d) for d in _TABLE_DTYPES]:
        raise ValueError(f"out_dtype={dt} must be one of int8, uint8, int16, uint16, int32")
    if not callable(fn):
        raise ValueError("fn must be callable")  # noqa: TRY004
    q = np.arange(ACT_TABLE_SIZE, dtype=np.int64) + INT8_MIN
    real = (q - izp).astype(np.float64) * si
    try:
        y = np.asarray(fn(real), dtype=np.float64)
        if y.shape != real.shape:
            raise TypeError
    except (TypeError, ValueError):
        y = np.array([float(fn(float(v))) for v in real], dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("fn returned NaN or infinity on the table's input range")
    info = np.iinfo(dt)
    v = y / so
    v = np.clip(v, float(info.min) - 1.0 - abs(ozp), float(info.max) + 1.0 + abs(ozp))
    t = np.clip(round_half_away(v) + ozp, info.min, info.max)
    return t.astype(dt)


def table_lookup(x: npt.ArrayLike, table: npt.ArrayLike) -> np.ndarray:
    """Apply a 256-entry table to int8 values: ``table[x + 128]``.

    Parameters
    ----------
    x : array_like of int
        int8 range.
    table : array_like, shape (256,)

    Returns
    -------
    numpy.ndarray with the table's dtype and the shape of ``x``.
    """
    t = np.asarray(table)
    if t.shape != (ACT_TABLE_SIZE,):
        raise ValueError(f"table must have shape ({ACT_TABLE_SIZE},), got {t.shape}")
    x_ = _int_array(x, "x", INT8_MIN, INT8_MAX)
    return t[x_ - INT8_MIN]


def sigmoid_table(in_scale: float, in_zero_point: int = 0) -> np.ndarray:
    """Sigmoid table with output scale 1/128: int8 outputs in [0, 127] mean [0, 127/128].

    (``sigmoid * 128`` rounding to 128 saturates to 127.)  This is the forget-gate format
    consumed by :func:`mlgru_gate`.
    """
    return make_table(sigmoid, in_scale, SIGMOID_OUT_SCALE, in_zero_point, 0, np.int8)


def silu_table(
    in_scale: float, out_scale: float, in_zero_point: int = 0, out_zero_point: int = 0
) -> np.ndarray:
    """int8 -> int8 SiLU table (see :func:`make_table`)."""
    return make_table(silu, in_scale, out_scale, in_zero_point, out_zero_point, np.int8)


def gelu_table(
    in_scale: float, out_scale: float, in_zero_point: int = 0, out_zero_point: int = 0
) -> np.ndarray:
    """int8 -> int8 exact-erf GELU table (see :func:`make_table`)."""
    return make_table(gelu, in_scale, out_scale, in_zero_point, out_zero_point, np.int8)


def exp_table(in_scale: float) -> np.ndarray:
    """Softmax exponent table, uint16 Q0.15.

    Entry ``i`` is for ``d = i - 128``, the logit minus the row maximum in units of
    ``in_scale``: ``round_half_away(exp(d * in_scale) * (2**15 - 1))`` for ``d <= 0`` and
    ``0`` for ``d > 0`` (never used by :func:`softmax`).  Entry 128 (``d = 0``) is
    ``EXP_ONE = 32767``.

    Parameters
    ----------
    in_scale : float
        Positive scale of the int8 logits (include any softmax ``beta`` here).

    Returns
    -------
    numpy.ndarray of uint16, shape (256,)
    """
    s = _pos_float(in_scale, "in_scale")
    d = np.arange(ACT_TABLE_SIZE, dtype=np.int64) + INT8_MIN
    e = np.exp(np.minimum(d, 0).astype(np.float64) * s) * float(EXP_ONE)
    t = np.where(d <= 0, round_half_away(e), 0)
    return t.astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Softmax, argmax, MLGRU gate, dynamic quantization
# --------------------------------------------------------------------------------------------


def softmax(x: npt.ArrayLike, exp_tab: npt.ArrayLike) -> np.ndarray:
    """Integer softmax over the last axis, int8 output ``p`` meaning probability ``p / 127``.

    Per row: ``mx = max(x)``, ``d_i = max(x_i - mx, -128)``, ``e_i = exp_tab[d_i + 128]``,
    ``s = max(sum(e), 1)`` (``>= exp_tab[128]``; the ``max`` only matters for a degenerate
    table, so that no data can make the device trap), ``R = (127 << 24) // s`` and
    ``p_i = min((e_i * R + (1 << 23)) >> 24, 127)``; int64 intermediates.

    Parameters
    ----------
    x : array_like of int, shape (..., n)
        int8 logits, ``n >= 1``.
    exp_tab : array_like of int, shape (256,)
        Exponent table (see :func:`exp_table`), values in [0, 65535].

    Returns
    -------
    numpy.ndarray of int8 in [0, 127], same shape as ``x``.

    Notes
    -----
    Error bound.  Let ``E_j = 32767 * exp((x_j - mx) * in_scale)`` be the exact table values
    and ``D_j = |e_j - E_j|`` the per-element table error (at most 0.5 for an
    :func:`exp_table` table when ``x_j - mx >= -128``; for clamped differences ``D_j <=
    e_j``).  With ``sigma`` the float softmax of ``x * in_scale`` and ``s >= 32767``::

        |p_i / 127 - sigma_i| <= (0.5 + 65535 / 2**24) / 127
                                 + (D_i + sigma_i * sum_j D_j) / 32767

    The first term is the final rounding plus the floor in ``R``; the second is the table
    error propagated through the normalisation.  For an exact table and ``n`` logits all
    within 128 steps of the max this is at most ``0.504 / 127 + 0.5 * (n + 1) / 32767``.
    """
    t = _int_array(exp_tab, "exp_tab", 0, UINT16_MAX)
    if t.shape != (ACT_TABLE_SIZE,):
        raise ValueError(f"exp_tab must have shape ({ACT_TABLE_SIZE},), got {t.shape}")
    x_ = _int_array(x, "x", INT8_MIN, INT8_MAX)
    _check_rows(x_, "x")
    mx = x_.max(axis=-1, keepdims=True)
    d = np.maximum(x_ - mx, INT8_MIN)
    e = t[d - INT8_MIN]
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)  # a table of zeros must not trap
    r = (np.int64(SOFTMAX_OUT_MAX) << SOFTMAX_RECIP_SHIFT) // s
    p = (e * r + (np.int64(1) << (SOFTMAX_RECIP_SHIFT - 1))) >> SOFTMAX_RECIP_SHIFT
    return np.minimum(p, SOFTMAX_OUT_MAX).astype(np.int8)


def argmax(x: npt.ArrayLike) -> np.ndarray:
    """Index of the maximum along the last axis; the lowest index wins ties.

    Parameters
    ----------
    x : array_like of int, shape (..., n), ``n >= 1``

    Returns
    -------
    numpy.ndarray of int32, shape ``x.shape[:-1]``
    """
    x_ = _int_array(x, "x")
    _check_rows(x_, "x")
    return np.argmax(x_, axis=-1).astype(np.int32)


def mlgru_gate(f: npt.ArrayLike, c: npt.ArrayLike, h_prev: npt.ArrayLike) -> np.ndarray:
    """MLGRU state update ``h = f * h_prev + (1 - f) * c`` in Q0.7.

    ``h = clamp((f * h_prev + (128 - f) * c + 64) >> 7, -128, 127)`` (arithmetic shift, so
    the rounding is half up).  The result is within 0.5 LSB of the float formula
    ``(f / 128) * h_prev + (1 - f / 128) * c`` and never actually saturates.

    Parameters
    ----------
    f : array_like of int
        Forget gate, int8; meaningful range [0, 127] (a :func:`sigmoid_table` output, meaning
        ``f / 128``). Negative values are treated as 0.
    c, h_prev : array_like of int
        Candidate and previous state, int8, same scale.  All three broadcast.

    Returns
    -------
    numpy.ndarray of int8
    """
    # f is clamped below at 0 (the hardware never traps on data); sigmoid tables give [0, 127]
    f_ = np.maximum(_int_array(f, "f", INT8_MIN, INT8_MAX), 0)
    c_ = _int_array(c, "c", INT8_MIN, INT8_MAX)
    h_ = _int_array(h_prev, "h_prev", INT8_MIN, INT8_MAX)
    one = 1 << MLGRU_Q
    try:
        h = (f_ * h_ + (one - f_) * c_ + (one >> 1)) >> MLGRU_Q
    except ValueError:
        raise ValueError(f"f {f_.shape}, c {c_.shape}, h_prev {h_.shape} do not broadcast") \
            from None
    return np.clip(h, INT8_MIN, INT8_MAX).astype(np.int8)


def absmax_quantize(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic per-token (per-row) absmax quantization to int8.

    Per row: ``m = max(max|x|, 1)``, ``R = (127 << 24) // m``,
    ``q_i = clamp((x_i * R + (1 << 23)) >> 24, -127, 127)``.  So ``q ~= round(127 * x / m)``
    (``|q - 127 x / m| <= 0.5 + |x| / 2**24 <= 1``; ``q`` differs from ``round(127 x / m)``
    by at most 1, and only near ties), and ``x ~= q * m / 127``.

    Parameters
    ----------
    x : array_like of int, shape (..., n)
        int8 or int32 values with ``|x| <= 2**23``, ``n >= 1``.

    Returns
    -------
    q : numpy.ndarray of int8, shape (..., n)
    m : numpy.ndarray of int32, shape (...)
    """
    x_ = _int_array(x, "x", -ABSMAX_INPUT_MAX, ABSMAX_INPUT_MAX)
    _check_rows(x_, "x")
    m = np.maximum(np.abs(x_).max(axis=-1), 1)
    r = (np.int64(ABSMAX_QMAX) << ABSMAX_FRAC_BITS) // m
    q = (x_ * r[..., None] + (np.int64(1) << (ABSMAX_FRAC_BITS - 1))) >> ABSMAX_FRAC_BITS
    return np.clip(q, -ABSMAX_QMAX, ABSMAX_QMAX).astype(np.int8), m.astype(np.int32)


# --------------------------------------------------------------------------------------------
# Host-side quantizers from float
# --------------------------------------------------------------------------------------------


def ternary_absmean(w: npt.ArrayLike) -> tuple[np.ndarray, float]:
    """BitNet b1.58 absmean ternary quantization (matmulfreellm ``weight_quant``).

    ``a = max(mean(|w|), 1e-5)``, ``wq = clamp(round_half_even(w / a), -1, 1)``;
    ``w ~= wq * a``.  (matmulfreellm computes ``w * (1 / a)``; the two can differ only for
    values within one ulp of a rounding tie.)

    Parameters
    ----------
    w : array_like of float, shape (N, K)

    Returns
    -------
    wq : numpy.ndarray of int8, shape (N, K), values in {-1, 0, 1}
    scale : float
        ``a``.
    """
    w_ = _float_array(w, "w")
    _check_ndim(w_, 2, "w")
    if w_.size == 0:
        raise ValueError("w must not be empty")
    a = max(float(np.mean(np.abs(w_))), 1e-5)
    wq = np.clip(np.rint(w_ / a), -1, 1).astype(np.int8)
    return wq, a


def int8_per_channel(w: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization.

    ``s_n = max(max|w_n|, 1e-8) / 127``, ``wq = clamp(round_half_even(w / s), -127, 127)``;
    ``w ~= wq * s[:, None]``.

    Parameters
    ----------
    w : array_like of float, shape (N, K)

    Returns
    -------
    wq : numpy.ndarray of int8, shape (N, K)
    scales : numpy.ndarray of float64, shape (N,)
    """
    w_ = _float_array(w, "w")
    _check_ndim(w_, 2, "w")
    _check_rows(w_, "w")
    s = np.maximum(np.abs(w_).max(axis=1), 1e-8) / 127.0
    wq = np.clip(np.rint(w_ / s[:, None]), -127, 127).astype(np.int8)
    return wq, s


def absmax_quantize_float(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax activation quantization (matmulfreellm ``activation_quant``).

    ``s = 127 / max(max|x|, 1e-5)`` per row, ``q = clamp(round_half_even(x * s), -128, 127)``;
    ``x ~= q / s``.

    Parameters
    ----------
    x : array_like of float, shape (..., n)

    Returns
    -------
    q : numpy.ndarray of int8, shape (..., n)
    scale : numpy.ndarray of float64, shape (...)
    """
    x_ = _float_array(x, "x")
    _check_rows(x_, "x")
    s = 127.0 / np.maximum(np.abs(x_).max(axis=-1), 1e-5)
    q = np.clip(np.rint(x_ * s[..., None]), -128, 127).astype(np.int8)
    return q, s


def lowbit_symmetric(w: npt.ArrayLike, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization to signed ``bits``-bit integers.

    For ``bits >= 2``: ``qmax = 2**(bits-1) - 1``, ``s_n = max(max|w_n|, 1e-8) / qmax``,
    ``wq = clamp(round_half_even(w / s), -2**(bits-1), qmax)`` (symmetric, so ``-2**(bits-1)``
    is never produced).  For ``bits == 1`` the representable set is {-1, 0}: ``wq = -1``
    where ``w < 0`` else 0, with ``s_n = max(max|w_n|, 1e-8)`` (so ``wq * s`` maps negatives
    to ``-absmax``).  The result feeds :func:`pack_lut_weights` for ``bits <= 4``.

    Parameters
    ----------
    w : array_like of float, shape (N, K)
    bits : int
        1..8.

    Returns
    -------
    wq : numpy.ndarray of int8, shape (N, K)
    scales : numpy.ndarray of float64, shape (N,)
    """
    b = _int_scalar(bits, "bits", 1, 8)
    w_ = _float_array(w, "w")
    _check_ndim(w_, 2, "w")
    _check_rows(w_, "w")
    absmax = np.maximum(np.abs(w_).max(axis=1), 1e-8)
    if b == 1:
        return np.where(w_ < 0, -1, 0).astype(np.int8), absmax
    qmax = (1 << (b - 1)) - 1
    s = absmax / qmax
    wq = np.clip(np.rint(w_ / s[:, None]), -(qmax + 1), qmax).astype(np.int8)
    return wq, s
