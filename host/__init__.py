"""tritium.host."""
