"""A seeded simulator of card payments with labelled fraud scenarios.

`generate(GeneratorConfig(seed=7))` gives the same transactions and labels every time;
`iter_batches` replays them in time order; `fraudstream.generator.output` writes them to files.
"""

from fraudstream.generator.config import GeneratorConfig
from fraudstream.generator.simulate import GeneratedStream, generate, iter_batches

__all__ = ["GeneratedStream", "GeneratorConfig", "generate", "iter_batches"]
