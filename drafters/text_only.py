"""A text-only view of a drafter for a vision-language target (defined with the drafter contract in specvlm).

`TextOnlyDrafter(base, image_token_id)` gives `base` the prompt with the image tokens removed; see
`specvlm.drafting.DraftContext.text_only`. Any drafter works inside: a small text LM that shares the target's
tokenizer, the embedded SmolLM2 when tokenizers match, or n-gram prompt lookup.
"""

from specvlm.drafting import TextOnlyDrafter

__all__ = ["TextOnlyDrafter"]
