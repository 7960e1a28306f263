"""Layer-skip self-drafts: lossless greedy decoding, weights shared with the target, K checked."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_greedy, random_prompts, tiny_llama

import specvlm
from drafters.layerskip import LayerSkipDrafter, layer_skip_model
from specvlm.builders import BranchingTree, ChainTree, DynamicTree

LAYERS = 4
PROMPTS = random_prompts(6, seed=11)
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    return tiny_llama(seed=3, layers=LAYERS)


TREES = [ChainTree(depth=4), BranchingTree([3, 2, 1]), DynamicTree(budget=10, topk=3, depth=4)]


@pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
@pytest.mark.parametrize("k", [1, LAYERS - 1])
def test_greedy_equals_hf(target: torch.nn.Module, k: int, tree: specvlm.TreeBuilder) -> None:
    dec = specvlm.load(target, f"layerskip:{k}")
    assert isinstance(dec.drafter, LayerSkipDrafter)
    for ids in PROMPTS:
        got = dec.generate(prompt=ids, max_new_tokens=NEW_TOKENS, tree=tree)
        assert got.tokens == hf_greedy(target, ids, NEW_TOKENS)


def test_draft_is_the_first_k_layers(target: torch.nn.Module) -> None:
    """The shell computes exactly the target's first K layers, then the final norm and lm_head."""
    draft = layer_skip_model(target, 2)
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        hidden = target(ids, output_hidden_states=True).hidden_states[2]  # [1, L, H] after layer 2
        expected = target.lm_head(target.model.norm(hidden))
        got = draft(ids).logits
    torch.testing.assert_close(got, expected)


def test_weights_are_shared(target: torch.nn.Module) -> None:
    draft = layer_skip_model(target, 3)
    assert len(draft.model.layers) == 3
    assert draft.config.num_hidden_layers == 3
    assert target.config.num_hidden_layers == LAYERS  # the target's config is untouched
    pairs = [
        (draft.model.embed_tokens.weight, target.model.embed_tokens.weight),
        (draft.model.norm.weight, target.model.norm.weight),
        (draft.lm_head.weight, target.lm_head.weight),
        *zip(draft.model.layers.parameters(), list(target.model.layers[:3].parameters()), strict=True),
    ]
    for mine, theirs in pairs:
        assert mine.data_ptr() == theirs.data_ptr()
    shared = {p.data_ptr() for p in target.parameters()}
    assert all(p.data_ptr() in shared for p in draft.parameters())
    assert not any(b.is_meta for b in draft.buffers())


@pytest.mark.parametrize("spec", ["layerskip:0", f"layerskip:{LAYERS}", "layerskip:99", "layerskip:x", "layerskip"])
def test_bad_k_is_a_config_error(target: torch.nn.Module, spec: str) -> None:
    with pytest.raises(specvlm.ConfigError, match=rf"1 <= K <= {LAYERS - 1}"):
        specvlm.load(target, spec)


def test_bad_k_direct() -> None:
    with pytest.raises(specvlm.ConfigError, match="1 to 1"):
        LayerSkipDrafter(tiny_llama(seed=0, layers=2), 2)


def test_llava_target_text_only_layer_skip() -> None:
    """With a llava target the draft is the language model's first layers, drafting from the prompt's text."""
    from test_llava import PROMPTS as LLAVA_PROMPTS
    from test_llava import hf_greedy as llava_greedy
    from test_llava import tiny_llava

    from drafters.text_only import TextOnlyDrafter

    llava = tiny_llava(seed=0, layers=3)
    dec = specvlm.load(llava, "layerskip:2")
    assert isinstance(dec.drafter, TextOnlyDrafter)
    assert dec.drafter.base.model.lm_head.weight.data_ptr() == llava.lm_head.weight.data_ptr()
    for ids, pv in LLAVA_PROMPTS:
        got = dec.generate(pv, ids, max_new_tokens=NEW_TOKENS, tree=ChainTree(depth=3))
        assert got.tokens == llava_greedy(llava, ids, pv, NEW_TOKENS)
