"""specvlm: lossless tree-based speculative decoding for Hugging Face LLMs and LLaVA-style VLMs."""

from .api import Decoder, Generation, generate, load
from .builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TemplateTree, TreeBuilder
from .builders.static import StaticTree
from .errors import ConfigError, GrowmapError, ImageError, ModelLoadError, PromptError, SpecVLMError
from .sampling import Sampling
from .stats import GenerationStats
from .tree import TokenTree
from .trees import make_tree

__all__ = [
    "Autoregressive",
    "BranchingTree",
    "ChainTree",
    "ConfigError",
    "Decoder",
    "DynamicTree",
    "Generation",
    "GenerationStats",
    "GrowmapError",
    "ImageError",
    "ModelLoadError",
    "OptTree",
    "PromptError",
    "Sampling",
    "SpecVLMError",
    "StaticTree",
    "TemplateTree",
    "TokenTree",
    "TreeBuilder",
    "generate",
    "load",
    "make_tree",
]
__version__ = "0.1.0"
