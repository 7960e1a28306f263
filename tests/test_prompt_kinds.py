"""Prompts of every benchmark kind: round 1 from templates, round 2 over answers, second turns, held-out by kind."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import specvlm
from eval.agreement import heldout_groups, pool
from specvlm.potential import RegionScores
from training.common import split
from training.prompt_kinds import FOREIGN, ROUND1, ROUND2, Prompt, record_key, round1_prompts, round2_prompts
from training.selfdistill import answered_prompts, chat_ids, evaluation_prompts


def test_round1_gives_every_kind_distinct_and_never_an_excluded_prompt() -> None:
    first = round1_prompts(12, random.Random(5))
    kinds = {k.name for k in ROUND1}
    assert {p.source for p in first} == kinds
    assert len({p.text for p in first}) == len(first) == 12 * len(kinds)
    banned = frozenset(p.text for p in first[:20])
    again = round1_prompts(12, random.Random(5), banned)
    assert not banned & {p.text for p in again}
    # composed foreign sentences keep a space between subject and predicate
    subjects = {s for parts in FOREIGN.values() for s in parts[0]}
    translations = [p.text for p in first if p.source == "translation"]
    used = [(t, s) for t in translations for s in subjects if s in t]
    assert used and all(t[t.index(s) + len(s)] == " " for t, s in used)


def test_the_bundled_benchmark_questions_are_excluded() -> None:
    banned = evaluation_prompts()
    data = Path(__file__).resolve().parent.parent / "eval" / "data"
    turns = [t for line in (data / "specbench_check.jsonl").read_text().splitlines() for t in json.loads(line)["turns"]]
    assert turns and set(turns) <= banned


def test_round2_builds_each_kind_over_the_answers() -> None:
    pairs = [(f"Question {i}?", f"Answer number {i}. " * 30) for i in range(10)]
    second = round2_prompts(pairs, 0.3, random.Random(0))
    assert {p.source for p in second} == set(ROUND2)
    assert sum(p.source == "rag" for p in second) == 3
    for p in second:
        if p.source == "turn2":
            question, answer = p.history
            assert (question, answer) in pairs and p.text not in answer
        elif p.source == "rag":
            asked = next(q for q, _ in pairs if p.text.endswith(q))
            assert dict(pairs)[asked] in p.text and "Passage 1: " in p.text  # its own answer is one of the passages
        else:
            assert any(a in p.text for _, a in pairs)


def test_a_second_turn_keeps_the_first_exchange_in_the_chat(embedded: specvlm.Decoder) -> None:
    tok = embedded.tokenizer
    ids = chat_ids(tok, "Make it shorter.", ("Tell me about owls.", "Owls hunt at night."))
    text = tok.decode(ids)
    assert text.index("Tell me about owls.") < text.index("Owls hunt at night.") < text.index("Make it shorter.")
    assert text.count("<|im_start|>assistant") == 2


def test_a_resumed_run_tells_second_turns_apart_by_their_history(tmp_path: Path) -> None:
    a = Prompt("turn2", "Make it shorter.", ("Q1", "A1"))
    b = Prompt("turn2", "Make it shorter.", ("Q2", "A2"))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"source": "turn2", "prompt": a.text, "history": list(a.history), "ids": [1, 2],
                                "prompt_len": 1}) + "\n")  # fmt: skip
    done = answered_prompts(path)
    assert record_key(json.loads(path.read_text())) == a.key
    assert a.key in done and b.key not in done


def test_held_out_agreement_groups_by_kind(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    kinds = ["qa", "rag", "coding"]
    rows = [{"source": kinds[i % 3], "prompt": str(i), "ids": [i, i + 1, i + 2], "prompt_len": 1} for i in range(300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = argparse.Namespace(data=[str(path)], val_share=0.1, seed=0, limit=4)
    groups = heldout_groups(None, args)
    _, val = split(rows, 0.1, 0)
    assert list(groups) == ["coding", "qa", "rag"]
    for kind in kinds:
        prompts, conts = groups[kind]
        expected = [r for r in val if r["source"] == kind][:4]
        assert prompts == [r["ids"][:1] for r in expected] and conts == [r["ids"][1:] for r in expected]
    pooled = pool([RegionScores(1.0, 0.5, 0.25, 10), RegionScores(3.0, 1.0, 1.0, 30)])
    assert (pooled.kl, pooled.acceptance, pooled.agreement, pooled.positions) == (2.5, 0.875, 0.8125, 40)


def test_a_record_answered_twice_is_never_on_both_sides_of_the_split() -> None:
    rows = [{"source": "qa", "prompt": str(i % 40), "ids": [i % 40, 7, 8], "prompt_len": 1} for i in range(80)]
    train, val = split(rows, 0.25, 0)
    assert len(train) + len(val) == 40 and len(val) == 10
    assert not {tuple(r["ids"]) for r in train} & {tuple(r["ids"]) for r in val}
