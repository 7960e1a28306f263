"""Fixed-shape trees: the autoregressive baseline (root only), a chain, and per-level branching factors."""

from __future__ import annotations

from dataclasses import dataclass

from ..drafting import DraftSession
from ..errors import ConfigError
from .base import TreeBuilder, draft_levels, expand, sized_for_speed
from .growing import GrowingTree, StepLimits


@dataclass(frozen=True)
class Autoregressive(TreeBuilder):
    """No draft: one target call per token. The baseline runs through the same engine loop."""

    name: str = "ar"

    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        return [0]


@dataclass(frozen=True)
class ChainTree(TreeBuilder):
    """Classic speculative decoding: a single chain of `depth` drafted tokens.

    `hardware_aware` (greedy decoding, specvlm/costs.py): `depth` is a ceiling; the chain stops growing when one more
    token cannot raise the predicted tokens per second, and keeps the prefix that maximises them."""

    depth: int = 6
    name: str = "chain"
    samples_children: bool = True
    hardware_aware: bool = True

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ConfigError(f"ChainTree needs depth >= 1, got {self.depth} (use tree='ar' for no drafting)")

    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        cap = min(self.depth, limits.max_depth, limits.max_nodes - 1)
        draft_s = draft_levels(tree, limits, cap, cap, lambda tip: expand(tree, session, tip, [1])[0])
        return None if limits.speed is None else sized_for_speed(tree, limits, cap, draft_s)


def template_from_branching(branching: list[int]) -> list[int]:
    """Parents of a full tree where every node at level d has branching[d] children (node 0 = root)."""
    parents, level = [-1], [0]
    for width in branching:
        nxt = []
        for p in level:
            for _ in range(width):
                parents.append(p)
                nxt.append(len(parents) - 1)
        level = nxt
    return parents


@dataclass(frozen=True)
class TemplateTree(TreeBuilder):
    """A fixed tree shape: template node i's children are its parent's next-ranked draft tokens.

    With sampling, a node's children are k draws without replacement from q, so the shape never depends on what
    was drawn and recursive rejection sampling stays exact.
    """

    parents: tuple[int, ...] = (-1,)
    name: str = "static"
    samples_children: bool = True

    def grow(self, tree: GrowingTree, session: DraftSession, limits: StepLimits) -> list[int] | None:
        budget = min(len(self.parents), limits.max_nodes)
        kids: list[list[int]] = [[] for _ in range(budget)]
        for i in range(1, budget):
            kids[self.parents[i]].append(i)
        frontier = [(0, 0)]  # (tree node, template node)
        for _ in range(limits.max_depth):
            todo = [(n, t) for n, t in frontier if kids[t]]
            if not todo:
                break
            made = expand(tree, session, [n for n, _ in todo], [len(kids[t]) for _, t in todo])
            frontier = [(c, kids[t][i]) for (_, t), cs in zip(todo, made, strict=True) for i, c in enumerate(cs)]
        return None


def BranchingTree(branching: list[int] | tuple[int, ...]) -> TemplateTree:
    """Every node at level d gets branching[d] children, e.g. [4, 2, 2, 1, 1]."""
    widths = [int(w) for w in branching]
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"branching factors must be positive integers, got {list(branching)}")
    return TemplateTree(parents=tuple(template_from_branching(widths)), name="static")
