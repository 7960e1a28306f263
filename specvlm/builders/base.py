"""The tree-builder interface: grow a draft tree from a draft session within the step's limits."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..drafting import DraftSession
from ..sampling import Sampling
from ..tree import TokenTree
from .growing import GrowingTree, StepLimits


class TreeBuilder(ABC):
    name: str = "tree"
    #: children drawn from q without replacement when sampling (lossless only for shapes fixed in advance)
    samples_children: bool = False

    @abstractmethod
    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        """Grow `tree` in place; return the nodes to keep (None = all)."""

    def build(
        self, session: DraftSession, root: int, limits: StepLimits, sampling: Sampling, generator: torch.Generator
    ) -> TokenTree:
        tree = GrowingTree(root, sampling, generator, sampled=self.samples_children)
        if limits.max_depth > 0 and limits.max_nodes > 1:
            keep = self.grow(tree, session, limits)
            if keep is not None:
                return tree.freeze(keep)
        return tree.freeze()


def expand(tree: GrowingTree, session: DraftSession, nodes: list[int], widths: list[int]) -> list[list[int]]:
    """Ask the draft for logits at `nodes` (one draft call) and give node i up to widths[i] children."""
    if not nodes:
        return []
    probs = tree.draft_probs(session.logits(nodes, tree.tokens, tree.parents))  # [K, V]
    return [tree.add_children(n, probs[i], w) for i, (n, w) in enumerate(zip(nodes, widths, strict=True))]
