"""Lossless verification of a draft tree against the target (p = target, q = draft).

Pure functions: no model, no cache. Greedy follows the target's argmax down the tree. Sampling is recursive
rejection sampling over siblings: for children drawn from q without replacement (SpecInfer / Sequoia) each child x
is accepted with min(1, p(x) / q(x)), else p <- norm(max(p - q, 0)) and q <- q without x; for children chosen
deterministically (top-k, n-gram, any shape) q is a point mass on x, so x is accepted with p(x), else p <- p
without x. Both leave the output distributed exactly as p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Sampling, warp
from .tree import TokenTree


@dataclass(frozen=True)
class Accepted:
    """The accepted root-to-node path and the tokens it adds (path tokens after the root, then the bonus token)."""

    path: list[int]  # node indices, path[0] == 0 (the root)
    tokens: list[int]  # len(path) - 1 drafted tokens + 1 bonus token from the target


def verify_greedy(tree: TokenTree, target_logits: torch.Tensor) -> Accepted:
    """Follow the target's argmax as long as it matches a child.  target_logits: [N, V]."""
    best = target_logits.argmax(dim=-1).tolist()  # [N]
    tokens = tree.tokens.tolist()
    kids = tree.children()
    node, path = 0, [0]
    while True:
        want = best[node]
        nxt = next((c for c in kids[node] if tokens[c] == want), None)
        if nxt is None:
            return Accepted(path=path, tokens=[tokens[n] for n in path[1:]] + [want])
        node = nxt
        path.append(node)


def _normalise(x: torch.Tensor) -> torch.Tensor | None:
    total = x.sum()
    return x / total if total > 0 else None


def residual_step(
    p: torch.Tensor, q: torch.Tensor | None, token: int
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """One sibling of recursive rejection sampling.  p, q: [V] probabilities; q None = point mass on `token`.

    Returns (probability of accepting `token`, p after a rejection, q after a rejection).
    """
    if q is None:
        accept = float(p[token])
        rest = p.clone()
        rest[token] = 0.0
        return accept, (_normalise(rest) if accept < 1.0 else p), None
    qx = float(q[token])
    accept = min(1.0, float(p[token]) / qx) if qx > 0 else 0.0
    p_rest = _normalise(torch.clamp(p - q, min=0.0))
    q_rest = q.clone()
    q_rest[token] = 0.0
    return accept, (p_rest if p_rest is not None else p), _normalise(q_rest)


def verify_sampling(
    tree: TokenTree, target_logits: torch.Tensor, sampling: Sampling, generator: torch.Generator
) -> Accepted:
    """Recursive rejection sampling down the tree.  target_logits: [N, V]; tree.q: [N, V] when tree.sampled."""
    draft = tree.q.float().cpu() if (tree.sampled and tree.q is not None) else None  # [N, V]
    tokens = tree.tokens.tolist()
    kids = tree.children()
    node, path = 0, [0]
    while True:
        p = warp(target_logits[node : node + 1], sampling)[0].cpu()  # [V]: only nodes on the walked path
        q = draft[node] if draft is not None else None  # [V]
        nxt = None
        for child in kids[node]:
            x = tokens[child]
            accept, p_rest, q_rest = residual_step(p, q, x)
            if float(torch.rand((), generator=generator)) < accept:
                nxt = child
                break
            p, q = p_rest, q_rest
        if nxt is None:
            bonus = int(torch.multinomial(p, 1, generator=generator))
            return Accepted(path=path, tokens=[tokens[n] for n in path[1:]] + [bonus])
        node = nxt
        path.append(node)


def verify(tree: TokenTree, target_logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> Accepted:
    if sampling.greedy:
        return verify_greedy(tree, target_logits)
    return verify_sampling(tree, target_logits, sampling, generator)
