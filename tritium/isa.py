"""The tritium instruction set: formats, opcodes, encode/decode, error codes, CSR map.

Every instruction is 128 bits (16 bytes, little-endian in device memory): bits ``[7:0]`` hold
the opcode and each format packs its fields upward from bit 8 in the order listed in
:data:`FORMATS`. The RTL decoder, the golden interpreter, the assembler and ``docs/isa.md`` are all
generated from the tables in this module.

Execution model
---------------
Programs are straight-line instruction streams fetched from device memory starting at the
program base (CSR ``PROG_BASE``), plus ``JUMP`` for loops. Semantics are **sequential**: each
instruction observes the effects of all earlier ones. The hardware controller dispatches to three
queues (load = ``LOAD``; compute = ``GEMM_*`` and ``V*``; store = ``STORE``) that run
concurrently; it tracks dependencies itself by comparing the scratchpad/DRAM address ranges each
queued instruction reads and writes (:func:`footprint`), so a program that double-buffers into
disjoint scratchpad regions overlaps DMA with compute without any explicit tokens. ``FENCE``
waits until all queues are idle. ``HALT`` waits for all queues, then raises done.

Memory spaces
-------------
``DRAM``  device memory, byte addresses ``[0, cfg.dev_mem_bytes)``, behind the AXI4 port.
``SPAD``  int8 scratchpad, byte addresses ``[0, cfg.spad_bytes)``.
``ACC``   int32 accumulator scratchpad, byte addresses ``[0, cfg.acc_bytes)`` (4-byte elements,
          little-endian).

Alignment: the pc (PROG_BASE and JUMP targets) is a multiple of 16; DMA DRAM addresses, row lengths, strides and local addresses are multiples of the bus
width in bytes (``cfg.bus_bytes``); ACC operand addresses are multiples of 4; GEMM ``k`` is a
multiple of 8 (:data:`K_ALIGN`).

Operand overlap: a range an instruction writes is either identical to a range it reads (in-place
ops such as ``VGATE`` or ``VADD dst=src``) or disjoint from it; a partial overlap is
``BAD_OPERAND`` (the hardware streams reads ahead of writes).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CSR",
    "CSR_ID_VALUE",
    "CSR_VERSION_VALUE",
    "FORMATS",
    "INSTR_BITS",
    "INSTR_BYTES",
    "K_ALIGN",
    "UNITS",
    "DecodeError",
    "ErrorCode",
    "Field",
    "Instr",
    "Op",
    "Space",
    "decode",
    "decode_program",
    "encode",
    "encode_program",
    "footprint",
]

INSTR_BITS = 128
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 8
#: GEMM reduction lengths are multiples of this (packed ternary bytes and LUT bit-planes).
K_ALIGN = 8


class Op(enum.IntEnum):
    """Opcodes. ``0x00`` is deliberately invalid so that running into zeroed memory traps."""

    NOP = 0x01
    HALT = 0x02
    FENCE = 0x03
    JUMP = 0x04
    LOAD = 0x10
    STORE = 0x11
    GEMM_I8 = 0x20  # systolic array
    GEMM_TERN = 0x21  # MatMul-free ternary engine
    GEMM_LUT = 0x22  # LUT tensor core
    VREQ = 0x30
    VADD = 0x31
    VADD32 = 0x32
    VMUL = 0x33
    VSCALE = 0x34
    VACT = 0x35
    VRMS = 0x36
    VQUANT = 0x37
    VGATE = 0x38
    VSOFTMAX = 0x39
    VARGMAX = 0x3A


class Space(enum.IntEnum):
    """Scratchpad targeted by LOAD/STORE."""

    SPAD = 0
    ACC = 1


class ErrorCode(enum.IntEnum):
    """Value of the ERROR CSR (and of :class:`tritium.golden.DeviceError` ``.code``)."""

    NONE = 0
    INVALID_OPCODE = 1
    ADDRESS_RANGE = 2
    MISALIGNED = 3
    BUS_ERROR = 4  # AXI SLVERR / DECERR
    WATCHDOG = 5
    ENGINE_ABSENT = 6
    BAD_OPERAND = 7


#: GEMM opcode -> engine name (see :data:`tritium.config.ENGINES`).
GEMM_ENGINE = {Op.GEMM_I8: "systolic", Op.GEMM_TERN: "ternary", Op.GEMM_LUT: "lut"}
ENGINE_GEMM = {v: k for k, v in GEMM_ENGINE.items()}


@dataclass(frozen=True)
class Field:
    """One instruction field: ``width`` bits at ``lsb``; ``signed`` fields are two's complement."""

    name: str
    lsb: int
    width: int
    signed: bool = False
    doc: str = ""

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


