"""tritium.fpga."""
