"""Banked on-chip scratchpads (SPAD int8 data, ACC int32 accumulators) with arbitrated ports.

The accelerator has two local memories (see :mod:`tritium.isa`, "Memory spaces"):

* ``SPAD``: ``cfg.spad_bytes`` bytes in ``cfg.spad_banks`` banks;
* ``ACC``: ``cfg.acc_bytes`` bytes (little-endian int32 elements) in one bank.

Both are built by :class:`BankedMemory` from :class:`amaranth.lib.memory.Memory` blocks whose
words are ``cfg.bus_bytes`` wide (one AXI beat), so a DMA beat is one memory access. Word ``i``
lives in bank ``i % banks`` at row ``i // banks`` (low-order interleaving: streaming clients
walk across banks, so two streams rarely collide for long).

Every client (DMA load/store units, GEMM sequencers, vector unit, parameter checker) owns one
:class:`MemPortSignature` port; the memory arbitrates them per bank, separately for reads and
writes (each bank is a simple dual-port memory: one read and one write per cycle), round-robin,
so no client starves another (fixed priority without queues, ``queue_depth == 0``, where only
one instruction's unit uses the memory at a time).
"""

from __future__ import annotations

from amaranth.hdl import (
    Cat,
    ClockSignal,
    Const,
    Instance,
    Module,
    Mux,
    ResetSignal,
    Signal,
    Value,
    signed,
)
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from tritium.config import AcceleratorConfig

__all__ = ["COLLISION_FREE", "YOSYS_COLLISION_FREE", "YOSYS_COLLISION_FREE_BLOCK", "BankedMemory", "MemPortSignature",
           "ReadSlice", "acc_latency", "acc_memory", "kept_lut", "kept_register", "late_select",
           "registered_product", "rr_arbiter", "spad_latency",
           "spad_memory"]

#: Attribute of a memory whose read port never reads the word its write port writes in the same
#: cycle (the owner ensures it); synthesis may then leave out the read-first / write-first
#: emulation around a block RAM (``YOSYS_COLLISION_FREE``).
COLLISION_FREE = "tritium_collision_free"
#: Yosys commands run after reading the design: mark those memories' read/write collisions as
#: don't-care (``RD_COLLISION_X_MASK``), which simulation never exercises.
YOSYS_COLLISION_FREE = (f"proc; memory_collect; "
                        f"setparam -set RD_COLLISION_X_MASK 1'1 a:{COLLISION_FREE}")
#: The same for the block RAM memories alone (those also marked ``ram_style = "block"``): the
#: ECP5 flows' choice, where the collision logic of the device memory's 128 block RAMs cost
#: thousands of flip-flops and LUTs and a LUT RAM mapped without it loses its cells' source
#: locations in critical-path reports.
YOSYS_COLLISION_FREE_BLOCK = (f"proc; memory_collect; setparam -set RD_COLLISION_X_MASK 1'1 "
                              f"a:{COLLISION_FREE} a:ram_style=block %i")


