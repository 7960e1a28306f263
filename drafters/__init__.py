"""Draft sources for specvlm: n-gram lookup (no weights), independent small LMs, and later trained drafts."""

from .base import Drafter, DraftSession
from .followers import FollowerDrafter
from .model import ModelDrafter
from .ngram import NGramDrafter
from .text_only import TextOnlyDrafter

__all__ = ["DraftSession", "Drafter", "FollowerDrafter", "ModelDrafter", "NGramDrafter", "TextOnlyDrafter"]
