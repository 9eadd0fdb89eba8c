"""tritium.firmware."""
