"""tritium.host.models: NumPy reference models, their integer versions, and checkpoints.

``mmfree``      MatMul-free LM (HGRN-Bit) float reference (with QAT fake-quant semantics)
``gpt``         small INT8 GPT float reference (with QAT fake-quant semantics, KV cache)
``common``      the array backend shared by the NumPy references and the PyTorch trainer
``mmfree_int``  integer MatMul-free model, token-by-token, tritium.numerics ops only
``gpt_int``     integer GPT, token-by-token, tritium.numerics ops only
``intops``      the device ops over named tensors (``IntMachine``, op traces)
``quantize``    ``quantize_model(checkpoint, calib_tokens)`` -> integer model
``checkpoint``  the checkpoint file format (npz + JSON header + sha256)
"""
