"""``tritium demo``: a first run that needs nothing but NumPy.

Compiles the shipped MatMul-free language model (ternary weights, trained on tinyshakespeare)
for the ``tiny`` preset (iCE40 UP5K: ternary engine + vector unit, 128 KiB of device memory),
loads it on the golden device through the bridge protocol, and generates text token by token.
Every step is checked against the NumPy integer reference, and the same model compiled for the
``base`` preset's LUT core and ternary engine gives the same integers.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from tritium.config import preset

PROMPT = "ROMEO:"
N_CHARS = 48


def demo(out=print) -> bool:
    """Run the demo; returns True when every check passed."""
    from tritium.firmware.compiler import compile_model
    from tritium.host import data
    from tritium.host.device import Device
    from tritium.host.evaluate import load_int
    from tritium.host.generate import generate
    from tritium.host.runtime import Runtime

    t0 = time.perf_counter()
    out("tritium demo: the MatMul-free LM (ternary weights) on the golden device, preset 'tiny'")
    model = load_int("mmfree")  # quantize the float QAT checkpoint (NumPy)
    cfg = preset("tiny")
    cm = compile_model(model, cfg)
    fig = cm.figures()
    out(f"compiled: {fig['instructions']} instructions per token, image "
        f"{fig['image_bytes']:,} of {fig['dev_mem_bytes']:,} bytes of device memory, "
        f"SPAD peak {fig['spad_peak']:,}/{cfg.spad_bytes:,} B, ACC peak "
        f"{fig['acc_peak']}/{cfg.acc_bytes} B")
    ok = True
    with Device.open("golden", cfg) as dev:
        rt = Runtime(dev, cm)
        out("")
        if out is print:  # stream the characters as the device produces them
            print(PROMPT, end="", flush=True)
            res = generate(rt, PROMPT, N_CHARS,
                           on_text=lambda ch: print(ch, end="", flush=True))
            print()
        else:
            res = generate(rt, PROMPT, N_CHARS)
            out(PROMPT + res.text)
    # the integer reference, greedy, on the host
    tok = data.tokenizer()
    st = model.init_state()
    nxt = 0
    for t in tok.encode(PROMPT):
        _, _, nxt, st = model.step(int(t), st)
    ref = []
    for _ in range(N_CHARS):
        ref.append(nxt)
        _, _, nxt, st = model.step(nxt, st)
    same = res.text == tok.decode(ref)
    ok &= same
    out("")
    out(f"{res.steps} decode steps, {res.tokens_per_s:.1f} tokens/s on the golden model, "
        f"{res.instret_per_token:.0f} instructions/token; device == integer reference: "
        f"{'ok' if same else 'FAIL'}")
    # the same ternary weights on the LUT core (2-bit) and the ternary engine of 'base'
    outs = {}
    for engine in ("ternary", "lut"):
        cmb = compile_model(model, preset("base"), engine)
        with Device.open("golden", "base") as dev:
            rt = Runtime(dev, cmb)
            rt.reset()
            outs[engine] = np.stack([rt.step(t).logits_acc for t in (20, 43, 50)])
    same = bool(np.array_equal(outs["ternary"], outs["lut"]))
    ok &= same
    out(f"preset 'base': ternary engine and LUT tensor core give identical logits: "
        f"{'ok' if same else 'FAIL'}")
    out(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} "
        f"({time.perf_counter() - t0:.1f} s)")
    return ok


if __name__ == "__main__":
    sys.exit(0 if demo() else 1)
