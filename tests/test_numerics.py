"""Property tests for :mod:`tritium.numerics`.

Every op is compared with an independent, straightforward reference written here: Python
big-int transcriptions of the TFLite / gemmlowp formulas (cross-checked against exact
``Fraction`` arithmetic), plain NumPy int64 matmuls for the GEMM paths, bit-by-bit Python
decoders for the packed layouts, and float64 references with documented error bounds for the
approximate ops (softmax, RMSNorm, tables, MLGRU gate, absmax quantization).

About 14,000 hypothesis examples are generated in total (``max_examples`` per test below).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritium import numerics as nx

I8_MIN, I8_MAX = -128, 127
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def cfg(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


seeds = st.integers(0, 2**32 - 1)


def rand_ints(rng: np.random.Generator, shape, lo: int, hi: int) -> np.ndarray:
    """Uniform integers in [lo, hi], with ~15 % replaced by extremes (lo, hi, 0, +-1)."""
    x = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    special = np.array([v for v in (lo, hi, 0, 1, -1) if lo <= v <= hi], dtype=np.int64)
    mask = rng.random(shape) < 0.15
    x[mask] = rng.choice(special, size=int(mask.sum()))
    return x


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(v, hi))


# ---------------------------------------------------------------------------------------------
# Reference implementations (pure Python ints)
# ---------------------------------------------------------------------------------------------


def ref_mbqm_single(x: int, m0: int, shift: int) -> int:
    """TFLite TFLITE_SINGLE_ROUNDING MultiplyByQuantizedMultiplier, transcribed."""
    total_shift = 31 - shift
    return (x * m0 + (1 << (total_shift - 1))) >> total_shift


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul, transcribed (C truncating division)."""
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    v = ab + nudge
    return v // 2**31 if v >= 0 else -((-v) // 2**31)


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT, transcribed."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_mbqm_double(x: int, m0: int, shift: int) -> int | None:
    """TFLite double-rounding MultiplyByQuantizedMultiplier; None if x << left overflows."""
    left, right = max(shift, 0), max(-shift, 0)
    xl = x * (1 << left)
    if not I32_MIN <= xl <= I32_MAX:
        return None
    return ref_rdbpot(ref_srdhm(xl, m0), right)


def floor_half_up(f: Fraction) -> int:
    return math.floor(f + Fraction(1, 2))


def round_away(f: Fraction) -> int:
    r = math.floor(abs(f) + Fraction(1, 2))
    return r if f >= 0 else -r


def ref_quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier with exact rational rounding."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = round_away(Fraction(q) * 2**31)
    if q_fixed == 2**31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return 2**31 - 1, 30
    return q_fixed, shift


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------


@cfg(800)
@given(st.integers(1, 8), st.integers(1, 48), st.integers(1, 8), st.booleans(), seeds)
def test_gemm_i8_matches_int64_matmul(m, k, n, transposed, seed):
    rng = np.random.default_rng(seed)
    a = rand_ints(rng, (m, k), I8_MIN, I8_MAX).astype(np.int8)
    w = rand_ints(rng, (n, k), I8_MIN, I8_MAX).astype(np.int8)
    ref = a.astype(np.int64) @ w.astype(np.int64).T
    out = nx.gemm_i8(a, w.T.copy() if transposed else w, w_transposed=transposed)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, ref)


def test_gemm_i8_extremes():
    k = 4096
    a = np.full((2, k), -128, np.int8)
    w = np.stack([np.full(k, -128, np.int8), np.full(k, 127, np.int8)])
    out = nx.gemm_i8(a, w)
    np.testing.assert_array_equal(out, [[k * 16384, -k * 16256]] * 2)
    # 2**17 * 2**14 = 2**31 does not fit int32
    big = np.full((1, 2**17), -128, np.int8)
    with pytest.raises(OverflowError):
        nx.gemm_i8(big, big)


