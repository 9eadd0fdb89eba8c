"""The simulated device server: the SoC (``tritium.fpga.soc.TritiumSoc``) on Verilator, driven by
a cocotb process that serves the bridge byte stream on a loopback TCP socket.

Host side::

    srv = start(cfg)                 # builds the SoC (cached by config hash) and launches it
    sock = socket.create_connection(("127.0.0.1", srv.port))
    ...                              # bridge frames (tritium.protocol) in, replies out
    srv.stop()

(:class:`tritium.host.transport.SimTransport` does all of this.) ``python -m tritium.sim.server
--config tiny --port 5555`` runs a server in the foreground for other clients.

What the socket carries
-----------------------
Bridge request frames (``0xA5 ...``) are fed into the SoC's ``rx`` stream one byte per cycle and
the bytes of its ``tx`` stream are sent back: the protocol engine under test is the RTL bridge.
Three out-of-band requests (first byte :data:`OOB_SYNC`, never a bridge sync byte) serve
simulation needs; each is answered with a bridge-style response frame (``0x5A``, status OK)::

    0xC3 0x01 ADDR[4] LEN[4] DATA[LEN]   bulk write: the words go straight into the RAM model
                                         (back door, like $readmemh: an image need not crawl
                                         through the simulated bridge)
    0xC3 0x02 MAX_CYCLES[4]              wait for irq: let the simulation run freely (no Python
                                         per cycle) until the accelerator raises irq or
                                         MAX_CYCLES pass; replies with the cycles waited (u32)
    0xC3 0x03                            shutdown: end the simulation

Between requests the simulation does not advance: the RTL only runs while a frame is being
transferred or a wait-for-irq is in progress (the host polls STATUS afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OOB_SYNC",
    "SimServer",
    "SimServerError",
    "bulk_write_frame",
    "main",
    "serve",
    "shutdown_frame",
    "start",
    "wait_irq_frame",
]

OOB_SYNC = 0xC3
OOB_BULK_WRITE = 0x01
OOB_WAIT_IRQ = 0x02
OOB_SHUTDOWN = 0x03

TOP = "tritium_soc"
ENV_PORT = "TRITIUM_SIM_PORT"
ENV_PORT_FILE = "TRITIUM_SIM_PORT_FILE"
#: Clock period of the simulation (ns); only its ratio to waits matters.
PERIOD_NS = 10


class SimServerError(RuntimeError):
    """The simulated SoC could not be built or started."""


def bulk_write_frame(addr: int, data: bytes) -> bytes:
    return bytes([OOB_SYNC, OOB_BULK_WRITE]) + struct.pack("<II", addr, len(data)) + data


def wait_irq_frame(max_cycles: int) -> bytes:
    return bytes([OOB_SYNC, OOB_WAIT_IRQ]) + struct.pack("<I", max_cycles)


def shutdown_frame() -> bytes:
    return bytes([OOB_SYNC, OOB_SHUTDOWN])


# ============================================================================ host side
@dataclass
class SimServer:
    """A running server process (:func:`start`)."""

    port: int
    proc: subprocess.Popen
    log_path: Path
    own_log: bool = False  # a temporary log, removed after a clean stop

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(shutdown_frame())
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
        if self.own_log and self.proc.returncode == 0:
            self.log_path.unlink(missing_ok=True)


def start(cfg, *, log=None, timeout: float = 900.0) -> SimServer:
    """Launch ``python -m tritium.sim.server`` for ``cfg`` (building the SoC with Verilator on
    first use, cached in ``build/``) and return once it listens. ``log``: a path for its
    output (default: a temporary file, named in errors)."""
    fd, port_file = tempfile.mkstemp(prefix="tritium-sim-port-")
    os.close(fd)
    os.unlink(port_file)
    log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="tritium-sim-",
                                                           suffix=".log")[1])
    cmd = [sys.executable, "-m", "tritium.sim.server", "--config-json",
           json.dumps(cfg.to_dict()), "--port", "0", "--port-file", port_file]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(port_file):
            try:
                port = int(Path(port_file).read_text().strip() or "0")
            except ValueError:
                port = 0
            if port:
                os.unlink(port_file)
                return SimServer(port, proc, log_path, own_log=not log)
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise SimServerError(f"the simulator exited with status {proc.returncode} before "
                                 f"listening; log {log_path}:\n{tail}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise SimServerError(f"the simulator did not listen within {timeout:g} s (log "
                                 f"{log_path})")
        time.sleep(0.1)


#: C++ optimisation of the server's Verilator model: the evaluation code (OPT_FAST) is where a
#: decode step of 10^5 cycles spends its time; the constructor and tables (OPT_SLOW) build in a
#: fraction of the time at -O0.
SERVER_OPT = {"OPT_FAST": "-O2", "OPT_SLOW": "-O0", "OPT_GLOBAL": "-O1"}
#: Verilator configuration: only the top-level ports (driven by cocotb) and the RAM array or
#: banks (bulk writes) are visible to VPI. cocotb's own build makes *every* signal public
#: (``--public-flat-rw``), which keeps Verilator from optimising: this model simulates about
#: 5x faster (MMFree on tiny: 0.36 s per decode step instead of 1.7 s) and builds faster.
PUBLIC_VLT = """`verilator_config
public_flat_rw -module "tritium_soc" -var "*"
public_flat_rw -module "*" -var "mem"
public_flat_rw -module "*" -var "ram_bank*"
"""


def build_model(cfg) -> tuple[Path, Path]:
    """Verilog of the SoC for ``cfg`` (cached by :func:`tritium.sim.build.verilog_for`) and its
    Verilator model (with :data:`PUBLIC_VLT` and :data:`SERVER_OPT`) in ``sim_build_server/``
    beside it, cached by a stamp of the Verilog and the flags, file-locked against concurrent
    builds."""
    import hashlib
    import shutil

    from tritium.fpga.soc import TritiumSoc
    from tritium.sim.build import _locked, verilog_for
    from tritium.sim.toolchain import make_overrides, setup_verilator

    vfile = verilog_for(TritiumSoc, TOP, cfg)
    sdir = vfile.parent / "sim_build_server"
    opts = {**SERVER_OPT}
    if os.environ.get("TRITIUM_SIM_SERVER_OPT"):
        opts["OPT_FAST"] = os.environ["TRITIUM_SIM_SERVER_OPT"]
    stamp = sdir / ".tritium-built"
    digest = hashlib.sha256(vfile.read_bytes() + json.dumps(opts).encode()
                            + PUBLIC_VLT.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest and (sdir / TOP).is_file():
        return vfile, sdir
    setup_verilator()
    with _locked(sdir):
        if stamp.is_file() and stamp.read_text() == digest and (sdir / TOP).is_file():
            return vfile, sdir
        import cocotb_tools.config as cc

        shutil.rmtree(sdir, ignore_errors=True)
        sdir.mkdir(parents=True)
        vlt = sdir / "public.vlt"
        vlt.write_text(PUBLIC_VLT)
        verilate = [
            "verilator", "-cc", "--exe", "-Mdir", str(sdir), "--top-module", TOP, "--vpi",
            "--prefix", "Vtop", "-o", TOP, "-LDFLAGS",
            f"-Wl,-rpath,{cc.libs_dir} -L{cc.libs_dir} -lcocotbvpi_verilator", "-Wno-fatal",
            str(vlt), str(cc.share_dir / "lib" / "verilator" / "verilator.cpp"), str(vfile)]
        flags = [f"{k}={v}" for k, v in {**make_overrides(), **opts}.items()]
        jobs = str(max(1, min(os.cpu_count() or 1, 8)))
        make = ["make", "-j", jobs, "-C", str(sdir), "-f", "Vtop.mk", "VM_TRACE=0", *flags]
        log = vfile.parent / "build_server.log"
        print(f"building the {cfg.name} SoC with Verilator ({sdir}) ...", flush=True)
        with open(log, "w") as lf:
            for cmd in (verilate, make):
                r = subprocess.run(cmd, check=False, stdout=lf, stderr=subprocess.STDOUT)
                if r.returncode:
                    lf.flush()
                    tail = "\n".join(log.read_text().splitlines()[-25:])
                    raise SimServerError(f"Verilator build of {vfile} failed ({cmd[0]} exit "
                                         f"{r.returncode}); {log}:\n{tail}")
        stamp.write_text(digest)
    return vfile, sdir


def _run_server(cfg, port: int, port_file: str | None) -> None:
    """Build (cached) and simulate the SoC with the cocotb module ``tritium.sim.tb_server``."""
    from cocotb_tools.runner import get_runner
    from tritium.sim.build import ENV_CONFIG, _patched_env

    vfile, sdir = build_model(cfg)
    env = {ENV_PORT: str(port), ENV_CONFIG: json.dumps(cfg.to_dict())}
    if port_file:
        env[ENV_PORT_FILE] = port_file
    run_dir = vfile.parent / "runs" / f"server-p{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with _patched_env(env):
        try:
            get_runner("verilator").test(
                test_module="tritium.sim.tb_server", hdl_toplevel=TOP,
                hdl_toplevel_lang="verilog", build_dir=sdir, test_dir=run_dir,
                testcase=["serve"], results_xml=str(run_dir / "results.xml"), extra_env=env)
        except SystemExit:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tritium.sim.server",
                                 description="serve the simulated tritium SoC on a TCP port")
    ap.add_argument("--config", default=None, help="preset name or JSON file")
    ap.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=5555, help="TCP port (0: any free port)")
    ap.add_argument("--port-file", default=None, help="write the port number here")
    a = ap.parse_args(argv)
    from tritium.config import AcceleratorConfig, load_config

    if a.config_json:
        cfg = AcceleratorConfig.from_dict(json.loads(a.config_json))
    else:
        cfg = load_config(a.config or "tiny")
    _run_server(cfg, a.port, a.port_file)
    return 0


# ============================================================================ cocotb side
class _Link:
    """Byte transfers on the SoC's rx/tx streams, one cycle at a time (only while needed)."""

    def __init__(self, dut):
        self.dut = dut
        self.clk = dut.clk
        self.cycles = 0

    async def exchange(self, data: bytes, quiet: int = 4000) -> bytes:
        """Send ``data`` into rx; collect tx bytes until one complete response frame has
        arrived after the last byte went in (or ``quiet`` cycles pass without a tx byte)."""
        from cocotb.triggers import ReadOnly, RisingEdge

        from tritium import protocol

        dut = self.dut
        parser = protocol.ResponseParser()
        out = bytearray()
        i, idle, done = 0, 0, False
        while True:
            await RisingEdge(self.clk)
            self.cycles += 1
            if done:
                break
            if i < len(data):
                dut.rx__payload.value = data[i]
                dut.rx__valid.value = 1
            else:
                dut.rx__valid.value = 0
            dut.tx__ready.value = 1
            await ReadOnly()
            if i < len(data) and int(dut.rx__ready.value):
                i += 1
            if int(dut.tx__valid.value):
                b = dut.tx__payload.value.to_unsigned()
                out.append(b)
                idle = 0
                if parser.feed(bytes([b])) and i >= len(data) and not parser.buf:
                    done = True  # drop ready/valid on the next edge, then return
            elif i >= len(data):
                idle += 1
                if idle > quiet:
                    done = True
        dut.rx__valid.value = 0
        dut.tx__ready.value = 0
        return bytes(out)

    async def wait_irq(self, max_cycles: int) -> int:
        from cocotb.triggers import First, RisingEdge, Timer
        from cocotb.utils import get_sim_time

        t0 = get_sim_time("ns")
        await Timer(4 * PERIOD_NS, "ns")  # START is registered: irq drops after it
        if not int(self.dut.irq.value):
            await First(RisingEdge(self.dut.irq), Timer(max_cycles * PERIOD_NS, "ns"))
        await RisingEdge(self.clk)
        waited = int((get_sim_time("ns") - t0) // PERIOD_NS)
        self.cycles += waited
        return waited


class _SlicedWord:
    """A RAM word held in several slice arrays (low slice first): ``value`` as one integer."""

    def __init__(self, handles: list, bits: int):
        self.handles, self.bits = handles, bits

    @property
    def value(self) -> int:
        return sum(int(h.value) << (k * self.bits) for k, h in enumerate(self.handles))

    @value.setter
    def value(self, v: int) -> None:
        for k, h in enumerate(self.handles):
            h.value = (v >> (k * self.bits)) & ((1 << self.bits) - 1)


def _ram_words(dut, cfg):
    """``word -> handle`` of the SoC's RAM words: in ``SocRam``'s one array, or in its banks
    (``ram_bank<i>``, :func:`tritium.fpga.soc.ram_banks` of them, consecutive address ranges),
    each possibly in :func:`tritium.fpga.soc.ram_slices` slices (``ram_bank<i>_s<j>``)."""
    from tritium.fpga.soc import ram_banks, ram_slices

    ram = dut.ram
    nb, ns = ram_banks(cfg), ram_slices(cfg)
    if nb > 1:
        names = [[f"ram_bank{i}_s{j}" if ns > 1 else f"ram_bank{i}" for j in range(ns)]
                 for i in range(nb)]
        banks = [[getattr(ram, n, None) for n in row] for row in names]
        if any(h is None for row in banks for h in row):
            raise RuntimeError(f"cannot find the {nb} x {ns} RAM arrays of the SoC "
                               "(dut.ram.ram_bank*)")
        per = cfg.dev_mem_bytes // cfg.bus_bytes // nb
        if ns == 1:
            return lambda w: banks[w // per][0][w % per]
        bits = 8 * cfg.bus_bytes // ns
        return lambda w: _SlicedWord([h[w % per] for h in banks[w // per]], bits)
    for name in ("mem", "storage"):
        h = getattr(ram, name, None)
        if h is not None:
            return lambda w: h[w]
    raise RuntimeError("cannot find the RAM array of the SoC (dut.ram.mem)")


async def _bulk_write(dut, cfg, addr: int, data: bytes) -> None:
    """Back-door write of whole bus words (partial words at the ends are merged)."""
    from cocotb.triggers import Timer

    word = _ram_words(dut, cfg)
    bb = cfg.bus_bytes
    lo = addr - addr % bb
    hi = -(-(addr + len(data)) // bb) * bb
    buf = bytearray(hi - lo)
    if lo != addr or hi != addr + len(data):  # read-modify-write of the edge words
        for w in {lo // bb, hi // bb - 1}:
            buf[w * bb - lo:(w + 1) * bb - lo] = int(word(w).value).to_bytes(bb, "little")
    buf[addr - lo:addr - lo + len(data)] = data
    for k in range(0, len(buf), bb):
        word((lo + k) // bb).value = int.from_bytes(buf[k:k + bb], "little")
    await Timer(1, "ns")


def _read_exact(conn: socket.socket, buf: bytearray, n: int) -> bytes | None:
    while len(buf) < n:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return None
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _next_unit(conn: socket.socket, buf: bytearray):
    """The next request from the host: ``("oob", cmd, payload)`` or ``("bridge", bytes)``."""
    from tritium import protocol

    first = _read_exact(conn, buf, 1)
    if first is None:
        return None
    b = first[0]
    if b == OOB_SYNC:
        cmd = _read_exact(conn, buf, 1)
        if cmd is None:
            return None
        if cmd[0] == OOB_BULK_WRITE:
            hdr = _read_exact(conn, buf, 8)
            if hdr is None:
                return None
            addr, n = struct.unpack("<II", hdr)
            data = _read_exact(conn, buf, n)
            return None if data is None else ("oob", OOB_BULK_WRITE, (addr, data))
        if cmd[0] == OOB_WAIT_IRQ:
            arg = _read_exact(conn, buf, 4)
            return None if arg is None else ("oob", OOB_WAIT_IRQ, struct.unpack("<I", arg)[0])
        return ("oob", cmd[0], None)
    if b != protocol.REQ_SYNC:  # stray bytes go to the bridge as they are (BAD_SYNC)
        return ("bridge", first)
    hdr = _read_exact(conn, buf, protocol.HEADER)
    if hdr is None:
        return None
    c, _addr, length = struct.unpack("<BIH", hdr)
    plen = length if c in (protocol.Cmd.WRITE_CSR, protocol.Cmd.WRITE_MEM) else 0
    if plen > protocol.MAX_LEN:
        plen = 0  # the bridge refuses the header; the rest follows as stray bytes
    rest = _read_exact(conn, buf, plen + 1)
    return None if rest is None else ("bridge", first + hdr + rest)


async def serve(dut) -> None:
    """The cocotb test body: reset the SoC, listen, serve one client until it disconnects or
    sends shutdown."""
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles
    from tritium.sim.build import tb_report, test_params

    from tritium import protocol

    cfg = test_params().cfg
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    dut.rx__valid.value = 0
    dut.tx__ready.value = 0
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    link = _Link(dut)

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", int(os.environ.get(ENV_PORT, "0"))))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    pf = os.environ.get(ENV_PORT_FILE)
    if pf:
        tmp = pf + ".tmp"
        Path(tmp).write_text(str(port))
        os.replace(tmp, pf)
    print(f"tritium sim server: config {cfg.name} ({cfg.hash}) on 127.0.0.1:{port}",
          flush=True)
    served = 0
    try:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        while True:
            unit = _next_unit(conn, buf)
            if unit is None:
                break
            if unit[0] == "bridge":
                conn.sendall(await link.exchange(unit[1]))
                served += 1
                continue
            _, cmd, arg = unit
            if cmd == OOB_BULK_WRITE:
                addr, data = arg
                await _bulk_write(dut, cfg, addr, data)
                conn.sendall(protocol.encode_response(protocol.Status.OK))
            elif cmd == OOB_WAIT_IRQ:
                waited = await link.wait_irq(arg)
                conn.sendall(protocol.encode_response(protocol.Status.OK,
                                                      struct.pack("<I", waited)))
            elif cmd == OOB_SHUTDOWN:
                conn.sendall(protocol.encode_response(protocol.Status.OK))
                break
            else:
                conn.sendall(protocol.encode_response(protocol.Status.BAD_CMD))
        conn.close()
    finally:
        lsock.close()
        tb_report(frames=served, cycles=link.cycles)


if __name__ == "__main__":
    raise SystemExit(main())
