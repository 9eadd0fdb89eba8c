"""cocotb parts for Amaranth ``lib.stream`` interfaces: driver, monitor/sink, scoreboard.

An Amaranth stream member ``foo`` of a component becomes the Verilog ports ``foo__valid``,
``foo__ready`` and ``foo__payload`` (the payload flattened to one vector, ``lib.data`` layouts
packed LSB first). The classes here drive and watch those ports with the same cycle discipline:

* drive after ``RisingEdge(clk)``, sample the handshake in ``ReadOnly()`` of the same cycle;
  a transfer happens on the next rising edge when ``valid`` and ``ready`` were both high;
* a driver holds ``valid`` and the payload until the transfer (stream rule), and inserts idle
  cycles from a seeded :class:`random.Random` with probability ``idle_prob``;
* a sink drives ``ready`` low with probability ``stall_prob`` per cycle (backpressure).

Example (inside a cocotb test)::

    from tritium.sim.stream import (StreamDriver, StreamSink, Scoreboard, clock_and_reset,
                                    pack_vec, unpack_vec)

    await clock_and_reset(dut)
    rng = random.Random(seed)
    drv = StreamDriver(dut, "act", rng=rng, idle_prob=0.3)
    sb = Scoreboard("res")
    sink = StreamSink(dut, "res", rng=rng, stall_prob=0.3,
                      callback=lambda w: sb.observe(unpack_vec(w, 4, 32)))
    for vec in vectors:
        drv.send(pack_vec(vec, 8))
        sb.expect(model(vec))
    await drv.wait_idle()
    await sb.wait_done(timeout_cycles=10_000, clk=dut.clk)
    sb.report()                                 # raises unless every expected item was seen

Multi-element payloads: :func:`pack_vec` / :func:`unpack_vec` convert between a list of (signed)
integers and the flat payload integer, element 0 in the least significant bits.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, ReadOnly, RisingEdge

__all__ = [
    "CycleCounter",
    "Scoreboard",
    "ScoreboardError",
    "StreamDriver",
    "StreamMonitor",
    "StreamSink",
    "clock_and_reset",
    "pack_vec",
    "unpack_vec",
]


# --------------------------------------------------------------------------- packing
def pack_vec(values: Iterable[int], bits: int) -> int:
    """Pack integers (signed or unsigned) into one word, element 0 in the low ``bits`` bits.

    Raises ``ValueError`` when a value does not fit in ``bits`` bits (signed or unsigned).
    """
    word = 0
    mask = (1 << bits) - 1
    lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
    for i, v in enumerate(values):
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"element {i} = {v} does not fit in {bits} bits")
        word |= (v & mask) << (i * bits)
    return word


def unpack_vec(word: int, n: int, bits: int, signed: bool = True) -> list[int]:
    """Split ``word`` into ``n`` elements of ``bits`` bits (element 0 = low bits)."""
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    out = []
    for i in range(n):
        v = (int(word) >> (i * bits)) & mask
        if signed and v & sign:
            v -= 1 << bits
        out.append(v)
    return out


# --------------------------------------------------------------------------- clock / reset
async def clock_and_reset(
    dut: Any, period_ns: float = 10, cycles: int = 3, clk: str = "clk", rst: str = "rst"
) -> Clock:
    """Start a clock on ``dut.<clk>`` and hold ``dut.<rst>`` high for ``cycles`` cycles.

    Returns once reset is released (just after a rising edge).
    """
    clock = Clock(getattr(dut, clk), period_ns, unit="ns")
    clock.start()
    r = getattr(dut, rst)
    r.value = 1
    await ClockCycles(getattr(dut, clk), cycles)
    r.value = 0
    await RisingEdge(getattr(dut, clk))
    return clock


class CycleCounter:
    """Counts rising edges of ``clk`` from its creation; ``.now`` is the current cycle number.

    Drivers and monitors stamp each transfer with it (``StreamDriver.sent_cycles`` etc.).
    """

    def __init__(self, clk: Any):
        self.now = 0
        self._task = cocotb.start_soon(self._run(clk))

    async def _run(self, clk: Any) -> None:
        while True:
            await RisingEdge(clk)
            self.now += 1

    def stop(self) -> None:
        self._task.cancel()


def _port(dut: Any, prefix: str, member: str) -> Any:
    name = f"{prefix}__{member}"
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(
            f"DUT has no port {name!r}: is {prefix!r} an Amaranth stream member of the top?"
        ) from None


# --------------------------------------------------------------------------- driver
class StreamDriver:
    """Drives ``<prefix>__valid`` / ``<prefix>__payload`` of a stream into the DUT.

    Parameters
    ----------
    dut
        cocotb DUT handle.
    prefix
        Stream member name (``"act"`` drives ``act__valid`` etc.).
    clk
        Clock handle (default ``dut.clk``).
    rng
        Source of idle cycles (seed it!); default ``random.Random(0)``.
    idle_prob
        Probability of an idle cycle (``valid`` low) before presenting each item. May be changed
        at any time (``drv.idle_prob = 0``).
    counter
        Optional :class:`CycleCounter`; when given, :attr:`sent_cycles` records the cycle of
        every transfer.

    Attributes
    ----------
    sent : int
        Items transferred so far.
    sent_cycles : list of int
        Cycle numbers (from ``counter``) of the transfers.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str,
        *,
        clk: Any = None,
        rng: random.Random | None = None,
        idle_prob: float = 0.0,
        counter: CycleCounter | None = None,
    ):
        self.prefix = prefix
        self.clk = clk if clk is not None else dut.clk
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.payload = _port(dut, prefix, "payload")
        self.rng = rng if rng is not None else random.Random(0)
        self.idle_prob = idle_prob
        self.counter = counter
        self.sent = 0
        self.sent_cycles: list[int] = []
        self._queue: deque[int] = deque()
        self._current: int | None = None
        self._idle = Event()
        self._idle.set()
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, payload: int) -> None:
        """Queue one payload (an int, e.g. from :func:`pack_vec`); returns at once."""
        self._queue.append(int(payload))
        self._idle.clear()

    def send_all(self, payloads: Iterable[int]) -> None:
        for p in payloads:
            self.send(p)

    @property
    def pending(self) -> int:
        """Items queued or presented but not yet transferred."""
        return len(self._queue) + (self._current is not None)

    async def wait_idle(self) -> None:
        """Wait until every queued item has been transferred."""
        while not self._idle.is_set():
            await self._idle.wait()

    def stop(self) -> None:
        self._task.cancel()
        self.valid.value = 0

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            if (
                self._current is None
                and self._queue
                and (self.idle_prob <= 0 or self.rng.random() >= self.idle_prob)
            ):
                self._current = self._queue.popleft()
                self.payload.value = self._current
            self.valid.value = 1 if self._current is not None else 0
            await ReadOnly()
            if self._current is not None and int(self.ready.value) == 1:
                self._current = None
                self.sent += 1
                if self.counter is not None:
                    self.sent_cycles.append(self.counter.now)
                if not self._queue:
                    self._idle.set()


