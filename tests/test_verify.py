"""Verification against brute force (greedy) and exact distributions (sampling)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from drafters.followers import FollowerSession
from specvlm.builders import BranchingTree, ChainTree, DynamicTree, OptTree, StepLimits, TreeBuilder
from specvlm.drafting import DraftSession
from specvlm.sampling import Sampling, make_generator, warp
from specvlm.tree import TokenTree
from specvlm.verify import residual_step, verify_greedy, verify_sampling


@st.composite
def tree_and_logits(draw: st.DrawFn) -> tuple[TokenTree, torch.Tensor]:
    vocab = draw(st.integers(2, 6))
    n = draw(st.integers(1, 16))
    parents, tokens = [-1], [0]
    used: dict[int, set[int]] = {0: set()}
    for _ in range(1, n):
        p = draw(st.integers(0, len(parents) - 1))
        free = [t for t in range(vocab) if t not in used[p]]
        if not free:
            continue
        tok = draw(st.sampled_from(free))
        used[p].add(tok)
        used[len(parents)] = set()
        parents.append(p)
        tokens.append(tok)
    size = len(parents) * vocab
    logits = torch.tensor(draw(st.lists(st.floats(-4, 4), min_size=size, max_size=size)))
    tree = TokenTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents))
    return tree, logits.view(len(parents), vocab)


@settings(max_examples=300, deadline=None)
@given(tree_and_logits())
def test_greedy_matches_brute_force(case: tuple[TokenTree, torch.Tensor]) -> None:
    tree, logits = case
    best = logits.argmax(-1).tolist()
    tokens = tree.tokens.tolist()
    # brute force: a node is reachable when every step of its path is the parent's argmax; take the deepest
    ok = [n for n in range(tree.size) if all(tokens[b] == best[a] for a, b in itertools.pairwise(tree.path_to(n)))]
    deepest = max(ok, key=lambda n: (len(tree.path_to(n)), -n))
    got = verify_greedy(tree, logits)
    assert got.path == tree.path_to(deepest)
    assert got.tokens == [tokens[n] for n in got.path[1:]] + [best[deepest]]


@st.composite
def any_tree_and_logits(draw: st.DrawFn) -> tuple[TokenTree, torch.Tensor]:
    """Any tree, siblings with equal tokens included (as merged draft sources could propose), and logits [N, V]."""
    vocab = draw(st.integers(2, 5))
    n = draw(st.integers(1, 16))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    logits = torch.tensor(draw(st.lists(st.floats(-4, 4), min_size=n * vocab, max_size=n * vocab)))
    return TokenTree(tokens=torch.tensor(tokens), parents=torch.tensor(parents)), logits.view(n, vocab)


@settings(max_examples=300, deadline=None)
@given(any_tree_and_logits())
def test_greedy_on_any_tree_emits_the_target_argmax_chain(case: tuple[TokenTree, torch.Tensor]) -> None:
    """Lossless on every tree: each emitted token is the target's argmax after the previous one, and the walk
    stops only where no child holds that argmax."""
    tree, logits = case
    best = logits.argmax(-1).tolist()
    tokens, kids = tree.tokens.tolist(), tree.children()
    got = verify_greedy(tree, logits)
    assert got.path[0] == 0 and all(tree.parents[b] == a for a, b in itertools.pairwise(got.path))
    assert got.tokens == [best[n] for n in got.path]
    assert all(tokens[c] != best[got.path[-1]] for c in kids[got.path[-1]])


@settings(max_examples=200, deadline=None)
@given(any_tree_and_logits(), st.floats(0.3, 2.0), st.floats(0.5, 1.0), st.integers(0, 2**31 - 1))
def test_sampled_verification_walks_a_root_path_inside_the_nucleus(
    case: tuple[TokenTree, torch.Tensor], temperature: float, top_p: float, seed: int
) -> None:
    """Deterministic children on any tree: the accepted tokens are a root path's, and every emitted token,
    drafted or bonus, has positive warped target probability where it was emitted."""
    tree, logits = case
    sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
    got = verify_sampling(tree, logits, sampling, make_generator(seed))
    assert got.path[0] == 0 and all(tree.parents[b] == a for a, b in itertools.pairwise(got.path))
    assert got.tokens[:-1] == tree.tokens[got.path[1:]].tolist()
    p = warp(logits, sampling)  # [N, V]
    assert all(p[node, tok] > 0 for node, tok in zip(got.path, got.tokens, strict=True))


def exact_output(p: torch.Tensor, q: torch.Tensor | None, children: list[int] | None, k: int) -> torch.Tensor:
    """Distribution of the token emitted at one node, enumerating every draw of k children (or fixed children)."""
    out = torch.zeros_like(p, dtype=torch.float64)
    if q is None:
        sequences = [(tuple(children or []), 1.0)]
    else:
        sequences = []
        for seq in itertools.permutations(range(p.numel()), k):
            prob, rest = 1.0, q.double().clone()
            for x in seq:
                prob *= float(rest[x] / rest.sum())
                rest[x] = 0
            if prob > 0:
                sequences.append((seq, prob))
    for seq, weight in sequences:
        reach, pp, qq = 1.0, p.double(), (q.double() if q is not None else None)
        for x in seq:
            accept, pp, qq = residual_step(pp, qq, x)
            out[x] += weight * reach * accept
            reach *= 1 - accept
        out += weight * reach * pp
    return out


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 10_000), st.booleans())
def test_recursive_rejection_is_exact(vocab: int, k: int, seed: int, point_mass: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1)
    k = min(k, vocab)
    if point_mass:
        children = torch.randperm(vocab, generator=g)[:k].tolist()
        got = exact_output(p, None, children, k)
    else:
        got = exact_output(p, q, None, k)
    torch.testing.assert_close(got, p, atol=1e-9, rtol=0)


class MarkovSession(DraftSession):
    """A draft whose next-token logits depend on the last token only (a bigram table): exact targets known."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # [V, V] logits

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        return self.table[[tokens[n] for n in nodes]]

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        pass


