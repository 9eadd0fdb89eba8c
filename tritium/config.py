"""Accelerator configuration: one frozen, validated dataclass and its presets.

Every other part of tritium takes an :class:`AcceleratorConfig`: the RTL generators size their
arrays and memories from it, the golden model checks addresses against it, the compiler tiles
for it, and the build cache is keyed by :attr:`AcceleratorConfig.hash`.

Presets
-------
``tiny``
    For a Lattice iCE40 UP5K (5280 LCs, 8 SB_MAC16 DSPs, 128 KiB SPRAM; it fits and meets its
    24 MHz clock, see docs/fpga.md). Only ternary GEMMs (on the serial unit, ``ternary_serial``) and the
    vector unit (the serial one, ``vector_serial``) are present, the controller has no queues
    (``queue_depth=0``); device memory is the 128 KiB of SPRAM.
``base``
    Lattice ECP5-85F (~84k LUT4, 156 MULT18X18D, ~460 KiB of DP16KD block RAM): all three engines.
    The ternary engine has 8 lanes: its weights come through one SPAD port (one 8-byte word per
    cycle, 2 bytes per lane and beat), so 16 lanes wait for weights at least 4 cycles per beat
    and 8 lanes 2, for about the same throughput (``mmfree`` on the simulated SoC: 50,378 ->
    54,692 cycles per token, +8.6 %) at 10,600 fewer LUTs (the GEMM unit alone: 23,868 ->
    13,250; docs/fpga.md).
``large``
    Simulation only, for scaling studies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENGINES",
    "PRESETS",
    "AcceleratorConfig",
    "ConfigError",
    "preset",
]

#: Names of the compute engines, in the order of their GEMM opcodes.
ENGINES = ("systolic", "ternary", "lut")


class ConfigError(ValueError):
    """An :class:`AcceleratorConfig` field holds a value that breaks a rule.

    The message names the field, its value and the rule, e.g.
    ``ConfigError: sa_rows=0; sa_rows must be >= 1``.
    """


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one tritium accelerator instance.

    Sizes are in bytes unless the name says otherwise. Instances are immutable; derive variants
    with :meth:`replace`. Construction validates every field and raises :class:`ConfigError`.

    Attributes
    ----------
    name : str
        Preset or user name (not part of :attr:`hash`).
    engines : tuple of str
        Compute engines present, a subset of ``("systolic", "ternary", "lut")``. The vector unit
        is always present.
    sa_rows, sa_cols : int
        Systolic array shape: ``sa_rows`` activation rows (M) x ``sa_cols`` output columns (N).
    ternary_lanes : int
        Output channels the ternary engine computes in parallel.
    ternary_k : int
        Activations (K) the ternary engine consumes per cycle (multiple of 4: one packed byte
        holds 4 weights).
    ternary_serial : bool
        Run ``GEMM_TERN`` on the small serial unit (:class:`tritium.rtl.serial_gemm.
        SerialTernaryGemm`: one output element at a time, four activations per step, no engine,
        gathers or output FIFOs) instead of the ternary engine; ``ternary_lanes`` and
        ``ternary_k`` are then unused. Same results, fewer cycles' worth of hardware: for the
        smallest FPGAs. Needs ``queue_depth=0`` (the unit takes its SPAD reads a cycle after
        their acknowledge; with queues the SPAD answers later).
    vector_serial : bool
        Run the ``V*`` instructions on the small serial vector unit (:class:`tritium.rtl.
        serial_vector.SerialVectorUnit`: one element at a time, the 32x32 multiply in four
        cycles on one 16x16 multiplier, no pipeline, read FIFOs or table memory) instead of the
        pipelined :class:`tritium.rtl.vector.VectorUnit`. Same results; on iCE40 about 80% of
        its LUTs, a third of its flip-flops, 2 instead of 5 DSPs and no block RAM, at 5-10 cycles
        per output element: for the smallest FPGAs.
    lut_group : int
        LUT tensor core group size g (activations per table); tables have ``2**(g-1)`` entries.
    lut_max_bits : int
        Largest weight width (1..4) the LUT core accepts; weights are processed bit-serially.
    lut_lanes : int
        Output channels the LUT core looks up in parallel.
    vec_lanes : int
        Elements the vector unit processes per cycle.
    spad_bytes : int
        Activation/weight scratchpad (int8 data), bytes.
    spad_banks : int
        Scratchpad banks (power of two).
    acc_bytes : int
        Accumulator scratchpad (int32 data), bytes.
    bus_width : int
        AXI4 data width in bits (32, 64 or 128). DMA addresses, row lengths and strides must be
        multiples of ``bus_width // 8``.
    dev_mem_bytes : int
        Device memory (DRAM / on-chip RAM behind AXI) size in bytes.
    clock_mhz : float
        Target clock frequency.
    queue_depth : int
        Slots of each controller queue (load, store, compute), the executing instruction
        included: how far loads and stores run ahead of compute. Each slot holds a 128-bit
        instruction and its footprint, compared with every slot of the other queues.
        0: no queues; the controller runs one instruction at a time (no overlap of loads,
        stores and compute, no hazard tracking: the smallest controller).
    watchdog_cycles : int
        Reset value of the WATCHDOG CSR: the controller stops with ``ErrorCode.WATCHDOG`` when a
        program has run this many cycles without reaching HALT. The golden model applies the
        same number as a limit on retired instructions (never more than cycles), so every
        program the golden model finishes within the limit also finishes on the RTL when the
        limit exceeds its cycle count.
    """

    name: str = "custom"
    engines: tuple[str, ...] = ENGINES
    sa_rows: int = 4
    sa_cols: int = 4
    ternary_lanes: int = 8
    ternary_k: int = 8
    ternary_serial: bool = False
    vector_serial: bool = False
    lut_group: int = 4
    lut_max_bits: int = 4
    lut_lanes: int = 4
    vec_lanes: int = 4
    spad_bytes: int = 16 * 1024
    spad_banks: int = 2
    acc_bytes: int = 8 * 1024
    bus_width: int = 64
    dev_mem_bytes: int = 256 * 1024
    clock_mhz: float = 50.0
    queue_depth: int = 4
    watchdog_cycles: int = 1 << 20

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if isinstance(self.engines, list):
            object.__setattr__(self, "engines", tuple(self.engines))
        self._validate()

    def _fail(self, field: str, rule: str) -> None:
        raise ConfigError(f"{field}={getattr(self, field)!r}; {field} {rule}")

    def _validate(self) -> None:
        def check_int(field: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool):
                self._fail(field, "must be an integer")
            if v < lo:
                self._fail(field, f"must be >= {lo}")
            if hi is not None and v > hi:
                self._fail(field, f"must be <= {hi}")

        if not isinstance(self.name, str) or not self.name:
            self._fail("name", "must be a non-empty string")
        if not isinstance(self.engines, tuple) or not all(isinstance(e, str) for e in self.engines):
            self._fail("engines", "must be a tuple of engine names")
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            self._fail("engines", f"may only name {', '.join(ENGINES)} (unknown: {unknown})")
        if len(set(self.engines)) != len(self.engines):
            self._fail("engines", "must not repeat an engine")
        if not self.engines:
            self._fail("engines", "must name at least one engine")
        # keep a canonical order so equal sets hash equally
        object.__setattr__(self, "engines", tuple(e for e in ENGINES if e in self.engines))

        check_int("sa_rows", 1, 64)
        check_int("sa_cols", 1, 64)
        check_int("ternary_lanes", 1, 256)
        check_int("ternary_k", 4, 256)
        if self.ternary_k % 4:
            self._fail("ternary_k", "must be a multiple of 4 (4 packed weights per byte)")
        if not isinstance(self.ternary_serial, bool):
            self._fail("ternary_serial", "must be true or false")
        if not isinstance(self.vector_serial, bool):
            self._fail("vector_serial", "must be true or false")
        check_int("lut_group", 1, 8)
        if not _is_pow2(self.lut_group):
            self._fail("lut_group", "must be 1, 2, 4 or 8")
        check_int("lut_max_bits", 1, 4)
        check_int("lut_lanes", 1, 256)
        check_int("vec_lanes", 1, 64)
        if not _is_pow2(self.vec_lanes):
            self._fail("vec_lanes", "must be a power of two")
        check_int("bus_width", 32, 128)
        if self.bus_width not in (32, 64, 128):
            self._fail("bus_width", "must be 32, 64 or 128")
        check_int("spad_banks", 1, 64)
        if not _is_pow2(self.spad_banks):
            self._fail("spad_banks", "must be a power of two")
        check_int("spad_bytes", 1024, 1 << 20)
        if self.spad_bytes % (self.bus_bytes * self.spad_banks):
            self._fail("spad_bytes", "must be a multiple of bus_width/8 * spad_banks")
        check_int("acc_bytes", 256, 1 << 20)
        if self.acc_bytes % max(self.bus_bytes, 4):
            self._fail("acc_bytes", "must be a multiple of bus_width/8")
        check_int("dev_mem_bytes", 4096, 1 << 32)
        if not _is_pow2(self.dev_mem_bytes):
            self._fail("dev_mem_bytes", "must be a power of two")
        if not isinstance(self.clock_mhz, (int, float)) or isinstance(self.clock_mhz, bool):
            self._fail("clock_mhz", "must be a number")
        if not 1.0 <= float(self.clock_mhz) <= 1000.0:
            self._fail("clock_mhz", "must be in [1, 1000]")
        check_int("queue_depth", 0, 8)
        check_int("watchdog_cycles", 16, 1 << 31)
        if self.ternary_serial and self.queue_depth:
            # with queues the SPAD answers two or more cycles after a request; the serial
            # GEMM unit takes its activations in the cycle after the acknowledge
            self._fail("ternary_serial", "needs queue_depth=0 (SPAD read latency 1)")

    # ------------------------------------------------------------------ derived values
    @property
    def bus_bytes(self) -> int:
        """AXI data width in bytes; the DMA alignment unit."""
        return self.bus_width // 8

    def has(self, engine: str) -> bool:
        """True when ``engine`` is present in this configuration."""
        if engine not in ENGINES:
            raise ConfigError(f"engine={engine!r}; engine must be one of {', '.join(ENGINES)}")
        return engine in self.engines

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (engines as a list)."""
        d = dataclasses.asdict(self)
        d["engines"] = list(self.engines)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AcceleratorConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise ConfigError(f"unknown config field(s) {extra}; known fields: {sorted(names)}")
        d = dict(d)
        if "engines" in d:
            d["engines"] = tuple(d["engines"])
        return cls(**d)

    def replace(self, **changes: Any) -> AcceleratorConfig:
        """A validated copy with some fields changed (Gemmini-style variants)."""
        names = {f.name for f in dataclasses.fields(self)}
        extra = sorted(set(changes) - names)
        if extra:
            raise ConfigError(f"unknown config field(s) {extra}; known fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit digest of every field that changes the hardware (not ``name``).

        Used to key Verilator and synthesis build caches.
        """
        d = self.to_dict()
        d.pop("name")
        d["clock_mhz"] = float(d["clock_mhz"])
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def hash32(self) -> int:
        """The first 32 bits of :attr:`hash`, as exposed by the CONFIG_HASH CSR."""
        return int(self.hash[:8], 16)


