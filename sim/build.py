"""Verilog generation and cached Verilator builds for cocotb unit tests, driven from pytest.

Every RTL unit test follows the same three steps, so they live here once:

1. :func:`verilog_for` elaborates an Amaranth component for one :class:`AcceleratorConfig` and
   writes its Verilog into ``build/<name>-<cfg.hash>-<srchash>/`` at the repository root
   (``TRITIUM_BUILD_DIR`` overrides the root). ``srchash`` digests the source files of the
   ``tritium`` modules the component's module depends on (plus ``key_extra``), so editing the RTL
   gives a fresh directory while edits to unrelated units keep the cache.
2. :func:`run_cocotb` builds that Verilog once with Verilator (``cocotb_tools.runner``, cached in
   the same directory, guarded by an ``fcntl`` lock so two xdist workers never build the same
   directory at once) and runs a cocotb test module on it.
3. Test parameters (config, seed, number of vectors, anything else) travel to the cocotb side as
   environment variables; the testbench reads them with :func:`test_params` and may hand numbers
   back with :func:`tb_report` (e.g. how many output elements it checked). A failing cocotb test
   fails the pytest test, naming the failed cocotb tests and their messages.

Example
-------
``tests/test_rtl_foo.py`` (pytest side)::

    import pytest
    from pathlib import Path
    from tritium.config import preset
    from tritium.rtl.foo import Foo
    from tritium.sim.build import run_cocotb

    TB_DIR = Path(__file__).parent / "cocotb"

    @pytest.mark.parametrize("cfg_name", ["tiny", "base"])
    def test_foo_random(cfg_name):
        run = run_cocotb("tritium_foo", preset(cfg_name), Foo, "tb_foo", TB_DIR,
                         seed=1, nvec=2000, testcase="foo_random")
        assert run.report["checked"] >= 2000

``tests/cocotb/tb_foo.py`` (cocotb side)::

    import cocotb
    from tritium.sim.build import test_params, tb_report
    from tritium.sim.stream import StreamDriver, StreamSink, Scoreboard, clock_and_reset

    @cocotb.test()
    async def foo_random(dut):
        p = test_params()                     # p.cfg, p.seed, p.nvec, p.extra
        await clock_and_reset(dut)
        ...
        tb_report(checked=sb.checked_elements)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritium.config import AcceleratorConfig

__all__ = [
    "ENV_CONFIG",
    "ENV_EXTRA",
    "ENV_NVEC",
    "ENV_REPORT",
    "ENV_SEED",
    "REPO_ROOT",
    "CocotbFailure",
    "CocotbRun",
    "TestParams",
    "build_dir_for",
    "build_root",
    "run_cocotb",
    "source_hash",
    "tb_report",
    "test_params",
    "verilator_build",
    "verilog_for",
]

#: Repository root (the checkout holding ``rtl/``, ``sim/``, ``tests/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Environment variables carrying test parameters to the cocotb side.
ENV_CONFIG = "TRITIUM_TB_CONFIG"  # AcceleratorConfig.to_dict() as JSON
ENV_SEED = "TRITIUM_TB_SEED"  # integer seed for numpy / random
ENV_NVEC = "TRITIUM_TB_NVEC"  # number of vectors (meaning defined by the testbench)
ENV_REPORT = "TRITIUM_TB_REPORT"  # path of a JSON file the testbench writes numbers into
ENV_EXTRA = "TRITIUM_TB_EXTRA"  # JSON object of further parameters

ComponentFactory = Callable[[AcceleratorConfig], Any]


def build_root() -> Path:
    """Root of the build cache: ``$TRITIUM_BUILD_DIR`` or ``<repo>/build``."""
    return Path(os.environ.get("TRITIUM_BUILD_DIR", REPO_ROOT / "build")).resolve()


# --------------------------------------------------------------------------- source hashing
def _factory_module(factory: Any) -> types.ModuleType | None:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return inspect.getmodule(factory)


def _dependency_files(mod: types.ModuleType) -> set[Path]:
    """Source files of ``mod`` and of every ``tritium.*`` module it reaches through globals."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [mod]
    while todo:
        m = todo.pop()
        if m.__name__ in seen:
            continue
        seen.add(m.__name__)
        f = getattr(m, "__file__", None)
        if f:
            files.add(Path(f).resolve())
        for v in list(vars(m).values()):
            dep = v if isinstance(v, types.ModuleType) else inspect.getmodule(v)
            if dep is not None and dep.__name__.startswith("tritium.") and dep.__name__ not in seen:
                todo.append(dep)
    return files


