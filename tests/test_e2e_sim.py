"""End to end on the simulated SoC: compiled models decode token by token on the Verilator-built
SoC (accelerator + RAM + bridge, served by tritium.sim.server over a socket), and every step's
logits equal the NumPy integer reference (IntMachine path) and the golden device bit for bit.

The Verilator builds of the SoC (one per preset) are cached by config hash in build/.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from tritium.firmware.compiler import ReferenceState, compile_model, reference_step
from tritium.host.device import Device
from tritium.host.evaluate import load_int
from tritium.host.runtime import Runtime

from tritium.config import preset

pytestmark = pytest.mark.slow

#: decode steps per model (prompt "ROMEO:\nWhat, " and the greedy continuation)
STEPS = int(os.environ.get("TRITIUM_E2E_STEPS", "16"))
PROMPT = "ROMEO:\nWhat"


@pytest.mark.parametrize("name,cfg_name,engine", [
    ("mmfree", "tiny", "ternary"),
    ("gpt", "base", "systolic"),
    ("mmfree", "base", "lut"),  # ternary weights as 2-bit weights on the LUT tensor core
])
def test_sim_equals_golden_and_reference(name, cfg_name, engine):
    from tritium.host import data

    m = load_int(name)
    cfg = preset(cfg_name)
    cm = compile_model(m, cfg, engine)
    toks = [int(t) for t in data.tokenizer().encode(PROMPT)]
    ref = ReferenceState(m)
    with Device.open("sim", cfg) as sim, Device.open("golden", cfg) as gold:
        rs, rg = Runtime(sim, cm), Runtime(gold, cm)
        rs.reset()
        rg.reset()
        tok = toks[0]
        cycles = []
        for i in range(STEPS):
            a, b = rs.step(tok), rg.step(tok)
            r = reference_step(m, tok, ref)
            for got in (a, b):
                assert got.next == r.next, (i, got.next, r.next)
                np.testing.assert_array_equal(got.logits_acc, r.logits_acc)
                np.testing.assert_array_equal(got.logits8, r.logits8)
            assert a.run.instret == b.run.instret == len(cm.program(tok, i))
            cycles.append(a.run.cycles)
            tok = toks[i + 1] if i + 1 < len(toks) else r.next
        counters = sim.read_counters()
    assert all(c and c > a.run.instret for c in cycles)
    assert counters["cycles"] == cycles[-1]
    print(f"{name} on sim ({cfg_name}, {engine}): {STEPS} steps, cycles/step {np.mean(cycles):,.0f} "
          f"(min {min(cycles):,}, max {max(cycles):,}), {a.run.instret} instructions/step")
