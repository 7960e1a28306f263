"""The draft token tree and the pure tensor math derived from it (mask, positions, paths).

Node 0 is the root: the last committed token, which the target has not processed yet. Every other node is a
drafted token whose parent index is smaller than its own (parents come before children), and siblings appear in
the order they were drawn, which sampling verification relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenTree:
    """Tokens and parent links of a draft tree; `q` holds the draft distribution each node drew its children from."""

    tokens: torch.Tensor  # [N] long, node 0 = root
    parents: torch.Tensor  # [N] long, parents[0] = -1, parents[i] < i
    q: torch.Tensor | None = None  # [N, V] draft probabilities at each node (None for deterministic drafters)
    sampled: bool = False  # children were drawn from q without replacement (in index order)
    predicted: float = 0.0  # the draft's forecast of accepted draft tokens: the sum of kept path probabilities
    depth: torch.Tensor = field(init=False)  # [N] long, root depth 0

    def __post_init__(self) -> None:
        parents = self.parents.tolist()
        depth = [0] * len(parents)
        for i, p in enumerate(parents[1:], start=1):
            if not 0 <= p < i:
                raise ValueError(f"node {i} has parent {p}: parents must precede children")
            depth[i] = depth[p] + 1
        object.__setattr__(self, "depth", torch.tensor(depth, dtype=torch.long, device=self.tokens.device))

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max().item())

    def children(self) -> list[list[int]]:
        """children()[i] lists node i's children in draw order."""
        kids: list[list[int]] = [[] for _ in range(self.size)]
        for i, p in enumerate(self.parents.tolist()[1:], start=1):
            kids[p].append(i)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root down to `node`, both included."""
        parents = self.parents.tolist()
        path = [node]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        return path[::-1]

    def leaves(self) -> list[int]:
        has_child = set(self.parents.tolist()[1:])
        return [i for i in range(self.size) if i not in has_child]


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """anc[i, j] is True when j is i or an ancestor of i.  parents: [N] -> [N, N] bool."""
    n = int(parents.shape[0])
    anc = torch.eye(n, dtype=torch.bool, device=parents.device)
    plist = parents.tolist()
    for i in range(1, n):
        anc[i] |= anc[plist[i]]
    return anc


def tree_attention_mask(parents: torch.Tensor, past: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for scoring a tree after `past` cached tokens: [1, 1, N, past + N] of 0 / dtype min.

    Float, not bool: a bool 4D mask is silently wrong with eager attention in transformers.
    """
    n = int(parents.shape[0])
    allowed = torch.ones(n, past + n, dtype=torch.bool, device=parents.device)  # [N, past + N]
    allowed[:, past:] = ancestor_matrix(parents)
    mask = torch.zeros(n, past + n, dtype=dtype, device=parents.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]  # [1, 1, N, past + N]


def tree_position_ids(depth: torch.Tensor, past: int) -> torch.Tensor:
    """Position of each node: the root continues the cached sequence.  depth: [N] -> [1, N]."""
    return (depth + past)[None]


def append_causal_mask(past: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [n, past + n]: n new tokens see the whole cache and each other causally."""
    mask = torch.full((n, past + n), torch.finfo(dtype).min, dtype=dtype)
    mask[:, :past] = 0
    mask[:, past:] = torch.triu(mask[:, past:], diagonal=1)
    return mask


def append_nodes_mask(
    new: list[int], parents: list[int], slot: dict[int, int], committed: int, past: int, dtype: torch.dtype
) -> tuple[torch.Tensor, list[int]]:
    """`append_nodes_allowed` as an additive mask [K, past + K] of 0 / dtype min, and the depths."""
    allowed, depth = append_nodes_allowed(new, parents, slot, committed, past)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min), depth


def append_nodes_allowed(
    new: list[int], parents: list[int], slot: dict[int, int], committed: int, past: int
) -> tuple[torch.Tensor, list[int]]:
    """Feeding tree nodes `new` to a draft cache of `past` entries: the first `committed` are the committed
    sequence, `slot` maps already-fed nodes to their entries.  Returns which entries each new node sees, bool
    [K, past + K] (committed prefix + ancestors + itself), and each new node's depth below the root."""
    k = len(new)
    allowed = torch.zeros(k, past + k, dtype=torch.bool)  # [K, past + K]
    allowed[:, :committed] = True
    depth: list[int] = []
    for row, node in enumerate(new):
        allowed[row, past + row] = True
        d, cur = 0, parents[node]
        while cur >= 0:
            if cur not in slot:
                raise RuntimeError(f"draft asked for node {node} before its ancestor {cur}")
            allowed[row, slot[cur]] = True
            cur, d = parents[cur], d + 1
        depth.append(d)
    return allowed, depth
