"""The trained feature draft: training objective == inference drafting, lossless decoding, save/load, training."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import hf_greedy, random_prompts, tiny_llama
from transformers import LlamaForCausalLM

import specvlm
from drafters.feature_draft import FeatureDrafter, FeatureDraftModel, draft_config, is_feature_draft
from drafters.mixture import MixtureDrafter, mix_logits
from drafters.model import ModelDrafter
from drafters.ngram import NGramDrafter
from specvlm.drafting import DraftContext
from training.common import TrainConfig, autocast, split
from training.feature_draft import cached_features, evaluate, level_mask, load_examples, train, unrolled
from training.selfdistill import (
    OPENERS,
    SUMMARY_TEMPLATES,
    chat_ids,
    long_summary_prompts,
    opened_user_prompts,
    stop_ids,
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
        session = drafter.session(DraftContext(tuple(ids[: root + 1].tolist()), VOCAB, target_hidden=feats[:root]))
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
    session = drafter.session(DraftContext(tuple(ids[:7].tolist()), VOCAB, target_hidden=feats[:6]))
    torch.testing.assert_close(session.logits([0], [int(ids[6])], [-1])[0], full[6], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tree", ["chain", "static", "dynamic", "opt"])
def test_feature_draft_is_lossless(tree: str) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    decoder = specvlm.load(target, draft=FeatureDrafter(random_draft(target, seed=1), target))
    for ids in random_prompts(4, seed=2, vocab=VOCAB):
        out = decoder.generate(None, ids, max_new_tokens=24, tree=tree)
        assert out.tokens == hf_greedy(target, ids, 24)


def self_distilled(target: LlamaForCausalLM, count: int, seed: int, new: int = 40) -> list[dict]:
    """Records like training.selfdistill writes: prompt + the target's greedy continuation."""
    out = []
    for ids in random_prompts(count, seed=seed, vocab=VOCAB, low=4, high=10):
        out.append(
            {"source": "test", "prompt": str(ids), "ids": ids + hf_greedy(target, ids, new), "prompt_len": len(ids)}
        )
    return out


@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_train_improves_agreement_and_saves_a_loadable_draft(tmp_path: Path, autocast: str) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB).requires_grad_(False)
    data = tmp_path / "data.jsonl"
    records = self_distilled(target, 24, seed=11)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = TrainConfig(data=[str(data)], out=str(tmp_path / "draft"), head_size=64, levels=2, lr=3e-3,
                      batch_tokens=512, epochs=40, val_share=0.2, eval_every=1000, autocast=autocast)  # fmt: skip
    report = train(target, cfg, io.StringIO(), stops=[0])
    assert report["config"]["autocast"] == autocast
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


def test_continuing_a_draft_keeps_its_head_unless_told_to_pick_one_from_the_data(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB).requires_grad_(False)
    saved = random_draft(target, seed=2, head=torch.arange(0, VOCAB, 3))  # every third token: 32 rows
    saved.save_pretrained(tmp_path / "start")
    data = tmp_path / "data.jsonl"
    records = self_distilled(target, 8, seed=13, new=8)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    heads = {}
    for pick in (False, True):
        cfg = TrainConfig(data=[str(data)], out=str(tmp_path / f"out-{pick}"), head_size=48, epochs=1,
                          batch_tokens=512, init_from=str(tmp_path / "start"), head_from_data=pick)  # fmt: skip
        train(target, cfg, io.StringIO(), stops=[0])
        heads[pick] = FeatureDraftModel.from_pretrained(cfg.out, dtype=torch.float32).head_ids
    assert torch.equal(heads[False], saved.head_ids)
    counts = Counter(t for r in split(records, 0.05, 0)[0] for t in r["ids"][r["prompt_len"] :])
    picked, seen_twice = set(heads[True].tolist()), {t for t, c in counts.items() if c >= 2}
    first = {0} | seen_twice | set(saved.head_ids.tolist())  # the stop token, the data's repeated tokens, the saved
    assert len(first) < 48 and len(seen_twice) < 32  # room left: the test shows each rule
    assert first <= picked and len(picked) == 48
    assert {t for t in picked - first if counts[t] == 1} == picked - first  # the rest: tokens the data shows once


