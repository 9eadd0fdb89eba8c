"""ISA encode/decode, the assembler/disassembler and docs/isa.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritium.firmware.asm import (
    AsmError,
    DisasmError,
    assemble,
    assemble_instrs,
    assemble_program,
    disassemble,
)

from tritium.isa import (
    FORMATS,
    INSTR_BITS,
    INSTR_BYTES,
    DecodeError,
    Instr,
    Op,
    decode,
    decode_program,
    encode,
    encode_program,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- strategies
@st.composite
def instrs(draw, ops=tuple(Op)) -> Instr:
    op = draw(st.sampled_from(ops))
    vals = {f.name: draw(st.integers(f.lo, f.hi)) for f in FORMATS[op]}
    return Instr.make(op, **vals)


def _used_mask(op: Op) -> int:
    mask = 0xFF
    for f in FORMATS[op]:
        mask |= ((1 << f.width) - 1) << f.lsb
    return mask


# ---------------------------------------------------------------------- encode / decode
@given(instrs())
def test_decode_inverts_encode(i):
    word = encode(i)
    assert 0 <= word < 1 << INSTR_BITS
    assert word & 0xFF == int(i.op)
    assert decode(word) == i


@given(st.lists(instrs(), max_size=8))
def test_program_roundtrip(prog):
    image = encode_program(prog)
    assert len(image) == INSTR_BYTES * len(prog)
    assert decode_program(image) == prog


@given(instrs(), st.data())
def test_reserved_bits_rejected(i, data):
    reserved = [b for b in range(INSTR_BITS) if not (_used_mask(i.op) >> b) & 1]
    bit = data.draw(st.sampled_from(reserved))  # every format leaves some bits reserved
    with pytest.raises(DecodeError, match="reserved bits"):
        decode(encode(i) | (1 << bit))


@given(st.integers(0, (1 << (INSTR_BITS - 8)) - 1))
def test_opcode_zero_is_invalid(upper):
    with pytest.raises(DecodeError, match="invalid opcode 0x00"):
        decode(upper << 8)


@given(st.integers(0, 255).filter(lambda o: o not in set(Op)))
def test_unknown_opcodes_are_invalid(opc):
    with pytest.raises(DecodeError, match="invalid opcode"):
        decode(opc)


@given(st.sampled_from([op for op in Op if FORMATS[op]]), st.data())
def test_out_of_range_field_rejected(op, data):
    f = data.draw(st.sampled_from(FORMATS[op]))
    v = data.draw(st.one_of(st.integers(max_value=f.lo - 1), st.integers(min_value=f.hi + 1)))
    with pytest.raises(DecodeError, match="out of range"):
        Instr.make(op, **{f.name: v})


def test_signed_field_encoding():
    i = Instr.make(Op.VREQ, zp=-1, n=3)
    (zp,) = [f for f in FORMATS[Op.VREQ] if f.name == "zp"]
    assert (encode(i) >> zp.lsb) & 0xFF == 0xFF
    assert decode(encode(i)).zp == -1


def test_word_out_of_range():
    with pytest.raises(DecodeError):
        decode(1 << INSTR_BITS)
    with pytest.raises(DecodeError):
        decode(-1)


# ---------------------------------------------------------------------- assembler
@settings(max_examples=200)
@given(st.lists(instrs(), max_size=12), st.integers(0, 1 << 12).map(lambda b: b * INSTR_BYTES))
def test_disassemble_assemble_roundtrip(prog, base):
    image = encode_program(prog)
    text = disassemble(image, base=base)
    assert assemble(text, base=base) == image


@given(st.lists(instrs(), min_size=1, max_size=8), st.data())
def test_roundtrip_with_jump_labels(prog, data):
    # jumps into the program (and to its end) come back as labels
    n = len(prog) + 1
    base = 0x400
    targets = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=4))
    prog = prog + [Instr.make(Op.JUMP, target=base + INSTR_BYTES * t) for t in targets]
    image = encode_program(prog)
    text = disassemble(image, base=base)
    assert "target=L_" in text
    assert assemble(text, base=base) == image


SOURCE = """\
# a program with everything the syntax allows
.equ ROW, 64                  ; constant
.const ROWS = 2 * (ROW - 60)  # = 8
.equ OUT, DONE + 0x100        # constants may use labels defined later

