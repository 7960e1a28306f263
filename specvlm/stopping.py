"""Stop strings: a generation ends right after the first stop string that appears in its decoded new text.

As HF's `stop_strings`: the kept tokens are the shortest prefix of the output whose text contains a stop string
(its last token may run past the string's end), so they are always a prefix of what the target alone would emit;
the text is cut right after the stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class StopStrings:
    strings: tuple[str, ...]

    @classmethod
    def parse(cls, stop: str | Sequence[str] | None) -> StopStrings | None:
        """None or [] -> no stop strings; a str or a sequence of non-empty str -> StopStrings."""
        if stop is None:
            return None
        items = [stop] if isinstance(stop, str) else stop
        if not isinstance(items, Sequence) or not all(isinstance(s, str) for s in items):
            raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")
        if any(not s for s in items):
            raise ConfigError("stop strings must not be empty: drop the empty string")
        return cls(tuple(items)) if items else None

    def end(self, text: str) -> int | None:
        """Where `text` should end: just past the stop string occurrence that ends first; None when none occurs."""
        ends = [text.find(s) + len(s) for s in self.strings if s in text]
        return min(ends) if ends else None

    def cut(self, text: str) -> str:
        """`text` up to and including its first stop string (unchanged when it has none)."""
        end = self.end(text)
        return text if end is None else text[:end]

    def tokens_to_keep(self, tokens: list[int], checked: int, decode: Callable[[list[int]], str]) -> int | None:
        """The length of the shortest prefix of `tokens` whose text holds a stop string, or None.

        The caller knows that the first `checked` tokens hold none, so only longer prefixes are decoded.
        """
        if self.end(decode(tokens)) is None:
            return None
        return next(k for k in range(checked + 1, len(tokens) + 1) if self.end(decode(tokens[:k])) is not None)
