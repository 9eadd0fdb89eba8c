"""Train the reference models with quantization-aware training (PyTorch; extra ``train``).

Usage::

    python -m tritium.host.train --model mmfree --steps 3000 --out host/checkpoints --seed 0
    python -m tritium.host.train --model gpt    --steps 4000 --out host/checkpoints --seed 0

The network is the NumPy reference itself (:mod:`tritium.host.models.mmfree` /
:mod:`~tritium.host.models.gpt`) run on :class:`TorchBackend`, a PyTorch implementation of
the :class:`~tritium.host.models.common.NumpyBackend` interface. Fake quantization sits at
exactly the points where the integer models hold int8 tensors with static scales (straight-
through estimator); the static ranges are exponential moving averages of per-step maxima and
are saved in the checkpoint as ``range.<point>``. BitLinear's ternary weights and per-token
absmax activations and the GPT's int8 per-channel weights are quantized in every step.

Data: random windows of ``ctx + 1`` characters from the train split (first 90 % of
tinyshakespeare, :mod:`tritium.host.data`). At the end the held-out loss (nats/char) of the
float QAT model is measured on the windows :func:`tritium.host.evaluate.windows` uses (the
whole held-out split and the fixed ``--eval-chars`` slice), and ``<out>/<model>.npz`` is
written (:mod:`tritium.host.models.checkpoint`).

``torch`` is imported only inside the functions of this module, so the rest of tritium (and
CI) never needs it.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tritium.host import data
from tritium.host.models import checkpoint, gpt, mmfree
from tritium.host.models.common import RANGE_PREFIX, NumpyBackend

__all__ = ["DEFAULTS", "TorchBackend", "main", "train"]

#: Per-model defaults: config overrides, batch size, learning rate.
DEFAULTS: dict[str, dict[str, Any]] = {
    "mmfree": {"cfg": {}, "batch": 64, "lr": 3e-3, "wd": 0.01},
    "gpt": {"cfg": {}, "batch": 64, "lr": 2e-3, "wd": 0.05},
}


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "training needs PyTorch: pip install 'tritium[train]' (or pip install torch)"
        ) from None
    return torch


def TorchBackend(mode: str = "train", device: str = "cpu", decay: float = 0.99):
    """A :class:`NumpyBackend` whose primitives are PyTorch ops (built lazily so that
    importing this module does not import torch).

    ``mode="train"``: each quantization point's range is an EMA (``decay``) of its per-step
    maximum ``|x|``; call ``commit()`` after every optimizer step. ``"apply"`` uses fixed
    ranges; ``"float"`` disables static quantization.
    """
    torch = _torch()
    F = torch.nn.functional

    class _GateScan(torch.autograd.Function):
        """The MLGRU recurrence as one autograd node: a forward loop without graph building
        and a hand-written backward (straight-through through the per-step rounding):
        ``G_t = dL/dh_t`` (total), ``df_t = G_t (h_{t-1} - c_t)``, ``dc_t = G_t (1 - f_t)``,
        ``G_{t-1} += f_t G_t``."""

        @staticmethod
        def forward(ctx, f, c, h0, s):
            shape = torch.broadcast_shapes(f.shape, c.shape)
            out = torch.empty(shape, dtype=c.dtype, device=c.device)
            h = h0
            for t in range(shape[-2]):
                v = torch.lerp(c[..., t, :], h, f[..., t, :])  # f*h + (1-f)*c
                if s is not None:
                    v = torch.floor(v / s + 0.5).clamp_(-128, 127) * s
                out[..., t, :] = v
                h = v
            ctx.save_for_backward(f, c, h0, out)
            return out

        @staticmethod
        def backward(ctx, gout):
            f, c, h0, out = ctx.saved_tensors
            G = torch.empty_like(gout)
            g = torch.zeros_like(gout[..., 0, :])
            for t in range(gout.shape[-2] - 1, -1, -1):
                g = gout[..., t, :] + g
                G[..., t, :] = g
                g = g * f[..., t, :]
            hprev = torch.cat([h0.expand_as(out[..., :1, :].squeeze(-2)).unsqueeze(-2),
                               out[..., :-1, :]], dim=-2)
            df = G * (hprev - c) if ctx.needs_input_grad[0] else None
            dc = G * (1 - f) if ctx.needs_input_grad[1] else None
            dh0 = g if ctx.needs_input_grad[2] else None
            return df, dc, dh0, None

    class _TorchBackend(NumpyBackend):
        xp = torch

        def __init__(self):
            self.mode = mode
            self.device = torch.device(device)
            self.ranges: dict[str, Any] = {}
            self.pending: dict[str, Any] = {}
            self.decay = decay

        def asarray(self, a):
            return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)

        @staticmethod
        def round(x):
            return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)

        @staticmethod
        def round_even(x):
            return torch.round(x)

        @staticmethod
        def floor(x):
            return torch.floor(x)

        @staticmethod
        def clip(x, lo, hi):
            return torch.clamp(x, lo, hi)

        @staticmethod
        def abs(x):
            return torch.abs(x)

        @staticmethod
        def sqrt(x):
            return torch.sqrt(x)

        @staticmethod
        def amax(x):
            return x.amax(dim=-1, keepdim=True)

        @staticmethod
        def mean(x):
            return x.mean(dim=-1, keepdim=True)

        @staticmethod
        def maximum(x, c):
            if isinstance(x, torch.Tensor):
                return torch.clamp(x, min=c) if not isinstance(c, torch.Tensor) \
                    else torch.maximum(x, c)
            return max(x, c)

        @staticmethod
        def sigmoid(x):
            return torch.sigmoid(x)

        @staticmethod
        def silu(x):
            return F.silu(x)

        @staticmethod
        def gelu(x):
            return F.gelu(x)

        @staticmethod
        def softmax(x):
            return torch.softmax(x, dim=-1)

        @staticmethod
        def causal_mask(scores):
            t, s = scores.shape[-2:]
            keep = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
            return scores.masked_fill(~keep, float("-inf"))

        @staticmethod
        def matmul(a, b):
            return a @ b

        @staticmethod
        def stack(xs, axis):
            return torch.stack(list(xs), dim=axis)

        @staticmethod
        def concat(xs, axis):
            return torch.cat(list(xs), dim=axis)

        def zeros(self, shape, like=None):
            return torch.zeros(shape, device=self.device)

        @staticmethod
        def ste(x, q):
            return x + (q - x).detach()

        @staticmethod
        def detach(x):
            return x.detach() if isinstance(x, torch.Tensor) else x

        def gate_scan(self, f, c, h, s=None):
            out = _GateScan.apply(f, c, h, s)
            return out, out[..., -1, :]

        def observe(self, name, x):
            if self.mode not in ("train", "calibrate"):
                return
            bm = x.detach().abs().amax().float()
            if self.mode == "calibrate":
                old = self.ranges.get(name)
                self.ranges[name] = bm if old is None else torch.maximum(old, bm)
                return
            if name not in self.ranges:
                self.ranges[name] = bm
            old = self.pending.get(name)
            self.pending[name] = bm if old is None else torch.maximum(old, bm)

        def commit(self):
            """Fold this step's maxima into the EMA ranges."""
            with torch.no_grad():
                for name, bm in self.pending.items():
                    self.ranges[name] = self.decay * self.ranges[name] + (1 - self.decay) * bm
            self.pending.clear()

    return _TorchBackend()


