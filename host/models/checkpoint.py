"""Checkpoint files: one ``.npz`` of float32 arrays, a JSON header and a sha256 checksum.

Layout of the ``.npz`` (NumPy's zip of ``.npy`` members, written uncompressed so that the bytes
are deterministic):

``__header__``
    uint8 array: the UTF-8 bytes of a JSON object (sorted keys) with at least ``format``
    (:data:`FORMAT`), ``kind`` (``"mmfree"`` or ``"gpt"``), ``hparams`` (the model's
    hyperparameters), ``vocab`` (the tokenizer's symbols in id order), ``data_sha256`` (of the
    training corpus), ``command`` (the training command line) and ``heldout_loss`` (float QAT
    model, nats per character).
``__sha256__``
    uint8 array: the 64 ASCII hex digits of :func:`digest` over the header and all parameters.
every other member
    one float32 parameter array, named like ``layers.0.mixer.i_proj.weight``.

:func:`load` recomputes the digest and raises :class:`CheckpointError` when it differs (a
corrupt or hand-edited file), so a model never runs on silently damaged weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "digest", "load", "save"]

#: Value of the header's ``format`` field.
FORMAT = "tritium-checkpoint-v1"
_HEADER = "__header__"
_SHA = "__sha256__"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, incomplete, or fails its checksum."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the JSON header and the float32 parameters by name."""

    header: dict[str, Any]
    params: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.header["hparams"]


def _header_bytes(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def digest(header: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> str:
    """sha256 over the canonical header JSON and every parameter (name, shape, float32 bytes,
    in sorted name order)."""
    h = hashlib.sha256()
    hb = _header_bytes(header)
    h.update(len(hb).to_bytes(8, "little") + hb)
    for name in sorted(params):
        a = np.array(params[name], dtype="<f4", order="C")
        meta = json.dumps([name, list(a.shape)]).encode()
        h.update(len(meta).to_bytes(8, "little") + meta)
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: str | Path, header: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> str:
    """Write a checkpoint; returns its digest.

    ``params`` values are converted to float32; names must not start with ``__``.
    """
    header = dict(header)
    header.setdefault("format", FORMAT)
    for key in ("kind", "hparams"):
        if key not in header:
            raise CheckpointError(f"header lacks {key!r}; a checkpoint needs kind and hparams")
    arrays: dict[str, np.ndarray] = {}
    for name, a in params.items():
        if name.startswith("__"):
            raise CheckpointError(f"parameter name {name!r} may not start with '__'")
        arrays[name] = np.array(a, dtype=np.float32, order="C")
    d = digest(header, arrays)
    members = {
        _HEADER: np.frombuffer(_header_bytes(header), dtype=np.uint8),
        _SHA: np.frombuffer(d.encode("ascii"), dtype=np.uint8),
        **arrays,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **members)
    path.write_bytes(buf.getvalue())
    return d


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint and verify its checksum.

    Raises
    ------
    CheckpointError
        The file is missing, not an ``.npz``, lacks the header or checksum, or its contents do
        not match the stored sha256.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            members = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable .npz ({e})") from None
    for key in (_HEADER, _SHA):
        if key not in members:
            raise CheckpointError(f"checkpoint {path} lacks {key}; not a tritium checkpoint")
    try:
        header = json.loads(members.pop(_HEADER).tobytes().decode("utf-8"))
        stored = members.pop(_SHA).tobytes().decode("ascii")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt header ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {header.get('format')!r}, expected {FORMAT!r}"
        )
    params = {k: np.asarray(v, dtype=np.float32) for k, v in members.items()}
    got = digest(header, params)
    if got != stored:
        raise CheckpointError(
            f"checkpoint {path} fails its checksum (stored sha256 {stored[:16]}..., contents "
            f"{got[:16]}...): the file is corrupt or was modified; re-download or retrain it"
        )
    return Checkpoint(header=header, params=params)