def _layout(*fields: tuple) -> tuple[Field, ...]:
    """Pack ``(name, width[, signed], doc)`` tuples upward from bit 8."""
    out, lsb = [], OPCODE_BITS
    for spec in fields:
        if len(spec) == 3:
            name, width, doc = spec
            signed = False
        else:
            name, width, signed, doc = spec
        out.append(Field(name, lsb, width, signed, doc))
        lsb += width
    if lsb > INSTR_BITS:
        raise AssertionError(f"format overflows {INSTR_BITS} bits: {lsb}")
    return tuple(out)


_ADDR = 20  # scratchpad address bits (1 MiB)
_DMA = _layout(
    ("space", 2, "local space: 0 = SPAD, 1 = ACC"),
    ("rows", 12, "number of rows (>= 1)"),
    ("row_bytes", 16, "bytes per row (>= 1, multiple of bus bytes)"),
    ("loc", _ADDR, "local (scratchpad) byte address; rows are contiguous there"),
    ("dram", 32, "device-memory byte address of row 0"),
    ("stride", 24, "device-memory bytes between row starts"),
)
_GEMM = _layout(
    ("accumulate", 1, "1: C += A*W^T, 0: C = A*W^T"),
    ("wt", 1, "GEMM_I8 only: W stored K x N (transposed) instead of N x K"),
    ("bits", 3, "GEMM_LUT only: weight width 1..4"),
    ("m", 12, "rows of A and C (>= 1)"),
    ("k", 16, "reduction length (>= 8, multiple of 8)"),
    ("n", 16, "output channels: rows of W, columns of C (>= 1)"),
    ("a", _ADDR, "SPAD address of A, int8 [m, k] row-major"),
    ("w", _ADDR, "SPAD address of W in the engine's packed layout"),
    ("c", _ADDR, "ACC address of C, int32 [m, n] row-major"),
)
_VEC = _layout(
    ("per_channel", 1, "VREQ: M0/shift per column (1) or one pair (0)"),
    ("rows", 12, "rows (>= 1); each row is n contiguous elements"),
    ("n", 16, "elements per row (>= 1)"),
    ("src", _ADDR, "first operand"),
    ("src2", _ADDR, "second operand / table / gamma"),
    ("dst", _ADDR, "result"),
    ("param", _ADDR, "ACC address of parameters (M0, shift) or of per-row scales"),
    ("zp", 8, True, "output zero point (signed)"),
)

#: Fields of each opcode, in bit order.
FORMATS: dict[Op, tuple[Field, ...]] = {
    Op.NOP: (),
    Op.HALT: (),
    Op.FENCE: (),
    Op.JUMP: _layout(("target", 32, "absolute byte address of the next instruction")),
    Op.LOAD: _DMA,
    Op.STORE: _DMA,
    Op.GEMM_I8: _GEMM,
    Op.GEMM_TERN: _GEMM,
    Op.GEMM_LUT: _GEMM,
    **{op: _VEC for op in Op if op.name.startswith("V")},
}

