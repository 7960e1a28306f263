"""Draft sources for specvlm: n-gram lookup, independent small LMs, layer-skip self-drafts, trained feature drafts,
and mixtures of them."""

from .base import Drafter, DraftSession
from .feature_draft import FeatureDrafter
from .followers import FollowerDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .ngram import NGramDrafter
from .text_only import TextOnlyDrafter

__all__ = [
    "DraftSession",
    "Drafter",
    "FeatureDrafter",
    "FollowerDrafter",
    "MixtureDrafter",
    "ModelDrafter",
    "NGramDrafter",
    "TextOnlyDrafter",
]
