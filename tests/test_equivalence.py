"""Greedy speculative output equals the target's own greedy `generate`, token for token, in float32."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_greedy, perturbed_copy, random_prompts, tiny_llama

import specvlm
from drafters import FollowerDrafter, ModelDrafter, NGramDrafter
from specvlm.builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder

TREES: list[TreeBuilder] = [
    Autoregressive(),
    ChainTree(depth=4, hardware_aware=False),
    ChainTree(depth=4),  # sized for tokens/s from the measured forward costs
    BranchingTree([3, 2, 1, 1]),
    DynamicTree(budget=12, topk=3, depth=5),
    OptTree(nodes=12, threshold=0.2, max_depth=6),
]
PROMPTS = random_prompts(20, seed=5)
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def references(tiny_target: torch.nn.Module) -> list[list[int]]:
    return [hf_greedy(tiny_target, ids, NEW_TOKENS) for ids in PROMPTS]


def drafter_for(kind: str, target: torch.nn.Module) -> specvlm.Decoder:
    drafts = {
        "ngram": lambda: NGramDrafter(max_n=3),
        "ngram+followers": lambda: FollowerDrafter(NGramDrafter(max_n=3)),
        "copy": lambda: ModelDrafter(tiny_llama(seed=0)),
        "perturbed": lambda: ModelDrafter(perturbed_copy(target, scale=0.3, seed=1)),
        "other": lambda: ModelDrafter(tiny_llama(seed=9, layers=1)),
    }
    return specvlm.load(target, drafts[kind]())


def tree_id(tree: TreeBuilder) -> str:
    return tree.name + ("-sized" if tree.hardware_aware else "")


@pytest.mark.parametrize("kind", ["ngram", "ngram+followers", "copy", "perturbed", "other"])
@pytest.mark.parametrize("tree", TREES, ids=tree_id)
def test_tiny_llama_equals_hf_greedy(
    tiny_target: torch.nn.Module, references: list[list[int]], kind: str, tree: TreeBuilder
) -> None:
    dec = drafter_for(kind, tiny_target)
    calls = 0
    for ids, ref in zip(PROMPTS, references, strict=True):
        got = dec.generate(prompt=ids, max_new_tokens=NEW_TOKENS, tree=tree)
        assert got.tokens == ref, f"prompt {ids}: {got.tokens} != {ref}"
        assert got.stats.new_tokens == NEW_TOKENS
        calls += got.stats.target_calls
    if kind == "copy" and tree.name in ("chain", "static") and not tree.hardware_aware:
        # a draft identical to the target accepts every drafted token on its argmax path (depth 4 here):
        # proof that the draft cache holds exactly the committed sequence
        assert calls <= len(PROMPTS) * NEW_TOKENS / 3.5, f"only {len(PROMPTS) * NEW_TOKENS / calls:.2f} tokens/call"
    if tree.name == "ar":
        assert calls == len(PROMPTS) * NEW_TOKENS


@pytest.mark.parametrize(
    "tree",
    [ChainTree(depth=10), BranchingTree([4, 3, 2, 2, 2, 1, 1]), DynamicTree(40, 4, 10), OptTree(30, 0.0, 10)],
    ids=lambda t: t.name,
)
@pytest.mark.parametrize("room", [1, 2, 5])
def test_context_window_clips_the_tree(tree: TreeBuilder, room: int) -> None:
    """A tree deeper and wider than the remaining context is shrunk, and generation stops at the window."""
    model = tiny_llama(seed=0, max_positions=40)
    ids = (PROMPTS[1] * 6)[: 40 - room]
    dec = specvlm.load(model, ModelDrafter(tiny_llama(seed=0, max_positions=40)))
    got = dec.generate(prompt=ids, max_new_tokens=10, tree=tree)
    assert got.tokens == hf_greedy(model, ids, room)
    length = len(ids)
    for step in got.stats.steps:  # never more nodes than positions left, the root's included
        assert step.tree_size <= 40 - length + 1
        length += step.accepted


def test_stream_yields_the_same_tokens(embedded: specvlm.Decoder) -> None:
    prompt = "List three colours."
    full = embedded.generate(prompt=prompt, max_new_tokens=24)
    pieces = list(embedded.stream(prompt=prompt, max_new_tokens=24))
    assert "".join(pieces) == full.text
    assert len(pieces) >= 2


EMBEDDED_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for better sleep.",
    "Summarize: The cat sat on the mat. The cat was happy. The mat was red.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 11?",
    "Name a famous painting by Leonardo da Vinci.",
    "Repeat after me: the quick brown fox jumps over the lazy dog.",
    "Why is the sky blue?",
    "Write a short email asking for a day off.",
    "List the planets of the solar system.",
    "What does a speculative decoder do?",
    "Describe a sunset over the ocean.",
    "Give a synonym for 'happy'.",
    "How many legs does a spider have?",
    "Write a Python function that adds two numbers.",
    "What is the boiling point of water in Celsius?",
    "Complete the sentence: Once upon a time",
    "Suggest a name for a pet goldfish.",
]


@pytest.mark.parametrize("tree", ["opt", "chain", "static", "dynamic", "ar"])
def test_embedded_model_equals_hf_greedy(embedded: specvlm.Decoder, tree: str) -> None:
    """SmolLM2-135M-Instruct: 20 prompts for the default (opt) tree, a slice for the others (all in -m slow)."""
    prompts = EMBEDDED_PROMPTS if tree == "opt" else EMBEDDED_PROMPTS[::5]
    model = embedded.target.model
    for text in prompts:
        ids = embedded.prompt_ids(text)
        ref = hf_greedy(model, ids, 24)
        got = embedded.generate(prompt=ids, max_new_tokens=24, tree=tree)
        assert got.tokens == ref, f"{text!r}: {embedded.decode_text(got.tokens)!r} != {embedded.decode_text(ref)!r}"


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["chain", "static", "dynamic", "ar"])
def test_embedded_model_equals_hf_greedy_all_prompts(embedded: specvlm.Decoder, tree: str) -> None:
    model = embedded.target.model
    for text in EMBEDDED_PROMPTS:
        ids = embedded.prompt_ids(text)
        assert embedded.generate(prompt=ids, max_new_tokens=24, tree=tree).tokens == hf_greedy(model, ids, 24)


def test_trees_wider_than_the_vocabulary_are_clipped() -> None:
    """A branching wider than the vocabulary, or a budget larger than it, is clipped, not crashed."""
    model = tiny_llama(seed=0, vocab=8, max_positions=48)
    ids = [1, 2, 3, 4, 1, 2]
    ref = hf_greedy(model, ids, 12)
    for tree in (BranchingTree([20, 12, 1]), DynamicTree(budget=200, topk=30, depth=4), OptTree(nodes=100)):
        for draft in (ModelDrafter(tiny_llama(seed=0, vocab=8, max_positions=48)), NGramDrafter()):
            got = specvlm.load(model, draft).generate(prompt=ids, max_new_tokens=12, tree=tree)
            assert got.tokens == ref
            assert max(s.tree_size for s in got.stats.steps) <= 1 + 8 + 8 * 8 * 4