PRESETS: dict[str, AcceleratorConfig] = {
    "tiny": AcceleratorConfig(
        name="tiny",
        engines=("ternary",),
        sa_rows=1,
        sa_cols=1,
        ternary_lanes=4,
        ternary_k=4,
        ternary_serial=True,
        vector_serial=True,
        lut_group=2,
        lut_max_bits=2,
        lut_lanes=1,
        vec_lanes=1,
        spad_bytes=8 * 1024,
        spad_banks=1,
        acc_bytes=1024,
        bus_width=32,
        dev_mem_bytes=128 * 1024,
        clock_mhz=24.0,
        queue_depth=0,
        watchdog_cycles=1 << 20,
    ),
    "base": AcceleratorConfig(
        name="base",
        engines=ENGINES,
        sa_rows=8,
        sa_cols=8,
        ternary_lanes=8,
        ternary_k=8,
        lut_group=4,
        lut_max_bits=4,
        lut_lanes=4,
        vec_lanes=8,
        spad_bytes=64 * 1024,
        spad_banks=4,
        acc_bytes=16 * 1024,
        bus_width=64,
        dev_mem_bytes=256 * 1024,
        clock_mhz=75.0,
        queue_depth=2,
        watchdog_cycles=1 << 22,
    ),
    "large": AcceleratorConfig(
        name="large",
        engines=ENGINES,
        sa_rows=16,
        sa_cols=16,
        ternary_lanes=64,
        ternary_k=64,
        lut_group=4,
        lut_max_bits=4,
        lut_lanes=32,
        vec_lanes=16,
        spad_bytes=256 * 1024,
        spad_banks=8,
        acc_bytes=64 * 1024,
        bus_width=128,
        dev_mem_bytes=16 * 1024 * 1024,
        clock_mhz=200.0,
        queue_depth=4,
        watchdog_cycles=1 << 24,
    ),
}

#: Target FPGA of each preset (``None``: simulation only).
PRESET_TARGETS: dict[str, str | None] = {
    "tiny": "iCE40 UP5K (iCEBreaker)",
    "base": "ECP5-85F (ULX3S)",
    "large": None,
}


def preset(name: str) -> AcceleratorConfig:
    """Return the preset called ``name`` (``tiny``, ``base`` or ``large``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"preset={name!r}; preset must be one of {', '.join(PRESETS)}"
        ) from None


def load_config(spec: str) -> AcceleratorConfig:
    """A preset name, or a path to a JSON file of :meth:`AcceleratorConfig.to_dict` fields.

    A JSON file may name a ``"base"`` preset and override fields of it.
    """
    if spec in PRESETS:
        return PRESETS[spec]
    try:
        with open(spec, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"config={spec!r}; config must be a preset ({', '.join(PRESETS)}) or a JSON file"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config={spec!r}; not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config={spec!r}; the JSON file must hold an object")
    base = d.pop("base", None)
    if base is not None:
        return preset(base).replace(**d)
    return AcceleratorConfig.from_dict(d)
