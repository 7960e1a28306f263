"""The one decoding loop: build a tree, score it in one target forward, verify, keep the accepted path.

The autoregressive baseline is the same loop with a root-only tree, so every comparison is like with like.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .builders import StepLimits, TreeBuilder
from .cache import keep_positions
from .drafting import Drafter
from .models import TargetModel
from .sampling import Sampling, make_generator
from .stats import GenerationStats, StepRecord
from .verify import verify


@dataclass(frozen=True)
class Request:
    """One generation: prompt ids as given to the target (image tokens included) and the stopping rules."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling
    model_inputs: dict[str, Any] | None = None  # pixel_values etc., used at prefill only
    draft_inputs: dict[str, Any] | None = None  # what the draft's own prefill needs


@dataclass(frozen=True)
class Step:
    """Tokens added by one target call, and whether generation is over."""

    tokens: list[int]
    done: bool


def cut_tokens(new: list[int], produced: int, max_new_tokens: int, eos: frozenset[int]) -> tuple[list[int], bool]:
    """Honour max_new_tokens and EOS inside an accepted path: cut after the first EOS or at the budget."""
    out: list[int] = []
    for tok in new:
        if produced + len(out) >= max_new_tokens:
            return out, True
        out.append(tok)
        if tok in eos:
            return out, True
    return out, produced + len(out) >= max_new_tokens


def decode(
    target: TargetModel, drafter: Drafter, builder: TreeBuilder, request: Request, stats: GenerationStats
) -> Iterator[Step]:
    """Yield the tokens of each step; `stats` is filled as it goes."""
    start = time.perf_counter()
    ids = list(request.prompt_ids)
    generator = make_generator(request.sampling.seed)
    cache = target.new_cache()
    target.prefill(ids[:-1], cache, **(request.model_inputs or {}))
    session = drafter.session(ids, target.vocab_size, **(request.draft_inputs or {}))
    stats.prefill_s = time.perf_counter() - start
    # the sequence never outgrows the target's context window
    budget = min(request.max_new_tokens, target.max_positions - len(ids))
    root, length, produced, done = ids[-1], len(ids), 0, budget <= 0
    while not done:
        t0 = time.perf_counter()
        # the root sits at position length - 1; a node at depth d at length - 1 + d < max_positions
        limits = StepLimits(
            max_depth=max(0, min(budget - produced - 1, target.max_positions - length)),
            max_nodes=max(1, target.max_positions - length + 1),
        )
        # 1. draft a tree
        tree = builder.build(session, root, limits, request.sampling, generator)
        t1 = time.perf_counter()
        # 2. score every node in one target forward
        past = length - 1
        logits = target.score(tree, cache)  # [N, V]
        t2 = time.perf_counter()
        # 3. verify: the accepted path and the bonus token
        accepted = verify(tree, logits, request.sampling, generator)
        if session.wants_target_feedback:
            session.observe(tree.tokens.tolist(), tree.parents.tolist(), logits.argmax(dim=-1).tolist())
        t3 = time.perf_counter()
        # 4. keep the accepted path in the target cache; tell the draft
        keep_positions(cache, past, [past + n for n in accepted.path])
        new, done = cut_tokens(accepted.tokens, produced, budget, target.eos)
        if not done:
            session.commit(accepted.path, new)
        t4 = time.perf_counter()
        # 5. record
        produced += len(new)
        length += len(new)
        root = new[-1]
        stats.steps.append(
            StepRecord(
                tree_size=tree.size,
                accepted=len(new),
                draft_s=t1 - t0,
                target_s=t2 - t1,
                verify_s=t3 - t2,
                cache_s=t4 - t3,
                total_s=time.perf_counter() - t0,
            )
        )
        stats.seconds = time.perf_counter() - start
        yield Step(tokens=new, done=done)
