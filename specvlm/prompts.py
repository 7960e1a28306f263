"""A user's prompt (text through the chat template, or token ids) as checked token ids for the target."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import PromptError
from .models import TargetModel

PromptLike = str | Sequence[int] | torch.Tensor


def prompt_ids(target: TargetModel, prompt: PromptLike, *, chat: bool = True) -> list[int]:
    """Token ids for `target`: a str goes through the chat template (`chat`), ids are used as given; checked
    against the vocabulary and the context window."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty: give some text, or a list of token ids")
        tok = target.tokenizer
        if tok is None:
            raise PromptError("this target was given without a tokenizer: pass the prompt as a list of token ids")
        if chat and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        ids = [int(i) for i in ids]
    else:
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] != 1):
                raise PromptError(f"prompt tensor must be [L] or [1, L], got shape {tuple(prompt.shape)}")
            prompt = prompt.reshape(-1).tolist()
        try:
            ids = [int(i) for i in prompt]
        except (TypeError, ValueError) as err:
            raise PromptError("the prompt must be a string or a sequence of integer token ids") from err
    if not ids:
        raise PromptError("the prompt has no tokens: give some text, or at least one token id")
    bad = [i for i in ids if not 0 <= i < target.vocab_size]
    if bad:
        raise PromptError(
            f"token id {bad[0]} is outside the target's vocabulary [0, {target.vocab_size}): "
            "check that the ids come from this model's tokenizer"
        )
    if len(ids) >= target.max_positions:
        raise PromptError(
            f"the prompt has {len(ids)} tokens but the target's context window is {target.max_positions}: "
            "shorten the prompt so at least one new token fits"
        )
    return ids
