"""What a saved model draft brings in its config: a reduced head (it proposes only those token ids, equals the full
head on them, and stays lossless) and its default tree."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, fixed_size, hf_greedy, random_prompts, tiny_llama

import specvlm
from drafters import ModelDrafter
from specvlm.builders import ChainTree, DynamicTree
from specvlm.drafting import DraftContext
from specvlm.errors import ConfigError
from specvlm.trees import tree_from_spec

PROMPTS = random_prompts(6, seed=11)


def test_reduced_head_equals_the_full_head_on_its_ids() -> None:
    model = tiny_llama(seed=3)
    ids = list(range(0, VOCAB, 3))
    full, reduced = (
        ModelDrafter(model).session(DraftContext(tuple(PROMPTS[0]), VOCAB)),
        ModelDrafter(model, head_ids=ids).session(DraftContext(tuple(PROMPTS[0]), VOCAB)),
    )
    nodes, tokens, parents = [0, 1, 2], [PROMPTS[0][-1], 5, 7], [-1, 0, 0]
    a, b = full.logits(nodes, tokens, parents), reduced.logits(nodes, tokens, parents)  # [3, V] each
    assert torch.allclose(a[:, ids], b[:, ids], atol=1e-5)
    others = [t for t in range(VOCAB) if t not in ids]
    assert torch.isneginf(b[:, others]).all()


@pytest.mark.parametrize("tree", ["chain", "dynamic", "static"])
def test_reduced_head_draft_is_lossless(tree: str) -> None:
    target = tiny_llama(seed=0)
    half = list(range(0, VOCAB, 2))  # the draft can propose only even ids; the target still says the rest
    dec = specvlm.load(target, ModelDrafter(tiny_llama(seed=0), head_ids=half))
    accepted = 0
    for prompt in PROMPTS:
        got = dec.generate(prompt=prompt, max_new_tokens=16, tree=fixed_size(tree))
        assert got.tokens == hf_greedy(target, prompt, 16)
        accepted += got.stats.new_tokens - got.stats.target_calls
    assert accepted > 0  # the draft (the target itself, restricted) still gets tokens accepted


def test_reduced_head_refuses_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ConfigError, match="reduced head ids"):
        ModelDrafter(tiny_llama(seed=0), head_ids=[1, VOCAB + 5])


def test_a_draft_brings_its_default_tree_from_its_config() -> None:
    draft = tiny_llama(seed=0)
    draft.config.specvlm_default_tree = {"name": "chain", "depth": 9}
    dec = specvlm.load(tiny_llama(seed=0), ModelDrafter(draft))
    assert dec.default_tree == ChainTree(depth=9)
    assert specvlm.load(tiny_llama(seed=0), ModelDrafter(tiny_llama(seed=0))).default_tree != ChainTree(depth=9)


def test_tree_specs() -> None:
    assert tree_from_spec({"name": "dynamic", "budget": 8, "depth": 3}) == DynamicTree(budget=8, depth=3)
    assert tree_from_spec({"name": "static", "branching": [2, 1]}).name == "static"
    with pytest.raises(ConfigError, match="must name one of"):
        tree_from_spec({"name": "bushy"})
    with pytest.raises(ConfigError, match="does not take"):
        tree_from_spec({"name": "chain", "width": 3})
