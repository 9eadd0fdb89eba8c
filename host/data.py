"""The training / evaluation corpus and the character-level tokenizer.

The corpus is Karpathy's *tinyshakespeare* (1,115,394 characters, 65 distinct symbols), shipped
as ``host/data/tinyshakespeare.txt`` and verified against :data:`CORPUS_SHA256` on every load.

Split (fixed, by character offset, no shuffling): the first 90 % of the characters,
``text[:split_at]`` with ``split_at = int(0.9 * len(text)) = 1,003,854``, is the *train* split;
the last 10 %, ``text[split_at:]`` (111,540 characters), is the *held-out* split. Everything that
reports a held-out loss (``train.py``, ``evaluate.py``, the tests) reads the same slice.

The tokenizer maps each of the corpus's sorted unique characters to its index (``"\\n"`` -> 0,
``" "`` -> 1, ... ``"z"`` -> 64). Models pad the vocabulary to a multiple of 8 rows
(:data:`VOCAB_PADDED`) so that device DMA rows stay aligned; the padding ids are never produced
by :meth:`CharTokenizer.encode`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CORPUS_PATH",
    "CORPUS_SHA256",
    "VOCAB_PADDED",
    "CharTokenizer",
    "DataError",
    "encoded_split",
    "load_corpus",
    "split",
    "tokenizer",
]

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
#: sha256 of the UTF-8 bytes of the corpus.
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: Fraction of the corpus (by character offset) that is the train split.
TRAIN_FRACTION = 0.9
#: Vocabulary size after padding to a multiple of 8 (65 symbols -> 72 rows).
VOCAB_PADDED = 72


class DataError(ValueError):
    """The corpus is missing or corrupt, or text holds characters outside the vocabulary."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=4)
def load_corpus(path: str | Path | None = None, sha256: str | None = CORPUS_SHA256) -> str:
    """The corpus text, after checking its sha256.

    Parameters
    ----------
    path : str or Path, optional
        Defaults to :data:`CORPUS_PATH`.
    sha256 : str or None
        Expected digest; ``None`` skips the check (for other corpora).

    Raises
    ------
    DataError
        The file is missing or its digest differs.
    """
    p = Path(path) if path is not None else CORPUS_PATH
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"corpus {p} not found; reinstall tritium or pass path=") from None
    if sha256 is not None:
        got = _sha256(raw)
        if got != sha256:
            raise DataError(
                f"corpus {p} has sha256 {got}, expected {sha256}; the file is corrupt or a "
                "different corpus: restore host/data/tinyshakespeare.txt"
            )
    return raw.decode("utf-8")


def split(text: str | None = None) -> tuple[str, str]:
    """``(train, heldout)``: the first 90 % and the last 10 % of ``text`` by character offset."""
    text = load_corpus() if text is None else text
    n = int(TRAIN_FRACTION * len(text))
    return text[:n], text[n:]


class CharTokenizer:
    """Character-level tokenizer: id = index of the character in the sorted vocabulary.

    Parameters
    ----------
    vocab : str or sequence of str
        The symbols, one character each, in id order (no repeats).

    Examples
    --------
    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.encode("hole").tolist()
    [1, 3, 2, 0]
    >>> tok.decode([1, 0, 2, 2, 3])
    'hello'
    """

    def __init__(self, vocab: str | Sequence[str]):
        chars = list(vocab)
        if not chars or any(len(c) != 1 for c in chars):
            raise DataError("vocab must be a non-empty sequence of single characters")
        if len(set(chars)) != len(chars):
            raise DataError("vocab must not repeat a character")
        self.vocab = "".join(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = the sorted unique characters of ``text``."""
        return cls(sorted(set(text)))

    @property
    def size(self) -> int:
        """Number of symbols (65 for tinyshakespeare)."""
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """int64 ids of the characters of ``text``.

        Raises
        ------
        DataError
            ``text`` holds a character outside the vocabulary (the message names it and its
            position).
        """
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            ch = e.args[0]
            pos = text.index(ch)
            raise DataError(
                f"character {ch!r} at position {pos} is not in the {self.size}-symbol vocabulary "
                f"{self.vocab!r}; remove or replace it"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; raises :class:`DataError` on an id outside ``[0, size)``."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.size:
                raise DataError(f"token id {i} is outside [0, {self.size}) (padding or corrupt)")
            out.append(self.vocab[i])
        return "".join(out)


def tokenizer() -> CharTokenizer:
    """The tokenizer of the shipped corpus (65 symbols)."""
    return CharTokenizer.from_text(load_corpus())


@lru_cache(maxsize=2)
def _encoded(which: str) -> np.ndarray:
    train, held = split()
    ids = tokenizer().encode(train if which == "train" else held)
    ids.setflags(write=False)
    return ids


def encoded_split(which: str) -> np.ndarray:
    """Read-only int64 token ids of the ``"train"`` or ``"heldout"`` split."""
    if which not in ("train", "heldout"):
        raise DataError(f"split={which!r}; split must be 'train' or 'heldout'")
    return _encoded(which)
