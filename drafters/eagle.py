"""Published EAGLE heads (EAGLE-3, official and speculators layouts; EAGLE-1/2) as tree drafters.

Notation: H = the draft's hidden size, H_t = the target's, V = the target vocabulary, Vd = the draft's.

EAGLE-3, at position t: g = fc(cat(h_a, h_b, h_c)) [3 H_t -> H], the target's hidden states entering decoder layers
(2, L // 2, L - 3) (transformers' `hidden_states[i]`), or the `eagle_aux_hidden_state_layer_ids` of a speculators
config, read as vLLM reads them: id i = the input of decoder layer i = `hidden_states[i]`. With e = the embedding of
token t + 1, one decoder layer: x = cat(input_layernorm(e), hidden_norm(g)) [2H] -> attention (q/k/v over 2H) ->
+ residual (g; hidden_norm(g) when `norm_before_residual`) -> post-attention norm -> SiLU MLP -> + residual = h'.
logits = lm_head(norm(h')) over the draft vocabulary, target id = draft id + d2t[draft id]. Deeper tree levels feed
h' as the next g (fc is skipped: it is already H wide).

EAGLE-1/2, at position t: x = fc(cat(e, h_t)) [2H -> H, bias unless `"bias": false`], h_t the target's last hidden
state (final-normed); one decoder layer without its input norm; h' (no final norm) is the next level's h_t and the
target's own head gives the logits.

Both draft over their own cache of the sequence from its second token on (EAGLE's alignment: the first token has no
feature before it), numbered 0, 1, ... as EAGLE numbers it (RoPE is relative). A VLM target's image positions are
fed like text: the target's hidden states there and the embedding of the image placeholder token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig

from specvlm.drafting import DraftContext, Drafter, DraftSession
from specvlm.errors import ConfigError, ModelLoadError
from specvlm.models import TargetModel
from specvlm.packed import PackedWeight

from .feature_draft import FeatureSession
from .feature_fast import (
    DYNAMIC_ROPE,
    LeanKV,
    cached_attention,
    grouped_mask,
    reserve_for,
    rms_norm,
    rope_frequencies,
    rope_tables,
    rope_type,
)
from .published import Checkpoint


def default_aux_layers(layers: int) -> tuple[int, ...]:
    """EAGLE-3's (and vLLM's) default: the inputs of decoder layers 2, L // 2 and L - 3."""
    return (2, layers // 2, layers - 3)


def layer_config(ck: Checkpoint) -> dict:
    """The draft layer's Llama config (the speculators layout nests it under `transformer_layer_config`)."""
    if ck.layout == "eagle3-speculators":
        inner = ck.config.get("transformer_layer_config")
        if not isinstance(inner, dict):
            raise ModelLoadError(f"{ck.folder}: a speculators eagle3 config needs a transformer_layer_config object")
        return inner
    return ck.config


@dataclass(frozen=True)
class EagleLayout:
    """What one checkpoint's keys are called and how its layer is wired."""

    prefix: str  # the decoder layer's key prefix
    eagle3: bool  # EAGLE-3 wiring (2H attention input, final norm, own head); else EAGLE-1/2
    norm_before_residual: bool = False


def eagle_layout(ck: Checkpoint) -> EagleLayout:
    if ck.layout == "eagle3":
        return EagleLayout("midlayer.", True)
    if ck.layout == "eagle3-speculators":
        return EagleLayout("layers.0.", True, bool(ck.config.get("norm_before_residual", False)))
    return EagleLayout("layers.0.", False)


class EagleForward:
    """One EAGLE decoder layer as plain tensor ops over its own `LeanKV` (float32 or the target's dtype, no grad)."""

    def __init__(self, ck: Checkpoint, dtype: torch.dtype, device: torch.device):
        layout = eagle_layout(ck)
        cfg = layer_config(ck)
        self.eagle3 = layout.eagle3
        self.norm_before_residual = layout.norm_before_residual
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.kv_heads = int(cfg.get("num_key_value_heads") or self.heads)
        self.head_dim = self.hidden // self.heads  # EAGLE's own code: hidden / heads, whatever the config says
        self.groups = self.heads // self.kv_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.dtype, self.device = dtype, device
        rope = _rope_config(cfg, self.hidden, self.heads, self.head_dim)
        if rope_type(rope) in DYNAMIC_ROPE:
            raise ConfigError(f"{ck.folder}: rope type {rope_type(rope)!r} changes with the length; not supported")
        inv_freq, self.rope_scale = rope_frequencies(rope)
        self.inv_freq = inv_freq.to(device)  # [D / 2]

        def w(key: str) -> torch.Tensor:
            return ck.tensor(key).to(device=device, dtype=dtype)

        def linear(key: str) -> PackedWeight:
            bias = f"{key}.bias"
            return PackedWeight(w(f"{key}.weight"), w(bias) if bias in ck.weights else None)

        p = layout.prefix
        att = f"{p}self_attn."
        q, k, v = (linear(f"{att}{n}_proj") for n in "qkv")
        self.q, self.k, self.v, self.o = q, k, v, linear(f"{att}o_proj")
        self.gate, self.up, self.down = (linear(f"{p}mlp.{n}_proj") for n in ("gate", "up", "down"))
        self.post_norm = w(f"{p}post_attention_layernorm.weight")  # [H]
        self.fc = linear("fc")  # EAGLE-3: [H, 3 H_t]; EAGLE-1/2: [H, 2H]
        self.in_norm = w(f"{p}input_layernorm.weight") if self.eagle3 else None  # [H] on the embedding
        self.hidden_norm = w(f"{p}hidden_norm.weight") if self.eagle3 else None  # [H] on g
        self.norm = w("norm.weight") if self.eagle3 else None  # [H] before the head
        self.layers = 1

    @property
    def fc_width(self) -> int:
        return int(self.fc.weight.shape[1])

    def new_cache(self, capacity: int = 512) -> LeanKV:
        return LeanKV(1, self.kv_heads, self.head_dim, self.dtype, self.device, capacity)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """EAGLE-3: the target's aux hidden states [K, 3 H_t] -> g [K, H]; EAGLE-1/2 fuse inside the layer."""
        return self.fc(aux.to(self.dtype)) if self.eagle3 else aux.to(self.dtype)

    @torch.inference_mode()
    def __call__(
        self,
        features: torch.Tensor,  # [L, H] g (EAGLE-3, fused) or h (EAGLE-1/2) of each previous position
        token_embeds: torch.Tensor,  # [L, H] embeddings of the tokens at these positions
        positions: torch.Tensor,  # [L] long
        mask: torch.Tensor,  # [L, past + L] additive, past = cache.length
        cache: LeanKV,
    ) -> torch.Tensor:
        n = int(features.shape[0])
        past = reserve_for(cache, mask, n)
        feats, embeds = features.to(self.dtype), token_embeds.to(self.dtype)
        if self.eagle3:
            normed = rms_norm(feats, self.hidden_norm, self.eps)  # [L, H]
            residual = normed if self.norm_before_residual else feats
            x = torch.cat([rms_norm(embeds, self.in_norm, self.eps), normed], dim=-1)  # [L, 2H]: embedding first
        else:
            x = self.fc(torch.cat([embeds, feats], dim=-1))  # [L, H]
            residual = x
        rope = rope_tables(positions, self.inv_freq, self.rope_scale, self.dtype)  # cos, sin [L, D]
        att = cached_attention(
            self.q(x), self.k(x), self.v(x), cache, 0, grouped_mask(mask, self.groups, self.dtype), rope,
            self.heads, self.kv_heads,
        )  # fmt: skip
        h = residual + self.o(att)  # [L, H]
        y = rms_norm(h, self.post_norm, self.eps)
        h = h + self.down(F.silu(self.gate(y)) * self.up(y))  # [L, H]
        cache.length = past + n
        return h  # h', before any final norm: the next level's feature


def _rope_config(cfg: dict, hidden: int, heads: int, head_dim: int) -> LlamaConfig:
    """A Llama config carrying only the draft's rope (legacy rope_theta / rope_scaling read as transformers reads
    them; a missing rope_theta is 10000)."""
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict) and "mrope_section" in scaling:
        raise ConfigError(
            "this draft's rope is M-RoPE (rope_scaling.mrope_section): specvlm numbers an EAGLE draft's positions "
            "1D, as EAGLE does, and does not feed it the target's 3D positions yet"
        )
    extra = {"rope_scaling": scaling} if scaling else {}
    return LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, head_dim=head_dim,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=float(cfg.get("rope_theta") or 10000.0), **extra,
    )  # fmt: skip


