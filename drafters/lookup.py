"""What the weight-free drafts share: each node's proposal is the count distribution of what followed the longest
match of its context, and the match length says how much that proposal is worth (a mixture lets the longest win).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable

import torch

from specvlm.drafting import DraftSession


def count_row(out: torch.Tensor, row: int, counts: Iterable[tuple[int, float]]) -> None:
    """Write log counts of (token, count) pairs into out[row] ([K, V], -inf elsewhere); ids >= V are dropped."""
    pairs = [(t, c) for t, c in counts if 0 <= t < out.shape[-1] and c > 0]
    if pairs:
        ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
        out[row, ids] = torch.log(torch.tensor([c for _, c in pairs], dtype=torch.float32))


class LookupSession(DraftSession):
    """A draft session that looks continuations up instead of computing them: `proposals` gives, per node, the length
    of the match its proposal comes from (0: it proposes nothing) beside the log counts."""

    supports_skips = True  # nothing is fed per node: a node's proposal depends on its context alone
    #: a match shorter than this proposes nothing
    min_match: int = 1
    vocab: int

    @abstractmethod
    def lookup(self, node: int, tokens: list[int], parents: list[int]) -> tuple[int, Iterable[tuple[int, float]]]:
        """The length of the match for `node`'s context (0: none), and (token, count) of what followed it."""

    def proposals(self, nodes: list[int], tokens: list[int], parents: list[int]) -> tuple[list[int], torch.Tensor]:
        """Match lengths [K] (0 where shorter than `min_match`) and log counts [K, V] (-inf where nothing)."""
        lengths: list[int] = []
        out = empty_rows(len(nodes), self.vocab)  # [K, V]
        for row, node in enumerate(nodes):
            length, follow = self.lookup(node, tokens, parents)
            if length < self.min_match:
                lengths.append(0)
                continue
            lengths.append(length)
            count_row(out, row, follow)
        return lengths, out

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        return self.proposals(nodes, tokens, parents)[1]


def empty_rows(count: int, vocab: int) -> torch.Tensor:
    return torch.full((count, vocab), -math.inf)  # [K, V]: nothing proposed


def tree_path(node: int, tokens: list[int], parents: list[int]) -> list[int]:
    """The tokens from below the root down to `node` (the root is the last committed token)."""
    path: list[int] = []
    while node > 0:
        path.append(tokens[node])
        node = parents[node]
    return path[::-1]
