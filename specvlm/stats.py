"""Per-step records and the run summary: where the time goes and how many tokens each target call gave."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepRecord:
    tree_size: int  # nodes scored, root included
    accepted: int  # new tokens this step (accepted drafts + bonus, after EOS / length cuts)
    draft_s: float
    target_s: float
    verify_s: float
    cache_s: float
    total_s: float


@dataclass
class GenerationStats:
    """Counts and seconds for one generation; `mean_accepted` = new tokens per target call."""

    prefill_s: float = 0.0  # the prompt (and image) into the target's and the draft's caches
    draft_prefill_s: float = 0.0  # the draft's part of prefill_s
    seconds: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def target_calls(self) -> int:
        return len(self.steps)

    @property
    def new_tokens(self) -> int:
        return sum(s.accepted for s in self.steps)

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.target_calls if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_seconds(self) -> float:
        """Seconds after the prefill: what a tree changes."""
        return max(self.seconds - self.prefill_s, 0.0)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def mean_tree_size(self) -> float:
        return sum(s.tree_size for s in self.steps) / len(self.steps) if self.steps else 0.0

    def split(self) -> dict[str, float]:
        """Seconds per part over all steps: draft, target, verify, cache, other (Python overhead), prefill."""
        parts = {k: sum(getattr(s, f"{k}_s") for s in self.steps) for k in ("draft", "target", "verify", "cache")}
        parts["other"] = sum(s.total_s for s in self.steps) - sum(parts.values())
        parts["prefill"] = self.prefill_s
        return parts

    def as_dict(self) -> dict[str, float | int]:
        return {
            "target_calls": self.target_calls,
            "new_tokens": self.new_tokens,
            "mean_accepted": round(self.mean_accepted, 4),
            "mean_tree_size": round(self.mean_tree_size, 2),
            "seconds": round(self.seconds, 4),
            "prefill_s": round(self.prefill_s, 4),
            "draft_prefill_s": round(self.draft_prefill_s, 4),
            "tokens_per_second": round(self.tokens_per_second, 3),
        }