def source_hash(factory: ComponentFactory, key_extra: str = "") -> str:
    """12-hex-digit digest of the RTL sources ``factory`` depends on, plus ``key_extra``.

    The files are the factory's own module, every ``tritium.*`` module reachable from its
    globals (``tritium.config``, sibling RTL units, ...) and, always, every file under ``rtl/``
    and ``fpga/``: a factory may import its component lazily inside a function (the units of
    :mod:`tritium.fpga.synth` do), which the globals do not show.
    """
    mod = _factory_module(factory)
    files = set((REPO_ROOT / "rtl").glob("*.py")) | set((REPO_ROOT / "fpga").glob("*.py"))
    if mod is not None and getattr(mod, "__file__", None):
        files |= _dependency_files(mod)
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    h.update(b"\0key\0" + key_extra.encode())
    return h.hexdigest()[:12]


def build_dir_for(
    name: str, cfg: AcceleratorConfig, factory: ComponentFactory, key_extra: str = ""
) -> Path:
    """``build/<name>-<cfg.hash>-<srchash>``: the cache directory of one unit build."""
    return build_root() / f"{name}-{cfg.hash}-{source_hash(factory, key_extra)}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``<path>.lock`` (blocks until the other holder is done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- Verilog
def verilog_for(
    component_factory: ComponentFactory,
    name: str,
    cfg: AcceleratorConfig,
    key_extra: str = "",
) -> Path:
    """Generate (once) the Verilog of ``component_factory(cfg)`` with top module ``name``.

    Parameters
    ----------
    component_factory
        Callable taking the config and returning a ``wiring.Component`` (a class such as
        ``SystolicArray`` works).
    name
        Top module name. It must differ from every port name (Verilator refuses a port named
        like its module), so prefer ``tritium_<unit>``.
    cfg
        The configuration; its :attr:`~AcceleratorConfig.hash` keys the cache.
    key_extra
        Extra text folded into the source hash (e.g. constructor options beyond ``cfg``).

    Returns
    -------
    Path
        ``build/<name>-<cfg.hash>-<srchash>/<name>.v``.
    """
    bdir = build_dir_for(name, cfg, component_factory, key_extra)
    vfile = bdir / f"{name}.v"
    if vfile.is_file():
        return vfile
    with _locked(bdir):
        if not vfile.is_file():
            from amaranth.back import verilog

            dut = component_factory(cfg)
            text = verilog.convert(dut, name=name)
            bdir.mkdir(parents=True, exist_ok=True)
            tmp = vfile.with_suffix(f".v.tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(vfile)
            (bdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    return vfile


def verilator_build(vfile: Path, name: str, *, waves: bool = False) -> Path:
    """Build ``vfile`` (top ``name``) with Verilator into ``<vfile dir>/sim_build[_waves]``.

    Cached: a stamp holding the Verilog's digest skips the build when nothing changed. Guarded by
    an exclusive file lock, so concurrent pytest-xdist workers wait for one build. The C++ is
    compiled with ``$TRITIUM_VERILATOR_OPT`` (default ``-O0``: a third less build time than
    Verilator's ``-Os``; unit tests spend their time in Python, not in the model; use ``-Os`` for
    long simulations).
    """
    from tritium.sim.toolchain import make_overrides, setup_verilator

    setup_verilator()
    opt = os.environ.get("TRITIUM_VERILATOR_OPT", "-O0")
    overrides = {**make_overrides(), "OPT_FAST": opt, "OPT_SLOW": opt, "OPT_GLOBAL": opt}
    flags = " ".join(f"{k}={v}" for k, v in overrides.items())
    makeflags = " ".join(x for x in (os.environ.get("MAKEFLAGS", ""), flags) if x)
    sdir = vfile.parent / ("sim_build_waves" if waves else "sim_build")
    stamp = sdir / ".tritium-built"
    digest = hashlib.sha256(vfile.read_bytes() + opt.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return sdir
    with _locked(sdir):
        if stamp.is_file() and stamp.read_text() == digest:
            return sdir
        from cocotb_tools.runner import get_runner

        runner = get_runner("verilator")
        log = vfile.parent / ("build_waves.log" if waves else "build.log")
        with _patched_env({"MAKEFLAGS": makeflags} if makeflags else {}):
            try:
                runner.build(
                    sources=[vfile],
                    hdl_toplevel=name,
                    build_dir=sdir,
                    build_args=["-Wno-fatal"],
                    always=False,
                    waves=waves,
                    log_file=log,
                )
            except (RuntimeError, SystemExit) as e:
                tail = "\n".join(log.read_text().splitlines()[-25:]) if log.is_file() else ""
                raise RuntimeError(
                    f"Verilator build of {vfile} failed ({e}); {log}:\n{tail}"
                ) from e
        stamp.write_text(digest)
    return sdir


# --------------------------------------------------------------------------- running tests
class CocotbFailure(AssertionError):
    """One or more cocotb tests failed; the message lists them with their failure text."""


@dataclass
class CocotbRun:
    """Outcome of :func:`run_cocotb`.

    Attributes
    ----------
    results_xml : Path
        The cocotb JUnit results file.
    tests, failed : int
        Number of cocotb tests run and failed (``failed`` is 0 when the call returns).
    report : dict
        What the testbench handed back through :func:`tb_report`.
    run_dir : Path
        Working directory of the simulation (logs, waves, results).
    """

    results_xml: Path
    tests: int
    failed: int
    report: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path(".")


def _parse_results(xml_file: Path) -> tuple[int, list[str]]:
    if not xml_file.is_file():
        raise CocotbFailure(f"simulation ended abnormally: no results file {xml_file}")
    root = ET.parse(xml_file).getroot()
    n = 0
    failures: list[str] = []
    for case in root.iter("testcase"):
        n += 1
        for tag in ("failure", "error"):
            for el in case.findall(tag):
                msg = (el.get("message") or "") + ("\n" + el.text if el.text else "")
                failures.append(f"{case.get('name')}: {msg.strip()}")
    return n, failures


@contextlib.contextmanager
def _patched_env(env: Mapping[str, str], path_entry: Path | None = None) -> Iterator[None]:
    """``cocotb_tools`` copies ``os.environ`` *over* ``extra_env`` and sets ``PYTHONPATH`` from
    ``sys.path``, so both are patched for the duration of the run."""
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    added = path_entry is not None and str(path_entry) not in sys.path
    if added:
        sys.path.insert(0, str(path_entry))
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if added:
            sys.path.remove(str(path_entry))


def run_cocotb(
    name: str,
    cfg: AcceleratorConfig,
    factory: ComponentFactory,
    test_module: str,
    test_dir: str | Path,
    *,
    seed: int = 0,
    nvec: int | None = None,
    testcase: str | list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_env: Mapping[str, str] | None = None,
    key_extra: str = "",
    waves: bool = False,
) -> CocotbRun:
    """Build (cached) and simulate ``factory(cfg)`` with the cocotb module ``test_module``.

    Parameters
    ----------
    name
        Top module name and cache-directory prefix (``tritium_<unit>``).
    cfg, factory, key_extra
        As for :func:`verilog_for`.
    test_module
        Name of the cocotb test module (e.g. ``"tb_systolic"``), found in ``test_dir``.
    test_dir
        Directory holding ``test_module`` (put on the simulator's ``PYTHONPATH``).
    seed
        Seed for the testbench (``TRITIUM_TB_SEED``) and cocotb's ``COCOTB_RANDOM_SEED``.
    nvec
        Number of vectors (``TRITIUM_TB_NVEC``); its meaning is the testbench's.
    testcase
        Run only these cocotb tests (default: all in the module).
    extra
        Further JSON-serialisable parameters (``TRITIUM_TB_EXTRA``, read via ``test_params``).
    extra_env
        Raw environment variables for the simulation.
    waves
        Dump ``dump.vcd`` in the run directory (separate, also cached, Verilator build).

    Returns
    -------
    CocotbRun

    Raises
    ------
    CocotbFailure
        When any cocotb test failed or the simulator died; the message lists the failures.
    """
    vfile = verilog_for(factory, name, cfg, key_extra)
    sdir = verilator_build(vfile, name, waves=waves)

    tc = [testcase] if isinstance(testcase, str) else list(testcase or [])
    tag = "-".join([test_module, *tc]) or test_module
    run_dir = vfile.parent / "runs" / f"{tag}-s{seed}-p{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results.xml"
    report = run_dir / "report.json"
    for f in (results, report):
        with contextlib.suppress(OSError):
            f.unlink()

    env = {
        ENV_CONFIG: json.dumps(cfg.to_dict()),
        ENV_SEED: str(seed),
        ENV_REPORT: str(report),
        ENV_EXTRA: json.dumps(dict(extra or {})),
        **({ENV_NVEC: str(nvec)} if nvec is not None else {ENV_NVEC: ""}),
        **dict(extra_env or {}),
    }
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    with _patched_env(env, Path(test_dir).resolve()):
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=name,
                hdl_toplevel_lang="verilog",
                build_dir=sdir,
                test_dir=run_dir,
                testcase=tc or None,
                seed=seed,
                results_xml=str(results),
                waves=waves,
                extra_env=env,
            )
        except SystemExit:  # cocotb_tools exits on failures under pytest; report them below
            pass
    n, failures = _parse_results(results)
    if failures:
        raise CocotbFailure(
            f"{len(failures)} of {n} cocotb test(s) failed in {test_module} "
            f"(config {cfg.name}, seed {seed}; run dir {run_dir}):\n" + "\n".join(failures)
        )
    if n == 0:
        raise CocotbFailure(f"no cocotb test ran from {test_module} (testcase={tc or 'all'})")
    data = json.loads(report.read_text()) if report.is_file() else {}
    return CocotbRun(results_xml=results, tests=n, failed=0, report=data, run_dir=run_dir)


# --------------------------------------------------------------------------- cocotb side
@dataclass(frozen=True)
class TestParams:
    """Parameters :func:`run_cocotb` passed to the testbench."""

    __test__ = False  # not a pytest test class

    cfg: AcceleratorConfig
    seed: int
    nvec: int | None
    extra: dict[str, Any]


def test_params() -> TestParams:
    """Read the parameters :func:`run_cocotb` put in the environment (call from cocotb)."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise RuntimeError(
            f"${ENV_CONFIG} is not set: run this testbench through tritium.sim.build.run_cocotb"
        )
    nvec = os.environ.get(ENV_NVEC, "")
    return TestParams(
        cfg=AcceleratorConfig.from_dict(json.loads(raw)),
        seed=int(os.environ.get(ENV_SEED, "0")),
        nvec=int(nvec) if nvec else None,
        extra=json.loads(os.environ.get(ENV_EXTRA, "") or "{}"),
    )


test_params.__test__ = False  # type: ignore[attr-defined]


def tb_report(**values: Any) -> None:
    """Merge JSON-serialisable ``values`` into the run's report (returned by :func:`run_cocotb`).

    Numbers reported by several cocotb tests of one run under the same key are summed when both
    are numbers; other values are overwritten.
    """
    path = os.environ.get(ENV_REPORT)
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.is_file() else {}
    for k, v in values.items():
        old = data.get(k)
        num = (int, float)
        if isinstance(old, num) and isinstance(v, num) and not isinstance(v, bool):
            data[k] = old + v
        else:
            data[k] = v
    p.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
