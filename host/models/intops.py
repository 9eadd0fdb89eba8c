"""The device's integer ops over named tensors, as the integer reference models use them.

:class:`IntMachine` holds int8 / int32 tensors by name (standing in for the scratchpads and the
accumulator memory) and offers one method per device instruction, each computed by exactly one
:mod:`tritium.numerics` function:

=============  =====================================================================
``GEMM_TERN``  ``numerics.gemm_ternary(a, w_packed, K)``              (ternary engine)
``GEMM_I8``    ``numerics.gemm_i8(a, w, w_transposed)``                (systolic array)
``VREQ``       ``numerics.requantize(acc, M0, shift)``                 per tensor / channel
``VADD``       ``numerics.saturating_add(a, b)``                       int8
``VMUL``       ``numerics.mul_requantize(a, b, M0, shift)``
``VSCALE``     ``numerics.mul_scalar_sat32(acc, m)``                   per-row int32 scale
``VACT``       ``numerics.table_lookup(x, table)``                     int8 -> int8 table
``VRMS``       ``numerics.rmsnorm(x, gamma, M0, shift)``
``VQUANT``     ``numerics.absmax_quantize(x)`` -> ``(q, m)``
``VGATE``      ``numerics.mlgru_gate(f, c, h)``                        h updated in place
``VSOFTMAX``   ``numerics.softmax(x, exp_table)``
``VARGMAX``    ``numerics.argmax(x)``
``LOAD``       a DMA row read (embedding row, KV-cache rows)
``STORE``      a DMA row write (KV-cache rows)
=============  =====================================================================

With ``trace=True`` every call is appended to :attr:`IntMachine.trace` as an :class:`OpRecord`
(opcode, destination, sources, parameter label, shape): the op sequence the compiler lowers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritium import numerics

__all__ = [
    "IntMachine",
    "OpRecord",
    "RMSNormInt",
    "Requant",
    "align",
    "ceil8",
    "quant_gamma",
    "quant_static",
    "scale_of",
]


def scale_of(ranges: dict[str, float], name: str) -> float:
    """Static scale of quantization point ``name``: ``max(range, 1e-8) / 127`` (as
    :meth:`tritium.host.models.common.NumpyBackend.scale`)."""
    try:
        return max(float(ranges[name]), 1e-8) / 127.0
    except KeyError:
        raise KeyError(f"no range for quantization point {name!r}; calibrate first") from None


def quant_static(x: np.ndarray, scale: float) -> np.ndarray:
    """int8 codes ``clamp(round_half_away(x / scale), -128, 127)`` (embeddings)."""
    return np.clip(numerics.round_half_away(np.asarray(x, np.float64) / scale), -128,
                   127).astype(np.int8)


def quant_gamma(g: np.ndarray) -> tuple[np.ndarray, float]:
    """RMSNorm gain as int8 with a per-tensor absmax scale (as ``NumpyBackend.gamma``)."""
    g = np.asarray(g, np.float64)
    s = max(float(np.max(np.abs(g))), 1e-8) / 127.0
    return np.clip(numerics.round_half_away(g / s), -127, 127).astype(np.int8), s


def align(nbytes: int, to: int) -> int:
    """``nbytes`` rounded up to a multiple of ``to``."""
    return -(-int(nbytes) // to) * to


def ceil8(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (GEMM ``k`` alignment, ``isa.K_ALIGN``)."""
    return align(n, 8)


@dataclass
class Requant:
    """Fixed-point multiplier(s) of a ``VREQ`` / ``VMUL`` / ``VRMS``: ``real ~= M0 * 2**(shift
    - 31)`` (``numerics.quantize_multiplier``), one per tensor or one per output channel.

    On the device the parameter block in ACC holds ``M0[c]`` then ``shift[c]`` (int32 each).
    """

    M0: np.ndarray
    shift: np.ndarray
    real: np.ndarray

    @classmethod
    def from_real(cls, real) -> Requant:
        r = np.atleast_1d(np.asarray(real, np.float64))
        pairs = [numerics.quantize_multiplier(float(v)) for v in r]
        m0 = np.array([p[0] for p in pairs], np.int64)
        sh = np.array([p[1] for p in pairs], np.int64)
        if np.ndim(real) == 0:
            return cls(m0[0], sh[0], r[0])
        return cls(m0, sh, r)

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.M0) == 1

    @property
    def channels(self) -> int:
        return int(np.size(self.M0))

    @property
    def nbytes(self) -> int:
        """Bytes of the parameter block (int32 M0 and shift per channel)."""
        return 8 * self.channels


@dataclass
class RMSNormInt:
    """``VRMS`` parameters: int8 ``gamma`` and the per-tensor requantization
    ``real = s_gamma / (2**15 * s_out)`` (``numerics.rmsnorm``)."""

    gamma: np.ndarray
    rq: Requant
    out_scale: float

    @classmethod
    def make(cls, gamma_float: np.ndarray, out_scale: float) -> RMSNormInt:
        g, sg = quant_gamma(gamma_float)
        return cls(g, Requant.from_real(sg / (2.0 ** numerics.RMS_OUT_Q * out_scale)), out_scale)

    @property
    def nbytes(self) -> tuple[int, int]:
        """(gamma bytes, parameter bytes)."""
        return self.gamma.size, self.rq.nbytes


