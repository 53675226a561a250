"""fraudstream: real-time payment fraud scoring."""

__version__ = "0.1.0"