def _windows_tensor(torch, ids: np.ndarray, ctx: int, n_chars: int | None, device):
    """Non-overlapping evaluation windows (see :func:`tritium.host.evaluate.windows`)."""
    from tritium.host.evaluate import windows

    return torch.as_tensor(windows(ids, ctx, n_chars), dtype=torch.long, device=device)


def _model_module(kind: str):
    if kind == "mmfree":
        return mmfree, mmfree.MMFreeConfig
    if kind == "gpt":
        return gpt, gpt.GPTConfig
    raise SystemExit(f"--model {kind!r}; choose mmfree or gpt")


def _logits(mod, B, P, cfg, x):
    out = mod.forward(B, P, cfg, x)
    return out[0] if isinstance(out, tuple) else out


def evaluate_torch(mod, B, P, cfg, wins, batch: int = 256) -> float:
    """Mean held-out NLL (nats/char) over ``wins [n, ctx+1]`` in the backend's current mode."""
    torch = _torch()
    F = torch.nn.functional
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, wins.shape[0], batch):
            w = wins[i:i + batch]
            logits = _logits(mod, B, P, cfg, w[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                   w[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += w[:, 1:].numel()
    return total / count


def train(kind: str, steps: int, out: str | Path, seed: int = 0, batch: int | None = None,
          lr: float | None = None, device: str = "auto", eval_chars: int = 2048,
          time_limit: float | None = None, log_every: int = 100,
          command: str | None = None) -> Path:
    """Train one model with QAT and write ``<out>/<kind>.npz``; returns its path."""
    torch = _torch()
    F = torch.nn.functional
    mod, Cfg = _model_module(kind)
    d = DEFAULTS[kind]
    cfg = Cfg(**d["cfg"])
    batch = batch or d["batch"]
    lr = lr or d["lr"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    init = mod.init_params(cfg, seed)
    params = {k: torch.nn.Parameter(torch.as_tensor(v, device=device)) for k, v in init.items()}
    decay, no_decay = [], []
    for k, p in params.items():
        (decay if p.ndim == 2 and "emb" not in k else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": d["wd"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warm = max(1, min(200, steps // 10))

    def lr_at(i):
        if i < warm:
            return lr * (i + 1) / warm
        t = (i - warm) / max(1, steps - warm)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    train_ids = torch.as_tensor(np.array(data.encoded_split("train")), dtype=torch.long)
    held_ids = np.asarray(data.encoded_split("heldout"))
    B = TorchBackend("train", device)
    span = torch.arange(cfg.ctx + 1)
    t0 = time.time()
    done = 0
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        starts = torch.randint(0, train_ids.numel() - cfg.ctx - 1, (batch,), generator=gen)
        w = train_ids[starts[:, None] + span].to(device)
        logits = _logits(mod, B, params, cfg, w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        B.commit()
        done = i + 1
        if log_every and (i % log_every == 0 or i == steps - 1):
            print(f"[{kind}] step {i:5d} loss {loss.item():.4f} lr {lr_at(i):.2e} "
                  f"{time.time() - t0:6.1f}s", flush=True)
        if time_limit is not None and time.time() - t0 > time_limit:
            print(f"[{kind}] time limit {time_limit}s reached after {done} steps", flush=True)
            break
    train_s = time.time() - t0

    B.mode = "apply"
    held_full = evaluate_torch(mod, B, params, cfg, _windows_tensor(torch, held_ids, cfg.ctx,
                                                                    None, device))
    held_slice = evaluate_torch(mod, B, params, cfg, _windows_tensor(torch, held_ids, cfg.ctx,
                                                                     eval_chars, device))
    B.mode = "float"
    held_float = evaluate_torch(mod, B, params, cfg, _windows_tensor(torch, held_ids, cfg.ctx,
                                                                     None, device))
    print(f"[{kind}] held-out loss (float QAT model): {held_full:.4f} nats/char "
          f"(ppl {math.exp(held_full):.3f}); first {eval_chars} chars: {held_slice:.4f}; "
          f"without static fake-quant: {held_float:.4f}", flush=True)

    out_params = {k: p.detach().cpu().numpy().astype(np.float32) for k, p in params.items()}
    for name, r in B.ranges.items():
        out_params[RANGE_PREFIX + name] = np.asarray(float(r), np.float32)
    header = {
        "kind": kind,
        "hparams": cfg.to_dict(),
        "vocab": data.tokenizer().vocab,
        "data_sha256": data.CORPUS_SHA256,
        "command": command or "",
        "heldout_loss": held_full,
        "heldout_loss_slice": {"n_chars": eval_chars, "loss": held_slice},
        "heldout_loss_no_static_quant": held_float,
        "train": {"steps": done, "steps_requested": steps, "batch": batch, "lr": lr,
                  "weight_decay": d["wd"], "seed": seed, "seconds": round(train_s, 1),
                  "device": torch.cuda.get_device_name() if device == "cuda" else device,
                  "torch": torch.__version__, "final_train_loss": loss.item()},
    }
    path = Path(out) / f"{kind}.npz"
    digest = checkpoint.save(path, header, out_params)
    print(f"[{kind}] wrote {path} ({path.stat().st_size} bytes, sha256 {digest[:16]}...)")
    print(json.dumps({"model": kind, "heldout_loss": held_full, "steps": done,
                      "seconds": round(train_s, 1)}))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m tritium.host.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=["mmfree", "gpt"])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory (writes <model>.npz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--eval-chars", type=int, default=2048)
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop early after this many seconds of training (safety net)")
    ap.add_argument("--log-every", type=int, default=100)
    a = ap.parse_args(argv)
    command = "python -m tritium.host.train " + " ".join(shlex.quote(x) for x in argv)
    train(a.model, a.steps, a.out, a.seed, a.batch, a.lr, a.device, a.eval_chars,
          a.time_limit, a.log_every, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
