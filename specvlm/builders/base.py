"""The tree-builder interface: grow a draft tree from a draft session within the step's limits."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

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


def draft_levels(
    tree: GrowingTree, limits: StepLimits, cap: int, levels: int, level: Callable[[list[int]], list[int]]
) -> float:
    """The hardware-aware level loop: `level(frontier)` drafts one level below `frontier` (the root first) and
    returns the next frontier; stop after `levels` levels, at an empty frontier, or when by the step's speed model
    another level cannot raise the predicted tokens per second of the `cap` most probable nodes. Returns the
    seconds spent drafting (for `sized_for_speed`)."""
    started, frontier = time.perf_counter(), [0]
    for _ in range(levels):
        level_started = time.perf_counter()
        frontier = level(frontier)
        if not frontier or not worth_another_level(tree, limits, cap, frontier, started, level_started):
            break
    return time.perf_counter() - started


def sized_for_speed(
    tree: GrowingTree, limits: StepLimits, cap: int, draft_s: float, among: list[int] | None = None
) -> list[int]:
    """The `cap` most probable nodes (of `among`, else of the whole tree), cut to the count with the most
    predicted tokens per second when the step has a speed model (ancestor-closed: a child never outranks its
    parent)."""
    ranked = tree.ranked(among)[: max(cap, 0)]
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
