"""The tree-builder interface: grow a draft tree from a draft session within the step's limits."""

from __future__ import annotations

import time
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
    #: greedy trees are sized for tokens per second from the target's measured forward costs (`limits.speed`)
    hardware_aware: bool = False

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


def sized_for_speed(tree: GrowingTree, limits: StepLimits, cap: int, draft_s: float) -> list[int]:
    """The `cap` most probable nodes, cut to the count with the most predicted tokens per second when the step
    has a speed model (ancestor-closed: a child never outranks its parent)."""
    ranked = tree.ranked()[: max(cap, 0)]
    if limits.speed is not None:
        ranked = ranked[: limits.speed.best_count(tree.gains(ranked), 1000 * draft_s)]
    return sorted(ranked)


def worth_another_level(
    tree: GrowingTree, limits: StepLimits, cap: int, frontier: list[int], started: float, level_started: float
) -> bool:
    """Whether drafting one more level below `frontier` could raise the predicted tokens per second (always True
    without a speed model).  Best case: the level costs what the last one did and its children carry all of their
    parents' path probability."""
    if limits.speed is None:
        return True
    now = time.perf_counter()
    gains = tree.gains(tree.ranked()[: max(cap, 0)])
    more = sum(tree.gains(frontier))
    return limits.speed.worth_drafting(gains, 1000 * (now - started), 1000 * (now - level_started), more, len(frontier))


def expand(tree: GrowingTree, session: DraftSession, nodes: list[int], widths: list[int]) -> list[list[int]]:
    """Ask the draft for logits at `nodes` (one draft call) and give node i up to widths[i] children."""
    if not nodes:
        return []
    probs = tree.draft_probs(session.logits(nodes, tree.tokens, tree.parents))  # [K, V]
    return [tree.add_children(n, probs[i], w) for i, (n, w) in enumerate(zip(nodes, widths, strict=True))]
