"""A lean inference forward for the feature draft: the same weights as `FeatureDraftModel`, plain tensor ops.

For the handful of tokens a draft step feeds, the HF module path (LlamaModel -> decoder layer -> attention
interface, a `DynamicCache`, mask and rotary modules) costs milliseconds of Python and module dispatch per call.
This forward does the same math in a few fused matmuls: fuse Linear, then per layer RMSNorm -> one q/k/v matmul ->
RoPE -> `scaled_dot_product_attention` with the caller's additive mask (grouped-query heads folded into the query
rows, so keys and values are never repeated) -> o projection -> RMSNorm -> one gate/up matmul -> SiLU -> down,
then the final norm.  Keys and values live in `LeanKV`, preallocated tensors that grow by doubling.

The weights are a snapshot taken when the forward is built (q/k/v and gate/up rows are concatenated copies; the
rest share storage with the module): rebuild it after changing the module's weights.  Training keeps using the
HF module, which stays the reference the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from specvlm.cache import gather_kept
from specvlm.packed import PackedWeight

#: rope types whose frequencies change with the sequence length at run time (not supported by the lean forward)
DYNAMIC_ROPE = ("dynamic", "longrope")


def rope_type(config: LlamaConfig) -> str:
    params = getattr(config, "rope_parameters", None) or {}
    return str(params.get("rope_type", "default"))


def rope_frequencies(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] (float32) and the cos/sin scale for the config's (static) rope type.

    The default type is theta^(-2i / head_dim); other static types are computed by transformers' own rope init
    functions, so scaled variants (linear, llama3, yarn, ...) match the HF module exactly.
    """
    kind = rope_type(config)
    if kind in DYNAMIC_ROPE:
        raise ValueError(f"rope type {kind!r} changes with the sequence length: the lean forward does not support it")
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    if kind == "default":
        theta = float(config.rope_parameters["rope_theta"])
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # [D / 2]
        return 1.0 / theta**exponents, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](config)
    return inv_freq.float(), float(scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, scaled by `weight` in the input's dtype.  [L, H] -> [L, H]"""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, D] in `dtype` for integer positions [L] and inverse frequencies [D / 2]."""
    freqs = positions[:, None].float() * inv_freq[None]  # [L, D / 2]
    angles = torch.cat([freqs, freqs], dim=-1)  # [L, D]
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, x: [heads, L, D], cos/sin: [L, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # [heads, L, D]
    return x * cos + rotated * sin


def grouped_mask(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """An additive mask [L, S] repeated for the `groups` query heads that share a key/value head: [1, 1, g L, S]."""
    n, total = mask.shape
    return mask.to(dtype)[None].expand(groups, n, total).reshape(1, 1, groups * n, total)


def reserve_for(cache: LeanKV, mask: torch.Tensor, n: int) -> int:
    """Check that `mask` is [n, past + n] for n new tokens after the cache's `past`, grow the cache; return past."""
    past = cache.length
    if mask.shape != (n, past + n):
        raise ValueError(f"mask must be [{n}, {past + n}] for {n} tokens after {past}, got {list(mask.shape)}")
    cache.reserve(n)
    return past


def cached_attention(
    q: torch.Tensor,  # [L, heads D]
    k: torch.Tensor,  # [L, kv D]
    v: torch.Tensor,  # [L, kv D]
    cache: LeanKV,
    layer: int,
    att_mask: torch.Tensor,  # [1, 1, g L, past + L] from `grouped_mask`
    rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [L, D]
    heads: int,
    kv_heads: int,
) -> torch.Tensor:
    """RoPE, write this step's keys/values into `cache` (entries past .. past + L of `layer`; the caller advances
    `cache.length`), attend with grouped-query heads folded into the query rows: returns [L, heads D]."""
    n, past = int(q.shape[0]), cache.length
    d, g, total = q.shape[-1] // heads, heads // kv_heads, cache.length + int(q.shape[0])
    cos, sin = rope
    cache.keys[layer, :, past:total] = rotate(k.view(n, kv_heads, d).transpose(0, 1), cos, sin)  # [kv, L, D]
    cache.values[layer, :, past:total] = v.view(n, kv_heads, d).transpose(0, 1)
    q = rotate(q.view(n, heads, d).transpose(0, 1), cos, sin).reshape(kv_heads, g * n, d)  # [kv, g L, D]
    att = F.scaled_dot_product_attention(
        q[None], cache.keys[layer, :, :total][None], cache.values[layer, :, :total][None], attn_mask=att_mask
    )  # [1, kv, g L, D]: head = kv * g + j
    return att.view(heads, n, d).transpose(0, 1).reshape(n, heads * d)  # [L, heads D]


class LeanKV:
    """Keys and values of every draft layer: [layers, kv_heads, capacity, head_dim] each, `length` filled.

    Inference tensors: every method runs under `torch.inference_mode` (write to them only inside it).
    """

    @torch.inference_mode()
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 capacity: int = 512):  # fmt: skip
        self.keys = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    @torch.inference_mode()
    def reserve(self, extra: int) -> None:
        """Make room for `extra` more positions (capacity doubles, filled positions are copied once)."""
        need = self.length + extra
        cap = self.keys.shape[2]
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], cap, old.shape[3])  # [layers, kv, cap, D]
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    @torch.inference_mode()
    def keep(self, start: int, keep: list[int]) -> None:
        """Keep positions [0, start) and then the positions `keep` (absolute, ascending); drop the rest."""
        self.length = gather_kept(self.keys, self.values, start, keep)  # [layers, kv, cap, D]: positions on dim 2


