"""The ``tritium`` command line, run in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tritium.host.cli import COMMANDS, main
from tritium.config import PRESET_TARGETS, PRESETS
from tritium.isa import INSTR_BYTES, Instr, Op, decode_program, encode_program

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------- info
def test_info_table(capsys):
    rc, out, err = run_cli(capsys, "info")
    assert rc == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header == ["field", *PRESETS]
    for name, cfg in PRESETS.items():
        assert name in out
        assert cfg.hash in out
        if PRESET_TARGETS[name]:
            assert PRESET_TARGETS[name] in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["hash"] == [cfg.hash for cfg in PRESETS.values()]
    assert rows["sa_rows"] == [str(cfg.sa_rows) for cfg in PRESETS.values()]
    (mem_line,) = [line for line in out.splitlines() if line.startswith("dev_mem_bytes ")]
    assert mem_line.split()[1:] == ["128", "KiB", "256", "KiB", "16", "MiB"]


def test_info_json(capsys):
    rc, out, _ = run_cli(capsys, "info", "--json")
    assert rc == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == list(PRESETS)
    for d in data:
        cfg = PRESETS[d["name"]]
        assert d["hash"] == cfg.hash
        assert d["target"] == PRESET_TARGETS[d["name"]]
        assert {k: v for k, v in d.items() if k not in ("hash", "target")} == cfg.to_dict()


def test_registry_and_help(capsys):
    names = [add.__name__ for add in COMMANDS]
    assert names[:5] == ["add_info", "add_asm", "add_disasm", "add_docs", "add_run"]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("info", "asm", "disasm", "docs", "run"):
        assert name in out


def test_console_script_info_is_fast_and_light():
    # `tritium info` must not import numpy or the parts (kept inside the command functions)
    code = (
        "import sys; from tritium.host.cli import main; rc = main(['info']); "
        "heavy = [m for m in ('numpy', 'tritium.golden', 'tritium.firmware.asm') "
        "if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


# ---------------------------------------------------------------------- asm / disasm
PROGRAM = """\
.equ SRC, 0x1000
.equ DST, 0x2000
.equ ROW, 64
start:
    load  space=spad, rows=1, row_bytes=ROW, loc=0, dram=SRC, stride=ROW
loop:
    store space=spad, rows=1, row_bytes=ROW, loc=0, dram=DST, stride=ROW
    jump target=done
done:
    halt
"""


def test_asm_disasm_roundtrip(tmp_path, capsys):
    src = tmp_path / "prog.s"
    src.write_text(PROGRAM)
    rc, out, err = run_cli(capsys, "asm", src, "--base", "0x100")
    assert rc == 0, err
    binary = tmp_path / "prog.bin"  # default output name
    image = binary.read_bytes()
    assert "4 instructions" in out
    instrs = decode_program(image)
    assert [i.op for i in instrs] == [Op.LOAD, Op.STORE, Op.JUMP, Op.HALT]
    assert instrs[2].target == 0x100 + 3 * INSTR_BYTES  # labels use --base
    assert instrs[0].dram == 0x1000 and instrs[1].dram == 0x2000

    rc, text, err = run_cli(capsys, "disasm", binary, "--base", "256")
    assert rc == 0, err
    assert "jump target=L_0130" in text
    again = tmp_path / "again.s"
    again.write_text(text)
    rc, _, err = run_cli(capsys, "asm", again, "-o", tmp_path / "again.bin", "--base", "0x100")
    assert rc == 0, err
    assert (tmp_path / "again.bin").read_bytes() == image

    # disasm -o writes a file
    rc, _, _ = run_cli(capsys, "disasm", binary, "--base", "0x100", "-o", tmp_path / "d.s")
    assert rc == 0 and (tmp_path / "d.s").read_text() == text


def test_asm_error_reports_file_and_line(tmp_path, capsys):
    src = tmp_path / "bad.s"
    src.write_text("nop\n# comment\nload space=spad, rowz=4\nhalt\n")
    rc, _, err = run_cli(capsys, "asm", src)
    assert rc == 2
    assert err.startswith("tritium: error: ")
    assert f"{src}:3: unknown field 'rowz' in 'load'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "bad.bin").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["asm", "{tmp}/missing.s"], "missing.s: No such file or directory"),
        (["disasm", "{tmp}/missing.bin"], "missing.bin: No such file or directory"),
        (["disasm", "{tmp}/zeros.bin"], "byte offset 0x0 (address 0x0): invalid opcode 0x00"),
        (["disasm", "{tmp}/short.bin"], "byte offset 0x10"),
        (["run", "{tmp}/ok.s", "--config", "huge"], "config='huge'"),
        (["run", "{tmp}/ok.s", "--device", "sim"], "device 'sim' is not available yet"),
        (["run", "{tmp}/ok.s", "--device", "serial"], "device 'serial' is not available yet"),
        (["run", "{tmp}/ok.s", "--load", "0x0:{tmp}/zeros.bin"], "overlaps the program"),
        (["run", "{tmp}/ok.s", "--dump", "0x3fff0:32"], "outside device memory"),
        (["run", "{tmp}/ok.s", "--dump", "0x100:6", "--dump-format", "i32"], "multiple of 4"),
        (["run", "{tmp}/ok.s", "--base", "0x8"], "MISALIGNED at pc 0x8"),
        (["run", "{tmp}/zeros.bin"], "INVALID_OPCODE at pc 0x0"),
        (["asm", "{tmp}/ok.s", "-o", "{tmp}/ok.s"], "would overwrite the input"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, argv, message):
    (tmp_path / "zeros.bin").write_bytes(bytes(32))
    (tmp_path / "short.bin").write_bytes(encode_program([Instr.make(Op.HALT)]) + b"\x02")
    (tmp_path / "ok.s").write_text("halt\n")
    rc, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert rc == 2
    assert err.startswith("tritium: error: ") and err.count("\n") == 1
    assert message in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.s", "--dump", "nonsense"])
    assert exc.value.code == 2
    assert "ADDR:LEN" in capsys.readouterr().err


# ---------------------------------------------------------------------- docs
def test_docs_writes_and_checks(tmp_path, capsys):
    from tritium.firmware.isadoc import render_isa_markdown

    out = tmp_path / "isa.md"
    rc, _, _ = run_cli(capsys, "docs", "-o", out)
    assert rc == 0 and out.read_text() == render_isa_markdown()
    rc, _, _ = run_cli(capsys, "docs", "-o", out, "--check")
    assert rc == 0
    out.write_text("old")
    rc, _, err = run_cli(capsys, "docs", "-o", out, "--check")
    assert rc == 2 and "is stale; run `tritium docs`" in err


# ---------------------------------------------------------------------- run
COPY = """\
.equ ROW, {row}
    load  space=spad, rows={rows}, row_bytes=ROW, loc=0x40, dram={src}, stride={stride}
    store space=spad, rows={rows}, row_bytes=ROW, loc=0x40, dram={dst}, stride=ROW
    halt
