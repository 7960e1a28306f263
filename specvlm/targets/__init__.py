"""Target adapters: how each model family attends, numbers positions and keeps a path, decided once per model."""

from .masks import layer_masks
from .scheme import ModelScheme, scheme_for

__all__ = ["ModelScheme", "layer_masks", "scheme_for"]
