"""A weight-free drafter: proposes continuations seen earlier in the prompt and the output (prompt lookup).

q at a node is the count distribution of tokens that followed the longest earlier occurrence (n <= max_n) of the
context ending at that node. On summarization most easy tokens are copies of the article, so this alone gives a
real speedup, and a tree covers the several places a phrase occurs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import torch

from specvlm.drafting import DraftContext, Drafter, DraftSession

from .lookup import LookupSession, tree_path


class NGramSession(LookupSession):
    def __init__(self, prompt_ids: list[int], vocab_size: int, max_n: int, min_n: int):
        self.max_n, self.min_n, self.vocab = max_n, min_n, vocab_size
        self.seq: list[int] = []
        self.follow: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
        self._extend(prompt_ids)

    def _extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            # every n-gram ending at the current last token is followed by `tok`
            end = len(self.seq)
            for n in range(self.min_n, self.max_n + 1):
                if end >= n:
                    self.follow[tuple(self.seq[end - n : end])][tok] += 1
            self.seq.append(tok)

    def _match(self, context: list[int]) -> tuple[int, Counter[int] | None]:
        """The longest n (max_n down to min_n) whose last-n context occurred before, and what followed it."""
        for n in range(min(self.max_n, len(context)), self.min_n - 1, -1):
            found = self.follow.get(tuple(context[-n:]))
            if found:
                return n, found
        return 0, None

    def _context(self, node: int, tokens: list[int], parents: list[int]) -> list[int]:
        """The last max_n committed tokens, then the tree path from the root down to `node`."""
        return self.seq[-self.max_n :] + tree_path(node, tokens, parents)

    def lookup(self, node: int, tokens: list[int], parents: list[int]) -> tuple[int, Iterable[tuple[int, float]]]:
        """The longest n-gram (min_n .. max_n) ending at `node` that occurred before, and what followed it."""
        n, counts = self._match(self._context(node, tokens, parents))
        return n, counts.items() if counts else ()

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        self._extend(new_tokens)


class NGramDrafter(Drafter):
    """Prompt-lookup drafting with count-based probabilities: no weights, no forward passes.

    min_n=2: a single-token match proposes nothing, so the step costs one cheap forward instead of scoring a chain
    that is rarely accepted, which made the decoder faster on news (docs/performance.md, "The n-gram draft's
    minimum match length")."""

    def __init__(self, max_n: int = 3, min_n: int = 2):
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.max_n, self.min_n = max_n, min_n
        self.name = f"ngram{max_n}"

    def session(self, context: DraftContext) -> DraftSession:
        return NGramSession(list(context.prompt_ids), context.vocab_size, self.max_n, self.min_n)

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """What the session would propose after every position of `ids` [L], its table holding ids[: i + 1] then:
        [L, max(ids) + 1], log counts or -inf (a row of -inf proposes nothing).  q is close to a point mass, so
        its KL to the target is dominated by the floor that `specvlm.potential` puts under q."""
        tokens = [int(t) for t in ids.tolist()]
        session = NGramSession([], max(tokens) + 1, self.max_n, self.min_n)
        rows = []
        for tok in tokens:
            session.commit([0], [tok])
            rows.append(session.logits([0], [tok], [-1]))  # [1, V]; node 0 = the last token of the table
        return torch.cat(rows)  # [L, V]
