"""The weight-free drafts: the suffix automaton over the text, the retrieval datastore, and their mixtures.

The automaton and the datastore are checked against brute-force searches on random token strings, decoding against
HF `generate`, sampling against the target's exact law, and bad datastores against their one-line errors.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VOCAB, hf_greedy, random_prompts, tiny_llama

import specvlm
from drafters.datastore import Datastore, suffix_array, write_datastore
from drafters.lookup import LookupSession
from drafters.mixture import MixtureDrafter
from drafters.ngram import NGramDrafter
from drafters.retrieval import RetrievalDrafter
from drafters.suffix import SuffixAutomaton, SuffixDrafter
from specvlm.builders import BranchingTree, ChainTree, DynamicTree, OptTree
from specvlm.draft_spec import parse_spec
from specvlm.drafting import DraftContext

TREES = [
    ChainTree(depth=4, hardware_aware=False),
    BranchingTree([2, 2, 1]),
    DynamicTree(budget=10, topk=3, depth=5, hardware_aware=False),
    OptTree(nodes=10, threshold=0.1, max_depth=5, hardware_aware=False),
]


def occurrences(text: list[int], pattern: list[int]) -> list[int]:
    """Start positions of `pattern` in `text`, brute force."""
    k = len(pattern)
    return [i for i in range(len(text) - k + 1) if text[i : i + k] == pattern]


def brute_followers(text: list[int], context: list[int]) -> tuple[int, dict[int, int]]:
    """The longest suffix of `context` that occurs in `text` with a token after it, and those tokens' counts."""
    for k in range(len(context), 0, -1):
        after = Counter(text[i + k] for i in occurrences(text, context[-k:]) if i + k < len(text))
        if after:
            return k, dict(after)
    return 0, {}


# -- the suffix automaton --------------------------------------------------------------------------------------------
def test_suffix_automaton_matches_brute_force_on_random_strings() -> None:
    rng = random.Random(0)
    for _ in range(300):
        vocab = rng.choice([2, 3, 5])
        text = [rng.randrange(vocab) for _ in range(rng.randrange(1, 50))]
        sam = SuffixAutomaton(text)
        assert sam.followers(sam.last, len(sam)) == brute_followers(text, text)
        state, matched, context = sam.last, len(sam), list(text)
        for _ in range(6):  # a tree path below the text: tokens the text does not hold
            token = rng.randrange(vocab)
            context.append(token)
            state, matched = sam.step(state, matched, token)
            longest = max(k for k in range(len(context) + 1) if k == 0 or occurrences(text, context[-k:]))
            assert matched == longest
            if matched:
                assert sam.followers(state, matched) == brute_followers(text, context[-matched:])


def test_suffix_session_grows_with_the_text_and_counts_every_occurrence() -> None:
    prompt = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3, 9, 5, 1, 2]
    session = SuffixDrafter().session(DraftContext(tuple(prompt), VOCAB))
    lengths, logits = session.proposals([0], [2], [-1])
    assert lengths == [2]  # "1 2" occurred three times before, each time followed by 3
    assert torch.exp(logits[0, 3]).item() == pytest.approx(3.0)
    lengths, logits = session.proposals([0, 1], [2, 3], [-1, 0])  # below the root: "1 2 3", then 9 twice, 7 once
    assert lengths[1] == 3 and torch.exp(logits[1, [9, 7]]).tolist() == pytest.approx([2.0, 1.0])
    session.commit([0, 1], [3, 9])  # the text grows: "... 1 2 3 9"
    lengths, logits = session.proposals([0], [9], [-1])
    assert lengths == [4] and torch.isfinite(logits[0]).nonzero().flatten().tolist() == [1, 5]  # "1 2 3 9" -> 1, 5


# -- the datastore ---------------------------------------------------------------------------------------------------
def test_suffix_array_sorts_every_suffix() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 64, 300):
        tokens = rng.integers(-1, 4, size)
        order = suffix_array(tokens)
        assert [tuple(tokens[i:]) for i in order] == sorted(tuple(tokens[i:]) for i in range(size))