class MemPortSignature(wiring.Signature):
    """A word-wide request port into a :class:`BankedMemory` (client view).

    Protocol: the client holds ``en`` (and ``addr``/``we``/``wdata``/``wmask``) until the
    memory answers ``ack`` in the same cycle; a request takes effect in its ``ack`` cycle. The
    data of an acknowledged read (``we = 0``) is on ``rdata`` in the next cycle (the memory's
    ``latency``, 1; 2 where :class:`BankedMemory` registers its read data), flagged by
    ``rvalid``; reads answer in order. Writes update the bytes whose ``wmask`` bit is set. A
    read in the same cycle as a write to the same word sees the written bytes (write-first).

    Parameters
    ----------
    addr_bits : int
        Word-address width.
    word_bytes : int
        Bytes per word.

    Members
    -------
    addr : Out(addr_bits)
        Word address (byte address // word_bytes).
    en, we : Out(1)
        Request valid; write (1) or read (0).
    wdata : Out(8 * word_bytes)
    wmask : Out(word_bytes)
        Byte enables of a write.
    ack : In(1)
        The request is accepted this cycle.
    rvalid : In(1)
        ``rdata`` holds the word of the read acknowledged ``latency`` cycles ago.
    rdata : In(8 * word_bytes)
    tag : Out(tag_bits)
    rtag : In(tag_bits)
        Only with ``tag_bits``: a *tagged* port. ``rtag`` holds, with ``rvalid``, the ``tag``
        of the read whose data are on ``rdata``. Reads still answer in order, but the time
        from ``ack`` to ``rvalid`` may vary (at least the port's nominal latency), as behind
        a :class:`ReadSlice`: the client tells its answers apart by their tags.
    """

    def __init__(self, addr_bits: int, word_bytes: int, tag_bits: int = 0):
        self.addr_bits = addr_bits
        self.word_bytes = word_bytes
        self.tag_bits = tag_bits
        members = {
            "addr": Out(addr_bits),
            "en": Out(1),
            "we": Out(1),
            "wdata": Out(8 * word_bytes),
            "wmask": Out(word_bytes),
            "ack": In(1),
            "rvalid": In(1),
            "rdata": In(8 * word_bytes),
        }
        if tag_bits:
            members.update({"tag": Out(tag_bits), "rtag": In(tag_bits)})
        super().__init__(members)

    def __eq__(self, other):
        return (
            isinstance(other, MemPortSignature)
            and self.addr_bits == other.addr_bits
            and self.word_bytes == other.word_bytes
            and self.tag_bits == other.tag_bits
        )

    def __hash__(self):
        return hash((MemPortSignature, self.addr_bits, self.word_bytes, self.tag_bits))

    def __repr__(self):
        tag = f", tag_bits={self.tag_bits}" if self.tag_bits else ""
        return f"MemPortSignature({self.addr_bits}, {self.word_bytes}{tag})"


