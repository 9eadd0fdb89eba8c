"""Vector unit (tritium.rtl.vector) on Verilator via cocotb, against the golden model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritium.config import preset

pytest.importorskip("amaranth")
pytest.importorskip("cocotb")

from tritium.rtl.serial_vector import SerialVectorUnit
from tritium.rtl.vector import VECTOR_OPS, VectorUnit
from tritium.sim.build import run_cocotb

TB_DIR = Path(__file__).parent / "cocotb"
#: (config, unit under test): each preset's own unit (tiny: the serial one), and the pipelined
#: unit on tiny's sizes too.
CASES = [
    pytest.param("tiny", SerialVectorUnit, id="tiny-serial"),
    pytest.param("tiny-pipelined", VectorUnit, id="tiny-pipelined"),
    pytest.param("base", VectorUnit, id="base"),
]


def _cfg(name: str):
    if name == "tiny-pipelined":
        return preset("tiny").replace(vector_serial=False)
    return preset(name)


def _run(cfg_name: str, unit, **kw):
    return run_cocotb("tritium_vector", _cfg(cfg_name), unit, "tb_vector", TB_DIR,
                      extra={"unit": unit.__name__}, key_extra=unit.__name__, **kw)

#: What the random test must have exercised (see tb_vector._coverage).
REQUIRED_COVERAGE = (
    {f"{op}:{k}" for op in ("VREQ", "VADD", "VMUL", "VADD32", "VSCALE", "VRMS", "VGATE")
     for k in ("min", "max", "mid")}
    | {f"{op}:{k}" for op in ("VQUANT", "VSOFTMAX", "VACT") for k in ("max", "mid")}
    | {f"{op.name}:{k}" for op in VECTOR_OPS for k in ("n=1", "rows>1")}
    | {"VREQ:per-channel", "VREQ:per-tensor", "VREQ:shift<-15", "VREQ:shift>15",
       "VQUANT:zero-row", "VRMS:zero-row", "VGATE:f<0", "VARGMAX:tie", "VSOFTMAX:zero-table",
       "VADD:in-place", "VSCALE:in-place", "VSOFTMAX:in-place"}
)


@pytest.mark.parametrize(("cfg_name", "unit"), CASES)
def test_vector_random(cfg_name, unit):
    """All 11 opcodes, random shapes/data/params, random stalls on every stream: the SPAD and
    ACC images match GoldenDevice byte for byte after every instruction."""
    run = _run(cfg_name, unit, seed=11, nvec=24, testcase="vector_random")
    assert run.report["checked"] >= 3000, run.report
    assert all(v > 0 for v in run.report["per_op"].values()), run.report
    missing = REQUIRED_COVERAGE - set(run.report["coverage"])
    assert not missing, f"random test did not exercise {sorted(missing)}"


@pytest.mark.parametrize(("cfg_name", "unit"), CASES)
def test_vector_cycles(cfg_name, unit):
    """With no stalls, every instruction takes exactly ``unit.cycles`` (docstring table)."""
    run = _run(cfg_name, unit, seed=5, testcase="vector_cycles")
    assert len(run.report["cycles"]) >= 20


def test_vector_cmd_layout_matches_isa():
    """The cmd payload is the low bits of the instruction word (fields at their isa bits)."""
    from tritium.rtl.vector import cmd_layout, pack_cmd

    from tritium.isa import FORMATS, Instr, Op, encode

    lay = cmd_layout()
    for f in FORMATS[Op.VREQ]:
        assert lay[f.name].offset == f.lsb
    ins = Instr.make(Op.VRMS, rows=3, n=77, src=5, src2=6, dst=7, param=8, zp=-3)
    assert pack_cmd(ins) == encode(ins) & ((1 << lay.size) - 1)


@pytest.mark.slow
@pytest.mark.parametrize(("cfg_name", "target", "dsp", "bram"),
                         [("tiny", "ice40", 2, 0), ("base", "ecp5", 5, 1)])
def test_vector_synth_multipliers(cfg_name, target, dsp, bram):
    """Synthesizes with every multiplier in DSP blocks, none in LUTs. VectorUnit (base): one
    32x32 and one 9x9, 5 DSP blocks, and the table block RAM; SerialVectorUnit (tiny): one
    16x16 (17x17) and one 9x9, 2 DSP blocks, no block RAM. (Sizes are reported, not asserted.)"""
    from tritium.fpga.synth import synth_unit

    r = synth_unit("vector", preset(cfg_name), target)
    assert r["dsp"] == dsp, r["cells"]
    assert r["cells"].get("$mul", 0) == 0 and r["cells"].get("$macc", 0) == 0
    assert r["bram"] == bram
    print(f"vector {cfg_name} {target}: lut4={r['lut4']} ff={r['ff']} dsp={r['dsp']} "
          f"bram={r['bram']} carry={r['carry']}")


def test_requant_clamp_every_value():
    """The output stage's rounding and clamp (``_requant_clamp``: one adder on ``2 off + 1``,
    bit tests instead of compares) against its definition, for every 11-bit value, the
    offsets at and around the edges and both int8 classes, with and without rounding."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    from tritium.rtl.vector import _CLS_I8, _CLS_I32, _CLS_Q127, _requant_clamp

    m = Module()
    val = Signal(signed(32))
    rnd = Signal()
    off = Signal(signed(9))
    cls = Signal(2)
    y = Signal(signed(32))
    off21 = Signal(signed(11))
    m.d.comb += [off21.eq(off * 2 + 1), y.eq(_requant_clamp(m, val, rnd, off21, cls))]

    def ref(v, r, o, c):
        if c == _CLS_I32:
            return v
        t = ((v + 1) >> 1) + o if r else v
        lo = -127 if c == _CLS_Q127 else -128
        return max(lo, min(127, t))

    checked = []

    async def bench(ctx):
        for o in (-256, -129, -128, -127, -1, 0, 1, 127, 128, 255):
            for v in range(-1024, 1024):
                for r in (0, 1):
                    if not r and not -300 <= v <= 300:
                        continue  # unrounded int8-class values are small (a + b, table)
                    for c in (_CLS_I8, _CLS_Q127, _CLS_I32):
                        ctx.set(val, v)
                        ctx.set(rnd, r)
                        ctx.set(off, o)
                        ctx.set(cls, c)
                        assert ctx.get(y) == ref(v, r, o, c), (v, r, o, c)
                        checked.append(1)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 50_000
