"""A retrieval datastore (REST's): the target's tokens of a corpus and their suffix array, read by memory map.

A datastore is a folder:

    datastore.json   {"format": "specvlm-datastore", "version": 1, "tokens": N, "documents": D,
                      "vocab_size": V, "tokenizer": "<sha256 of the tokenizer's vocabulary>", "suffix_dtype": "int32",
                      "build_seconds": ..., "bytes": ..., "created": ..., "command": ..., "sources": [...]}
    tokens.npy       int32 [N]: the documents' token ids, each document followed by SEPARATOR (-1)
    suffixes.npy     int32 or int64 [N]: the start of every suffix, in lexicographic order of the suffixes

Every suffix sharing a pattern P sits in one range of the suffix array, and inside it the suffixes are ordered by
the token after P: so the range of P + c is found inside P's range by two binary searches on one token, and what
followed P is read off the range without visiting every occurrence. Nothing is loaded into memory but the pages a
lookup touches, so a datastore of any size is served (`numpy.load(mmap_mode="r")`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specvlm.errors import ConfigError

FORMAT, VERSION = "specvlm-datastore", 1
META, TOKENS, SUFFIXES = "datastore.json", "tokens.npy", "suffixes.npy"
SEPARATOR = -1
#: a range wider than this is counted from an even stride of about this many of its suffixes (they are sorted by
#: the next token, so an even stride keeps each token's share)
SAMPLE = 4096


def tokenizer_fingerprint(tokenizer: Any | None) -> str | None:
    """sha256 of a tokenizer's vocabulary (token -> id, sorted): two tokenizers that give the same ids agree; None
    for None."""
    if tokenizer is None:
        return None
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


# -- building -------------------------------------------------------------------------------------------------------
def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of `tokens` [N] in lexicographic order (a suffix that ends first sorts first):
    prefix doubling, each round one sort of (rank of the first half, rank of the second) packed in an int64."""
    n = int(tokens.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64).reshape(-1)  # [N] in 0 .. n - 1
    order = np.argsort(rank, kind="stable")
    span = 1
    while True:
        second = np.zeros(n, dtype=np.int64)  # rank + 1 of the suffix `span` further on, 0 past the end
        second[: n - span] = rank[span:] + 1 if span < n else 0
        key = rank * (n + 1) + second
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        new = np.empty(n, dtype=np.int64)
        new[order] = np.cumsum(np.concatenate(([0], sorted_key[1:] != sorted_key[:-1])))
        rank = new
        if int(rank.max()) == n - 1 or span >= n:
            return order
        span *= 2


def write_datastore(
    folder: str | os.PathLike,
    documents: Iterable[Sequence[int]],
    *,
    vocab_size: int,
    tokenizer: str,
    command: str = "unknown",
    sources: Sequence[str] = (),
) -> dict[str, Any]:
    """Build a datastore from token-id documents into `folder`; returns the record written to datastore.json."""
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts, count = [], 0
    for doc in documents:
        ids = np.asarray(doc, dtype=np.int64)
        if ids.size == 0:
            continue
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ConfigError(f"a document holds token ids outside 0 .. {vocab_size - 1}: not this tokenizer's")
        parts += [ids.astype(np.int32), np.array([SEPARATOR], dtype=np.int32)]
        count += 1
    if not count:
        raise ConfigError("no tokens to store: the data held no non-empty document")
    tokens = np.concatenate(parts)
    order = suffix_array(tokens)
    dtype = np.int32 if tokens.shape[0] < 2**31 else np.int64
    np.save(folder / TOKENS, tokens)
    np.save(folder / SUFFIXES, order.astype(dtype))
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tokens": int(tokens.shape[0]),
        "documents": count,
        "vocab_size": int(vocab_size),
        "tokenizer": tokenizer,
        "suffix_dtype": np.dtype(dtype).name,
        "build_seconds": round(time.perf_counter() - start, 3),
        "bytes": (folder / TOKENS).stat().st_size + (folder / SUFFIXES).stat().st_size,
        "created": time.strftime("%Y-%m-%d"),
        "command": command,
        "sources": list(sources),
    }
    (folder / META).write_text(json.dumps(record, indent=2) + "\n")
    return record


# -- reading --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    """The suffixes whose first `length` tokens are the matched pattern: suffix-array entries [lo, hi)."""

    length: int
    lo: int
    hi: int

    @property
    def occurrences(self) -> int:
        return self.hi - self.lo


