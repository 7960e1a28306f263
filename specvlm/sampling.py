"""Sampling settings and the logits -> probabilities warp shared by target and draft (p and q)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; otherwise p = softmax(logits / T) restricted to the top-p nucleus."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Probabilities after temperature and top-p, as transformers' warpers define them.  [K, V] -> [K, V] float32."""
    scores = logits.float()
    if sampling.greedy:
        return torch.softmax(scores, dim=-1)
    scores = scores / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)  # [K, V]
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # [K, V]
        drop_sorted = cum <= (1.0 - sampling.top_p)
        drop_sorted[..., -1] = False  # keep at least the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, -math.inf)
    return torch.softmax(scores, dim=-1)


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
