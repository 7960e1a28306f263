"""Stop strings: the output ends right after the first stop string, and its tokens are a prefix of the target's."""

from __future__ import annotations

import pytest
from conftest import PIECES, PieceTokenizer, hf_greedy, step_ends, tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

import specvlm
from drafters import ModelDrafter
from specvlm import cli
from specvlm.builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder
from specvlm.stopping import StopStrings

PROMPT = [3, 17, 42, 8, 3, 17, 60]
NEW_TOKENS = 40
# fixed sizes: a stop string is placed by where one run's target calls ended, for another run to meet
TREES: list[TreeBuilder] = [
    Autoregressive(),
    ChainTree(depth=5, hardware_aware=False),
    BranchingTree([3, 2, 1, 1, 1]),
    DynamicTree(budget=12, topk=3, depth=5, hardware_aware=False),
    OptTree(nodes=12, threshold=0.0, max_depth=6, hardware_aware=False),
]


TOK = PieceTokenizer()


@pytest.fixture(scope="module")
def decoder() -> specvlm.Decoder:
    """The tiny target with the piece tokenizer and an exact copy as draft, so whole paths are accepted."""
    return specvlm.load(tiny_llama(seed=0), ModelDrafter(tiny_llama(seed=0)), tokenizer=TOK)


@pytest.fixture(scope="module")
def reference(decoder: specvlm.Decoder) -> list[int]:
    return hf_greedy(decoder.target.model, PROMPT, NEW_TOKENS)


def stop_at(ref: list[int], ends: set[int], across_steps: bool, overhang: bool) -> tuple[str, int]:
    """A stop string made of the pieces of tokens i-1 and i (or only the first letter of token i, `overhang`) that
    first appears in the output when token i arrives, with tokens i-1 and i from different target calls
    (`across_steps`) or from one accepted path.  Returns (stop string, tokens the output must keep)."""
    for i in range(1, len(ref)):
        if ((i in ends) != across_steps) or (overhang and len(PIECES[ref[i]]) < 2):
            continue
        stop = PIECES[ref[i - 1]] + PIECES[ref[i]][: 1 if overhang else 2]
        if stop not in TOK.decode(ref[:i]) and stop in TOK.decode(ref[: i + 1]):
            return stop, i + 1
    raise AssertionError("no suitable stop string in this output: change PROMPT")


CASES = [
    pytest.param(tree, across, overhang, id=f"{tree.name}-{'across' if across else 'inside'}{'-overhang' * overhang}")
    for tree in TREES
    for across in (True, False)
    for overhang in (False, True)
    if across or tree.name != "ar"  # the autoregressive baseline adds one token per target call
]


@pytest.mark.parametrize(("tree", "across_steps", "overhang"), CASES)
def test_stop_equals_the_truncated_greedy_output(
    decoder: specvlm.Decoder, reference: list[int], tree: TreeBuilder, across_steps: bool, overhang: bool
) -> None:
    plain = decoder.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree)
    assert plain.tokens == reference
    stop, keep = stop_at(reference, step_ends(plain), across_steps, overhang)
    got = decoder.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree, stop=stop)
    assert got.tokens == reference[:keep]
    assert got.text.endswith(stop) and got.text == TOK.decode(got.tokens)[: len(got.text)]
    assert len(got.text) == len(TOK.decode(got.tokens)) - overhang  # the last token runs past the stop string
    assert got.stats.new_tokens == keep


def test_the_stop_string_that_ends_first_wins(decoder: specvlm.Decoder, reference: list[int]) -> None:
    text = TOK.decode(reference)
    early, late = text[20:23], text[6:12]  # `late` starts first but ends later
    if early in text[:20] or late in text[:6]:
        pytest.fail("pick other stop strings: they occur earlier")
    got = decoder.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, stop=[early, late])
    assert got.text == text[:12]
    assert reference[: len(got.tokens)] == got.tokens


def test_missing_stop_strings_and_stops_inside_the_prompt_change_nothing(
    decoder: specvlm.Decoder, reference: list[int]
) -> None:
    in_prompt = TOK.decode(PROMPT[:2])
    assert in_prompt not in TOK.decode(reference)
    for stop in ("zzz", in_prompt, [], None):
        got = decoder.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, stop=stop)
        assert got.tokens == reference


