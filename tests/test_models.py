"""Reference models: data, checkpoints, float and integer models (NumPy only, fast)."""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tritium.host import data
from tritium.host import evaluate as E
from tritium.host.models import checkpoint, gpt, gpt_int, mmfree, mmfree_int
from tritium.host.models.common import NumpyBackend
from tritium.host.models.intops import IntMachine
from tritium.host.models.quantize import calibrate

from tritium import isa, numerics
from tritium.config import preset

CKPT = Path(E.CHECKPOINT_DIR)
SHIPPED = {"mmfree": ("tiny", mmfree_int), "gpt": ("base", gpt_int)}


# ----------------------------------------------------------------------------- data
def test_corpus_checksum_and_split():
    text = data.load_corpus()
    assert len(text) == 1_115_394
    train, held = data.split()
    assert train + held == text
    assert len(train) == int(0.9 * len(text)) == 1_003_854
    assert len(held) == 111_540


def test_tokenizer_round_trip_and_errors():
    tok = data.tokenizer()
    assert tok.size == 65 and tok.vocab[0] == "\n" and tok.vocab[-1] == "z"
    text = data.split()[1][:2000]
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 65
    assert tok.decode(ids) == text
    with pytest.raises(data.DataError, match="'@' at position 5"):
        tok.encode("hello@")
    with pytest.raises(data.DataError, match="outside"):
        tok.decode([70])


