"""Reading the model's output layer: one probability per class, the same way wherever a
prediction is made (the evaluate stage, ``nntune predict``). NumPy only."""

from __future__ import annotations

import numpy as np


def class_probabilities(output: np.ndarray) -> np.ndarray:
    """(n, K) float64 probabilities summing to 1 per row; a sigmoid head's (n, 1) column
    becomes [1 - p, p]. float32 softmax rows miss 1 by rounding, which log_loss warns about."""
    output = output.astype("float64")
    if output.ndim == 2 and output.shape[1] == 1:
        p = output[:, 0]
        return np.column_stack([1.0 - p, p])
    normalised: np.ndarray = output / output.sum(axis=1, keepdims=True)
    return normalised
