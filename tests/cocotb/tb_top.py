"""cocotb testbench of the accelerator top (TritiumTop) against tritium.golden.

Driven by tests/test_top.py through tritium.sim.build.run_cocotb; parameters arrive through
``test_params()`` (config, seed, nvec = number of random programs, extra).
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from tritium.firmware import kernels_lm
from tritium.firmware.image import MemoryImage
from tritium.firmware.randprog import random_program
from tritium.sim.axi import ErrorWindows, TopHarness
from tritium.sim.build import tb_report, test_params

from tritium import golden
from tritium.isa import FORMATS, INSTR_BYTES, ErrorCode, Instr, Op, footprint


def vector_self_overlap(instr: Instr) -> bool:
    """True for a vector instruction that may overwrite an operand before reading it.

    The VectorUnit streams its operands (reads run ahead of writes, in element order) and
    documents that results differ from the golden model (which reads everything first) when
    an element is written where the same instruction reads later: a write range overlapping
    an element-wise read range of the same length *ahead* of it (``src < dst < src_end``),
    or overlapping any other read range (tables, gamma, per-row scales). Random programs with
    such instructions are replaced by NOP (and counted)."""
    if not (FORMATS[instr.op] and instr.op.name.startswith("V")):
        return False
    reads, writes = footprint(instr)
    for ws, wa, wb in writes:
        for rs, ra, rb in reads:
            if ws != rs or not (wa < rb and ra < wb):
                continue
            if wb - wa == rb - ra:
                if ra < wa:
                    return True
            else:
                return True
    return False


def _nop_self_overlaps(rp) -> int:
    """Replace the instructions :func:`vector_self_overlap` flags by NOPs (in place)."""
    bad = [i for i, ins in enumerate(rp.instrs) if vector_self_overlap(ins)]
    for i in bad:
        rp.instrs[i] = Instr.make(Op.NOP)
    if bad:
        rp.image.set_program(rp.instrs)
    return len(bad)


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    bad = np.flatnonzero(a != b)
    return f"{bad.size} bytes differ, first at {bad[0]:#x}: rtl {a[bad[0]]} golden {b[bad[0]]}"


@cocotb.test()
async def csr_smoke(dut):
    """ID / VERSION / CONFIG_HASH / WATCHDOG reset values, PROG_BASE read-back, a HALT."""
    from tritium.isa import CSR, CSR_ID_VALUE, CSR_VERSION_VALUE

    p = test_params()
    cfg = p.cfg
    h = await TopHarness.create(dut, cfg, seed=p.seed)
    assert await h.csr.read(CSR.ID) == CSR_ID_VALUE
    assert await h.csr.read(CSR.VERSION) == CSR_VERSION_VALUE
    assert await h.csr.read(CSR.CONFIG_HASH) == cfg.hash32
    assert await h.csr.read(CSR.WATCHDOG) == cfg.watchdog_cycles
    await h.csr.write(CSR.PROG_BASE, 0x1230)
    assert await h.csr.read(CSR.PROG_BASE) == 0x1230
    img = _prog(cfg, [Instr.make(Op.NOP), Instr.make(Op.HALT)])
    res = await h.run_program(img.mem, timeout_cycles=10_000)
    assert res.status == "done", res
    assert res.counters["instret"] == 2, res.counters
    tb_report(smoke=1)


@cocotb.test()
async def random_programs(dut):
    """``nvec`` seeded random valid programs, final memory == golden byte for byte."""
    p = test_params()
    cfg = p.cfg
    n_ops = int(p.extra.get("n_ops", 20))
    h = await TopHarness.create(dut, cfg, seed=p.seed, pause=float(p.extra.get("pause", 0.3)))
    ran, nopped, seed, cycles = 0, 0, p.seed, 0
    t0 = time.time()
    while ran < p.nvec:
        rp = random_program(cfg, seed, n_ops=n_ops)
        seed += 1
        nopped += _nop_self_overlaps(rp)
        exp = golden.run(cfg, rp.image.mem)
        res = await h.run_program(rp.image.mem, timeout_cycles=3_000_000)
        assert res.status == "done", (
            f"seed {seed - 1}: status {res.status}, error {res.error.name} at {res.error_pc:#x}"
        )
        assert res.counters["instret"] == exp.instret, (seed - 1, res.counters, exp.instret)
        if not (res.mem == exp.mem).all():
            raise AssertionError(f"seed {seed - 1}: {_diff(res.mem, exp.mem)}")
        ran += 1
        cycles += res.counters["cycles"]
    dut._log.info("%d programs (%d vector self-overlaps replaced by NOP), %d cycles, %.1f s",
                  ran, nopped, cycles, time.time() - t0)
    tb_report(programs=ran, nopped=nopped, cycles=cycles)


def _prog(cfg, instrs: list[Instr], prog_bytes: int = 1024) -> MemoryImage:
    img = MemoryImage(cfg, prog_bytes=prog_bytes)
    img.set_program(instrs)
    return img


async def _expect_fault(h: TopHarness, img: MemoryImage, code: ErrorCode, pc: int,
                        **kw) -> None:
    cfg = h.cfg
    try:
        golden.run(cfg, img.mem)
    except golden.DeviceError as e:
        if code != ErrorCode.BUS_ERROR:
            assert (e.code, e.pc) == (code, pc), (e.code, e.pc, code, pc)
    else:
        assert code in (ErrorCode.BUS_ERROR,), "golden model did not fault"
    res = await h.run_program(img.mem, timeout_cycles=200_000, **kw)
    assert res.status == "error", f"expected {code.name}, got status {res.status}"
    assert res.error == code, f"expected {code.name}, got {res.error.name}"
    assert res.error_pc == pc, f"{code.name}: ERROR_PC {res.error_pc:#x}, expected {pc:#x}"


async def _recover(h: TopHarness, seed: int, random: bool = False) -> None:
    """After a fault: CTRL.RESET, then a program (an MLGRU step, or a random program) must run
    correctly."""
    await h.reset_device()
    if random:
        rp = random_program(h.cfg, seed, n_ops=8)
        _nop_self_overlaps(rp)
        mem = rp.image.mem
    else:
        mem = kernels_lm.mlgru_demo_image(h.cfg, seed=seed).mem
    exp = golden.run(h.cfg, mem)
    res = await h.run_program(mem)
    assert res.status == "done", (res.status, res.error, res.error_pc)
    assert (res.mem == exp.mem).all(), _diff(res.mem, exp.mem)


@cocotb.test()
async def faults(dut):
    """Invalid opcode, address range, SLVERR (read and write), watchdog: STATUS=error with
    the right ERROR/ERROR_PC, then CTRL.RESET and a correct run."""
    p = test_params()
    cfg = p.cfg
    bus = cfg.bus_bytes
    bad_lo = cfg.dev_mem_bytes - 8192
    errs = ErrorWindows(read=[(bad_lo, bad_lo + 4096)], write=[(bad_lo + 4096, bad_lo + 8192)])
    h = await TopHarness.create(dut, cfg, seed=p.seed, errors=errs)
    checked = []
    ld = {"space": 0, "rows": 1, "row_bytes": 4 * bus, "loc": 0, "dram": 2048}

    # 1. invalid opcode (0x00 after two valid instructions)
    img = _prog(cfg, [Instr.make(Op.LOAD, **ld), Instr.make(Op.NOP)])
    await _expect_fault(h, img, ErrorCode.INVALID_OPCODE, 2 * INSTR_BYTES)
    checked.append("invalid_opcode")
    await _recover(h, p.seed + 1)

    # 2. out-of-range DMA address
    img = _prog(cfg, [Instr.make(Op.LOAD, **ld), Instr.make(Op.NOP),
                      Instr.make(Op.STORE, **{**ld, "dram": cfg.dev_mem_bytes - bus}),
                      Instr.make(Op.HALT)])
    await _expect_fault(h, img, ErrorCode.ADDRESS_RANGE, 2 * INSTR_BYTES)
    checked.append("address_range")
    await _recover(h, p.seed + 2)

    # 3. SLVERR on a DMA read
    img = _prog(cfg, [Instr.make(Op.NOP), Instr.make(Op.LOAD, **{**ld, "dram": bad_lo + 64}),
                      Instr.make(Op.HALT)])
    await _expect_fault(h, img, ErrorCode.BUS_ERROR, INSTR_BYTES)
    checked.append("bus_error_read")
    await _recover(h, p.seed + 3)

    # 4. SLVERR on a DMA write (a long store: the error comes back mid-transfer)
    img = _prog(cfg, [Instr.make(Op.LOAD, **ld),
                      Instr.make(Op.STORE, space=0, rows=2, row_bytes=1024, loc=0,
                                 dram=bad_lo + 2048, stride=2048),
                      Instr.make(Op.HALT)])
    await _expect_fault(h, img, ErrorCode.BUS_ERROR, INSTR_BYTES)
    checked.append("bus_error_write")
    await _recover(h, p.seed + 4)

    # 4b. the same store, then an invalid opcode: the front end checks the younger word (and
    # finds it bad) while the store still runs; the store's fault is the one to report
    img = _prog(cfg, [Instr.make(Op.LOAD, **ld),
                      Instr.make(Op.STORE, space=0, rows=2, row_bytes=1024, loc=0,
                                 dram=bad_lo + 2048, stride=2048)])
    await _expect_fault(h, img, ErrorCode.BUS_ERROR, INSTR_BYTES)
    checked.append("bus_error_before_invalid_opcode")
    await _recover(h, p.seed + 4)

    # 5. SLVERR on instruction fetch (JUMP into the error window)
    img = _prog(cfg, [Instr.make(Op.JUMP, target=bad_lo + 256)])
    await _expect_fault(h, img, ErrorCode.BUS_ERROR, bad_lo + 256)
    checked.append("bus_error_fetch")
    await _recover(h, p.seed + 5)

    # 6. no HALT: a JUMP loop ends in the watchdog
    img = _prog(cfg, [Instr.make(Op.NOP), Instr.make(Op.JUMP, target=INSTR_BYTES)])
    res = await h.run_program(img.mem, timeout_cycles=200_000, watchdog=5000)
    assert res.status == "error", res.status
    assert res.error == ErrorCode.WATCHDOG, res.error
    assert res.error_pc == INSTR_BYTES, hex(res.error_pc)
    checked.append("watchdog")
    await h.csr.write(0x2C, cfg.watchdog_cycles)
    await _recover(h, p.seed + 6)

    # 7. misaligned pc via JUMP, engine absent / bad operand where applicable
    img = _prog(cfg, [Instr.make(Op.JUMP, target=INSTR_BYTES + 4)])
    await _expect_fault(h, img, ErrorCode.MISALIGNED, INSTR_BYTES + 4)
    checked.append("misaligned_pc")
    bad_gemm = Instr.make(Op.GEMM_LUT, m=1, k=8, n=1, bits=1)
    if not cfg.has("lut"):
        img = _prog(cfg, [Instr.make(Op.NOP), bad_gemm, Instr.make(Op.HALT)])
        await _expect_fault(h, img, ErrorCode.ENGINE_ABSENT, INSTR_BYTES)
        checked.append("engine_absent")
    # VREQ with a negative M0 in ACC: BAD_OPERAND at execution time
    words = np.array([-5, 0], "<i4")
    img = MemoryImage(cfg, prog_bytes=1024)
    par = img.place(words)
    img.set_program([
        Instr.make(Op.LOAD, space=1, rows=1, row_bytes=max(8, bus), loc=0, dram=par),
        Instr.make(Op.VREQ, rows=1, n=4, src=64, dst=0, param=0),
        Instr.make(Op.HALT),
    ])
    await _expect_fault(h, img, ErrorCode.BAD_OPERAND, INSTR_BYTES)
    checked.append("bad_operand_param")
    # per-channel VREQ: valid M0s, the third of four shifts out of range (the words are read
    # back to back; the last-but-one decides)
    words = np.array([1 << 20, 3, 1 << 30, 7, 0, -31, 31, 30], "<i4")
    img = MemoryImage(cfg, prog_bytes=1024)
    par = img.place(words)
    img.set_program([
        Instr.make(Op.LOAD, space=1, rows=1, row_bytes=32, loc=0, dram=par),
        Instr.make(Op.VREQ, rows=1, n=4, src=64, dst=0, param=0, per_channel=1),
        Instr.make(Op.HALT),
    ])
    await _expect_fault(h, img, ErrorCode.BAD_OPERAND, INSTR_BYTES)
    checked.append("bad_operand_per_channel")
    await _recover(h, p.seed + 7)

    # 8. reset while a long program runs, then a correct run
    rp = random_program(cfg, p.seed + 8, n_ops=8)
    h.load(rp.image.mem)
    await h.start()
    from cocotb.triggers import ClockCycles

    await ClockCycles(dut.clk, 700)
    await _recover(h, p.seed + 9, random=True)
    checked.append("reset_while_running")
    tb_report(faults=checked)


@cocotb.test()
async def program_file(dut):
    """Run the programs of a JSON list (``extra['programs']``: paths of ``.npy`` images)
    and write the final images and counters next to them (used by kernel and bench tests)."""
    p = test_params()
    cfg = p.cfg
    h = await TopHarness.create(dut, cfg, seed=p.seed, pause=float(p.extra.get("pause", 0.3)))
    out = {}
    for path in p.extra.get("programs", []):
        img = np.load(path)
        t0 = time.time()
        res = await h.run_program(img, timeout_cycles=int(p.extra.get("timeout", 20_000_000)))
        np.save(path.replace(".npy", ".out.npy"), res.mem)
        out[os.path.basename(path)] = {
            "status": res.status, "error": res.error.name, "error_pc": res.error_pc,
            "counters": res.counters, "wall_s": time.time() - t0,
        }
    tb_report(results=json.dumps(out))
