"""The accelerator top (rtl/top.py) on Verilator, against the golden model.

* random valid programs (firmware.randprog) with random AXI backpressure on all five channels,
  final device memory == tritium.golden.run byte for byte;
* hand-written kernels: tiled GEMM larger than the scratchpad, MLGRU step, attention step;
* faults (invalid opcode, address range, SLVERR, watchdog, bad parameters) and recovery;
* overlap: DMA and compute run concurrently on a double-buffered tiled GEMM (CSR counters),
  utilisation written to build/bench/.

One Verilator build per config (cached by tritium.sim.build); `tiny` and `base`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tritium.firmware import kernels_lm
from tritium.firmware.image import MemoryImage
from tritium.firmware.kernels import plan_gemm, tiled_gemm, weight_row_bytes

from tritium import golden
from tritium.config import PRESETS
from tritium.isa import Instr, Op

TB_DIR = Path(__file__).parent / "cocotb"
TOP = "tritium_top"
CONFIGS = ["tiny", "base"]
#: random programs per config per run (>= 100 in total)
N_RANDOM = {"tiny": 80, "base": 20}

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def fast_model():
    """Compile the model's fast path at -O1 (``-O0`` elsewhere): the top simulates ~6x faster
    than at sim.build's default ``-O0`` for ~1 min more build time. Scoped to our builds."""
    old = os.environ.get("TRITIUM_VERILATOR_OPT")
    os.environ["TRITIUM_VERILATOR_OPT"] = old or "-O0 OPT_FAST=-O1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITIUM_VERILATOR_OPT", None)


def _run(cfg_name: str, testcase: str, **kw):
    from tritium.rtl.top import TritiumTop
    from tritium.sim.build import run_cocotb

    with fast_model():
        return run_cocotb(TOP, PRESETS[cfg_name], TritiumTop, "tb_top", TB_DIR,
                          testcase=testcase, **kw)


# ----------------------------------------------------------------------------- pure Python
def test_vec_ranges_match_isa_footprint():
    """The controller's vector range table is isa.footprint (hazard tracking relies on it)."""
    from tritium.rtl.controller import VEC_OPS, vec_ranges

    from tritium.isa import FORMATS, footprint

    rng = np.random.default_rng(0)
    for op in VEC_OPS:
        for _ in range(20):
            f = {fl.name: int(rng.integers(0, min(fl.hi, 5000) + 1)) for fl in FORMATS[op]
                 if not fl.signed}
            f["rows"] = max(1, f["rows"] % 7)
            f["n"] = max(1, f["n"] % 70)
            if op != Op.VREQ:
                f["per_channel"] = 0
            ins = Instr.make(op, **f)
            reads, writes = footprint(ins)
            d = ins.as_dict()
            pcn = d["n"] if d["per_channel"] else 1
            cnt = {"t": d["rows"] * d["n"], "n": d["n"], "rows": d["rows"], "pc2": 2 * pcn}
            mine = []
            for lst in vec_ranges(op):
                out = []
                for sp, fld, c in lst:
                    n = cnt[c] if isinstance(c, str) else c
                    out.append((sp, d[fld], d[fld] + (4 if sp == "ACC" else 1) * n))
                mine.append(out)
            assert (mine[0], mine[1]) == (reads, writes), (ins, mine, reads, writes)


def _golden_code(dev, w: int) -> int:
    """The error code the golden device's checks give instruction word ``w`` (0: none)."""
    from tritium.isa import DecodeError, ErrorCode, decode

    try:
        try:
            ins = decode(w)
        except DecodeError:
            raise golden.DeviceError(ErrorCode.INVALID_OPCODE, 0, "") from None
        dev.check(ins, 0)
        return 0
    except golden.DeviceError as e:
        return int(e.code)


