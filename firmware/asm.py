"""Assembler and disassembler for the tritium ISA (:mod:`tritium.isa`).

Syntax
------
One statement per line; ``#`` or ``;`` starts a comment that runs to the end of the line::

    .equ ROW, 64                 # constant (also: .const ROW = 64)
    start:                       # label = byte address of the next instruction
        load space=spad, rows=4, row_bytes=ROW, loc=0, dram=0x1000, stride=ROW
    loop:   store space=spad, rows=4, row_bytes=ROW, loc=0, dram=0x2000 + 4*ROW, stride=ROW
        jump target=loop
        halt

- **Instructions**: ``mnemonic field=expr, field=expr, ...``. The mnemonic is an
  :class:`~tritium.isa.Op` name (any case; ``gemm_i8``), the fields are those of the opcode's
  format in :data:`~tritium.isa.FORMATS`, in any order; a field that is not given is 0.
- **Expressions**: integers (``42``, ``-3``, ``0x40``, ``0b1010``, ``0o17``, ``1_024``), symbols,
  ``+ - *``, ``<< >>`` and parentheses, with Python precedence. Evaluated exactly (no ``eval``).
- **Symbols**: labels (``name:``, value ``base + 16 * index`` of the next instruction; a label may
  share a line with an instruction), constants (``.equ NAME, expr`` or ``.const NAME = expr``;
  they may refer to labels and to later constants) and the built-ins ``SPAD`` = 0, ``ACC`` = 1,
  ``INSTR_BYTES`` = 16, ``K_ALIGN`` = 8. A bare ``spad`` or ``acc`` (any case) as the whole
  value of the ``space`` field names the space (before any symbol of that name). Symbols are
  case-sensitive; a name may be defined only once.

Every value is checked against its field's range (:attr:`~tritium.isa.Field.lo` ..
:attr:`~tritium.isa.Field.hi`); semantic rules that depend on the configuration (alignment,
address ranges) are checked by the device, not here.

:func:`disassemble` prints every field of every instruction, names jump targets inside the
program ``L_<hex address>`` and annotates each line with its address; its output assembles back
(with the same ``base``) to the identical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tritium.isa import (
    FORMATS,
    INSTR_BYTES,
    K_ALIGN,
    DecodeError,
    Field,
    Instr,
    Op,
    Space,
    decode,
    encode_program,
)

__all__ = [
    "BUILTIN_SYMBOLS",
    "AsmError",
    "DisasmError",
    "Program",
    "assemble",
    "assemble_instrs",
    "assemble_program",
    "disassemble",
    "format_instr",
]

#: Symbols every program can use (they cannot be redefined).
BUILTIN_SYMBOLS: dict[str, int] = {
    "SPAD": int(Space.SPAD),
    "ACC": int(Space.ACC),
    "INSTR_BYTES": INSTR_BYTES,
    "K_ALIGN": K_ALIGN,
}

#: Names accepted (case-insensitively) for the ``space`` field.
_SPACE_NAMES = {s.name.lower(): int(s) for s in Space}

#: Fields the disassembler prints in hex (addresses and strides).
_HEX_FIELDS = frozenset(
    {"loc", "dram", "stride", "a", "w", "c", "src", "src2", "dst", "param", "target"}
)


class AsmError(ValueError):
    """A source line the assembler cannot translate.

    Attributes
    ----------
    filename : str
        Name of the source (as given to :func:`assemble`).
    line : int
        1-based line number (0 when the error is not tied to a line).
    token : str
        The offending token or text ('' when there is none).
    reason : str
        The message without the ``file:line:`` prefix.
    """

    def __init__(self, reason: str, filename: str = "<asm>", line: int = 0, token: str = ""):
        self.reason = reason
        self.filename = filename
        self.line = line
        self.token = token
        where = f"{filename}:{line}" if line else filename
        super().__init__(f"{where}: {reason}")


class DisasmError(DecodeError):
    """A byte image that is not a valid program; ``offset`` is the byte offset of the bad word
    (``address = base + offset``)."""

    def __init__(self, reason: str, offset: int, address: int):
        self.reason = reason
        self.offset = offset
        self.address = address
        super().__init__(f"byte offset {offset:#x} (address {address:#x}): {reason}")


# ---------------------------------------------------------------------- lexer
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<num>[0-9][0-9A-Za-z_]*)
  | (?P<name>\.?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><<|>>|[-+*(),=:])
  """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # "num", "name", "op", "end"
    text: str
    col: int


