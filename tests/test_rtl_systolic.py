"""Systolic array (rtl/systolic.py) against tritium.numerics.gemm_i8, cocotb on Verilator."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritium.rtl.systolic import SystolicArray
from tritium.sim.build import run_cocotb

from tritium.config import PRESETS

TB_DIR = Path(__file__).parent / "cocotb"
TOP = "tritium_systolic"

#: Presets with a systolic engine (``tiny`` has none), plus a small non-square custom array.
CONFIGS = {name: cfg for name, cfg in PRESETS.items() if cfg.has("systolic") and name != "large"}
CONFIGS["sa2x3"] = PRESETS["base"].replace(name="sa2x3", sa_rows=2, sa_cols=3)

#: Output elements each config's random test checks; their sum is the engine's vector count.
NVEC = {"base": 6000, "sa2x3": 5000}
assert sum(NVEC[n] for n in CONFIGS) >= 10_000

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_systolic_random(cfg_name):
    cfg = CONFIGS[cfg_name]
    run = run_cocotb(
        TOP, cfg, SystolicArray, "tb_systolic", TB_DIR,
        seed=1234, nvec=NVEC[cfg_name], testcase="systolic_random",
    )
    assert run.report["checked"] >= NVEC[cfg_name]


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_systolic_latency(cfg_name):
    cfg = CONFIGS[cfg_name]
    run = run_cocotb(
        TOP, cfg, SystolicArray, "tb_systolic", TB_DIR, seed=7, testcase="systolic_latency_test",
    )
    r, c = cfg.sa_rows, cfg.sa_cols
    # K beats, R + C cycles of skew and drain, one cycle of the PEs' product registers, one
    # of the output FIFO's head register
    assert run.report["latency_k1"] == 1 + r + c + 2
    assert run.report["latency_k32"] == 32 + r + c + 2


def test_systolic_tiny_has_no_systolic():
    assert not PRESETS["tiny"].has("systolic")
