"""Training, evaluating and backtesting: models and rules measured on labelled history."""