class ReadSlice(wiring.Component):
    """A register slice for read requests between a tagged client port and a memory port.

    Timing: without it, a client's request runs through the bank arbiter to ``ack`` and back
    into the client's request register in one cycle (on the ECP5-85F the GEMM units' SPAD
    reads: a unit's control register -> the shared port's select -> the arbiter -> ``ack`` ->
    another unit's gather, across the die). Here the requests enter a two-entry FIFO; the
    client's ``ack`` is the FIFO's "not full" (a register compare), and the memory sees the
    FIFO's head. Two entries keep one read per cycle (a plain request register would take
    one every other cycle). Each read's ``tag`` travels with it and comes back on ``rtag``
    with the data, since the wait in the FIFO varies with the memory's arbitration.

    Read-only: ``we`` of the client is ignored (the memory side reads). A request reaches
    the memory one cycle after its ``ack`` at the earliest, so reads answer ``latency + 1``
    cycles after ``ack`` or later (:meth:`nominal_latency`).

    With ``owners`` > 1 (clients sharing the port, told apart by the top ``owner_bits`` of
    the tag) the slice also gives each owner its own registers of the answer: ``owner_rvalid``
    (``rvalid`` of the owner's reads) and ``owner_rtag`` (``rtag``), the same values as
    ``client.rvalid & (owner field == k)`` and ``client.rtag``, but in registers of their own
    (timing: each can sit next to its owner's logic instead of one register feeding every
    owner across the die; on the ECP5 they are instantiated flip-flops, which synthesis does
    not merge).

    Parameters
    ----------
    addr_bits, word_bytes : int
        The memory port's shape.
    tag_bits : int
        Tag width of the client port.
    latency : int
        The memory port's read latency (``ack`` -> ``rvalid``).
    owners, owner_bits : int
        Clients that share the port and the width of their index at the top of the tag.

    Members
    -------
    client : In(MemPortSignature(addr_bits, word_bytes, tag_bits))
    mem : Out(MemPortSignature(addr_bits, word_bytes))
    owner_rvalid : Out(owners)
    owner_rtag : Out(tag_bits).array(owners)
    ready : Out(1)
        The slice takes a request this cycle (``client.ack`` is ``client.en & ready``): a
        register compare, so clients sharing the port can form their own ``ack`` from it
        without the shared port's multiplexers in front (:func:`~tritium.rtl.top._share_port`).
    """

    def __init__(self, addr_bits: int, word_bytes: int, tag_bits: int, latency: int,
                 owners: int = 1, owner_bits: int = 0):
        if tag_bits < 1:
            raise ValueError(f"tag_bits={tag_bits}; a slice's client port must be tagged")
        if owners > 1 and (1 << owner_bits) < owners:
            raise ValueError(f"owner_bits={owner_bits} cannot tell {owners} owners apart")
        self.tag_bits = tag_bits
        self.latency = latency
        self.owners = owners
        self.owner_bits = owner_bits
        super().__init__({
            "client": In(MemPortSignature(addr_bits, word_bytes, tag_bits)),
            "mem": Out(MemPortSignature(addr_bits, word_bytes)),
            "owner_rvalid": Out(owners),
            "owner_rtag": Out(tag_bits).array(owners),
            "ready": Out(1),
        })

    @staticmethod
    def nominal_latency(latency: int) -> int:
        """Cycles from the client's ``ack`` to ``rvalid`` when the memory of read latency
        ``latency`` takes the request at once (the FIFO's register adds one)."""
        return latency + 1

    def elaborate(self, platform):
        m = Module()
        c, p = self.client, self.mem
        aw = len(p.addr)
        m.submodules.q = q = fifo.SyncFIFO(width=aw + self.tag_bits, depth=2)
        # the FIFO's "not full" as a register of its own, loaded with the value ``w_rdy``
        # takes next (timing: the clients' ``ack`` and slot enables read a flip-flop, not a
        # compare of the FIFO's level; on the ECP5-85F that LUT and its net were in a failing
        # path into two gathers)
        not_full = Signal(init=1)
        took = c.en & not_full
        gave = q.r_en & q.r_rdy
        m.d.sync += not_full.eq(~(((q.level == 2) & ~gave) | ((q.level == 1) & took & ~gave)))
        m.d.comb += [
            q.w_data.eq(Cat(c.addr, c.tag)),
            q.w_en.eq(c.en),
            c.ack.eq(took),
            self.ready.eq(not_full),
            p.en.eq(q.r_rdy),
            p.we.eq(0),
            p.addr.eq(q.r_data[:aw]),
            q.r_en.eq(p.ack),
            c.rvalid.eq(p.rvalid),
            c.rdata.eq(p.rdata),
        ]
        # the head's tag, as long as the memory's latency: the tag of the read answering now
        tag = q.r_data[aw:]
        asked = p.en & p.ack  # and whether the memory took a read (rvalid, for the owners)
        for d in range(self.latency):
            reg = Signal(self.tag_bits, name=f"rtag{d}")
            vreg = Signal(name=f"rvalid{d}")
            m.d.sync += [reg.eq(tag), vreg.eq(asked)]
            prev_tag, prev_v = tag, asked
            tag, asked = reg, vreg
        m.d.comb += c.rtag.eq(tag)
        # each owner's own copy of the last stage (see the class docstring)
        top = self.tag_bits - self.owner_bits
        for k in range(self.owners):
            mine = prev_v & (prev_tag[top:] == k) if self.owners > 1 else prev_v
            kv = kept_register(m, platform, mine, f"owner{k}_rvalid", reset=True)
            kt = kept_register(m, platform, prev_tag, f"owner{k}_rtag")
            m.d.comb += [self.owner_rvalid[k].eq(kv), self.owner_rtag[k].eq(kt)]
        return m


