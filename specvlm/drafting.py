"""The drafter contract: a frozen `DraftContext` in, a `DraftSession` out, and the capabilities a drafter declares.

A `Drafter` holds weights (or none) and declares what it needs and takes: `needs_target_hidden` (the target's
hidden states: by default the last, final-normed; `target_layers` names others, e.g. EAGLE-3's three) and
`handles_images` (it reads `DraftContext.images` itself). `session(context)` starts one
generation; the engine then calls `prefill()` once (the draft's prompt cost counts as prefill), and in every step the
tree builder asks `logits` at the nodes it expands; after the target verified the tree, `commit` tells the session
which path was kept and which tokens were added. Wrappers (`WrappingDrafter`) derive their capabilities from what
they wrap; a mixture from its parts. The engine never looks inside a drafter.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .builders import TreeBuilder
    from .vlm import ImagePrompt


@dataclass(frozen=True)
class DraftContext:
    """What a draft session starts from: the prompt as the target holds it, and what the target can tell."""

    prompt_ids: tuple[int, ...]  # the target's ids, image tokens included; the last one is the first root
    vocab_size: int  # the target's vocabulary: sessions return [K, vocab_size] logits
    #: [L - 1, k H] the target's hidden states at every prompt position but the last (the drafter's
    #: `target_layers`, k of them side by side; by default the last, final-normed); given to drafters that declare
    #: `needs_target_hidden`, else None
    target_hidden: torch.Tensor | None = None
    images: ImagePrompt | None = None  # a VLM target's images (pixel values, token counts); None for text prompts

    def text_only(self, image_token_id: int | None = None) -> DraftContext:
        """What a draft that cannot see images gets: the ids without the image tokens (their hidden states dropped
        too), no images. `image_token_id` is the target's, used when the context holds no images."""
        token = self.images.token_id if self.images is not None else image_token_id
        if token is None:
            return dataclasses.replace(self, images=None)
        from .vlm import strip_image_tokens

        hidden = self.target_hidden
        if hidden is not None:  # [L - 1, H] -> [L_text - 1, H]: the states at the text positions
            text = torch.tensor([t != token for t in self.prompt_ids[: hidden.shape[0]]], device=hidden.device)
            hidden = hidden[text]
        return DraftContext(tuple(strip_image_tokens(self.prompt_ids, token)), self.vocab_size, hidden)

    def for_drafter(self, drafter: Drafter) -> DraftContext:
        """The context as `drafter` declared it wants it: images only if it handles them, hidden states only if it
        needs them."""
        ctx = self if drafter.handles_images or self.images is None else self.text_only()
        return ctx if drafter.needs_target_hidden else dataclasses.replace(ctx, target_hidden=None)


class DraftSession(ABC):
    """Draft state for one generation (its KV cache, its token history)."""

    @abstractmethod
    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Draft logits after each node in `nodes`, given the tree grown so far (tokens/parents of all its nodes,
        node 0 = root = last committed token).  Returns [len(nodes), V_target]; a row of -inf proposes nothing."""

    @abstractmethod
    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        """The target kept `path` (node indices from the root) and the sequence grew by `new_tokens`."""

    #: set True to receive the target's argmax at every scored node through `observe`
    wants_target_feedback: bool = False
    #: True when a mixture may leave this session out at some nodes and whole steps: asked for a node below
    #: unasked ancestors it feeds them first, and `commit` after a step it was never asked in loses nothing
    supports_skips: bool = False

    def prefill(self, root: int) -> None:
        """Take in the prompt now, before the first step (the engine calls it once, so the draft's prompt cost counts
        as prefill): by default the root's logits are asked for once and kept."""
        self.logits([0], [root], [-1])

    def observe(self, tokens: list[int], parents: list[int], target_top: list[int]) -> None:  # noqa: B027 - optional
        """The target's most likely next token after each node of the tree it just scored (before `commit`)."""

    def observe_hidden(self, hidden: torch.Tensor) -> None:  # noqa: B027 - optional
        """The target's hidden states at every node of the tree it just scored: [N, k H] (the drafter's
        `target_layers`). Called before `commit` when the drafter sets `needs_target_hidden`."""


class Drafter(ABC):
    """A source of draft distributions for one target."""

    name: str = "drafter"
    #: True: the context carries the target's last hidden states (`DraftContext.target_hidden`) and the session gets
    #: `observe_hidden` after each tree forward
    needs_target_hidden: bool = False
    #: which of the target's `output_hidden_states` the session gets, side by side on the last dim (transformers'
    #: numbering: 0 = the embeddings, i = the input of decoder layer i, -1 = the last, final-normed)
    target_layers: tuple[int, ...] = (-1,)
    #: True: the session reads `DraftContext.images` itself (a VLM draft); False: for a VLM target it is given the
    #: text-only context (`DraftContext.text_only`) by whoever wraps it
    handles_images: bool = False
    #: the tree a Decoder uses with this drafter when none is given (None: the library default)
    default_tree: TreeBuilder | None = None

    @abstractmethod
    def session(self, context: DraftContext) -> DraftSession:
        """Start drafting after `context.prompt_ids` (whose last token is the first root)."""

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced draft logits for the next token after every position of `ids` [L] -> [L, V_draft]
        (the draft's own vocabulary width; `specvlm.potential.fit_vocab` pads or trims it to the target's).
        `target_hidden` [L, H] holds the target's last hidden states when `needs_target_hidden`, else None."""
        raise NotImplementedError(f"{type(self).__name__} does not score whole sequences")


class WrappingDrafter(Drafter):
    """A drafter around another (`self.base`): what it needs and takes is what the wrapped drafter declares."""

    def __init__(self, base: Drafter):
        self.base = base
        self.default_tree = base.default_tree

    @property
    def needs_target_hidden(self) -> bool:  # type: ignore[override]
        return self.base.needs_target_hidden

    @property
    def target_layers(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.base.target_layers

    @property
    def handles_images(self) -> bool:  # type: ignore[override]
        return self.base.handles_images


class TextOnlyDrafter(WrappingDrafter):
    """A drafter that cannot see images, for a VLM target: it drafts from the prompt's text.

    The target's cache holds [text | image prefix | text]; the wrapped draft's cache holds the text alone, at its own
    positions. Drafted tokens are text either way, so verification is unchanged and lossless; the draft only loses
    what the image would have told it.
    """

    def __init__(self, base: Drafter, image_token_id: int):
        super().__init__(base)
        self.image_token_id = image_token_id
        self.name = f"{base.name}(text only)"

    @property
    def handles_images(self) -> bool:  # type: ignore[override]
        return True  # it takes the images' context and hands the wrapped draft the text

    def session(self, context: DraftContext) -> DraftSession:
        return self.base.session(context.text_only(self.image_token_id).for_drafter(self.base))

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """The base draft's logits over the text positions of `ids` (image tokens dropped): [L_text, V]."""
        text = ids != self.image_token_id  # [L]
        return self.base.sequence_logits(ids[text], target_hidden[text] if target_hidden is not None else None)


def for_target(drafter: Drafter, image_token_id: int | None) -> Drafter:
    """The drafter as a target needs it: for a VLM target (`image_token_id` set) a drafter that cannot see images is
    wrapped in TextOnlyDrafter."""
    if image_token_id is None or drafter.handles_images:
        return drafter
    return TextOnlyDrafter(drafter, image_token_id)