@dataclass(frozen=True)
class OpRecord:
    """One executed op: ``op`` (ISA mnemonic), ``dst`` (tensor name or names), ``srcs``,
    ``param`` (label of the weights / table / multiplier used), ``shape`` of the result."""

    op: str
    dst: str
    srcs: tuple[str, ...]
    param: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        p = f"  [{self.param}]" if self.param else ""
        return f"{self.op:9s} {self.dst} <- {', '.join(self.srcs)}{p}  {self.shape}"


@dataclass
class IntMachine:
    """Named tensors plus one method per device op (see the module docstring)."""

    t: dict[str, np.ndarray] = field(default_factory=dict)
    trace: list[OpRecord] | None = None

    @classmethod
    def tracing(cls) -> IntMachine:
        return cls(trace=[])

    def _rec(self, op: str, dst: str, srcs: tuple[str, ...], param: str = "") -> None:
        if self.trace is not None:
            shape = tuple(np.shape(self.t[dst.split(",")[0]]))
            self.trace.append(OpRecord(op, dst, srcs, param, shape))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.t[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.t[name] = value

    # ---------------------------------------------------------------- data movement
    def LOAD(self, dst: str, table: np.ndarray, row: int, label: str) -> None:
        """DMA row ``row`` of ``table`` (e.g. an embedding row) into ``dst`` as ``[1, n]``."""
        self.t[dst] = np.array(table[int(row):int(row) + 1], copy=True)
        self._rec("LOAD", dst, (f"{label}[{int(row)}]",))

    def STORE(self, table: np.ndarray, index, src: str, label: str) -> None:
        """DMA ``src`` into ``table[index]`` (e.g. a KV-cache row); ``label`` names the
        destination in the trace."""
        table[index] = self.t[src].reshape(table[index].shape)
        if self.trace is not None:
            self.trace.append(OpRecord("STORE", label, (src,), "",
                                       tuple(np.shape(table[index]))))

    # ---------------------------------------------------------------- GEMMs
    def GEMM_TERN(self, dst: str, a: str, w_packed: np.ndarray, K: int, label: str) -> None:
        self.t[dst] = numerics.gemm_ternary(self.t[a], w_packed, K)
        self._rec("GEMM_TERN", dst, (a,), label)

    def GEMM_I8(self, dst: str, a: str, w: np.ndarray, label: str,
                w_transposed: bool = False) -> None:
        self.t[dst] = numerics.gemm_i8(self.t[a], w, w_transposed)
        self._rec("GEMM_I8", dst, (a,), label + (" (wt)" if w_transposed else ""))

    # ---------------------------------------------------------------- vector unit
    def VREQ(self, dst: str, src: str, rq: Requant, label: str) -> None:
        self.t[dst] = numerics.requantize(self.t[src], rq.M0, rq.shift)
        self._rec("VREQ", dst, (src,), label)

    def VADD(self, dst: str, a: str, b: str) -> None:
        self.t[dst] = numerics.saturating_add(self.t[a], self.t[b])
        self._rec("VADD", dst, (a, b))

    def VMUL(self, dst: str, a: str, b: str, rq: Requant, label: str) -> None:
        self.t[dst] = numerics.mul_requantize(self.t[a], self.t[b], rq.M0, rq.shift)
        self._rec("VMUL", dst, (a, b), label)

    def VSCALE(self, dst: str, src: str, m: str) -> None:
        self.t[dst] = numerics.mul_scalar_sat32(self.t[src], self.t[m])
        self._rec("VSCALE", dst, (src, m))

    def VACT(self, dst: str, src: str, table: np.ndarray, label: str) -> None:
        self.t[dst] = numerics.table_lookup(self.t[src], table)
        self._rec("VACT", dst, (src,), label)

    def VRMS(self, dst: str, src: str, norm: RMSNormInt, label: str) -> None:
        self.t[dst] = numerics.rmsnorm(self.t[src], norm.gamma, int(norm.rq.M0),
                                       int(norm.rq.shift))
        self._rec("VRMS", dst, (src,), label)

    def VQUANT(self, dst_q: str, dst_m: str, src: str) -> None:
        self.t[dst_q], self.t[dst_m] = numerics.absmax_quantize(self.t[src])
        self._rec("VQUANT", f"{dst_q},{dst_m}", (src,))

    def VGATE(self, h: str, f: str, c: str) -> None:
        self.t[h] = numerics.mlgru_gate(self.t[f], self.t[c], self.t[h])
        self._rec("VGATE", h, (f, c, h))

    def VSOFTMAX(self, dst: str, src: str, exp_table: np.ndarray, label: str) -> None:
        self.t[dst] = numerics.softmax(self.t[src], exp_table)
        self._rec("VSOFTMAX", dst, (src,), label)

    def VARGMAX(self, dst: str, src: str, n: int) -> None:
        self.t[dst] = numerics.argmax(self.t[src][..., :n])
        self._rec("VARGMAX", dst, (src,), f"n={n}")

