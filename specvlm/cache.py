"""Keep only the accepted path in a transformers KV cache: gather in place, never recompute."""

from __future__ import annotations

import torch
from transformers import Cache


def cache_length(cache: Cache) -> int:
    return int(cache.get_seq_length())


def _layers(cache: Cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"unsupported cache type {type(cache).__name__}: expected a transformers Cache with .layers")
    return layers


@torch.inference_mode()
def keep_positions(cache: Cache, start: int, keep: list[int]) -> None:
    """Keep positions [0, start) and then the positions `keep` (absolute, ascending), in that order; drop the rest.

    Each layer's keys/values: [B, H, S, D] -> [B, H, start + len(keep), D].
    """
    new_len = start + len(keep)
    contiguous = keep == list(range(start, new_len))
    for layer in _layers(cache):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if not contiguous:
            idx = torch.tensor(keep, dtype=torch.long, device=layer.keys.device)  # [K]
            layer.keys[:, :, start:new_len] = layer.keys.index_select(2, idx)
            layer.values[:, :, start:new_len] = layer.values.index_select(2, idx)
        layer.keys = layer.keys[:, :, :new_len]
        layer.values = layer.values[:, :, :new_len]


def crop_to(cache: Cache, length: int) -> None:
    """Drop every position at or after `length`."""
    keep_positions(cache, length, [])
