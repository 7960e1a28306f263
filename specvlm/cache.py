"""Keep only the accepted path in a transformers KV cache: gather in place, never recompute.

The target's cache grows in place (`GrowingCache`): appending a step's tokens writes into spare room instead of
copying the whole cache. Sliding-window layers (`SlidingLayer`) hold at most the last `window - 1` committed
positions plus one step's tree."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

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
    for layer in _layers(cache):
        if isinstance(layer, SlidingLayer):
            layer.keep_positions(start, keep)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel() > 0:
            _gather(layer, start, keep)


def gather_kept(keys: torch.Tensor, values: torch.Tensor, start: int, keep: list[int]) -> int:
    """In place along dim 2 (positions) of [.., .., S, D] keys and values: entries [start, start + len(keep)) become
    the entries `keep` (ascending, >= start); returns the new length start + len(keep)."""
    new_len = start + len(keep)
    if keep != list(range(start, new_len)):
        idx = torch.tensor(keep, dtype=torch.long, device=keys.device)  # [K]
        keys[:, :, start:new_len] = keys.index_select(2, idx)
        values[:, :, start:new_len] = values.index_select(2, idx)
    return new_len


def _gather(layer: Any, start: int, keep: list[int]) -> None:
    """keys/values [B, H, S, D] -> [B, H, start + len(keep), D]: entries [0, start) then `keep` (local indices)."""
    new_len = gather_kept(layer.keys, layer.values, start, keep)
    layer.keys = layer.keys[:, :, :new_len]
    layer.values = layer.values[:, :, :new_len]


def settle(cache: Cache) -> None:
    """After a prefill: sliding layers drop what their window no longer reaches (full layers are left as they are)."""
    for layer in _layers(cache):
        if isinstance(layer, SlidingLayer):
            layer.keep_positions(layer.cumulative_length, [])


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


class SlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer for tree decoding: between steps it holds the last `window - 1` committed positions
    (what the next token can see); during a step it also holds every tree node fed since, so a kept path is gathered
    from them, then `keep_positions` cuts it back to the window. Memory: at most window - 1 + one step's nodes.

    `cumulative_length` is the logical sequence length (committed + fed); `offset` the logical position of the
    first entry held. `update` returns everything held plus the new entries, and `get_mask_sizes` says so, so a mask
    built by transformers (prefill) or by specvlm (`specvlm.targets`) always matches the keys.
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [B, H, n, D]; return all held keys and values, the new ones included."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def held(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    @property
    def offset(self) -> int:
        """Logical position of the first held entry."""
        return self.cumulative_length - self.held()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.held() + query_length, self.offset

    def keep_positions(self, start: int, keep: list[int]) -> None:
        """`keep_positions` over logical positions, then drop all but the last window - 1 entries."""
        if self.is_initialized and self.held():
            offset = self.offset
            if start < offset:
                raise RuntimeError(f"sliding layer: cannot keep from position {start}, the window starts at {offset}")
            _gather(self, start - offset, [k - offset for k in keep])
            room = self.sliding_window - 1
            if self.held() > room:
                self.keys = self.keys[:, :, -room:]
                self.values = self.values[:, :, -room:]
        self.cumulative_length = start + len(keep)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of positions to remove, got {tokens_to_remove}")
        self.keep_positions(self.cumulative_length + tokens_to_remove, [])


#: the cache layers specvlm can keep a path in, by the layer type transformers builds (`DynamicCache(config)`)
KEEPABLE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


class GrowingCache(DynamicCache):
    """A `DynamicCache` whose full-attention layers are `GrowingLayer`s and sliding-window layers `SlidingLayer`s.
    `capacity`: positions to reserve up front in the full layers (the prompt plus the budget)."""

    def __init__(self, config: Any, capacity: int = 0):
        super().__init__(config=config)
        self.layers = [_engine_layer(layer, capacity) for layer in self.layers]


def _engine_layer(layer: Any, capacity: int) -> Any:
    if type(layer) is DynamicLayer:
        return GrowingLayer(capacity)
    if type(layer) is DynamicSlidingWindowLayer:
        return SlidingLayer(sliding_window=layer.sliding_window)
    raise TypeError(f"unsupported cache layer {type(layer).__name__}: specvlm keeps paths in full and sliding layers")