def test_checker_matches_golden_checks():
    """InstrChecker (Amaranth simulator) gives golden's error code and isa.footprint hulls on
    random and corrupted instruction words."""
    import random

    from amaranth.sim import Simulator
    from tritium.rtl.controller import SPACES, InstrChecker, hull_blocks

    from tritium.isa import FORMATS, ErrorCode, decode, encode, footprint

    for cfg_name in CONFIGS:
        cfg = PRESETS[cfg_name]
        dut = InstrChecker(cfg)
        rnd = random.Random(1)
        words = []
        sizes = [cfg.dev_mem_bytes, cfg.spad_bytes, cfg.acc_bytes]
        addr_fields = {"dram", "loc", "a", "w", "c", "src", "src2", "dst", "param"}
        for i in range(1200):
            op = rnd.choice(list(Op))
            f = {}
            edge = i % 2 == 1  # small counts, addresses at space ends / next to each other
            for fl in FORMATS[op]:
                r = rnd.random()
                if edge and fl.name in addr_fields:
                    prev = [f[x] for x in f if x in addr_fields]
                    if prev and r < 0.5:
                        v = rnd.choice(prev) + rnd.choice([0, 0, 4, -4, 8, -8, 16])
                    else:
                        v = rnd.choice(sizes) - 4 * rnd.randint(0, 24)
                elif edge:
                    v = rnd.randint(fl.lo, min(fl.hi, fl.lo + 8))
                    if fl.name in ("k", "row_bytes", "stride", "n"):
                        v = 8 * rnd.randint(1, 4)
                else:
                    v = (rnd.randint(fl.lo, min(fl.hi, fl.lo + 16)) if r < 0.3 else
                         rnd.randint(fl.lo, fl.hi) if r < 0.6 else
                         rnd.choice([0, 4, 8, 16, 64, 256, 1024]))
                f[fl.name] = max(fl.lo, min(fl.hi, v))
            names = [x for x in f if x in addr_fields]
            if edge and len(names) >= 2 and rnd.random() < 0.6:
                # put one range right after / before / across another one
                rs, ws = footprint(Instr.make(op, **f))
                lens = [b - a for _, a, b in rs + ws] or [4]
                x, y = rnd.sample(names, 2)
                v = f[x] + rnd.choice([1, -1]) * (rnd.choice(lens) + rnd.choice([0, 0, 4, -4]))
                fl = next(fl for fl in FORMATS[op] if fl.name == y)
                f[y] = max(fl.lo, min(fl.hi, v))
            w = encode(Instr.make(op, **f))
            if rnd.random() < 0.05:
                w |= 1 << rnd.randrange(8, 128)
            if rnd.random() < 0.03:
                w = (w & ~0xFF) | rnd.randrange(256)
            words.append(w)
        got = []
        keys = [f"{s}_{d}_{x}" for s in SPACES for d in "rw" for x in ("v", "lo", "hi")]

        async def tb(ctx, words=words, got=got, dut=dut, keys=keys, rnd=rnd):
            for w in words:
                if rnd.random() < 0.1:  # a check interrupted by a new start
                    ctx.set(dut.word, rnd.choice(words))
                    ctx.set(dut.start, 1)
                    await ctx.tick()
                    ctx.set(dut.start, 0)
                    for _ in range(rnd.randrange(12)):
                        await ctx.tick()
                ctx.set(dut.word, w)
                ctx.set(dut.start, 1)
                await ctx.tick()
                ctx.set(dut.start, 0)
                assert not ctx.get(dut.done)
                while not ctx.get(dut.done):
                    await ctx.tick()
                got.append((ctx.get(dut.code),
                            {k: ctx.get(getattr(dut.hull, k)) for k in keys}))

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(tb)
        sim.run()
        dev = golden.GoldenDevice(cfg)  # ACC = 0: parameter values are valid

        seen = {}
        for w, (code, hull) in zip(words, got):
            seen[code] = seen.get(code, 0) + 1
            exp = _golden_code(dev, w)
            assert code == exp, (hex(w), code, exp)
            if exp:
                continue
            ins = decode(w)
            reads, writes = footprint(ins)
            for d, lst in (("r", reads), ("w", writes)):
                for s in SPACES:
                    sel = [(a, b) for sp, a, b in lst if sp == s]
                    if (ins.op.name.startswith("GEMM") and d == "r" and s == "ACC"
                            and not ins.accumulate):
                        sel = []
                    if sel:
                        exp_h = (1, *hull_blocks(sizes[SPACES.index(s)], min(a for a, _ in sel),
                                                 max(b for _, b in sel)))
                        assert (hull[f"{s}_{d}_v"], hull[f"{s}_{d}_lo"],
                                hull[f"{s}_{d}_hi"]) == exp_h, (ins, s, d)
                    else:
                        assert hull[f"{s}_{d}_v"] == 0, (ins, s, d)
        # every check was reached often enough to matter
        for c in (0, ErrorCode.INVALID_OPCODE, ErrorCode.BAD_OPERAND, ErrorCode.MISALIGNED,
                  ErrorCode.ADDRESS_RANGE):
            assert seen.get(int(c), 0) >= 20, (cfg_name, seen)


