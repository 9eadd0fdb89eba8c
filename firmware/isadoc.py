"""Render ``docs/isa.md`` from :mod:`tritium.isa` (``tritium docs`` writes it; a test keeps the
checked-in file equal to :func:`render_isa_markdown`).

Everything in the document comes from the tables of :mod:`tritium.isa` and its docstrings; the
only prose kept here is the one-line meaning of each error code and CSR, which the tests require
to cover every member of :class:`~tritium.isa.ErrorCode` and :class:`~tritium.isa.CSR`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tritium import isa
from tritium.isa import CSR, FORMATS, INSTR_BITS, INSTR_BYTES, SEMANTICS, UNITS, ErrorCode, Op

__all__ = ["EXAMPLE", "default_doc_path", "render_isa_markdown", "write_isa_markdown"]

#: Meaning of each error code (keyed by name; the tests check every code has one).
ERROR_DOC: dict[str, str] = {
    "NONE": "no error",
    "INVALID_OPCODE": "the fetched word does not decode: unknown opcode (e.g. `0x00`, zeroed "
    "memory) or a reserved bit set",
    "ADDRESS_RANGE": "the pc or an operand range (`footprint`) lies outside its memory space",
    "MISALIGNED": "pc not a multiple of 16; DMA `dram`/`row_bytes`/`stride`/`loc` not a "
    "multiple of the bus width in bytes; ACC operand not a multiple of 4",
    "BUS_ERROR": "the AXI4 port answered SLVERR or DECERR",
    "WATCHDOG": "the program ran the WATCHDOG CSR's number of cycles without reaching HALT (the "
    "golden model counts retired instructions instead)",
    "ENGINE_ABSENT": "a GEMM opcode whose engine is not in `cfg.engines`",
    "BAD_OPERAND": "a field value the operation rejects (`rows=0`, `k` not a multiple of 8, "
    "`bits` outside 1..`lut_max_bits`, flag on the wrong opcode, ...)",
}

#: Meaning of each CSR (keyed by name; the tests check every CSR has one).
CSR_DOC: dict[str, str] = {
    "ID": "identification, reads `{id:#010x}` (\"{id_ascii}\")",
    "VERSION": "ISA version, reads `{version:#010x}` ({major}.{minor}; major in bits 31:16)",
    "CONFIG_HASH": "first 32 bits of `AcceleratorConfig.hash` (`hash32`)",
    "CTRL": "control: see the CTRL bits below",
    "STATUS": "status: see the STATUS bits below",
    "ERROR": "`ErrorCode` of the fault that stopped the program (0: none)",
    "ERROR_PC": "byte address of the faulting instruction",
    "PROG_BASE": "byte address of the first instruction; START fetches from here",
    "CYCLES_LO": "cycles since START, bits 31:0",
    "CYCLES_HI": "cycles since START, bits 63:32",
    "INSTRET": "instructions retired since START",
    "WATCHDOG": "watchdog limit: cycles a run may take before a WATCHDOG error "
    "(reset value `AcceleratorConfig.watchdog_cycles`)",
    "OVERLAP": "cycles in which the load or store unit and a compute unit (a GEMM engine or "
    "the vector unit) are busy at once (DMA/compute overlap)",
    "UNIT_BASE": "first per-unit counter; one busy/stall pair per unit, listed below",
}

#: The example program of the document (also assembled and run by the tests).
EXAMPLE = """\
# One int8 GEMM tile on the systolic array, requantized to int8:
#   Y[M, N] = requantize(A[M, K] @ W[N, K]^T, M0, shift)
.equ M, 4
.equ K, 16
.equ N, 8
.equ A_DRAM, 0x1000          # int8 [M, K]
.equ W_DRAM, 0x1100          # int8 [N, K]
.equ P_DRAM, 0x1200          # int32 M0, shift (padded to 16 bytes)
.equ Y_DRAM, 0x1300          # int8 [M, N] result
.equ A, 0x000                # scratchpad (SPAD) addresses
.equ W, 0x100
.equ Y, 0x200
.equ C, 0x000                # accumulator (ACC) addresses
.equ P, 0x100

start:
    load  space=spad, rows=1, row_bytes=M*K, loc=A, dram=A_DRAM, stride=M*K
    load  space=spad, rows=1, row_bytes=N*K, loc=W, dram=W_DRAM, stride=N*K
    load  space=acc,  rows=1, row_bytes=16,  loc=P, dram=P_DRAM, stride=16
    gemm_i8 m=M, k=K, n=N, a=A, w=W, c=C
    vreq  rows=M, n=N, src=C, dst=Y, param=P, zp=0
    store space=spad, rows=1, row_bytes=M*N, loc=Y, dram=Y_DRAM, stride=M*N
    halt
"""

_SYNTAX = """\
One statement per line; `#` or `;` starts a comment.