def test_datastore_lookups_match_brute_force_counts(tmp_path: Path) -> None:
    rng = random.Random(1)
    for trial in range(120):
        vocab = rng.choice([2, 3, 6])
        docs = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 30))] for _ in range(rng.randrange(1, 4))]
        store_dir = tmp_path / f"ds{trial}"
        write_datastore(store_dir, docs, vocab_size=vocab, tokenizer="t")
        store = Datastore(store_dir)
        context = [rng.randrange(vocab) for _ in range(rng.randrange(1, 9))]
        match = store.longest(context, max_length=6)
        found = [k for k in range(1, min(6, len(context)) + 1) if any(occurrences(d, context[-k:]) for d in docs)]
        assert (match.length if match else 0) == max(found, default=0)
        if match is None:
            continue
        pattern = context[-match.length :]
        want = Counter(d[i + len(pattern)] for d in docs for i in occurrences(d, pattern) if i + len(pattern) < len(d))
        assert store.followers(match) == {t: float(c) for t, c in want.items()}  # document ends are not followers
        for token in range(vocab):  # one level down the trie: the range narrowed by one token
            below = store.extend(match, token)
            count = sum(len(occurrences(d, [*pattern, token])) for d in docs)
            assert (below.occurrences if below else 0) == count


def test_a_wide_range_is_counted_from_an_even_sample(tmp_path: Path) -> None:
    docs = [[1, 2] if i % 4 else [1, 3] for i in range(20000)]  # "1" followed by 2 three times in four
    write_datastore(tmp_path / "ds", docs, vocab_size=8, tokenizer="t")
    store = Datastore(tmp_path / "ds")
    follow = store.followers(store.find([1]))
    assert set(follow) == {2, 3}
    assert follow[2] / (follow[2] + follow[3]) == pytest.approx(0.75, abs=0.01)


def retrieval_store(tmp_path: Path, target: torch.nn.Module, seed: int = 5) -> Path:
    """A datastore of the target's own greedy continuations of other random prompts (what it usually says)."""
    docs = [ids + hf_greedy(target, ids, 24) for ids in random_prompts(12, seed=seed, vocab=VOCAB)]
    write_datastore(tmp_path / "ds", docs, vocab_size=VOCAB, tokenizer="none")
    return tmp_path / "ds"


@pytest.mark.parametrize("spec", ["sam", "rest", "sam+rest", "rest+ngram@3"])
def test_free_drafts_decode_like_generate_with_every_tree(tmp_path: Path, spec: str) -> None:
    target = tiny_llama(seed=0, layers=2)
    store = retrieval_store(tmp_path, target)
    draft = spec.replace("rest", f"rest:{store}")
    dec = specvlm.load(target, draft=draft)
    accepted = 0
    prompts = random_prompts(2, seed=5, vocab=VOCAB)[:1] + random_prompts(1, seed=9, vocab=VOCAB)  # seen and unseen
    for ids in prompts:
        want = hf_greedy(target, ids, 24)
        for tree in TREES:
            got = dec.generate(None, ids, max_new_tokens=24, tree=tree)
            assert got.tokens == want, (spec, tree)
            accepted += sum(s.accepted - 1 for s in got.stats.steps)
    assert accepted > 0  # the drafts were right at times: the trees held drafted tokens


def test_the_longest_free_match_wins_in_a_mixture(tmp_path: Path) -> None:
    write_datastore(tmp_path / "ds", [[4, 5, 6, 7, 8]], vocab_size=VOCAB, tokenizer="t")
    prompt = (1, 2, 5, 6, 9, 3, 4, 5, 6)  # the text has "5 6" -> 9; the datastore has "4 5 6" -> 7
    mix = MixtureDrafter([SuffixDrafter(), RetrievalDrafter(tmp_path / "ds")])
    session = mix.session(DraftContext(prompt, VOCAB))
    q = torch.exp(session.logits([0], [6], [-1])[0])
    assert q[7].item() == pytest.approx(1.0)  # the datastore's 3-token match beats the text's 2-token one
    text_first = MixtureDrafter([NGramDrafter(), SuffixDrafter()]).session(DraftContext(prompt, VOCAB))
    assert torch.exp(text_first.logits([0], [6], [-1])[0, 9]).item() == pytest.approx(1.0)
    assert all(isinstance(s, LookupSession) for s in session.sessions)


