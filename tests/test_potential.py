"""KL draft potential: closed forms, a model against itself, independence of the batch size, VLM targets."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import hf_greedy, perturbed_copy, random_prompts, tiny_llama

import specvlm
from drafters import ModelDrafter, NGramDrafter, TextOnlyDrafter
from drafters.layerskip import LayerSkipDrafter
from specvlm.potential import (
    Q_FLOOR,
    acceptance_rate,
    greedy_agreement,
    greedy_continuations,
    kl,
    potential,
    potentials,
)

PROMPTS = random_prompts(5, seed=21)
NEW_TOKENS = 12


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()  # [N, V]; log 0 = -inf


# -- the pure functions --------------------------------------------------------------------------------------------
def test_kl_closed_form() -> None:
    p = [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]
    q = [[0.25, 0.5, 0.25], [0.3, 0.3, 0.4]]
    expected = [sum(a * math.log(a / b) for a, b in zip(pr, qr, strict=True)) for pr, qr in zip(p, q, strict=True)]
    assert kl(logits_of(p), logits_of(q)) == pytest.approx(sum(expected) / 2, rel=1e-5)
    # at temperature T the distributions are softmax(log p / T), i.e. proportional to p ** (1 / T)
    t = 2.0
    warm = [[x ** (1 / t) / sum(y ** (1 / t) for y in row) for x in row] for row in (p[0], q[0])]
    expected_t = sum(a * math.log(a / b) for a, b in zip(*warm, strict=True))
    assert kl(logits_of(p[:1]), logits_of(q[:1]), temperature=t) == pytest.approx(expected_t, rel=1e-5)


def test_kl_floors_q_where_p_is_positive() -> None:
    """q = 0 where p > 0 (e.g. a smaller draft vocabulary) gives a finite KL through the floor."""
    p, q = [[0.5, 0.5, 0.0]], [[1.0, 0.0, 0.0]]
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / Q_FLOOR)
    assert kl(logits_of(p), logits_of(q)) == pytest.approx(expected, rel=1e-5)
    nothing = torch.full((1, 3), -math.inf)  # a draft that proposes nothing: q = 0 everywhere, floored
    assert kl(logits_of(p), nothing) == pytest.approx(math.log(0.5) + math.log(1 / Q_FLOOR), rel=1e-5)
    assert acceptance_rate(logits_of(p).exp(), torch.zeros(1, 3)) == 0


def test_acceptance_is_one_minus_total_variation() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, 20, generator=g) * 2, dim=-1)  # [N, V]
    q = torch.softmax(torch.randn(50, 20, generator=g) * 2, dim=-1)  # [N, V]
    tv = 0.5 * (p - q).abs().sum(dim=-1)  # [N]
    assert acceptance_rate(p, q) == pytest.approx(float((1 - tv).mean()), abs=1e-6)
    assert acceptance_rate(p, p) == pytest.approx(1.0, abs=1e-6)
    # greedy agreement counts equal argmaxes
    agree = (p.argmax(-1) == q.argmax(-1)).double().mean()
    assert greedy_agreement(p.log(), q.log()) == pytest.approx(float(agree))


# -- the driver ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    return tiny_llama(seed=0, layers=3)


def test_a_model_against_itself(target: torch.nn.Module) -> None:
    got = potential(target, ModelDrafter(target, name="self"), PROMPTS, max_new_tokens=NEW_TOKENS, progress=False)
    assert got.name == "self"
    for region in (got.prompt, got.main):
        assert region.kl == pytest.approx(0.0, abs=1e-6)
        assert region.acceptance == pytest.approx(1.0, abs=1e-6)
        assert region.agreement == 1.0
    assert got.prompt.positions == sum(len(p) - 1 for p in PROMPTS)
    assert got.main.positions == len(PROMPTS) * NEW_TOKENS  # the tiny target has no EOS


def test_scores_do_not_depend_on_the_batch_size(target: torch.nn.Module) -> None:
    drafts = {
        "perturbed": ModelDrafter(perturbed_copy(target, scale=0.3, seed=1)),
        "layerskip:1": LayerSkipDrafter(target, 1),
        "ngram": NGramDrafter(max_n=3),
    }
    runs = [
        potentials(target, drafts, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=b, progress=False) for b in (1, 3)
    ]
    for one, three in zip(*runs, strict=True):
        assert one.name == three.name
        for a, b in ((one.prompt, three.prompt), (one.main, three.main)):
            assert a.positions == b.positions
            assert a.kl == pytest.approx(b.kl, rel=1e-5)
            assert a.acceptance == pytest.approx(b.acceptance, rel=1e-5)
            assert a.agreement == b.agreement
    perturbed = runs[0][0].main
    assert 0 < perturbed.kl < 5 and 0 < perturbed.acceptance < 1
    assert runs[0][2].main.kl > perturbed.kl  # the n-gram q is mostly the floor


def test_continuations_are_the_targets_greedy_output(target: torch.nn.Module) -> None:
    conts = greedy_continuations(specvlm.models.TargetModel(target), PROMPTS[:2], NEW_TOKENS)
    assert conts == [hf_greedy(target, ids, NEW_TOKENS) for ids in PROMPTS[:2]]
    draft = ModelDrafter(perturbed_copy(target, scale=0.3, seed=1))
    given = potential(target, draft, PROMPTS[:2], continuations=conts, progress=False)
    generated = potential(target, draft, PROMPTS[:2], max_new_tokens=NEW_TOKENS, progress=False)
    assert given == generated
    only_prompt = potential(target, draft, PROMPTS[:2], continuations="prompt", progress=False)
    assert only_prompt.continuation is None
    assert only_prompt.main == only_prompt.prompt
    assert only_prompt.prompt.positions == generated.prompt.positions
    assert only_prompt.prompt.kl == pytest.approx(generated.prompt.kl, rel=1e-5)  # shorter forwards round differently


def test_bad_arguments(target: torch.nn.Module) -> None:
    draft = ModelDrafter(target)
    for kwargs in ({"temperature": 0.0}, {"batch_size": 0}, {"continuations": "sampled"}):
        with pytest.raises(specvlm.ConfigError):
            potential(target, draft, PROMPTS, progress=False, **kwargs)
    from drafters import FollowerDrafter

    with pytest.raises(specvlm.ConfigError, match="cannot score whole sequences"):
        potential(target, FollowerDrafter(draft), PROMPTS, continuations="prompt", progress=False)


def test_llava_target_with_a_text_draft() -> None:
    """The image prefix is part of the target's forward; a text draft reads the text positions only."""
    from test_llava import IMAGE, tiny_llava
    from test_llava import PROMPTS as LLAVA_PROMPTS

    llava = tiny_llava(seed=0, layers=2)
    prompts = [ids for ids, _ in LLAVA_PROMPTS]
    inputs = [{"pixel_values": pv} for _, pv in LLAVA_PROMPTS]
    draft = TextOnlyDrafter(ModelDrafter(tiny_llama(seed=3, layers=1)), IMAGE)
    runs = [
        potential(llava, draft, prompts, model_inputs=inputs, max_new_tokens=8, batch_size=b, progress=False)
        for b in (1, 4)
    ]
    assert runs[0].main.kl == pytest.approx(runs[1].main.kl, rel=1e-5)
    pairs = sum(sum(a != IMAGE and b != IMAGE for a, b in itertools.pairwise(ids)) for ids in prompts)
    assert runs[0].prompt.positions == pairs
    conts = greedy_continuations(specvlm.models.TargetModel(llava), prompts, 8, inputs)
    assert runs[0].main.positions == sum(len(c[: c.index(IMAGE)] if IMAGE in c else c) for c in conts)
    assert runs[0].main.positions > 8  # (this tiny random llava does write its image token twice)
    with pytest.raises(specvlm.ConfigError, match="vision-language"):
        potential(llava, ModelDrafter(tiny_llava(seed=1, layers=1)), prompts, model_inputs=inputs, progress=False)


