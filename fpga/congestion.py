"""Where nextpnr's router is congested: its router2 heatmaps summarised by design block and by
region of the die.

``nextpnr --router2-heatmap PREFIX`` writes, after every router iteration ``i``,
``PREFIX_congestion_by_net_i.csv`` (``net,overuse``: the overuse of the wires each net holds),
``PREFIX_congestion_by_coordinate_i.csv`` (one line per tile column X, one value per row Y:
the overuse of the wires at that tile), ``PREFIX_congestion_by_wiretype_i.csv`` and
``PREFIX_utilisation_by_wiretype_i.csv``. A build that does not route (``tritium build
--board ulx3s --congestion-map``: the router stopped for diverging) is stuck on its last
iteration's overused wires; :func:`analyse` says which blocks' nets hold them and where on
the die they are, the way :mod:`tritium.fpga.slack` does for timing.

``python -m tritium.fpga.congestion DIR`` re-reads the heatmaps kept in a build directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path

from tritium.fpga.slack import hierarchy_of

__all__ = ["HEATMAP_PREFIX", "analyse", "iterations", "net_block", "prune"]

#: ``--router2-heatmap`` prefix inside a build directory (the folder is created by the build)
HEATMAP_PREFIX = "congestion/route"

_KINDS = ("congestion_by_net", "congestion_by_coordinate", "congestion_by_wiretype",
          "utilisation_by_wiretype")


def net_block(net: str, depth: int = 6) -> str:
    """The design block of a net: its name's hierarchy, at most ``depth`` levels (as the slack
    map names a cell's block)."""
    return hierarchy_of(net, depth)


def _path(bdir: Path, prefix: str, kind: str, it: int) -> Path:
    return bdir / f"{prefix}_{kind}_{it}.csv"


def iterations(bdir: str | Path, prefix: str = HEATMAP_PREFIX) -> list[int]:
    """Router iterations whose net heatmap is in ``bdir``, in order."""
    bdir = Path(bdir)
    pat = re.compile(re.escape(Path(prefix).name) + r"_congestion_by_net_(\d+)\.csv$")
    folder = (bdir / prefix).parent
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := pat.match(p.name)))


def _overused_wires(log_text: str, it: int) -> int | None:
    m = re.search(rf"iter={it} wires=\d+ overused=(\d+)", log_text)
    return int(m.group(1)) if m else None


