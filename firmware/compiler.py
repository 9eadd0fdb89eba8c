"""Model compiler: a quantized integer model -> a device-memory image + per-step programs.

:func:`compile_model` lowers :class:`~tritium.host.models.mmfree_int.MMFreeInt` (preset
``tiny``) or :class:`~tritium.host.models.gpt_int.GPTInt` (preset ``base``), or either model on
any configuration that has the engines it needs, for one decode step per program.

One source of truth for the op sequence
---------------------------------------
The integer models issue their op sequence through the
:class:`~tritium.host.models.intops.IntMachine` interface (``layer_step(M, ...)``). The
compiler's :class:`Emitter` has the same methods, but records the ops over *symbolic*
scratchpad tensors instead of computing them. :func:`mmfree_step` and :func:`gpt_step` (the
decode step: embedding row, the model's own ``layer_step`` per layer, final norm, LM head,
argmax, stores to the output region) run unchanged on both an ``IntMachine`` (giving the NumPy
integer reference) and an ``Emitter`` (giving the program), so the device executes exactly the
reference's ops.

Lowering (per step)
-------------------
1. *Record*: every op becomes a node over SSA scratchpad buffers (each result is a fresh buffer;
   ``M[name][...]`` views, ``np.concatenate`` of views and slice copies are understood).
   Concatenated parts are placed directly inside the concatenation (no copy).
2. *GEMM fusion*: a GEMM whose int32 result does not fit the accumulator budget (``tiny`` has a
   1 KiB ACC) is fused with its column-separable consumers (in-place ``VSCALE``, ``VREQ`` of
   column ranges, ``STORE`` of the logits): per output-channel tile ``GEMM -> VSCALE -> VREQ``,
   so only a tile of accumulators ever exists.
3. *Coalescing*: an elementwise op whose source dies there writes in place.
4. *Tiling*: weights stream from DRAM tile by tile into two alternating SPAD buffers (load of
   tile ``i+1`` issued before the GEMM of tile ``i``: double buffering); constants (gains,
   (M0, shift) blocks, activation / exp tables) are loaded next to their first use and reused
   while they stay resident.
5. *Scheduling*: every LOAD is hoisted above a few preceding compute / store instructions it
   does not depend on (loads keep their order: the load queue is FIFO), so DMA overlaps
   compute; how far is a :class:`Plan` knob, chosen from measurements on the RTL (see
   :func:`_plans`).
6. *Allocation*: live ranges -> SPAD / ACC addresses (first fit, bus-aligned). When the
   scratchpads overflow, the compiler retries with less hoisting and smaller tiles.

Engines
-------
Ternary weights run on the ternary engine natively (``GEMM_TERN``, packed 4 per byte), on the
LUT core as 2-bit weights (``GEMM_LUT bits=2``, :func:`numerics.pack_lut_weights`) or on the
systolic array as int8 (``GEMM_I8``); int8 weights only on the systolic array. ``auto`` picks
ternary > lut > systolic among the engines of the configuration. All give the same integers.
``engine`` may also be ``"PATTERN=ENGINE,..."`` (``fnmatch`` on weight labels such as
``l0.f_proj.weight``; the first match wins, unmatched labels use ``auto``).

Device memory and per-step programs
-----------------------------------
The image (``MemoryImage``, bus-aligned regions) holds the program region at address 0 (sized
for the longest step program), then weights in device layout, embeddings, gains, requant
parameter blocks, tables, a zero block, the recurrent state (MMFree: int8 ``[layers, d]``) or
the KV cache (GPT: int8 ``[layers, heads, ctx, hd]`` for K and V) and the output region
(:attr:`CompiledModel.out`: argmax int32, int8 logits, int32 logits accumulators).

Token- and position-dependent fields (the embedding-row address, KV-cache row addresses, the
attention length ``t = pos + 1``) make the program of a step depend on ``(token, pos)``.
:meth:`CompiledModel.program` builds it: the lowering of position ``pos`` is cached and the
token only patches the embedding LOAD's ``dram`` field. Scratchpad addresses are those of the
longest step (``pos = ctx - 1``), so successive programs differ only in the few 16-byte words
whose fields changed; the runtime writes just those words before each run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritium import numerics as nx
from tritium.config import AcceleratorConfig
from tritium.isa import ENGINE_GEMM, GEMM_ENGINE, INSTR_BYTES, Instr, Op, Space, encode_program

from .image import MemoryImage, Region

__all__ = [
    "ENGINE_CHOICES",
    "CompileError",
    "CompiledModel",
    "Emitter",
    "Plan",
    "StepOutput",
    "TokenRow",
    "compile_model",
    "gpt_step",
    "mmfree_step",
    "reference_step",
    "resolve_engine",
]

#: Values of ``--engine``.
ENGINE_CHOICES = ("auto", "ternary", "lut", "systolic")
#: ``auto`` preference for ternary weights.
_TERNARY_PREF = ("ternary", "lut", "systolic")

SPAD, ACC = "SPAD", "ACC"
_ESIZE = {SPAD: 1, ACC: 4}


class CompileError(ValueError):
    """The model cannot be lowered for this configuration (the message says why and what to
    change)."""


# ============================================================================ engine choice
def resolve_engine(spec: str | Mapping[str, str] | Callable[[str], str], cfg: AcceleratorConfig,
                   label: str, kind: str) -> str:
    """Engine for the weights ``label`` of ``kind`` (``"ternary"`` or ``"int8"``).

    ``spec`` is an engine name, ``"auto"``, a ``"PATTERN=ENGINE,..."`` string, a mapping of
    ``fnmatch`` patterns to engines, or a callable ``label -> engine``.
    """
    name = _match_engine(spec, label)
    if kind == "int8":
        if name not in ("auto", "systolic"):
            raise CompileError(f"{label}: int8 weights run only on the systolic array, not on "
                               f"{name!r}; use --engine systolic or auto for them")
        name = "systolic"
    elif name == "auto":
        avail = [e for e in _TERNARY_PREF if cfg.has(e)
                 and (e != "lut" or cfg.lut_max_bits >= 2)]
        if not avail:
            raise CompileError(f"{label}: config {cfg.name!r} has no engine for ternary weights")
        name = avail[0]
    if name not in ENGINE_CHOICES[1:]:
        raise CompileError(f"engine={name!r}; engine must be one of {', '.join(ENGINE_CHOICES)}")
    if not cfg.has(name):
        raise CompileError(f"{label}: engine {name!r} is not in config {cfg.name!r} (engines: "
                           f"{', '.join(cfg.engines)}); pick one of those or auto")
    if name == "lut" and cfg.lut_max_bits < 2:
        raise CompileError(f"{label}: ternary weights need 2-bit LUT weights; config "
                           f"{cfg.name!r} has lut_max_bits={cfg.lut_max_bits}")
    return name


def _match_engine(spec, label: str) -> str:
    if callable(spec):
        return spec(label)
    if isinstance(spec, str):
        if "=" not in spec:
            return spec
        pairs = {}
        for part in spec.split(","):
            pat, sep, eng = part.partition("=")
            if not sep:
                raise CompileError(f"engine spec part {part!r} is not PATTERN=ENGINE")
            pairs[pat.strip()] = eng.strip()
        spec = pairs
    for pat, eng in spec.items():
        if fnmatch.fnmatchcase(label, pat):
            return eng
    return "auto"


# ============================================================================ symbolic tensors
class Buf:
    """A scratchpad buffer (``space`` SPAD or ACC, ``n`` elements); may live inside a parent
    buffer at element ``offset`` (a concatenation part, a coalesced in-place result)."""

    __slots__ = ("idx", "kind", "n", "name", "offset", "parent", "space")

    def __init__(self, idx: int, space: str, n: int, name: str, kind: str = "tensor"):
        self.idx, self.space, self.n, self.name, self.kind = idx, space, n, name, kind
        self.parent: Buf | None = None
        self.offset = 0

    def root(self) -> tuple[Buf, int]:
        b, off = self, 0
        while b.parent is not None:
            off += b.offset
            b = b.parent
        return b, off

    def __repr__(self) -> str:
        return f"Buf({self.idx}, {self.space}, {self.n}, {self.name!r})"


class _Concat:
    """Result of ``np.concatenate`` over :class:`TRef` parts (assigned to a name)."""

    def __init__(self, parts: list, axis: int):
        self.parts, self.axis = parts, axis


class TRef:
    """A view of a :class:`Buf`: ``ix`` holds the buffer element index of every tensor
    element, so NumPy basic indexing (ints, slices, ``None``) works on views as on arrays."""

    __slots__ = ("buf", "em", "ix")

    def __init__(self, em: Emitter, buf: Buf, ix: np.ndarray):
        self.em, self.buf, self.ix = em, buf, ix

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ix.shape

    @property
    def size(self) -> int:
        return int(self.ix.size)

    @property
    def space(self) -> str:
        return self.buf.space

    def __getitem__(self, key) -> TRef:
        return TRef(self.em, self.buf, np.asarray(self.ix[key]))

    def __setitem__(self, key, value) -> None:
        self.em._copy(self[key], value)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.concatenate:
            axis = kwargs.get("axis", args[1] if len(args) > 1 else 0)
            return _Concat(list(args[0]), axis)
        return NotImplemented

    def whole(self) -> bool:
        """True when the view is the whole buffer in order."""
        return self.ix.size == self.buf.n and bool(
            (self.ix.ravel() == np.arange(self.buf.n)).all())

    def span(self) -> tuple[Buf, int, int]:
        """``(buffer, first element, count)`` of a contiguous view (else CompileError)."""
        flat = self.ix.ravel()
        if flat.size == 0:
            raise CompileError(f"empty view of {self.buf.name}")
        if not (flat == flat[0] + np.arange(flat.size)).all():
            raise CompileError(f"view of {self.buf.name} with shape {self.shape} is not "
                               "contiguous; the device operands are contiguous rows")
        return self.buf, int(flat[0]), int(flat.size)

    def rows_n(self) -> tuple[int, int]:
        """``(rows, n)`` of the view as a device operand (last axis = n)."""
        if len(self.shape) == 0:
            return 1, 1
        n = self.shape[-1]
        return max(1, self.size // max(n, 1)), n


class TokenRow(int):
    """An ``int`` marking the token of a step: the LOAD of an embedding row indexed by it is
    patched per token by :meth:`CompiledModel.program`."""


@dataclass
class DramRef:
    """A strided view of device memory: ``const`` (placed at lowering) or an absolute
    ``addr``; ``offset`` bytes into the const; ``shape``/``strides`` in bytes."""

    const: Any
    addr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int
    padded_end: int | None = None  # writes may extend up to here (io regions)

    def rows(self) -> tuple[int, int, int]:
        """``(rows, row_bytes, stride)`` of the view (last axis contiguous)."""
        dims = [(n, s) for n, s in zip(self.shape, self.strides) if n != 1]
        if not dims:
            return 1, self.itemsize, self.itemsize
        if dims[-1][1] != self.itemsize:
            raise CompileError(f"DRAM view {self.shape} / {self.strides}: the last axis is not "
                               "contiguous")
        row = dims[-1][0] * self.itemsize
        lead = dims[:-1]
        # merge leading axes that are contiguous with each other
        while len(lead) >= 2 and lead[-2][1] == lead[-1][0] * lead[-1][1]:
            lead = lead[:-2] + [(lead[-2][0] * lead[-1][0], lead[-1][1])]
        if not lead:
            return 1, row, row
        if len(lead) > 1:
            raise CompileError(f"DRAM view {self.shape} / {self.strides} needs more than one "
                               "stride; the DMA moves rows with one stride")
        n, s = lead[0]
        if s == row and n * row <= 0xFFFF:
            return 1, n * row, n * row
        return n, row, s


class _Const:
    """A host array that becomes a DRAM region (placed once, keyed by ``key``)."""

    __slots__ = ("arr", "cat", "key", "label")

    def __init__(self, key, arr: np.ndarray, label: str, cat: str):
        self.key, self.arr, self.label, self.cat = key, arr, label, cat


@dataclass
class Node:
    """One recorded op."""

    op: str
    dst: tuple = ()
    src: tuple = ()
    args: dict = field(default_factory=dict)


# ============================================================================ the emitter
class Emitter:
    """Records the ops of :class:`~tritium.host.models.intops.IntMachine` over symbolic
    scratchpad tensors (same method signatures).

    ``shadow`` is the compiler's device-memory image: arrays that are views of it (the state,
    the KV cache, the output region) are device memory; any other array passed as a table,
    weight, gain, parameter block or activation table is a constant, placed in the image when
    lowered.
    """

    def __init__(self, cfg: AcceleratorConfig, shadow: np.ndarray, io_ends: dict | None = None):
        self.cfg = cfg
        self.shadow = shadow
        self._base = shadow.__array_interface__["data"][0]
        self.io_ends = io_ends or {}
        self.nodes: list[Node] = []
        self.names: dict[str, TRef] = {}
        self.bufs: list[Buf] = []
        self.trace = None  # IntMachine compatibility

    # ---------------------------------------------------------------- tensors
    def _new(self, space: str, shape, name: str, kind: str = "tensor") -> TRef:
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape)) if shape else 1
        b = Buf(len(self.bufs), space, n, name, kind)
        self.bufs.append(b)
        return TRef(self, b, np.arange(n).reshape(shape))

    def _def(self, name: str, space: str, shape) -> TRef:
        r = self._new(space, shape, name)
        self.names[name] = r
        return r

    def __getitem__(self, name: str) -> TRef:
        try:
            return self.names[name]
        except KeyError:
            raise CompileError(f"tensor {name!r} is read before it is written") from None

    def __setitem__(self, name: str, value) -> None:
        if isinstance(value, TRef):
            self.names[name] = value
        elif isinstance(value, _Concat):
            self.names[name] = self._concat(name, value)
        else:
            arr = np.asarray(value)
            space = ACC if arr.dtype == np.int32 else SPAD
            r = self._def(name, space, arr.shape)
            self.nodes.append(Node("INIT", (r,), (), {"value": arr.copy()}))

    def _concat(self, name: str, c: _Concat) -> TRef:
        parts = c.parts
        if not all(isinstance(p, TRef) for p in parts):
            raise CompileError(f"{name}: np.concatenate of non-tensors")
        space = parts[0].space
        shapes = [p.shape for p in parts]
        out_shape = list(shapes[0])
        ax = c.axis % len(out_shape)
        out_shape[ax] = sum(s[ax] for s in shapes)
        out = self._def(name, space, out_shape)
        pos = 0
        seen = set()
        for p in parts:
            w = p.shape[ax]
            sl = [slice(None)] * len(out_shape)
            sl[ax] = slice(pos, pos + w)
            target = out[tuple(sl)]
            pos += w
            b = p.buf
            flat = target.ix.ravel()
            contiguous = bool((flat == flat[0] + np.arange(flat.size)).all())
            if (p.whole() and b.parent is None and b.idx not in seen and contiguous
                    and b.space == space):
                b.parent, b.offset = out.buf, int(flat[0])
                seen.add(b.idx)
            else:
                self._copy(target, p)
        return out

    def _copy(self, dst: TRef, src) -> None:
        if not isinstance(src, TRef):
            raise CompileError("only tensor-to-tensor slice assignment is supported")
        if dst.shape != src.shape and dst.size != src.size:
            raise CompileError(f"copy of {src.shape} into {dst.shape}")
        self.nodes.append(Node("COPY", (dst,), (src,)))

    # ---------------------------------------------------------------- DRAM operands
    def _dram(self, arr: np.ndarray, label: str, cat: str) -> DramRef:
        """A DramRef of ``arr``: a view of the shadow image, or a constant."""
        a = np.asarray(arr)
        ptr = a.__array_interface__["data"][0]
        if a.base is not None and 0 <= ptr - self._base < self.shadow.size:
            addr = ptr - self._base
            end = self.io_ends.get(self._io_of(addr))
            return DramRef(None, addr, a.shape, a.strides, a.itemsize, end)
        return DramRef(_Const(id(arr), arr, label, cat), 0, a.shape, a.strides, a.itemsize)

    def _io_of(self, addr: int):
        for (lo, hi) in self.io_ends:
            if lo <= addr < hi:
                return (lo, hi)
        return None

    def _rows_of(self, table, row: int, label: str) -> DramRef:
        a = np.asarray(table)
        ref = self._dram(table, label, "embedding" if a.dtype != np.int32 else "tables")
        rs = a.strides[0]
        ref.addr += int(row) * rs
        ref.shape = (1,) + a.shape[1:]
        return ref

    # ---------------------------------------------------------------- data movement
    def LOAD(self, dst: str, table, row: int, label: str) -> None:
        ref = self._rows_of(table, row, label)
        space = ACC if np.asarray(table).dtype == np.int32 else SPAD
        r = self._def(dst, space, ref.shape)
        self.nodes.append(Node("LOAD", (r,), (), {"dram": ref, "label": label,
                                                  "token": isinstance(row, TokenRow),
                                                  "row": int(row)}))

    def STORE(self, table, index, src: str, label: str) -> None:
        view = np.asarray(table)[index]
        ref = self._dram(view, label, "io")
        if ref.const is not None:
            raise CompileError(f"STORE {label}: the destination is not device memory")
        s = self[src]
        if s.size != int(np.prod(view.shape)):
            raise CompileError(f"STORE {label}: {s.shape} into {view.shape}")
        self.nodes.append(Node("STORE", (), (s,), {"dram": ref, "label": label}))

    # ---------------------------------------------------------------- GEMMs
    def GEMM_TERN(self, dst: str, a: str, w_packed: np.ndarray, K: int, label: str) -> None:
        A = self[a]
        n = int(np.asarray(w_packed).shape[0])
        r = self._def(dst, ACC, (A.shape[0], n))
        self.nodes.append(Node("GEMM", (r,), (A,), {
            "kind": "ternary", "w": w_packed, "K": int(K), "N": n, "label": label,
            "wt": False}))

    def GEMM_I8(self, dst: str, a: str, w: np.ndarray, label: str,
                w_transposed: bool = False) -> None:
        A = self[a]
        w_ = np.asarray(w)
        k, n = (w_.shape if w_transposed else w_.shape[::-1])
        if k != A.shape[-1]:
            raise CompileError(f"GEMM {label}: A has K={A.shape[-1]}, W has K={k}")
        r = self._def(dst, ACC, (A.shape[0], n))
        self.nodes.append(Node("GEMM", (r,), (A,), {
            "kind": "int8", "w": w, "K": int(k), "N": int(n), "label": label,
            "wt": bool(w_transposed)}))

    # ---------------------------------------------------------------- vector unit
    def _vec(self, op: str, dst: str, space: str, srcs: tuple, shape=None, **args) -> TRef:
        r = self._def(dst, space, srcs[0].shape if shape is None else shape)
        self.nodes.append(Node(op, (r,), srcs, args))
        return r

    def VREQ(self, dst: str, src: str, rq, label: str) -> None:
        self._vec("VREQ", dst, SPAD, (self[src],), rq=rq, label=label)

    def VADD(self, dst: str, a: str, b: str) -> None:
        self._vec("VADD", dst, SPAD, (self[a], self[b]))

    def VMUL(self, dst: str, a: str, b: str, rq, label: str) -> None:
        self._vec("VMUL", dst, SPAD, (self[a], self[b]), rq=rq, label=label)

    def VSCALE(self, dst: str, src: str, m: str) -> None:
        self._vec("VSCALE", dst, ACC, (self[src], self[m]))

    def VACT(self, dst: str, src: str, table: np.ndarray, label: str) -> None:
        self._vec("VACT", dst, SPAD, (self[src],), table=table, label=label)

    def VRMS(self, dst: str, src: str, norm, label: str) -> None:
        self._vec("VRMS", dst, SPAD, (self[src],), norm=norm, label=label)

    def VQUANT(self, dst_q: str, dst_m: str, src: str) -> None:
        s = self[src]
        q = self._def(dst_q, SPAD, s.shape)
        m = self._def(dst_m, ACC, s.shape[:-1])
        self.nodes.append(Node("VQUANT", (q, m), (s,)))

    def VGATE(self, h: str, f: str, c: str) -> None:
        H = self[h]
        self.nodes.append(Node("VGATE", (H,), (self[f], self[c], H)))

    def VSOFTMAX(self, dst: str, src: str, exp_table: np.ndarray, label: str) -> None:
        self._vec("VSOFTMAX", dst, SPAD, (self[src],), table=exp_table, label=label)

    def VARGMAX(self, dst: str, src: str, n: int) -> None:
        s = self[src][..., :n]
        self._vec("VARGMAX", dst, ACC, (s,), shape=s.shape[:-1])


# ============================================================================ decode steps
def mmfree_step(M, model, token: int, io: Mapping[str, np.ndarray]) -> None:
    """One MatMul-free decode step over ``M`` (IntMachine or Emitter).

    ``io``: ``state`` int8 ``[layers, d]`` (read and written), ``logits_acc`` int32
    ``[1, Vp]``, ``logits8`` int8 ``[1, Vp]``, ``next`` int32 ``[1, 1]`` (written). Same ops
    as :meth:`MMFreeInt.step` plus the state LOAD/STOREs and the output STOREs.
    """
    from tritium.host.models import mmfree_int

    M.LOAD("x", model.embed, token, "embed")
    for l, L in enumerate(model.layers):
        M.LOAD(f"l{l}.h", io["state"], l, "state")
        mmfree_int.layer_step(M, L, l)
        M.STORE(io["state"], l, f"l{l}.h", f"state[{l}]")
    M.VRMS("xf", "x", model.norm, "norm")
    mmfree_int.bitlinear(M, model.lm_head, "xf", "logits")
    M.VREQ("logits8", "logits.acc", model.logits_rq, "logits")
    M.VARGMAX("next", "logits8", model.cfg.vocab)
    M.STORE(io["logits_acc"], 0, "logits.acc", "out.logits_acc")
    M.STORE(io["logits8"], 0, "logits8", "out.logits8")
    M.STORE(io["next"], 0, "next", "out.next")


def gpt_step(M, model, token: int, pos: int, io: Mapping[str, np.ndarray]) -> None:
    """One GPT decode step at position ``pos`` over ``M`` (IntMachine or Emitter).

    ``io``: ``K``, ``V`` int8 ``[layers, heads, ctx, hd]`` (row ``pos`` written, rows
    ``0..pos`` read), and the output arrays of :func:`mmfree_step`. Same ops as
    :meth:`GPTInt.step` plus the output STOREs.
    """
    from tritium.host.models import gpt_int

    if pos >= model.cfg.ctx:
        raise ValueError(f"position {pos} is past the context of {model.cfg.ctx}")
    M.LOAD("tok", model.tok_emb, token, "tok_emb")
    M.LOAD("pos", model.pos_emb, pos, "pos_emb")
    M.VADD("x", "tok", "pos")
    for l, L in enumerate(model.layers):
        gpt_int.layer_step(M, L, l, model.cfg, io["K"][l], io["V"][l], pos)
    M.VRMS("xf", "x", model.ln_f, "ln_f")
    M.GEMM_I8("logits.acc", "xf", model.w_head, "lm_head")
    M.VREQ("logits8", "logits.acc", model.logits_rq, "logits")
    M.VARGMAX("next", "logits8", model.cfg.vocab)
    M.STORE(io["logits_acc"], 0, "logits.acc", "out.logits_acc")
    M.STORE(io["logits8"], 0, "logits8", "out.logits8")
    M.STORE(io["next"], 0, "next", "out.next")


def _io_shapes(model) -> dict[str, tuple[tuple[int, ...], type]]:
    c = model.cfg
    vp = c.vocab_padded
    out = {"next": ((1, 1), np.int32), "logits8": ((1, vp), np.int8),
           "logits_acc": ((1, vp), np.int32)}
    if model.kind == "mmfree":
        out["state"] = ((len(model.layers), c.d), np.int8)
    else:
        shape = (c.n_layers, c.n_heads, c.ctx, c.head_dim)
        out["K"] = (shape, np.int8)
        out["V"] = (shape, np.int8)
    return out


@dataclass
class StepOutput:
    """What one decode step leaves in the output region."""

    next: int
    logits8: np.ndarray  # int8 [Vp]
    logits_acc: np.ndarray  # int32 [Vp]


class ReferenceState:
    """Host-side state of the NumPy integer reference running :func:`mmfree_step` /
    :func:`gpt_step` on an IntMachine (the same op sequence as the device program)."""

    def __init__(self, model):
        self.model = model
        self.io = {k: np.zeros(s, d) for k, (s, d) in _io_shapes(model).items()}
        self.pos = 0

    def reset(self) -> None:
        for a in self.io.values():
            a[...] = 0
        self.pos = 0


def reference_step(model, token: int, state: ReferenceState, mach=None) -> StepOutput:
    """Run one step of the compiler's op sequence on the NumPy integer reference."""
    from tritium.host.models.intops import IntMachine

    M = mach if mach is not None else IntMachine()
    if model.kind == "mmfree":
        mmfree_step(M, model, int(token), state.io)
    else:
        gpt_step(M, model, int(token), state.pos, state.io)
    state.pos += 1
    io = state.io
    return StepOutput(int(io["next"][0, 0]), io["logits8"][0].copy(), io["logits_acc"][0].copy())


