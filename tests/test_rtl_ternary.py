"""Ternary engine (rtl/ternary.py) against tritium.numerics.gemm_ternary, cocotb on Verilator."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritium.rtl.ternary import TernaryEngine
from tritium.sim.build import run_cocotb

from tritium.config import PRESETS

TB_DIR = Path(__file__).parent / "cocotb"
TOP = "tritium_ternary"

CONFIGS = {name: PRESETS[name] for name in ("tiny", "base") if PRESETS[name].has("ternary")}

#: Output elements each config's random test checks; their sum is the engine's vector count.
NVEC = {"tiny": 5000, "base": 6000}
assert sum(NVEC[n] for n in CONFIGS) >= 10_000

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_ternary_random(cfg_name):
    run = run_cocotb(
        TOP, CONFIGS[cfg_name], TernaryEngine, "tb_ternary", TB_DIR,
        seed=4321, nvec=NVEC[cfg_name], testcase="ternary_random",
    )
    assert run.report["checked"] >= NVEC[cfg_name]


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_ternary_latency(cfg_name):
    run = run_cocotb(
        TOP, CONFIGS[cfg_name], TernaryEngine, "tb_ternary", TB_DIR,
        seed=11, testcase="ternary_latency_test",
    )
    assert run.report["latency_b1"] == 2
    assert run.report["latency_b33"] == 34
    assert run.report["throughput_b1_n8"] == 9