def kept_register(m: Module, platform, src, name: str, reset: bool = False,
                  en=None) -> Signal:
    """``src`` one cycle later, in a register of its own: a copy that synthesis does not merge
    with other copies of ``src`` (on the ECP5 instantiated ``TRELLIS_FF`` cells, which yosys'
    ``opt_merge`` leaves apart; elsewhere, and in simulation, a plain register). For
    replicating a register with a large fan-out, so each copy can sit next to its readers.
    ``reset``: cleared by the domain's reset (synchronously), like a plain register.
    ``en``: loads only while ``en`` is high (the flip-flops' clock enable), else holds."""
    q = Signal(len(src), name=name, reset_less=not reset)
    if getattr(platform, "family", None) == "ecp5":
        for b in range(len(src)):
            m.submodules[f"{name}_ff{b}"] = Instance(
                "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="1" if en is None else "CE",
                p_CLKMUX="CLK", p_LSRMUX="LSR", p_REGSET="RESET", p_SRMODE="LSR_OVER_CE",
                i_CLK=ClockSignal(), i_CE=1 if en is None else en,
                i_LSR=ResetSignal() if reset else 0, i_DI=src[b], o_Q=q[b])
    elif en is None:
        m.d.sync += q.eq(src)
    else:
        with m.If(en):
            m.d.sync += q.eq(src)
    return q


def kept_lut(m: Module, platform, fn, ins: list, name: str) -> Signal:
    """``fn`` of up to four 1-bit ``ins`` (written with ``&``, ``|``, ``^``, ``~``), as one
    LUT: on the ECP5 an instantiated ``LUT4`` (INIT from ``fn`` evaluated on 0/1), which
    synthesis (abc) neither folds into the logic of its inputs nor chains behind another LUT;
    elsewhere, and in simulation, the plain expression. abc maps as if every input arrived
    at once and trades depth for area on paths it thinks short: for an enable that a late
    signal (a take) drives across the die, this keeps it one LUT after its inputs."""
    if not 1 <= len(ins) <= 4:
        raise ValueError(f"{name}: a LUT4 has 1 to 4 inputs, not {len(ins)}")
    out = Signal(name=name)
    if getattr(platform, "family", None) != "ecp5":
        m.d.comb += out.eq(fn(*ins))
        return out
    init = sum(1 << i for i in range(16)
               if fn(*((i >> j) & 1 for j in range(len(ins)))) & 1)
    pins = [Signal(name=f"{name}_{'abcd'[j]}") for j in range(len(ins))]
    m.d.comb += [pin.eq(v) for pin, v in zip(pins, ins)]
    pins += [Const(0, 1)] * (4 - len(pins))
    m.submodules[f"{name}_lut"] = Instance(
        "LUT4", p_INIT=Const(init, 16),
        i_A=pins[0], i_B=pins[1], i_C=pins[2], i_D=pins[3], o_Z=out)
    return out


def late_select(m: Module, platform, sel, a, b, name: str) -> Signal:
    """``sel ? a : b``, with ``sel`` kept on the last LUT (:func:`kept_lut` per bit, ``sel``
    on the LUT's fastest input): for a register's next value that a late signal (a take)
    only chooses between two candidates computed before it (abc had put such a ``sel`` in
    front of a wide function's deepest LUTs)."""
    a, b = Value.cast(a), Value.cast(b)
    out = Signal(max(len(a), len(b)), name=name)
    if getattr(platform, "family", None) != "ecp5":
        m.d.comb += out.eq(Mux(sel, a, b))
        return out
    sel_s = Signal(name=f"{name}_sel")
    a_s, b_s = Signal(len(out), name=f"{name}_a"), Signal(len(out), name=f"{name}_b")
    m.d.comb += [sel_s.eq(sel), a_s.eq(a), b_s.eq(b)]
    m.d.comb += out.eq(Cat(
        kept_lut(m, platform, lambda s_, x, y: (s_ & x) | (~s_ & y), [sel_s, a_s[i], b_s[i]],
                 f"{name}_{i}") for i in range(len(out))))
    return out