def test_checker_range_ends_at_space_end():
    """InstrChecker on instructions one of whose ranges ends exactly at its space's end, one
    alignment unit before or after it (off-by-one errors in every range length), against
    golden's error code."""
    import random

    from amaranth.sim import Simulator
    from tritium.rtl.controller import InstrChecker

    from tritium.isa import FORMATS, ErrorCode, decode, encode, footprint

    for cfg_name in CONFIGS:
        cfg = PRESETS[cfg_name]
        rnd = random.Random(2)
        sizes = {"DRAM": cfg.dev_mem_bytes, "SPAD": cfg.spad_bytes, "ACC": cfg.acc_bytes}
        unit = max(4, cfg.bus_bytes)
        ops = [op for op in Op if op in (Op.LOAD, Op.STORE) or op.name.startswith(("GEMM", "V"))]
        words = []
        while len(words) < 600:
            op = rnd.choice(ops)
            f = {fl.name: 0 for fl in FORMATS[op]}
            for name in ("rows", "m"):
                if name in f:
                    f[name] = rnd.randint(1, 9)
            for name in ("n", "k", "row_bytes"):
                if name in f:
                    f[name] = 8 * rnd.randint(1, 6)
            if "stride" in f:
                f["stride"] = f["row_bytes"] + unit * rnd.randint(0, 3)
            if "space" in f:
                f["space"] = rnd.randint(0, 1)
            if op == Op.GEMM_LUT:
                f["bits"] = rnd.randint(1, max(1, cfg.lut_max_bits))
            if op == Op.VREQ:
                f["per_channel"] = rnd.randint(0, 1)
            if "accumulate" in f:
                f["accumulate"] = rnd.randint(0, 1)
            addr = [n for n in ("dram", "loc", "a", "w", "c", "src", "src2", "dst", "param")
                    if n in f]
            for n in addr:  # disjoint operands, spread over their spaces
                f[n] = unit * rnd.randint(0, 64) + (256 * addr.index(n) if n != "dram" else 0)
            reads, writes = footprint(Instr.make(op, **f))
            sp, start, end = rnd.choice(reads + writes)
            names = [n for n in addr if f[n] == start]
            if not names:
                continue
            v = start + sizes[sp] - end + rnd.choice([-unit, 0, unit])
            if v < 0 or v >= 1 << 20:
                continue
            f[rnd.choice(names)] = v
            words.append(encode(Instr.make(op, **f)))
        dut = InstrChecker(cfg)
        got = []

        async def tb(ctx, words=words, got=got, dut=dut):
            for w in words:
                ctx.set(dut.word, w)
                ctx.set(dut.start, 1)
                await ctx.tick()
                ctx.set(dut.start, 0)
                while not ctx.get(dut.done):
                    await ctx.tick()
                got.append(ctx.get(dut.code))

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(tb)
        sim.run()
        dev = golden.GoldenDevice(cfg)
        seen = {}
        for w, code in zip(words, got):
            exp = _golden_code(dev, w)
            assert code == exp, (cfg_name, decode(w), code, exp)
            seen[exp] = seen.get(exp, 0) + 1
        assert seen.get(0, 0) >= 100 and seen.get(int(ErrorCode.ADDRESS_RANGE), 0) >= 100, seen


# ----------------------------------------------------------------------------- RTL
@pytest.mark.parametrize("cfg_name", CONFIGS)
def test_top_random_programs(cfg_name):
    run = _run(cfg_name, "random_programs", seed=1000, nvec=N_RANDOM[cfg_name],
               extra={"n_ops": 20, "pause": 0.3})
    assert run.report["programs"] == N_RANDOM[cfg_name]


@pytest.mark.parametrize("cfg_name", CONFIGS)
def test_top_faults(cfg_name):
    run = _run(cfg_name, "faults", seed=7)
    expect = {"invalid_opcode", "address_range", "bus_error_read", "bus_error_write",
              "bus_error_before_invalid_opcode", "bus_error_fetch", "watchdog",
              "misaligned_pc", "bad_operand_param",
              "bad_operand_per_channel",
              "reset_while_running"}
    if not PRESETS[cfg_name].has("lut"):
        expect.add("engine_absent")
    assert set(run.report["faults"]) == expect


