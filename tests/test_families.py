"""Every family users bring decodes exactly as its own `model.generate(**inputs)`: tiny random models of 20 HF
families (sliding windows, M-RoPE, prefix attention, image blocks), prompts longer than any window, float32."""

from __future__ import annotations

import copy

import pytest
import torch
from families import FAMILIES, VLM_FAMILIES, build

import specvlm
from drafters import ModelDrafter, NGramDrafter
from drafters.text_only import TextOnlyDrafter
from specvlm.builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder

NEW_TOKENS = 20
#: every tree kind, fixed (`hardware_aware=False`) and sized for tokens/s where the kind sizes itself
TREES: list[TreeBuilder] = [
    Autoregressive(),
    ChainTree(depth=4, hardware_aware=False),
    ChainTree(depth=4),
    BranchingTree([2, 2, 1, 1]),
    DynamicTree(budget=10, topk=3, depth=5, hardware_aware=False),
    DynamicTree(budget=10, topk=3, depth=5),
    OptTree(nodes=10, threshold=0.1, max_depth=5, hardware_aware=False),
    OptTree(nodes=10, threshold=0.1, max_depth=5),
]


def tree_label(tree: TreeBuilder) -> str:
    return tree.name + ("-sized" if tree.hardware_aware else "")


def text_draft(model: torch.nn.Module) -> torch.nn.Module:
    """A small text LM with the target's vocabulary (random weights): a text-only draft for a VLM target."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = int(model.get_output_embeddings().weight.shape[0])
    torch.manual_seed(11)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=4096,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def drafter(kind: str, model: torch.nn.Module) -> specvlm.Drafter:
    if kind == "ngram":
        return NGramDrafter(max_n=3)
    if kind == "copy":  # an exact copy: accepted paths are as long as the tree allows
        return ModelDrafter(copy.deepcopy(model), name="copy")
    return ModelDrafter(text_draft(model), name="text")


def reference(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[int]:
    out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


CASES = [(name, kind) for name in FAMILIES for kind in ("ngram", "copy")] + [(n, "text") for n in VLM_FAMILIES]


@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_family_equals_its_own_generate(family: str, kind: str) -> None:
    model, inputs = build(family)
    want = reference(model, inputs)
    dec = specvlm.load(model, drafter(kind, model))
    if kind == "text":
        assert isinstance(dec.drafter, TextOnlyDrafter), "a text draft of a VLM target drafts from the text"
    for tree in TREES:
        got = dec.generate(inputs=inputs, max_new_tokens=NEW_TOKENS, tree=tree)
        assert got.tokens == want, f"{family}, {kind} draft, {tree_label(tree)}: {got.tokens} != {want}"
        if kind == "copy" and tree.name == "chain" and not tree.hardware_aware:
            # the copy's own cache and positions are right: it proposes the target's tokens, 4 drafted per call
            assert got.stats.mean_accepted >= 3.5, f"{family}: copy accepts {got.stats.mean_accepted:.2f} per call"


def test_self_check_passes_an_m_rope_model_that_saw_an_image() -> None:
    """A Qwen2-VL forward with an image leaves the model's rope delta set; the self-check's text-only reference must
    not read it (it refused a correct model before its reference gave its own positions)."""
    from specvlm.models import TargetModel
    from specvlm.targets.selfcheck import self_check

    model, inputs = build("qwen2_vl")
    model.generate(**inputs, do_sample=False, max_new_tokens=1)
    result = self_check(TargetModel(model), use_cache=False)
    assert result is not None and result.ok