class EagleDrafter(Drafter):
    """An EAGLE-3 or EAGLE-1/2 checkpoint attached to its target: the target's embeddings (unless the checkpoint has
    its own) and, without a draft head, the target's output head are shared, never copied."""

    needs_target_hidden = True
    handles_images = True  # image positions are fed the target's hidden states and the placeholder's embedding
    skips_first_token = True  # EAGLE's alignment: the draft sequence starts at the second token
    model = None  # no HF module: sessions always draft through the lean forward

    def __init__(self, ck: Checkpoint, target: TargetModel, name: str | None = None):
        model = target.model
        text = model.config.get_text_config()
        self.name = name or f"{ck.layout}:{ck.folder.name}"
        self.layout = ck.layout
        head = model.get_output_embeddings().weight  # [V', H_t]
        self.device, self.dtype = head.device, head.dtype
        self.vocab = int(target.vocab_size)
        target_hidden, layers = int(text.hidden_size), int(text.num_hidden_layers)
        self.lean = EagleForward(ck, self.dtype, self.device)
        hidden = self.lean.hidden
        eagle3 = self.lean.eagle3
        want_fc = 3 * target_hidden if eagle3 else 2 * hidden
        if self.lean.fc_width != want_fc:
            raise ModelLoadError(
                f"{self.name}: fc.weight takes {self.lean.fc_width} inputs, but this target needs {want_fc} "
                f"({'3 x its hidden size' if eagle3 else '2 x the draft hidden size'}; the target's hidden size is "
                f"{target_hidden}): the draft was made for another target"
            )
        if not eagle3 and hidden != target_hidden:
            raise ModelLoadError(f"{self.name}: hidden size {hidden}, the target's is {target_hidden}")
        self.embed = self._embedding(ck, model, hidden)
        self.target_layers = self._aux_layers(ck, layers) if eagle3 else (-1,)
        self.head, self.draft_to_target = self._head(ck, head, hidden)

    def _embedding(self, ck: Checkpoint, model: nn.Module, hidden: int) -> nn.Module:
        if "embed_tokens.weight" in ck.weights:
            table = ck.weights["embed_tokens.weight"]
            rows = int(model.get_input_embeddings().weight.shape[0])
            if tuple(table.shape) != (rows, hidden):
                raise ModelLoadError(
                    f"{self.name}: embed_tokens is {list(table.shape)}, the target's embedding table has {rows} rows "
                    f"and the draft's hidden size is {hidden}"
                )
            return nn.Embedding.from_pretrained(table.to(self.device, self.dtype), freeze=True)
        embed = model.get_input_embeddings()
        if int(embed.weight.shape[-1]) != hidden:
            raise ModelLoadError(
                f"{self.name}: the draft layer is {hidden} wide but the target's embeddings are "
                f"{embed.weight.shape[-1]} and the checkpoint brings none of its own"
            )
        return embed

    def _aux_layers(self, ck: Checkpoint, layers: int) -> tuple[int, ...]:
        ids = ck.config.get("eagle_aux_hidden_state_layer_ids")
        chosen = tuple(int(i) for i in ids) if ids else default_aux_layers(layers)
        if len(chosen) != 3 or not all(0 <= i <= layers for i in chosen):
            raise ModelLoadError(
                f"{self.name}: aux hidden-state layers {list(chosen)} do not fit a target with {layers} layers"
            )
        return chosen

    def _head(self, ck: Checkpoint, target_head: torch.Tensor, hidden: int) -> tuple[PackedWeight, torch.Tensor | None]:
        """The output head [Vd, H] and, with a reduced vocabulary, the target id of every draft id [Vd]."""
        if not self.lean.eagle3 or "lm_head.weight" not in ck.weights:
            if int(target_head.shape[-1]) != hidden:
                raise ModelLoadError(f"{self.name}: no lm_head of its own, and the target's head is not {hidden} wide")
            return PackedWeight(target_head.detach()[: self.vocab]), None
        head = ck.weights["lm_head.weight"]
        if int(head.shape[1]) != hidden:
            raise ModelLoadError(f"{self.name}: lm_head is {list(head.shape)}, the draft hidden size is {hidden}")
        rows = int(head.shape[0])
        if "d2t" not in ck.weights:
            if rows != self.vocab:
                raise ModelLoadError(
                    f"{self.name}: lm_head has {rows} rows and no d2t map, the target's vocabulary is {self.vocab}"
                )
            return PackedWeight(head.to(self.device, self.dtype)), None
        d2t = ck.weights["d2t"].long()
        declared = ck.config.get("draft_vocab_size")
        if d2t.shape != (rows,) or (declared is not None and int(declared) != rows):
            raise ModelLoadError(
                f"{self.name}: d2t has {list(d2t.shape)} entries, lm_head {rows} rows, draft_vocab_size {declared}"
            )
        t2d = ck.weights.get("t2d")
        if t2d is not None and int(t2d.shape[0]) != self.vocab:
            raise ModelLoadError(f"{self.name}: t2d covers {t2d.shape[0]} tokens, the target's vocabulary {self.vocab}")
        ids = torch.arange(rows) + d2t  # [Vd] offsets -> target ids
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            raise ModelLoadError(f"{self.name}: d2t maps draft ids outside the target's vocabulary of {self.vocab}")
        return PackedWeight(head.to(self.device, self.dtype)), ids.to(self.device)

    def real_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's hidden states [K, F] as the draft layer's feature input [K, H] (EAGLE-3: through fc)."""
        return self.lean.fuse(hidden.to(self.device))

    def full_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Draft logits over the target vocabulary (tokens outside the draft vocabulary -inf): [K, H] -> [K, V]."""
        h = rms_norm(feats, self.lean.norm, self.lean.eps) if self.lean.norm is not None else feats
        small = self.head(h.to(self.dtype)).float()  # [K, Vd]
        if self.draft_to_target is None:
            return small
        full = torch.full((feats.shape[0], self.vocab), -torch.inf, device=feats.device)
        return full.index_copy_(1, self.draft_to_target, small)

    def session(self, context: DraftContext) -> DraftSession:
        if context.target_hidden is None:
            raise ConfigError(f"the {self.layout} draft needs the target's hidden states: use it through specvlm")
        return FeatureSession(self, list(context.prompt_ids), context.target_hidden.to(self.device))
