"""``quantize_model``: float checkpoint + calibration text -> integer model.

The static scale of every quantization point (see :mod:`tritium.host.models.common`) is
``range / 127``. :func:`calibrate` runs the NumPy float model with static quantization off
over calibration windows of training text and records, per point, the largest ``|x|``
(post-training max calibration). :func:`quantize_model` then builds
:class:`~tritium.host.models.mmfree_int.MMFreeInt` or
:class:`~tritium.host.models.gpt_int.GPTInt` from the float weights and those ranges.

By default (``use_qat_ranges=True``) the ranges the QAT run calibrated on training text
(the EMA of per-step maxima over the training batches, stored in the checkpoint as
``range.<point>``) take precedence: the network was trained with exactly those clipping ranges,
so the integer model is the counterpart of the float QAT model (held-out loss within a fraction
of a percent). Max calibration after training (``use_qat_ranges=False``, plain post-training
quantization) gives ranges 1-3x larger at the product points (rare outliers in 8k tokens) and a
few percent worse loss; its ranges still fill any point a checkpoint lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import gpt, gpt_int, mmfree, mmfree_int
from .checkpoint import Checkpoint
from .common import RANGE_PREFIX, NumpyBackend, ranges_from_params

__all__ = ["calibrate", "quantize_model"]


def _split(ck_or_params: Any, kind: str | None, hparams: Mapping[str, Any] | None):
    if isinstance(ck_or_params, Checkpoint):
        return ck_or_params.kind, ck_or_params.hparams, ck_or_params.params
    if kind is None or hparams is None:
        raise ValueError("pass a Checkpoint, or params with kind= and hparams=")
    return kind, hparams, ck_or_params


def calibrate(kind: str, cfg, params: Mapping[str, np.ndarray], calib_tokens: np.ndarray
              ) -> dict[str, float]:
    """Max-|x| ranges of every quantization point over ``calib_tokens [n, ctx(+1)]``."""
    B = NumpyBackend("calibrate")
    P = {k: np.asarray(v, np.float64) for k, v in params.items() if not k.startswith(RANGE_PREFIX)}
    toks = np.atleast_2d(np.asarray(calib_tokens))[:, : cfg.ctx]
    mod = mmfree if kind == "mmfree" else gpt
    for i in range(0, toks.shape[0], 16):
        mod.forward(B, P, cfg, toks[i:i + 16])
    return dict(B.ranges)


def quantize_model(float_params: Checkpoint | Mapping[str, np.ndarray],
                   calib_tokens: np.ndarray, kind: str | None = None,
                   hparams: Mapping[str, Any] | None = None, use_qat_ranges: bool = True):
    """Integer model of a float model.

    Parameters
    ----------
    float_params : Checkpoint or mapping
        A loaded checkpoint, or float parameters (then give ``kind`` and ``hparams``).
    calib_tokens : int array [n, T]
        Calibration windows of training text (e.g.
        :func:`tritium.host.evaluate.calibration_tokens`).
    use_qat_ranges : bool
        Prefer the checkpoint's QAT ranges over the post-training calibrated ones (default).

    Returns
    -------
    MMFreeInt or GPTInt
    """
    kind, hparams, params = _split(float_params, kind, hparams)
    if kind == "mmfree":
        cfg, build = mmfree.MMFreeConfig.from_dict(hparams), mmfree_int.quantize
    elif kind == "gpt":
        cfg, build = gpt.GPTConfig.from_dict(hparams), gpt_int.quantize
    else:
        raise ValueError(f"kind={kind!r}; kind must be 'mmfree' or 'gpt'")
    ranges = calibrate(kind, cfg, params, calib_tokens)
    if use_qat_ranges:
        ranges.update(ranges_from_params(params))
    weights = {k: v for k, v in params.items() if not k.startswith(RANGE_PREFIX)}
    return build(cfg, weights, ranges)
