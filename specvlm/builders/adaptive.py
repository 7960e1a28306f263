"""Trees shaped every step by draft confidence: EAGLE-2 style dynamic trees and OPT-Tree.

Children are always the draft's top-ranked tokens (never sampled), so whatever shape the draft's confidence gives,
verification stays exact: a deterministic sibling set is verified with point-mass q (see verify.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..drafting import DraftSession
from ..errors import ConfigError
from .base import TreeBuilder, expand, sized_for_speed, worth_another_level
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
        started, frontier = time.perf_counter(), [0]
        cap = min(self.budget, limits.max_nodes - 1)
        for _ in range(min(self.depth, limits.max_depth)):
            level_started = time.perf_counter()
            made = [c for cs in expand(tree, session, frontier, [self.topk] * len(frontier)) for c in cs]
            if not made:
                break
            frontier = tree.ranked(made)[: self.topk]
            if not worth_another_level(tree, limits, cap, frontier, started, level_started):
                break
        return sized_for_speed(tree, limits, cap, time.perf_counter() - started)


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
        started = time.perf_counter()
        count = min(self.nodes, limits.max_nodes - 1)
        frontier, chosen, expected = [0], [], 0.0
        for _ in range(min(self.max_depth, limits.max_depth)):
            level_started = time.perf_counter()
            made = [c for cs in expand(tree, session, frontier, [count] * len(frontier)) for c in cs]
            if not made:
                break
            layer = sorted(made, key=lambda n: (-tree.logp[n], n))[:count]
            candidate = tree.best(count, among=chosen + layer)
            gain = sum(math.exp(tree.logp[n]) for n in candidate) - expected
            if chosen and gain <= self.threshold:
                break
            chosen = candidate
            expected += gain
            frontier = [n for n in layer if n in set(chosen)]
            if not frontier or not worth_another_level(tree, limits, count, frontier, started, level_started):
                break
        if limits.speed is None or not chosen:
            return chosen
        ranked = tree.ranked(chosen)
        return sorted(ranked[: limits.speed.best_count(tree.gains(ranked), 1000 * (time.perf_counter() - started))])
