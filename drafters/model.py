"""An independent small causal LM as the draft, with its own KV cache and tree attention while drafting."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from specvlm.cache import GrowingCache, keep_positions, settle
from specvlm.drafting import DraftContext, Drafter, DraftSession
from specvlm.errors import ConfigError, ModelLoadError
from specvlm.models import per_token_slice
from specvlm.packed import PackedLinears, maybe_pack, packed_if
from specvlm.targets import ModelScheme, layer_masks, scheme_for
from specvlm.targets.scheme import rope_delta
from specvlm.tree import append_nodes_allowed
from specvlm.trees import tree_from_spec
from specvlm.vlm import draft_image_inputs, image_token_id

from .session import TreeFedSession


@dataclass
class ReducedHead:
    """The draft's head restricted to the token ids it may propose (the target still verifies over its whole
    vocabulary, so this only changes what the draft proposes, never the output). Costs len(ids) / vocab of the full
    head's matmul."""

    ids: torch.Tensor  # [K] token ids
    weight: torch.Tensor  # [K, H] rows of the draft's output embedding
    bias: torch.Tensor | None  # [K]

    @classmethod
    def of(cls, model: PreTrainedModel, ids: Sequence[int]) -> ReducedHead:
        head = model.get_output_embeddings()
        text = getattr(model.config, "text_config", model.config)
        if getattr(text, "final_logit_softcapping", None) or not hasattr(model, "model"):
            raise ConfigError(f"a reduced draft head needs a plain linear head over `model.model`: {type(model)}")
        index = torch.tensor(sorted(set(ids)), dtype=torch.long, device=head.weight.device)
        if int(index.max()) >= head.weight.shape[0] or int(index.min()) < 0:
            bad = int(index.max()) if int(index.max()) >= head.weight.shape[0] else int(index.min())
            raise ConfigError(f"reduced head ids must lie in [0, {head.weight.shape[0]}): got {bad}")
        bias = None if head.bias is None else head.bias.detach()[index]
        return cls(ids=index, weight=head.weight.detach()[index].clone(), bias=bias)

    def logits(self, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
        """hidden [K, H] -> float32 logits [K, vocab], -inf outside `ids`."""
        rows = torch.nn.functional.linear(hidden, self.weight, self.bias).float()  # [K, n_ids]
        out = torch.full((hidden.shape[0], vocab), -torch.inf, device=hidden.device)  # [K, vocab]
        keep = self.ids < vocab
        out[:, self.ids[keep]] = rows[:, keep]
        return out


class ModelSession(TreeFedSession):
    """Draft cache = committed tokens (minus the pending ones) + the tree nodes fed during this step.

    `pending` holds committed tokens the draft has not processed yet; its last element is always the root. The
    prompt is fed with the model's own masks and positions (as the target's prefill: image blocks, prefixes, M-RoPE);
    later feeds use the model's scheme (`specvlm.targets`) for per-layer masks and positions.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        prompt_ids: list[int],
        vocab_size: int,
        head: ReducedHead | None = None,
        packed: PackedLinears | None = None,
        scheme: ModelScheme | None = None,
        **inputs: Any,
    ):
        super().__init__(prompt_ids)
        self.model = model
        self.scheme = scheme if scheme is not None else scheme_for(model)
        self.head = head
        self.packed = packed
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab = vocab_size
        self.cache = GrowingCache(model.config)
        self.delta = 0  # M-RoPE: the prompt's position shift, from the first feed
        self.fed_pos: list[int] = []  # logical positions of the cache entries after `base` (this step's nodes)
        self.model_inputs = inputs  # e.g. pixel_values: consumed by the first forward
        self.trims_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @torch.inference_mode()
    def _forward(
        self,
        ids: list[int],
        allowed: torch.Tensor | None,
        positions: list[int],
        keys: list[int],
        last_only: bool = False,
    ) -> torch.Tensor:
        """Feed `ids` at logical `positions`, seeing `allowed` [K, past + K] (None: the model's own masks and
        positions, for the prompt); `keys`: logical positions of the cache entries and the new ones."""
        extra, self.model_inputs = self.model_inputs, {}
        if allowed is None:
            args: dict[str, Any] = per_token_slice(extra, len(ids))
        else:
            pos = torch.tensor(positions)  # [K]
            where = torch.tensor(keys) if self.scheme.window is not None else None  # only sliding windows need it
            mask = layer_masks(self.scheme, self.cache, allowed, pos, where, self.dtype)
            mask = {k: v.to(self.device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(self.device)
            args = {"attention_mask": mask, "position_ids": self.scheme.positions(pos, self.delta).to(self.device)}
        with packed_if(self.packed):
            return self._forward_body(ids, last_only, {**args, **self.scheme.cache_arg(self.cache)})

    def _forward_body(self, ids: list[int], last_only: bool, args: dict[str, Any]) -> torch.Tensor:
        if self.head is not None:  # the base model's final hidden states through the reduced head
            hidden = self.model.model(
                input_ids=torch.tensor([ids], device=self.device), use_cache=True, **args
            ).last_hidden_state[0]  # [K, H]
            return self.head.logits(hidden[-1:] if last_only else hidden, self.vocab)  # [K, V]
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            use_cache=True,
            **({"logits_to_keep": 1} if last_only and self.trims_logits else {}),  # a prompt feed needs the root's only
            **args,
        )
        logits = out.logits[0].float()  # [K, V_draft] (K = 1 with last_only)
        if logits.shape[-1] < self.vocab:
            pad = torch.full((logits.shape[0], self.vocab - logits.shape[-1]), -torch.inf, device=logits.device)
            logits = torch.cat([logits, pad], dim=-1)
        return logits[:, : self.vocab]  # [K, V]

    def _feed_pending(self) -> None:
        """Feed the committed-but-unseen tokens causally; the last one is the root of this step's tree."""
        ids = self.pending
        start = self.base
        n = len(ids)
        if start == 0:  # the prompt: the model's own masks and positions (image blocks, prefixes, M-RoPE)
            self.delta = rope_delta(self.model, self.scheme, torch.tensor([ids], device=self.device), self.model_inputs)
            logits = self._forward(ids, None, [], [], last_only=True)
            settle(self.cache)  # sliding layers keep only their window of the prompt
        else:
            allowed = torch.ones(n, start + n, dtype=torch.bool).tril_(diagonal=start)  # [n, start + n] causal
            keys = list(range(start + n)) if self.scheme.window is not None else []
            logits = self._forward(ids, allowed, list(range(start, start + n)), keys, last_only=True)
        self.base = start + n - 1  # the root is a tree node for this step
        self.fed_pos = [self.base]
        self.slot = {0: self.base}
        self.node_logits = {0: logits[-1]}
        self.pending = []

    def _feed_nodes(self, new: list[int], tokens: list[int], parents: list[int]) -> None:
        past = int(self.cache.get_seq_length())
        allowed, depth = append_nodes_allowed(new, parents, self.slot, self.base, past)
        positions = [self.base + d for d in depth]
        keys = [*range(self.base), *self.fed_pos, *positions] if self.scheme.window is not None else []
        logits = self._forward([tokens[n] for n in new], allowed, positions, keys)
        self.fed_pos.extend(positions)
        for row, node in enumerate(new):
            self.slot[node] = past + row
            self.node_logits[node] = logits[row]

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        fed = 0
        while fed < len(path) and path[fed] in self.slot:
            fed += 1
        keep_positions(self.cache, self.base, [self.slot[n] for n in path[:fed]])
        self.base += fed
        self.fed_pos = []
        self._next_step(list(new_tokens[fed - 1 :]))


class ModelDrafter(Drafter):
    """Any transformers causal LM that shares the target's tokenizer (same ids for the same text).

    A VLM draft (llava) sees the images: its first forward gets its own pixel values (from its processor, else the
    target's), and the image tokens are re-expanded to its own count. A text LM given images sees the text only.
    `head_ids` (default: the config's `specvlm_head_ids`, set by drafts trained for a narrow domain) restricts the
    draft's proposals to those tokens and computes only their head rows, which is most of a small draft's cost.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        name: str = "model",
        processor: Any | None = None,
        head_ids: Sequence[int] | None = None,
    ):
        self.model = model.eval()
        self.name = name
        self.processor = processor
        self.handles_images = image_token_id(model.config) is not None
        self.scheme = scheme_for(self.model)  # how it attends and numbers positions (ConfigError if not served)
        head_ids = head_ids if head_ids is not None else getattr(model.config, "specvlm_head_ids", None)
        self.head = ReducedHead.of(self.model, head_ids) if head_ids else None
        self.packed = maybe_pack(self.model, None)  # CPU float32: oneDNN-packed linears (specvlm/packed.py)
        tree = getattr(model.config, "specvlm_default_tree", None)  # a draft trained for a domain: its best tree
        self.default_tree = tree_from_spec(tree) if tree else None

    def check_vocab(self, target_vocab: int, target_tokenizer: Any | None, draft_tokenizer: Any | None) -> None:
        """Every draft token must mean the same in the target (the target may have more, e.g. `<image>`)."""
        draft_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        if target_tokenizer is not None and draft_tokenizer is not None:
            target_ids, draft_ids = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
            differ = [tok for tok, i in draft_ids.items() if target_ids.get(tok) != i]
            if differ:
                raise ModelLoadError(
                    "draft and target tokenizers differ: speculative decoding needs the same token ids "
                    f"({len(differ)} draft tokens, e.g. {differ[0]!r}, have another id or none in the target; "
                    "pick a draft from the target's family, or draft='ngram')"
                )
        elif abs(draft_vocab - target_vocab) > 128 and draft_vocab > target_vocab:
            raise ModelLoadError(f"draft vocabulary ({draft_vocab}) does not fit the target's ({target_vocab})")

    @torch.inference_mode()
    def sequence_logits(self, ids: torch.Tensor, target_hidden: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced draft logits after every position of `ids` [L], in one causal forward: [L, V_draft]
        (float32; `specvlm.potential.fit_vocab` fits them to the target's vocabulary)."""
        if self.handles_images:
            raise ConfigError(
                f"draft {self.name!r} is a vision-language model: scoring whole sequences would need its image "
                "inputs, which sequence_logits does not take; score a text draft (it reads the prompt's text)"
            )
        out = self.model(input_ids=ids[None].to(next(self.model.parameters()).device), use_cache=False)
        return out.logits[0].float()  # [L, V_draft]

    def session(self, context: DraftContext) -> DraftSession:
        prompt_ids, inputs = list(context.prompt_ids), {}
        if context.images is not None:  # the draft's own ids and pixel values
            prompt_ids, inputs = draft_image_inputs(self.model, self.processor, context.images, prompt_ids)
        return ModelSession(self.model, prompt_ids, context.vocab_size, self.head, self.packed, self.scheme, **inputs)
