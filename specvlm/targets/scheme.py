"""What a loaded model needs from the engine, read once from its config.

That is the attention kind of every layer, the position scheme, prefix attention and the inputs its prefill takes.
Families the engine cannot serve losslessly are refused here.

The rules, stated once:
- Layer types come from transformers' own reading of the config (`cache_utils.get_layer_types_and_kwargs`, which
  `DynamicCache(config=...)` uses), so the cache specvlm builds and the masks it writes agree with the model's.
  Full and sliding-window attention are served; chunked, indexed, recurrent, linear, hybrid and shared-KV layers are
  refused.
- Positions are 1D `logical + offset`: PaliGemma numbers from 1; Qwen2-VL / Qwen2.5-VL (M-RoPE) continue the
  prompt's 3D grid, so text after an image sits at `logical + rope_delta` on all three axes (the delta comes from
  the model's own `get_rope_index`, once per prompt).
- Prefix attention (PaliGemma: the whole prompt attends bidirectionally): the last prompt token cannot be re-scored
  causally as a tree root, so the prompt is prefilled whole and the first root's logits come from the prefill.
- Gemma 3 image blocks attend bidirectionally inside an image (`token_type_ids`): the prefill takes them; tree nodes
  are text and attend causally, as in the model's own `generate`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

#: the layer types whose cache specvlm keeps a path in (transformers' names)
SERVED_LAYERS = ("full_attention", "sliding_attention")

#: VLM families whose prefill and positions the adapters cover (model_type of the top-level config)
SERVED_VLMS = frozenset(
    {"llava", "llava_next", "llava_onevision", "mistral3", "idefics3", "smolvlm", "gemma3", "paligemma"}
    | {"qwen2_vl", "qwen2_5_vl"}
)
#: text positions continue from the image grid (M-RoPE): the delta comes from the model's `get_rope_index`
MROPE = frozenset({"qwen2_vl", "qwen2_5_vl"})
#: the prompt is a bidirectional prefix (and positions count from 1)
PREFIX_LM = frozenset({"paligemma"})
#: inputs aligned with input_ids ([1, L]) that a prefill slices with the ids
PER_TOKEN_INPUTS = ("token_type_ids", "mm_token_type_ids")
#: the per-token input each family's prefill needs (M-RoPE modality ids, Gemma 3 image blocks, PaliGemma's prefix)
TOKEN_TYPES = {
    "qwen2_vl": "mm_token_type_ids",
    "qwen2_5_vl": "mm_token_type_ids",
    "gemma3": "token_type_ids",
    "paligemma": "token_type_ids",
}

#: families refused outright, with what is missing
REFUSED = {
    "mllama": "cross-attention to the image (Mllama) is not a causal tree forward",
    "mllama_text_model": "cross-attention layers (Mllama's text model) are not a causal tree forward",
    "recurrent_gemma": "recurrent layers keep no per-token cache to gather a path from",
}


@dataclass(frozen=True)
class ModelScheme:
    """How the engine drives one model (target or draft)."""

    model_type: str
    layer_types: tuple[str, ...]  # per decoder layer: "full_attention" | "sliding_attention"
    window: int | None  # the sliding layers' window (one value), None without sliding layers
    position_offset: int  # added to every logical position (PaliGemma: 1)
    mrope: bool  # positions also shift by the prompt's rope delta (given per prompt)
    prefix_attention: bool  # the first root's logits come from a whole-prompt prefill
    cache_keyword: str  # the forward's cache argument: "cache" (transformers >= 5.2x) or "past_key_values"
    token_types: str | None  # the per-token input this family's prefill needs, derived from image tokens if absent

    @property
    def kinds(self) -> tuple[str, ...]:
        """The distinct layer types, in a fixed order."""
        return tuple(t for t in SERVED_LAYERS if t in self.layer_types)

    def cache_arg(self, cache: Any) -> dict[str, Any]:
        return {self.cache_keyword: cache}

    def positions(self, logical: torch.Tensor, delta: int = 0) -> torch.Tensor:
        """Position ids for tokens at `logical` positions [N]: [1, N], or [3, 1, N] for M-RoPE."""
        pos = (logical + self.position_offset + delta)[None]  # [1, N]
        return pos[None].expand(3, 1, -1) if self.mrope else pos

    def token_type_input(self, ids: Sequence[int], image_token: int | None) -> dict[str, torch.Tensor]:
        """The per-token input of this family for `ids` when the caller gave none: [1, L] long."""
        if self.token_types is None:
            return {}
        if self.prefix_attention:  # PaliGemma: the whole prompt is prefix (0)
            values = [0] * len(ids)
        else:  # Gemma 3 token_type_ids / Qwen2-VL mm_token_type_ids: 1 at image tokens
            values = [int(t == image_token) for t in ids]
        return {self.token_types: torch.tensor([values], dtype=torch.long)}


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if getter is None:
        return config
    try:
        return getter(decoder=True)
    except TypeError:
        return getter()


def layer_types(config: Any) -> list[str]:
    """The decoder's layer types as transformers' DynamicCache reads them."""
    text = _text_config(config)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        return list(get_layer_types_and_kwargs(text)[0])
    except (ImportError, AttributeError):
        found = getattr(text, "layer_types", None)
        if found is not None:
            return list(found)
        kind = "sliding_attention" if getattr(text, "sliding_window", None) else "full_attention"
        return [kind] * int(getattr(text, "num_hidden_layers", 0) or 0)


def cache_keyword(model: Any) -> str:
    """The keyword a model's forward takes its KV cache under: `cache` (transformers >= 5.24), else the older
    `past_key_values` (passing that to a newer model warns that it is removed in 5.40)."""
    return _cache_keyword(type(model))


@functools.cache
def _cache_keyword(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _refuse(model_type: str, why: str) -> ConfigError:
    return ConfigError(
        f"specvlm cannot serve model type {model_type!r} losslessly: {why}. Supported: causal LMs with full or "
        f"sliding-window attention, and the VLM families {', '.join(sorted(SERVED_VLMS))}"
    )


def refuse_config(config: Any) -> None:
    """ConfigError naming the model type and what is missing, for a config no adapter covers (before weights load)."""
    model_type = str(getattr(config, "model_type", type(config).__name__))
    if model_type in REFUSED:
        raise _refuse(model_type, REFUSED[model_type])
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model_type, "encoder-decoder models have no single causal cache to score a tree in")
    text = _text_config(config)
    if getattr(text, "cross_attention_layers", None):
        raise _refuse(model_type, "cross-attention layers (to an image or encoder) are not a causal tree forward")
    if getattr(text, "use_bidirectional_attention", False) and model_type not in PREFIX_LM:
        raise _refuse(model_type, "bidirectional attention over the whole sequence is not a causal LM")
    types = layer_types(config)
    other = sorted({t for t in types if t not in SERVED_LAYERS})
    if other:
        raise _refuse(model_type, f"its layers of type {', '.join(other)} keep no cache specvlm can keep a path in")
    if not types:
        raise _refuse(model_type, "its config names no decoder layers")
    if getattr(config, "vision_config", None) is not None and model_type not in SERVED_VLMS:
        raise _refuse(model_type, "its image prefill and position scheme are not covered by an adapter")


def scheme_for(model: Any) -> ModelScheme:
    """The model's scheme, or ConfigError naming its type and what is missing."""
    config = model.config
    refuse_config(config)
    model_type = str(getattr(config, "model_type", type(model).__name__))
    text = _text_config(config)
    types = layer_types(config)
    window = None
    if "sliding_attention" in types:
        windows = {int(getattr(layer, "sliding_window", 0) or 0) for layer in _per_layer(text, len(types))}
        windows.discard(0)
        if len(windows) != 1:
            raise _refuse(model_type, f"its sliding layers have windows {sorted(windows)}, not one window")
        window = windows.pop()
    return ModelScheme(
        model_type=model_type,
        layer_types=tuple(types),
        window=window,
        position_offset=1 if model_type in PREFIX_LM else 0,
        mrope=model_type in MROPE,
        prefix_attention=model_type in PREFIX_LM,
        cache_keyword=cache_keyword(model),
        token_types=TOKEN_TYPES.get(model_type),
    )


def _per_layer(text: Any, n: int) -> list[Any]:
    layers = getattr(text, "per_layer_config", None)
    return list(layers) if layers else [text] * n


@torch.inference_mode()
def rope_delta(model: Any, scheme: ModelScheme, input_ids: torch.Tensor, inputs: dict[str, Any]) -> int:
    """The M-RoPE shift of text after the prompt (0 without images): from the model's own `get_rope_index`."""
    if not scheme.mrope or (inputs.get("image_grid_thw") is None and inputs.get("video_grid_thw") is None):
        return 0
    base = getattr(model, "model", model)
    names = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw")
    _, delta = base.get_rope_index(input_ids, **{k: inputs[k] for k in names if inputs.get(k) is not None})
    return int(delta.reshape(-1)[0])