def test_eos_before_the_stop_string_ends_the_output() -> None:
    model = tiny_llama(seed=0)
    ref = hf_greedy(model, PROMPT, NEW_TOKENS)
    model.generation_config.eos_token_id = ref[4]
    eos_at, stop = ref.index(ref[4]), TOK.decode(ref[10:12])
    assert stop not in TOK.decode(ref[: eos_at + 1])
    dec = specvlm.load(model, ModelDrafter(tiny_llama(seed=0)), tokenizer=TOK)
    got = dec.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, stop=stop, tree="chain")
    assert got.tokens == ref[: eos_at + 1]


@pytest.mark.parametrize("tree", ["chain", "static", "dynamic", "opt"])
def test_stream_with_stop_joins_to_the_generated_text(decoder: specvlm.Decoder, tree: str) -> None:
    stop = TOK.decode(hf_greedy(decoder.target.model, PROMPT, 16)[13:16])
    stats = specvlm.GenerationStats()
    pieces = list(decoder.stream(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree, stop=stop, stats=stats))
    full = decoder.generate(prompt=PROMPT, max_new_tokens=NEW_TOKENS, tree=tree, stop=stop)
    assert "".join(pieces) == full.text and full.text.endswith(stop)
    assert stats.new_tokens == full.stats.new_tokens == len(full.tokens)


@pytest.mark.parametrize("tree", ["chain", "static", "dynamic", "opt"])
def test_sampled_output_with_stop_is_the_same_seeds_output_cut(decoder: specvlm.Decoder, tree: str) -> None:
    """The stop rule only cuts: the same seed, tree and prompt give the uncut sample's prefix."""
    options = {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "tree": tree, "temperature": 1.0, "seed": 11}
    whole = decoder.generate(**options)
    stop = TOK.decode(whole.tokens[20:22])
    cut = decoder.generate(**options, stop=stop)
    assert cut.text == StopStrings((stop,)).cut(whole.text)
    assert cut.tokens == whole.tokens[: len(cut.tokens)]


def test_embedded_model_stop_string(embedded: specvlm.Decoder) -> None:
    ids = embedded.prompt_ids("List three colours.")
    ref = hf_greedy(embedded.target.model, ids, 24)
    text = embedded.decode_text(ref)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    end = text.index(stop) + len(stop)
    got = embedded.generate(prompt=ids, max_new_tokens=24, stop=stop)
    assert got.text == text[:end]
    assert got.tokens == ref[: len(got.tokens)] and embedded.decode_text(got.tokens[:-1]).find(stop) < 0


def test_cli_stop_flag(
    embedded: specvlm.Decoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(specvlm, "load", lambda *args, **kwargs: embedded)
    prompt = "Name three fruits."
    text = embedded.generate(prompt=prompt, max_new_tokens=20).text
    stop = text[6:9]
    assert cli.main([prompt, "--max-new-tokens", "20", "--stop", "@@@", "--stop", stop]) == 0
    assert capsys.readouterr().out == text[: text.index(stop) + 3] + "\n"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0, 1, 2, 3, 26, 27, 28]), max_size=30),  # a, b, c, d, ab, ac, ad
    st.lists(st.text(alphabet="abcd", min_size=1, max_size=4), min_size=1, max_size=3),
    st.integers(0, 30),
)
def test_tokens_to_keep_is_the_shortest_prefix_with_a_stop(tokens: list[int], stops: list[str], checked: int) -> None:
    """Against brute force: the first prefix whose text holds a stop string; the cut text ends with the first one."""
    rule = StopStrings(tuple(stops))
    first = next((k for k in range(len(tokens) + 1) if rule.end(TOK.decode(tokens[:k])) is not None), None)
    checked = min(checked, first - 1 if first is not None else len(tokens))
    assert rule.tokens_to_keep(tokens, checked, TOK.decode) == first
    if first is not None:
        text = TOK.decode(tokens)
        assert any(rule.cut(text).endswith(s) for s in stops)
        assert not any(s in rule.cut(text)[:-1] for s in stops)


def test_stop_strings_are_validated() -> None:
    assert StopStrings.parse(None) is None and StopStrings.parse([]) is None
    assert StopStrings.parse("x") == StopStrings(("x",))
    for bad in ("", ["a", ""], [1], b"ab", 3):
        with pytest.raises(specvlm.ConfigError):
            StopStrings.parse(bad)  # type: ignore[arg-type]
