"""A suffix-automaton draft over the prompt and the generated text (SAM-decoding's dynamic automaton).

The automaton holds every substring of the text seen so far. A node's context (the text, then the tree path down to
it) is matched by its longest suffix that occurred earlier with something after it, of any length; q at the node is
the distribution of the tokens that followed that suffix, each weighted by how often it did (every earlier
occurrence counted). Against prompt n-grams of a fixed length this keeps a long copy on its one continuation
instead of the several that a common 3-gram ("of the") has, and still finds short matches where no long one is.

Cost: the automaton is built online, amortised O(1) states per token; the occurrence counts add one increment per
suffix-link ancestor of the new state, which is O(l) for l the current longest repeated suffix (bounded by how much
of the text is being copied, not by the context length). A node's match is one transition from its parent's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from specvlm.drafting import DraftContext, Drafter, DraftSession

from .lookup import LookupSession


class SuffixAutomaton:
    """The suffix automaton of a token sequence, extended one token at a time, with |endpos| per state.

    State 0 is the root (the empty string). `trans[s]` maps a token to the next state, `link[s]` is the suffix link,
    `length[s]` the longest string of s, `count[s]` how many end positions its strings have (occurrences)."""

    def __init__(self, tokens: list[int] | None = None):
        self.trans: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.count: list[int] = [0]
        self.last = 0  # the state of the whole text
        for token in tokens or ():
            self.extend(token)

    def __len__(self) -> int:
        return self.length[self.last]

    def _new(self, length: int, link: int, trans: dict[int, int], count: int) -> int:
        self.trans.append(trans)
        self.link.append(link)
        self.length.append(length)
        self.count.append(count)
        return len(self.length) - 1

    def extend(self, token: int) -> None:
        trans, link, length = self.trans, self.link, self.length
        cur = self._new(length[self.last] + 1, 0, {}, 0)
        p = self.last
        while p != -1 and token not in trans[p]:
            trans[p][token] = cur
            p = link[p]
        if p != -1:
            q = trans[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:  # split q: the clone keeps q's occurrences, and gains the new end position below
                clone = self._new(length[p] + 1, link[q], dict(trans[q]), self.count[q])
                while p != -1 and trans[p].get(token) == q:
                    trans[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        v = cur  # the new end position is an occurrence of every suffix of the text: cur and its link ancestors
        while v > 0:
            self.count[v] += 1
            v = link[v]

    def step(self, state: int, matched: int, token: int) -> tuple[int, int]:
        """The longest suffix of (the `matched`-token string of `state`) + token that is a substring of the text:
        (its state, its length)."""
        trans, link, length = self.trans, self.link, self.length
        while state > 0 and token not in trans[state]:
            state = link[state]
            matched = length[state]
        if token in trans[state]:
            return trans[state][token], matched + 1
        return 0, 0

    def followers(self, state: int, matched: int) -> tuple[int, dict[int, int]]:
        """The longest suffix (of the `matched`-token string of `state`) that something followed in the text: its
        length, and each following token with how often it followed."""
        trans, link = self.trans, self.link
        while state > 0 and not trans[state]:
            state = link[state]
            matched = self.length[state]
        if state == 0:
            return 0, {}
        return matched, {tok: self.count[nxt] for tok, nxt in trans[state].items()}


class SuffixSession(LookupSession):
    """A node's match is its parent's advanced by the node's token; the root's is the whole text's."""

    def __init__(self, prompt_ids: list[int], vocab_size: int, min_match: int):
        self.sam = SuffixAutomaton(prompt_ids)
        self.vocab, self.min_match = vocab_size, min_match
        self.matches: dict[int, tuple[int, int]] = {}  # node -> (state, matched length), for this step's tree

    def _match(self, node: int, tokens: list[int], parents: list[int]) -> tuple[int, int]:
        found = self.matches.get(node)
        if found is None:
            if node == 0:  # the root is the text's last token
                found = (self.sam.last, len(self.sam))
            else:
                state, matched = self._match(parents[node], tokens, parents)
                found = self.sam.step(state, matched, tokens[node])
            self.matches[node] = found
        return found

    def lookup(self, node: int, tokens: list[int], parents: list[int]) -> tuple[int, Iterable[tuple[int, float]]]:
        matched, follow = self.sam.followers(*self._match(node, tokens, parents))
        return matched, follow.items()

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        for token in new_tokens:
            self.sam.extend(token)
        self.matches.clear()


class SuffixDrafter(Drafter):
    """`draft="sam"`: the suffix-automaton draft; `sam:N` proposes only from matches of at least N tokens
    (default 2: a one-token match is a guess the tree rarely keeps, as for the n-gram draft)."""

    def __init__(self, min_match: int = 2):
        if min_match < 1:
            raise ValueError("min_match is a match length, at least 1")
        self.min_match = min_match
        self.name = "sam" if min_match == 2 else f"sam:{min_match}"

    def session(self, context: DraftContext) -> DraftSession:
        return SuffixSession(list(context.prompt_ids), context.vocab_size, self.min_match)

    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """What the session would propose after every position of `ids` [L], the text holding ids[: i + 1] then:
        [L, max(ids) + 1], log counts or -inf."""
        tokens = [int(t) for t in ids.tolist()]
        session = SuffixSession([], max(tokens) + 1, self.min_match)
        rows = []
        for tok in tokens:
            session.commit([0], [tok])
            rows.append(session.logits([0], [tok], [-1]))  # [1, V]
        return torch.cat(rows)  # [L, V]
