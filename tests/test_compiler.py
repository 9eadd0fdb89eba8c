"""The model compiler (firmware.compiler): programs on the golden device equal the NumPy integer
reference bit for bit, on every engine, on the shipped models and on random small models for
several configurations; layout, tiling, fusion and per-step program properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tritium.firmware import compiler as C
from tritium.firmware.compiler import CompileError, ReferenceState, compile_model, reference_step
from tritium.host.evaluate import load_int
from tritium.host.models import gpt, gpt_int, mmfree, mmfree_int
from tritium.host.models.intops import IntMachine
from tritium.host.models.quantize import calibrate

from tritium.config import PRESETS, preset
from tritium.golden import GoldenDevice
from tritium.isa import GEMM_ENGINE, INSTR_BYTES, Op

TOKENS = [20, 43, 50, 1, 30, 8]


def run_steps(cm, tokens):
    """Run the per-step programs on one GoldenDevice; returns StepOutputs."""
    dev = GoldenDevice(cm.cfg, cm.image.mem)
    outs = []
    a, n = cm.output_span()
    for pos, tok in enumerate(tokens):
        prog = np.frombuffer(cm.program_bytes(tok, pos), np.uint8)
        dev.mem[cm.prog_base:cm.prog_base + prog.size] = prog
        dev.run(cm.prog_base)
        outs.append(cm.parse_output(dev.mem[a:a + n].tobytes(), a))
    return outs


def reference(model, tokens):
    st = ReferenceState(model)
    return [reference_step(model, t, st) for t in tokens]


def same(outs, refs):
    for o, r in zip(outs, refs, strict=True):
        assert o.next == r.next
        np.testing.assert_array_equal(o.logits8, r.logits8)
        np.testing.assert_array_equal(o.logits_acc, r.logits_acc)


def small_model(kind: str, seed: int = 0, **over):
    """A random small integer model (float init, max-calibrated on random tokens)."""
    rng = np.random.default_rng(seed)
    if kind == "mmfree":
        cfg = mmfree.MMFreeConfig(**{"d": 32, "n_layers": 2, "hidden": 64, "ctx": 16, **over})
        params = mmfree.init_params(cfg, seed)
        build = mmfree_int.quantize
    else:
        cfg = gpt.GPTConfig(**{"d": 32, "n_layers": 2, "n_heads": 2, "mlp": 64, "ctx": 16,
                               **over})
        params = gpt.init_params(cfg, seed)
        build = gpt_int.quantize
    ranges = calibrate(kind, cfg, params, rng.integers(0, 65, (4, cfg.ctx + 1)))
    return build(cfg, params, ranges)


# ----------------------------------------------------------------------------- op sequence
@pytest.mark.parametrize("name", ["mmfree", "gpt"])
def test_step_functions_are_the_models_steps(name):
    """mmfree_step / gpt_step on an IntMachine issue the models' own step (same integers)."""
    m = load_int(name)
    st = m.init_state()
    ref = ReferenceState(m)
    for tok in TOKENS:
        acc, l8, nxt, st = m.step(tok, st)
        out = reference_step(m, tok, ref)
        assert out.next == nxt
        np.testing.assert_array_equal(out.logits_acc, acc)
        np.testing.assert_array_equal(out.logits8, l8)


@pytest.mark.parametrize("name", ["mmfree", "gpt"])
def test_emitter_records_every_op_of_the_trace(name):
    """The Emitter sees the same op sequence the IntMachine traces (one source of truth)."""
    m = load_int(name)
    cm = compile_model(m, preset("tiny" if name == "mmfree" else "base"))
    M = IntMachine.tracing()
    st = ReferenceState(m)
    reference_step(m, 3, st, M)
    em = cm._record(0)
    traced = [r.op for r in M.trace]
    recorded = [n.op if n.op != "GEMM" else ("GEMM_TERN" if n.args["kind"] == "ternary"
                                             else "GEMM_I8") for n in em.nodes
                if n.op not in ("COPY", "INIT")]
    assert recorded == traced


