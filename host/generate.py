"""Text generation and held-out evaluation on a device (golden, sim or board).

:func:`generate` feeds the prompt through the device one token at a time (each a full decode
step: the state / KV cache advance), then samples: greedy (``temperature = 0``) takes the
device's own ``VARGMAX``; otherwise the host samples from ``softmax(logits / T)`` with the
float logits ``logits_acc * logit_scale`` read back from the device. The GPT attends over at
most ``ctx`` positions: when the context is full the sequence restarts from its last ``ctx //
2`` tokens (re-fed through the device).

:func:`evaluate_device` decodes held-out windows (:func:`tritium.host.evaluate.windows`)
token by token on the device and returns the loss; the logits are the integer reference's
bit for bit (the same integers), which it checks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .device import Device
from .runtime import Runtime

__all__ = [
    "DEFAULT_CONFIG",
    "GenerateResult",
    "Progress",
    "compile_for",
    "evaluate_device",
    "generate",
]

#: Preset each shipped model is sized for.
DEFAULT_CONFIG = {"mmfree": "tiny", "gpt": "base"}


class Progress:
    """A one-line progress meter on stderr (only when it is a terminal or ``force``)."""

    def __init__(self, total: int, what: str, *, enabled: bool | None = None):
        self.total, self.what = total, what
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.n = 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.enabled:
            dt = time.perf_counter() - self.t0
            rate = self.n / dt if dt > 0 else 0.0
            eta = (self.total - self.n) / rate if rate else 0.0
            print(f"\r{self.what}: {self.n}/{self.total} ({rate:.1f}/s, eta {eta:.0f} s)   ",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def _model_kind(model: str | Path) -> str:
    from .evaluate import _load_ckpt, _resolve

    return _load_ckpt(str(_resolve(model))).kind


def compile_for(model: str | Path, config=None, engine="auto"):
    """Quantize (cached) and compile a shipped model or checkpoint for ``config`` (default:
    the preset the model is sized for). Returns a :class:`CompiledModel`."""
    from tritium.firmware.compiler import compile_model

    from tritium.config import load_config

    from .evaluate import load_int

    kind = _model_kind(model)
    cfg = load_config(config or DEFAULT_CONFIG[kind])
    return compile_model(load_int(model), cfg, engine)


@dataclass
class GenerateResult:
    """Generated text and throughput figures (``cycles`` is None on the golden device)."""

    prompt: str
    text: str
    steps: int
    wall_s: float
    instret: int
    cycles: int | None
    per_step: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def instret_per_token(self) -> float:
        return self.instret / max(1, self.steps)

    @property
    def cycles_per_token(self) -> float | None:
        return None if self.cycles is None else self.cycles / max(1, self.steps)


def _sample(rt: Runtime, r, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(r.next)
    z = rt.float_logits(r) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(len(p), p=p))


def generate(rt: Runtime, prompt: str, n: int, *, temperature: float = 0.0,
             seed: int | None = None, tokenizer=None,
             on_text: Callable[[str], None] | None = None) -> GenerateResult:
    """Feed ``prompt`` then generate ``n`` characters on ``rt``'s device.

    ``on_text`` is called with each generated character as soon as it is known (streaming).
    """
    from . import data

    tok = tokenizer or data.tokenizer()
    ids = [int(i) for i in tok.encode(prompt or "\n")]
    rng = np.random.default_rng(seed)
    rt.reset()
    history: list[int] = []
    steps0, instret0 = rt.stats.steps, rt.stats.instret
    cycles0 = rt.stats.cycles
    per_step = []
    out_chars = []
    t0 = time.perf_counter()

    def feed(token: int):
        if rt.ctx is not None and rt.pos >= rt.ctx:
            keep = history[-(rt.ctx // 2):]
            rt.reset()
            for t in keep[:-1]:
                rt.step(t)
            r = rt.step(keep[-1])
        else:
            r = rt.step(token)
        per_step.append(r.run.cycles if r.run.cycles is not None else r.run.instret)
        return r

    r = None
    for t in ids:
        history.append(t)
        r = feed(t)
    for _ in range(n):
        nxt = _sample(rt, r, temperature, rng)
        ch = tok.decode([nxt]) if nxt < tok.size else "?"
        out_chars.append(ch)
        if on_text is not None:
            on_text(ch)
        history.append(nxt)
        r = feed(nxt)
    wall = time.perf_counter() - t0
    cycles = None if (rt.stats.cycles is None or cycles0 is None) else rt.stats.cycles - cycles0
    return GenerateResult(prompt, "".join(out_chars), rt.stats.steps - steps0, wall,
                          rt.stats.instret - instret0, cycles, per_step)


def evaluate_device(rt: Runtime, model: str | Path, n_chars: int = 2048, *,
                    check_reference: bool = True, progress: bool | None = None) -> dict:
    """Held-out loss of the compiled model on ``rt``'s device.

    Returns ``{"loss", "ppl", "n_chars", "windows", "exact", "ref_loss"}``; ``exact`` says
    whether every logit equals the NumPy integer reference's (``decode_logits``) bit for bit,
    ``ref_loss`` is that reference's loss (both only when ``check_reference``).
    """
    from . import data
    from .evaluate import load_int, windows
    from .models.common import cross_entropy

    im = load_int(model)
    held = np.asarray(data.encoded_split("heldout"))
    w = windows(held, im.cfg.ctx, n_chars)
    logits, refs = [], []
    exact = True
    bar = Progress(len(w) * (w.shape[1] - 1), f"{rt.device.transport.name} decode",
                   enabled=progress)
    for row in w:
        rt.reset()
        lw = []
        for t in row[:-1]:
            lw.append(rt.float_logits(rt.step(int(t))))
            bar.update()
        lw = np.stack(lw)
        if check_reference:
            ref = im.decode_logits(row[:-1])
            refs.append(ref)
            exact &= bool(np.array_equal(ref, lw))
        logits.append(lw)
    bar.close()
    loss = cross_entropy(np.stack(logits), w[:, 1:])
    out = {"loss": loss, "ppl": math.exp(loss), "n_chars": int(w.size - len(w)),
           "windows": len(w), "exact": exact if check_reference else None}
    if check_reference:
        out["ref_loss"] = cross_entropy(np.stack(refs), w[:, 1:])
    return out


def open_runtime(model: str | Path, device: str = "golden", *, config=None, engine="auto",
                 **transport_kw) -> Runtime:
    """Compile ``model`` and open a :class:`Runtime` on ``device`` (image loaded)."""
    cm = compile_for(model, config, engine)
    dev = Device.open(device, cm.cfg, **transport_kw)
    try:
        return Runtime(dev, cm)
    except BaseException:
        dev.close()
        raise
