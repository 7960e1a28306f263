"""The trained feature draft: training objective == inference drafting, lossless decoding, save/load, training."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import hf_greedy, random_prompts, tiny_llama
from transformers import LlamaForCausalLM

import specvlm
from drafters.feature_draft import FeatureDrafter, FeatureDraftModel, draft_config, is_feature_draft
from drafters.mixture import MixtureDrafter, mix_logits
from drafters.ngram import NGramDrafter
from drafters.selfdistill import OPENERS, opened_user_prompts, stop_ids
from drafters.train import (
    TrainConfig,
    cached_features,
    evaluate,
    level_mask,
    load_examples,
    split,
    train,
    unrolled,
)

VOCAB = 96


def random_draft(target: LlamaForCausalLM, seed: int, head: torch.Tensor | None = None) -> FeatureDraftModel:
    torch.manual_seed(seed)
    ids = head if head is not None else torch.arange(VOCAB)
    model = FeatureDraftModel(draft_config(target.config, head_size=len(ids)))
    model.head_ids.copy_(ids)
    return model.eval()


def last_hidden(target: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return target(ids[None], output_hidden_states=True).hidden_states[-1][0]  # [L, H]


def test_level_mask_rows() -> None:
    mask = level_mask(5, 2, torch.float32) == 0  # [5, 15]
    # level-2 query at position 4: level-0 keys 0..2, the level-1 key at 3, itself (level-2 key at 4)
    assert mask[4].nonzero().flatten().tolist() == [0, 1, 2, 5 + 3, 10 + 4]
    assert mask.sum(dim=1).tolist() == [1, 2, 3 + 0, 4, 5]  # every query sees at least itself


def test_training_unroll_matches_inference_chain() -> None:
    """Level j at position s of the unrolled objective is exactly the j-th node of a chain drafted from s - j."""
    target = tiny_llama(seed=3, vocab=VOCAB)
    draft = random_draft(target, seed=4)
    drafter = FeatureDrafter(draft, target)
    ids = torch.tensor(random_prompts(1, seed=5, vocab=VOCAB, low=14, high=15)[0])
    feats = last_hidden(target, ids)
    embed, head = target.get_input_embeddings(), target.get_output_embeddings().weight
    with torch.no_grad():
        outs = unrolled(draft, embed, head, ids[None], feats[None], levels=3)
    for root in (2, 6, 10):
        session = drafter.session(ids[: root + 1].tolist(), VOCAB, target_hidden=feats[:root])
        tokens, parents = [int(ids[root]), int(ids[root + 1]), int(ids[root + 2])], [-1, 0, 1]
        for node in (0, 1, 2):  # a builder grows one level per call
            session.logits([node], tokens[: node + 1], parents[: node + 1])
        for level in range(3):
            torch.testing.assert_close(session.out[level], outs[level][0, root + level], atol=1e-5, rtol=1e-4)


def test_teacher_forced_logits_match_session_root() -> None:
    target = tiny_llama(seed=6, vocab=VOCAB)
    drafter = FeatureDrafter(random_draft(target, seed=7, head=torch.arange(0, VOCAB, 2)), target)
    ids = torch.tensor(random_prompts(1, seed=8, vocab=VOCAB, low=10, high=11)[0])
    feats = last_hidden(target, ids)
    full = drafter.sequence_logits(ids, feats)  # [L, V]
    assert torch.isinf(full[:, 1::2]).all()  # tokens outside the reduced head are never proposed
    session = drafter.session(ids[:7].tolist(), VOCAB, target_hidden=feats[:6])
    torch.testing.assert_close(session.logits([0], [int(ids[6])], [-1])[0], full[6], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tree", ["chain", "static", "dynamic", "opt"])
def test_feature_draft_is_lossless(tree: str) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    decoder = specvlm.load(target, draft=FeatureDrafter(random_draft(target, seed=1), target))
    for ids in random_prompts(4, seed=2, vocab=VOCAB):
        out = decoder.generate(None, ids, max_new_tokens=24, tree=tree)
        assert out.tokens == hf_greedy(target, ids, 24)


def self_distilled(target: LlamaForCausalLM, count: int, seed: int, new: int = 40) -> list[dict]:
    """Records like drafters.selfdistill writes: prompt + the target's greedy continuation."""
    out = []
    for ids in random_prompts(count, seed=seed, vocab=VOCAB, low=4, high=10):
        out.append(
            {"source": "test", "prompt": str(ids), "ids": ids + hf_greedy(target, ids, new), "prompt_len": len(ids)}
        )
    return out


