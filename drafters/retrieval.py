"""The retrieval draft (REST): continuations of the context's longest suffix found in a datastore of text.

At the root, the longest suffix of the committed text (up to `max_match` tokens) that occurs in the datastore is
found; a node below it narrows its parent's range by its own token, so the tree follows the datastore's trie of
continuations, each node proposing the tokens that followed its pattern weighted by how often they did (REST's
construction, with the tree builders choosing the branches from those counts). Where a node's pattern never
occurs, its context's longest occurring suffix is searched again. A match shorter than `min_match` proposes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from specvlm.drafting import DraftContext, Drafter, DraftSession

from .datastore import Datastore, Match
from .lookup import LookupSession, tree_path


class RetrievalSession(LookupSession):
    def __init__(self, store: Datastore, prompt_ids: list[int], vocab_size: int, min_match: int, max_match: int):
        self.store, self.vocab = store, vocab_size
        self.min_match, self.max_match = min_match, max_match
        self.text = list(prompt_ids[-max_match:])  # the committed tail that a match can reach
        self.matches: dict[int, Match | None] = {0: store.longest(self.text, max_match)}

    def _match(self, node: int, tokens: list[int], parents: list[int]) -> Match | None:
        if node in self.matches:
            return self.matches[node]
        up = self._match(parents[node], tokens, parents)
        found = self.store.extend(up, tokens[node]) if up is not None else None
        if found is None:  # the pattern stops here: the longest suffix of this node's own context that occurs
            context = (self.text + tree_path(node, tokens, parents))[-self.max_match :]
            found = self.store.longest(context, (up.length if up is not None else 0) + 1)
        self.matches[node] = found
        return found

    def lookup(self, node: int, tokens: list[int], parents: list[int]) -> tuple[int, Iterable[tuple[int, float]]]:
        match = self._match(node, tokens, parents)
        if match is None or match.length < self.min_match:
            return 0, ()
        return match.length, self.store.followers(match).items()

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        last = self.matches.get(path[-1])  # the kept path's last node: the new root's pattern, one token short
        self.text = (self.text + new_tokens)[-self.max_match :]
        root = self.store.extend(last, new_tokens[-1]) if last is not None and len(new_tokens) == len(path) else None
        self.matches = {0: root if root is not None else self.store.longest(self.text, self.max_match)}


class RetrievalDrafter(Drafter):
    """`draft="rest:FOLDER"` (or `datastore:FOLDER`): retrieval from a datastore built with the target's tokenizer
    (`python -m training.datastore`); bare `rest` is the datastore shipped for the embedded target."""

    def __init__(self, store: Datastore | str | os.PathLike, min_match: int = 2, max_match: int = 16):
        self.store = store if isinstance(store, Datastore) else Datastore(store)
        if not 1 <= min_match <= max_match:
            raise ValueError("need 1 <= min_match <= max_match")
        self.min_match, self.max_match = min_match, max_match
        self.name = f"rest:{Path(self.store.folder).name}"

    def session(self, context: DraftContext) -> DraftSession:
        return RetrievalSession(
            self.store, list(context.prompt_ids), context.vocab_size, self.min_match, self.max_match
        )
