"""The lean feature-draft forward equals the HF-module forward, and decoding through it stays lossless."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import fixed_size, hf_greedy, random_prompts, tiny_llama
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import specvlm
from drafters.feature_draft import FeatureDrafter, FeatureDraftModel, draft_config
from drafters.feature_fast import LeanFeatureForward, LeanKV, rope_frequencies
from specvlm.cache import keep_positions
from specvlm.drafting import DraftContext
from specvlm.tree import append_causal_mask, append_nodes_mask

VOCAB = 96


def spread_draft(target: LlamaForCausalLM, seed: int, layers: int = 1) -> FeatureDraftModel:
    """A random draft whose weights are large enough that attention, RoPE and the MLP all move the output."""
    torch.manual_seed(seed)
    model = FeatureDraftModel(draft_config(target.config, head_size=VOCAB, layers=layers))
    model.head_ids.copy_(torch.arange(VOCAB))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.5 / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    ],
)  # fmt: skip
def test_rope_frequencies_match_the_hf_rotary_module(rope: dict) -> None:
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope)
    hf = LlamaRotaryEmbedding(config)
    inv_freq, scale = rope_frequencies(config)
    torch.testing.assert_close(inv_freq, hf.inv_freq.float(), atol=0, rtol=1e-6)
    assert scale == pytest.approx(float(hf.attention_scaling))


def test_dynamic_rope_is_refused_and_the_drafter_falls_back_to_the_module() -> None:
    target = tiny_llama(seed=3, vocab=VOCAB)
    target.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(ValueError, match="dynamic"):
        rope_frequencies(target.config)
    drafter = FeatureDrafter(spread_draft(target, seed=4), target)
    assert drafter.lean is None
    assert isinstance(
        drafter.session(DraftContext(tuple([1, 2, 3]), VOCAB, target_hidden=torch.zeros(2, 64))).cache, DynamicCache
    )


def module_forward(model: FeatureDraftModel, cache: DynamicCache, feats: torch.Tensor, embeds: torch.Tensor,
                   positions: list[int], mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    with torch.no_grad():
        out = model(features=feats[None], token_embeds=embeds[None], position_ids=torch.tensor([positions]),
                    attention_mask=mask[None, None], past_key_values=cache)  # fmt: skip
    return out[0]  # [L, H]


@pytest.mark.parametrize("layers", [1, 2])
def test_lean_forward_equals_module_over_prefill_trees_and_commits(layers: int) -> None:
    """Prefill, a branching tree fed in two levels, keep a non-contiguous path, feed committed tokens, repeat."""
    target = tiny_llama(seed=5, vocab=VOCAB)
    model = spread_draft(target, seed=6, layers=layers)
    lean = LeanFeatureForward(model)
    assert lean.groups == 2 and lean.kv_heads == 2  # the tiny config has GQA: 4 query heads on 2 key/value heads
    kv, ref = lean.new_cache(capacity=4), DynamicCache(config=model.config)  # capacity 4: growth is exercised
    embed = target.get_input_embeddings()
    g = torch.Generator().manual_seed(7)
    hidden = 64

    def both(tokens: list[int], positions: list[int], mask: torch.Tensor) -> torch.Tensor:
        feats = torch.randn(len(tokens), hidden, generator=g)  # [L, H]
        embeds = embed(torch.tensor(tokens)).detach()  # [L, H]
        want = module_forward(model, ref, feats, embeds, positions, mask)
        got = lean(feats, embeds, torch.tensor(positions), mask, kv)
        assert kv.length == ref.get_seq_length()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        return got

    base = 0
    committed = torch.randint(0, VOCAB, (11,), generator=g).tolist()
    for step in range(4):
        n = len(committed)
        both(committed, list(range(base, base + n)), append_causal_mask(base, n, torch.float32))
        base += n - 1  # the last committed token is the root of this step's tree
        slot = {0: base}
        parents = [-1, 0, 0, 0, 1, 1, 2, 4]  # root with 3 children, then grandchildren and one great-grandchild
        tokens = torch.randint(0, VOCAB, (len(parents),), generator=g).tolist()
        for level in ([1, 2, 3], [4, 5, 6], [7]):
            past = kv.length
            mask, depth = append_nodes_mask(level, parents, slot, base, past, torch.float32)
            both([tokens[i] for i in level], [base + d for d in depth], mask)
            slot.update({node: past + row for row, node in enumerate(level)})
        # keep the root and the path 0 -> 1 -> 4 -> 7 (non-contiguous slots), as a target cache would
        keep = [slot[i] for i in (0, 1, 4, 7)]
        kv.keep(base, keep)
        keep_positions(ref, base, keep)
        for layer in range(layers):
            torch.testing.assert_close(kv.keys[layer, :, : kv.length], ref.layers[layer].keys[0], atol=1e-5, rtol=1e-5)
        # then drop to the root only (what FeatureSession does) and commit a few accepted tokens
        kv.keep(base, [base])
        keep_positions(ref, base, [base])
        base += 1
        committed = torch.randint(0, VOCAB, (1 + step,), generator=g).tolist()
    assert kv.keys.shape[2] >= kv.length > 4


def test_lean_kv_keep_gathers_positions() -> None:
    kv = LeanKV(layers=1, kv_heads=1, head_dim=1, dtype=torch.float32, device=torch.device("cpu"), capacity=2)
    kv.reserve(6)
    with torch.inference_mode():
        kv.keys[0, 0, :6, 0] = torch.arange(6.0)
    kv.length = 6
    kv.keep(2, [3, 5])
    assert kv.length == 4 and kv.keys[0, 0, :4, 0].tolist() == [0.0, 1.0, 3.0, 5.0]


def test_sessions_on_lean_and_module_paths_draft_the_same() -> None:
    """The whole session (prefill, level-by-level trees, commits with re-feed) gives the same logits either way."""
    target = tiny_llama(seed=8, vocab=VOCAB)
    model = spread_draft(target, seed=9)
    lean, slow = FeatureDrafter(model, target), FeatureDrafter(model, target, lean=False)
    assert lean.lean is not None and slow.lean is None
    ids = random_prompts(1, seed=10, vocab=VOCAB, low=12, high=13)[0]
    with torch.no_grad():
        hidden = target(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]  # [L, H]
    prompt = 8
    sessions = [
        d.session(DraftContext(tuple(ids[:prompt]), VOCAB, target_hidden=hidden[: prompt - 1])) for d in (lean, slow)
    ]
    assert isinstance(sessions[0].cache, LeanKV) and isinstance(sessions[1].cache, DynamicCache)
    pos = prompt - 1
    while pos + 3 < len(ids):
        tokens = [ids[pos], ids[pos + 1], (ids[pos + 1] + 1) % VOCAB, ids[pos + 2]]
        parents = [-1, 0, 0, 1]
        for nodes in ([0], [1, 2], [3]):
            a, b = (s.logits(nodes, tokens[: nodes[-1] + 1], parents[: nodes[-1] + 1]) for s in sessions)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for s in sessions:
            s.observe_hidden(hidden[pos : pos + 4])  # stands in for the target's tree hidden states
            s.commit([0, 1, 3], [ids[pos + 1], ids[pos + 2], ids[pos + 3]])
        pos += 3


@pytest.mark.parametrize("tree", ["chain", "dynamic"])
def test_lean_and_module_drafters_decode_identically(tree: str) -> None:
    """Step by step the same accepted counts: at fixed tree sizes (two sized runs may size differently by timing)."""
    target = tiny_llama(seed=0, vocab=VOCAB)
    model = spread_draft(target, seed=1)
    for ids in random_prompts(3, seed=2, vocab=VOCAB):
        runs = [
            specvlm.load(target, draft=FeatureDrafter(model, target, lean=lean)).generate(
                None, ids, max_new_tokens=20, tree=fixed_size(tree)
            )
            for lean in (True, False)
        ]
        assert runs[0].tokens == runs[1].tokens == hf_greedy(target, ids, 20)
        assert [s.accepted for s in runs[0].stats.steps] == [s.accepted for s in runs[1].stats.steps]


def test_shipped_trained_draft_is_lossless_on_the_embedded_target(embedded: specvlm.Decoder) -> None:
    from drafters.shipped import load_shipped

    drafter = load_shipped(embedded.target.model)
    assert drafter.lean is not None and drafter.dtype == torch.float32
    decoder = specvlm.Decoder(embedded.target, drafter)
    model = embedded.target.model
    for text in ("Summarize: the cat sat on the mat all day.", "Name three primary colors."):
        ids = embedded.prompt_ids(text)
        for tree in ("static", "dynamic"):
            got = decoder.generate(prompt=ids, max_new_tokens=24, tree=tree)
            assert got.tokens == hf_greedy(model, ids, 24), tree


@pytest.mark.parametrize(
    ("rates", "kind", "tree"),
    [
        ({"ngram/ar": 10.0, "ngram/dynamic": 20.0, "trained+ngram/dynamic": 30.0}, "MixtureDrafter", "dynamic"),
        ({"ngram/ar": 10.0, "ngram/dynamic": 29.5, "trained+ngram/dynamic": 30.0}, "NGramDrafter", "dynamic"),
        ({"ngram/ar": 31.0, "ngram/dynamic": 20.0, "trained+ngram/dynamic": 30.0}, "NGramDrafter", "ar"),
    ],
)
def test_embedded_default_draft_is_the_measured_fastest_and_lossless(
    embedded: specvlm.Decoder, rates: dict[str, float], kind: str, tree: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The default draft is the candidate measured fastest on this machine (ties within 3 % go to the simpler),
    read from its cache file; it runs with the tree it was measured with, and stays lossless."""
    from drafters import measured_default
    from drafters.build import build
    from drafters.mixture import MixtureDrafter
    from specvlm.options import LoadOptions
    from specvlm.trees import make_tree

    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    draft, chosen = measured_default.pick(rates)
    path = measured_default.path_for(embedded.target)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"draft": draft, "tree": chosen, "rates": rates}))
    drafter = build(None, embedded.target, LoadOptions())
    assert type(drafter).__name__ == kind and chosen == tree
    if isinstance(drafter, MixtureDrafter):
        assert drafter.copy_gate == 2
        assert [type(d).__name__ for d in drafter.drafters] == ["FeatureDrafter", "NGramDrafter"]
    decoder = specvlm.Decoder(embedded.target, drafter)
    assert decoder.default_tree == make_tree(tree)
    text = "Repeat exactly: the red fox jumps over the lazy dog, the red fox jumps over the lazy dog."
    ids = embedded.prompt_ids(text)
    got = decoder.generate(prompt=ids, max_new_tokens=32)
    assert got.tokens == hf_greedy(embedded.target.model, ids, 32)
