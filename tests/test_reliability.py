"""Edge cases decoded exactly, reproducible sampling, no memory growth over 1,000 runs, and 2,000-token runs."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PieceTokenizer, hf_greedy, step_ends, tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM

import specvlm
from drafters import DraftContext, DraftSession, ModelDrafter, NGramDrafter
from specvlm.builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder
from specvlm.cache import GROWTH, GrowingCache
from specvlm.engine import cut_tokens

PROMPT = [11, 40, 7, 93, 11, 40, 2, 65]
NEW_TOKENS = 30
# fixed sizes: these tests predict one run's steps from another's, and sized trees follow measured time
DRAFTED: list[TreeBuilder] = [
    ChainTree(depth=6, hardware_aware=False),
    BranchingTree([3, 2, 1, 1, 1, 1]),
    DynamicTree(budget=14, topk=3, depth=6, hardware_aware=False),
    OptTree(nodes=14, threshold=0.0, max_depth=7, hardware_aware=False),
]
TREES: list[TreeBuilder] = [Autoregressive(), *DRAFTED]


def by_name(trees: list[TreeBuilder]) -> Any:
    return pytest.mark.parametrize("tree", trees, ids=lambda t: t.name)


def copy_decoder(eos: int | None = None, max_positions: int = 256) -> specvlm.Decoder:
    """The tiny target (EOS `eos`) with an exact copy of itself as draft: every drafted argmax path is accepted."""
    target = tiny_llama(seed=0, max_positions=max_positions)
    target.generation_config.eos_token_id = eos
    return specvlm.load(target, ModelDrafter(tiny_llama(seed=0, max_positions=max_positions)))


@pytest.fixture(scope="module")
def reference(tiny_target: torch.nn.Module) -> list[int]:
    return hf_greedy(tiny_target, PROMPT, NEW_TOKENS)


@pytest.fixture(scope="module")
def runs(reference: list[int]) -> dict[str, specvlm.Generation]:
    """One run per builder without EOS: where each target call ended."""
    dec = copy_decoder()
    out = {tree.name: dec.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree) for tree in DRAFTED}
    assert all(run.tokens == reference for run in out.values())
    return out


def calls_until(ends: set[int], count: int) -> int:
    """Target calls needed for the first `count` tokens, given where each call ended."""
    return sum(1 for e in ends if e < count) + 1


# -- EOS, budget and context window inside accepted paths ----------------------------------------------------------
@by_name(DRAFTED)
def test_eos_inside_an_accepted_path(
    reference: list[int], runs: dict[str, specvlm.Generation], tree: TreeBuilder
) -> None:
    """EOS drafted and accepted with more accepted tokens after it: the output ends at EOS, in the same call."""
    ends = step_ends(runs[tree.name])
    at = next(i for i, t in enumerate(reference) if t not in reference[:i] and i + 1 not in ends and i >= 2)
    got = copy_decoder(eos=reference[at]).generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree)
    assert got.tokens == reference[: at + 1]
    assert got.stats.target_calls == calls_until(ends, at + 1)


@by_name(DRAFTED)
def test_budget_inside_an_accepted_path(
    reference: list[int], runs: dict[str, specvlm.Generation], tree: TreeBuilder
) -> None:
    ends = step_ends(runs[tree.name])
    """The budget ends inside what would have been one accepted path: that call's tree is shrunk to fit."""
    budgets = [b for b in range(2, NEW_TOKENS) if b not in ends][:4]  # token b would have come in the same call
    assert budgets, "every call ended exactly at a budget: no case to test"
    dec = copy_decoder()
    for budget in budgets:
        got = dec.generate(prompt=PROMPT, max_new_tokens=budget, tree=tree)
        assert got.tokens == reference[:budget]
        assert got.stats.target_calls == calls_until(ends, budget)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=8),
    st.integers(0, 10),
    st.integers(1, 12),
    st.frozensets(st.integers(0, 5), max_size=2),
)
def test_cut_tokens_stops_at_the_first_eos_or_the_budget(
    new: list[int], produced: int, budget: int, eos: frozenset[int]
) -> None:
    """A step's tokens are cut after the first EOS or at the budget, whichever comes first."""
    produced = min(produced, budget - 1)
    room = budget - produced
    first_eos = next((i for i, t in enumerate(new) if t in eos), None)
    keep = min(room, len(new) if first_eos is None else first_eos + 1)
    out, done = cut_tokens(new, produced, budget, eos)
    assert out == new[:keep]
    assert done == (keep == room or (first_eos is not None and first_eos < keep))


