"""Draft sources for specvlm: n-gram lookup, small LMs, layer-skip self-drafts, trained feature drafts, mixtures."""

from specvlm.drafting import DraftContext, Drafter, DraftSession, WrappingDrafter

from .feature_draft import FeatureDrafter
from .followers import FollowerDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .ngram import NGramDrafter
from .text_only import TextOnlyDrafter

__all__ = [
    "DraftContext",
    "DraftSession",
    "Drafter",
    "FeatureDrafter",
    "FollowerDrafter",
    "MixtureDrafter",
    "ModelDrafter",
    "NGramDrafter",
    "TextOnlyDrafter",
    "WrappingDrafter",
]
