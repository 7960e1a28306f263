"""The drafter interface the tree builders talk to.

A `Drafter` holds weights (or none); `session()` starts one generation. Within a decoding step the builder grows
a tree level by level and asks the session for the draft logits at the nodes it wants to expand; after the target
verified the tree, `commit` tells the session which path was kept and which tokens were added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .builders import TreeBuilder


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

    def observe(self, tokens: list[int], parents: list[int], target_top: list[int]) -> None:  # noqa: B027 - optional
        """The target's most likely next token after each node of the tree it just scored (before `commit`)."""

    def observe_hidden(self, hidden: torch.Tensor) -> None:  # noqa: B027 - optional
        """The target's last hidden state (final-normed) at every node of the tree it just scored: [N, H].
        Called before `commit` when the drafter sets `needs_target_hidden`."""


class Drafter(ABC):
    """A source of draft distributions for one target."""

    name: str = "drafter"
    #: True: the engine passes the target's last hidden states (final-normed, [L, H]) to `session` as
    #: `target_hidden` (prompt positions but the last) and to `DraftSession.observe_hidden` after each tree forward
    needs_target_hidden: bool = False
    #: the tree a Decoder uses with this drafter when none is given (None: the library default)
    default_tree: TreeBuilder | None = None

    @abstractmethod
    def session(self, prompt_ids: list[int], vocab_size: int, **inputs: Any) -> DraftSession:
        """Start drafting after `prompt_ids` (whose last token is the first root).  `inputs` may hold pixel_values."""

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced draft logits for the next token after every position of `ids` [L] -> [L, V_draft]
        (the draft's own vocabulary width; `specvlm.potential.fit_vocab` pads or trims it to the target's).
        `target_hidden` [L, H] holds the target's last hidden states when `needs_target_hidden`, else None."""
        raise NotImplementedError(f"{type(self).__name__} does not score whole sequences")
