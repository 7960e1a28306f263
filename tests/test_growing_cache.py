"""GrowingCache: in-place appends give the same keys, values and logits as transformers' DynamicCache."""

from __future__ import annotations

import pytest
import torch
from conftest import fixed_size, hf_greedy, random_prompts, tiny_llama
from transformers import DynamicCache

from specvlm.cache import GrowingCache, GrowingLayer, keep_positions
from specvlm.models import TargetModel
from specvlm.tree import TokenTree


def _same(a: DynamicCache, b: DynamicCache) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_appends_crops_and_gathers_match_dynamic_cache() -> None:
    model = tiny_llama(seed=0)
    grow, dyn = GrowingCache(model.config, capacity=3), DynamicCache(config=model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in grow.layers)
    g = torch.Generator().manual_seed(0)
    heads, dim = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    length = 0
    for n, keep in [(5, None), (4, [0, 2]), (1, [0]), (7, [1, 3, 6]), (30, None), (3, [])]:  # past the capacity
        for i in range(model.config.num_hidden_layers):
            k, v = torch.randn(2, 1, heads, n, dim, generator=g)
            out_g, out_d = grow.update(k, v, i), dyn.update(k.clone(), v.clone(), i)
            assert torch.equal(out_g[0], out_d[0]) and torch.equal(out_g[1], out_d[1])
        if keep is not None:
            for cache in (grow, dyn):
                keep_positions(cache, length, [length + j for j in keep])
        length = grow.get_seq_length()
        _same(grow, dyn)
    buffer = grow.layers[0]._k
    assert buffer is not None and buffer.shape[-2] >= length  # one buffer, reused after crops


def test_a_replaced_keys_tensor_is_copied_before_appending() -> None:
    layer = GrowingLayer(capacity=8)
    k = torch.arange(24.0).reshape(1, 1, 6, 4)
    layer.update(k, k + 100)
    layer.keys, layer.values = -layer.keys[:, :, :3], -layer.values[:, :, :3]  # new tensors, not buffer views
    keys, values = layer.update(k[:, :, :1], k[:, :, :1] + 100)
    assert torch.equal(keys, torch.cat([-k[:, :, :3], k[:, :, :1]], dim=2))
    assert torch.equal(values, torch.cat([-k[:, :, :3] - 100, k[:, :, :1] + 100], dim=2))


@pytest.mark.parametrize("size", [1, 6])
def test_tree_scores_match_dynamic_cache(size: int) -> None:
    target = TargetModel(tiny_llama(seed=1))
    prompt = random_prompts(1, seed=3)[0]
    scores = []
    for cache in (target.new_cache(), DynamicCache(config=target.model.config)):
        target.prefill(prompt[:-1], cache)
        parents = torch.tensor([-1, 0, 0, 1, 1, 2][:size])
        tree = TokenTree(tokens=torch.tensor([*prompt[-1:], 5, 9, 11, 2, 7])[:size], parents=parents)
        first = target.score(tree, cache)
        keep_positions(cache, len(prompt) - 1, [len(prompt) - 1 + n for n in ([0, 1, 3] if size > 3 else [0])])
        scores.append((first, target.score(TokenTree(tokens=torch.tensor([4]), parents=torch.tensor([-1])), cache)))
    assert torch.equal(scores[0][0], scores[1][0]) and torch.equal(scores[0][1], scores[1][1])


def test_engine_output_still_equals_hf_greedy() -> None:
    import specvlm

    model = tiny_llama(seed=2)
    dec = specvlm.load(target=model, draft=tiny_llama(seed=2))  # the draft is the target: long accepted paths
    for prompt in random_prompts(3, seed=4):
        gen = dec.generate(prompt=prompt, max_new_tokens=80, tree=fixed_size("chain"))
        assert gen.tokens == hf_greedy(model, prompt, 80)
        assert gen.stats.mean_accepted > 2
