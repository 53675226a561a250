"""fraudstream.core.rules."""
