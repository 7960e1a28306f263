"""The one decoding loop: build a tree, score it in one target forward, verify, keep the accepted path.

The autoregressive baseline is the same loop with a root-only tree, so every comparison is like with like.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .builders import Autoregressive, StepLimits, TreeBuilder
from .cache import keep_positions
from .costs import AcceptanceFit, SpeedModel
from .drafting import DraftContext, Drafter, DraftSession
from .models import Prefilled, TargetModel
from .sampling import Sampling, make_generator
from .stats import GenerationStats, StepRecord
from .verify import verify
from .vlm import ImagePrompt


@dataclass(frozen=True)
class Request:
    """One generation: prompt ids as given to the target (image tokens included) and the stopping rules."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling
    model_inputs: dict[str, Any] | None = None  # pixel_values etc., used at prefill only
    images: ImagePrompt | None = None  # the images, as the draft's context carries them


@dataclass(frozen=True)
class Step:
    """Tokens added by one target call, and whether generation is over."""

    tokens: list[int]
    done: bool


class Undrafted(DraftSession):
    """The autoregressive baseline's draft session: it is never asked for logits and keeps no state."""

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        raise RuntimeError("the autoregressive baseline drafts nothing")

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        pass


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
    # grows in place: room for the prompt and a first stretch of the answer, then 1.5x whenever it fills up
    cache = target.new_cache(capacity=len(ids) + min(request.max_new_tokens, 256) + 64)
    undrafted = isinstance(builder, Autoregressive)  # the baseline is the target alone: no draft work at all
    feed_hidden = drafter.needs_target_hidden and not undrafted
    # greedy trees sized for tokens/s: the target's forward cost by size (measured once, cached on disk, corrected by
    # the forwards timed below), and how the draft's path probabilities compare with what the target accepts here
    sized = builder.hardware_aware and request.sampling.greedy and not undrafted
    costs, fit = (target.cost_book() if sized else None), AcceptanceFit()
    # a VLM's image prefix enters the cache here (the whole prompt, for a family whose prompt is a bidirectional
    # prefix: then the first root's logits come from this prefill)
    layers = drafter.target_layers  # which hidden states the draft reads (the forward gives them at no extra call)
    prefilled = target.start(ids, cache, hidden=feed_hidden, layers=layers, **(request.model_inputs or {}))
    prefix_hidden = prefilled.hidden
    first_root: Prefilled | None = prefilled if prefilled.root_logits is not None else None
    draft_start = time.perf_counter()
    if undrafted:
        session: DraftSession = Undrafted()
    else:  # feed the prompt (and image) to the draft now, so that its cost counts as prefill
        context = DraftContext(tuple(ids), target.vocab_size, prefix_hidden if feed_hidden else None, request.images)
        session = drafter.session(context)
        session.prefill(ids[-1])
    stats.prefill_s = time.perf_counter() - start
    stats.draft_prefill_s = stats.prefill_s - (draft_start - start)
    # the sequence never outgrows the target's context window
    budget = min(request.max_new_tokens, target.max_positions - len(ids))
    root, length, produced, done = ids[-1], len(ids), 0, budget <= 0
    try:
        while not done:
            t0 = time.perf_counter()
            # the root sits at position length - 1; a node at depth d at length - 1 + d < max_positions
            limits = StepLimits(
                max_depth=max(0, min(budget - produced - 1, target.max_positions - length)),
                max_nodes=max(1, target.max_positions - length + 1),
                speed=None if costs is None else SpeedModel(costs.table(), fit.scale),
            )
            # 1. draft a tree
            tree = builder.build(session, root, limits, request.sampling, generator)
            t1 = time.perf_counter()
            # 2. score every node in one target forward
            past = length - 1
            logits, hidden = target.score_with_hidden(
                tree, cache, hidden=feed_hidden, root=first_root, delta=prefilled.delta, layers=layers
            )  # [N, V], [N, H] or None
            if costs is not None:
                target.synchronize()  # the forward's own time (verification would wait for it next anyway)
            t2 = time.perf_counter()
            if costs is not None and first_root is None:  # a first root scored by the prefill feeds fewer tokens
                costs.observe(tree.size, 1000 * (t2 - t1))
            first_root = None
            # 3. verify: the accepted path and the bonus token
            accepted = verify(tree, logits, request.sampling, generator)
            fit.update(tree.predicted, len(accepted.path) - 1)
            if hidden is not None:
                session.observe_hidden(hidden)
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
    finally:  # also when the caller stops early (a stop string, a closed stream)
        if costs is not None:
            costs.flush()  # the corrected cost table back to the cache, once it moved