# ============================================================================ lowering
class MOp:
    """One machine instruction over symbolic buffers: fields are ints or ``(Buf, byte
    offset)``; ``reads``/``writes`` list the buffers; ``dram_r``/``dram_w`` byte ranges."""

    __slots__ = ("dram_r", "dram_w", "f", "op", "reads", "token", "writes")

    def __init__(self, op: Op, f: dict, reads=(), writes=(), dram_r=None, dram_w=None,
                 token=None):
        self.op, self.f = op, f
        self.reads, self.writes = tuple(reads), tuple(writes)
        self.dram_r, self.dram_w, self.token = dram_r, dram_w, token


@dataclass(frozen=True)
class Plan:
    """Knobs of one lowering attempt."""

    wbuf: int  # bytes of one weight tile buffer
    acc_tile: int  # bytes of one fused accumulator tile
    fuse_above: int  # fuse GEMMs whose int32 result exceeds this many bytes
    hoist: int  # max instructions a LOAD moves up (0: none)
    reuse: int  # reuse a resident constant when last used at most this many nodes ago


def _plans(cfg: AcceleratorConfig) -> list[Plan]:
    """Lowering attempts, best first (the first whose allocation fits is used).

    The controller dispatches in program order into queues of ``cfg.queue_depth`` slots and
    stops dispatching behind VREQ/VMUL/VRMS until they finish, so a LOAD overlaps compute only
    when it sits *before* such instructions, yet a load queue filled far ahead blocks dispatch.
    Loads are therefore hoisted a few instructions (at most queue depth - 1) and weights stream
    in 2 KiB tiles. Measured on the simulated SoC with 4-slot queues (cycles per decode step):
    GPT on ``base`` 63.7k (2 KiB tiles, window 3) vs 72.0k (4 KiB, window 8), 83.1k (unbounded
    hoisting) and 84.4k (none); MMFree on ``base`` 47.1k vs 49.9k. With one SPAD bank (``tiny``)
    loads and GEMM operand reads share the port and hoisting does not pay: 91.8k without vs
    96.4k with.
    """
    wb = min(cfg.spad_bytes // 4, 2048)
    at = max(cfg.bus_bytes, cfg.acc_bytes // 4)
    fa = cfg.acc_bytes // 2
    window = max(cfg.queue_depth - 1, 0)  # LOADs that can wait in the load queue behind a running one
    hoists = (0, 3, 2) if cfg.spad_banks == 1 else (3, 2, 8, 0)
    hoists = tuple(dict.fromkeys(min(h, window) for h in hoists))
    out = []
    for hoist in hoists:
        for scale in (1, 2, 4, 8):
            if hoist and wb // scale < 256:
                continue
            out.append(Plan(max(cfg.bus_bytes, wb // scale), at, fa, hoist, 8 if hoist else 0))
    for scale in (2, 4, 8):  # last resort: smaller accumulator tiles, fuse everything
        out.append(Plan(max(cfg.bus_bytes, wb // 8), max(cfg.bus_bytes, at // scale), 0, 0, 0))
    return out


class _AllocError(Exception):
    pass


class Lowering:
    """Lowers one recorded step (:class:`Emitter` nodes) to a program, given a :class:`Plan`
    and the compiler's DRAM context (constant placement)."""

    def __init__(self, ctx: _Context, em: Emitter, plan: Plan):
        self.ctx, self.cfg, self.em, self.plan = ctx, ctx.cfg, em, plan
        self.mops: list[MOp] = []
        self.bufs = list(em.bufs)
        self._resident: dict = {}  # const key -> (Buf, node index of last use)
        self._node_i = 0
        self.zero_known: dict[int, list] = {}

    # ---------------------------------------------------------------- helpers
    def _tmp(self, space: str, nbytes: int, name: str, kind: str) -> Buf:
        n = -(-nbytes // _ESIZE[space])
        b = Buf(len(self.bufs), space, n, name, kind)
        self.bufs.append(b)
        return b

    def _emit(self, op: Op, f: dict, reads=(), writes=(), **kw) -> MOp:
        m = MOp(op, f, reads, writes, **kw)
        self.mops.append(m)
        return m

    def _pad(self, nbytes: int) -> int:
        b = self.cfg.bus_bytes
        return -(-nbytes // b) * b

    def _const_buf(self, key, arr: np.ndarray, label: str, cat: str, space: str) -> Buf:
        """A SPAD/ACC buffer holding constant ``arr`` (loaded from DRAM, reused while
        resident)."""
        hit = self._resident.get(key)
        if hit is not None and self._node_i - hit[1] <= self.plan.reuse:
            self._resident[key] = (hit[0], self._node_i)
            return hit[0]
        raw = np.ascontiguousarray(arr)
        region = self.ctx.place(key, raw, label, cat)
        nbytes = self._pad(raw.nbytes)
        b = self._tmp(space, nbytes, f"const:{label}", "const")
        self._emit(Op.LOAD, {"space": _space(space), "rows": 1, "row_bytes": nbytes,
                             "loc": (b, 0), "dram": region.addr, "stride": 0},
                   writes=(b,), dram_r=(region.addr, region.addr + nbytes))
        self._resident[key] = (b, self._node_i)
        return b

    def _params(self, rq, label: str, lo: int | None = None, hi: int | None = None) -> Buf:
        m0, sh = np.atleast_1d(rq.M0), np.atleast_1d(rq.shift)
        if lo is not None and m0.size > 1:
            m0, sh = m0[lo:hi], sh[lo:hi]
        block = np.concatenate([m0, sh]).astype("<i4")
        return self._const_buf(("rq", id(rq), lo, hi), block, f"{label}.rq", "requant_params",
                               ACC)

    def _loc(self, r: TRef) -> tuple[tuple[Buf, int], int]:
        b, e0, cnt = r.span()
        return (b, e0 * _ESIZE[b.space]), cnt

    # ---------------------------------------------------------------- driver
    def run(self) -> list[MOp]:
        nodes = self._fold_copies(list(self.em.nodes))
        groups = self._fusion(nodes)
        self._coalesce(nodes, groups)
        skip = {id(n) for g in groups.values() for n in g["consumers"]}
        for i, n in enumerate(nodes):
            self._node_i = i
            if id(n) in skip:
                continue
            getattr(self, "_l_" + n.op)(n, groups.get(id(n)))
            if n.op not in ("COPY", "INIT"):
                for d in n.dst:
                    self.zero_known.pop(d.buf.idx, None)
        return self.mops

    # ---------------------------------------------------------------- copy folding
    @staticmethod
    def _fold_copies(nodes: list[Node]) -> list[Node]:
        """``S = f(...); B = zeros; B[a:b] = S`` (the GPT's zero-padded probabilities): when
        S dies at the copy and B is untouched between its INIT and the copy, S is placed
        inside B and the INIT moves before S's definition, so the copy disappears."""
        def uses(n: Node) -> set[int]:
            return {r.buf.root()[0].idx for r in n.dst + n.src}

        j = 0
        while j < len(nodes):
            c = nodes[j]
            if c.op != "COPY":
                j += 1
                continue
            dst, src = c.dst[0], c.src[0]
            sb, db = src.buf, dst.buf.root()[0]
            ok = (src.whole() and sb.parent is None and sb.space == dst.space
                  and src.size == dst.size)
            if ok:
                flat = dst.ix.ravel()
                ok = bool((flat == flat[0] + np.arange(flat.size)).all())
            if ok:  # the definition of S, the INIT of B, and no other use of either
                defs = [i for i in range(j) if sb.idx in {r.buf.idx for r in nodes[i].dst}]
                inits = [i for i in range(j) if nodes[i].op == "INIT"
                         and nodes[i].dst[0].buf is db]
                later = any(sb.idx in uses(n) for n in nodes[j + 1:])
                ok = len(defs) == 1 and len(inits) == 1 and not later
            if ok:
                i, k = defs[0], inits[0]
                ok = i < k and not any(db.idx in uses(n) for n in nodes[i:k]) and not any(
                    db.idx in uses(n) for n in nodes[k + 1:j])
            if not ok:
                j += 1
                continue
            off = int(dst.ix.ravel()[0]) + dst.buf.root()[1]
            sb.parent, sb.offset = db, off
            init = nodes.pop(k)
            nodes.insert(i, init)
            nodes.pop(j)  # the copy (indices before j shifted by the move, not j itself)
        return nodes

    # ---------------------------------------------------------------- fusion analysis
    def _fusion(self, nodes: list[Node]) -> dict:
        """GEMMs to fuse with column-separable consumers: {id(gemm): {consumers, bufs}}."""
        groups: dict = {}
        for i, n in enumerate(nodes):
            if n.op != "GEMM":
                continue
            out = n.dst[0]
            m, N = out.shape
            if 4 * m * N <= self.plan.fuse_above or m != 1:
                continue
            members = {out.buf.idx}
            consumers = []
            ok = True
            touched: list[Node] = []
            for j in range(i + 1, len(nodes)):
                c = nodes[j]
                uses = [s for s in c.src if s.buf.root()[0].idx in members]
                if not uses:
                    touched.append(c)
                    continue
                if c.op == "VSCALE" and c.src[0].whole() and c.src[0].buf.idx in members \
                        and c.src[1].buf.root()[0].idx not in members:
                    members.add(c.dst[0].buf.idx)
                elif c.op == "VREQ" or c.op == "STORE":
                    pass
                else:
                    ok = False
                    break
                if not self._hoistable(c, touched):
                    ok = False
                    break
                consumers.append(c)
            if ok and consumers:
                groups[id(n)] = {"consumers": consumers, "members": members}
        return groups

    @staticmethod
    def _hoistable(c: Node, between: list[Node]) -> bool:
        """Can consumer ``c`` run right after its GEMM (before the nodes ``between``)?"""
        roots = {r.buf.root()[0].idx for r in c.dst} | {r.buf.root()[0].idx for r in c.src}
        for b in between:
            for r in b.dst + b.src:
                if r.buf.root()[0].idx in roots:
                    return False
            if c.op == "STORE" and (b.op in ("STORE", "LOAD")):
                d1, d2 = c.args["dram"], b.args["dram"]
                if d1.const is None and d2.const is None and _dram_overlap(d1, d2):
                    return False
        return True

    def _coalesce(self, nodes: list[Node], groups: dict) -> None:
        """Elementwise results write over a source that dies there (in place)."""
        last: dict[int, int] = {}
        for i, n in enumerate(nodes):
            for r in n.src + n.dst:
                last[r.buf.root()[0].idx] = i
        fused = set()
        for g in groups.values():
            fused |= g["members"]
        elementwise = {"VADD", "VSCALE", "VACT", "VMUL"}
        for i, n in enumerate(nodes):
            if n.op not in elementwise:
                continue
            d = n.dst[0]
            if not d.whole() or d.buf.parent is not None or d.buf.idx in fused:
                continue
            for s in n.src[:1] if n.op == "VSCALE" else n.src:
                sb, _off = s.buf.root()
                if (s.space == d.space and s.size == d.size and last.get(sb.idx) == i
                        and sb.idx not in fused and sb is not d.buf):
                    flat = s.ix.ravel()
                    if not (flat == flat[0] + np.arange(flat.size)).all():
                        continue
                    d.buf.parent, d.buf.offset = s.buf, int(flat[0])
                    last[sb.idx] = max(last.get(sb.idx, i), last.get(d.buf.idx, i))
                    break

    # ---------------------------------------------------------------- data movement
    def _l_LOAD(self, n: Node, _g) -> None:
        ref: DramRef = n.args["dram"]
        dst = n.dst[0]
        base = self._dram_addr(ref, n.args["label"], "embedding")
        rows, rb, stride = ref.rows()
        loc, _cnt = self._loc(dst)
        whole = dst.whole() and dst.buf.parent is None
        if rows == 1 and rb % self.cfg.bus_bytes and whole:
            rb = self._pad(rb)
        tok = None
        if n.args.get("token"):
            tok = (base - n.args["row"] * np.asarray(ref.const.arr).strides[0],
                   np.asarray(ref.const.arr).strides[0])
        self._check_dma(f"LOAD {n.args['label']}", base, rb, stride if rows > 1 else 0)
        self._emit(Op.LOAD, {"space": _space(dst.space), "rows": rows, "row_bytes": rb,
                             "loc": loc, "dram": base, "stride": stride if rows > 1 else 0},
                   writes=(dst.buf,), dram_r=(base, base + (rows - 1) * stride + rb),
                   token=tok)

    def _l_STORE(self, n: Node, _g) -> None:
        ref: DramRef = n.args["dram"]
        src = n.src[0]
        loc, _cnt = self._loc(src)
        rows, rb, stride = ref.rows()
        base = ref.addr
        if rb % self.cfg.bus_bytes:
            if rows != 1 or ref.padded_end is None or base + self._pad(rb) > ref.padded_end:
                raise CompileError(f"STORE {n.args['label']}: {rb} bytes per row is not a "
                                   f"multiple of the bus width ({self.cfg.bus_bytes})")
            rb = self._pad(rb)
        self._check_dma(f"STORE {n.args['label']}", base, rb, stride if rows > 1 else 0)
        self._emit(Op.STORE, {"space": _space(src.space), "rows": rows, "row_bytes": rb,
                              "loc": loc, "dram": base, "stride": stride if rows > 1 else 0},
                   reads=(src.buf,), dram_w=(base, base + (rows - 1) * stride + rb))

    def _check_dma(self, what: str, addr: int, rb: int, stride: int) -> None:
        b = self.cfg.bus_bytes
        for name, v in (("address", addr), ("row bytes", rb), ("stride", stride)):
            if v % b:
                raise CompileError(f"{what}: {name} {v} is not a multiple of the bus width "
                                   f"({b} bytes) of {self.cfg.name!r}")

    def _dram_addr(self, ref: DramRef, label: str, cat: str) -> int:
        if ref.const is None:
            return ref.addr
        arr = np.ascontiguousarray(ref.const.arr)
        region = self.ctx.place(("arr", ref.const.key), arr, label, cat, keep=ref.const.arr)
        return region.addr + ref.addr

    def _l_INIT(self, n: Node, _g) -> None:
        dst = n.dst[0]
        val = n.args["value"]
        loc, _cnt = self._loc(dst)
        nbytes = self._pad(val.nbytes)
        if not val.any():
            addr = self.ctx.zero_block(nbytes)
            self.zero_known[dst.buf.idx] = []
        else:
            addr = self.ctx.place(("init", val.tobytes()), val, "init", "tables").addr
        self._emit(Op.LOAD, {"space": _space(dst.space), "rows": 1, "row_bytes": nbytes,
                             "loc": loc, "dram": addr, "stride": 0},
                   writes=(dst.buf,), dram_r=(addr, addr + nbytes))

    def _l_COPY(self, n: Node, _g) -> None:
        dst, src = n.dst[0], n.src[0]
        if dst.space != SPAD or src.space != SPAD:
            raise CompileError("only int8 (SPAD) tensors can be copied")
        dloc, cnt = self._loc(dst)
        sloc, _ = self._loc(src)
        b, e0, _ = dst.span()
        known = self.zero_known.get(b.idx)
        if known is not None and all(e0 + cnt <= lo or hi <= e0 for lo, hi in known):
            zero = dloc  # the destination still holds zeros: x + 0
            known.append((e0, e0 + cnt))
            reads = (src.buf, b)
        else:
            zaddr = self.ctx.zero_block(self._pad(cnt))
            zb = self._tmp(SPAD, self._pad(cnt), "zeros", "const")
            self._emit(Op.LOAD, {"space": 0, "rows": 1, "row_bytes": self._pad(cnt),
                                 "loc": (zb, 0), "dram": zaddr, "stride": 0}, writes=(zb,),
                       dram_r=(zaddr, zaddr + self._pad(cnt)))
            zero = (zb, 0)
            reads = (src.buf, zb)
        self._emit(Op.VADD, {"rows": 1, "n": cnt, "src": sloc, "src2": zero, "dst": dloc},
                   reads=reads, writes=(b,))

    # ---------------------------------------------------------------- vector ops
    def _l_VREQ(self, n: Node, _g) -> None:
        src, dst = n.src[0], n.dst[0]
        rows, cols = src.rows_n()
        rq = n.args["rq"]
        P = self._params(rq, n.args["label"])
        sloc, _ = self._loc(src)
        dloc, _ = self._loc(dst)
        if rq.per_channel and rq.channels != cols:
            raise CompileError(f"VREQ {n.args['label']}: {rq.channels} channel parameters "
                               f"for {cols} columns")
        self._emit(Op.VREQ, {"per_channel": int(rq.per_channel), "rows": rows, "n": cols,
                             "src": sloc, "dst": dloc, "param": (P, 0)},
                   reads=(src.buf, P), writes=(dst.buf,))

    def _l_VADD(self, n: Node, _g) -> None:
        self._ew(Op.VADD, n)

    def _ew(self, op: Op, n: Node, **extra) -> None:
        a, b = n.src
        d = n.dst[0]
        rows, cols = d.rows_n()
        f = {"rows": rows, "n": cols, "src": self._loc(a)[0], "src2": self._loc(b)[0],
             "dst": self._loc(d)[0]}
        reads = [a.buf, b.buf]
        for k, v in extra.items():
            f[k] = (v, 0)
            reads.append(v)
        self._emit(op, f, reads=reads, writes=(d.buf,))

    def _l_VMUL(self, n: Node, _g) -> None:
        self._ew(Op.VMUL, n, param=self._params(n.args["rq"], n.args["label"]))

    def _l_VSCALE(self, n: Node, _g) -> None:
        self._ew(Op.VSCALE, n)

    def _l_VACT(self, n: Node, _g) -> None:
        t = n.args["table"]
        T = self._const_buf(("tab", id(t)), np.asarray(t).view(np.uint8), n.args["label"],
                            "tables", SPAD)
        self._unary(Op.VACT, n, src2=T)

    def _unary(self, op: Op, n: Node, src2: Buf | None = None, param: Buf | None = None
               ) -> None:
        s, d = n.src[0], n.dst[0]
        rows, cols = s.rows_n()
        f = {"rows": rows, "n": cols, "src": self._loc(s)[0], "dst": self._loc(d)[0]}
        reads = [s.buf]
        if src2 is not None:
            f["src2"] = (src2, 0)
            reads.append(src2)
        if param is not None:
            f["param"] = (param, 0)
            reads.append(param)
        self._emit(op, f, reads=reads, writes=(d.buf,))

    def _l_VRMS(self, n: Node, _g) -> None:
        norm = n.args["norm"]
        G = self._const_buf(("gamma", id(norm.gamma)),
                            np.asarray(norm.gamma, np.int8).view(np.uint8),
                            n.args["label"] + ".gamma", "gains", SPAD)
        P = self._params(norm.rq, n.args["label"])
        self._unary(Op.VRMS, n, src2=G, param=P)

    def _l_VQUANT(self, n: Node, _g) -> None:
        s = n.src[0]
        q, m = n.dst
        rows, cols = s.rows_n()
        self._emit(Op.VQUANT, {"rows": rows, "n": cols, "src": self._loc(s)[0],
                               "dst": self._loc(q)[0], "param": self._loc(m)[0]},
                   reads=(s.buf,), writes=(q.buf, m.buf))

    def _l_VGATE(self, n: Node, _g) -> None:
        f, c, h = n.src
        rows, cols = h.rows_n()
        self._emit(Op.VGATE, {"rows": rows, "n": cols, "src": self._loc(f)[0],
                              "src2": self._loc(c)[0], "dst": self._loc(h)[0]},
                   reads=(f.buf, c.buf, h.buf), writes=(h.buf,))

    def _l_VSOFTMAX(self, n: Node, _g) -> None:
        t = np.asarray(n.args["table"])
        T = self._const_buf(("tab", id(n.args["table"])), t.astype("<u2").view(np.uint8),
                            n.args["label"], "tables", SPAD)
        self._unary(Op.VSOFTMAX, n, src2=T)

    def _l_VARGMAX(self, n: Node, _g) -> None:
        s, d = n.src[0], n.dst[0]
        rows, cols = s.rows_n()
        self._emit(Op.VARGMAX, {"rows": rows, "n": cols, "src": self._loc(s)[0],
                                "dst": self._loc(d)[0]}, reads=(s.buf,), writes=(d.buf,))

    # ---------------------------------------------------------------- GEMM
    def _weights(self, n: Node) -> dict:
        """Engine, opcode and DRAM layout of the GEMM's weights."""
        a = n.args
        label, K, N = a["label"], a["K"], a["N"]
        w = a["w"]
        dyn = self.em._dram(w, label, "weights")
        if a["kind"] == "ternary":
            engine = resolve_engine(self.ctx.engine, self.cfg, label, "ternary")
            key = ("w", id(w), engine)
            if engine == "ternary":
                arr, bits = np.asarray(w, np.uint8), 0
            elif engine == "lut":
                arr = nx.pack_lut_weights(nx.unpack_ternary(w, K), 2).reshape(N, -1)
                bits = 2
            else:
                arr, bits = nx.unpack_ternary(w, K), 0
            region = self.ctx.place(key, arr, label, f"weights_{engine}", keep=w)
            return {"engine": engine, "bits": bits, "addr": region.addr,
                    "rowstride": arr.shape[1] * arr.itemsize, "wt": False}
        engine = resolve_engine(self.ctx.engine, self.cfg, label, "int8")
        if dyn.const is not None:
            arr = np.ascontiguousarray(np.asarray(w, np.int8))
            region = self.ctx.place(("w", id(w), engine), arr, label, "weights_systolic",
                                    keep=w)
            return {"engine": engine, "bits": 0, "addr": region.addr,
                    "rowstride": arr.shape[1], "wt": a["wt"]}
        if dyn.strides[-1] != 1:
            raise CompileError(f"{label}: weight rows in device memory must be contiguous")
        return {"engine": engine, "bits": 0, "addr": dyn.addr, "rowstride": dyn.strides[0],
                "wt": a["wt"]}

    def _l_GEMM(self, n: Node, group) -> None:
        A, out = n.src[0], n.dst[0]
        m = A.shape[0]
        K, N = n.args["K"], n.args["N"]
        W = self._weights(n)
        eng, bits, wt = W["engine"], W["bits"], W["wt"]
        op = ENGINE_GEMM[eng]
        per_k = {"systolic": 1.0, "ternary": 0.25, "lut": bits / 8}[eng]
        bus = self.cfg.bus_bytes
        if K % 8:
            raise CompileError(f"{n.args['label']}: K={K} is not a multiple of 8")
        aloc, _ = self._loc(A)
        # ---- tile sizes
        if wt:
            tn = N
            row = N  # bytes per K row
            tk = max(8, min(K, (self.plan.wbuf // max(row, 1)) // 8 * 8))
        else:
            row_full = int(K * per_k)
            tk = K
            if row_full > self.plan.wbuf:
                if eng == "lut" or m != 1:
                    raise CompileError(f"{n.args['label']}: one output channel ({row_full} "
                                       f"bytes) exceeds the weight buffer; K tiling needs "
                                       "the ternary or systolic engine and one row")
                unit = 8
                while (unit * per_k) % bus:
                    unit += 8
                tk = max(unit, int(self.plan.wbuf / per_k) // unit * unit)
                while tk > unit and K % tk:
                    tk -= unit
                if K % tk:
                    raise CompileError(f"{n.args['label']}: K={K} cannot be tiled in "
                                       f"multiples of {unit} for {eng}")
            wrow = int(tk * per_k)
            tn = max(1, self.plan.wbuf // max(wrow, 1))
            if group is not None:
                tn = min(tn, self.plan.acc_tile // (4 * m))
                unit_n = max(1, bus // 4)
                tn = max(unit_n, tn // unit_n * unit_n)
            elif m != 1:
                tn = N
            tn = min(tn, N)
            nt = -(-N // tn)
            tn = -(-N // nt)
            if group is not None:
                unit_n = max(1, bus // 4)
                tn = -(-tn // unit_n) * unit_n
        steps = []  # (load mop args, gemm fields, epilogue callback)
        out_buf = None if group is not None else out.buf
        for n0 in range(0, N, tn):
            n1 = min(N, n0 + tn)
            cur_n = n1 - n0
            acc_tile = (self._tmp(ACC, 4 * m * cur_n, f"acc:{n.args['label']}", "acctile")
                        if group is not None else None)
            for k0 in range(0, K, tk):
                k1 = min(K, k0 + tk)
                cur_k = k1 - k0
                if wt:
                    addr = W["addr"] + k0 * W["rowstride"]
                    rows, rb, stride = cur_k, N, W["rowstride"]
                    wbytes = cur_k * N
                else:
                    addr = W["addr"] + n0 * W["rowstride"] + int(k0 * per_k)
                    rows, rb, stride = cur_n, int(cur_k * per_k), W["rowstride"]
                    wbytes = rows * rb
                if stride == rb and rows * rb <= 0xFFFF:
                    rows, rb, stride = 1, rows * rb, 0
                if rb % bus:
                    rb_p = self._pad(rb)
                    if rows != 1:
                        raise CompileError(f"{n.args['label']}: weight rows of {rb} bytes are "
                                           f"not a multiple of the bus width ({bus})")
                    rb = rb_p
                self._check_dma(f"LOAD {n.args['label']}", addr, rb, stride)
                wb = self._tmp(SPAD, max(wbytes, rb * rows), f"w:{n.args['label']}", "wtile")
                c_loc = (acc_tile, 0) if acc_tile is not None else (out_buf, 4 * n0 * m)
                a_loc = (aloc[0], aloc[1] + k0)
                load = {"op": Op.LOAD, "f": {"space": 0, "rows": rows, "row_bytes": rb,
                                            "loc": (wb, 0), "dram": addr, "stride": stride},
                            "writes": (wb,), "dram_r": (addr, addr + (rows - 1) * stride + rb)}
                gf = {"accumulate": int(k0 > 0), "wt": int(wt), "bits": bits, "m": m,
                      "k": cur_k, "n": cur_n, "a": a_loc, "w": (wb, 0), "c": c_loc}
                greads = [A.buf, wb] + ([c_loc[0]] if k0 > 0 else [])
                last_k = k1 == K
                epi = ((n0, n1, acc_tile) if (group is not None and last_k) else None)
                steps.append((load, gf, greads, c_loc[0], epi))
        # software pipeline: load i+1 before gemm i
        if steps:
            self._emit(**steps[0][0])
        for i, (load, gf, greads, cbuf, epi) in enumerate(steps):
            if i + 1 < len(steps):
                self._emit(**steps[i + 1][0])
            self._emit(op, gf, reads=greads, writes=(cbuf,))
            if epi is not None:
                self._epilogue(group, *epi)

    def _epilogue(self, group: dict, n0: int, n1: int, T: Buf) -> None:
        """Per-tile consumers of a fused GEMM: VSCALE in place, VREQ / STORE of the columns
        of the tile that each consumer covers."""
        members = group["members"]
        for c in group["consumers"]:
            if c.op == "VSCALE":
                mref = c.src[1]
                self._emit(Op.VSCALE, {"rows": 1, "n": n1 - n0, "src": (T, 0),
                                       "src2": self._loc(mref)[0], "dst": (T, 0)},
                           reads=(T, mref.buf), writes=(T,))
                continue
            src = c.src[0]
            sb, e0, cnt = src.span()
            rb, roff = sb.root()
            assert rb.idx in members or sb.idx in members
            c0 = roff + e0
            lo, hi = max(n0, c0), min(n1, c0 + cnt)
            if lo >= hi:
                continue
            if c.op == "VREQ":
                rq = c.args["rq"]
                dst = c.dst[0]
                (db, doff), _ = self._loc(dst)
                if rq.per_channel:
                    P = self._params(rq, c.args["label"], lo - c0, hi - c0)
                else:
                    P = self._params(rq, c.args["label"])
                self._emit(Op.VREQ, {"per_channel": int(rq.per_channel), "rows": 1,
                                     "n": hi - lo, "src": (T, 4 * (lo - n0)),
                                     "dst": (db, doff + (lo - c0)), "param": (P, 0)},
                           reads=(T, P), writes=(db,))
            else:  # STORE
                ref: DramRef = c.args["dram"]
                addr = ref.addr + 4 * (lo - c0)
                nbytes = 4 * (hi - lo)
                if nbytes % self.cfg.bus_bytes:
                    end = addr + self._pad(nbytes)
                    if hi != c0 + cnt or ref.padded_end is None or end > ref.padded_end:
                        raise CompileError(f"STORE {c.args['label']}: tile of {nbytes} bytes "
                                           "is not bus-aligned")
                    nbytes = self._pad(nbytes)
                self._check_dma(f"STORE {c.args['label']}", addr, nbytes, 0)
                self._emit(Op.STORE, {"space": 1, "rows": 1, "row_bytes": nbytes,
                                      "loc": (T, 4 * (lo - n0)), "dram": addr, "stride": 0},
                           reads=(T,), dram_w=(addr, addr + nbytes))


def _space(name: str) -> int:
    return int(Space.SPAD if name == SPAD else Space.ACC)


def _dram_overlap(a: DramRef, b: DramRef) -> bool:
    def span(r: DramRef):
        lo = r.addr
        hi = r.addr + sum((n - 1) * s for n, s in zip(r.shape, r.strides)) + r.itemsize
        return lo, hi
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


# ============================================================================ scheduling
def hoist_loads(mops: list[MOp], window: int, cfg: AcceleratorConfig | None = None,
                fill: float = 0.75) -> list[MOp]:
    """Move each LOAD up past at most ``window`` earlier non-LOAD instructions that neither
    touch its destination buffer nor write DRAM it reads. Loads keep their order (the load
    queue is FIFO). With ``cfg``, a load stops rising where its buffer would push the bytes
    live in its scratchpad above ``fill`` of the capacity (so the allocation still fits)."""
    if window <= 0:
        return list(mops)
    live = cap = None
    if cfg is not None:
        n = len(mops)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        roots: dict[int, Buf] = {}
        for i, m in enumerate(mops):
            for b in m.reads + m.writes:
                r = b.root()[0]
                roots[r.idx] = r
                first.setdefault(r.idx, i)
                last[r.idx] = i
        live = {SPAD: np.zeros(n + 1), ACC: np.zeros(n + 1)}
        for k, r in roots.items():
            live[r.space][first[k]:last[k] + 1] += _padded(r, cfg)
        cap = {SPAD: fill * cfg.spad_bytes, ACC: fill * cfg.acc_bytes}
    out: list[MOp] = []
    pos: list[int] = []  # original index of each instruction in ``out``
    for i, m in enumerate(mops):
        if m.op != Op.LOAD:
            out.append(m)
            pos.append(i)
            continue
        dst = {b.root()[0].idx for b in m.writes}
        wroot = m.writes[0].root()[0]
        size = _padded(wroot, cfg) if cfg is not None else 0
        j = len(out)
        moved = 0
        while j > 0 and moved < window:
            p = out[j - 1]
            if p.op in (Op.LOAD, Op.HALT, Op.FENCE):
                break
            if any(b.root()[0].idx in dst for b in p.reads + p.writes):
                break
            if p.dram_w and m.dram_r and p.dram_w[0] < m.dram_r[1] and m.dram_r[0] < p.dram_w[1]:
                break
            if live is not None and live[wroot.space][pos[j - 1]] + size > cap[wroot.space]:
                break
            j -= 1
            moved += 1
        if live is not None and j < len(out):
            live[wroot.space][pos[j]:i] += size
        out.insert(j, m)
        pos.insert(j, i)
    return out


def _padded(b: Buf, cfg: AcceleratorConfig) -> int:
    bus = cfg.bus_bytes
    return -(-(b.n * _ESIZE[b.space]) // bus) * bus


# ============================================================================ allocation
def allocate(mops: list[MOp], cfg: AcceleratorConfig) -> tuple[dict[int, int], dict]:
    """Scratchpad addresses of every root buffer used by ``mops`` (first fit over live
    ranges, bus-aligned). Returns ``({buf idx: addr}, stats)``; raises _AllocError."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    roots: dict[int, Buf] = {}
    for i, m in enumerate(mops):
        for b in m.reads + m.writes:
            r = b.root()[0]
            roots[r.idx] = r
            first.setdefault(r.idx, i)
            last[r.idx] = i
    bus = cfg.bus_bytes
    limit = {SPAD: cfg.spad_bytes, ACC: cfg.acc_bytes}
    addr: dict[int, int] = {}
    live: dict[str, list] = {SPAD: [], ACC: []}
    peak = {SPAD: 0, ACC: 0}
    for idx in sorted(roots, key=lambda k: (first[k], k)):
        r = roots[idx]
        size = -(-(r.n * _ESIZE[r.space]) // bus) * bus
        sp = r.space
        live[sp] = [x for x in live[sp] if last[x[0]] >= first[idx]]
        taken = sorted((a, a + s) for _, a, s in live[sp])
        a = 0
        for lo, hi in taken:
            if a + size <= lo:
                break
            a = max(a, hi)
        if a + size > limit[sp]:
            raise _AllocError(f"{sp} overflow: {r.name} needs {size} bytes, "
                              f"{limit[sp]} available")
        addr[idx] = a
        live[sp].append((idx, a, size))
        peak[sp] = max(peak[sp], a + size)
    return addr, {"spad_peak": peak[SPAD], "acc_peak": peak[ACC]}


def encode(mops: list[MOp], addr: dict[int, int]) -> tuple[list[Instr], list]:
    """Instructions (HALT appended) and the token patch sites ``(index, base, row stride)``."""
    out, patches = [], []
    for i, m in enumerate(mops):
        f = {}
        for k, v in m.f.items():
            if isinstance(v, tuple):
                b, off = v
                r, roff = b.root()
                f[k] = addr[r.idx] + roff * _ESIZE[r.space] + off
            else:
                f[k] = int(v)
        out.append(Instr.make(m.op, **f))
        if m.token is not None:
            patches.append((i, m.token[0], m.token[1]))
    out.append(Instr.make(Op.HALT))
    return out, patches


# ============================================================================ the compiler
class _Context:
    """Device-memory context shared by all steps of one compiled model: the image and the
    placement of constants (so every step program addresses the same regions)."""

    def __init__(self, cfg: AcceleratorConfig, image: MemoryImage, engine):
        self.cfg, self.image, self.engine = cfg, image, engine
        self.placed: dict = {}
        self.keep: list = []
        self.cats: dict[str, int] = {}
        self.frozen = False
        self._zero: Region | None = None
        self._zero_need = 0

    def place(self, key, arr: np.ndarray, label: str, cat: str, keep=None) -> Region:
        hit = self.placed.get(key)
        if hit is not None:
            return hit
        if self.frozen:
            raise CompileError(f"constant {label!r} first needed after the image was built; "
                               "compile the longest step first")
        raw = np.ascontiguousarray(arr)
        name = f"{cat}:{label}"
        while name in self.image.regions:
            name += "'"
        self.image.place(raw, name)
        region = self.image.regions[name]
        self.placed[key] = region
        self.keep.append(keep if keep is not None else arr)
        self.cats[cat] = self.cats.get(cat, 0) + self.image._align(raw.nbytes)
        return region

    def zero_block(self, nbytes: int) -> int:
        if self._zero is None or self._zero.size < nbytes:
            if self.frozen:
                raise CompileError("zero block too small for a later step")
            size = max(nbytes, 8 * self.cfg.bus_bytes, self._zero_need)
            addr = self.image.alloc(size, "zeros" if self._zero is None else
                                    f"zeros{self.image.top}")
            self._zero = Region("zeros", addr, size)
            self.cats["zeros"] = self.cats.get("zeros", 0) + self.image._align(size)
        return self._zero.addr


@dataclass
class _Lowered:
    instrs: list[Instr]
    patches: list
    plan: Plan
    stats: dict
    sig: tuple
    addr: dict
    sizes: dict


class CompiledModel:
    """A model lowered for one configuration: the memory image plus per-step programs.

    Attributes
    ----------
    cfg : AcceleratorConfig
    model : MMFreeInt or GPTInt
    image : MemoryImage
        Constants, state / KV cache (zero), output region, and the program of step
        ``(token=0, pos=0)`` at :attr:`prog_base`.
    prog_base, prog_bytes : int
        Program region (address 0, sized for the longest step).
    out : dict of str -> (addr, nbytes)
        Output arrays in device memory: ``next`` (int32), ``logits8`` (int8 ``[Vp]``),
        ``logits_acc`` (int32 ``[Vp]``), and the state: ``state`` or ``K``/``V``.
    """

    def __init__(self, model, cfg: AcceleratorConfig, engine="auto", plan: Plan | None = None):
        self.model, self.cfg, self.engine = model, cfg, engine
        self.plan = plan
        self.kind = model.kind
        self.max_pos = model.cfg.ctx - 1 if self.kind == "gpt" else 0
        self._cache: dict[int, _Lowered] = {}
        # pass 1 measures the longest program, pass 2 builds the image with that reserve
        n_instr = self._build(prog_bytes=0)
        self._build(prog_bytes=n_instr * INSTR_BYTES)

    # ---------------------------------------------------------------- construction
    def _build(self, prog_bytes: int) -> int:
        cfg = self.cfg
        self.image = MemoryImage(cfg, prog_bytes=prog_bytes)
        self.prog_base, self.prog_bytes = 0, self.image.prog_bytes
        self.io: dict[str, np.ndarray] = {}
        self.out: dict[str, tuple[int, int]] = {}
        io_ends = {}
        for name, (shape, dt) in _io_shapes(self.model).items():
            nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
            addr = self.image.alloc(nbytes, f"io:{name}")
            end = addr + self.image._align(nbytes)
            self.io[name] = self.image.mem[addr:addr + nbytes].view(dt).reshape(shape)
            self.out[name] = (addr, nbytes)
            io_ends[(addr, end)] = end
        self._io_ends = io_ends
        self.ctx = _Context(cfg, self.image, self.engine)
        self._cache = {}
        ref = self._lower(self.max_pos, None)
        self.ctx.frozen = True
        self._ref = ref
        self._cache[self.max_pos] = ref
        if prog_bytes:
            first = self.program(0, 0)
            self.image.set_program(first)
        return len(ref.instrs)

    def _record(self, pos: int) -> Emitter:
        em = Emitter(self.cfg, self.image.mem, self._io_ends)
        if self.kind == "mmfree":
            mmfree_step(em, self.model, TokenRow(0), self.io)
        else:
            gpt_step(em, self.model, TokenRow(0), pos, self.io)
        return em

    def _lower(self, pos: int, ref: _Lowered | None) -> _Lowered:
        if ref is not None:
            plans = [ref.plan]
        else:
            plans = [self.plan] if self.plan is not None else _plans(self.cfg)
        err = None
        for plan in plans:
            em = self._record(pos)
            mops = Lowering(self.ctx, em, plan).run()
            mops = hoist_loads(mops, plan.hoist, self.cfg)
            sig = tuple(m.op for m in mops)
            sizes = {}
            for m in mops:
                for b in m.reads + m.writes:
                    r = b.root()[0]
                    sizes[r.idx] = r.n * _ESIZE[r.space]
            if ref is not None and sig == ref.sig and all(
                    sizes.get(k, 0) <= ref.sizes.get(k, -1) for k in sizes):
                addr, stats = ref.addr, ref.stats
            else:
                try:
                    addr, stats = allocate(mops, self.cfg)
                except _AllocError as e:
                    err = e
                    continue
            instrs, patches = encode(mops, addr)
            stats = dict(stats)
            return _Lowered(instrs, patches, plan, stats, sig, addr, sizes)
        raise CompileError(f"{self.kind} does not fit the scratchpads of {self.cfg.name!r} "
                           f"(SPAD {self.cfg.spad_bytes} B, ACC {self.cfg.acc_bytes} B): {err}")

    # ---------------------------------------------------------------- programs
    def lowered(self, pos: int = 0) -> _Lowered:
        pos = 0 if self.kind == "mmfree" else int(pos)
        if not 0 <= pos <= self.max_pos:
            raise ValueError(f"position {pos} outside [0, {self.max_pos}]")
        low = self._cache.get(pos)
        if low is None:
            low = self._lower(pos, self._ref)
            self._cache[pos] = low
        return low

    def program(self, token: int, pos: int = 0) -> list[Instr]:
        """The program of decode step ``(token, pos)`` (HALT-terminated)."""
        low = self.lowered(pos)
        vocab = self.model.cfg.vocab_padded
        if not 0 <= int(token) < vocab:
            raise ValueError(f"token {token} outside [0, {vocab})")
        prog = list(low.instrs)
        for i, base, stride in low.patches:
            prog[i] = _with(prog[i], dram=base + int(token) * stride)
        if len(prog) * INSTR_BYTES > self.prog_bytes and self.prog_bytes:
            raise CompileError(f"step {pos} program ({len(prog)} instructions) exceeds the "
                               f"{self.prog_bytes}-byte program region")
        return prog

    def program_bytes(self, token: int, pos: int = 0) -> bytes:
        return encode_program(self.program(token, pos))

    # ---------------------------------------------------------------- outputs and state
    def state_regions(self) -> list[tuple[int, int]]:
        """``(addr, nbytes)`` of the state a new sequence must find zeroed: the MMFree
        recurrent state. The GPT needs none: step ``pos`` writes KV row ``pos`` before reading
        rows ``0..pos``, and the rows up to ``ceil8(pos + 1)`` that the P.V GEMM also reads
        are multiplied by the zero padding of the probabilities, so stale rows of an earlier
        sequence never contribute."""
        return [self.out["state"]] if self.kind == "mmfree" else []

    def output_span(self) -> tuple[int, int]:
        """``(addr, nbytes)`` covering ``next``, ``logits8`` and ``logits_acc``."""
        lo = min(self.out[n][0] for n in ("next", "logits8", "logits_acc"))
        hi = max(self.out[n][0] + self.out[n][1] for n in ("next", "logits8", "logits_acc"))
        return lo, hi - lo

    def parse_output(self, raw: bytes, base: int) -> StepOutput:
        """Decode the bytes read from :meth:`output_span` (starting at ``base``)."""
        buf = np.frombuffer(raw, np.uint8)

        def get(name, dt):
            a, nb = self.out[name]
            return buf[a - base:a - base + nb].view(dt).copy()

        return StepOutput(int(get("next", "<i4")[0]), get("logits8", np.int8),
                          get("logits_acc", "<i4"))

    # ---------------------------------------------------------------- figures
    def figures(self, pos: int | None = None) -> dict[str, Any]:
        """Compile figures: instructions per step by opcode, DMA bytes, image bytes by
        category, scratchpad peaks, engines used."""
        low = self.lowered(self.max_pos if pos is None else pos)
        by_op: dict[str, int] = {}
        dma_in = dma_out = 0
        engines = set()
        for ins in low.instrs:
            by_op[ins.op.name] = by_op.get(ins.op.name, 0) + 1
            if ins.op in (Op.LOAD, Op.STORE):
                nb = ins.rows * ins.row_bytes
                if ins.op == Op.LOAD:
                    dma_in += nb
                else:
                    dma_out += nb
            if ins.op in GEMM_ENGINE:
                engines.add(GEMM_ENGINE[ins.op])
        data = dict(sorted(self.ctx.cats.items()))
        io = {k: v[1] for k, v in self.out.items()}
        return {
            "model": self.kind, "config": self.cfg.name, "config_hash": self.cfg.hash,
            "engines": sorted(engines), "instructions": len(low.instrs), "by_op": by_op,
            "dma_load_bytes": dma_in, "dma_store_bytes": dma_out,
            "program_bytes": self.prog_bytes, "data_bytes": data, "io_bytes": io,
            "image_bytes": self.image.top, "dev_mem_bytes": self.cfg.dev_mem_bytes,
            "spad_peak": low.stats["spad_peak"], "spad_bytes": self.cfg.spad_bytes,
            "acc_peak": low.stats["acc_peak"], "acc_bytes": self.cfg.acc_bytes,
            "plan": vars(low.plan) if hasattr(low.plan, "__dict__") else str(low.plan),
        }


def _with(ins: Instr, **changes: int) -> Instr:
    d = ins.as_dict()
    d.update(changes)
    return Instr.make(ins.op, **d)


def compile_model(model, cfg: AcceleratorConfig | str, engine="auto", *,
                  plan: Plan | None = None) -> CompiledModel:
    """Lower ``model`` (MMFreeInt or GPTInt) for ``cfg`` with the given engine choice.

    ``plan`` forces one set of tiling / scheduling knobs (default: the first of
    :func:`_plans` whose scratchpad allocation succeeds). Raises :class:`CompileError` when an
    engine is missing or the model does not fit.
    """
    if isinstance(cfg, str):
        from tritium.config import load_config

        cfg = load_config(cfg)
    if getattr(model, "kind", None) not in ("mmfree", "gpt"):
        raise CompileError(f"cannot compile {type(model).__name__}; expected MMFreeInt or "
                           "GPTInt (tritium.host.models.quantize.quantize_model)")
    try:
        return CompiledModel(model, cfg, engine, plan)
    except MemoryError as e:
        raise CompileError(f"{model.kind} does not fit the device memory of {cfg.name!r}: "
                           f"{e}") from None
