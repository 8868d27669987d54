"""The private APIs of Keras that nntune needs, and nowhere else.

An exact warm start reseeds every random layer (dropout, noise) at each epoch; Keras 3
keeps a layer's seed generators in a private list and the layers of a model in a private
walk. ``pyproject.toml`` bounds Keras to the versions this was tested with, and
``tests/test_layout.py`` checks that the installed Keras still has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# The private members of keras.layers.Layer used below.
USED = ("_flatten_layers", "_seed_generators")


def seed_generators(model: Any) -> Iterator[tuple[int, int, Any]]:
    """(layer position, generator number, ``keras.random.SeedGenerator``) for every seed
    generator of every layer of ``model``, nested layers included, in a stable order."""
    for position, layer in enumerate(model._flatten_layers()):
        for number, generator in enumerate(layer._seed_generators):
            yield position, number, generator
