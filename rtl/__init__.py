"""tritium.rtl."""
