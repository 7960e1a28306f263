"""A trained feature-level draft (EAGLE-style) that rides on the target's own hidden states.

Input at position s: the target's last hidden state at s - 1 (final-normed; the draft's own prediction of it inside
a drafted branch) and the embedding of token s (the target's embedding table, shared at run time).  One Llama
decoder layer predicts the target's hidden state at s; the target's output head restricted to the `head_ids`
most frequent tokens turns it into draft logits.  Only the fuse layer, the decoder layer and its norm are stored:
embeddings and head rows come from the target when the draft is attached to it.

Saved in HF format (config.json with `specvlm_draft: "feature"` + model.safetensors), loaded by
`specvlm.load(draft=PATH)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaModel, PreTrainedModel

from specvlm.cache import keep_positions
from specvlm.drafting import DraftContext, Drafter, DraftSession
from specvlm.errors import ConfigError, ModelLoadError
from specvlm.packed import PackedWeight
from specvlm.targets.scheme import cache_keyword
from specvlm.tree import append_causal_mask, append_nodes_mask
from specvlm.trees import tree_from_spec

from .feature_fast import DYNAMIC_ROPE, LeanFeatureForward, LeanKV, rope_type
from .session import TreeFedSession

DRAFT_KIND = "feature"


class FeatureDraftModel(PreTrainedModel):
    """fuse([feature; embedding]) -> one Llama decoder layer -> predicted target feature.  Head ids as a buffer."""

    config_class = LlamaConfig
    base_model_prefix = "feature_draft"
    _supports_sdpa = True

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.fuse = nn.Linear(2 * hidden, hidden, bias=True)
        self.decoder = LlamaModel(config)  # inputs_embeds only: its own embedding table is a 1-row stub
        self.register_buffer("head_ids", torch.zeros(config.specvlm_head_size, dtype=torch.long))
        self.post_init()

    def forward(  # type: ignore[override]
        self,
        features: torch.Tensor,  # [B, L, H] target (or predicted) feature of the previous position
        token_embeds: torch.Tensor,  # [B, L, H] target embeddings of the tokens at these positions
        position_ids: torch.Tensor,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # [B, 1, L, past + L] additive, or None for causal
        past_key_values: DynamicCache | None = None,
    ) -> torch.Tensor:
        fused = self.fuse(torch.cat([features, token_embeds], dim=-1))  # [B, L, H]
        out = self.decoder(
            inputs_embeds=fused,
            position_ids=position_ids,
            attention_mask=attention_mask,
            **{cache_keyword(self.decoder): past_key_values},
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state  # [B, L, H], final-normed like the target's last hidden state


def draft_config(target_config: Any, head_size: int, layers: int = 1) -> LlamaConfig:
    """A Llama config shaped like the target's layers, with one (or a few) layers and no real embedding table."""
    tc = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    return LlamaConfig(
        vocab_size=1,
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
        head_dim=getattr(tc, "head_dim", tc.hidden_size // tc.num_attention_heads),
        max_position_embeddings=tc.max_position_embeddings,
        rms_norm_eps=tc.rms_norm_eps,
        rope_parameters=getattr(tc, "rope_parameters", None),
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
        specvlm_draft=DRAFT_KIND,
        specvlm_head_size=head_size,
        specvlm_target_vocab=int(tc.vocab_size),
    )


def is_feature_draft(path: str | Path) -> bool:
    """True for a folder holding a saved FeatureDraftModel."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("specvlm_draft") == DRAFT_KIND
    except json.JSONDecodeError:
        return False


def target_head(target: PreTrainedModel) -> tuple[nn.Embedding, torch.Tensor]:
    """The target's input embedding table and output head weight [V, H] (tied in SmolLM2)."""
    return target.get_input_embeddings(), target.get_output_embeddings().weight


class FeatureFed(Protocol):
    """What a `FeatureSession` drafts with: the feature draft here, and published EAGLE heads (drafters/eagle.py)."""

    lean: Any  # a forward (features, token_embeds, positions, mask, cache) -> [K, H] with `new_cache`, or None
    model: Any  # the HF module drafted through when `lean` is None
    embed: nn.Module
    device: torch.device
    dtype: torch.dtype
    skips_first_token: bool  # the draft sequence starts at the prompt's second token (EAGLE's alignment)

    def full_logits(self, feats: torch.Tensor) -> torch.Tensor: ...

    def real_features(self, hidden: torch.Tensor) -> torch.Tensor: ...


class FeatureSession(TreeFedSession):
    """Draft cache = committed tokens fed with the target's real features, + this step's tree nodes.

    `pending` tokens are committed but not yet fed; `pending_feats` holds the target feature of each one's
    predecessor.  Tree nodes are fed with predicted features, so after a step only the root is kept and the
    accepted tokens are fed again with the target's real features (the EAGLE re-feed).  The first prompt token is
    fed with a zero feature, or left out when the drafter `skips_first_token` (a one-token prompt keeps it).
    """

    supports_skips = True

    def __init__(self, drafter: FeatureFed, prompt_ids: list[int], target_hidden: torch.Tensor):
        skip = drafter.skips_first_token and len(prompt_ids) > 1
        super().__init__(prompt_ids[1:] if skip else prompt_ids)
        self.d = drafter
        self.cache: LeanKV | DynamicCache = (
            drafter.lean.new_cache(capacity=2 * len(prompt_ids) + 64)
            if drafter.lean is not None
            else DynamicCache(config=drafter.model.config)
        )
        before = target_hidden[: len(prompt_ids) - 1]  # [P - 1, F] the feature before each token from the second
        if not skip:
            before = torch.cat([target_hidden.new_zeros(1, target_hidden.shape[-1]), before])  # [P, F]
        self.pending_feats = drafter.real_features(before)  # [P or P - 1, H]
        self.out: dict[int, torch.Tensor] = {}  # node -> predicted feature [H]
        self.hidden: torch.Tensor | None = None  # target hidden states of the last scored tree [N, H]

    def _forward(
        self, tokens: list[int], feats: torch.Tensor, positions: list[int], mask: torch.Tensor
    ) -> torch.Tensor:
        d = self.d
        ids = torch.tensor([tokens], device=d.device)
        if isinstance(self.cache, LeanKV):
            pos = torch.tensor(positions, device=d.device)  # [K]
            return d.lean(feats, d.embed(ids)[0], pos, mask.to(d.device), self.cache)  # [K, H]
        out = d.model(
            features=feats[None].to(d.dtype),
            token_embeds=d.embed(ids).to(d.dtype),
            position_ids=torch.tensor([positions], device=d.device),
            attention_mask=mask[None, None].to(d.device),
            past_key_values=self.cache,
        )
        return out[0]  # [K, H]

    def _past(self) -> int:
        """Entries in the draft cache (committed + this step's fed nodes)."""
        return self.cache.length if isinstance(self.cache, LeanKV) else int(self.cache.get_seq_length())

    def _feed_pending(self) -> None:
        n, start = len(self.pending), self.base
        causal = append_causal_mask(start, n, self.d.dtype)
        out = self._forward(self.pending, self.pending_feats, list(range(start, start + n)), causal)
        self.base = start + n - 1  # the root is node 0 of this step's tree
        self.slot, self.out = {0: self.base}, {0: out[-1]}
        self.node_logits = {0: self.d.full_logits(out[-1:])[0]}
        self.pending = []

    def _feed_nodes(self, new: list[int], tokens: list[int], parents: list[int]) -> None:
        """Feed tree nodes whose parents are fed (one draft forward) and keep their features and logits."""
        past = self._past()
        mask, depth = append_nodes_mask(new, parents, self.slot, self.base, past, self.d.dtype)
        feats = torch.stack([self.out[parents[n]] for n in new])  # [K, H]
        out = self._forward([tokens[n] for n in new], feats, [self.base + d for d in depth], mask)
        logits = self.d.full_logits(out)  # [K, V]
        for row, node in enumerate(new):
            self.slot[node] = past + row
            self.out[node] = out[row]
            self.node_logits[node] = logits[row]

    @torch.inference_mode()
    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        return super().logits(nodes, tokens, parents)  # a mixture may have skipped some ancestors: fed first

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        if self.hidden is None:
            raise RuntimeError("the feature draft needs the target's hidden states of the scored tree")
        feats = self.d.real_features(self.hidden[torch.tensor(path, device=self.hidden.device)])  # [len(path), H]
        if self.pending:  # never asked this step (a mixture drafted without it): feed everything next time
            self.pending += list(new_tokens)
            self.pending_feats = torch.cat([self.pending_feats, feats])
            self.hidden = None
            return
        # keep the root (fed with a real feature) only
        if isinstance(self.cache, LeanKV):
            self.cache.keep(self.base, [self.base])
        else:
            keep_positions(self.cache, self.base, [self.base])
        self.base += 1
        self.pending_feats = feats
        self.out, self.hidden = {}, None
        self._next_step(list(new_tokens))


class FeatureDrafter(Drafter):
    """A FeatureDraftModel attached to its target (embeddings shared, never copied; the head's K rows gathered once).

    Sessions draft through `LeanFeatureForward` (plain tensor ops on the module's weights, its own K/V tensors);
    `lean=False`, or a rope type that changes with the sequence length, drafts through the HF module instead.
    """

    needs_target_hidden = True
    skips_first_token = False  # the first token is fed with a zero feature, as in training

    def __init__(self, model: FeatureDraftModel, target: PreTrainedModel, name: str = "feature", lean: bool = True):
        cfg = model.config
        embed, head = target_head(target)
        if head.shape[-1] != cfg.hidden_size or head.shape[0] < int(model.head_ids.max()) + 1:
            raise ModelLoadError(
                f"this draft was trained for a target with hidden size {cfg.hidden_size} and vocabulary "
                f"{cfg.specvlm_target_vocab}; the target has {head.shape[-1]} and {head.shape[0]}"
            )
        self.model = model.eval()
        self.name = name
        self.embed = embed
        self.device = head.device
        self.dtype = next(model.parameters()).dtype
        self.head_ids = model.head_ids.to(self.device)  # [K]
        self.head = PackedWeight(head.detach()[self.head_ids].to(self.dtype))  # [K, H] a gathered copy of K rows
        self.vocab = int(head.shape[0])
        use_lean = lean and rope_type(cfg) not in DYNAMIC_ROPE
        self.lean: LeanFeatureForward | None = LeanFeatureForward(self.model) if use_lean else None
        tree = getattr(cfg, "specvlm_default_tree", None)  # the tree measured best with this draft, if saved
        self.default_tree = tree_from_spec(tree) if tree else None

    def real_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's last hidden states are this draft's features as they are: [K, H] -> [K, H]."""
        return hidden

    def full_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Reduced-head logits scattered into the target vocabulary (other tokens -inf): [K, H] -> [K, V]."""
        small = self.head(feats.to(self.dtype)).float()  # [K, K_head]
        full = torch.full((feats.shape[0], self.vocab), -torch.inf, device=feats.device)
        return full.index_copy_(1, self.head_ids, small)

    def session(self, context: DraftContext) -> DraftSession:
        if context.target_hidden is None:
            raise ConfigError("the feature draft needs the target's hidden states (use it through specvlm's engine)")
        if context.images is not None:
            raise ConfigError("the feature draft is text-only: it cannot draft for a VLM target yet")
        return FeatureSession(self, list(context.prompt_ids), context.target_hidden.to(self.device))

    @torch.inference_mode()
    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        if target_hidden is None:
            raise ConfigError("the feature draft needs the target's hidden states")
        ids = ids.to(self.device)
        feats = torch.cat([target_hidden.new_zeros(1, target_hidden.shape[-1]), target_hidden[:-1]])  # [L, H]
        positions = torch.arange(ids.shape[0], device=self.device)[None]
        out = self.model(features=feats[None].to(self.dtype), token_embeds=self.embed(ids[None]).to(self.dtype),
                         position_ids=positions)  # fmt: skip
        return self.full_logits(out[0])  # [L, V]


def load_feature_draft(path: str | Path, target: PreTrainedModel, dtype: torch.dtype | None = None) -> FeatureDrafter:
    """Load a saved draft folder and attach it to `target` (same device; the target's dtype unless given)."""
    head = target.get_output_embeddings().weight
    model = FeatureDraftModel.from_pretrained(str(path), dtype=dtype or head.dtype).to(head.device)
    return FeatureDrafter(model, target, name=Path(path).name)