def two_token_draws(
    builder: TreeBuilder, p_table: torch.Tensor, q_table: torch.Tensor, draws: int, followers: bool = False
) -> torch.Tensor:
    """Counts of the first two emitted tokens, verifying a fresh tree each time against a bigram target."""
    vocab = p_table.shape[0]
    sampling = Sampling(temperature=0.8, top_p=0.95, seed=0)
    gen = make_generator(7)
    session: DraftSession = MarkovSession(q_table)
    if followers:  # q mixed with the target's remembered argmax followers
        session = FollowerSession(session, [1, 0], weight=0.5)
    counts = torch.zeros(vocab, vocab)
    root = 0
    for _ in range(draws):
        tree = builder.build(session, root, StepLimits(max_depth=4, max_nodes=64), sampling, gen)
        logits = p_table[tree.tokens]  # [N, V]
        session.observe(tree.tokens.tolist(), tree.parents.tolist(), logits.argmax(-1).tolist())
        acc = verify_sampling(tree, logits, sampling, gen)
        first = acc.tokens[0]
        if len(acc.tokens) >= 2:
            second = acc.tokens[1]
        else:  # only the bonus came out: draw the second token from the target itself
            second = int(torch.multinomial(warp(p_table[first][None], sampling)[0], 1, generator=gen))
        counts[first, second] += 1
    return counts


BUILDERS = [
    (ChainTree(depth=3), False),
    (BranchingTree([3, 2, 1]), False),
    (BranchingTree([2, 2, 1]), True),
    (DynamicTree(budget=8, topk=3, depth=3), False),
    (OptTree(nodes=8, threshold=0.0, max_depth=3), False),
]


@pytest.fixture
def one_thread() -> object:
    """Tiny tensor ops: one thread avoids OpenMP stalls when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("builder", "followers"), BUILDERS, ids=lambda b: str(getattr(b, "name", b)))
def test_sampled_two_token_joint_matches_target(builder: TreeBuilder, followers: bool, one_thread: object) -> None:
    vocab, draws = 5, 20_000
    g = torch.Generator().manual_seed(3)
    p_table = torch.randn(vocab, vocab, generator=g) * 1.5
    q_table = p_table + torch.randn(vocab, vocab, generator=g)  # a draft that is close but not equal
    counts = two_token_draws(builder, p_table, q_table, draws, followers)
    sampling = Sampling(temperature=0.8, top_p=0.95)
    p1 = warp(p_table[0][None], sampling)[0]
    joint = p1[:, None] * warp(p_table, sampling)  # [V, V]
    expected = (joint * draws).flatten()
    keep = expected > 0
    observed = counts.flatten()
    assert observed[~keep].sum() == 0, "a token outside the target's top-p nucleus was emitted"
    scale = observed[keep].sum().item() / expected[keep].sum().item()
    stat = chisquare(observed[keep].numpy(), expected[keep].numpy() * scale)
    assert stat.pvalue > 1e-3, f"chi-square p={stat.pvalue:.2e}: sampled joint differs from the target"


def test_chi_square_detects_a_lossy_rule(one_thread: object) -> None:
    """The statistical test has teeth: accepting a drafted child with probability 1 (lossy) fails it."""
    vocab, draws = 5, 20_000
    g = torch.Generator().manual_seed(3)
    p_table = torch.randn(vocab, vocab, generator=g) * 1.5
    q_table = p_table + torch.randn(vocab, vocab, generator=g)
    sampling = Sampling(temperature=0.8, top_p=0.95)
    gen = make_generator(1)
    session = MarkovSession(q_table)
    counts = torch.zeros(vocab)
    for _ in range(draws):
        tree = ChainTree(depth=1).build(session, 0, StepLimits(1, 4), sampling, gen)
        counts[int(tree.tokens[1]) if tree.size > 1 else 0] += 1  # "always accept the draft"
    p1 = warp(p_table[0][None], sampling)[0]
    keep = p1 > 0
    expected = p1[keep] * counts[keep].sum()
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue < 1e-3


def test_entropy_sanity_of_warp() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    p = warp(logits, Sampling(temperature=1.0, top_p=0.7))[0]
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)
    assert p[3] == 0 and p[0] > 0
