"""fraudstream.generator."""