def analyse(bdir: str | Path, prefix: str = HEATMAP_PREFIX, iteration: int | None = None,
            depth: int = 6, top: int = 12, region: int = 8,
            log_text: str = "") -> dict | None:
    """The heatmaps of one router iteration (default: the last one written), summarised.

    Returns None when ``bdir`` holds none, else ``iteration``, ``overused_wires`` (from
    nextpnr's log line of that iteration, when ``log_text`` has it), ``overuse`` (the sum over
    nets), ``nets`` (nets holding overused wires), ``by_block`` (``[block, overuse]``, the
    ``top`` largest, ``depth`` levels of hierarchy), ``worst_nets`` (``[net, overuse]``) and
    ``regions``: the ``top`` most congested squares of ``region`` x ``region`` tiles,
    ``[x0, y0, overuse]`` (``x0``, ``y0``: the square's first tile column and row; the
    squares are aligned to multiples of ``region``), with ``die`` (columns, rows) and
    ``in_regions`` (the share of the die's overuse in those squares).
    """
    bdir = Path(bdir)
    its = iterations(bdir, prefix)
    if not its:
        return None
    if iteration is None:
        # the last iteration whose four files are all there (a router stopped mid-write
        # leaves the newest one partial)
        whole = [i for i in its if all(_path(bdir, prefix, k, i).is_file() for k in _KINDS)]
        it = whole[-1] if whole else its[-1]
    else:
        it = iteration
    if it not in its:
        raise ValueError(f"iteration={it}; {bdir} holds iterations {its[0]}..{its[-1]}")
    nets: Counter = Counter()
    with open(_path(bdir, prefix, "congestion_by_net", it), newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[1].strip().isdigit():
                nets[row[0]] += int(row[1])
    blocks: Counter = Counter()
    for n, v in nets.items():
        blocks[net_block(n, depth)] += v
    squares: Counter = Counter()
    cols = rows = 0
    grid_total = 0
    coord = _path(bdir, prefix, "congestion_by_coordinate", it)
    if coord.is_file():
        with open(coord, newline="") as f:
            for x, line in enumerate(csv.reader(f)):
                vals = [int(v) if v.strip().isdigit() else 0 for v in line if v.strip()]
                cols, rows = x + 1, max(rows, len(vals))
                for y, v in enumerate(vals):
                    if v:
                        squares[(x // region * region, y // region * region)] += v
                        grid_total += v
    hot = squares.most_common(top)
    return {
        "iteration": it,
        "overused_wires": _overused_wires(log_text, it),
        "overuse": sum(nets.values()),
        "nets": sum(1 for v in nets.values() if v),
        "by_block": [[b, v] for b, v in blocks.most_common(top)],
        "worst_nets": [[n, v] for n, v in nets.most_common(top)],
        "region": region,
        "die": [cols, rows],
        "regions": [[x, y, v] for (x, y), v in hot],
        "in_regions": round(sum(v for _, v in hot) / grid_total, 3) if grid_total else 0.0,
    }


def prune(bdir: str | Path, prefix: str = HEATMAP_PREFIX, keep: int | None = None) -> int:
    """Delete every iteration's heatmaps but ``keep``'s (default: the one :func:`analyse`
    reads, the last whole one); returns the number of files deleted (a base build writes
    four files per iteration, ~1 MB in its first iterations)."""
    bdir = Path(bdir)
    its = iterations(bdir, prefix)
    if not its:
        return 0
    if keep is None:
        keep = analyse(bdir, prefix)["iteration"]
    gone = 0
    for it in its:
        if it == keep:
            continue
        for kind in _KINDS:
            p = _path(bdir, prefix, kind, it)
            if p.is_file():
                p.unlink()
                gone += 1
    return gone


def format_map(cm: dict, lines_each: int = 8) -> list[str]:
    """Report lines of an :func:`analyse` result."""
    wires = (f"{cm['overused_wires']:,} overused wires, "
             if cm.get("overused_wires") is not None else "")
    out = [(f"congestion: router iteration {cm['iteration']}: {wires}overuse "
            f"{cm['overuse']:,} on {cm['nets']:,} nets; by block, and the most congested "
            f"{cm['region']}x{cm['region']}-tile squares of the {cm['die'][0]}x{cm['die'][1]} "
            "die (x, y):")]
    out += [f"  {v:>7,}  {b}" for b, v in cm["by_block"][:lines_each]]
    out += [f"  {v:>7,}  x {x}-{x + cm['region'] - 1}, y {y}-{y + cm['region'] - 1}"
            for x, y, v in cm["regions"][:lines_each]]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tritium.fpga.congestion",
        description="Summarise the router2 heatmaps of a build directory (tritium build "
        "--board B --congestion-map) by design block and by region of the die.")
    p.add_argument("dir", help="build directory (build/boards/<board>-<key>)")
    p.add_argument("--iteration", type=int, default=None,
                   help="router iteration (default: the last one kept)")
    p.add_argument("--depth", type=int, default=6, help="hierarchy levels of a block")
    p.add_argument("--top", type=int, default=12, help="blocks, nets and squares listed")
    p.add_argument("--region", type=int, default=8, help="square size in tiles")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    log = Path(a.dir) / "pnr.log"
    try:
        cm = analyse(a.dir, iteration=a.iteration, depth=a.depth, top=a.top, region=a.region,
                     log_text=log.read_text(errors="replace") if log.is_file() else "")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cm is None:
        print(f"error: no router2 heatmaps in {a.dir} (build with --congestion-map)",
              file=sys.stderr)
        return 2
    print(json.dumps(cm, indent=1) if a.json else "\n".join(format_map(cm, a.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
