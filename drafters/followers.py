"""Follower tokens, losslessly: the target's already-known argmaxes offered again as candidate children.

Every target forward scores many tree nodes whose target argmax is then known; remember it per (previous token,
token) and offer it as an extra candidate child next time the same pair ends a path. The seed study's "common-sense"
verification overwrote draft tokens after scoring (lossy); here the followers enter the tree before the target
scores it, through the draft distribution, so verification stays exact.
"""

from __future__ import annotations

import math

import torch

from specvlm.drafting import DraftContext, Drafter, DraftSession, WrappingDrafter


class FollowerSession(DraftSession):
    wants_target_feedback = True

    def __init__(self, base: DraftSession, prompt_ids: list[int], weight: float):
        self.base = base
        self.weight = weight
        self.table: dict[tuple[int, int], int] = {}
        self.root = prompt_ids[-1]  # the last committed token
        self.before_root = prompt_ids[-2] if len(prompt_ids) > 1 else -1  # the committed token before it

    def _prev(self, node: int, tokens: list[int], parents: list[int]) -> int:
        return tokens[parents[node]] if node > 0 else self.before_root

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        base = self.base.logits(nodes, tokens, parents)  # [K, V]
        out = base.clone()
        for row, node in enumerate(nodes):
            follower = self.table.get((self._prev(node, tokens, parents), tokens[node]))
            if follower is None or follower >= base.shape[-1]:
                continue
            q = torch.softmax(base[row].float(), dim=-1)  # [V]
            if not torch.isfinite(q).all():  # the base proposes nothing here: the follower alone
                q = torch.zeros_like(q)
                q[follower] = 1.0
            else:
                q = q * (1.0 - self.weight)
                q[follower] += self.weight
            out[row] = torch.where(q > 0, q.log(), torch.full_like(q, -math.inf))
        return out

    def observe(self, tokens: list[int], parents: list[int], target_top: list[int]) -> None:
        if self.base.wants_target_feedback:
            self.base.observe(tokens, parents, target_top)
        for node, top in enumerate(target_top):
            self.table[(self._prev(node, tokens, parents), tokens[node])] = top

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.base.observe_hidden(hidden)

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        self.base.commit(path, new_tokens)
        self.before_root = new_tokens[-2] if len(new_tokens) > 1 else self.root
        self.root = new_tokens[-1]


class FollowerDrafter(WrappingDrafter):
    """Wrap any drafter: mix q with a point mass (weight w) on the target's remembered follower token."""

    def __init__(self, base: Drafter, weight: float = 0.5):
        if not 0.0 < weight <= 1.0:
            raise ValueError("follower weight must be in (0, 1]")
        super().__init__(base)
        self.weight = weight
        self.name = f"{base.name}+followers"

    def session(self, context: DraftContext) -> DraftSession:
        return FollowerSession(self.base.session(context), list(context.prompt_ids), self.weight)
