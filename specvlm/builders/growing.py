"""A mutable tree the builders grow level by level, frozen into a `TokenTree` at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..costs import SpeedModel
from ..sampling import Sampling, warp
from ..tree import TokenTree


@dataclass(frozen=True)
class StepLimits:
    """What this step may draft: depth below the root and nodes in total (root included); with `speed`, what a
    target forward costs by size, for builders that size their trees for tokens per second."""

    max_depth: int
    max_nodes: int
    speed: SpeedModel | None = None


class GrowingTree:
    def __init__(self, root: int, sampling: Sampling, generator: torch.Generator, sampled: bool):
        self.tokens: list[int] = [root]
        self.parents: list[int] = [-1]
        self.depth: list[int] = [0]
        self.logp: list[float] = [0.0]  # log draft probability of the path from the root
        self.sampling = sampling
        self.generator = generator
        self.sampled = sampled and not sampling.greedy
        self.q: dict[int, torch.Tensor] = {}  # node -> [V] draft probabilities its children were drawn from

    def __len__(self) -> int:
        return len(self.tokens)

    def draft_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """q from draft logits with the same warp as the target's p.  [K, V] -> [K, V] on CPU."""
        if not self.sampled:  # q only ranks children here: skip the top-p sort over the vocabulary
            temperature = self.sampling.temperature or 1.0
            return torch.softmax(logits.float() / temperature, dim=-1).cpu()
        return warp(logits, self.sampling).cpu()

    def add_children(self, node: int, probs: torch.Tensor, k: int) -> list[int]:
        """Give `node` up to k children from draft probabilities q [V]: the top-k, or k draws without replacement."""
        if k <= 0:
            return []
        k = min(k, int((probs > 0).sum()))
        if k == 0 or not math.isfinite(float(probs.sum())):
            return []
        if self.sampled:
            # Gumbel-top-k = k sequential draws without replacement, in draw order
            u = torch.rand(probs.shape, generator=self.generator).clamp_(1e-20, 1.0)
            keys = probs.log() - (-u.log()).log()  # [V]
            chosen = keys.topk(k).indices.tolist()
            self.q[node] = probs
        else:
            chosen = probs.topk(k).indices.tolist()
        made = []
        for tok in chosen:
            self.tokens.append(int(tok))
            self.parents.append(node)
            self.depth.append(self.depth[node] + 1)
            self.logp.append(self.logp[node] + math.log(max(float(probs[tok]), 1e-30)))
            made.append(len(self.tokens) - 1)
        return made

    def ranked(self, among: list[int] | None = None) -> list[int]:
        """Non-root nodes (or `among`) by path probability, highest first (parents before children on ties)."""
        pool = among if among is not None else list(range(1, len(self)))
        return sorted(pool, key=lambda n: (-self.logp[n], n))

    def gains(self, nodes: list[int]) -> list[float]:
        """Path probabilities of `nodes` under the draft: each one's chance to be accepted if q were exact."""
        return [math.exp(self.logp[n]) for n in nodes]

    def best(self, count: int, among: list[int] | None = None) -> list[int]:
        """The `count` non-root nodes with the highest path probability (parents win ties), ancestor-closed."""
        ranked = self.ranked(among)[: max(count, 0)]
        keep = set(ranked)
        for n in ranked:
            cur = self.parents[n]
            while cur > 0 and cur not in keep:
                keep.add(cur)
                cur = self.parents[cur]
        return sorted(keep)

    def freeze(self, subset: list[int] | None = None, device: torch.device | None = None) -> TokenTree:
        """The tree (or the ancestor-closed `subset` of non-root nodes, plus the root) as a `TokenTree`."""
        nodes = [0, *sorted(set(subset) - {0})] if subset is not None else list(range(len(self)))
        index = {n: i for i, n in enumerate(nodes)}
        tokens = torch.tensor([self.tokens[n] for n in nodes], dtype=torch.long, device=device)
        parents = torch.tensor([index[self.parents[n]] if n else -1 for n in nodes], dtype=torch.long, device=device)
        q = None
        if self.sampled and self.q:
            vocab = next(iter(self.q.values())).shape[0]
            zero = torch.zeros(vocab)
            q = torch.stack([self.q.get(n, zero) for n in nodes])  # [N, V]
        predicted = sum(math.exp(self.logp[n]) for n in nodes[1:])
        return TokenTree(tokens=tokens, parents=parents, q=q, sampled=self.sampled, predicted=predicted)