@dataclass(frozen=True)
class _Layer:
    ln1: torch.Tensor  # [H]
    qkv: PackedWeight  # [(heads + 2 kv_heads) * D, H]
    o: PackedWeight  # [H, heads * D]
    ln2: torch.Tensor  # [H]
    gate_up: PackedWeight  # [2 I, H]
    down: PackedWeight  # [H, I]


def _joined(*linears: torch.nn.Linear) -> PackedWeight:
    """One linear map for several of the same input: their rows (and biases) stacked."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears])
    return PackedWeight(weight, bias)


def _single(lin: torch.nn.Linear) -> PackedWeight:
    return PackedWeight(lin.weight, lin.bias)


class LeanFeatureForward:
    """The inference forward of a `FeatureDraftModel` (float32 or bfloat16 weights, one sequence, no grad)."""

    def __init__(self, model: torch.nn.Module):
        cfg: LlamaConfig = model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"the lean forward implements SiLU MLPs, not {cfg.hidden_act!r}")
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.groups = self.heads // self.kv_heads  # query heads per key/value head
        self.eps = float(cfg.rms_norm_eps)
        self.fuse = _single(model.fuse)  # [H, 2H]
        self.dtype = self.fuse.weight.dtype
        self.device = self.fuse.weight.device
        inv_freq, self.rope_scale = rope_frequencies(cfg)
        self.inv_freq = inv_freq.to(self.device)  # [D / 2] float32
        self.layers: list[_Layer] = []
        for layer in model.decoder.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight.detach(),
                    qkv=_joined(att.q_proj, att.k_proj, att.v_proj),
                    o=_single(att.o_proj),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    gate_up=_joined(mlp.gate_proj, mlp.up_proj),
                    down=_single(mlp.down_proj),
                )
            )
        self.norm = model.decoder.norm.weight.detach()  # [H]

    def new_cache(self, capacity: int = 512) -> LeanKV:
        return LeanKV(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device, capacity)

    @torch.inference_mode()
    def __call__(
        self,
        features: torch.Tensor,  # [L, H] target (or predicted) feature of each previous position
        token_embeds: torch.Tensor,  # [L, H] embeddings of the tokens at these positions
        positions: torch.Tensor,  # [L] long
        mask: torch.Tensor,  # [L, past + L] additive (0 / dtype min), past = cache.length
        cache: LeanKV,
    ) -> torch.Tensor:
        n = int(features.shape[0])
        past = reserve_for(cache, mask, n)
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        att_mask = grouped_mask(mask, self.groups, self.dtype)  # [1, 1, g L, S]
        rope = rope_tables(positions, self.inv_freq, self.rope_scale, self.dtype)  # cos, sin [L, D]
        h = self.fuse(torch.cat([features, token_embeds], dim=-1).to(self.dtype))  # [L, H]
        for i, w in enumerate(self.layers):
            qkv = w.qkv(rms_norm(h, w.ln1, self.eps))  # [L, (heads + 2 kv) D]
            q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
            h = h + w.o(cached_attention(q, k, v, cache, i, att_mask, rope, self.heads, self.kv_heads))  # [L, H]
            gate, up = w.gate_up(rms_norm(h, w.ln2, self.eps)).chunk(2, dim=-1)  # [L, I] each
            h = h + w.down(F.silu(gate) * up)  # [L, H]
        cache.length = past + n
        return rms_norm(h, self.norm, self.eps)  # [L, H], final-normed like the target's last hidden state
