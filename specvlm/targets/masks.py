"""Per-layer-type attention masks for tree forwards.

They combine the tree's ancestor rule, the window of sliding layers, and the columns each layer type holds. Pure
tensor math; the cache is read only for how many entries a layer holds."""

from __future__ import annotations

from typing import Any

import torch

from ..cache import SlidingLayer
from .scheme import ModelScheme


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [n, C] -> additive float mask [1, 1, n, C] of 0 / dtype min (a bool 4D mask is wrong with eager)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def held_by_sliding(cache: Any) -> int | None:
    """Entries a sliding layer of `cache` holds now (all sliding layers move together); None without one."""
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, SlidingLayer):
            return layer.held()
    return None


def layer_masks(
    scheme: ModelScheme,
    cache: Any,
    allowed: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The `attention_mask` argument for feeding n tokens on top of `cache`.

    allowed:   [n, C] bool, C = logical cache length + n: which entries each new token may see (prefix, ancestors,
               itself), before any window
    query_pos: [n] logical positions of the new tokens
    key_pos:   [C] logical positions of every entry (cache entries, then the new tokens); needed only when the
               scheme has sliding layers (`scheme.window`), else None
    Returns one [1, 1, n, C'] mask when every layer is of one type, else {layer type: mask} (transformers' per-layer
    -type mapping, which its models pass through as given).
    """
    n, width = allowed.shape
    masks: dict[str, torch.Tensor] = {}
    for kind in scheme.kinds:
        if kind == "full_attention":
            masks[kind] = additive(allowed, dtype)
            continue
        if key_pos is None:
            raise ValueError("a sliding-window scheme needs the entries' positions (key_pos)")
        held = held_by_sliding(cache)
        start = width - n - (held if held is not None else width - n)  # columns before it are no longer held
        near = (query_pos[:, None] - key_pos[None, start:]) < int(scheme.window or 0)  # [n, C - start]
        masks[kind] = additive(allowed[:, start:] & near, dtype)
    if len(masks) == 1:
        return next(iter(masks.values()))
    return masks