| form | meaning |
|---|---|
| `mnemonic field=expr, field=expr, ...` | one instruction; lower-case opcode name, fields of its \
format in any order, missing fields are 0 |
| `name:` | label: byte address of the next instruction (`base + 16 * index`) |
| `.equ NAME, expr` / `.const NAME = expr` | constant (may use labels and later constants) |
| `42` `-3` `0x2a` `0b101010` `0o52` `1_024` | integer literals |
| `+ - * << >> ( )` | expression operators, Python precedence |
| `SPAD` `ACC` `INSTR_BYTES` `K_ALIGN` | built-in symbols; `space=spad` / `space=acc` also work |

Values are range-checked against the field width. `tritium asm prog.s -o prog.bin` assembles,
`tritium disasm prog.bin` disassembles (the output assembles back to the same bytes), and
`tritium run --device golden prog.s` runs a program on the golden model.
"""


# ---------------------------------------------------------------------- helpers
def _rst_to_md(text: str) -> str:
    """The little reStructuredText the :mod:`tritium.isa` docstring uses, as Markdown."""
    text = re.sub(r":(?:data|class|attr|mod):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r":func:`~?([^`]+)`", r"`\1()`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text


def _docstring_sections(doc: str) -> dict[str, str]:
    """Split a NumPy-style docstring into ``{title: body}``; the summary is under ``""``."""
    lines = doc.strip("\n").splitlines()
    sections: dict[str, list[str]] = {"": []}
    current = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()):
            current = line.strip()
            sections[current] = []
            i += 2
            continue
        sections[current].append(line)
        i += 1
    return {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def _definition_list(body: str) -> str:
    """``NAME``  text (indented continuation lines) blocks -> a Markdown bullet list; other
    paragraphs pass through."""
    out: list[str] = []
    for line in body.splitlines():
        m = re.match(r"^``(\w+)``\s{2,}(.*)$", line)
        if m:
            out.append(f"- `{m.group(1)}`: {m.group(2)}")
        elif line.startswith((" ", "\t")) and out and out[-1].startswith("- "):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def _bullets(lines: list[str]) -> str:
    """Lines starting ``NAME:`` begin a bullet; other lines continue the previous one."""
    items: list[str] = []
    for line in (x.strip() for x in lines):
        if not line:
            continue
        if re.match(r"^[A-Z_/]+:", line) or not items:
            items.append(f"- {line}")
        else:
            items[-1] += " " + line
    return "\n".join(items)


def _table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _formats() -> list[tuple[tuple[isa.Field, ...], list[Op]]]:
    """Distinct formats, each with the opcodes that use it, in opcode order."""
    groups: list[tuple[tuple[isa.Field, ...], list[Op]]] = []
    for op in Op:
        for fmt, ops in groups:
            if fmt == FORMATS[op]:
                ops.append(op)
                break
        else:
            groups.append((FORMATS[op], [op]))
    return groups


def _format_name(ops: list[Op]) -> str:
    return ", ".join(f"`{op.name.lower()}`" for op in ops)


def _bits(hi: int, lo: int) -> str:
    return f"{hi}:{lo}" if hi != lo else f"{lo}"


def _example_listing() -> str:
    from tritium.firmware.asm import assemble_program, format_instr

    prog = assemble_program(EXAMPLE, filename="example.s")
    rows = []
    for i, ins in enumerate(prog.instrs):
        word = isa.encode(ins)
        rows.append([f"`{prog.address(i):#06x}`", f"`{word:032x}`", f"`{format_instr(ins)}`"])
    return _table(["address", "word (hex, bit 127 first)", "instruction"], rows)


# ---------------------------------------------------------------------- renderer
def render_isa_markdown() -> str:
    """The complete ``docs/isa.md`` text, generated from :mod:`tritium.isa`."""
    sections = _docstring_sections(isa.__doc__ or "")
    summary = sections.pop("")
    summary_title, _, summary_body = summary.partition("\n")
    out: list[str] = [
        "# tritium instruction set",
        "",
        (
            "<!-- Generated by tritium.firmware.isadoc.render_isa_markdown() from tritium/isa.py."
            " Do not edit; run `tritium docs`. -->"
        ),
        "",
        _rst_to_md(summary_title.strip()),
        "",
        "## Encoding",
        "",
        _rst_to_md(summary_body.strip()),
        "",
        f"- Instruction size: {INSTR_BITS} bits = {INSTR_BYTES} bytes, little-endian in "
        + "device memory (byte 0 holds bits 7:0).",
        f"- Opcode: bits {isa.OPCODE_BITS - 1}:0. Fields are packed upward from bit "
        + f"{isa.OPCODE_BITS} in the order of the tables below.",
        "- Unsigned fields hold 0..2^width-1; signed fields are two's complement.",
        "- Bits above the last field of a format are reserved and must be zero; a word with a "
        + "reserved bit set, or with an unknown opcode, is an `INVALID_OPCODE` error.",
        "- Opcode `0x00` is invalid, so running into zeroed memory traps. GEMM reduction "
        + f"lengths `k` are multiples of `K_ALIGN` = {isa.K_ALIGN}.",
        "",
    ]
    for title, body in sections.items():
        out += [f"## {title}", "", _rst_to_md(_definition_list(body)), ""]

    # opcodes
    fmt_of = {}
    for idx, (_fmt, ops) in enumerate(_formats()):
        for op in ops:
            fmt_of[op] = idx
    rows = []
    for op in Op:
        engine = isa.GEMM_ENGINE.get(op, "")
        rows.append(
            [
                f"`{int(op):#04x}`",
                f"`{op.name.lower()}`",
                f"[{fmt_of[op]}](#format-{fmt_of[op]})",
                f"`{engine}`" if engine else "",
                SEMANTICS.get(op, ""),
            ]
        )
    out += [
        "## Opcodes",
        "",
        _table(["opcode", "mnemonic", "format", "engine", "meaning"], rows),
        "",
        "## Formats",
        "",
        "Bits are inclusive `hi:lo` positions in the 128-bit word; *range* is what the field "
        + "can encode (the configuration and the operation may accept less).",
        "",
    ]
    for idx, (fmt, ops) in enumerate(_formats()):
        out += [f"### Format {idx}", "", f"Used by {_format_name(ops)}.", ""]
        rows = [["`opcode`", _bits(isa.OPCODE_BITS - 1, 0), str(isa.OPCODE_BITS), "no",
                 " ".join(f"`{int(op):#04x}`" for op in ops), "operation (see opcodes)"]]
        top = isa.OPCODE_BITS
        for f in fmt:
            rows.append(
                [
                    f"`{f.name}`",
                    _bits(f.lsb + f.width - 1, f.lsb),
                    str(f.width),
                    "yes" if f.signed else "no",
                    f"{f.lo}..{f.hi}",
                    _rst_to_md(f.doc),
                ]
            )
            top = f.lsb + f.width
        if top < INSTR_BITS:
            rows.append(["*reserved*", _bits(INSTR_BITS - 1, top), str(INSTR_BITS - top), "",
                         "0", "must be zero"])
        out += [_table(["field", "bits", "width", "signed", "range", "meaning"], rows), ""]

    # error codes
    out += [
        "## Error codes",
        "",
        "A fault stops the program and sets STATUS.ERROR, `ERROR` and `ERROR_PC`; the golden "
        + "model raises `tritium.golden.DeviceError(code, pc, reason)`.",
        "",
        _table(
            ["value", "name", "meaning"],
            [[str(int(e)), f"`{e.name}`", ERROR_DOC.get(e.name, "")] for e in ErrorCode],
        ),
        "",
    ]

    # CSRs
    fill = {
        "id": isa.CSR_ID_VALUE,
        "id_ascii": isa.CSR_ID_VALUE.to_bytes(4, "big").decode("ascii", "replace"),
        "version": isa.CSR_VERSION_VALUE,
        "major": isa.CSR_VERSION_VALUE >> 16,
        "minor": isa.CSR_VERSION_VALUE & 0xFFFF,
    }
    csr_rows = [
        [f"`{int(c):#04x}`", f"`{c.name}`", CSR_DOC.get(c.name, "").format(**fill)]
        for c in CSR
        if c != CSR.UNIT_BASE
    ]
    for unit in UNITS:
        for kind in ("busy", "stall"):
            csr_rows.append(
                [
                    f"`{isa.unit_csr(unit, kind):#04x}`",
                    f"`UNIT_{unit.upper()}_{kind.upper()}`",
                    f"cycles the {unit} unit was {'busy' if kind == 'busy' else 'stalled'}",
                ]
            )
    csr_doc = _rst_to_md(CSR.__doc__ or "").strip().splitlines()
    out += [
        "## CSR map",
        "",
        "32-bit registers on the AXI4-Lite slave, at these byte offsets.",
        "",
        _bullets(csr_doc[1:]),
        "",
        _table(["offset", "name", "meaning"], csr_rows),
        "",
    ]
    for reg in ("CTRL", "STATUS"):
        bits = sorted(
            (value.bit_length() - 1, name[len(reg) + 1 :])
            for name, value in vars(isa).items()
            if name.startswith(reg + "_") and isinstance(value, int)
        )
        out += [
            f"### {reg} bits",
            "",
            _table(["bit", "mask", "name"], [[str(b), f"`{1 << b:#x}`", f"`{n}`"]
                                            for b, n in bits]),
            "",
        ]

    # assembler and example
    out += [
        "## Assembly syntax",
        "",
        _SYNTAX,
        "## Example",
        "",
        "```asm",
        EXAMPLE.rstrip(),
        "```",
        "",
        "assembles to:",
        "",
        _example_listing(),
        "",
    ]
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def default_doc_path() -> Path:
    """``docs/isa.md`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "docs" / "isa.md"


def write_isa_markdown(path: str | Path | None = None) -> Path:
    """Write :func:`render_isa_markdown` to ``path`` (default :func:`default_doc_path`)."""
    path = Path(path) if path is not None else default_doc_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_isa_markdown(), encoding="utf-8")
    return path
