"""Trees shaped every step by draft confidence: EAGLE-2 style dynamic trees and OPT-Tree.

Children are always the draft's top-ranked tokens (never sampled), so whatever shape the draft's confidence gives,
verification stays exact: a deterministic sibling set is verified with point-mass q (see verify.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..drafting import DraftSession
from ..errors import ConfigError
from .base import TreeBuilder, draft_levels, expand, sized_for_speed
from .growing import GrowingTree, StepLimits


@dataclass(frozen=True)
class DynamicTree(TreeBuilder):
    """Token budget B (Dynasurge's --B): expand the `topk` most probable paths of each level, `topk` children each,
    for up to `depth` levels, then keep the B best nodes overall by path probability (EAGLE-2's rerank).

    `hardware_aware` (greedy decoding, specvlm/costs.py): B is a ceiling; drafting stops at the first level that
    cannot raise the predicted tokens per second, and the tree keeps the count of best nodes that maximises them."""

    budget: int = 32
    topk: int = 4
    depth: int = 8
    name: str = "dynamic"
    hardware_aware: bool = True

    def __post_init__(self) -> None:
        if self.budget < 1 or self.topk < 1 or self.depth < 1:
            raise ConfigError(f"DynamicTree needs budget, topk and depth >= 1, got {self}")

    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        cap = min(self.budget, limits.max_nodes - 1)

        def level(frontier: list[int]) -> list[int]:  # the `topk` most probable of the new level grow next
            made = [c for cs in expand(tree, session, frontier, [self.topk] * len(frontier)) for c in cs]
            return tree.ranked(made)[: self.topk]

        draft_s = draft_levels(tree, limits, cap, min(self.depth, limits.max_depth), level)
        return sized_for_speed(tree, limits, cap, draft_s)


@dataclass(frozen=True)
class OptTree(TreeBuilder):
    """OPT-Tree (Wang et al. 2024): grow layer by layer keeping the `nodes` best candidates by path probability;
    stop when a layer raises the expected accepted length E = sum of path probabilities of the best `nodes` nodes
    by no more than `threshold`, or at `max_depth`; the tree is the best `nodes` nodes."""

    nodes: int = 60
    threshold: float = 0.5
    max_depth: int = 10
    name: str = "opt"
    hardware_aware: bool = True  # greedy: `nodes` is a ceiling (see DynamicTree)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.max_depth < 1 or self.threshold < 0:
            raise ConfigError(f"OptTree needs nodes >= 1, max_depth >= 1, threshold >= 0, got {self}")

    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        count = min(self.nodes, limits.max_nodes - 1)
        chosen: list[int] = []  # the best `count` nodes so far (ancestor-closed)
        expected = 0.0  # their summed path probability, E

        def level(frontier: list[int]) -> list[int]:  # the new level's chosen nodes grow next
            nonlocal chosen, expected
            made = [c for cs in expand(tree, session, frontier, [count] * len(frontier)) for c in cs]
            if not made:
                return []
            layer = sorted(made, key=lambda n: (-tree.logp[n], n))[:count]
            candidate = tree.best(count, among=chosen + layer)
            gain = sum(math.exp(tree.logp[n]) for n in candidate) - expected
            if chosen and gain <= self.threshold:
                return []
            chosen = candidate
            expected += gain
            return [n for n in layer if n in set(chosen)]

        draft_s = draft_levels(tree, limits, count, min(self.max_depth, limits.max_depth), level)
        if limits.speed is None or not chosen:
            return chosen
        return sized_for_speed(tree, limits, len(chosen), draft_s, among=chosen)