@by_name(TREES)
def test_one_new_token_scores_the_root_only(reference: list[int], tree: TreeBuilder) -> None:
    got = copy_decoder().generate(prompt=PROMPT, max_new_tokens=1, tree=tree)
    assert got.tokens == reference[:1]
    assert [s.tree_size for s in got.stats.steps] == [1]  # no draft work when no drafted token could be kept


@by_name(TREES)
def test_eos_as_the_first_token(reference: list[int], tree: TreeBuilder) -> None:
    got = copy_decoder(eos=reference[0]).generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree)
    assert got.tokens == reference[:1] and got.stats.target_calls == 1


class EosSession(DraftSession):
    """Another session's draft with the EOS token made the most likely token at every node."""

    def __init__(self, inner: DraftSession, eos: int):
        self.inner, self.eos = inner, eos

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        out = self.inner.logits(nodes, tokens, parents).clone()  # [K, V]
        out[:, self.eos] = out.max(dim=-1).values + 5.0
        return out

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        self.inner.commit(path, new_tokens)


class EosDrafter(ModelDrafter):
    """A copy of the target as draft that proposes EOS first everywhere."""

    def __init__(self, model: LlamaForCausalLM, eos: int):
        super().__init__(model)
        self.eos = eos

    def session(self, context: DraftContext) -> DraftSession:
        return EosSession(super().session(context), self.eos)


@by_name(DRAFTED)
@pytest.mark.parametrize("emitted", [True, False], ids=["target-emits-eos", "target-never-emits-eos"])
def test_draft_that_proposes_eos(reference: list[int], tree: TreeBuilder, emitted: bool) -> None:
    """EOS in every tree: rejected where the target does not emit it, and the end of the output where it does."""
    eos = reference[12] if emitted else next(t for t in range(96) if t not in reference)
    target = tiny_llama(seed=0)
    target.generation_config.eos_token_id = eos
    dec = specvlm.load(target, EosDrafter(tiny_llama(seed=0), eos))
    got = dec.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree)
    assert got.tokens == (reference[: reference.index(eos) + 1] if emitted else reference)
    assert got.stats.steps[0].tree_size > 1


@by_name(TREES)
def test_single_token_prompt(tiny_target: torch.nn.Module, tree: TreeBuilder) -> None:
    """Nothing to prefill: the first tree's root is the whole prompt."""
    ref = hf_greedy(tiny_target, [42], 12)
    for draft in (ModelDrafter(tiny_llama(seed=0)), NGramDrafter()):
        assert specvlm.load(tiny_target, draft).generate(prompt=[42], max_new_tokens=12, tree=tree).tokens == ref


# -- interrupted generations and reproducible sampling -------------------------------------------------------------
class InterruptingDrafter(ModelDrafter):
    """Raises KeyboardInterrupt (a Ctrl-C) at the `at`-th draft call of its first session."""

    def __init__(self, model: LlamaForCausalLM, at: int):
        super().__init__(model)
        self.calls, self.at = 0, at

    def session(self, context: DraftContext) -> DraftSession:
        inner = super().session(context)
        original = inner.logits

        def logits(nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return original(nodes, tokens, parents)

        inner.logits = logits  # type: ignore[method-assign]
        return inner


def test_interrupted_or_abandoned_generation_leaves_the_decoder_working(reference: list[int]) -> None:
    dec = specvlm.load(tiny_llama(seed=0), InterruptingDrafter(tiny_llama(seed=0), at=5), tokenizer=PieceTokenizer())
    with pytest.raises(KeyboardInterrupt):
        dec.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree="chain")
    pieces = dec.stream(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree="chain")
    next(pieces)
    pieces.close()  # the consumer stopped reading
    assert dec.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree="chain").tokens == reference


@by_name(TREES)
def test_same_seed_same_sample(tree: TreeBuilder) -> None:
    """Same seed, tree, models, device and dtype: the same sample, on the same decoder or a fresh one."""
    options = {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "tree": tree, "temperature": 1.0, "top_p": 0.95}
    dec = copy_decoder()
    first = dec.generate(**options, seed=123).tokens
    assert dec.generate(**options, seed=123).tokens == first
    assert copy_decoder().generate(**options, seed=123).tokens == first
    assert any(dec.generate(**options, seed=s).tokens != first for s in (1, 2, 3))


