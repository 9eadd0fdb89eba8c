"""tritium.sim."""