def test_train_improves_agreement_and_saves_a_loadable_draft(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB).requires_grad_(False)
    data = tmp_path / "data.jsonl"
    records = self_distilled(target, 24, seed=11)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = TrainConfig(data=[str(data)], out=str(tmp_path / "draft"), head_size=64, levels=2, lr=3e-3,
                      batch_tokens=512, epochs=40, val_share=0.2, eval_every=1000)  # fmt: skip
    report = train(target, cfg, io.StringIO(), stops=[0])
    assert report["final"]["agree_l0"] >= 0 and report["steps"] > 0
    # it learnt its training text: agreement there rises well above the untrained draft's
    (cache,) = tmp_path.glob("features-*.pt")
    known = {tuple(e.ids.tolist()): e for part in load_examples(cache) for e in part}
    train_ex = [known[tuple(r["ids"])] for r in split(records, cfg.val_share, cfg.seed)[0]]
    embed, head = target.get_input_embeddings(), target.get_output_embeddings().weight
    trained = FeatureDraftModel.from_pretrained(str(tmp_path / "draft"), dtype=torch.float32)
    untrained = random_draft(target, seed=0, head=trained.head_ids)
    before, after = (
        evaluate(m, embed, head[m.head_ids], head, m.head_ids, train_ex, cfg) for m in (untrained, trained)
    )
    assert after["agree_l0"] > before["agree_l0"] + 0.2 and after["agree_l1"] > before["agree_l1"] + 0.1
    folder = tmp_path / "draft"
    assert is_feature_draft(folder) and not (folder / "checkpoint.pt").exists()
    decoder = specvlm.load(target, draft=str(folder))
    assert isinstance(decoder.drafter, FeatureDrafter) and 0 in decoder.drafter.head_ids.tolist()
    for ids in random_prompts(3, seed=12, vocab=VOCAB):
        assert decoder.generate(None, ids, max_new_tokens=20, tree="dynamic").tokens == hf_greedy(target, ids, 20)


def test_feature_cache_computes_only_records_it_has_not_seen(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB).requires_grad_(False)
    first, more = self_distilled(target, 3, seed=5, new=6), self_distilled(target, 2, seed=6, new=6)
    log = io.StringIO()
    known = cached_features(target, first, tmp_path, log)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1 and "3 of 3" in log.getvalue()
    again = cached_features(target, first + more, tmp_path, log)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2 and "2 of 5" in log.getvalue()
    for r in first:  # read back from the first file, not recomputed
        torch.testing.assert_close(again[tuple(r["ids"])].feats, known[tuple(r["ids"])].feats)
    with torch.no_grad():
        hidden = target(torch.tensor([more[0]["ids"]]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(again[tuple(more[0]["ids"])].feats.float(), hidden, atol=2e-2, rtol=2e-2)
    cached_features(target, first + more, tmp_path, log)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    other = tiny_llama(seed=1, vocab=VOCAB).requires_grad_(False)  # same config, other weights: its own cache
    cached_features(other, first, tmp_path, log)
    assert len(list(tmp_path.glob("features-*.pt"))) == 3 and log.getvalue().count("3 of 3") == 2


def test_mixture_is_the_weighted_distribution_of_the_sources_that_propose() -> None:
    a = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, -math.inf, -math.inf], [-math.inf, -math.inf, -math.inf]])  # row 1: b proposes nothing
    mixed = mix_logits([a, b], [0.25, 0.75]).exp()
    torch.testing.assert_close(mixed[0], 0.25 * torch.softmax(a[0], -1) + torch.tensor([0.75, 0.0, 0.0]))
    torch.testing.assert_close(mixed[1], torch.softmax(a[1], -1))  # renormalised over the live source


@pytest.mark.parametrize("tree", ["chain", "dynamic"])
def test_feature_and_ngram_mixture_is_lossless(tree: str) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    mixture = MixtureDrafter([FeatureDrafter(random_draft(target, seed=1), target), NGramDrafter(max_n=3)])
    decoder = specvlm.load(target, draft=mixture)
    for ids in random_prompts(4, seed=9, vocab=VOCAB):
        ids = ids + ids  # repeated text, so the n-gram source proposes too
        assert decoder.generate(None, ids, max_new_tokens=24, tree=tree).tokens == hf_greedy(target, ids, 24)


def test_a_saved_default_tree_comes_with_the_draft(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    draft = random_draft(target, seed=1)
    draft.config.specvlm_default_tree = {"name": "chain", "depth": 3}
    draft.save_pretrained(tmp_path)
    assert specvlm.load(target, draft=str(tmp_path)).default_tree == specvlm.ChainTree(depth=3)
    mixture = specvlm.load(target, draft=MixtureDrafter([FeatureDrafter(draft, target), NGramDrafter()]))
    assert mixture.default_tree == specvlm.ChainTree(depth=3)  # a mixture takes its first source's tree


def test_opened_prompts_start_with_an_opener_and_skip_excluded_ones(embedded: specvlm.Decoder) -> None:
    model, tok = embedded.target.model, embedded.tokenizer
    stop = stop_ids(tok)
    first = opened_user_prompts(model, tok, 4, batch_size=4, seed=3, stop=stop)
    assert len(first) == 4 and len({p.text for p in first}) == 4
    assert all(p.source == "opened" and p.text.startswith(OPENERS) and "\n" not in p.text for p in first)
    # the same seed again, told to leave out the first one (as the evaluation's prompts are left out)
    again = opened_user_prompts(model, tok, 4, batch_size=4, seed=3, stop=stop, exclude={first[0].text.upper()})
    assert first[0].text not in {p.text for p in again} and first[1].text in {p.text for p in again}
