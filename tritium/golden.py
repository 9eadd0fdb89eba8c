"""The golden model: a NumPy interpreter of the tritium ISA.

:func:`run` executes a program that sits in a device-memory image (the same byte-addressed map
the RTL sees behind its AXI port) and returns the final image, the scratchpads and a trace.
Every arithmetic step is a call into :mod:`tritium.numerics`; this module only moves bytes,
checks operands and sequences instructions. The RTL top must produce the same final device
memory image byte for byte.

Semantics are sequential (see :mod:`tritium.isa`). Checks happen in this order for each
instruction, and the first failing check decides the error code:

1. fetch: the pc is 16-byte aligned (``MISALIGNED``) and inside device memory
   (``ADDRESS_RANGE``);
2. decode: known opcode and zero reserved bits (``INVALID_OPCODE``);
3. engine present for a GEMM (``ENGINE_ABSENT``);
4. operands: counts >= 1, GEMM ``k`` a multiple of 8, LUT ``bits`` in
   ``1..cfg.lut_max_bits``, ``wt`` only on GEMM_I8, LOAD/STORE space valid, requantization
   parameters in range (``BAD_OPERAND``);
5. alignment of addresses, lengths and strides (``MISALIGNED``);
6. every range of :func:`tritium.isa.footprint` inside its space (``ADDRESS_RANGE``);
7. no written range partially overlaps a read range of the same instruction (identical ranges,
   as in ``VGATE`` or an in-place ``VADD``, are fine) (``BAD_OPERAND``).

A fault stops execution and raises :class:`DeviceError` with the pc and the reason; nothing of
the faulting instruction is written. ``max_instructions`` (default ``cfg.watchdog_cycles``) bounds
the retired-instruction count (``WATCHDOG``): the RTL's watchdog counts cycles instead, which is
never fewer than instructions, so a program the golden model finishes is one the RTL finishes.

Accumulating GEMMs (``accumulate=1``) add into int32 with two's-complement wrap-around, as the
hardware adders do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import numerics as nx
from .config import AcceleratorConfig
from .isa import (
    FORMATS,
    GEMM_ENGINE,
    INSTR_BYTES,
    DecodeError,
    ErrorCode,
    Instr,
    Op,
    Space,
    decode,
    footprint,
)

__all__ = ["DeviceError", "GoldenDevice", "Result", "run"]


class DeviceError(Exception):
    """A program fault: ``code`` (:class:`~tritium.isa.ErrorCode`), ``pc`` and ``reason``."""

    def __init__(self, code: ErrorCode, pc: int, reason: str):
        self.code = ErrorCode(code)
        self.pc = pc
        self.reason = reason
        super().__init__(f"{self.code.name} at pc={pc:#x}: {reason}")


@dataclass
class Result:
    """Outcome of :func:`run`.

    Attributes
    ----------
    mem : np.ndarray
        Final device-memory image (uint8, ``cfg.dev_mem_bytes``).
    spad, acc : np.ndarray
        Final scratchpad contents (uint8 bytes; ``acc`` viewed as little-endian int32 by
        :meth:`acc_i32`).
    trace : list of (int, Instr)
        Every retired instruction with its pc, HALT included.
    instret : int
        Retired instruction count.
    halt_pc : int
        pc of the HALT.
    """

    mem: np.ndarray
    spad: np.ndarray
    acc: np.ndarray
    trace: list[tuple[int, Instr]] = field(default_factory=list)
    instret: int = 0
    halt_pc: int = 0

    def acc_i32(self) -> np.ndarray:
        return self.acc.view("<i4")


_SPACE_NAMES = {Space.SPAD: "SPAD", Space.ACC: "ACC"}


class GoldenDevice:
    """Device state (memory + scratchpads) and the instruction interpreter.

    Use :func:`run` for one-shot execution; keep a ``GoldenDevice`` to run several programs on
    the same state (scratchpads persist between programs, as on the hardware).
    """

    def __init__(self, cfg: AcceleratorConfig, mem=None):
        self.cfg = cfg
        if mem is None:
            self.mem = np.zeros(cfg.dev_mem_bytes, np.uint8)
        else:
            self.mem = _as_image(mem, cfg)
        self.spad = np.zeros(cfg.spad_bytes, np.uint8)
        self.acc = np.zeros(cfg.acc_bytes, np.uint8)

    # ------------------------------------------------------------------ views
    def _space(self, name: str) -> np.ndarray:
        return {"DRAM": self.mem, "SPAD": self.spad, "ACC": self.acc}[name]

    def _i8(self, addr: int, count: int) -> np.ndarray:
        return self.spad[addr : addr + count].view(np.int8).copy()

    def _put_i8(self, addr: int, values: np.ndarray) -> None:
        v = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
        self.spad[addr : addr + v.size] = v.view(np.uint8)

    def _i32(self, addr: int, count: int) -> np.ndarray:
        return self.acc[addr : addr + 4 * count].view("<i4").astype(np.int32)

    def _put_i32(self, addr: int, values: np.ndarray) -> None:
        v = np.ascontiguousarray(values, dtype="<i4").reshape(-1)
        self.acc[addr : addr + 4 * v.size] = v.view(np.uint8)

    # ------------------------------------------------------------------ execution
    def run(self, prog_base: int = 0, max_instructions: int | None = None) -> Result:
        """Execute from ``prog_base`` until HALT; raises :class:`DeviceError` on a fault."""
        cfg = self.cfg
        limit = cfg.watchdog_cycles if max_instructions is None else max_instructions
        pc = prog_base
        trace: list[tuple[int, Instr]] = []
        while True:
            if len(trace) >= limit:
                raise DeviceError(
                    ErrorCode.WATCHDOG, pc, f"no HALT after {limit} instructions"
                )
            instr = self.fetch(pc)
            self.check(instr, pc)
            trace.append((pc, instr))
            if instr.op == Op.HALT:
                return Result(self.mem, self.spad, self.acc, trace, len(trace), pc)
            if instr.op == Op.JUMP:
                pc = instr.target
                continue
            self.execute(instr, pc)
            pc += INSTR_BYTES

    def fetch(self, pc: int) -> Instr:
        if pc % INSTR_BYTES:
            raise DeviceError(ErrorCode.MISALIGNED, pc, f"pc {pc:#x} is not 16-byte aligned")
        if not 0 <= pc <= self.cfg.dev_mem_bytes - INSTR_BYTES:
            raise DeviceError(
                ErrorCode.ADDRESS_RANGE,
                pc,
                f"pc {pc:#x} outside device memory [0, {self.cfg.dev_mem_bytes:#x})",
            )
        word = int.from_bytes(self.mem[pc : pc + INSTR_BYTES].tobytes(), "little")
        try:
            return decode(word)
        except DecodeError as e:
            raise DeviceError(ErrorCode.INVALID_OPCODE, pc, str(e)) from None

    def check(self, instr: Instr, pc: int) -> None:
        """Operand, alignment and range checks (see the module docstring for the order)."""
        cfg, op, d = self.cfg, instr.op, instr.as_dict()

        def bad(reason: str) -> DeviceError:
            return DeviceError(ErrorCode.BAD_OPERAND, pc, f"{op.name}: {reason}")

        def misaligned(what: str, value: int, unit: int) -> None:
            if value % unit:
                raise DeviceError(
                    ErrorCode.MISALIGNED,
                    pc,
                    f"{op.name}: {what}={value:#x} is not a multiple of {unit}",
                )

        if op in GEMM_ENGINE:
            engine = GEMM_ENGINE[op]
            if not cfg.has(engine):
                raise DeviceError(
                    ErrorCode.ENGINE_ABSENT,
                    pc,
                    f"{op.name}: engine {engine!r} is not in this configuration "
                    f"({', '.join(cfg.engines)})",
                )
            if d["m"] < 1 or d["n"] < 1:
                raise bad(f"m={d['m']}, n={d['n']}; both must be >= 1")
            if d["k"] < 8 or d["k"] % 8:
                raise bad(f"k={d['k']}; k must be a positive multiple of 8")
            if op == Op.GEMM_LUT and not 1 <= d["bits"] <= cfg.lut_max_bits:
                raise bad(f"bits={d['bits']}; bits must be in 1..{cfg.lut_max_bits}")
            if op != Op.GEMM_LUT and d["bits"]:
                raise bad("bits is only valid for GEMM_LUT")
            if op != Op.GEMM_I8 and d["wt"]:
                raise bad("wt is only valid for GEMM_I8")
            misaligned("c", d["c"], 4)
        elif op in (Op.LOAD, Op.STORE):
            if d["space"] not in _SPACE_NAMES:
                raise bad(f"space={d['space']}; space must be 0 (spad) or 1 (acc)")
            if d["rows"] < 1 or d["row_bytes"] < 1:
                raise bad(f"rows={d['rows']}, row_bytes={d['row_bytes']}; both must be >= 1")
            if d["rows"] > 1 and d["stride"] < d["row_bytes"]:
                raise bad(f"stride={d['stride']} < row_bytes={d['row_bytes']} (rows overlap)")
            unit = cfg.bus_bytes
            for name in ("dram", "row_bytes", "stride", "loc"):
                misaligned(name, d[name], unit)
        elif FORMATS[op] and op.name.startswith("V"):
            if d["rows"] < 1 or d["n"] < 1:
                raise bad(f"rows={d['rows']}, n={d['n']}; both must be >= 1")
            if op != Op.VREQ and d["per_channel"]:
                raise bad("per_channel is only valid for VREQ")
            for name in _acc_operands(op):
                misaligned(name, d[name], 4)
            if op in (Op.VREQ, Op.VMUL, Op.VRMS):
                pc_count = d["n"] if (op == Op.VREQ and d["per_channel"]) else 1
                self._check_range(instr, pc)
                m0 = self._i32(d["param"], pc_count)
                sh = self._i32(d["param"] + 4 * pc_count, pc_count)
                if (m0 < 0).any():
                    raise bad("a multiplier M0 is negative; M0 must be in [0, 2^31-1]")
                if ((sh < -31) | (sh > 30)).any():
                    raise bad("a shift is outside [-31, 30]")
        self._check_range(instr, pc)
        self._check_overlap(instr, pc)

    def _check_overlap(self, instr: Instr, pc: int) -> None:
        """A range an instruction writes may coincide exactly with a range it reads (in-place
        ops) or be disjoint from it, never overlap it partially: hardware streams reads ahead
        of writes, so a partial overlap would depend on timing."""
        reads, writes = footprint(instr)
        for ws, w0, w1 in writes:
            for rs, r0, r1 in reads:
                if ws == rs and w0 < r1 and r0 < w1 and (w0, w1) != (r0, r1):
                    raise DeviceError(
                        ErrorCode.BAD_OPERAND,
                        pc,
                        f"{instr.op.name}: writes {ws} [{w0:#x}, {w1:#x}) partially overlapping "
                        f"the read range [{r0:#x}, {r1:#x}); use identical or disjoint ranges",
                    )

    def _check_range(self, instr: Instr, pc: int) -> None:
        reads, writes = footprint(instr)
        for space, start, end in reads + writes:
            size = self._space(space).size
            if not (0 <= start and end <= size):
                raise DeviceError(
                    ErrorCode.ADDRESS_RANGE,
                    pc,
                    f"{instr.op.name}: {space} range [{start:#x}, {end:#x}) outside "
                    f"[0, {size:#x})",
                )

    def execute(self, instr: Instr, pc: int) -> None:
        op, d = instr.op, instr.as_dict()
        if op in (Op.NOP, Op.FENCE):
            return
        if op in (Op.LOAD, Op.STORE):
            local = self.spad if d["space"] == Space.SPAD else self.acc
            rows, rb, stride = d["rows"], d["row_bytes"], d["stride"]
            for r in range(rows):
                dram = d["dram"] + r * stride
                loc = d["loc"] + r * rb
                if op == Op.LOAD:
                    local[loc : loc + rb] = self.mem[dram : dram + rb]
                else:
                    self.mem[dram : dram + rb] = local[loc : loc + rb]
            return
        if op in GEMM_ENGINE:
            self._gemm(op, d)
            return
        try:
            self._vector(op, d)
        except (ValueError, OverflowError) as e:  # numerics rejected an operand
            raise DeviceError(ErrorCode.BAD_OPERAND, pc, f"{op.name}: {e}") from None

    def _gemm(self, op: Op, d: dict) -> None:
        m, k, n = d["m"], d["k"], d["n"]
        a = self._i8(d["a"], m * k).reshape(m, k)
        if op == Op.GEMM_I8:
            w = self._i8(d["w"], n * k)
            w = w.reshape(k, n) if d["wt"] else w.reshape(n, k)
            prod = nx.gemm_i8(a, w, w_transposed=bool(d["wt"]))
        elif op == Op.GEMM_TERN:
            packed = self.spad[d["w"] : d["w"] + n * (k // 4)].reshape(n, k // 4)
            prod = nx.gemm_ternary(a, packed, k)
        else:
            bits = d["bits"]
            size = n * bits * (k // 8)
            packed = self.spad[d["w"] : d["w"] + size].reshape(n, bits, k // 8)
            prod = nx.gemm_lut(a, packed, bits, k, self.cfg.lut_group)
        prod = prod.astype(np.int64)
        if d["accumulate"]:
            prod = prod + self._i32(d["c"], m * n).reshape(m, n)
        self._put_i32(d["c"], _wrap32(prod))

    def _params(self, addr: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self._i32(addr, count), self._i32(addr + 4 * count, count)

    def _vector(self, op: Op, d: dict) -> None:
        rows, n = d["rows"], d["n"]
        total = rows * n
        src, src2, dst, param, zp = d["src"], d["src2"], d["dst"], d["param"], d["zp"]
        if op == Op.VREQ:
            count = n if d["per_channel"] else 1
            m0, sh = self._params(param, count)
            if count == 1:
                m0, sh = int(m0[0]), int(sh[0])
            x = self._i32(src, total).reshape(rows, n)
            self._put_i8(dst, nx.requantize(x, m0, sh, zero_point=zp))
        elif op == Op.VADD:
            self._put_i8(dst, nx.saturating_add(self._i8(src, total), self._i8(src2, total)))
        elif op == Op.VADD32:
            self._put_i32(
                dst, nx.saturating_add(self._i32(src, total), self._i32(src2, total), bits=32)
            )
        elif op == Op.VMUL:
            m0, sh = self._params(param, 1)
            y = nx.mul_requantize(
                self._i8(src, total), self._i8(src2, total), int(m0[0]), int(sh[0]), zp
            )
            self._put_i8(dst, y)
        elif op == Op.VSCALE:
            x = self._i32(src, total).reshape(rows, n)
            self._put_i32(dst, nx.mul_scalar_sat32(x, self._i32(src2, rows)))
        elif op == Op.VACT:
            table = self._i8(src2, 256)
            self._put_i8(dst, nx.table_lookup(self._i8(src, total), table))
        elif op == Op.VRMS:
            m0, sh = self._params(param, 1)
            x = self._i8(src, total).reshape(rows, n)
            y = nx.rmsnorm(x, self._i8(src2, n), int(m0[0]), int(sh[0]), zero_point=zp)
            self._put_i8(dst, y)
        elif op == Op.VQUANT:
            q, m = nx.absmax_quantize(self._i8(src, total).reshape(rows, n))
            self._put_i8(dst, q)
            self._put_i32(param, m)
        elif op == Op.VGATE:
            h = nx.mlgru_gate(self._i8(src, total), self._i8(src2, total), self._i8(dst, total))
            self._put_i8(dst, h)
        elif op == Op.VSOFTMAX:
            table = self.spad[src2 : src2 + 512].view("<u2").astype(np.uint16)
            x = self._i8(src, total).reshape(rows, n)
            self._put_i8(dst, nx.softmax(x, table))
        elif op == Op.VARGMAX:
            x = self._i8(src, total).reshape(rows, n)
            self._put_i32(dst, nx.argmax(x))
        else:  # pragma: no cover - every opcode is handled above
            raise AssertionError(op)


def _acc_operands(op: Op) -> tuple[str, ...]:
    """Names of the vector-instruction fields that address the ACC space."""
    return {
        Op.VREQ: ("src", "param"),
        Op.VADD32: ("src", "src2", "dst"),
        Op.VMUL: ("param",),
        Op.VSCALE: ("src", "src2", "dst"),
        Op.VRMS: ("param",),
        Op.VQUANT: ("param",),
        Op.VARGMAX: ("dst",),
        Op.VSOFTMAX: (),
    }.get(op, ())


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def _as_image(mem, cfg: AcceleratorConfig) -> np.ndarray:
    arr = np.frombuffer(bytes(mem), np.uint8) if isinstance(mem, (bytes, bytearray)) else mem
    arr = np.array(arr, dtype=np.uint8, copy=True).reshape(-1)
    if arr.size != cfg.dev_mem_bytes:
        raise ValueError(
            f"memory image has {arr.size} bytes; config {cfg.name!r} has dev_mem_bytes="
            f"{cfg.dev_mem_bytes}"
        )
    return arr


def run(
    cfg: AcceleratorConfig,
    mem,
    prog_base: int = 0,
    max_instructions: int | None = None,
) -> Result:
    """Run the program at ``prog_base`` in the image ``mem`` (not modified) and return a
    :class:`Result`. Raises :class:`DeviceError` on a fault."""
    return GoldenDevice(cfg, mem).run(prog_base, max_instructions)