#: One-line meaning of each opcode (rendered into docs/isa.md).
SEMANTICS: dict[Op, str] = {
    Op.NOP: "no operation",
    Op.HALT: "wait for all queues to drain, then stop with STATUS=done",
    Op.FENCE: "wait until the load, compute and store queues are idle",
    Op.JUMP: "continue fetching at `target` (16-byte aligned); an endless loop ends in the "
    "WATCHDOG error",
    Op.LOAD: "DMA DRAM -> SPAD/ACC: `rows` rows of `row_bytes` from `dram` (row stride "
    "`stride`) to contiguous `loc`",
    Op.STORE: "DMA SPAD/ACC -> DRAM: contiguous `loc` to `rows` rows at `dram` (row stride "
    "`stride`)",
    Op.GEMM_I8: "systolic: C[m,n] (+)= sum_k A[m,k] W[n,k]; W int8 [n,k] (or [k,n] if `wt`)",
    Op.GEMM_TERN: "ternary engine: as GEMM_I8 with W 2-bit packed ternary [n, k/4] "
    "(numerics.pack_ternary)",
    Op.GEMM_LUT: "LUT core: as GEMM_I8 with W `bits`-bit planes [n, bits, k/8] "
    "(numerics.pack_lut_weights)",
    Op.VREQ: "SPAD[dst] = requantize(ACC[src], M0, shift, zp); ACC[param] holds M0[c] then "
    "shift[c], c = n if per_channel else 1",
    Op.VADD: "SPAD[dst] = saturating_add(SPAD[src], SPAD[src2]) (int8)",
    Op.VADD32: "ACC[dst] = saturating_add(ACC[src], ACC[src2], bits=32)",
    Op.VMUL: "SPAD[dst] = mul_requantize(SPAD[src], SPAD[src2], M0, shift, zp); "
    "ACC[param] = (M0, shift)",
    Op.VSCALE: "ACC[dst] = mul_scalar_sat32(ACC[src], ACC[src2] per row)",
    Op.VACT: "SPAD[dst] = table_lookup(SPAD[src], SPAD[src2 : src2+256])",
    Op.VRMS: "SPAD[dst] = rmsnorm(SPAD[src], gamma=SPAD[src2], M0, shift, zp); "
    "ACC[param] = (M0, shift)",
    Op.VQUANT: "SPAD[dst], ACC[param] = absmax_quantize(SPAD[src]) (q and per-row m)",
    Op.VGATE: "SPAD[dst] = mlgru_gate(f=SPAD[src], c=SPAD[src2], h_prev=SPAD[dst])",
    Op.VSOFTMAX: "SPAD[dst] = softmax(SPAD[src], exp table uint16[256] at SPAD[src2])",
    Op.VARGMAX: "ACC[dst] = argmax(SPAD[src]) per row (int32)",
}


class DecodeError(ValueError):
    """A word or field value that is not a valid instruction."""


@dataclass(frozen=True)
class Instr:
    """A decoded instruction: opcode plus a dict of field values (missing fields are 0)."""

    op: Op
    fields: tuple[tuple[str, int], ...] = ()

    @classmethod
    def make(cls, op: Op | str, **fields: int) -> Instr:
        op = Op[op.upper()] if isinstance(op, str) else Op(op)
        known = {f.name: f for f in FORMATS[op]}
        for name, v in fields.items():
            if name not in known:
                raise DecodeError(
                    f"{op.name} has no field {name!r}; fields: {', '.join(known) or 'none'}"
                )
            f = known[name]
            if not isinstance(v, int) or isinstance(v, bool) or not f.lo <= v <= f.hi:
                raise DecodeError(
                    f"{op.name}.{name}={v!r} out of range [{f.lo}, {f.hi}] ({f.width}-bit)"
                )
        full = tuple((f.name, int(fields.get(f.name, 0))) for f in FORMATS[op])
        return cls(op, full)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_") or name in ("op", "fields"):
            raise AttributeError(name)  # keeps copy/pickle from recursing
        for k, v in self.fields:
            if k == name:
                return v
        raise AttributeError(f"{self.op.name} has no field {name!r}")

    def as_dict(self) -> dict[str, int]:
        return dict(self.fields)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.fields)
        return f"{self.op.name.lower()} {args}".rstrip()


