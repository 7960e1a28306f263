"""A text-only draft for a vision-language target: the draft sees the prompt with the image tokens removed.

The target's cache holds [text | image prefix | text]; the draft's cache holds the text alone, at its own positions
(0, 1, 2, ... over the text tokens). Drafted tokens are text either way, so verification is unchanged and lossless;
the draft only loses what the image would have told it. Any drafter works inside: a small text LM that shares the
target's tokenizer, the embedded SmolLM2 when tokenizers match, or n-gram prompt lookup.
"""

from __future__ import annotations

from typing import Any

import torch

from specvlm.vlm import ImagePrompt, strip_image_tokens

from .base import Drafter, DraftSession


class TextOnlyDrafter(Drafter):
    """Wrap a drafter that cannot see images: strip the target's image tokens and drop the pixel inputs."""

    handles_images = True  # it takes `images=` itself (and uses only their token id)

    def __init__(self, base: Drafter, image_token_id: int):
        self.base = base
        self.image_token_id = image_token_id
        self.name = f"{base.name}(text only)"
        self.needs_target_hidden = base.needs_target_hidden
        self.default_tree = base.default_tree

    def session(
        self, prompt_ids: list[int], vocab_size: int, images: ImagePrompt | None = None, **inputs: Any
    ) -> DraftSession:
        token = images.token_id if images is not None else self.image_token_id
        extra = {}
        hidden = inputs.get("target_hidden")  # [L - 1, H]: every prompt position but the last
        if hidden is not None:  # a feature draft reads the target's states at the text positions only
            text = torch.tensor([t != token for t in prompt_ids[: hidden.shape[0]]], device=hidden.device)
            extra["target_hidden"] = hidden[text]
        return self.base.session(strip_image_tokens(prompt_ids, token), vocab_size, **extra)

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """The base draft's logits over the text positions of `ids` (image tokens dropped): [L_text, V]."""
        text = ids != self.image_token_id  # [L]
        return self.base.sequence_logits(ids[text], target_hidden[text] if target_hidden is not None else None)