def registered_product(m: Module, platform, a, b, en, name: str, width: int) -> Signal:
    """``a * b`` (each at most 17 bits and signed, or 16 bits and unsigned) into a register
    of ``width`` bits that loads while ``en`` is high. On the ECP5 the register is the output
    register of an instantiated ``MULT18X18D`` (``REG_OUTPUT_CLK``; yosys maps a product to
    a DSP without its registers), so the product leaves the DSP from a register next to it
    and the route to a fabric register is not in the multiplier's path; elsewhere, and in
    simulation, a product and a plain register (the same values)."""
    is_signed = a.shape().signed or b.shape().signed
    p = Signal(signed(width) if is_signed else width, name=name, reset_less=True)
    for v in (a, b):
        if len(v) > (17 if v.shape().signed else 16):
            raise ValueError(f"{name}: a {len(v)}-bit operand does not fit a MULT18X18D")
    if getattr(platform, "family", None) != "ecp5":
        with m.If(en):
            m.d.sync += p.eq(a * b)
        return p
    a18 = Signal(18, name=f"{name}_a")
    b18 = Signal(18, name=f"{name}_b")
    p36 = Signal(36, name=f"{name}_p")
    # (assignment extends by the operand's own signedness: sign for signed, zeros otherwise)
    m.d.comb += [a18.eq(a), b18.eq(b), p.eq(p36[:width])]
    ports = {f"i_A{i}": a18[i] for i in range(18)}
    ports.update({f"i_B{i}": b18[i] for i in range(18)})
    ports.update({f"i_C{i}": 0 for i in range(18)})
    ports.update({f"o_P{i}": p36[i] for i in range(36)})
    m.submodules[f"{name}_dsp"] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="NONE", p_REG_INPUTB_CLK="NONE", p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0",
        p_REG_OUTPUT_RST="RST0", p_GSR="DISABLED", p_RESETMODE="SYNC",
        p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
        i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
        i_CLK0=ClockSignal(), i_CLK1=0, i_CLK2=0, i_CLK3=0,
        i_CE0=en, i_CE1=0, i_CE2=0, i_CE3=0,
        i_RST0=0, i_RST1=0, i_RST2=0, i_RST3=0,
        **ports)
    return p


def _onehot_mux(sel: list, vals: list):
    """``vals[i]`` where ``sel[i]`` is set (``sel`` one-hot or all 0, giving 0)."""
    terms = [Mux(s_, v, 0) for s_, v in zip(sel, vals)]
    while len(terms) > 1:
        terms = [terms[k] | terms[k + 1] if k + 1 < len(terms) else terms[k]
                 for k in range(0, len(terms), 2)]
    return terms[0]


def rr_arbiter(m: Module, reqs: list, name: str, fair: bool = True,
               groups: list | None = None) -> list[Signal]:
    """Round-robin arbiter: one-hot grants for the request bits ``reqs`` (Amaranth values).

    The requester granted last has the lowest priority in the next cycle. With
    ``fair=False`` the priority is fixed (the lowest index first): smaller, and enough where
    the requesters that can meet are bounded streams of one unit that need each other.
    ``groups`` (with ``fair=False``): a group label per requester; a requester yields only to
    the lower-index requesters of its own group (the caller guarantees that requesters of
    different groups never request in the same cycle), so no grant depends on another
    group's request logic.
    """
    n = len(reqs)
    grants = [Signal(name=f"{name}_gnt{i}") for i in range(n)]
    req = [Signal(name=f"{name}_req{i}") for i in range(n)]
    m.d.comb += [r.eq(v) for r, v in zip(req, reqs)]
    if n == 1 or not fair:
        for i, g in enumerate(grants):
            prior = [req[j] for j in range(i) if groups is None or groups[j] == groups[i]]
            m.d.comb += g.eq(req[i] & ~Cat(prior).any() if prior else req[i])
        return grants
    last = Signal(range(n), name=f"{name}_last", init=n - 1)
    # grant i when it requests and no requester between last+1 and i-1 (cyclically) does
    for i in range(n):
        cases = []
        for lst in range(n):
            before = [(lst + 1 + j) % n for j in range(n)]
            prior = before[: before.index(i)]
            blocked = Cat(req[k] for k in prior).any() if prior else Const(0, 1)
            cases.append((lst, blocked))
        blk = Signal(name=f"{name}_blk{i}")
        with m.Switch(last):
            for lst, blocked in cases:
                with m.Case(lst):
                    m.d.comb += blk.eq(blocked)
        m.d.comb += grants[i].eq(req[i] & ~blk)
    for i in range(n):
        with m.If(grants[i]):
            m.d.sync += last.eq(i)
    return grants