# ----------------------------------------------------------------------------- golden == ref
@pytest.mark.parametrize("name,cfg", [("mmfree", "tiny"), ("gpt", "base")])
def test_shipped_models_on_golden_equal_reference(name, cfg):
    m = load_int(name)
    cm = compile_model(m, preset(cfg))
    same(run_steps(cm, TOKENS), reference(m, TOKENS))
    fig = cm.figures()
    assert fig["image_bytes"] <= fig["dev_mem_bytes"]
    assert fig["spad_peak"] <= PRESETS[cfg].spad_bytes
    assert fig["acc_peak"] <= PRESETS[cfg].acc_bytes
    assert fig["engines"] == (["ternary"] if name == "mmfree" else ["systolic"])


def test_every_engine_gives_the_same_integers():
    """Ternary weights on the ternary engine, the LUT core (2-bit) and the systolic array
    (int8), and a per-layer mix: identical logits; each program uses only its engine."""
    m = small_model("mmfree", 1)
    cfg = preset("base")
    refs = reference(m, TOKENS[:4])
    for spec, engines in [("ternary", {"ternary"}), ("lut", {"lut"}),
                          ("systolic", {"systolic"}), ("auto", {"ternary"}),
                          ("layers.0.*=lut,lm_head*=systolic,*=ternary",
                           {"lut", "systolic", "ternary"})]:
        cm = compile_model(m, cfg, spec)
        same(run_steps(cm, TOKENS[:4]), refs)
        used = {GEMM_ENGINE[i.op] for i in cm.program(0) if i.op in GEMM_ENGINE}
        assert used == engines, spec


def test_shipped_mmfree_on_lut_and_systolic_engines():
    m = load_int("mmfree")
    refs = reference(m, TOKENS[:2])
    same(run_steps(compile_model(m, preset("base"), "lut"), TOKENS[:2]), refs)
    big = preset("base").replace(dev_mem_bytes=1 << 20)  # int8 weights need 4x the memory
    same(run_steps(compile_model(m, big, "systolic"), TOKENS[:2]), refs)


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
@pytest.mark.parametrize("cfg_name", ["tiny", "base", "large"])
def test_random_small_models_on_every_config(kind, cfg_name):
    """Random small models compile for any config that has the engines they need."""
    cfg = preset(cfg_name)
    m = small_model(kind, 2)
    if kind == "gpt" and not cfg.has("systolic"):
        with pytest.raises(CompileError, match="systolic"):
            compile_model(m, cfg)
        return
    toks = [5, 60, 33, 2, 17, 40]
    cm = compile_model(m, cfg)
    same(run_steps(cm, toks), reference(m, toks))


def test_context_positions_and_layout_reuse():
    """GPT steps at many positions (attention length t = pos + 1 up to ctx) stay exact, and
    successive programs differ only in a few words."""
    m = small_model("gpt", 3, ctx=24)
    cm = compile_model(m, preset("base"))
    toks = list(np.random.default_rng(0).integers(0, 65, 24))
    same(run_steps(cm, toks), reference(m, toks))
    a = np.frombuffer(cm.program_bytes(7, 10), np.uint8).reshape(-1, INSTR_BYTES)
    b = np.frombuffer(cm.program_bytes(7, 11), np.uint8).reshape(-1, INSTR_BYTES)
    assert a.shape == b.shape
    changed = int((a != b).any(axis=1).sum())
    assert 0 < changed < a.shape[0] // 4


def test_token_only_patches_the_embedding_load():
    m = load_int("mmfree")
    cm = compile_model(m, preset("tiny"))
    a = np.frombuffer(cm.program_bytes(3), np.uint8).reshape(-1, INSTR_BYTES)
    b = np.frombuffer(cm.program_bytes(40), np.uint8).reshape(-1, INSTR_BYTES)
    rows = np.flatnonzero((a != b).any(axis=1))
    assert len(rows) == 1
    ins3, ins40 = cm.program(3)[rows[0]], cm.program(40)[rows[0]]
    assert ins3.op == Op.LOAD and ins40.dram - ins3.dram == 37 * m.cfg.d


