"""fraudstream.core."""
