"""One error family for every user mistake: the message always says what to do."""

from __future__ import annotations


class SpecVLMError(Exception):
    """Base class for every error caused by input the user can fix."""


class PromptError(SpecVLMError, ValueError):
    """Empty prompts, prompts past the context window, token ids outside the vocabulary."""


class ConfigError(SpecVLMError, ValueError):
    """Invalid generation settings: max_new_tokens, temperature, top_p, unknown tree names."""


class ModelLoadError(SpecVLMError, OSError):
    """A model path or id that cannot be loaded, or a draft that does not fit its target."""


class GrowmapError(SpecVLMError, ValueError):
    """A static-tree file that is missing, malformed or unsafe."""


class ImageError(SpecVLMError, ValueError):
    """Missing, corrupt or unsupported images, or an image given to a text-only target."""
