"""Held-out loss and perplexity of the shipped models, float (QAT) or integer.

``evaluate("mmfree", kind="int", n_chars=2048)`` decodes the held-out split token by token
with the integer model (:mod:`tritium.host.models.mmfree_int` / ``gpt_int``), which uses
only :mod:`tritium.numerics` ops, and returns ``(loss, perplexity)`` in nats per character.

Windows: the first ``n_chars`` characters of the held-out split (last 10 % of
tinyshakespeare, :func:`tritium.host.data.split`) are cut into non-overlapping windows of
``ctx + 1`` characters starting every ``ctx`` characters (``ctx`` = the model's training
context, 128); each window is run from a fresh state (zero recurrent state / empty KV cache)
and all ``ctx`` next-character predictions of a window are scored. So ``n_chars = 2048`` scores
2,048 predictions in 16 windows, deterministically. The float model runs each window as one
sequence (identical to token-by-token decoding, see the tests); the integer model decodes one
token at a time, as the device does.

The integer model's static scales are calibrated by
:func:`tritium.host.models.quantize.quantize_model` on :func:`calibration_tokens` (training
text).

Command line: ``python -m tritium.host.evaluate [--model mmfree|gpt|PATH] [--kind float|int]
[--n-chars N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from tritium.host import data
from tritium.host.models import checkpoint
from tritium.host.models.common import cross_entropy

__all__ = [
    "CHECKPOINT_DIR",
    "calibration_tokens",
    "evaluate",
    "load_float",
    "load_int",
    "main",
    "windows",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: Calibration set: this many windows of ctx+1 characters, evenly spaced over the train split.
CALIB_WINDOWS = 64


def windows(ids: np.ndarray, ctx: int, n_chars: int | None = None) -> np.ndarray:
    """Non-overlapping evaluation windows ``[n, ctx + 1]`` over ``ids[:n_chars + 1]``.

    Window ``i`` is ``ids[i*ctx : i*ctx + ctx + 1]``; ``n = n_chars // ctx`` (all full windows
    of ``ids`` when ``n_chars`` is None).
    """
    ids = np.asarray(ids)
    avail = (len(ids) - 1) // ctx
    n = avail if n_chars is None else n_chars // ctx
    if n < 1 or n > avail:
        raise ValueError(f"n_chars={n_chars} must give 1..{avail} windows of {ctx} characters")
    idx = np.arange(n)[:, None] * ctx + np.arange(ctx + 1)[None, :]
    return ids[idx]


def calibration_tokens(ctx: int, n_windows: int = CALIB_WINDOWS) -> np.ndarray:
    """``[n_windows, ctx + 1]`` windows evenly spaced over the train split (deterministic)."""
    ids = np.asarray(data.encoded_split("train"))
    starts = np.linspace(0, len(ids) - ctx - 2, n_windows).astype(np.int64)
    return ids[starts[:, None] + np.arange(ctx + 1)[None, :]]


def _resolve(model: str | Path) -> Path:
    p = Path(model)
    if p.suffix == ".npz" or p.exists():
        return p
    if str(model) in ("mmfree", "gpt"):
        return CHECKPOINT_DIR / f"{model}.npz"
    raise ValueError(f"model={model!r}; give mmfree, gpt or a checkpoint path")


@lru_cache(maxsize=8)
def _load_ckpt(path: str) -> checkpoint.Checkpoint:
    return checkpoint.load(path)


def load_float(model: str | Path, mode: str | None = None):
    """The NumPy float model (``MMFreeModel`` / ``GPTModel``) of a checkpoint."""
    from tritium.host.models import gpt, mmfree

    ck = _load_ckpt(str(_resolve(model)))
    if ck.kind == "mmfree":
        return mmfree.MMFreeModel(mmfree.MMFreeConfig.from_dict(ck.hparams), ck.params, mode)
    if ck.kind == "gpt":
        return gpt.GPTModel(gpt.GPTConfig.from_dict(ck.hparams), ck.params, mode)
    raise checkpoint.CheckpointError(f"unknown model kind {ck.kind!r}")


@lru_cache(maxsize=8)
def _load_int(path: str):
    from tritium.host.models.quantize import quantize_model

    ck = _load_ckpt(path)
    ctx = int(ck.hparams["ctx"])
    return quantize_model(ck, calibration_tokens(ctx))


def load_int(model: str | Path):
    """The integer model of a checkpoint (calibrated on :func:`calibration_tokens`)."""
    return _load_int(str(_resolve(model)))


def evaluate(model_name: str | Path, kind: str = "float", n_chars: int = 2048
             ) -> tuple[float, float]:
    """``(loss, perplexity)`` on the first ``n_chars`` held-out characters.

    Parameters
    ----------
    model_name : str or Path
        ``"mmfree"``, ``"gpt"`` (the shipped checkpoints) or a checkpoint path.
    kind : {"float", "int"}
        The float QAT model (NumPy reference) or the integer model (token-by-token decode).
    n_chars : int
        Predictions scored (a multiple of the context, 128, is exact).
    """
    if kind not in ("float", "int"):
        raise ValueError(f"kind={kind!r}; kind must be 'float' or 'int'")
    held = np.asarray(data.encoded_split("heldout"))
    if kind == "float":
        m = load_float(model_name)
        w = windows(held, m.cfg.ctx, n_chars)
        losses = [m.loss(w[i:i + 8]) * len(w[i:i + 8]) for i in range(0, len(w), 8)]
        loss = float(np.sum(losses) / len(w))
    else:
        im = load_int(model_name)
        w = windows(held, im.cfg.ctx, n_chars)
        logits = np.stack([im.decode_logits(row[:-1]) for row in w])
        loss = cross_entropy(logits, w[:, 1:])
    return loss, math.exp(loss)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tritium.host.evaluate",
                                 description="held-out loss of the shipped models")
    ap.add_argument("--model", action="append", default=None,
                    help="mmfree, gpt or a checkpoint path (repeatable; default both)")
    ap.add_argument("--kind", action="append", choices=["float", "int"], default=None)
    ap.add_argument("--n-chars", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for model in a.model or ["mmfree", "gpt"]:
        for kind in a.kind or ["float", "int"]:
            loss, ppl = evaluate(model, kind, a.n_chars)
            rows.append({"model": str(model), "kind": kind, "n_chars": a.n_chars,
                         "loss": round(loss, 5), "ppl": round(ppl, 4)})
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'model':10s} {'kind':6s} {'n_chars':>8s} {'loss':>8s} {'ppl':>8s}")
        for r in rows:
            print(f"{r['model']:10s} {r['kind']:6s} {r['n_chars']:8d} {r['loss']:8.4f} "
                  f"{r['ppl']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