start:  load space=spad, rows=ROWS, row_bytes=ROW, loc=0, dram=0x1000, stride=ROW
loop:
    STORE space=acc, rows=1, row_bytes=ROW*2, loc=0b100, dram=OUT, stride=-(-16)
    vreq  zp=-128, per_channel=1, n=1 << 4, rows=1_0   # fields in any order
    gemm_i8 m=1, k=K_ALIGN*2, n=3, accumulate=1
    jump target=loop
DONE: halt
"""


def test_assemble_source_features():
    base = 0x200
    prog = assemble_program(SOURCE, base=base, filename="t.s")
    done = base + 5 * INSTR_BYTES
    assert prog.symbols["start"] == base
    assert prog.symbols["loop"] == base + INSTR_BYTES
    assert prog.symbols["DONE"] == done
    assert prog.symbols["ROWS"] == 8
    assert prog.lines == [6, 8, 9, 10, 11, 12]
    expected = [
        Instr.make(Op.LOAD, space=0, rows=8, row_bytes=64, loc=0, dram=0x1000, stride=64),
        Instr.make(Op.STORE, space=1, rows=1, row_bytes=128, loc=4, dram=done + 0x100, stride=16),
        Instr.make(Op.VREQ, zp=-128, per_channel=1, n=16, rows=10),
        Instr.make(Op.GEMM_I8, m=1, k=16, n=3, accumulate=1),
        Instr.make(Op.JUMP, target=base + INSTR_BYTES),
        Instr.make(Op.HALT),
    ]
    assert prog.instrs == expected
    assert assemble_instrs(SOURCE, base=base) == expected
    assert assemble(SOURCE, base=base) == encode_program(expected)
    # and the disassembly of that assembles back
    assert assemble(disassemble(prog.image, base), base) == prog.image


@st.composite
def _spelled(draw, v: int, consts: list[str]) -> str:
    """``v`` written as a decimal, hex, binary or an expression over a new constant."""
    how = draw(st.sampled_from(["dec", "hex", "bin", "const", "expr"]))
    if how == "hex":
        return f"-{-v:#x}" if v < 0 else f"{v:#x}"
    if how == "bin":
        return f"-{-v:#b}" if v < 0 else f"{v:#b}"
    if how == "const":
        name = f"C{len(consts)}"
        consts.append(f".equ {name}, {v}")
        return name
    if how == "expr":
        d = draw(st.integers(-1000, 1000))
        return f"({v - 3 * d}) + 3*{d}" if d >= 0 else f"{v - 3 * d} - 3 * ({-d})"
    return str(v)


@settings(max_examples=150)
@given(st.lists(instrs(), min_size=1, max_size=10), st.data())
def test_assemble_random_sources(prog, data):
    """Random programs written with shuffled fields, mixed case, comments, constants, labels
    and jumps to labels assemble to the expected instructions."""
    base = INSTR_BYTES * data.draw(st.integers(0, 64))
    consts: list[str] = []
    lines: list[str] = []
    expected = list(prog)
    # every third instruction is replaced by a jump to a random labelled instruction
    n = len(prog)
    jumps = {i: data.draw(st.integers(0, n)) for i in range(0, n, 3)}
    for i, t in jumps.items():
        expected[i] = Instr.make(Op.JUMP, target=base + INSTR_BYTES * t)
    targets = set(jumps.values())
    for i, ins in enumerate(expected):
        label = f"lbl_{i}:" if i in targets or data.draw(st.booleans()) else ""
        if label and data.draw(st.booleans()):  # label on its own line
            lines.append(label)
            label = ""
        mnem = ins.op.name.lower()
        if data.draw(st.booleans()):
            mnem = mnem.upper()
        if i in jumps:
            args = [f"target=lbl_{jumps[i]}"]
        else:
            items = [(k, v) for k, v in ins.fields if v != 0 or data.draw(st.booleans())]
            items = data.draw(st.permutations(items))
            args = [f"{k}={data.draw(_spelled(v, consts))}" for k, v in items]
        comment = data.draw(st.sampled_from(["", "  # c", " ; x=1, y"]))
        lines.append(f"{label}    {mnem} {', '.join(args)}{comment}")
    lines.append(f"lbl_{n}:")
    text = "\n".join(data.draw(st.permutations(consts)) + ["", *lines])
    assert assemble_instrs(text, base=base) == expected


@given(st.integers(-(1 << 40), 1 << 40), st.integers(-(1 << 20), 1 << 20),
       st.integers(-1000, 1000))
def test_expressions_match_python(a, b, c):
    expr = f"({a}) - {b} * ({c} + {a}) + -{b} - +{c}"
    want = (a) - b * (c + a) + -b - +c
    want_shift = (abs(a) << 3) + (abs(b) >> 2)
    text = f".equ X, {expr}\n.equ Y, ({abs(a)} << 3) + ({abs(b)} >> 2)\njump target=0"
    syms = assemble_program(text).symbols
    assert syms["X"] == want
    assert syms["Y"] == want_shift


def test_example_copy_program_assembles():
    path = ROOT / "firmware" / "examples" / "copy.s"
    prog = assemble_program(path.read_text(), filename=str(path))
    ops = [i.op for i in prog.instrs]
    assert ops == [Op.LOAD, Op.LOAD, Op.STORE, Op.STORE, Op.HALT]
    assert prog.instrs[1].dram == prog.symbols["SRC"] + 4 * prog.symbols["SRC_STRIDE"]


@pytest.mark.parametrize(
    ("source", "line", "token", "message"),
    [
        ("nop\nload rowz=1", 2, "rowz",
         "unknown field 'rowz' in 'load' (fields: space, rows, row_bytes, loc, dram, stride)"),
        ("lod rows=1", 1, "lod", "unknown mnemonic 'lod'"),
        ("jump target=nowhere", 1, "nowhere", "undefined symbol 'nowhere'"),
        ("a: nop\n\n a:  halt", 3, "a", "duplicate symbol 'a' (first defined at line 1)"),
        (".equ X, 1\nX: nop", 2, "X", "duplicate symbol 'X'"),
        ("load rows=4096", 1, "rows=4096",
         "value 4096 out of range for load.rows: [0, 4095] (12-bit)"),
        ("load rows=-1", 1, "rows=-1", "out of range"),
        ("vreq zp=128", 1, "zp=128", "[-128, 127] (8-bit, signed)"),
        ("jump target=-16", 1, "target=-16", "out of range"),
        ("load rows=(1", 1, "", "expected ')'"),
        ("load rows=1 dram=2", 1, "dram", "expected ','"),
        ("load rows=1, rows=2", 1, "rows", "field 'rows' given twice"),
        ("load rows", 1, "", "expected '=' after field 'rows'"),
        ("load rows=", 1, "", "expected a number"),
        ("nop x=1", 1, "x", "fields: none"),
        ("halt $", 1, "$", "unexpected character '$'"),
        ("load rows=0x1g", 1, "0x1g", "bad number"),
        ("load rows=012", 1, "012", "leading zeros"),
        (".equ X, Y\n.equ Y, X + 1", 1, "X", "circular definition: X -> Y -> X"),
        (".equ ACC, 3", 1, "ACC", "built-in"),
        (".org 5", 1, ".org", "unknown directive '.org'"),
        (".equ X 5", 1, "5", "expected ',' or '='"),
        ("3: nop", 1, "3", "expected a mnemonic"),
        (".equ X, 1 << 1000", 1, "<<", "shift count"),
    ],
)
def test_assembler_errors(source, line, token, message):
    with pytest.raises(AsmError) as exc:
        assemble(source, filename="prog.s")
    e = exc.value
    assert (e.filename, e.line, e.token) == ("prog.s", line, token)
    assert message in str(e)
    assert str(e).startswith(f"prog.s:{line}: ")


def test_space_names_and_case():
    a = assemble_instrs("LOAD SPACE=ACC, Rows=1\nload space=Spad\nstore space=1+0")
    assert [i.space for i in a] == [1, 0, 1]
    assert a[0].rows == 1


def test_disassemble_errors_name_offset():
    good = encode_program([Instr.make(Op.NOP), Instr.make(Op.HALT)])
    with pytest.raises(DisasmError, match=r"byte offset 0x20 \(address 0x120\): invalid opcode"):
        disassemble(good + bytes(16), base=0x100)
    bad = bytearray(good)
    bad[15] = 0x80  # a reserved bit of NOP
    with pytest.raises(DisasmError, match=r"byte offset 0x0 .*reserved bits") as exc:
        disassemble(bytes(bad))
    assert exc.value.offset == 0
    assert isinstance(exc.value, DecodeError)
    with pytest.raises(DisasmError, match=r"byte offset 0x20 .*3 trailing byte"):
        disassemble(good + b"\x01\x02\x03")


def test_disassembly_is_readable():
    prog = [
        Instr.make(Op.LOAD, space=1, rows=2, row_bytes=32, loc=0x40, dram=0x1000, stride=32),
        Instr.make(Op.JUMP, target=0x10),
        Instr.make(Op.JUMP, target=0x1234),
    ]
    text = disassemble(encode_program(prog))
    lines = text.splitlines()
    assert "L_0010:" in lines
    assert "load space=acc, rows=2, row_bytes=32, loc=0x40, dram=0x1000, stride=0x20" in text
    assert "jump target=L_0010" in text
    assert "jump target=0x1234" in text  # outside the program: stays a number


# ---------------------------------------------------------------------- docs/isa.md
def test_isa_doc_is_current():
    from tritium.firmware.isadoc import render_isa_markdown

    path = ROOT / "docs" / "isa.md"
    assert path.exists(), "docs/isa.md is missing; run `tritium docs`"
    assert path.read_text(encoding="utf-8") == render_isa_markdown(), (
        "docs/isa.md is stale; run `tritium docs`"
    )


def test_isa_doc_covers_the_tables():
    from tritium.firmware import isadoc

    from tritium.isa import CSR, SEMANTICS, ErrorCode

    assert set(isadoc.ERROR_DOC) == {e.name for e in ErrorCode}
    assert set(isadoc.CSR_DOC) == {c.name for c in CSR}
    assert set(SEMANTICS) == set(Op)
    text = isadoc.render_isa_markdown()
    for op in Op:
        assert f"| `{int(op):#04x}` | `{op.name.lower()}` |" in text
    for fmt in {FORMATS[op] for op in Op}:
        for f in fmt:
            hi = f.lsb + f.width - 1
            bits = f"{hi}:{f.lsb}" if f.width > 1 else f"{f.lsb}"
            assert f"| `{f.name}` | {bits} | {f.width} |" in text
    for e in ErrorCode:
        assert f"| {int(e)} | `{e.name}` |" in text


def test_isa_doc_example_runs_on_golden():
    from tritium.firmware.isadoc import EXAMPLE

    from tritium import golden
    from tritium.config import preset

    prog = assemble_program(EXAMPLE)
    s = prog.symbols
    m, k, n = s["M"], s["K"], s["N"]
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    cfg = preset("base")
    mem = np.zeros(cfg.dev_mem_bytes, np.uint8)
    mem[: len(prog.image)] = np.frombuffer(prog.image, np.uint8)
    mem[s["A_DRAM"] : s["A_DRAM"] + a.size] = a.view(np.uint8).ravel()
    mem[s["W_DRAM"] : s["W_DRAM"] + w.size] = w.view(np.uint8).ravel()
    # M0 = 2^30, shift = -8 (right shift): y = round(acc * 2^30 / 2^31 / 2^8) = round(acc / 512)
    mem[s["P_DRAM"] : s["P_DRAM"] + 8] = np.array([1 << 30, -8], "<i4").view(np.uint8)
    res = golden.run(cfg, mem)
    assert res.instret == len(prog.instrs)
    y = res.mem[s["Y_DRAM"] : s["Y_DRAM"] + m * n].view(np.int8).reshape(m, n)
    acc = a.astype(np.int64) @ w.astype(np.int64).T
    assert np.abs(y.astype(np.int64) - np.clip(np.round(acc / 512), -128, 127)).max() <= 1