def encode(instr: Instr) -> int:
    """The 128-bit integer of ``instr``."""
    word = int(instr.op)
    for f in FORMATS[instr.op]:
        v = getattr(instr, f.name)
        word |= (v & ((1 << f.width) - 1)) << f.lsb
    return word


def decode(word: int) -> Instr:
    """Decode a 128-bit integer; raises :class:`DecodeError` on an unknown opcode or on set
    bits outside the format's fields (reserved bits must be zero)."""
    if not 0 <= word < (1 << INSTR_BITS):
        raise DecodeError(f"instruction word {word:#x} is not a {INSTR_BITS}-bit value")
    opc = word & 0xFF
    try:
        op = Op(opc)
    except ValueError:
        raise DecodeError(f"invalid opcode {opc:#04x}") from None
    vals = {}
    used = 0xFF
    for f in FORMATS[op]:
        mask = (1 << f.width) - 1
        v = (word >> f.lsb) & mask
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        vals[f.name] = v
        used |= mask << f.lsb
    if word & ~used:
        raise DecodeError(f"{op.name}: reserved bits set ({word & ~used:#x})")
    return Instr.make(op, **vals)


def encode_program(instrs: Iterable[Instr]) -> bytes:
    """Little-endian byte image of a program (16 bytes per instruction)."""
    return b"".join(encode(i).to_bytes(INSTR_BYTES, "little") for i in instrs)


def decode_program(image: bytes) -> list[Instr]:
    """Inverse of :func:`encode_program`; the length must be a multiple of 16."""
    if len(image) % INSTR_BYTES:
        raise DecodeError(f"program image length {len(image)} is not a multiple of {INSTR_BYTES}")
    return [
        decode(int.from_bytes(image[i : i + INSTR_BYTES], "little"))
        for i in range(0, len(image), INSTR_BYTES)
    ]