def test_bf16_autocast_runs_the_unrolled_draft_in_bfloat16_with_float32_weights() -> None:
    target = tiny_llama(seed=0, vocab=VOCAB).requires_grad_(False)
    model = random_draft(target, seed=3)
    ids = torch.tensor([random_prompts(1, seed=4, vocab=VOCAB, low=12, high=13)[0]])  # [1, 12]
    feats = last_hidden(target, ids[0])[None]  # [1, 12, H]
    embed = target.get_input_embeddings()
    outs = {}
    for mode in ("off", "bf16"):
        with autocast(torch.device("cpu"), TrainConfig(data=[], out="", autocast=mode)):
            outs[mode] = unrolled(model, embed, embed.weight, ids, feats, 2)
        assert next(model.parameters()).dtype == torch.float32
    for full, low in zip(outs["off"], outs["bf16"], strict=True):  # bfloat16 matmuls: close, but not the same
        assert not torch.equal(full, low.float())
        torch.testing.assert_close(low.float(), full, atol=0.1, rtol=0.05)


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


@pytest.mark.parametrize(("tree", "gate"), [("chain", 0), ("dynamic", 0), ("chain", 2), ("dynamic", 2)])
def test_feature_and_ngram_mixture_is_lossless(tree: str, gate: int) -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    drafters = [FeatureDrafter(random_draft(target, seed=1), target), NGramDrafter(max_n=3)]
    mixture = MixtureDrafter(drafters, copy_gate=gate)
    decoder = specvlm.load(target, draft=mixture)
    for ids in random_prompts(4, seed=9, vocab=VOCAB):
        ids = ids + ids  # repeated text, so the n-gram source proposes too
        assert decoder.generate(None, ids, max_new_tokens=24, tree=tree).tokens == hf_greedy(target, ids, 24)


def test_nodes_below_skipped_ancestors_get_the_same_draft_logits() -> None:
    """A mixture may skip the feature draft at some nodes: asking for a deep node feeds its ancestors first."""
    target = tiny_llama(seed=3, vocab=VOCAB)
    drafter = FeatureDrafter(random_draft(target, seed=4), target)
    ids = torch.tensor(random_prompts(1, seed=5, vocab=VOCAB, low=12, high=13)[0])
    feats = last_hidden(target, ids)
    tokens, parents = [int(ids[8]), 5, 6, 7, 8, 9], [-1, 0, 1, 2, 1, 4]  # two branches below node 1
    stepwise = drafter.session(DraftContext(tuple(ids[:9].tolist()), VOCAB, target_hidden=feats[:8]))
    for level in ([0], [1], [2, 4], [3, 5]):
        expected = stepwise.logits(level, tokens, parents)
    skipping = drafter.session(DraftContext(tuple(ids[:9].tolist()), VOCAB, target_hidden=feats[:8]))
    torch.testing.assert_close(skipping.logits([3, 5], tokens, parents), expected, atol=1e-5, rtol=1e-4)
    assert sorted(skipping.slot) == [0, 1, 2, 3, 4, 5]


def test_a_step_without_feature_drafting_is_caught_up_at_the_next() -> None:
    target = tiny_llama(seed=6, vocab=VOCAB)
    drafter = FeatureDrafter(random_draft(target, seed=7), target)
    ids = torch.tensor(random_prompts(1, seed=8, vocab=VOCAB, low=14, high=15)[0])
    feats = last_hidden(target, ids)
    teacher = drafter.sequence_logits(ids, feats)  # [L, V]
    asked, skipped = (
        drafter.session(DraftContext(tuple(ids[:8].tolist()), VOCAB, target_hidden=feats[:7])) for _ in range(2)
    )
    tokens, parents = ids[7:10].tolist(), [-1, 0, 1]  # a chain of the true tokens, all accepted + a bonus token
    asked.logits([0, 1, 2], tokens, parents)
    for session in (asked, skipped):
        session.observe_hidden(feats[7:10])
        session.commit([0, 1, 2], ids[8:11].tolist())
    for session in (asked, skipped):
        torch.testing.assert_close(session.logits([0], [int(ids[10])], [-1])[0], teacher[10], atol=1e-5, rtol=1e-4)