def _gemm_image(cfg, engine: str, m: int, k: int, n: int, bits: int, seed: int):
    from tritium import numerics as nx

    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    if engine == "systolic":
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
        wdev = w.view(np.uint8)
    elif engine == "ternary":
        w = rng.integers(-1, 2, (n, k), dtype=np.int8)
        wdev = nx.pack_ternary(w)
    else:
        lo = -(1 << (bits - 1))
        w = rng.integers(lo, -lo, (n, k), dtype=np.int8)
        wdev = nx.pack_lut_weights(w, bits)
    img = MemoryImage(cfg, prog_bytes=16 * 4096)
    pa = img.place(a, "a")
    pw = img.place(np.ascontiguousarray(wdev).reshape(-1), "w")
    pc = img.alloc(4 * m * n, "c")
    prog = tiled_gemm(cfg, a=pa, w=pw, c=pc, m=m, k=k, n=n, engine=engine, bits=bits)
    img.set_program(prog + [Instr.make(Op.HALT)])
    assert weight_row_bytes(engine, k, bits) * n == np.asarray(wdev).size
    return img, prog


def _run_images(cfg_name: str, images: dict, tmp_path: Path, seed: int = 3, pause=0.3):
    paths = []
    for name, img in images.items():
        p = tmp_path / f"{name}.npy"
        np.save(p, img.mem)
        paths.append(str(p))
    run = _run(cfg_name, "program_file", seed=seed,
               extra={"programs": paths, "pause": pause})
    res = json.loads(run.report["results"])
    outs = {n: np.load(str(tmp_path / f"{n}.out.npy")) for n in images}
    return res, outs


@pytest.mark.parametrize("cfg_name", CONFIGS)
def test_top_kernels(cfg_name, tmp_path):
    """Tiled GEMM larger than the scratchpad (every engine), MLGRU step, attention step."""
    cfg = PRESETS[cfg_name]
    images = {}
    for engine in cfg.engines:
        bits = 2 if engine == "lut" else 0
        m, k, n = kernels_lm.gemm_shape_over_spad(cfg, engine, bits)
        images[f"gemm_{engine}"], _ = _gemm_image(cfg, engine, m, k, n, bits, seed=5)
    images["mlgru"] = kernels_lm.mlgru_demo_image(cfg, seed=11)
    if cfg.has("systolic"):  # attention multiplies int8 x int8 (GEMM_I8)
        images["attention"] = kernels_lm.attention_demo_image(cfg, seed=12)
    res, outs = _run_images(cfg_name, images, tmp_path)
    for name, img in images.items():
        exp = golden.run(cfg, img.mem)
        assert res[f"{name}.npy"]["status"] == "done", (name, res[f"{name}.npy"])
        diff = np.flatnonzero(outs[name] != exp.mem)
        assert diff.size == 0, f"{name}: {diff.size} bytes differ, first at {diff[0]:#x}"


def test_top_overlap_bench(tmp_path):
    """Double-buffered tiled GEMM on base: DMA and compute overlap (OVERLAP CSR > 0);
    utilisation per unit written to build/bench/top_overlap_base.json."""
    from tritium.sim.build import build_root

    cfg = PRESETS["base"]
    engine = "systolic"
    m, k, n = kernels_lm.gemm_shape_over_spad(cfg, engine, 0)
    img, prog = _gemm_image(cfg, engine, m, k, n, 0, seed=21)
    res, outs = _run_images("base", {"bench": img}, tmp_path, seed=4, pause=0.0)
    r = res["bench.npy"]
    assert r["status"] == "done"
    assert (outs["bench"] == golden.run(cfg, img.mem).mem).all()
    c = r["counters"]
    total = c["cycles"]
    util = {u: c[f"{u}_busy"] / total for u in ("load", "store", "systolic", "ternary",
                                                 "lut", "vector")}
    report = {
        "config": "base", "kernel": f"tiled_gemm {engine} m={m} k={k} n={n}",
        "tiling": plan_gemm(cfg, m, k, n, engine).__dict__, "instructions": len(prog) + 1,
        "cycles": total, "overlap_cycles": c["overlap"], "overlap_frac": c["overlap"] / total,
        "busy": {u: c[f"{u}_busy"] for u in util}, "stall": {u: c[f"{u}_stall"] for u in util},
        "utilisation": util, "macs_per_cycle": m * k * n / total,
    }
    out = build_root() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "top_overlap_base.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    assert c["overlap"] > 0
    assert c["load_busy"] > 0 and c["systolic_busy"] > 0
