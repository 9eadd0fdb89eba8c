"""Runtime: a compiled model on a :class:`~tritium.host.device.Device`, token by token.

:class:`Runtime` loads the image once (the device's CONFIG_HASH must match the image's
config), then each :meth:`Runtime.step` writes the program of ``(token, pos)``
(:meth:`CompiledModel.program`), runs it, and reads the output region back. Only the 16-byte
instruction words that differ from the program already in device memory are written (runs of
consecutive changed words become one memory write): for the MatMul-free model that is the one
embedding LOAD per token; for the GPT also the KV-cache row addresses and the attention-length
fields of the position.

A new sequence (:meth:`Runtime.reset`) zeroes the recurrent state / KV cache. The GPT's
context is ``ctx`` positions; :meth:`Runtime.step` raises past it (the generator re-windows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tritium.isa import INSTR_BYTES

from .device import Device, RunResult

__all__ = ["Runtime", "StepResult"]


@dataclass
class StepResult:
    """One decode step: ``next`` (device argmax), ``logits8`` / ``logits_acc`` (int8 / int32
    ``[Vp]``), the :class:`RunResult`, and the program bytes written."""

    next: int
    logits8: np.ndarray
    logits_acc: np.ndarray
    run: RunResult
    written: int = 0


@dataclass
class RuntimeStats:
    steps: int = 0
    instret: int = 0
    cycles: int | None = 0
    device_s: float = 0.0
    program_bytes_written: int = 0
    per_step_instret: list = field(default_factory=list)


class Runtime:
    """Runs a :class:`~tritium.firmware.compiler.CompiledModel` on a device."""

    def __init__(self, device: Device, compiled, *, load: bool = True):
        self.device, self.compiled = device, compiled
        self.stats = RuntimeStats()
        if load:
            device.load(compiled)
        else:
            device.check_config(compiled.cfg, "the compiled model")
        self._prog = bytearray(compiled.program_bytes(0, 0))
        self.pos = 0
        self._out = compiled.output_span()

    @property
    def ctx(self) -> int | None:
        """Positions a sequence may have (GPT: the context; MMFree: unbounded)."""
        m = self.compiled.model
        return m.cfg.ctx if m.kind == "gpt" else None

    def reset(self) -> None:
        """Start a new sequence: zero the recurrent state / KV cache."""
        for addr, n in self.compiled.state_regions():
            self.device.write_mem(addr, bytes(n))
        self.pos = 0

    def _write_program(self, prog: bytes) -> int:
        base = self.compiled.prog_base
        old = self._prog
        if len(prog) > len(old):
            old.extend(bytes(len(prog) - len(old)))
        w = INSTR_BYTES
        a = np.frombuffer(bytes(old[:len(prog)]), np.uint8).reshape(-1, w)
        b = np.frombuffer(prog, np.uint8).reshape(-1, w)
        diff = np.flatnonzero((a != b).any(axis=1))
        written = 0
        i = 0
        while i < len(diff):
            j = i
            while j + 1 < len(diff) and diff[j + 1] == diff[j] + 1:
                j += 1
            lo, hi = diff[i] * w, (diff[j] + 1) * w
            self.device.write_mem(base + lo, prog[lo:hi])
            old[lo:hi] = prog[lo:hi]
            written += hi - lo
            i = j + 1
        return written

    def step(self, token: int) -> StepResult:
        """Decode ``token`` at the current position; returns the device's outputs."""
        ctx = self.ctx
        if ctx is not None and self.pos >= ctx:
            raise ValueError(f"position {self.pos} is past the context of {ctx}; reset() and "
                             "feed a shorter window")
        prog = self.compiled.program_bytes(int(token), self.pos)
        written = self._write_program(prog)
        t0 = time.perf_counter()
        res = self.device.run(self.compiled.prog_base)
        self.stats.device_s += time.perf_counter() - t0
        raw = self.device.read_mem(*self._out)
        out = self.compiled.parse_output(raw, self._out[0])
        self.pos += 1
        s = self.stats
        s.steps += 1
        s.instret += res.instret
        s.per_step_instret.append(res.instret)
        s.program_bytes_written += written
        if res.cycles is None:
            s.cycles = None
        elif s.cycles is not None:
            s.cycles += res.cycles
        return StepResult(out.next, out.logits8, out.logits_acc, res, written)

    def float_logits(self, r: StepResult) -> np.ndarray:
        """Float logits ``[vocab]`` of a step: ``logits_acc * logit_scale`` (as the integer
        models' ``decode_logits``)."""
        m = self.compiled.model
        v = m.cfg.vocab
        scale = np.asarray(m.logit_scale, np.float64)
        scale = scale[:v] if scale.ndim else scale
        return r.logits_acc[:v].astype(np.float64) * scale

    def decode_logits(self, tokens) -> np.ndarray:
        """Float logits ``[T, vocab]`` decoding ``tokens`` from a fresh sequence (the device
        counterpart of ``MMFreeInt.decode_logits`` / ``GPTInt.decode_logits``)."""
        self.reset()
        return np.stack([self.float_logits(self.step(int(t))) for t in np.asarray(tokens)])