# ---------------------------------------------------------------------- footprints
def gemm_weight_bytes(op: Op, k: int, n: int, bits: int = 0) -> int:
    """Bytes of W a GEMM reads from SPAD, in the engine's packed layout."""
    if op == Op.GEMM_I8:
        return n * k
    if op == Op.GEMM_TERN:
        return n * (k // 4)
    if op == Op.GEMM_LUT:
        return n * bits * (k // 8)
    raise ValueError(f"{op!r} is not a GEMM")


#: Bytes per element in each space.
_ELEM = {"SPAD": 1, "ACC": 4}


def footprint(instr: Instr) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """Address ranges an instruction reads and writes: two lists of ``(space, start, end)``
    with ``space`` in ``"DRAM"``, ``"SPAD"``, ``"ACC"`` and ``end`` exclusive.

    The golden model bounds-checks these ranges; the controller uses the same ranges for
    dependency tracking between its queues. DRAM ranges of strided DMA are reported as the
    covering interval.
    """
    op, d = instr.op, instr.as_dict()
    if op in (Op.LOAD, Op.STORE):
        space = "SPAD" if d["space"] == Space.SPAD else "ACC"
        loc = (space, d["loc"], d["loc"] + d["rows"] * d["row_bytes"])
        dram = ("DRAM", d["dram"], d["dram"] + (d["rows"] - 1) * d["stride"] + d["row_bytes"])
        return ([dram], [loc]) if op == Op.LOAD else ([loc], [dram])
    if op in GEMM_ENGINE:
        m, k, n = d["m"], d["k"], d["n"]
        reads = [
            ("SPAD", d["a"], d["a"] + m * k),
            ("SPAD", d["w"], d["w"] + gemm_weight_bytes(op, k, n, d["bits"])),
        ]
        c = ("ACC", d["c"], d["c"] + 4 * m * n)
        if d["accumulate"]:
            reads.append(c)
        return reads, [c]
    if op in FORMATS and FORMATS[op] is _VEC:
        rows, n = d["rows"], d["n"]
        src, src2, dst, param = d["src"], d["src2"], d["dst"], d["param"]
        sp = lambda a, cnt: ("SPAD", a, a + cnt)
        ac = lambda a, cnt: ("ACC", a, a + 4 * cnt)
        total = rows * n
        pc = n if d["per_channel"] else 1
        table = {
            Op.VREQ: ([ac(src, total), ac(param, 2 * pc)], [sp(dst, total)]),
            Op.VADD: ([sp(src, total), sp(src2, total)], [sp(dst, total)]),
            Op.VADD32: ([ac(src, total), ac(src2, total)], [ac(dst, total)]),
            Op.VMUL: ([sp(src, total), sp(src2, total), ac(param, 2)], [sp(dst, total)]),
            Op.VSCALE: ([ac(src, total), ac(src2, rows)], [ac(dst, total)]),
            Op.VACT: ([sp(src, total), sp(src2, 256)], [sp(dst, total)]),
            Op.VRMS: ([sp(src, total), sp(src2, n), ac(param, 2)], [sp(dst, total)]),
            Op.VQUANT: ([sp(src, total)], [sp(dst, total), ac(param, rows)]),
            Op.VGATE: ([sp(src, total), sp(src2, total), sp(dst, total)], [sp(dst, total)]),
            Op.VSOFTMAX: ([sp(src, total), sp(src2, 512)], [sp(dst, total)]),
            Op.VARGMAX: ([sp(src, total)], [ac(dst, rows)]),
        }
        return table[op]
    return [], []


# ---------------------------------------------------------------------- CSRs
#: Execution units, in the order of their busy/stall counter CSRs.
UNITS = ("load", "store", "systolic", "ternary", "lut", "vector")

CSR_ID_VALUE = 0x54524954  # "TRIT"
CSR_VERSION_VALUE = 0x00010000  # 1.0


class CSR(enum.IntEnum):
    """Byte offsets of the 32-bit CSRs on the AXI4-Lite slave.

    CTRL: bit 0 START (write 1 to start at PROG_BASE), bit 1 RESET (write 1 to abort and clear
    STATUS/ERROR/counters), bit 2 IRQ_EN.
    STATUS: bit 0 BUSY, bit 1 DONE, bit 2 ERROR.
    UNIT_BUSY/UNIT_STALL: one pair per entry of :data:`UNITS`, at ``UNIT_BASE + 8*i`` (busy) and
    ``UNIT_BASE + 8*i + 4`` (stall), counting cycles.
    """

    ID = 0x00
    VERSION = 0x04
    CONFIG_HASH = 0x08
    CTRL = 0x0C
    STATUS = 0x10
    ERROR = 0x14
    ERROR_PC = 0x18
    PROG_BASE = 0x1C
    CYCLES_LO = 0x20
    CYCLES_HI = 0x24
    INSTRET = 0x28
    WATCHDOG = 0x2C
    OVERLAP = 0x30
    UNIT_BASE = 0x40


CTRL_START = 1 << 0
CTRL_RESET = 1 << 1
CTRL_IRQ_EN = 1 << 2
STATUS_BUSY = 1 << 0
STATUS_DONE = 1 << 1
STATUS_ERROR = 1 << 2


def unit_csr(unit: str, kind: str = "busy") -> int:
    """Offset of a per-unit counter CSR (``kind`` is ``"busy"`` or ``"stall"``)."""
    if unit not in UNITS or kind not in ("busy", "stall"):
        raise ValueError(f"no counter {unit!r}/{kind!r}; units: {UNITS}")
    return CSR.UNIT_BASE + 8 * UNITS.index(unit) + (4 if kind == "stall" else 0)
