"""tritium: an open accelerator for small language models.

The ``tritium`` core package holds the contract every part obeys: :mod:`tritium.config`
(accelerator configuration and presets), :mod:`tritium.isa` (instruction formats),
:mod:`tritium.numerics` (bit-exact integer semantics) and :mod:`tritium.golden` (the golden
model: a NumPy interpreter of the ISA).
"""

__version__ = "0.1.0"
