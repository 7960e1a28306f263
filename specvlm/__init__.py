"""specvlm: lossless tree-based speculative decoding for Hugging Face LLMs and LLaVA-style VLMs.

The names below load on first use (PEP 562), so torch-free modules such as `specvlm.errors` and
`specvlm.spec_grammar` can be imported by a CLI's `--help` without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_WHERE = {
    "Decoder": ".api",
    "Generation": ".api",
    "generate": ".api",
    "load": ".api",
    "Autoregressive": ".builders",
    "BranchingTree": ".builders",
    "ChainTree": ".builders",
    "DynamicTree": ".builders",
    "OptTree": ".builders",
    "TemplateTree": ".builders",
    "TreeBuilder": ".builders",
    "StaticTree": ".builders.static",
    "ConfigError": ".errors",
    "GrowmapError": ".errors",
    "ImageError": ".errors",
    "ModelLoadError": ".errors",
    "PromptError": ".errors",
    "SpecVLMError": ".errors",
    "Sampling": ".sampling",
    "GenerationStats": ".stats",
    "TokenTree": ".tree",
    "make_tree": ".trees",
}

if TYPE_CHECKING:
    from .api import Decoder, Generation, generate, load
    from .builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TemplateTree, TreeBuilder
    from .builders.static import StaticTree
    from .errors import ConfigError, GrowmapError, ImageError, ModelLoadError, PromptError, SpecVLMError
    from .sampling import Sampling
    from .stats import GenerationStats
    from .tree import TokenTree
    from .trees import make_tree


def __getattr__(name: str) -> Any:
    if name not in _WHERE:  # a submodule (`specvlm.embedded`) is imported on first use, as an eager package would
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'specvlm' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


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