def test_corrupt_corpus_is_rejected(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(data.CORPUS_PATH.read_bytes()[:-1] + b"!")
    with pytest.raises(data.DataError, match="sha256"):
        data.load_corpus(p)


# ----------------------------------------------------------------------------- float models
SMALL_MM = mmfree.MMFreeConfig(d=32, n_layers=2, hidden=64, ctx=16)
SMALL_GPT = gpt.GPTConfig(d=32, n_layers=2, n_heads=2, mlp=64, ctx=16)


def _small(kind):
    mod, cfg = (mmfree, SMALL_MM) if kind == "mmfree" else (gpt, SMALL_GPT)
    P = {k: v.astype(np.float64) for k, v in mod.init_params(cfg, 1).items()}
    rng = np.random.default_rng(0)
    for k, v in list(P.items()):  # perturb gains so that int8 gamma quantization is exercised
        if v.ndim == 1:
            P[k] = v * rng.uniform(0.5, 1.5, v.shape)
    toks = np.asarray(data.encoded_split("train")[: 3 * 17]).reshape(3, 17)
    return mod, cfg, P, toks


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
@pytest.mark.parametrize("mode", ["apply", "float"])
def test_full_sequence_equals_incremental_decode(kind, mode):
    mod, cfg, P, toks = _small(kind)
    ranges = calibrate(kind, cfg, P, toks)
    B = NumpyBackend(mode, ranges)
    x = toks[:, :-1]
    full = mod.forward(B, P, cfg, x)
    full = full[0] if isinstance(full, tuple) else full
    steps = []
    if kind == "mmfree":
        state = mod.init_state(B, cfg, (3,))
        for t in range(x.shape[1]):
            lg, state = mod.step(B, P, cfg, x[:, t], state)
            steps.append(lg)
    else:
        cache = mod.init_cache(cfg)
        for t in range(x.shape[1]):
            steps.append(mod.step(B, P, cfg, x[:, t], cache, t))
    inc = np.stack(steps, axis=1)
    np.testing.assert_allclose(inc, full, rtol=0, atol=1e-9)
    assert np.isfinite(full).all() and full.shape == (3, 16, 65)


def test_fake_quant_points_are_int8_grids():
    _, cfg, P, toks = _small("mmfree")
    ranges = calibrate("mmfree", cfg, P, toks)
    B = NumpyBackend("apply", ranges)
    y = B.fq("res", np.linspace(-1, 1, 101) * 3 * ranges["res"])
    codes = y / B.scale("res")
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert codes.min() == -128 and codes.max() == 127


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_corruption(tmp_path):
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "range.res": np.float32(2.5)}
    header = {"kind": "mmfree", "hparams": {"d": 3}, "vocab": "ab", "command": "x"}
    path = tmp_path / "m.npz"
    digest = checkpoint.save(path, header, params)
    ck = checkpoint.load(path)
    assert ck.kind == "mmfree" and ck.header["format"] == checkpoint.FORMAT
    np.testing.assert_array_equal(ck.params["a"], params["a"])
    assert ck.params["range.res"].shape == ()
    assert digest == checkpoint.digest(ck.header, ck.params)

    # a modified parameter with the old checksum
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    members["a"] = members["a"] + 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, **members)
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        checkpoint.load(bad)

    # flipped bytes in the file
    raw = bytearray(path.read_bytes())
    i = raw.find(np.arange(6, dtype=np.float32).tobytes())
    raw[i + 5] ^= 0xFF
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(flipped)
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_shipped_checkpoint_corrupt_copy_is_rejected(kind, tmp_path):
    src = CKPT / f"{kind}.npz"
    dst = tmp_path / f"{kind}.npz"
    shutil.copy(src, dst)
    raw = bytearray(dst.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    dst.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(dst)


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_shipped_checkpoint_header_and_size(kind):
    path = CKPT / f"{kind}.npz"
    assert path.stat().st_size < 2 * 1024 * 1024
    ck = checkpoint.load(path)
    h = ck.header
    assert h["kind"] == kind
    assert h["vocab"] == data.tokenizer().vocab
    assert h["data_sha256"] == data.CORPUS_SHA256
    assert h["command"].startswith("python -m tritium.host.train") and f"--model {kind}" in \
        h["command"]
    assert 0.5 < h["heldout_loss"] < 2.5
    assert all(v.dtype == np.float32 for v in ck.params.values())
    assert zipfile.is_zipfile(path)


# ----------------------------------------------------------------------------- integer models
@pytest.fixture(scope="module")
def int_models():
    return {k: E.load_int(k) for k in SHIPPED}


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_shipped_model_fits_its_preset(kind, int_models):
    name, mod = SHIPPED[kind]
    cfg = preset(name)
    im = int_models[kind]
    fp = mod.memory_footprint(im, cfg)
    assert fp["total"] <= cfg.dev_mem_bytes, fp
    c = im.cfg
    # ISA alignment: GEMM reduction lengths multiple of 8, DMA rows multiple of the bus width
    ks = [c.d, c.hidden] if kind == "mmfree" else [c.d, c.mlp, c.head_dim]
    assert all(k % isa.K_ALIGN == 0 for k in ks)
    assert c.vocab_padded % 8 == 0 and c.d % cfg.bus_bytes == 0
    emb = im.embed if kind == "mmfree" else im.tok_emb
    assert emb.shape == (c.vocab_padded, c.d) and emb.dtype == np.int8
    assert not emb[c.vocab:].any()
    if kind == "mmfree":
        # packed ternary: 4 weights per byte
        n_w = sum(b.K * b.N for L in im.layers for b in
                  (L.f_proj, L.i_proj, L.g_proj, L.o_proj, L.gate_proj, L.down_proj))
        n_w += im.lm_head.K * im.lm_head.N
        assert fp["weights_ternary"] == n_w // 4
        assert cfg.engines == ("ternary",)


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_int_model_close_to_float_model(kind, int_models):
    """Integer decode vs float QAT model on a short held-out slice: loss within 3 %, top-1
    agreement high."""
    n = 256
    held = np.asarray(data.encoded_split("heldout"))
    fm = E.load_float(kind)
    im = int_models[kind]
    w = E.windows(held, fm.cfg.ctx, n)
    f_logits = fm.forward(w[:, :-1])
    i_logits = np.stack([im.decode_logits(row[:-1]) for row in w])
    from tritium.host.models.common import cross_entropy

    lf, li = cross_entropy(f_logits, w[:, 1:]), cross_entropy(i_logits, w[:, 1:])
    assert abs(li - lf) / lf < 0.03, (lf, li)
    # greedy top-1 agreement (2,048 chars: 94 % mmfree, 91 % gpt; near-ties flip)
    agree = np.mean(f_logits.argmax(-1) == i_logits.argmax(-1))
    assert agree > 0.85, agree


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_float_reference_reproduces_trainer_loss(kind):
    """The NumPy float model gives the held-out loss the PyTorch trainer recorded."""
    ck = checkpoint.load(CKPT / f"{kind}.npz")
    sl = ck.header["heldout_loss_slice"]
    loss, ppl = E.evaluate(kind, "float", sl["n_chars"])
    assert abs(loss - sl["loss"]) < 2e-3
    assert ppl == pytest.approx(math.exp(loss))


@pytest.mark.parametrize("kind", ["mmfree", "gpt"])
def test_int_trace_uses_device_ops_only(kind, int_models):
    trace = int_models[kind].trace(token=3)
    ops = {r.op for r in trace}
    assert ops <= {op.name for op in isa.Op} | {"LOAD", "STORE"}
    if kind == "mmfree":
        assert "GEMM_I8" not in ops and "GEMM_TERN" in ops  # tiny preset: ternary engine only
        assert {"VGATE", "VQUANT", "VSCALE", "VACT", "VRMS", "VMUL", "VADD"} <= ops
    else:
        assert {"GEMM_I8", "VSOFTMAX", "VACT", "VRMS", "VREQ", "VADD"} <= ops
    assert trace[-1].op == "VARGMAX"


# ----------------------------------------------------------------------------- exactness
def _ref_requant(acc, m0, shift):
    """TFLite single-rounding requantize, from its definition, in Python ints."""
    total = 31 - int(shift)
    v = (int(acc) * int(m0) + (1 << (total - 1))) >> total
    return max(-128, min(127, v))


def _ref_rmsnorm(x, gamma, m0, shift):
    n = len(x)
    ss = sum(int(v) * int(v) for v in x)
    r = (math.isqrt(n << 16) << 15) // max(math.isqrt(ss << 16), 1)
    return [_ref_requant(int(v) * int(g) * r, m0, shift) for v, g in zip(x, gamma)]


def _ref_unpack(packed, k):
    out = []
    for row in packed:
        w = []
        for j in range(k):
            code = (int(row[j // 4]) >> (2 * (j % 4))) & 3
            w.append({0b01: 1, 0b11: -1}.get(code, 0))
        out.append(w)
    return out


def test_bitlinear_int_matches_independent_recomputation(int_models):
    """VRMS -> VQUANT -> GEMM_TERN -> VSCALE -> VREQ of the shipped model, recomputed from
    the op definitions with Python integers."""
    im = int_models["mmfree"]
    bl = im.layers[0].i_proj
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(1, bl.K)).astype(np.int8)
    M = IntMachine()
    M["x"] = x
    mmfree_int.bitlinear(M, bl, "x", "y")
    # independent recomputation
    u = _ref_rmsnorm(x[0], bl.norm.gamma, bl.norm.rq.M0, bl.norm.rq.shift)
    m = max(max(abs(v) for v in u), 1)
    R = (127 << 24) // m
    q = [max(-127, min(127, (v * R + (1 << 23)) >> 24)) for v in u]
    W = _ref_unpack(bl.w_packed, bl.K)
    acc = [sum(qi * wi for qi, wi in zip(q, row)) * m for row in W]
    _, _, rq, _ = bl.out[0]
    y = [_ref_requant(a, rq.M0, rq.shift) for a in acc]
    assert M["y.u"][0].tolist() == u
    assert M["y.q"][0].tolist() == q and int(M["y.m"][0]) == m
    assert M["y.acc"][0].tolist() == acc
    assert M["y"][0].tolist() == y
    # and the float meaning: y ~= BitLinear(x) / s_y
    assert abs(rq.real - bl.a * bl.norm.out_scale / (127 * bl.out[0][3])) < 1e-12


def test_gpt_attention_head_matches_numerics(int_models):
    """One decode step's head 0 of layer 0 against numerics ops called directly."""
    im = int_models["gpt"]
    state = im.init_state()
    for tok in (3, 17, 42):
        M = IntMachine()
        _, _, _, state = im.step(tok, state, M)
    L, hd, t = im.layers[0], im.cfg.head_dim, state["pos"]
    q = M["l0.qkv"][:, :hd]
    K, V = state["K"][0, 0, :t], state["V"][0, 0, :t]
    s = numerics.requantize(numerics.gemm_i8(q, K), L.score_rq.M0, L.score_rq.shift)
    p = numerics.softmax(s, L.exp_table)
    o = numerics.requantize(numerics.gemm_i8(p, V, w_transposed=True), L.pv_rq.M0,
                            L.pv_rq.shift)
    np.testing.assert_array_equal(M["l0.h0.a"], o)
    assert 0 < int(p.sum()) <= 127 + t
