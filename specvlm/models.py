"""The target model as the engine uses it: prefill, the tree forward, its costs, vocabulary and EOS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    DynamicCache,
    PreTrainedModel,
)

from .cache import GrowingCache, settle
from .cost_timing import CostBook, cost_book, cost_key
from .costs import CostTable
from .packed import maybe_pack, packed_if
from .targets import ModelScheme, layer_masks, scheme_for
from .targets.scheme import PER_TOKEN_INPUTS, rope_delta
from .tree import TokenTree, ancestor_matrix
from .vlm import image_token_id


def model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: PreTrainedModel) -> torch.dtype:
    return next(model.parameters()).dtype


def max_positions(model: PreTrainedModel) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)


def vocab_size(model: PreTrainedModel) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def eos_ids(model: PreTrainedModel, tokenizer: Any | None) -> frozenset[int]:
    """EOS ids as the model's own `generate` reads them: its generation config's `eos_token_id` when it has a
    generation config (None there: no EOS, as in `generate`), else the model config's and the tokenizer's."""
    gen = getattr(model, "generation_config", None)
    sources = (gen,) if gen is not None else (model.config, tokenizer)
    found: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    return frozenset(found)


@dataclass(frozen=True)
class Prefilled:
    """What the prompt's prefill hands the loop: hidden states of the positions before the first root, the first
    root's logits when they come from the prefill (prefix-attention families), and the prompt's position delta."""

    hidden: torch.Tensor | None  # [L - 1, k H] the asked layers side by side, when asked for
    root_logits: torch.Tensor | None  # [V]: the root is already in the cache (None: the first tree scores it)
    root_hidden: torch.Tensor | None  # [k H]
    delta: int  # M-RoPE: text positions after the prompt are logical + delta


#: the hidden states most drafts read: the last, final-normed
LAST: tuple[int, ...] = (-1,)


def picked_states(states: tuple[torch.Tensor, ...], layers: tuple[int, ...], n: int | None) -> torch.Tensor:
    """The hidden states `layers` (transformers' `output_hidden_states` numbering: 0 = embeddings, i = the input of
    decoder layer i, -1 = the last, final-normed) of batch row 0, first `n` positions (None: all), side by side:
    len(layers) x [1, L, H] -> [n, len(layers) H]."""
    if not states:
        raise ValueError("the model returned no hidden states")
    cut = slice(None) if n is None else slice(0, n)
    return torch.cat([states[i][0, cut] for i in layers], dim=-1)


def per_token_slice(inputs: dict[str, Any], length: int) -> dict[str, Any]:
    """`inputs` with the per-token ones ([1, L]: token_type_ids, mm_token_type_ids) cut to the first `length`."""
    return {k: (v[..., :length] if k in PER_TOKEN_INPUTS and torch.is_tensor(v) else v) for k, v in inputs.items()}


@dataclass
class ForwardTimer:
    """Seconds spent in model forwards, split by purpose."""

    prefill: float = 0.0
    score: float = 0.0


class TargetModel:
    """A loaded target: prefill once (with pixel values for a VLM), then score whole trees in one forward each.

    For a VLM the prefill is the only forward that sees the image; its features sit in the cache as the image
    prefix, and every tree forward passes ids, the 4D mask and position ids only (the language model gets them as is).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any | None = None,
        processor: Any | None = None,
        *,
        pack_linears: bool | None = None,
    ):
        """`pack_linears`: multiply by oneDNN-packed weights in this engine's forwards (specvlm/packed.py);
        None = when the model is float32 on CPU and its linear weights fit in 4 GiB (the copy doubles them)."""
        self.model = model
        self.scheme: ModelScheme = scheme_for(model)  # attention kinds, positions, prefix rules (ConfigError if none)
        self.packed = maybe_pack(model, pack_linears)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        self.processor = processor
        self.image_token_id = image_token_id(model.config)  # None: a text-only target
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        self.vocab_size = vocab_size(model)
        self.max_positions = max_positions(model)
        self.hidden_size = int(model.get_input_embeddings().weight.shape[-1])
        self.eos = eos_ids(model, tokenizer)
        self.pad_to = 4 if self.device.type == "cpu" and self.dtype == torch.float32 else 1
        self._books: dict[str, CostBook] = {}  # cost key -> the measured table and its corrections
        self._given: CostBook | None = None  # costs the caller gave (`use_costs`)

    def forward(self, **inputs: Any) -> Any:
        """One forward of the model, through its packed linears when it has them."""
        with packed_if(self.packed):
            return self.model(**inputs)

    def synchronize(self) -> None:
        """Wait for the device's queued work (timing a forward on an accelerator)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward_costs(self) -> CostTable:
        """ms of one tree forward by tokens scored on this device, dtype, thread count and packing, as the engine
        sizes trees by it now (specvlm/cost_timing.py: measured once, cached, corrected by the forwards it runs)."""
        return self.cost_book().table()

    def cost_book(self) -> CostBook:
        """The costs trees are sized by: the ones given to `use_costs`, else this configuration's measured table
        ($SPECVLM_CACHE/costs, timed on first use) with the corrections the engine's timed forwards make."""
        if self._given is not None:
            return self._given
        key = cost_key(self)
        if key not in self._books:
            self._books[key] = cost_book(self)
        return self._books[key]

    def cost_book_in_use(self) -> CostBook | None:
        """The cost book trees were sized by in this process so far (None: none yet; nothing is measured here)."""
        return self._given if self._given is not None else self._books.get(cost_key(self))

    def use_costs(self, table: CostTable | None, *, learn: bool = False) -> None:
        """Size trees by `table` (ms by tokens scored) instead of a measured one: nothing is timed, read or written;
        with `learn` the engine's timed forwards correct it in memory.  None: back to the measured table."""
        self._given = None if table is None else CostBook(table, learn=learn)

    @contextmanager
    def unpacked(self) -> Iterator[None]:
        """Within the block, forwards use the plain weights (for A/B runs in one process)."""
        packed, self.packed = self.packed, None
        try:
            yield
        finally:
            self.packed = packed

    def new_cache(self, capacity: int = 0) -> DynamicCache:
        """The engine's cache: grows in place, with room for `capacity` positions reserved up front."""
        return GrowingCache(self.model.config, capacity=capacity)

    @torch.inference_mode()
    def prefill(
        self, ids: list[int], cache: DynamicCache, *, hidden: bool = False, logits: bool = False, **model_inputs: Any
    ) -> Any:
        """Run `ids` into `cache` with the model's own masks and positions (extra inputs such as pixel_values go to
        the model; per-token ones are cut to `ids`). Returns the model output (last-position logits only)."""
        if not ids:
            return None
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, L]
        return self.forward(
            input_ids=input_ids,
            **self.scheme.cache_arg(cache),
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=hidden,
            **per_token_slice(model_inputs, len(ids)),
        )

    @torch.inference_mode()
    def start(
        self,
        ids: list[int],
        cache: DynamicCache,
        *,
        hidden: bool = False,
        layers: tuple[int, ...] = LAST,
        **model_inputs: Any,
    ) -> Prefilled:
        """The prompt's prefill for the decoding loop: all but the last token (the first root, scored with the first
        tree), or the whole prompt for prefix-attention families, whose root logits come from it. `hidden`: keep the
        hidden states `layers` (see `picked_states`) of the prefilled positions."""
        delta = rope_delta(self.model, self.scheme, torch.tensor([ids], device=self.device), model_inputs)
        whole = self.scheme.prefix_attention
        out = self.prefill(ids if whole else ids[:-1], cache, hidden=hidden, **model_inputs)
        settle(cache)  # sliding layers keep only their window of the prompt
        states = picked_states(out.hidden_states, layers, None) if hidden and out is not None else None  # [L', kH]
        if hidden and states is None:
            states = torch.zeros(0, self.hidden_size * len(layers), dtype=self.dtype, device=self.device)
        if not whole:
            return Prefilled(states, None, None, delta)
        return Prefilled(
            None if states is None else states[:-1], out.logits[0, -1], None if states is None else states[-1], delta
        )

    @torch.inference_mode()
    def score(self, tree: TokenTree, cache: DynamicCache) -> torch.Tensor:
        """Logits p for every node in one forward with a tree mask.  Returns [N, V]; the cache grows by N (+pad)."""
        return self.score_with_hidden(tree, cache, hidden=False)[0]

    @torch.inference_mode()
    def score_with_hidden(
        self,
        tree: TokenTree,
        cache: DynamicCache,
        hidden: bool = True,
        *,
        root: Prefilled | None = None,
        delta: int = 0,
        layers: tuple[int, ...] = LAST,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`score`, plus the hidden states `layers` at every node when `hidden`: ([N, V], [N, k H]); by default the
        last (final-normed). The same forward gives them: asking costs no extra target call.

        `root`: the root is already in the cache with these logits (a prefix-attention prompt's first step): only
        the nodes below it are fed. `delta`: the prompt's position shift (M-RoPE)."""
        past = int(cache.get_seq_length())
        tokens, parents, depth = tree.tokens, tree.parents, tree.depth
        if root is not None and root.root_logits is not None:
            return self._below_root(tree, cache, hidden, root, delta, layers)
        n = tree.size
        if 1 < n < self.pad_to:  # fp32 forwards of 2-3 tokens are slower than of 4 on CPU: pad with copies of the root
            extra = self.pad_to - n
            tokens = torch.cat([tokens, tokens[:1].expand(extra)])
            parents = torch.cat([parents, torch.full((extra,), -1, dtype=torch.long, device=parents.device)])
            depth = torch.cat([depth, depth.new_zeros(extra)])
        m = int(tokens.shape[0])
        allowed = torch.ones(m, past + m, dtype=torch.bool)  # [N', past + N']
        allowed[:, past:] = ancestor_matrix(parents.cpu())
        return self._forward_nodes(tokens, depth.cpu() + past, allowed, cache, n, hidden, delta, layers)

    def _below_root(
        self, tree: TokenTree, cache: DynamicCache, hidden: bool, root: Prefilled, delta: int, layers: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Nodes 1.. of `tree` on a cache that already holds the root (at its last entry)."""
        first = root.root_logits[None]  # [1, V]
        first_h = None if root.root_hidden is None else root.root_hidden[None]  # [1, H]
        if tree.size == 1:
            return first, first_h if hidden else None
        past = int(cache.get_seq_length())  # the root is entry past - 1
        m = tree.size - 1
        allowed = torch.ones(m, past + m, dtype=torch.bool)  # [N - 1, past + N - 1]
        allowed[:, past:] = ancestor_matrix(tree.parents.cpu())[1:, 1:]
        logits, states = self._forward_nodes(
            tree.tokens[1:], tree.depth[1:].cpu() + past - 1, allowed, cache, m, hidden, delta, layers
        )
        return torch.cat([first, logits]), (torch.cat([first_h, states]) if hidden and first_h is not None else None)

    def _forward_nodes(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        cache: DynamicCache,
        n: int,
        hidden: bool,
        delta: int,
        layers: tuple[int, ...] = LAST,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed `tokens` [M] at logical `positions` [M] seeing `allowed` [M, past + M]; logits of the first n."""
        past = allowed.shape[1] - allowed.shape[0]
        # [past + M] logical position of every entry: only sliding windows read it
        keys = torch.cat([torch.arange(past), positions]) if self.scheme.window is not None else None
        mask = layer_masks(self.scheme, cache, allowed, positions, keys, self.dtype)
        mask = {k: v.to(self.device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(self.device)
        out = self.forward(
            input_ids=tokens[None].to(self.device),
            attention_mask=mask,
            position_ids=self.scheme.positions(positions, delta).to(self.device),
            **self.scheme.cache_arg(cache),
            use_cache=True,
            logits_to_keep=torch.arange(n, device=self.device),  # no lm_head work for the padding
            output_hidden_states=hidden,
        )
        return out.logits[0, :n], (picked_states(out.hidden_states, layers, n) if hidden else None)  # [n, V], [n, kH]