# --------------------------------------------------------------------------- monitor / sink
class StreamMonitor:
    """Watches a stream (drives nothing) and collects transferred payloads.

    Parameters
    ----------
    dut, prefix, clk
        As for :class:`StreamDriver`.
    callback
        Called with each payload (``int``) at the cycle of its transfer.
    counter
        Optional :class:`CycleCounter` for :attr:`cycles`.

    Attributes
    ----------
    items : list of int
        Payloads transferred so far (only kept when ``keep=True``, the default).
    cycles : list of int
        Transfer cycle numbers (with ``counter``).
    count : int
        Number of transfers.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str,
        *,
        clk: Any = None,
        callback: Callable[[int], None] | None = None,
        counter: CycleCounter | None = None,
        keep: bool = True,
    ):
        self.prefix = prefix
        self.clk = clk if clk is not None else dut.clk
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.payload = _port(dut, prefix, "payload")
        self.callback = callback
        self.counter = counter
        self.keep = keep
        self.items: list[int] = []
        self.cycles: list[int] = []
        self.count = 0
        self._got = Event()
        self._task = cocotb.start_soon(self._run())

    def _drive(self) -> None:
        """Hook for :class:`StreamSink`: set ``ready`` for this cycle."""

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self._drive()
            await ReadOnly()
            if int(self.valid.value) == 1 and int(self.ready.value) == 1:
                word = self.payload.value.to_unsigned()
                self.count += 1
                if self.keep:
                    self.items.append(word)
                if self.counter is not None:
                    self.cycles.append(self.counter.now)
                if self.callback is not None:
                    self.callback(word)
                self._got.set()

    async def wait_count(self, n: int) -> None:
        """Wait until ``n`` transfers have been seen in total."""
        while self.count < n:
            self._got.clear()
            await self._got.wait()

    def stop(self) -> None:
        self._task.cancel()


class StreamSink(StreamMonitor):
    """A :class:`StreamMonitor` that also drives ``<prefix>__ready`` with random backpressure.

    ``stall_prob`` is the probability that ``ready`` is low in a given cycle (0: always ready);
    it may be changed at any time.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str,
        *,
        clk: Any = None,
        rng: random.Random | None = None,
        stall_prob: float = 0.0,
        callback: Callable[[int], None] | None = None,
        counter: CycleCounter | None = None,
        keep: bool = True,
    ):
        self.rng = rng if rng is not None else random.Random(0)
        self.stall_prob = stall_prob
        _port(dut, prefix, "ready").value = 0
        super().__init__(
            dut, prefix, clk=clk, callback=callback, counter=counter, keep=keep
        )

    def _drive(self) -> None:
        stall = self.stall_prob > 0 and self.rng.random() < self.stall_prob
        self.ready.value = 0 if stall else 1

    def stop(self) -> None:
        super().stop()
        self.ready.value = 0


