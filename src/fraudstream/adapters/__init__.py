"""fraudstream.adapters."""
