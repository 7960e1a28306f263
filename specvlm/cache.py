"""Keep only the accepted path in a transformers KV cache: gather in place, never recompute. The target's cache
grows in place (`GrowingCache`): appending a step's tokens writes into spare room instead of copying the whole cache."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

#: a buffer grows to at least this factor of its old size, so appends cost amortised O(new tokens)
GROWTH = 1.5


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


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose `keys` / `values` are prefix views of buffers with spare room.

    `DynamicLayer.update` concatenates, copying the whole layer every step (at 2,000 cached tokens that is most
    of SmolLM2's per-step cost beyond the forward itself); here `update` writes the new positions in place and
    re-slices the view. Cropping and `keep_positions` slice the views as with any `DynamicLayer`, and the spare room
    is reused. If `keys` is ever replaced by a tensor that is not a prefix view of the buffer, the next `update`
    copies it into a fresh buffer first, so the layer never serves stale data.
    """

    def __init__(self, capacity: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.capacity = capacity  # positions to reserve at the first update (0: just what it brings)
        self._k: torch.Tensor | None = None  # [B, H, C, D]
        self._v: torch.Tensor | None = None  # [B, H, C, D]

    def _backed(self) -> bool:
        """Whether keys/values are views of the start of the buffers (the usual case)."""
        if self._k is None or self._v is None or self.keys is None or self.values is None:
            return False
        if self.keys.numel() == 0:
            return True
        return (
            self.keys.data_ptr() == self._k.data_ptr()
            and self.values.data_ptr() == self._v.data_ptr()
            and self.keys.stride() == self._k.stride()
            and self.values.stride() == self._v.stride()
        )

    def _reserve(self, need: int, like: torch.Tensor) -> None:
        """Buffers of at least `need` positions holding the current keys/values at their start."""
        used = self.get_seq_length()
        size = max(need, self.capacity, int(GROWTH * (0 if self._k is None else self._k.shape[-2])))
        batch, heads, _, dim = like.shape
        k = like.new_empty(batch, heads, size, dim)  # [B, H, C, D]
        v = like.new_empty(batch, heads, size, self.values.shape[-1] if used else dim)  # [B, H, C, Dv]
        if used:
            k[:, :, :used] = self.keys
            v[:, :, :used] = self.values
        self._k, self._v = k, v
        self.keys, self.values = k[:, :, :used], v[:, :, :used]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [B, H, n, D] keys and values in place; return the whole layer's keys and values (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        used = self.get_seq_length()
        need = used + key_states.shape[-2]
        if not self._backed() or need > self._k.shape[-2] or self._k.shape[:2] != key_states.shape[:2]:
            self._reserve(need, key_states)
        self._k[:, :, used:need] = key_states
        self._v[:, :, used:need] = value_states
        self.keys, self.values = self._k[:, :, :need], self._v[:, :, :need]
        return self.keys, self.values

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()


class GrowingCache(DynamicCache):
    """A `DynamicCache` whose full-attention layers are `GrowingLayer`s (other layer kinds, e.g. sliding windows,
    stay as transformers builds them). `capacity`: positions to reserve up front (the prompt plus the budget)."""

    def __init__(self, config: Any, capacity: int = 0):
        super().__init__(config=config)
        self.layers = [GrowingLayer(capacity) if type(layer) is DynamicLayer else layer for layer in self.layers]