# --------------------------------------------------------------------------- scoreboard
class ScoreboardError(AssertionError):
    """An observed item differs from the expected one (or one is missing / unexpected)."""


def _as_list(x: Any) -> list[Any] | None:
    if isinstance(x, (str, bytes)):
        return None
    try:
        return [int(v) if hasattr(v, "__index__") else v for v in x]
    except TypeError:
        return None


class Scoreboard:
    """In-order comparison of observed items with expected ones.

    Items are ints or sequences (lists, tuples, NumPy arrays) of ints. :meth:`observe` raises
    :class:`ScoreboardError` at the first mismatch, with an element-wise diff; :meth:`report`
    (call at the end) raises unless every expected item was observed, and returns a summary.

    Attributes
    ----------
    checked_items : int
        Observed items that matched.
    checked_elements : int
        Elements in those items (1 per scalar item): the "vectors checked" figure.
    """

    def __init__(self, name: str, *, log: Any = None, max_diff: int = 16):
        self.name = name
        self.log = log if log is not None else cocotb.log
        self.max_diff = max_diff
        self.expected: deque[tuple[Any, Any]] = deque()
        self.checked_items = 0
        self.checked_elements = 0
        self.errors: list[str] = []
        self._drained = Event()
        self._drained.set()

    def expect(self, item: Any, tag: Any = None) -> None:
        """Queue the next expected item; ``tag`` (e.g. tile and row index) appears in diffs."""
        self.expected.append((item, tag))
        self._drained.clear()

    def expect_all(self, items: Iterable[Any], tag: Any = None) -> None:
        for i, it in enumerate(items):
            self.expect(it, tag if tag is None else (tag, i))

    def _fail(self, msg: str) -> None:
        full = f"scoreboard {self.name!r}: {msg}"
        self.errors.append(full)
        raise ScoreboardError(full)

    def observe(self, item: Any) -> None:
        """Compare ``item`` with the oldest expected item; raise on mismatch."""
        index = self.checked_items
        if not self.expected:
            self._fail(f"unexpected item #{index}: {item!r} (nothing more was expected)")
        exp, tag = self.expected.popleft()
        e_list, o_list = _as_list(exp), _as_list(item)
        where = f"item #{index}" + (f" ({tag})" if tag is not None else "")
        if e_list is not None and o_list is not None:
            if len(e_list) != len(o_list):
                self._fail(f"{where}: length {len(o_list)} observed, {len(e_list)} expected")
            bad = [i for i, (e, o) in enumerate(zip(e_list, o_list)) if e != o]
            if bad:
                rows = "\n".join(
                    f"    [{i}] observed {o_list[i]} expected {e_list[i]}"
                    f" (diff {o_list[i] - e_list[i]:+d})"
                    if isinstance(o_list[i], int) and isinstance(e_list[i], int)
                    else f"    [{i}] observed {o_list[i]!r} expected {e_list[i]!r}"
                    for i in bad[: self.max_diff]
                )
                more = f"\n    ... and {len(bad) - self.max_diff} more" if len(
                    bad
                ) > self.max_diff else ""
                self._fail(
                    f"{where}: {len(bad)} of {len(e_list)} elements differ\n{rows}{more}\n"
                    f"  observed {o_list}\n  expected {e_list}"
                )
            n = len(e_list)
        else:
            if exp != item:
                self._fail(f"{where}: observed {item!r}, expected {exp!r}")
            n = 1
        self.checked_items += 1
        self.checked_elements += n
        if not self.expected:
            self._drained.set()

    @property
    def outstanding(self) -> int:
        """Expected items not observed yet."""
        return len(self.expected)

    async def wait_done(self, timeout_cycles: int | None = None, clk: Any = None) -> None:
        """Wait until every expected item was observed (or ``timeout_cycles`` of ``clk``)."""
        if timeout_cycles is None:
            await self._drained.wait()
            return
        for _ in range(timeout_cycles):
            if self._drained.is_set():
                return
            await RisingEdge(clk)
        if not self._drained.is_set():
            self._fail(
                f"timeout after {timeout_cycles} cycles: {self.outstanding} expected item(s) "
                f"never observed; next expected {self.expected[0][0]!r}"
            )

    def report(self) -> dict[str, int]:
        """Raise unless every expected item was observed and nothing failed; return counts."""
        if self.errors:
            raise ScoreboardError(self.errors[0])
        if self.expected:
            exp, tag = self.expected[0]
            self._fail(
                f"{self.outstanding} expected item(s) never observed; first: {exp!r}"
                + (f" ({tag})" if tag is not None else "")
            )
        self.log.info(
            "scoreboard %r: all %d items (%d elements) matched",
            self.name,
            self.checked_items,
            self.checked_elements,
        )
        return {"items": self.checked_items, "elements": self.checked_elements}


def chunks(seq: Sequence[Any], n: int) -> list[Sequence[Any]]:
    """Split ``seq`` into consecutive pieces of length ``n`` (the last may be shorter)."""
    return [seq[i : i + n] for i in range(0, len(seq), n)]