class BankedMemory(wiring.Component):
    """``banks`` x ``Memory(word_bytes * 8 bits)`` with ``n_ports`` arbitrated client ports.

    Cycle contract: per bank, one read and one write are acknowledged per cycle (round-robin,
    or fixed priority with ``fair=False``, among the ports requesting that bank); a port
    whose request names a busy bank waits (no ``ack``). Read data arrive one cycle after the
    ``ack`` (two with ``read_reg``; synchronous read port, write-first; with
    ``transparent=False`` a read of the word being written is acknowledged a cycle later
    instead). With no conflicts every port moves one word per cycle.

    Parameters
    ----------
    word_bytes : int
        Bytes per word.
    words : int
        Total words (a multiple of ``banks``).
    banks : int
        Number of banks (a power of two).
    n_ports : int
        Number of client ports.
    name : str
        Used in signal names.
    fair : bool
        Round-robin arbitration (default); ``False``: fixed priority, the lowest port
        index first (for one instruction at a time, ``queue_depth == 0``: the ports that
        meet then belong to one unit, whose streams are bounded and wait for each other).
    groups : list, optional
        With ``fair=False``: a label per port, the unit it belongs to; a port yields only to
        the lower-index ports of its group (see :func:`rr_arbiter`). The owner guarantees
        that ports of different groups never request in the same cycle.
    transparent : bool
        Write-first in the memory's read port (default); ``False``: a plain read port (no
        bypass registers and multiplexer) where a read of the word written in the same cycle
        is not acknowledged until the next cycle, so clients see the same write-first result.
    read_reg : bool
        Register each bank's read data next to its block RAM, so the path from the block RAM
        to the clients (bank multiplexer, their fan-out) has a cycle of its own (timing, for
        large devices): read data arrive one cycle later (:attr:`latency` + 1).
    addr_reg : bool
        Register each bank's granted request (read and write address, write data and mask)
        next to its block RAM, so the path from the clients' requests through the arbiters
        and the address multiplexers to the block RAM has a cycle of its own (timing, for
        large devices): the ``ack`` still comes in the cycle of the request, the block RAM
        sees it one cycle later, read data arrive one cycle later (:attr:`latency` + 1).
        Reads and writes move together, so write-first holds as without it.
    clash_pairs : list of (int, int), optional
        With ``transparent=False``: the ``(read port, write port)`` pairs that may read and
        write one word in the same cycle; a read is held back only for its partners' writes
        (a compare of the two ports' own addresses, not of the granted ones: the other ports'
        request logic stays out of its ``ack``). The owner guarantees that no other pair of
        ports meets on a word in one cycle. Default: every pair.

    Members
    -------
    ports : In(MemPortSignature).array(n_ports)
        Client ports (see :class:`MemPortSignature`).
    """

    def __init__(self, word_bytes: int, words: int, banks: int, n_ports: int, name: str = "mem",
                 fair: bool = True, transparent: bool = True,
                 clash_pairs: list[tuple[int, int]] | None = None,
                 groups: list | None = None, read_reg: bool = False,
                 addr_reg: bool = False):
        if words % banks:
            raise ValueError(f"words={words} must be a multiple of banks={banks}")
        if banks & (banks - 1):
            raise ValueError(f"banks={banks} must be a power of two")
        self.word_bytes = word_bytes
        self.words = words
        self.banks = banks
        self.n_ports = n_ports
        self.mem_name = name
        self.fair = fair
        self.transparent = transparent
        self.clash_pairs = clash_pairs
        if groups is not None and len(groups) != n_ports:
            raise ValueError(f"groups={groups!r}: one label per port ({n_ports})")
        self.groups = groups
        self.read_reg = read_reg
        self.addr_reg = addr_reg
        #: cycles from a read's ``ack`` to its ``rvalid``
        self.latency = 1 + read_reg + addr_reg
        self.addr_bits = max(1, (words - 1).bit_length())
        super().__init__(
            {"ports": In(MemPortSignature(self.addr_bits, word_bytes)).array(n_ports)}
        )

    def elaborate(self, platform):
        m = Module()
        nb, wb = self.banks, self.word_bytes
        bbits = (nb - 1).bit_length()
        rows = self.words // nb
        ports = self.ports

        def bank_of(p):
            return p.addr[:bbits] if bbits else Const(0, 1)

        def row_of(p):
            return p.addr[bbits:] if bbits else p.addr

        acks = [Signal(name=f"ack{i}") for i in range(self.n_ports)]
        pbank = []
        for i, p in enumerate(ports):
            s_ = Signal(range(max(nb, 2)), name=f"pbank{i}")
            m.d.comb += s_.eq(bank_of(p))
            pbank.append(s_)
        bank_sel = [Signal(range(max(nb, 2)), name=f"rbank{i}") for i in range(self.n_ports)]
        rdatas = []
        for b in range(nb):
            attrs = {} if self.transparent else {COLLISION_FREE: 1}
            mem = memory.Memory(shape=8 * wb, depth=rows, init=[], attrs=attrs)
            m.submodules[f"{self.mem_name}_bank{b}"] = mem
            wp = mem.write_port(granularity=8)
            rreq = [p.en & ~p.we & (pbank[i] == b) for i, p in enumerate(ports)]
            wreq = [p.en & p.we & (pbank[i] == b) for i, p in enumerate(ports)]
            rg = rr_arbiter(m, rreq, f"{self.mem_name}_b{b}r", self.fair, self.groups)
            wg = rr_arbiter(m, wreq, f"{self.mem_name}_b{b}w", self.fair, self.groups)
            # grants are one-hot: AND-OR multiplexers (log depth, not a priority chain)
            raddr = _onehot_mux(rg, [row_of(p) for p in ports])
            waddr = _onehot_mux(wg, [row_of(p) for p in ports])
            if self.transparent:
                rp = mem.read_port(transparent_for=(wp,))
            else:
                # a read of the word being written waits one cycle (then it sees the write)
                rp = mem.read_port()
                if self.clash_pairs is None:
                    clash = Signal(name=f"{self.mem_name}_b{b}_clash")
                    m.d.comb += clash.eq(Cat(wg).any() & (raddr == waddr))
                    rg = [g & ~clash for g in rg]
                else:
                    for r, w in self.clash_pairs:
                        hit = wg[w] & (row_of(ports[r]) == row_of(ports[w]))
                        rg[r] = rg[r] & ~hit
            if self.read_reg:
                rq = Signal(8 * wb, name=f"{self.mem_name}_b{b}_rdata")
                m.d.sync += rq.eq(rp.data)
                rdatas.append(rq)
            else:
                rdatas.append(rp.data)
            wdata = _onehot_mux(wg, [p.wdata for p in ports])
            wmask = _onehot_mux(wg, [p.wmask for p in ports])
            if self.addr_reg:
                req = [(raddr, "raddr"), (waddr, "waddr"), (wdata, "wdata"), (wmask, "wmask")]
                regs = []
                for v, n in req:
                    r = Signal(len(v), name=f"{self.mem_name}_b{b}_{n}",
                               reset_less=n != "wmask")
                    m.d.sync += r.eq(v)
                    regs.append(r)
                raddr, waddr, wdata, wmask = regs
            m.d.comb += [
                rp.addr.eq(raddr),
                rp.en.eq(1),
                wp.addr.eq(waddr),
                wp.data.eq(wdata),
                wp.en.eq(wmask),
            ]
            for i in range(self.n_ports):
                with m.If(rg[i] | wg[i]):
                    m.d.comb += acks[i].eq(1)
        for i, p in enumerate(ports):
            rv = Signal(name=f"rvalid{i}")
            m.d.sync += rv.eq(acks[i] & ~p.we)
            with m.If(acks[i]):
                m.d.sync += bank_sel[i].eq(bank_of(p))
            sel = bank_sel[i]
            for k in range(self.latency - 1):  # the request's and the read data's registers
                rvk = Signal(name=f"rvalid{k + 2}_{i}")
                selk = Signal.like(bank_sel[i], name=f"rbank{k + 2}_{i}")
                m.d.sync += [rvk.eq(rv), selk.eq(sel)]
                rv, sel = rvk, selk
            data = rdatas[0]
            for b in range(1, nb):
                data = Mux(sel == b, rdatas[b], data)
            m.d.comb += [p.ack.eq(acks[i]), p.rvalid.eq(rv), p.rdata.eq(data)]
        return m


