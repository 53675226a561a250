"""fraudstream.runners."""
