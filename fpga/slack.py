"""Where a routed design misses its clock: a static timing pass over nextpnr's SDF.

nextpnr prints the worst path and a slack histogram, not where the failing endpoints are. Its
``--sdf`` file has every routed net's delay (``INTERCONNECT``), every cell's arcs
(``IOPATH``) and setup checks (``SETUPHOLD``). :func:`analyse` propagates arrival times
through them (launch at a clocked cell's ``CLK -> Q`` arc, the same single-clock model as
nextpnr's report: no clock skew), takes each setup-checked input as an endpoint, and counts
the endpoints with negative slack by the design block they belong to and by the block their
worst path starts from.

Blocks are cell-name prefixes: nextpnr names a cell after the net it drives, which carries
the Amaranth hierarchy (``soc.core.acc.compute.gemm_systolic.ag.line_b7_TRELLIS_FF_Q_52`` is
in ``soc.core.acc.compute.gemm_systolic.ag``). ``depth`` cuts the hierarchy.

Command line::

    python -m tritium.fpga.slack routed.sdf --period-ns 13.333 [--depth 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["SdfTiming", "analyse", "block_of", "parse_sdf"]

_TOKEN = re.compile(r'\(|\)|"[^"]*"|(?:\\.|[^\s()\\])+')


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def _delay(triple: str) -> float:
    """The max of an SDF ``(min:typ:max)`` value in ns (nextpnr writes ps)."""
    return float(triple.split(":")[-1]) / 1000.0


class SdfTiming:
    """The timing graph of an SDF file: ``edges[src] = [(dst, delay_ns), ...]`` between
    ``instance/pin`` names; ``launch[pin]`` the clock-to-output delay of a clocked output;
    ``setup[pin]`` the setup time of a checked input."""

    def __init__(self):
        self.edges: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.launch: dict[str, float] = {}
        self.setup: dict[str, float] = {}
        self.cell_type: dict[str, str] = {}


def parse_sdf(text: str) -> SdfTiming:
    """Read nextpnr's SDF (``DELAYFILE`` of ``CELL`` blocks)."""
    t = SdfTiming()
    toks = _TOKEN.findall(text)
    i, n = 0, len(toks)
    stack: list[str] = []
    inst = ""
    ctype = ""
    while i < n:
        tok = toks[i]
        if tok == "(":
            kw = toks[i + 1]
            stack.append(kw)
            if kw == "CELLTYPE":
                ctype = toks[i + 2].strip('"')
            elif kw == "INSTANCE":
                inst = _unescape(toks[i + 2]) if toks[i + 2] != ")" else ""
                if inst:
                    t.cell_type[inst] = ctype
            elif kw == "INTERCONNECT":
                src, dst, d = toks[i + 2], toks[i + 3], toks[i + 5]
                t.edges[_unescape(src)].append((_unescape(dst), _delay(d)))
            elif kw == "IOPATH":
                a, b, d = toks[i + 2], toks[i + 3], toks[i + 5]
                if a.startswith("CLK"):  # CLK, CLKA, CLKB...: a clocked output
                    pin = f"{inst}/{b}"
                    t.launch[pin] = max(t.launch.get(pin, 0.0), _delay(d))
                else:
                    t.edges[f"{inst}/{a}"].append((f"{inst}/{b}", _delay(d)))
            elif kw == "SETUPHOLD":
                # (SETUPHOLD (posedge PIN) (posedge CLK) (setup) (hold))
                pin, setup = toks[i + 4], _delay(toks[i + 11])
                p = f"{inst}/{pin}"
                t.setup[p] = max(t.setup.get(p, 0.0), setup)
            i += 2
            continue
        if tok == ")" and stack and stack.pop() == "CELL":
            inst, ctype = "", ""
        i += 1
    return t


def hierarchy_of(name: str, depth: int) -> str:
    """The design block of a cell or net name: its dotted hierarchy before the last part, at
    most ``depth`` levels; ``(top)`` for a name of the top level."""
    parts = name.split(".")
    return ".".join(parts[:-1][:depth]) if len(parts) > 1 else "(top)"


def block_of(pin: str, depth: int) -> str:
    """The design block of an ``instance/pin``: its hierarchy, at most ``depth`` levels."""
    return hierarchy_of(pin.rsplit("/", 1)[0], depth)