def _strip_comment(line: str) -> str:
    for i, ch in enumerate(line):
        if ch in "#;":
            return line[:i]
    return line


class _Ctx:
    """Source position and error construction for one line."""

    def __init__(self, filename: str, lineno: int, text: str):
        self.filename = filename
        self.lineno = lineno
        self.text = text

    def error(self, reason: str, token: str = "") -> AsmError:
        return AsmError(reason, self.filename, self.lineno, token)


def _tokenize(text: str, ctx: _Ctx) -> list[_Tok]:
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            bad = text[pos:].split()[0]
            raise ctx.error(f"unexpected character {text[pos]!r} in {bad!r}", bad)
        if m.lastgroup != "ws":
            toks.append(_Tok(m.lastgroup, m.group(), pos))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


def _parse_int(text: str, ctx: _Ctx) -> int:
    body = text.replace("_", "")
    if len(body) > 1 and body[0] == "0" and body[1].isdigit() and body.strip("0"):
        raise ctx.error(f"bad number {text!r}: leading zeros are not allowed (octal is 0o..)", text)
    try:
        return int(body, 0)
    except ValueError:
        raise ctx.error(f"bad number {text!r} (numbers: 42, 0x2a, 0b101010, 0o52)", text) from None


# ---------------------------------------------------------------------- expressions
# An expression is parsed into a tiny tree and evaluated later, once every label is known.
@dataclass(frozen=True)
class _Num:
    value: int


@dataclass(frozen=True)
class _Sym:
    name: str
    tok: str


@dataclass(frozen=True)
class _Unary:
    op: str
    arg: object


@dataclass(frozen=True)
class _Bin:
    op: str
    lhs: object
    rhs: object
    tok: str


_BINARY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "<<": lambda a, b: a << b,
    ">>": lambda a, b: a >> b,
}
# Python's precedence: shifts bind looser than + -, which bind looser than *.
_LEVELS = (("<<", ">>"), ("+", "-"), ("*",))
_MAX_SHIFT = 256  # keep 1 << huge from eating memory


class _Parser:
    """Recursive-descent parser over the tokens of one line."""

    def __init__(self, toks: list[_Tok], ctx: _Ctx):
        self.toks = toks
        self.i = 0
        self.ctx = ctx

    @property
    def cur(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at(self, text: str) -> bool:
        return self.cur.kind == "op" and self.cur.text == text

    def expect(self, text: str, what: str) -> _Tok:
        if not self.at(text):
            raise self.unexpected(f"expected {text!r} {what}")
        return self.next()

    def unexpected(self, reason: str) -> AsmError:
        tok = self.cur
        shown = repr(tok.text) if tok.kind != "end" else "end of line"
        return self.ctx.error(f"{reason}, found {shown}", tok.text)

    def expr(self, level: int = 0) -> object:
        if level == len(_LEVELS):
            return self.unary()
        node = self.expr(level + 1)
        while self.cur.kind == "op" and self.cur.text in _LEVELS[level]:
            op = self.next().text
            node = _Bin(op, node, self.expr(level + 1), op)
        return node

    def unary(self) -> object:
        if self.at("-") or self.at("+"):
            return _Unary(self.next().text, self.unary())
        return self.atom()

    def atom(self) -> object:
        tok = self.cur
        if tok.kind == "num":
            self.next()
            return _Num(_parse_int(tok.text, self.ctx))
        if tok.kind == "name" and not tok.text.startswith("."):
            self.next()
            return _Sym(tok.text, tok.text)
        if self.at("("):
            self.next()
            node = self.expr()
            self.expect(")", "to close '('")
            return node
        raise self.unexpected("expected a number, a symbol or '('")


# ---------------------------------------------------------------------- assembler
@dataclass
class _Stmt:
    ctx: _Ctx
    op: Op
    args: list[tuple[str, str, object]]  # (field name, source token, expression)


@dataclass
class _Const:
    ctx: _Ctx
    name: str
    expr: object


@dataclass
class Program:
    """Result of :func:`assemble_program`.

    Attributes
    ----------
    instrs : list of Instr
        The instructions, in order (instruction ``i`` lives at ``base + 16*i``).
    base : int
        Byte address the program was assembled for.
    symbols : dict
        Every label and constant, name -> value.
    lines : list of int
        Source line of each instruction (for traces and error messages).
    filename : str
        Source name.
    """

    instrs: list[Instr]
    base: int = 0
    symbols: dict[str, int] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)
    filename: str = "<asm>"

    @property
    def image(self) -> bytes:
        """The little-endian byte image (:func:`tritium.isa.encode_program`)."""
        return encode_program(self.instrs)

    def address(self, index: int) -> int:
        """Byte address of instruction ``index``."""
        return self.base + INSTR_BYTES * index