# -- bad datastores are one clear line ------------------------------------------------------------------------------
def test_bad_datastores_are_refused_in_one_line(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=2)
    write_datastore(tmp_path / "ds", [[1, 2, 3, 4]], vocab_size=VOCAB, tokenizer="t")
    with pytest.raises(specvlm.ConfigError, match="not a datastore"):
        specvlm.load(target, draft=f"rest:{tmp_path}")
    tokens = np.load(tmp_path / "ds" / "tokens.npy")
    np.save(tmp_path / "ds" / "tokens.npy", tokens[:-2])  # a truncated copy
    with pytest.raises(specvlm.ConfigError, match="truncated"):
        Datastore(tmp_path / "ds")
    write_datastore(tmp_path / "big", [[1, 2, 3]], vocab_size=VOCAB * 2, tokenizer="t")
    with pytest.raises(specvlm.ConfigError, match="another tokenizer"):
        specvlm.load(target, draft=f"rest:{tmp_path / 'big'}")
    Datastore(tmp_path / "big").check_tokenizer("t", VOCAB * 2)  # its own tokenizer passes
    with pytest.raises(specvlm.ConfigError, match="another tokenizer"):
        Datastore(tmp_path / "big").check_tokenizer("other", VOCAB * 2)
    (tmp_path / "big" / "datastore.json").write_text("{not json")
    with pytest.raises(specvlm.ConfigError, match="damaged"):
        Datastore(tmp_path / "big")
    with pytest.raises(specvlm.ConfigError, match="datastore folder"):
        parse_spec("rest:")


def test_datastore_cli_builds_from_selfdistill_records(tmp_path: Path, embedded_folder: Path, capsys) -> None:
    from transformers import AutoTokenizer

    from training.datastore import main

    records = [{"source": "x", "prompt": "p", "ids": [1, 2, 3, 40, 41, 42], "prompt_len": 3}]
    records.append({"text": "Here are some ideas."})
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    main(["--target", str(embedded_folder), "--data", str(data), "--out", str(tmp_path / "ds")])
    out = capsys.readouterr().out
    assert "tokens in 2 documents" in out and "MiB on disk" in out
    tok = AutoTokenizer.from_pretrained(embedded_folder)
    store = Datastore(tmp_path / "ds")
    want = [40, 41, 42, -1, *tok.encode("Here are some ideas.", add_special_tokens=False), -1]
    assert store.tokens.tolist() == want  # answers only (the prompt dropped), each document ended
    assert store.meta["command"].startswith("python -m training.datastore") and store.meta["build_seconds"] >= 0
    with pytest.raises(SystemExit):
        main(["--target", str(embedded_folder), "--data", str(data), "--out", str(tmp_path / "ds")])  # no overwrite


# -- sampling keeps the target's law ---------------------------------------------------------------------------------
@pytest.mark.slow  # ~40 s: 1200 sampled generations
def test_datastore_sampling_keeps_the_targets_two_token_law(tmp_path: Path) -> None:
    from test_family_sampling import TEMPERATURE, chi_square, sample_on_one_thread

    def datastore(model: torch.nn.Module) -> RetrievalDrafter:
        from families import build

        _, inputs = build("mistral")
        tail = inputs["input_ids"][0, -3:].tolist()
        with torch.no_grad():  # documents: the prompt's tail and two tokens the target samples after it
            p = torch.softmax(model(**inputs).logits[0, -1], dim=-1)
        gen = torch.Generator().manual_seed(0)
        docs = [[*tail, int(t), int(t)] for t in torch.multinomial(p, 200, replacement=True, generator=gen)]
        write_datastore(tmp_path / "ds", docs, vocab_size=int(p.shape[0]), tokenizer="none")
        return RetrievalDrafter(tmp_path / "ds")

    sampled = sample_on_one_thread("mistral", draft=datastore, draws=1200)
    assert len(sampled.first_accepted) >= 2, sampled.first_accepted  # drafted tokens are accepted at times
    pvalue, cells = chi_square(sampled, TEMPERATURE)
    print(f"mistral: datastore, {sampled.draws} draws, {cells} cells, chi-square p={pvalue:.3g}")
    assert pvalue > 1e-3, f"chi-square p={pvalue:.2e}: sampled pairs differ from the target's law"