def analyse(t: SdfTiming, period_ns: float, depth: int = 6, top: int = 25,
            paths: int = 0) -> dict:
    """Arrival times by longest path from the launch points; slack at every setup check.

    Returns the endpoint count, the failing ones (slack < 0), the worst slack, and the failing
    endpoints by block, by (start block, end block) of their worst path, and a histogram.
    ``paths``: also the worst path of each of the ``paths`` worst (start block, end block)
    groups, hop by hop (``worst_paths``: slack, endpoints in the group, and
    ``[from pin, to pin, delay ns]`` for every net and cell arc after the launch)."""
    # topological order (Kahn) over the nodes reachable from the launch points
    indeg: Counter = Counter()
    for outs in t.edges.values():
        for dst, _ in outs:
            indeg[dst] += 1
    arrival: dict[str, float] = {}
    origin: dict[str, str] = {}
    pred: dict[str, tuple[str, float]] = {}  # the arc that sets a node's arrival
    ready = [p for p in set(t.edges) | set(t.launch) if indeg[p] == 0]
    for p in ready:  # constant LUTs and input pins are roots too: they launch nothing
        if p in t.launch:
            arrival[p] = t.launch[p]
            origin[p] = p
    order = list(ready)
    k = 0
    while k < len(order):
        p = order[k]
        k += 1
        a = arrival.get(p)
        for dst, d in t.edges.get(p, ()):
            if a is not None:
                cand = a + d
                if cand > arrival.get(dst, float("-inf")):
                    arrival[dst] = cand
                    origin[dst] = origin[p]
                    pred[dst] = (p, d)
            indeg[dst] -= 1
            if indeg[dst] == 0:
                order.append(dst)
    loops = sum(1 for v in indeg.values() if v > 0)
    ends = []
    for pin, su in t.setup.items():
        if pin in arrival and pin in origin and origin[pin] in t.launch:
            ends.append((period_ns - su - arrival[pin], pin, origin[pin]))
    failing = [e for e in ends if e[0] < 0]
    by_end = Counter(block_of(p, depth) for _, p, _ in failing)
    by_pair = Counter((block_of(o, depth), block_of(p, depth)) for _, p, o in failing)
    worst = min(ends) if ends else (0.0, "", "")
    # how far short: [-1, 0), [-2, -1), [-4, -2), [-6, -4), [-8, -6), below -8 ns
    bounds = [-1, -2, -4, -6, -8]
    hist = Counter()
    for s, _, _ in failing:
        hi = 0
        for lo in bounds:
            if s >= lo:
                hist[f"{lo}..{hi} ns"] += 1
                break
            hi = lo
        else:
            hist[f"< {bounds[-1]} ns"] += 1
    worst_paths = []
    if paths:
        groups: dict[tuple[str, str], list] = {}
        for e in sorted(failing):
            key = (block_of(e[2], depth), block_of(e[1], depth))
            groups.setdefault(key, []).append(e)
        for (a_, b_), es in list(groups.items())[:paths]:
            slack, pin, start = es[0]
            hops = []
            while pin in pred:
                prev, d = pred[pin]
                hops.append([prev, pin, round(d, 3)])
                pin = prev
            worst_paths.append({"from_block": a_, "to_block": b_, "endpoints": len(es),
                                "slack_ns": round(slack, 3), "start": start,
                                "hops": hops[::-1]})
    return {
        "period_ns": period_ns,
        "endpoints": len(ends),
        "failing": len(failing),
        "worst_slack_ns": round(worst[0], 3),
        "worst_start": worst[2],
        "worst_end": worst[1],
        "fmax_mhz": round(1000.0 / (period_ns - worst[0]), 2) if ends else None,
        "unordered_nodes": loops,
        "failing_by_block": by_end.most_common(top),
        "failing_by_path": [[a, b, c] for (a, b), c in by_pair.most_common(top)],
        "failing_by_slack": dict(hist),
        **({"worst_paths": worst_paths} if paths else {}),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sdf", type=Path)
    ap.add_argument("--period-ns", type=float, required=True)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--paths", type=int, default=0,
                    help="print the worst path of the N worst block pairs, hop by hop")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = analyse(parse_sdf(a.sdf.read_text()), a.period_ns, a.depth, a.top, a.paths)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['failing']:,} of {r['endpoints']:,} endpoints below 0 at {a.period_ns} ns; "
          f"worst {r['worst_slack_ns']} ns ({r['fmax_mhz']} MHz): "
          f"{r['worst_start']} -> {r['worst_end']}")
    print("\nfailing endpoints by block:")
    for b, c in r["failing_by_block"]:
        print(f"  {c:7,}  {b}")
    print("\nby start block -> end block of the worst path:")
    for a_, b, c in r["failing_by_path"]:
        print(f"  {c:7,}  {a_} -> {b}")
    for wp in r.get("worst_paths", []):
        print(f"\n{wp['slack_ns']} ns, {wp['endpoints']:,} endpoints: "
              f"{wp['from_block']} -> {wp['to_block']}")
        for src, dst, d in wp["hops"]:
            kind = "cell" if src.rsplit("/", 1)[0] == dst.rsplit("/", 1)[0] else "net "
            print(f"  {d:6.2f} {kind} {src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
