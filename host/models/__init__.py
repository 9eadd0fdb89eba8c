"""tritium.host.models: NumPy reference models, their integer versions, and checkpoints.

``mmfree``      MatMul-free LM (HGRN-Bit) float reference (with QAT fake-quant semantics)
``gpt``         small INT8 GPT float reference (with QAT fake-quant semantics)
``mmfree_int``  integer MatMul-free model, token-by-token, tritium.numerics ops only
``gpt_int``     integer GPT, token-by-token, tritium.numerics ops only
``checkpoint``  the checkpoint file format (npz + JSON header + sha256)
``common``      the array backend shared by the NumPy references and the PyTorch trainer
"""
