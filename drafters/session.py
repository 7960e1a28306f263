"""The bookkeeping every tree-fed draft session shares: committed-but-unfed tokens, node slots, node logits."""

from __future__ import annotations

from abc import abstractmethod

import torch

from specvlm.drafting import DraftSession


def unfed_levels(nodes: list[int], parents: list[int], fed: dict[int, int] | set[int]) -> list[list[int]]:
    """The nodes of `nodes` not fed yet, with their unfed ancestors (a mixture may have skipped this session at
    some), grouped by depth below their deepest fed ancestor: feed the groups in order, each in one forward."""
    missing: dict[int, int] = {}  # node -> depth below its deepest fed ancestor
    for node in nodes:
        chain, cur = [], node
        while cur not in fed and cur not in missing:
            chain.append(cur)
            cur = parents[cur]
        base = missing.get(cur, 0)
        for i, n in enumerate(reversed(chain)):
            missing[n] = base + i + 1
    return [[n for n in missing if missing[n] == level] for level in sorted(set(missing.values()))]


class TreeFedSession(DraftSession):
    """A draft session with its own cache, into which it feeds the committed tokens and this step's tree nodes.

    `base`: committed tokens in the cache; `pending`: committed tokens not fed yet (the last is the next root);
    `slot`: tree node -> cache entry, and `node_logits`: tree node -> draft logits [V], both for this step.
    Subclasses say how to feed (`_feed_pending`, `_feed_nodes`) and what to keep at `commit`.
    """

    def __init__(self, prompt_ids: list[int]):
        self.base = 0
        self.pending: list[int] = list(prompt_ids)
        self.slot: dict[int, int] = {}
        self.node_logits: dict[int, torch.Tensor] = {}

    @abstractmethod
    def _feed_pending(self) -> None:
        """Feed `pending` causally; then `base` is the root's cache entry, `slot == {0: base}`, `node_logits[0]` is
        set and `pending` is empty."""

    @abstractmethod
    def _feed_nodes(self, new: list[int], tokens: list[int], parents: list[int]) -> None:
        """Feed tree nodes whose parents are fed, in one draft forward; fill `slot` and `node_logits` for them."""

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        if self.pending:
            self._feed_pending()
        for level in unfed_levels(nodes, parents, self.slot):
            self._feed_nodes(level, tokens, parents)
        return torch.stack([self.node_logits[n] for n in nodes])  # [len(nodes), V]

    def _next_step(self, pending: list[int]) -> None:
        """After a commit: `pending` waits for the next feed; this step's node maps are dropped."""
        self.pending = pending
        self.slot, self.node_logits = {}, {}