class _Symbols:
    """Labels (known values) and constants (evaluated lazily, with cycle detection)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.where: dict[str, int] = {}  # name -> defining line
        self.pending: dict[str, _Const] = {}
        self.active: list[str] = []

    def define(self, name: str, ctx: _Ctx, value: int | None = None, const=None) -> None:
        if name in BUILTIN_SYMBOLS:
            raise ctx.error(
                f"cannot redefine built-in symbol {name!r} (= {BUILTIN_SYMBOLS[name]})", name
            )
        if name in self.where:
            raise ctx.error(f"duplicate symbol {name!r} (first defined at line {self.where[name]})",
                            name)
        self.where[name] = ctx.lineno
        if const is not None:
            self.pending[name] = const
        else:
            self.values[name] = value

    def lookup(self, name: str, tok: str, ctx: _Ctx) -> int:
        if name in self.values:
            return self.values[name]
        if name in BUILTIN_SYMBOLS:
            return BUILTIN_SYMBOLS[name]
        if name in self.pending:
            const = self.pending[name]
            if name in self.active:
                cycle = " -> ".join(self.active[self.active.index(name) :] + [name])
                raise const.ctx.error(f"circular definition: {cycle}", name)
            self.active.append(name)
            try:
                value = self.eval(const.expr, const.ctx)
            finally:
                self.active.pop()
            self.values[name] = value
            del self.pending[name]
            return value
        raise ctx.error(f"undefined symbol {name!r}", tok)

    def eval(self, node: object, ctx: _Ctx) -> int:
        if isinstance(node, _Num):
            return node.value
        if isinstance(node, _Sym):
            return self.lookup(node.name, node.tok, ctx)
        if isinstance(node, _Unary):
            v = self.eval(node.arg, ctx)
            return -v if node.op == "-" else v
        if isinstance(node, _Bin):
            a, b = self.eval(node.lhs, ctx), self.eval(node.rhs, ctx)
            if node.op in ("<<", ">>") and not 0 <= b <= _MAX_SHIFT:
                raise ctx.error(f"shift count {b} out of range [0, {_MAX_SHIFT}]", node.tok)
            return _BINARY[node.op](a, b)
        raise AssertionError(node)  # pragma: no cover


def _parse_directive(p: _Parser, ctx: _Ctx, syms: _Symbols, consts: list[_Const]) -> None:
    tok = p.next()
    d = tok.text.lower()
    if d not in (".equ", ".const"):
        raise ctx.error(f"unknown directive {tok.text!r} (directives: .equ, .const)", tok.text)
    name = p.cur
    if name.kind != "name" or name.text.startswith("."):
        raise p.unexpected(f"expected a symbol name after {tok.text}")
    p.next()
    if not (p.at(",") or p.at("=")):
        raise p.unexpected(f"expected ',' or '=' after {tok.text} {name.text}")
    p.next()
    const = _Const(ctx, name.text, p.expr())
    if p.cur.kind != "end":
        raise p.unexpected("expected end of line after the expression")
    syms.define(name.text, ctx, const=const)
    consts.append(const)


def _parse_instr(p: _Parser, ctx: _Ctx) -> _Stmt:
    tok = p.next()
    try:
        op = Op[tok.text.upper()]
    except KeyError:
        mnems = ", ".join(o.name.lower() for o in Op)
        raise ctx.error(f"unknown mnemonic {tok.text!r} (mnemonics: {mnems})", tok.text) from None
    fields = {f.name: f for f in FORMATS[op]}
    names = ", ".join(fields) or "none"
    mnem = op.name.lower()
    args: list[tuple[str, str, object]] = []
    seen: set[str] = set()
    while p.cur.kind != "end":
        if args:
            if not p.at(","):
                raise p.unexpected(f"expected ',' between the fields of {mnem!r}")
            p.next()
        ftok = p.cur
        if ftok.kind != "name":
            raise p.unexpected(f"expected 'field=value' in {mnem!r}")
        fname = ftok.text.lower()
        if fname not in fields:
            raise ctx.error(f"unknown field {ftok.text!r} in {mnem!r} (fields: {names})",
                            ftok.text)
        if fname in seen:
            raise ctx.error(f"field {fname!r} given twice in {mnem!r}", ftok.text)
        seen.add(fname)
        p.next()
        p.expect("=", f"after field {ftok.text!r}")
        start = p.cur.col
        node = p.expr()
        if fname == "space" and isinstance(node, _Sym) and node.name.lower() in _SPACE_NAMES:
            node = _Num(_SPACE_NAMES[node.name.lower()])
        src = ctx.text[start : p.cur.col].strip()
        args.append((fname, f"{ftok.text}={src}", node))
    return _Stmt(ctx, op, args)


def assemble_program(text: str, base: int = 0, filename: str = "<asm>") -> Program:
    """Assemble ``text`` into a :class:`Program` (instructions, symbols, line numbers).

    Parameters
    ----------
    text : str
        Assembly source (see the module docstring for the syntax).
    base : int
        Byte address of the first instruction; labels are ``base + 16 * index``.
    filename : str
        Name used in error messages.

    Raises
    ------
    AsmError
        On any error, with ``filename``, ``line`` and the offending ``token``.
    """
    if not isinstance(base, int) or base < 0:
        raise AsmError(f"base address {base!r} must be a non-negative integer", filename)
    syms = _Symbols()
    stmts: list[_Stmt] = []
    consts: list[_Const] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        ctx = _Ctx(filename, lineno, line)
        toks = _tokenize(line, ctx)
        p = _Parser(toks, ctx)
        # labels: name ':' (any number, possibly followed by a statement)
        while p.cur.kind == "name" and p.toks[p.i + 1].text == ":" \
                and p.toks[p.i + 1].kind == "op":
            name = p.next()
            if name.text.startswith("."):
                raise ctx.error(f"label {name.text!r} must not start with '.'", name.text)
            p.next()
            syms.define(name.text, ctx, value=base + INSTR_BYTES * len(stmts))
        if p.cur.kind == "end":
            continue
        if p.cur.kind != "name":
            raise p.unexpected("expected a mnemonic, a label or a directive")
        if p.cur.text.startswith("."):
            _parse_directive(p, ctx, syms, consts)
        else:
            stmts.append(_parse_instr(p, ctx))

    for const in consts:  # report errors in unused constants too, in source order
        syms.lookup(const.name, const.name, const.ctx)

    instrs = []
    for st in stmts:
        fmt: dict[str, Field] = {f.name: f for f in FORMATS[st.op]}
        vals = {}
        for fname, src, node in st.args:
            v = syms.eval(node, st.ctx)
            f = fmt[fname]
            if not f.lo <= v <= f.hi:
                raise st.ctx.error(
                    f"value {v} out of range for {st.op.name.lower()}.{fname}: "
                    f"[{f.lo}, {f.hi}] ({f.width}-bit{', signed' if f.signed else ''}) in {src!r}",
                    src,
                )
            vals[fname] = v
        try:
            instrs.append(Instr.make(st.op, **vals))
        except DecodeError as e:  # pragma: no cover - ranges are checked above
            raise st.ctx.error(str(e)) from None
    return Program(
        instrs=instrs,
        base=base,
        symbols=dict(sorted(syms.values.items())),
        lines=[st.ctx.lineno for st in stmts],
        filename=filename,
    )


def assemble_instrs(text: str, base: int = 0, filename: str = "<asm>") -> list[Instr]:
    """Assemble ``text`` into a list of :class:`~tritium.isa.Instr` (see
    :func:`assemble_program`)."""
    return assemble_program(text, base, filename).instrs


def assemble(text: str, base: int = 0, filename: str = "<asm>") -> bytes:
    """Assemble ``text`` into the program's byte image (16 little-endian bytes per
    instruction); see :func:`assemble_program`."""
    return assemble_program(text, base, filename).image


# ---------------------------------------------------------------------- disassembler
def _fmt_value(f: Field, v: int, labels: dict[int, str]) -> str:
    if f.name == "target" and v in labels:
        return labels[v]
    if f.name == "space" and v in (int(s) for s in Space):
        return Space(v).name.lower()
    if f.name in _HEX_FIELDS and v:
        return f"{v:#x}"
    return str(v)


def format_instr(instr: Instr, labels: dict[int, str] | None = None) -> str:
    """One instruction as assembly text, every field spelled out (``labels`` maps jump-target
    addresses to names)."""
    labels = labels or {}
    args = ", ".join(
        f"{f.name}={_fmt_value(f, getattr(instr, f.name), labels)}" for f in FORMATS[instr.op]
    )
    return f"{instr.op.name.lower()} {args}".rstrip()


def _label(addr: int) -> str:
    return f"L_{addr:04x}"


def disassemble(image: bytes, base: int = 0) -> str:
    """Assembly text for a program image; ``assemble(disassemble(img, b), b) == img``.

    Jump targets that are instruction addresses inside the program (or its end) get labels
    ``L_<hex address>``; each line carries its address as a comment.

    Raises
    ------
    DisasmError
        When the length is not a multiple of 16 or a word does not decode; the message names
        the byte offset (and address) of the bad word.
    """
    image = bytes(image)
    n = len(image) // INSTR_BYTES
    instrs = []
    for i in range(n):
        off = i * INSTR_BYTES
        word = int.from_bytes(image[off : off + INSTR_BYTES], "little")
        try:
            instrs.append(decode(word))
        except DecodeError as e:
            raise DisasmError(f"{e} in word {word:#034x}", off, base + off) from None
    if len(image) % INSTR_BYTES:
        off = n * INSTR_BYTES
        raise DisasmError(
            f"truncated instruction: {len(image) - off} trailing byte(s); "
            f"the image length {len(image)} is not a multiple of {INSTR_BYTES}",
            off,
            base + off,
        )
    end = base + n * INSTR_BYTES
    labels = {}
    for ins in instrs:
        if ins.op == Op.JUMP:
            t = ins.target
            if base <= t <= end and (t - base) % INSTR_BYTES == 0:
                labels[t] = _label(t)
    out = [f"# tritium disassembly: {n} instruction(s), base {base:#x}"]
    for i, ins in enumerate(instrs):
        addr = base + i * INSTR_BYTES
        if addr in labels:
            out.append(f"{labels[addr]}:")
        out.append(f"    {format_instr(ins, labels):<72} # {addr:#06x}")
    if end in labels:
        out.append(f"{labels[end]}:")
    return "\n".join(out) + "\n"