"""


@pytest.mark.parametrize("config", ["tiny", "base", "large"])
def test_run_golden_copies_rows(tmp_path, capsys, config):
    row, rows, src, stride, dst = 32, 3, 0x1000, 64, 0x3000
    prog = tmp_path / "copy.s"
    prog.write_text(COPY.format(row=row, rows=rows, src=src, stride=stride, dst=dst))
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, rows * stride, dtype=np.uint8)
    (tmp_path / "data.bin").write_bytes(data.tobytes())
    expected = np.concatenate([data[r * stride : r * stride + row] for r in range(rows)])

    rc, out, err = run_cli(
        capsys, "run", "--device", "golden", prog, "--config", config,
        "--load", f"{src:#x}:{tmp_path / 'data.bin'}",
        "--dump", f"{dst:#x}:{rows * row}", "--dump", f"{dst + rows * row}:16",
        "--dump-format", "i8", "--json",
    )
    assert rc == 0, err
    report = json.loads(out)
    assert report["status"] == "done" and report["error"] is None
    assert report["instret"] == 3
    assert report["pc"] == 2 * INSTR_BYTES
    assert report["config_hash"] == PRESETS[config].hash
    copied, after = report["dumps"]
    assert copied["data"] == expected.view(np.int8).tolist()
    assert after["data"] == [0] * 16  # nothing written past the block


def test_run_text_output_binary_program_and_image(tmp_path, capsys):
    base = 0x200
    instrs = [
        Instr.make(Op.LOAD, space=0, rows=1, row_bytes=16, loc=0, dram=0x800, stride=16),
        Instr.make(Op.STORE, space=0, rows=1, row_bytes=16, loc=0, dram=0x900, stride=16),
        Instr.make(Op.HALT),
    ]
    (tmp_path / "p.bin").write_bytes(encode_program(instrs))
    image = np.zeros(0x1000, np.uint8)
    words = np.arange(4, dtype="<i4") * -1000  # 16 bytes of int32
    image[0x800:0x810] = words.view(np.uint8)
    (tmp_path / "img.bin").write_bytes(image.tobytes())

    rc, out, err = run_cli(
        capsys, "run", tmp_path / "p.bin", "--base", hex(base), "--image", tmp_path / "img.bin",
        "--dump", "0x900:16", "--dump-format", "i32", "--trace",
    )
    assert rc == 0, err
    assert f"status:   done (HALT at pc {base + 2 * INSTR_BYTES:#x})" in out
    assert "instret:  3" in out
    assert "dump 0x900:16 (i32):" in out
    assert "[    0 -1000 -2000 -3000]" in out
    assert f"{base:#06x}  load space=spad" in out

    rc, out, _ = run_cli(capsys, "run", tmp_path / "p.bin", "--base", hex(base),
                         "--image", tmp_path / "img.bin", "--dump", "0x900:16")
    assert rc == 0
    hexline = " ".join(f"{b:02x}" for b in image[0x800:0x808])
    assert f"00000900: {hexline}  " in out


def test_run_device_error_report(tmp_path, capsys):
    prog = tmp_path / "loop.s"
    prog.write_text("top: nop\n    jump target=top\n")
    rc, out, err = run_cli(capsys, "run", prog, "--max-instructions", "10", "--json")
    assert rc == 2
    report = json.loads(out)
    assert report["status"] == "error" and report["error"] == "WATCHDOG"
    assert "tritium: error: device error WATCHDOG" in err


def test_example_copy_program(tmp_path, capsys):
    # firmware/examples/copy.s moves SRC rows (SRC_STRIDE apart) densely to DST
    from tritium.firmware.asm import assemble_program

    path = ROOT / "firmware" / "examples" / "copy.s"
    s = assemble_program(path.read_text()).symbols
    data = np.random.default_rng(2).integers(0, 256, s["ROWS"] * s["SRC_STRIDE"], np.uint8)
    (tmp_path / "src.bin").write_bytes(data.tobytes())
    n = s["ROWS"] * s["ROW"]
    rc, out, err = run_cli(capsys, "run", path, "--config", "tiny", "--json",
                           "--load", f"{s['SRC']}:{tmp_path / 'src.bin'}",
                           "--dump", f"{s['DST']}:{n}")
    assert rc == 0, err
    want = data.reshape(s["ROWS"], s["SRC_STRIDE"])[:, : s["ROW"]].tobytes()
    assert bytes.fromhex(json.loads(out)["dumps"][0]["data"]) == want