def test_copy_gate_leaves_the_model_draft_out_while_a_copy_runs() -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    feature = FeatureDrafter(random_draft(target, seed=1), target)
    text = random_prompts(1, seed=9, vocab=VOCAB // 2, low=10, high=11)[0]
    ids = text + text  # the last tokens repeat the first ones: a copy is running at the root
    feats = last_hidden(target, torch.tensor(ids))
    mixture = MixtureDrafter([feature, NGramDrafter(max_n=3)], copy_gate=2)
    session = mixture.session(DraftContext(tuple(ids), VOCAB, target_hidden=feats[:-1]))
    ngram_session, feature_session = session.sessions[1], session.sessions[0]
    tokens, parents = [ids[-1], VOCAB - 1], [-1, 0]  # node 1 leaves the copy (its token never occurred)
    at_root = session.logits([0], tokens, parents)
    torch.testing.assert_close(at_root.exp(), torch.softmax(ngram_session.logits([0], tokens, parents), -1))
    assert feature_session.pending  # the model draft was not run
    off_copy = session.logits([1], tokens, parents)
    fresh = feature.session(DraftContext(tuple(ids), VOCAB, target_hidden=feats[:-1]))
    torch.testing.assert_close(off_copy, torch.log_softmax(fresh.logits([0, 1], tokens, parents)[1:], -1))


def test_copy_gate_never_skips_a_model_draft_that_cannot_catch_up() -> None:
    """A ModelDrafter's session cannot feed skipped ancestors: mixed with n-grams, it is asked at every node."""
    target = tiny_llama(seed=0, vocab=VOCAB)
    mixture = MixtureDrafter([ModelDrafter(tiny_llama(seed=5, vocab=VOCAB)), NGramDrafter(max_n=3)])
    assert mixture.copy_gate == 2 and mixture.session(DraftContext(tuple([1, 2, 3, 1, 2, 3]), VOCAB)).lookups == []
    decoder = specvlm.load(target, draft=mixture)
    for ids in random_prompts(3, seed=9, vocab=VOCAB):
        ids = ids + ids  # the n-grams match: a gate would skip the model here
        assert decoder.generate(None, ids, max_new_tokens=24, tree="dynamic").tokens == hf_greedy(target, ids, 24)


def test_mixture_spec_sets_the_copy_gate() -> None:
    target = tiny_llama(seed=0, vocab=VOCAB)
    assert specvlm.load(target, draft="ngram+ngram:2").drafter.copy_gate == 2  # the default
    assert specvlm.load(target, draft="ngram+ngram:2@0").drafter.copy_gate == 0
    with pytest.raises(specvlm.ConfigError, match="copy gate"):
        specvlm.load(target, draft="ngram+ngram@x")


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


def test_long_summary_prompts_join_whole_answers_to_the_asked_length(embedded: specvlm.Decoder) -> None:
    tok = embedded.tokenizer
    answers = [f"Answer {i}: " + " ".join(f"w{i}.{j}" for j in range(40 + 7 * i)) for i in range(8)]
    head = chat_ids(tok, "q")
    records = [{"ids": head + tok(a, add_special_tokens=False)["input_ids"], "prompt_len": len(head)} for a in answers]
    records.append({"ids": head + [5] * 50, "prompt_len": len(head)})  # too short to be joined
    lengths = {a: len(r["ids"]) - len(head) for a, r in zip(answers, records, strict=False)}
    assert min(lengths.values()) >= 120
    prompts = long_summary_prompts(tok, records, 6, seed=0, min_tokens=400, max_tokens=760)
    assert len({p.text for p in prompts}) == 6
    frames = [t.split("{a}") for t in SUMMARY_TEMPLATES]
    for p in prompts:
        before, after = next(f for f in frames if p.text.startswith(f[0]) and p.text.endswith(f[1]))
        parts = p.text.removeprefix(before).removesuffix(after).split("\n\n")
        assert p.source == "long-summary" and all(part in lengths for part in parts)
        assert 400 <= sum(lengths[part] for part in parts) <= 760
