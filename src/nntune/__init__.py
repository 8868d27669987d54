"""nntune: neural-network hyperparameter tuning as a reproducible DVC pipeline."""

__version__ = "0.1.0"