def spad_latency(cfg: AcceleratorConfig) -> int:
    """Read latency of :func:`spad_memory` (cycles from ``ack`` to ``rvalid``): 3 with
    queues (the large configurations register the granted requests and the read data next
    to the block RAMs: on the ECP5-85F the SPAD's block RAMs -> the GEMM gathers' cache
    lines, and the clients' requests -> the arbiters -> the block RAMs' addresses, were
    critical paths), else 1."""
    return 1 if cfg.queue_depth == 0 else 3


def spad_memory(cfg: AcceleratorConfig, n_ports: int,
                clash_pairs: list[tuple[int, int]] | None = None,
                groups: list | None = None) -> BankedMemory:
    """The SPAD: ``cfg.spad_bytes`` bytes, ``cfg.spad_banks`` banks, ``cfg.bus_bytes`` words
    (without queues: fixed priority within ``groups``, plain read port, ``clash_pairs``;
    read latency :func:`spad_latency`)."""
    serial = cfg.queue_depth == 0
    return BankedMemory(
        cfg.bus_bytes, cfg.spad_bytes // cfg.bus_bytes, cfg.spad_banks, n_ports, "spad",
        fair=not serial, transparent=not serial, clash_pairs=clash_pairs,
        groups=groups if serial else None, read_reg=not serial, addr_reg=not serial,
    )


def acc_latency(cfg: AcceleratorConfig) -> int:
    """Read latency of :func:`acc_memory`: 2 with queues (the granted requests registered
    next to the block RAMs, as the SPAD's: on the ECP5-85F the GEMM writer's read request ->
    the arbiter -> the ACC block RAMs' address was a critical path), else 1."""
    return 1 if cfg.queue_depth == 0 else 2


def acc_memory(cfg: AcceleratorConfig, n_ports: int,
               clash_pairs: list[tuple[int, int]] | None = None,
               groups: list | None = None) -> BankedMemory:
    """The ACC: ``cfg.acc_bytes`` bytes, one bank of ``cfg.bus_bytes`` words (without
    queues: as :func:`spad_memory`; read latency :func:`acc_latency`)."""
    serial = cfg.queue_depth == 0
    return BankedMemory(cfg.bus_bytes, cfg.acc_bytes // cfg.bus_bytes, 1, n_ports, "acc",
                        fair=not serial, transparent=not serial, clash_pairs=clash_pairs,
                        groups=groups if serial else None, addr_reg=not serial)
