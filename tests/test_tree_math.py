"""Tree math against brute force: the mask is the ancestor relation; tree logits equal path-by-path decoding."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from specvlm.cache import keep_positions
from specvlm.models import TargetModel
from specvlm.tree import TokenTree, ancestor_matrix, tree_attention_mask, tree_position_ids


@st.composite
def random_parents(draw: st.DrawFn, max_nodes: int = 24) -> list[int]:
    n = draw(st.integers(1, max_nodes))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]


def brute_ancestors(parents: list[int]) -> set[tuple[int, int]]:
    pairs = set()
    for i in range(len(parents)):
        j = i
        while j >= 0:
            pairs.add((i, j))
            j = parents[j]
    return pairs


@settings(max_examples=200, deadline=None)
@given(random_parents(), st.integers(0, 7))
def test_mask_is_the_ancestor_relation(parents: list[int], past: int) -> None:
    p = torch.tensor(parents)
    anc = ancestor_matrix(p)
    assert {(i, j) for i, j in zip(*torch.nonzero(anc).T.tolist(), strict=True)} == brute_ancestors(parents)
    mask = tree_attention_mask(p, past, torch.float32)[0, 0]
    assert mask.shape == (len(parents), past + len(parents))
    assert (mask[:, :past] == 0).all()
    assert torch.equal(mask[:, past:] == 0, anc)
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()


@settings(max_examples=100, deadline=None)
@given(random_parents())
def test_depth_paths_and_positions(parents: list[int]) -> None:
    tree = TokenTree(tokens=torch.arange(len(parents)), parents=torch.tensor(parents))
    for node in range(tree.size):
        path = tree.path_to(node)
        assert path[0] == 0 and path[-1] == node
        assert len(path) - 1 == int(tree.depth[node])
        assert all(parents[b] == a for a, b in itertools.pairwise(path))
    assert tree_position_ids(tree.depth, 5)[0].tolist() == [5 + int(d) for d in tree.depth]
    kids = tree.children()
    assert sum(len(k) for k in kids) == tree.size - 1
    assert set(tree.leaves()) == {i for i in range(tree.size) if not kids[i]}


def test_parents_must_precede_children() -> None:
    with pytest.raises(ValueError):
        TokenTree(tokens=torch.tensor([1, 2, 3]), parents=torch.tensor([-1, 2, 0]))


def _prefill(model: torch.nn.Module, prefix: list[int]) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True)
    return cache


@st.composite
def tokens_for(draw: st.DrawFn, parents: list[int]) -> list[int]:
    return draw(st.lists(st.integers(0, 95), min_size=len(parents), max_size=len(parents)))


@st.composite
def prefix_and_tree(draw: st.DrawFn, max_nodes: int = 12) -> tuple[list[int], TokenTree]:
    """Prompt ids already in the cache, then a random tree of random tokens to score after them."""
    prefix = draw(st.lists(st.integers(0, 95), min_size=1, max_size=10))
    parents = draw(random_parents(max_nodes))
    tokens = draw(tokens_for(parents))
    return prefix, TokenTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents))


def fixed(prefix: list[int], parents: list[int]) -> tuple[list[int], TokenTree]:
    return prefix, TokenTree(tokens=torch.arange(len(parents)) * 7 % 96, parents=torch.tensor(parents))


@settings(max_examples=100, deadline=None)
@given(prefix_and_tree())
@example(fixed([5, 9, 2, 77, 3, 1, 60], [-1, 0, 0, 1, 1, 2, 3, 3, 6]))
@example(fixed([4], [-1, 0, 1, 2, 3]))
@example(fixed([8, 8], [-1, 0, 0, 0, 0]))
@example(fixed([8, 1, 2], [-1, 0]))  # padded to 4 nodes on CPU float32
def test_tree_forward_equals_each_path_decoded(tiny_target: torch.nn.Module, case: tuple[list[int], TokenTree]) -> None:
    prefix, tree = case
    cache = _prefill(tiny_target, prefix)
    logits = TargetModel(tiny_target).score(tree, cache)  # [N, V]
    assert cache.get_seq_length() >= len(prefix) + tree.size
    for node in range(tree.size):
        path_tokens = tree.tokens[tree.path_to(node)].tolist()
        with torch.inference_mode():
            ref = tiny_target(input_ids=torch.tensor([prefix + path_tokens])).logits[0, -1]
        torch.testing.assert_close(logits[node], ref, atol=1e-4, rtol=1e-4)


@st.composite
def steps_of_trees(draw: st.DrawFn) -> tuple[list[int], list[tuple[TokenTree, int]]]:
    """A prefix, then 1-4 steps: a random tree and the node whose root path the step keeps."""
    prefix = draw(st.lists(st.integers(0, 95), min_size=1, max_size=8))
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        parents = draw(random_parents(10))
        tree = TokenTree(tokens=torch.tensor(draw(tokens_for(parents))), parents=torch.tensor(parents))
        steps.append((tree, draw(st.integers(0, tree.size - 1))))
    return prefix, steps


@settings(max_examples=100, deadline=None)
@given(steps_of_trees())
@example(([3, 1, 4, 1, 5, 9], [(fixed([], [-1, 0, 0, 1, 2, 2, 5])[1], 6)]))  # keeps 0 -> 2 -> 5 -> 6
def test_keep_positions_equals_recomputation(
    tiny_target: torch.nn.Module, case: tuple[list[int], list[tuple[TokenTree, int]]]
) -> None:
    """Scoring trees and keeping one root path each, step after step, leaves the cache that prefilling the kept
    sequence directly gives (gathered paths, dropped siblings and padding)."""
    prefix, steps = case
    target = TargetModel(tiny_target)
    cache = _prefill(tiny_target, prefix)
    kept = list(prefix)
    for tree, node in steps:
        past = len(kept)
        target.score(tree, cache)
        path = tree.path_to(node)
        keep_positions(cache, past, [past + n for n in path])
        kept += tree.tokens[path].tolist()
    ref = _prefill(tiny_target, kept)
    assert cache.get_seq_length() == ref.get_seq_length() == len(kept)
    for got, want in zip(cache.layers, ref.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-5)