# ----------------------------------------------------------------------------- tiling, layout
def test_tiny_fuses_wide_gemms_into_the_1k_accumulator():
    """On tiny (ACC 1 KiB) the 2H = 512-wide GLU projection (2 KiB of int32) runs as output
    tiles GEMM -> VSCALE -> VREQ; every GEMM writes at most a tile."""
    m = load_int("mmfree")
    cm = compile_model(m, preset("tiny"))
    prog = cm.program(0)
    gemms = [i for i in prog if i.op == Op.GEMM_TERN]
    assert max(4 * i.m * i.n for i in gemms) <= cm.cfg.acc_bytes // 2
    assert sum(i.op == Op.VSCALE for i in prog) > 6 * len(m.layers) + 1
    # weights stream in tiles no larger than a quarter of the scratchpad (double buffered)
    loads = [i for i in prog if i.op == Op.LOAD and i.space == 0]
    assert max(i.rows * i.row_bytes for i in loads) <= cm.cfg.spad_bytes // 4


def test_double_buffered_weight_tiles():
    """Consecutive weight tiles of one GEMM go to different SPAD buffers and the next tile's
    LOAD precedes the current tile's GEMM."""
    m = load_int("mmfree")
    cm = compile_model(m, preset("tiny"))
    prog = cm.program(0)
    idx = [k for k, i in enumerate(prog) if i.op == Op.GEMM_TERN]
    pairs = 0
    for g0, g1 in itertools.pairwise(idx):
        a, b = prog[g0], prog[g1]
        if a.a != b.a or a.k != b.k or b.c != a.c + 4 * a.n or any(
                i.op != Op.LOAD for i in prog[g0 + 1:g1]):
            continue  # not two consecutive tiles of one GEMM
        pairs += 1
        assert a.w != b.w
        load = max(k for k in range(g1) if prog[k].op == Op.LOAD and prog[k].space == 0
                   and prog[k].loc == b.w)
        assert load < g0, (load, g0)
    assert pairs > 10


def test_image_regions_and_program_region():
    m = load_int("gpt")
    cm = compile_model(m, preset("base"))
    regions = sorted(cm.image.regions.values(), key=lambda r: r.addr)
    assert regions[0].addr >= cm.prog_bytes
    for r0, r1 in itertools.pairwise(regions):
        assert r0.end <= r1.addr, (r0, r1)
    assert all(r.addr % cm.cfg.bus_bytes == 0 for r in regions)
    longest = max(len(cm.program(0, p)) for p in (0, 63, 127))
    assert longest * INSTR_BYTES <= cm.prog_bytes
    with pytest.raises(ValueError, match="position"):
        cm.program(0, 128)


def test_compile_errors_are_clear():
    mm = load_int("mmfree")
    with pytest.raises(CompileError, match="engine 'lut' is not in config 'tiny'"):
        compile_model(mm, preset("tiny"), "lut")
    with pytest.raises(CompileError, match="device memory"):
        compile_model(mm, preset("base"), "systolic")
    with pytest.raises(CompileError, match="only on the systolic"):
        compile_model(small_model("gpt"), preset("base"), "ternary")
    with pytest.raises(CompileError, match="cannot compile"):
        compile_model(object(), preset("base"))
    with pytest.raises(CompileError, match="must be one of"):
        compile_model(mm, preset("base"), "quantum")


def test_resolve_engine_patterns():
    cfg = preset("base")
    assert C.resolve_engine("auto", cfg, "x", "ternary") == "ternary"
    assert C.resolve_engine("auto", preset("tiny"), "x", "ternary") == "ternary"
    assert C.resolve_engine("auto", cfg.replace(engines=("lut", "systolic")), "x",
                            "ternary") == "lut"
    assert C.resolve_engine("l0.*=lut,*=systolic", cfg, "l0.f", "ternary") == "lut"
    assert C.resolve_engine("l0.*=lut,*=systolic", cfg, "l1.f", "ternary") == "systolic"
    assert C.resolve_engine({"*": "auto"}, cfg, "w", "int8") == "systolic"