# -- eval.potential ------------------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    from eval.potential import ranks, spearman

    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    g = torch.Generator().manual_seed(4)
    for n in (3, 5, 9):
        x = torch.randint(0, 4, (n,), generator=g).double().tolist()  # ties on purpose
        y = torch.randn(n, generator=g, dtype=torch.float64).tolist()
        if len(set(x)) > 1:
            assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert spearman([1.0, 2.0], [1.0, 2.0]) is None


def test_default_drafts() -> None:
    from eval.potential import TRAINED, default_drafts

    assert default_drafts(30) == [*(f"layerskip:{k}" for k in (8, 16, 24, 28, 29)), TRAINED]
    assert default_drafts(4) == ["layerskip:1", "layerskip:2", "layerskip:3", TRAINED]
    assert default_drafts(30, full=False) == ["layerskip:8", "layerskip:24", "layerskip:29", TRAINED]


def test_a_plain_run_is_small_and_full_restores_the_study() -> None:
    """A plain run stays a few articles x few tokens x few drafts (all 40 x 64 x 6, each decoded, took far too long);
    --full restores the full study."""
    from eval.cnn_text import load_articles
    from eval.potential import LAYER_SKIPS, apply_quick_default, build_parser, default_drafts

    def selection(*argv: str) -> tuple[int, int, bool]:  # (articles, new tokens, quick)
        args = build_parser().parse_args(list(argv))
        quick = apply_quick_default(args)
        return len(load_articles(args)), args.max_new_tokens, quick

    articles, tokens, quick = selection()
    drafts = len(default_drafts(30, full=False))
    assert quick and articles <= 4 and tokens <= 32 and drafts <= 4
    assert articles * tokens * drafts <= 4 * 32 * 4  # tokens decoded in a plain run, per draft and article
    assert selection("--full") == (40, 64, False)  # every bundled article, 64 tokens ...
    assert len(default_drafts(30, full=True)) == len(LAYER_SKIPS) + 1  # ... and every default draft
    assert selection("--limit", "40") == (40, 32, True)  # still quick tokens and drafts: the hint names --full
    assert selection("--full", "--limit", "7", "--max-new-tokens", "16") == (7, 16, False)
    assert selection("--start", "30", "--end", "40") == (10, 32, True)
    assert selection("--draft", "ngram", "--limit", "9", "--max-new-tokens", "64") == (9, 64, False)


@pytest.mark.slow
def test_cli_on_the_embedded_target(tmp_path: Path) -> None:
    from eval.potential import main

    out = tmp_path / "potential.json"
    args = ["--limit", "1", "--max-new-tokens", "6", "--max-article-tokens", "64", "--out", str(out)]
    assert main([*args, "--draft", "layerskip:29", "--draft", "ngram", "--draft", "layerskip:24"]) == 0
    result = json.loads(out.read_text())
    assert [d["name"] for d in result["drafts"]] == ["layerskip:29", "ngram", "layerskip:24"]
    assert all(d["identical"] == 1 and d["positions"] == 6 for d in result["drafts"])
    assert set(result["spearman"]) >= {"kl", "kl_prompt", "acceptance", "agreement"}
    assert out.with_suffix(".png").is_file()