class Datastore:
    """A datastore folder opened by memory map; `longest`, `extend` and `followers` are the lookups a draft needs."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise ConfigError(
                f"{self.folder} is not a datastore (no {META}): build one with "
                "`python -m training.datastore --data FILES --out FOLDER`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{meta_path} is damaged ({err}): build the datastore again") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ConfigError(f"{meta_path} is not a version {VERSION} {FORMAT} file: build the datastore again")
        self.meta = meta
        try:  # plain ndarray views of the maps: no copy, and without np.memmap's per-index overhead
            self.tokens = np.asarray(np.load(self.folder / TOKENS, mmap_mode="r"))
            self.suffixes = np.asarray(np.load(self.folder / SUFFIXES, mmap_mode="r"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{self.folder}: the datastore's arrays cannot be read ({err}): build it again") from err
        n = int(meta.get("tokens", -1))
        if self.tokens.shape != (n,) or self.suffixes.shape != (n,) or n < 1:
            raise ConfigError(
                f"{self.folder}: {META} says {n} tokens but tokens.npy holds {self.tokens.shape[0]} and "
                f"suffixes.npy {self.suffixes.shape[0]} (a truncated or mixed-up copy): build it again"
            )
        if self.tokens.dtype != np.int32 or int(self.tokens[-1]) != SEPARATOR:
            raise ConfigError(f"{self.folder}: tokens.npy is not int32 ending in the separator: build it again")
        self.size = n

    def check_tokenizer(self, fingerprint: str | None, vocab_size: int) -> None:
        """ConfigError unless the datastore was built with this tokenizer (same vocabulary, same ids); a target
        without a tokenizer (`fingerprint` None) is checked by its vocabulary size alone."""
        other = fingerprint is not None and self.meta.get("tokenizer") != fingerprint
        if other or int(self.meta.get("vocab_size", -1)) > vocab_size:
            raise ConfigError(
                f"{self.folder} was built with another tokenizer (vocabulary {self.meta.get('tokenizer')}, "
                f"{self.meta.get('vocab_size')} ids; this target's is {fingerprint}, {vocab_size} ids): build a "
                "datastore with this target, `python -m training.datastore --target T ...`"
            )

    def _token_at(self, i: int, offset: int) -> int:
        return int(self.tokens[int(self.suffixes[i]) + offset])

    def extend(self, match: Match, token: int) -> Match | None:
        """The suffixes of `match` followed by `token` (the pattern grown by one), or None when none is."""
        key = lambda i: self._token_at(i, match.length)  # noqa: E731 - sorted inside the range
        lo = bisect.bisect_left(range(match.lo, match.hi), token, key=key) + match.lo
        if lo == match.hi or self._token_at(lo, match.length) != token:
            return None
        hi = bisect.bisect_right(range(lo, match.hi), token, key=key) + lo
        return Match(match.length + 1, lo, hi)

    def find(self, pattern: Sequence[int]) -> Match | None:
        """The range of `pattern`, or None when it does not occur."""
        match: Match | None = Match(0, 0, self.size)
        for token in pattern:
            match = self.extend(match, int(token)) if match is not None else None
        return match

    def longest(self, context: Sequence[int], max_length: int) -> Match | None:
        """The longest suffix of `context` (at most `max_length` tokens) that occurs: every suffix of an occurring
        pattern occurs, so the length is found by binary search, a `find` per probe."""
        lo, hi, best = 1, min(max_length, len(context)), None
        while lo <= hi:
            mid = (lo + hi) // 2
            found = self.find(context[len(context) - mid :])
            if found is None:
                hi = mid - 1
            else:
                best, lo = found, mid + 1
        return best

    def followers(self, match: Match) -> dict[int, float]:
        """Each token that followed the pattern, with how often (estimated from an even stride of about SAMPLE
        suffixes when the range is wider); the separator (a document's end) is left out."""
        step = -(-match.occurrences // SAMPLE)  # 1 unless the range is wider than SAMPLE
        starts = np.asarray(self.suffixes[match.lo : match.hi : step], dtype=np.int64)
        after = self.tokens[starts + match.length]  # sorted: the suffixes share the pattern, then order by this token
        bounds = np.concatenate(([0], np.flatnonzero(after[1:] != after[:-1]) + 1, [after.shape[0]]))
        scale = match.occurrences / after.shape[0]
        ids, counts = after[bounds[:-1]].tolist(), np.diff(bounds).tolist()
        return {t: c * scale for t, c in zip(ids, counts, strict=True) if t != SEPARATOR}