@cfg(800)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 6), seeds)
def test_ternary_pack_layout_and_gemm(m, k4, n, seed):
    rng = np.random.default_rng(seed)
    k = 4 * k4
    w = rng.integers(-1, 1, size=(n, k), endpoint=True).astype(np.int8)
    a = rand_ints(rng, (m, k), I8_MIN, I8_MAX).astype(np.int8)
    packed = nx.pack_ternary(w)
    assert packed.dtype == np.uint8 and packed.shape == (n, k // 4)
    code = {0: 0b00, 1: 0b01, -1: 0b11}
    for r in range(n):
        for j in range(k // 4):
            expect = sum(code[int(w[r, 4 * j + t])] << (2 * t) for t in range(4))
            assert int(packed[r, j]) == expect
    np.testing.assert_array_equal(nx.unpack_ternary(packed, k), w)
    ref = a.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(nx.gemm_ternary(a, packed, k), ref)


@cfg(300)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 4), seeds)
def test_ternary_raw_bytes_reserved_code(m, k4, n, seed):
    """Arbitrary bytes (including the reserved code 0b10) decode bit by bit."""
    rng = np.random.default_rng(seed)
    k = 4 * k4
    packed = rng.integers(0, 255, size=(n, k4), endpoint=True).astype(np.uint8)
    dec = {0b00: 0, 0b01: 1, 0b11: -1, 0b10: 0}
    w = np.array([[dec[(int(packed[r, kk // 4]) >> (2 * (kk % 4))) & 3] for kk in range(k)]
                  for r in range(n)], dtype=np.int64)
    np.testing.assert_array_equal(nx.unpack_ternary(packed, k), w)
    a = rand_ints(rng, (m, k), I8_MIN, I8_MAX)
    np.testing.assert_array_equal(nx.gemm_ternary(a, packed, k), a @ w.T)


def test_ternary_reserved_decodes_zero():
    packed = np.full((2, 3), 0b10101010, np.uint8)
    np.testing.assert_array_equal(nx.unpack_ternary(packed, 12), np.zeros((2, 12)))
    np.testing.assert_array_equal(nx.pack_ternary([[1, -1, 0, 1]]), [[0b01_00_11_01]])


@cfg(1000)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 5), st.integers(1, 4),
       st.sampled_from([1, 2, 4, 8]), seeds)
def test_lut_pack_layout_and_gemm(m, k8, n, bits, g, seed):
    rng = np.random.default_rng(seed)
    k = 8 * k8
    half = 1 << (bits - 1)
    w = rand_ints(rng, (n, k), -half, half - 1)
    a = rand_ints(rng, (m, k), I8_MIN, I8_MAX).astype(np.int8)
    packed = nx.pack_lut_weights(w, bits)
    assert packed.dtype == np.uint8 and packed.shape == (n, bits, k // 8)
    for r in range(n):
        for i in range(bits):
            for j in range(k // 8):
                expect = sum((((int(w[r, 8 * j + t]) + half) >> i) & 1) << t for t in range(8))
                assert int(packed[r, i, j]) == expect
    np.testing.assert_array_equal(nx.unpack_lut_weights(packed, bits, k), w)
    ref = a.astype(np.int64) @ w.T
    out = nx.gemm_lut(a, packed, bits, k, g)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)


@cfg(300)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from([1, 2, 4, 8]), seeds)
def test_lut_gemm_on_raw_bytes(m, k8, n, bits, g, seed):
    """Any byte pattern is a valid weight set; gemm_lut must match gemm_i8 on its decode."""
    rng = np.random.default_rng(seed)
    k = 8 * k8
    packed = rng.integers(0, 255, size=(n, bits, k8), endpoint=True).astype(np.uint8)
    a = rand_ints(rng, (m, k), I8_MIN, I8_MAX)
    w = nx.unpack_lut_weights(packed, bits, k)
    np.testing.assert_array_equal(nx.pack_lut_weights(w, bits), packed)
    np.testing.assert_array_equal(nx.gemm_lut(a, packed, bits, k, g), nx.gemm_i8(a, w))


@cfg(500)
@given(st.sampled_from([1, 2, 4, 8]), seeds)
def test_lut_tables_and_lookup_bruteforce(g, seed):
    rng = np.random.default_rng(seed)
    x = rand_ints(rng, (3, g), I8_MIN, I8_MAX)
    tab = nx.lut_tables(x, g)
    e = nx.lut_table_entries(g)
    assert e == 2 ** (g - 1) and tab.shape == (3, e) and tab.dtype == np.int32
    for r in range(3):
        xs = [int(v) for v in x[r]]
        for p in range(e):
            expect = xs[g - 1] + sum(xs[j] if (p >> j) & 1 else -xs[j] for j in range(g - 1))
            assert int(tab[r, p]) == expect
        for pat in range(2**g):
            dot = sum((2 * ((pat >> j) & 1) - 1) * xs[j] for j in range(g))
            assert int(nx.lut_lookup(tab[r], pat, g)) == dot
    pats = rng.integers(0, 2**g, size=3)
    got = nx.lut_lookup(tab, pats, g)
    for r in range(3):
        assert int(got[r]) == int(nx.lut_lookup(tab[r], int(pats[r]), g))


def test_lut_extremes():
    k = 64
    for bits in range(1, 5):
        half = 1 << (bits - 1)
        for wv in (-half, half - 1):
            w = np.full((2, k), wv)
            p = nx.pack_lut_weights(w, bits)
            for av in (-128, 127):
                a = np.full((1, k), av)
                for g in (1, 2, 4, 8):
                    assert int(nx.gemm_lut(a, p, bits, k, g)[0, 0]) == k * av * wv


# ---------------------------------------------------------------------------------------------
# Requantization
# ---------------------------------------------------------------------------------------------

reals = st.one_of(
    st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.builds(lambda mant, e: mant * 2.0**e, st.floats(0.5, 1.0), st.integers(-40, 40)),
    # exact ties of q * 2**31 (half away from zero, not to even)
    st.builds(lambda k, e: (2**30 + k + 0.5) * 2.0 ** (e - 31), st.integers(0, 2**30 - 1),
              st.integers(-30, 30)),
    st.sampled_from([0.0, 1.0, 0.5, 2.0**-31, 2.0**-32, 2.0**-33, 2.0**30, 2.0**31,
                     1.0 - 2.0**-33, 5e-324, 1e-300, 1e300, 0.999999999767169]),
)


@cfg(1500)
@given(reals)
def test_quantize_multiplier(real):
    m0, shift = nx.quantize_multiplier(real)
    assert (m0, shift) == ref_quantize_multiplier(real)
    assert isinstance(m0, int) and isinstance(shift, int)
    assert 0 <= m0 <= I32_MAX and -31 <= shift <= 30
    if m0:
        assert m0 >= 2**30
    if 2.0**-31 <= real < 2.0**30:
        approx = Fraction(m0) * Fraction(2) ** (shift - 31)
        assert abs(approx - Fraction(real)) <= Fraction(real) * Fraction(1, 2**31)


def test_quantize_multiplier_edges():
    assert nx.quantize_multiplier(0.0) == (0, 0)
    assert nx.quantize_multiplier(1.0) == (2**30, 1)
    assert nx.quantize_multiplier(0.5) == (2**30, 0)
    assert nx.quantize_multiplier(2.0**-40) == (0, 0)  # flushed
    assert nx.quantize_multiplier(2.0**40) == (2**31 - 1, 30)  # saturated
    # q * 2**31 rounds up to 2**31 -> halved, shift incremented
    assert nx.quantize_multiplier(1.0 - 2.0**-40) == (2**30, 1)
    # ties round away from zero: q * 2**31 = 2**30 + 0.5 and 2**30 + 1.5
    assert nx.quantize_multiplier(0.5 + 2.0**-32) == (2**30 + 1, 0)
    assert nx.quantize_multiplier(0.5 + 3 * 2.0**-32) == (2**30 + 2, 0)
    for bad in (-1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError):
            nx.quantize_multiplier(bad)


mults = st.one_of(
    st.tuples(st.integers(0, I32_MAX), st.integers(-31, 30)),
    reals.map(ref_quantize_multiplier),
    st.tuples(st.sampled_from([0, 1, 2**30, I32_MAX]), st.sampled_from([-31, -30, -1, 0, 1, 30])),
)
xs32 = st.one_of(st.integers(I32_MIN, I32_MAX), st.integers(-(2**16), 2**16),
                 st.sampled_from([I32_MIN, I32_MAX, 0, 1, -1, I32_MIN + 1]))


@cfg(1500)
@given(xs32, mults)
def test_mbqm_single_scalar(x, mult):
    m0, shift = mult
    ref = ref_mbqm_single(x, m0, shift)
    assert ref == floor_half_up(Fraction(x * m0, 2 ** (31 - shift)))
    if I32_MIN <= ref <= I32_MAX:
        out = nx.multiply_by_quantized_multiplier(x, m0, shift)
        assert out.dtype == np.int32 and int(out) == ref
    else:
        with pytest.raises(OverflowError):
            nx.multiply_by_quantized_multiplier(x, m0, shift)


@cfg(1500)
@given(xs32, mults)
def test_mbqm_double_scalar(x, mult):
    m0, shift = mult
    ref = ref_mbqm_double(x, m0, shift)
    if ref is None:
        with pytest.raises(OverflowError):
            nx.multiply_by_quantized_multiplier(x, m0, shift, rounding="double")
        return
    # SRDHM rounds half up; RoundingDivideByPOT rounds half away from zero.
    high = floor_half_up(Fraction(x * (1 << max(shift, 0)) * m0, 2**31))
    assert ref == round_away(Fraction(high, 2 ** max(-shift, 0)))
    out = nx.multiply_by_quantized_multiplier(x, m0, shift, rounding="double")
    assert int(out) == ref


def test_srdhm_overflow_case():
    assert ref_srdhm(I32_MIN, I32_MIN) == I32_MAX
    got = nx._srdhm(np.array([I32_MIN, I32_MIN, I32_MAX]), np.array([I32_MIN, I32_MAX, I32_MAX]))
    assert [int(v) for v in got] == [I32_MAX, ref_srdhm(I32_MIN, I32_MAX),
                                     ref_srdhm(I32_MAX, I32_MAX)]


@cfg(600)
@given(st.lists(st.tuples(xs32, mults), min_size=1, max_size=40),
       st.sampled_from(["single", "double"]))
def test_mbqm_vectorised(triples, rounding):
    ref_fn = ref_mbqm_single if rounding == "single" else ref_mbqm_double
    ok = []
    for x, (m0, s) in triples:
        r = ref_fn(x, m0, s)
        if r is not None and I32_MIN <= r <= I32_MAX:
            ok.append((x, m0, s, r))
    if not ok:
        return
    x, m0, s, r = (np.array(c, dtype=np.int64) for c in zip(*ok))
    out = nx.multiply_by_quantized_multiplier(x.astype(np.int32), m0, s, rounding=rounding)
    np.testing.assert_array_equal(out, r)


@cfg(800)
@given(st.integers(1, 5), st.integers(1, 8), st.booleans(), st.integers(-128, 127),
       st.sampled_from([(-128, 127), (-127, 127), (0, 127), (-5, 5), (-1000, 1000)]),
       st.sampled_from(["single", "double"]), seeds)
def test_requantize_per_channel(m, n, per_channel, zp, bounds, rounding, seed):
    rng = np.random.default_rng(seed)
    qmin, qmax = bounds
    acc = rand_ints(rng, (m, n), -(2**24), 2**24)
    if per_channel:
        m0 = rng.integers(2**30, 2**31 - 1, size=n, endpoint=True)
        sh = rng.integers(-31, 0, size=n, endpoint=True)
    else:
        m0, sh = int(rng.integers(2**30, 2**31)), int(rng.integers(-31, 1))
    out = nx.requantize(acc, m0, sh, zero_point=zp, qmin=qmin, qmax=qmax, rounding=rounding)
    assert out.dtype == (np.int8 if qmin >= -128 and qmax <= 127 else np.int32)
    ref_fn = ref_mbqm_single if rounding == "single" else ref_mbqm_double
    for i in range(m):
        for j in range(n):
            mm = int(m0[j]) if per_channel else m0
            ss = int(sh[j]) if per_channel else sh
            expect = clamp(ref_fn(int(acc[i, j]), mm, ss) + zp, qmin, qmax)
            assert int(out[i, j]) == expect


@pytest.mark.parametrize("rounding", ["single", "double"])
def test_requantize_extremes(rounding):
    acc = np.array([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX], dtype=np.int64)
    ref_fn = ref_mbqm_single if rounding == "single" else ref_mbqm_double
    for m0 in (0, 1, 2**30, I32_MAX):
        for shift in (-31, -30, -8, -1, 0):
            out = nx.requantize(acc, m0, shift, qmin=I32_MIN, qmax=I32_MAX, rounding=rounding)
            assert out.dtype == np.int32
            assert [int(v) for v in out] == [ref_fn(int(a), m0, shift) for a in acc]
            out8 = nx.requantize(acc, m0, shift, zero_point=-3, rounding=rounding)
            assert [int(v) for v in out8] == [clamp(ref_fn(int(a), m0, shift) - 3, -128, 127)
                                              for a in acc]
    # shift = 30 only works for tiny inputs
    small = np.array([-1, 0, 1])
    out = nx.multiply_by_quantized_multiplier(small, 1, 30, rounding=rounding)
    assert [int(v) for v in out] == [ref_fn(int(a), 1, 30) for a in small]
    with pytest.raises(OverflowError):
        nx.multiply_by_quantized_multiplier(I32_MAX, I32_MAX, 30, rounding=rounding)
    if rounding == "single":  # requantize saturates where TFLite would DCHECK
        assert int(nx.requantize(I32_MAX, I32_MAX, 30)) == 127
        assert int(nx.requantize(I32_MIN, I32_MAX, 30)) == -128
        assert int(nx.requantize(I32_MIN, I32_MAX, 30, qmin=I32_MIN, qmax=I32_MAX)) == I32_MIN


@cfg(600)
@given(st.lists(st.tuples(xs32, mults), min_size=1, max_size=16), st.integers(-128, 127),
       st.sampled_from([(-128, 127), (I32_MIN, I32_MAX), (0, 255)]))
def test_requantize_single_saturates(pairs, zp, bounds):
    """Single rounding: wide results (x * M0 * 2**(shift-31) outside int32) are clamped."""
    qmin, qmax = bounds
    x = np.array([p[0] for p in pairs], dtype=np.int64)
    m0 = np.array([p[1][0] for p in pairs], dtype=np.int64)
    sh = np.array([p[1][1] for p in pairs], dtype=np.int64)
    out = nx.requantize(x[None, :], m0, sh, zero_point=zp, qmin=qmin, qmax=qmax)
    expect = [clamp(ref_mbqm_single(int(a), int(b), int(c)) + zp, qmin, qmax)
              for a, b, c in zip(x, m0, sh)]
    assert [int(v) for v in out[0]] == expect


# ---------------------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------------------


@cfg(600)
@given(st.sampled_from([8, 32]), st.integers(1, 30), seeds)
def test_saturating_add(bits, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (I8_MIN, I8_MAX) if bits == 8 else (I32_MIN, I32_MAX)
    a = rand_ints(rng, n, lo, hi)
    b = rand_ints(rng, n, lo, hi)
    out = nx.saturating_add(a, b, bits=bits)
    assert out.dtype == (np.int8 if bits == 8 else np.int32)
    assert [int(v) for v in out] == [clamp(int(x) + int(y), lo, hi) for x, y in zip(a, b)]


def test_saturating_add_extremes():
    assert int(nx.saturating_add(127, 127)) == 127
    assert int(nx.saturating_add(-128, -128)) == -128
    assert int(nx.saturating_add(I32_MAX, 1, bits=32)) == I32_MAX
    assert int(nx.saturating_add(I32_MIN, I32_MIN, bits=32)) == I32_MIN
    assert int(nx.saturating_add(I32_MIN, I32_MAX, bits=32)) == -1


@cfg(600)
@given(st.integers(1, 4), st.integers(1, 10), st.integers(-128, 127),
       st.sampled_from(["single", "double"]), seeds)
def test_mul_requantize(m, n, zp, rounding, seed):
    rng = np.random.default_rng(seed)
    a = rand_ints(rng, (m, n), I8_MIN, I8_MAX).astype(np.int8)
    b = rand_ints(rng, (m, n), I8_MIN, I8_MAX).astype(np.int8)
    m0, sh = int(rng.integers(0, 2**31)), int(rng.integers(-31, 7))
    out = nx.mul_requantize(a, b, m0, sh, zp, rounding=rounding)
    assert out.dtype == np.int8
    ref_fn = ref_mbqm_single if rounding == "single" else ref_mbqm_double
    for i in range(m):
        for j in range(n):
            expect = clamp(ref_fn(int(a[i, j]) * int(b[i, j]), m0, sh) + zp, -128, 127)
            assert int(out[i, j]) == expect


@cfg(600)
@given(st.integers(1, 5), st.integers(1, 8), st.booleans(), seeds)
def test_mul_scalar_sat32(m, n, per_row, seed):
    rng = np.random.default_rng(seed)
    x = rand_ints(rng, (m, n), I32_MIN, I32_MAX)
    x[rng.random((m, n)) < 0.5] //= 2**20  # mix of small values that do not saturate
    s = rand_ints(rng, m, -(2**12), 2**12) if per_row else int(rng.integers(I32_MIN, I32_MAX))
    out = nx.mul_scalar_sat32(x, s)
    assert out.dtype == np.int32
    for i in range(m):
        for j in range(n):
            sc = int(s[i]) if per_row else s
            assert int(out[i, j]) == clamp(int(x[i, j]) * sc, I32_MIN, I32_MAX)


# ---------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------


@cfg(500)
@given(seeds, st.integers(1, 64))
def test_isqrt(seed, n):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 2**62, size=n, dtype=np.int64)
    r = rng.integers(0, 3037000499, size=n, dtype=np.int64)
    sq = np.concatenate([v, r * r, np.maximum(r * r - 1, 0), r * r + 1, v >> 40,
                         np.array([0, 1, 2, 3, 4, 2**63 - 1], dtype=np.int64)])
    out = nx.isqrt(sq)
    assert [int(o) for o in out] == [math.isqrt(int(s)) for s in sq]
    assert nx.isqrt(int(sq[0])) == math.isqrt(int(sq[0]))


@cfg(500)
@given(st.integers(0, 4096 * 16384), st.integers(1, 4096))
def test_rms_reciprocal(ss, n):
    expect = (math.isqrt(n << 16) << 15) // max(math.isqrt(ss << 16), 1)
    assert nx.rms_reciprocal(ss, n) == expect
    assert int(nx.rms_reciprocal(np.array([ss]), n)[0]) == expect
    if ss >= 1:
        ideal = 2**15 * math.sqrt(n / ss)
        assert abs(expect - ideal) <= ideal * 2 / (256 * math.sqrt(min(ss, n))) + 1


def rms_float_bound(ss: int, n: int) -> float:
    """Worst-case |r - 2**15 / rms| from the two floor'd square roots and the division."""
    ideal = 2**15 * math.sqrt(n / ss)
    hi = 2**15 * 256 * math.sqrt(n) / max(256 * math.sqrt(ss) - 1, 1)
    lo = 2**15 * (256 * math.sqrt(n) - 1) / (256 * math.sqrt(ss)) - 1
    return max(hi - ideal, ideal - lo)


@cfg(500)
@given(st.integers(1, 3), st.integers(1, 96), st.floats(-22, -13), st.integers(-20, 20),
       st.sampled_from(["single", "double"]), seeds)
def test_rmsnorm_vs_float(rows, n, log2_real, zp, rounding, seed):
    """|y - clamp(y_float)| <= 1 + |x * gamma| * real * dr, dr the reciprocal-RMS error bound.

    y_float = x / rms(x) * gamma * 2**15 * real + zero_point, real = M0 * 2**(shift - 31).
    """
    rng = np.random.default_rng(seed)
    x = rand_ints(rng, (rows, n), I8_MIN, I8_MAX)
    x[rng.random(rows) < 0.1] = 0  # all-zero rows
    gamma = rand_ints(rng, n, I8_MIN, I8_MAX)
    m0, sh = ref_quantize_multiplier(2.0**log2_real)
    real = m0 * 2.0 ** (sh - 31)
    y = nx.rmsnorm(x, gamma, m0, sh, zero_point=zp, rounding=rounding)
    assert y.dtype == np.int8 and y.shape == x.shape
    ref_fn = ref_mbqm_single if rounding == "single" else ref_mbqm_double
    for i in range(rows):
        ss = int(np.sum(x[i] ** 2))
        r = (math.isqrt(n << 16) << 15) // max(math.isqrt(ss << 16), 1)
        exact = [clamp(ref_fn(int(a) * int(b) * r, m0, sh) + zp, -128, 127)
                 for a, b in zip(x[i], gamma)]
        assert [int(v) for v in y[i]] == exact
        if ss == 0:
            assert np.all(y[i] == clamp(zp, -128, 127))
            continue
        rms = math.sqrt(ss / n)
        dr = rms_float_bound(ss, n)
        for j in range(n):
            yf = clamp(x[i, j] / rms * gamma[j] * 2**15 * real + zp, -128, 127)
            bound = 1.0 + abs(int(x[i, j]) * int(gamma[j])) * real * dr + 1e-9
            assert abs(int(y[i, j]) - yf) <= bound


def test_rmsnorm_exact_and_extremes():
    # exact integer reference on one row
    x = np.array([[10, -20, 30, 0]])
    g = np.array([64, -64, 127, -128])
    m0, sh = nx.quantize_multiplier(2.0**-15)
    r = (math.isqrt(4 << 16) << 15) // math.isqrt(1400 << 16)
    expect = [clamp(ref_mbqm_single(int(a) * int(b) * r, m0, sh), -128, 127)
              for a, b in zip(x[0], g)]
    assert [int(v) for v in nx.rmsnorm(x, g, m0, sh)[0]] == expect
    # largest row length with the worst-case single non-zero element stays within int32
    n = 65536
    x = np.zeros((1, n), np.int64)
    x[0, 0] = -128
    y = nx.rmsnorm(x, np.full(n, -128), m0, sh)
    assert int(y[0, 0]) == 127 and np.all(y[0, 1:] == 0)
    x[0, 0] = 1
    nx.rmsnorm(x, np.full(n, -128), m0, sh)  # |t| = 128 * r, must not raise


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_make_table_ties_round_half_away():
    t = nx.make_table(lambda v: v, 1.0, 2.0)  # T[i] = round_half_away((i - 128) / 2)
    for i in range(256):
        assert int(t[i]) == round_away(Fraction(i - 128, 2))
    assert int(t[128 + 3]) == 2 and int(t[128 - 3]) == -2 and int(t[128 - 1]) == -1


def test_float_functions_vs_math():
    xs = np.linspace(-30, 30, 241)
    for v, s, si, ge in zip(xs, nx.sigmoid(xs), nx.silu(xs), nx.gelu(xs)):
        assert abs(s - 1 / (1 + math.exp(-v))) <= 1e-15
        assert abs(si - v / (1 + math.exp(-v))) <= 1e-13
        assert abs(ge - 0.5 * v * (1 + math.erf(v / math.sqrt(2)))) <= 1e-13
    np.testing.assert_allclose(nx.exp(xs), np.exp(xs), rtol=0)
    assert nx.sigmoid(-1000.0) == 0.0 and nx.sigmoid(1000.0) == 1.0


table_fns = st.sampled_from(["sigmoid", "silu", "gelu", "exp"])


@cfg(300)
@given(table_fns, st.floats(-7, 0), st.floats(-8, 2), st.integers(-20, 20),
       st.integers(-20, 20), st.sampled_from([np.int8, np.uint8, np.int16, np.int32]))
def test_make_table(fname, log_in, log_out, izp, ozp, dtype):
    fn = getattr(nx, fname)
    in_scale, out_scale = 2.0**log_in * 1.37, 2.0**log_out * 0.91
    t = nx.make_table(fn, in_scale, out_scale, izp, ozp, dtype)
    assert t.shape == (256,) and t.dtype == np.dtype(dtype)
    info = np.iinfo(dtype)
    for i in range(256):
        real = (i - 128 - izp) * in_scale
        fv = float(fn(np.array([real]))[0])
        exact = clamp(round_away(Fraction(fv / out_scale)) + ozp, int(info.min), int(info.max))
        assert int(t[i]) == exact
        # within half an output LSB of the float function (unless clamped)
        assert abs(int(t[i]) - min(max(fv / out_scale + ozp, info.min), info.max)) <= 0.5
        ref = {"sigmoid": lambda v: 1 / (1 + math.exp(-v)),
               "silu": lambda v: v / (1 + math.exp(-v)),
               "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
               "exp": math.exp}[fname](real)
        assert abs(int(t[i]) - min(max(ref / out_scale + ozp, info.min), info.max)) <= 0.5 + 1e-6


@cfg(300)
@given(st.floats(-7, 1), st.floats(-8, 0), st.integers(-5, 5))
def test_builders_and_lookup(log_in, log_out, ozp):
    in_scale, out_scale = 2.0**log_in, 2.0**log_out
    sig = nx.sigmoid_table(in_scale)
    assert sig.dtype == np.int8 and sig.min() >= 0 and sig.max() <= 127
    np.testing.assert_array_equal(sig, nx.make_table(nx.sigmoid, in_scale, 1 / 128))
    np.testing.assert_array_equal(nx.silu_table(in_scale, out_scale, 0, ozp),
                                  nx.make_table(nx.silu, in_scale, out_scale, 0, ozp))
    np.testing.assert_array_equal(nx.gelu_table(in_scale, out_scale, 0, ozp),
                                  nx.make_table(nx.gelu, in_scale, out_scale, 0, ozp))
    et = nx.exp_table(in_scale)
    assert et.dtype == np.uint16 and int(et[128]) == 32767 and np.all(et[129:] == 0)
    for d in range(-128, 1):
        assert abs(int(et[d + 128]) - 32767 * math.exp(d * in_scale)) <= 0.5
    x = np.arange(-128, 128).reshape(16, 16)
    np.testing.assert_array_equal(nx.table_lookup(x, sig), sig.reshape(16, 16))
    assert nx.table_lookup(x, et).dtype == np.uint16


# ---------------------------------------------------------------------------------------------
# Softmax, argmax, MLGRU gate, absmax quantization
# ---------------------------------------------------------------------------------------------


@cfg(800)
@given(st.integers(1, 3), st.integers(1, 64), st.floats(-6, 0), seeds)
def test_softmax_vs_float(rows, n, log_scale, seed):
    """|p/127 - softmax| <= (0.5 + 65535/2**24)/127 + (D_i + sigma_i * sum_j D_j) / 32767.

    D_j is the table error of element j against 32767 * exp((x_j - max) * in_scale)
    (<= 0.5 for unclamped differences).
    """
    rng = np.random.default_rng(seed)
    in_scale = 2.0**log_scale
    tab = nx.exp_table(in_scale)
    x = rand_ints(rng, (rows, n), I8_MIN, I8_MAX)
    p = nx.softmax(x, tab)
    assert p.dtype == np.int8 and p.shape == x.shape
    assert p.min() >= 0 and p.max() <= 127
    for i in range(rows):
        xs = [int(v) for v in x[i]]
        mx = max(xs)
        ef = [math.exp((v - mx) * in_scale) for v in xs]
        tot = sum(ef)
        sigma = [e / tot for e in ef]
        dd = [abs(int(tab[max(v - mx, -128) + 128]) - 32767 * e) for v, e in zip(xs, ef)]
        for j in range(n):
            bound = (0.5 + 65535 / 2**24) / 127 + (dd[j] + sigma[j] * sum(dd)) / 32767
            assert abs(int(p[i, j]) / 127 - sigma[j]) <= bound + 1e-12
        # exact integer reference
        e = [int(tab[max(v - mx, -128) + 128]) for v in xs]
        r = (127 << 24) // sum(e)
        assert [int(v) for v in p[i]] == [min((ei * r + (1 << 23)) >> 24, 127) for ei in e]


def test_softmax_extremes():
    tab = nx.exp_table(0.1)
    assert [int(v) for v in nx.softmax([[127, -128, -128]], tab)[0]] == [127, 0, 0]
    np.testing.assert_array_equal(nx.softmax(np.zeros((2, 4), int), tab), np.full((2, 4), 32))
    np.testing.assert_array_equal(nx.softmax([[-128]], tab), [[127]])
    np.testing.assert_array_equal(nx.softmax(np.full((1, 127), 5), tab), np.ones((1, 127)))
    # a degenerate all-zero table must not trap: the sum is floored at 1
    np.testing.assert_array_equal(nx.softmax([[3, -7]], np.zeros(256, int)), [[0, 0]])


@cfg(300)
@given(st.integers(1, 4), st.integers(1, 40), seeds)
def test_argmax(rows, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, size=(rows, n))  # many ties
    out = nx.argmax(x)
    assert out.dtype == np.int32 and out.shape == (rows,)
    for i in range(rows):
        xs = list(x[i])
        assert int(out[i]) == xs.index(max(xs))


@cfg(600)
@given(st.integers(1, 40), seeds)
def test_mlgru_gate(n, seed):
    rng = np.random.default_rng(seed)
    f = rand_ints(rng, n, 0, 127)
    c = rand_ints(rng, n, I8_MIN, I8_MAX)
    h = rand_ints(rng, n, I8_MIN, I8_MAX)
    out = nx.mlgru_gate(f, c, h)
    assert out.dtype == np.int8
    neg = -rand_ints(rng, n, 1, 128)  # negative gates behave like f = 0
    np.testing.assert_array_equal(nx.mlgru_gate(neg, c, h), nx.mlgru_gate(0, c, h))
    for fi, ci, hi_, o in zip(f, c, h, out):
        fl = fi / 128 * hi_ + (1 - fi / 128) * ci
        assert abs(int(o) - fl) <= 0.5
        assert int(o) == clamp((int(fi) * int(hi_) + (128 - int(fi)) * int(ci) + 64) >> 7,
                               -128, 127)


def test_mlgru_gate_extremes():
    assert int(nx.mlgru_gate(0, -128, 127)) == -128
    assert int(nx.mlgru_gate(127, 127, 127)) == 127
    assert int(nx.mlgru_gate(127, -128, -128)) == -128
    assert int(nx.mlgru_gate(64, 1, 0)) == 1  # 0.5 rounds half up
    assert int(nx.mlgru_gate(64, -1, 0)) == 0  # -0.5 rounds half up
    # negative gates are treated as 0 (the device never traps on data); 128 is not int8
    assert int(nx.mlgru_gate(-128, 5, 100)) == int(nx.mlgru_gate(0, 5, 100)) == 5
    with pytest.raises(ValueError):
        nx.mlgru_gate(128, 0, 0)


@cfg(800)
@given(st.integers(1, 3), st.integers(1, 40), st.sampled_from([7, 8, 16, 23]), seeds)
def test_absmax_quantize(rows, n, mag_bits, seed):
    rng = np.random.default_rng(seed)
    lim = 127 if mag_bits == 7 else 2**mag_bits
    x = rand_ints(rng, (rows, n), -lim, lim)
    x[rng.random(rows) < 0.1] = 0
    q, m = nx.absmax_quantize(x)
    assert q.dtype == np.int8 and m.dtype == np.int32 and m.shape == (rows,)
    for i in range(rows):
        mi = max(max(abs(int(v)) for v in x[i]), 1)
        assert int(m[i]) == mi
        r = (127 << 24) // mi
        for j in range(n):
            xv = int(x[i, j])
            assert int(q[i, j]) == clamp((xv * r + (1 << 23)) >> 24, -127, 127)
            exact = Fraction(127 * xv, mi)
            assert abs(int(q[i, j]) - exact) <= Fraction(1, 2) + Fraction(abs(xv), 2**24)
            assert abs(int(q[i, j]) - round_away(exact)) <= 1


def test_absmax_quantize_extremes():
    q, m = nx.absmax_quantize([[-128, 127, 0], [0, 0, 0], [2**23, -(2**23), 1]])
    assert [int(v) for v in m] == [128, 1, 2**23]
    assert [int(v) for v in q[0]] == [-127, 126, 0]
    assert [int(v) for v in q[1]] == [0, 0, 0]
    assert [int(v) for v in q[2]] == [127, -127, 0]


# ---------------------------------------------------------------------------------------------
# Float quantizers
# ---------------------------------------------------------------------------------------------

float_mats = st.tuples(st.integers(1, 6), st.integers(1, 24), st.floats(-6, 3), seeds)


@cfg(300)
@given(float_mats)
def test_ternary_absmean(params):
    n, k, log_s, seed = params
    w = np.random.default_rng(seed).normal(size=(n, k)) * 2.0**log_s
    wq, a = nx.ternary_absmean(w)
    ref_a = max(sum(abs(float(v)) for v in w.ravel()) / w.size, 1e-5)
    assert math.isclose(a, ref_a, rel_tol=1e-12)
    assert wq.dtype == np.int8
    for v, q in zip(w.ravel(), wq.ravel()):
        assert int(q) == clamp(round(float(v) / a), -1, 1)  # Python round: half to even


@cfg(300)
@given(float_mats)
def test_int8_per_channel(params):
    n, k, log_s, seed = params
    w = np.random.default_rng(seed).normal(size=(n, k)) * 2.0**log_s
    wq, s = nx.int8_per_channel(w)
    assert wq.dtype == np.int8 and s.shape == (n,)
    for r in range(n):
        sr = max(max(abs(float(v)) for v in w[r]), 1e-8) / 127
        assert math.isclose(s[r], sr, rel_tol=1e-15)
        assert [int(q) for q in wq[r]] == [clamp(round(float(v) / sr), -127, 127) for v in w[r]]
        assert np.all(np.abs(wq[r] * s[r] - w[r]) <= s[r] / 2 * (1 + 1e-9))


@cfg(300)
@given(float_mats)
def test_absmax_quantize_float(params):
    n, k, log_s, seed = params
    x = np.random.default_rng(seed).normal(size=(n, k)) * 2.0**log_s
    q, s = nx.absmax_quantize_float(x)
    assert q.dtype == np.int8 and s.shape == (n,)
    for r in range(n):
        sr = 127 / max(max(abs(float(v)) for v in x[r]), 1e-5)
        assert math.isclose(s[r], sr, rel_tol=1e-15)
        assert [int(v) for v in q[r]] == [clamp(round(float(v) * sr), -128, 127) for v in x[r]]


@cfg(300)
@given(float_mats, st.integers(1, 8))
def test_lowbit_symmetric(params, bits):
    n, k, log_s, seed = params
    w = np.random.default_rng(seed).normal(size=(n, k)) * 2.0**log_s
    wq, s = nx.lowbit_symmetric(w, bits)
    assert wq.dtype == np.int8 and s.shape == (n,)
    qmax = 2 ** (bits - 1) - 1
    for r in range(n):
        amax = max(max(abs(float(v)) for v in w[r]), 1e-8)
        if bits == 1:
            assert math.isclose(s[r], amax, rel_tol=1e-15)
            assert [int(v) for v in wq[r]] == [-1 if v < 0 else 0 for v in w[r]]
        else:
            sr = amax / qmax
            assert math.isclose(s[r], sr, rel_tol=1e-15)
            assert [int(v) for v in wq[r]] == [clamp(round(float(v) / sr), -qmax - 1, qmax)
                                               for v in w[r]]
    if bits <= 4 and k % 8 == 0:  # feeds the LUT packer
        np.testing.assert_array_equal(
            nx.unpack_lut_weights(nx.pack_lut_weights(wq, bits), bits, k), wq)


def test_rounding_helpers():
    xs = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, -0.49999999999999994, 2.0**52 + 1]
    assert [int(v) for v in nx.round_half_away(xs)] == [1, 2, 3, -1, -2, -3, 0, 0, 2**52 + 1]
    assert [int(v) for v in nx.round_half_even(xs)] == [0, 2, 2, 0, -2, -2, 0, 0, 2**52 + 1]
    for bad in ([float("nan")], [float("inf")], [1e300]):
        with pytest.raises(ValueError):
            nx.round_half_away(bad)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------

A = np.zeros((2, 8), np.int8)
W = np.zeros((3, 8), np.int8)
TAB = nx.exp_table(0.1)

BAD_CALLS = {
    "gemm_i8 3-D": lambda: nx.gemm_i8(A[None], W),
    "gemm_i8 K mismatch": lambda: nx.gemm_i8(A, W[:, :4]),
    "gemm_i8 range": lambda: nx.gemm_i8(A.astype(int) + 200, W),
    "gemm_i8 float": lambda: nx.gemm_i8(A.astype(float), W),
    "pack_ternary value": lambda: nx.pack_ternary(W + 2),
    "pack_ternary K": lambda: nx.pack_ternary(np.zeros((2, 6), int)),
    "unpack_ternary K": lambda: nx.unpack_ternary(np.zeros((2, 2), np.uint8), 12),
    "gemm_ternary K": lambda: nx.gemm_ternary(A, np.zeros((3, 3), np.uint8), 12),
    "pack_lut bits": lambda: nx.pack_lut_weights(W, 5),
    "pack_lut range": lambda: nx.pack_lut_weights(W + 2, 2),
    "pack_lut K": lambda: nx.pack_lut_weights(np.zeros((2, 12), int), 2),
    "unpack_lut shape": lambda: nx.unpack_lut_weights(np.zeros((3, 2, 2), np.uint8), 3, 16),
    "gemm_lut g": lambda: nx.gemm_lut(A, nx.pack_lut_weights(W, 2), 2, 8, 3),
    "gemm_lut K": lambda: nx.gemm_lut(A[:, :4], nx.pack_lut_weights(W, 2), 2, 8, 2),
    "lut_tables g": lambda: nx.lut_tables(np.zeros(3, int), 3),
    "lut_tables shape": lambda: nx.lut_tables(np.zeros(4, int), 2),
    "lut_lookup pattern": lambda: nx.lut_lookup(np.zeros(2, int), 4, 2),
    "lut_table_entries": lambda: nx.lut_table_entries(16),
    "qm negative": lambda: nx.quantize_multiplier(-0.5),
    "mbqm shift hi": lambda: nx.multiply_by_quantized_multiplier(1, 2**30, 40),
    "mbqm shift lo": lambda: nx.multiply_by_quantized_multiplier(1, 2**30, -32),
    "mbqm M0 neg": lambda: nx.multiply_by_quantized_multiplier(1, -1, 0),
    "mbqm M0 big": lambda: nx.multiply_by_quantized_multiplier(1, 2**31, 0),
    "mbqm x big": lambda: nx.multiply_by_quantized_multiplier(2**31, 2**30, 0),
    "mbqm rounding": lambda: nx.multiply_by_quantized_multiplier(1, 2**30, 0, rounding="x"),
    "requant channels": lambda: nx.requantize(np.zeros((2, 3), int), [1, 2], 0),
    "requant 2-D M0": lambda: nx.requantize(np.zeros((2, 3), int), np.ones((2, 3), int), 0),
    "requant qmin>qmax": lambda: nx.requantize(0, 1, 0, qmin=5, qmax=4),
    "requant zp float": lambda: nx.requantize(0, 1, 0, zero_point=0.5),
    "sat_add bits": lambda: nx.saturating_add(1, 1, bits=16),
    "sat_add range": lambda: nx.saturating_add(200, 1),
    "mul_req range": lambda: nx.mul_requantize(300, 1, 2**30, 0),
    "mul_scalar shape": lambda: nx.mul_scalar_sat32(np.zeros((2, 3), int), [1, 2, 3]),
    "mul_scalar range": lambda: nx.mul_scalar_sat32([2**31], 1),
    "isqrt negative": lambda: nx.isqrt(-1),
    "isqrt negative array": lambda: nx.isqrt(np.array([4, -1])),
    "rms_reciprocal n": lambda: nx.rms_reciprocal(4, 0),
    "rms_reciprocal ss": lambda: nx.rms_reciprocal(-4, 2),
    "rmsnorm gamma": lambda: nx.rmsnorm(A, np.zeros(4, int), 2**30, 0),
    "rmsnorm per-channel M0": lambda: nx.rmsnorm(A, np.zeros(8, int), [2**30] * 8, 0),
    "rmsnorm shift": lambda: nx.rmsnorm(A, np.zeros(8, int), 2**30, 31),
    "make_table scale": lambda: nx.make_table(nx.exp, 0.0, 1.0),
    "make_table dtype": lambda: nx.make_table(nx.exp, 1.0, 1.0, out_dtype=np.float32),
    "make_table nan": lambda: nx.make_table(lambda v: v * np.nan, 1.0, 1.0),
    "table_lookup shape": lambda: nx.table_lookup([1], np.zeros(255)),
    "table_lookup range": lambda: nx.table_lookup([128], np.zeros(256)),
    "exp_table scale": lambda: nx.exp_table(-1.0),
    "softmax table range": lambda: nx.softmax(A, np.full(256, 70000)),
    "softmax table shape": lambda: nx.softmax(A, TAB[:128]),
    "softmax empty": lambda: nx.softmax(np.zeros((2, 0), int), TAB),
    "softmax range": lambda: nx.softmax([[300]], TAB),
    "argmax empty": lambda: nx.argmax(np.zeros((2, 0), int)),
    "absmax range": lambda: nx.absmax_quantize([[2**23 + 1]]),
    "ternary_absmean nan": lambda: nx.ternary_absmean([[float("nan")]]),
    "ternary_absmean 1-D": lambda: nx.ternary_absmean([1.0]),
    "int8_per_channel 3-D": lambda: nx.int8_per_channel(np.zeros((1, 2, 3))),
    "absmax_float inf": lambda: nx.absmax_quantize_float([[float("inf")]]),
    "lowbit bits": lambda: nx.lowbit_symmetric(np.zeros((2, 2)), 9),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_invalid_inputs_raise_value_error(name):
    with pytest.raises(ValueError):
        BAD_CALLS[name]()


def test_error_message_names_range():
    with pytest.raises(ValueError, match=r"shift=40 out of range \[-31, 30\]"):
        nx.multiply_by_quantized_multiplier(1, 2**30, 40)
