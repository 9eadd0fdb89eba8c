"""Language-model step kernels (placeholder; filled in below)."""
