"""Stateful per-entity features by event time: see `config.py` for the exact semantics."""

from fraudstream.core.features.config import FeatureConfig, window_label
from fraudstream.core.features.state import FeatureState, StateStats

__all__ = ["FeatureConfig", "FeatureState", "StateStats", "window_label"]