# -- memory over many generations ----------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process (Linux: /proc/self/statm counts pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the RSS from /proc")
def test_a_thousand_generations_do_not_grow_memory() -> None:
    """Batch-of-one generation repeated on one Decoder: RSS and live Python objects stay flat after warm-up."""
    dec = copy_decoder()
    trees = [Autoregressive(), ChainTree(3), BranchingTree([2, 1]), DynamicTree(6, 2, 3), OptTree(6, 0.0, 3)]

    def run(i: int) -> specvlm.Generation:
        sampled = {"temperature": 0.8, "seed": i} if i % 2 else {}
        return dec.generate(prompt=PROMPT[: 3 + i % 5], max_new_tokens=3, tree=trees[i % len(trees)], **sampled)

    for i in range(50):
        run(i)
    objects = live_objects()
    kept = [run(i) for i in range(10)]
    assert live_objects() - objects >= 10 * 5  # the count has teeth: ten kept results show up
    del kept
    objects, rss = live_objects(), rss_bytes()
    for i in range(1000):
        run(i)
    grown_objects, grown_rss = live_objects() - objects, rss_bytes() - rss
    print(f"RSS {rss / 2**20:.1f} MiB -> {(rss + grown_rss) / 2**20:.1f} MiB, objects {objects} -> +{grown_objects}")
    assert grown_objects < 50, f"{grown_objects} more live Python objects after 1,000 generations"
    assert grown_rss < 4 * 2**20, f"RSS grew by {grown_rss / 2**20:.1f} MiB over 1,000 generations"


# -- long runs -----------------------------------------------------------------------------------------------------
LONG_PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]
LONG_TOKENS = 2000
LONG_POSITIONS = 2100


class MeasuredCache(GrowingCache):
    """The engine's cache (grows in place), recording its longest sequence and the most bytes its storage held."""

    def __init__(self, config: Any, capacity: int = 0):
        super().__init__(config, capacity=capacity)
        self.peak_length = 0
        self.peak_bytes = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self.peak_length = max(self.peak_length, self.get_seq_length(layer_idx))
        self.peak_bytes = max(self.peak_bytes, self.held_bytes())
        return out

    def held_bytes(self) -> int:
        """Bytes of the storage behind every layer's keys and values (a view keeps its whole storage alive)."""
        tensors = [t for layer in self.layers for t in (layer.keys, layer.values) if t is not None]
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())

    def tensor_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values))


def kv_bytes(config: Any, positions: int) -> int:
    """layers * 2 (keys, values) * positions * kv_heads * head_dim * 4 bytes (float32)."""
    head_dim = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * positions * config.num_key_value_heads * head_dim * 4


@pytest.fixture(scope="module")
def long_reference() -> list[int]:
    """HF greedy for 2,000 tokens; its top-two logit gaps are far above float32 rounding (no near-ties)."""
    model = tiny_llama(seed=0, max_positions=LONG_POSITIONS)
    ids = torch.tensor([LONG_PROMPT])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=LONG_TOKENS,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    top2 = torch.cat(out.scores).topk(2, dim=-1).values  # [T, 2]
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4, "a near-tie: pick another prompt"
    return out.sequences[0, len(LONG_PROMPT) :].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["ar", "chain", "static", "dynamic", "opt"])
def test_two_thousand_tokens_equal_hf_greedy_in_bounded_memory(
    long_reference: list[int], tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dec = copy_decoder(max_positions=LONG_POSITIONS)
    config = dec.target.model.config
    cache = MeasuredCache(config)
    monkeypatch.setattr(dec.target, "new_cache", lambda capacity=0: cache)
    got = dec.generate(prompt=LONG_PROMPT, max_new_tokens=LONG_TOKENS, tree=tree)
    assert got.tokens == long_reference
    committed = len(LONG_PROMPT) + LONG_TOKENS - 1  # the last token is the next root, not yet in the cache
    widest = max(s.tree_size for s in got.stats.steps) + dec.target.pad_to
    length = cache.get_seq_length()
    print(
        f"{tree}: cache {length} positions, {cache.tensor_bytes()} B (expected {kv_bytes(config, committed)} B for "
        f"{committed}); held {cache.held_bytes()} B; peak {cache.peak_length} positions, {cache.peak_bytes} B"
    )
    assert committed <= length < committed + widest  # at most the last tree's cut-off tail is left over
    assert cache.tensor_bytes() == kv_bytes(config, length)
    # a buffer grows by GROWTH only when full, so it never holds more than GROWTH x the longest sequence it served
    assert cache.held_bytes() <= GROWTH * kv_bytes(config, committed + widest)
    assert cache.peak_length <= committed + widest
    assert cache.peak_bytes <= GROWTH * kv_bytes(config, committed + widest)
