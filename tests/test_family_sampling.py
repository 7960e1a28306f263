"""Family targets: sliding layers stay within their window plus one tree, and sampling keeps the target's law."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import perturbed_copy
from families import FAMILIES, WINDOW, Inputs, build, extended_inputs
from scipy.stats import chisquare
from transformers import Cache, PreTrainedModel

import specvlm
from drafters import ModelDrafter
from specvlm.cache import GrowingLayer, SlidingLayer
from specvlm.models import TargetModel

#: a chain of 4 drafted tokens every step: with an exact copy as the draft, 5 tokens per target call
CHAIN = specvlm.ChainTree(depth=4, hardware_aware=False)
LONG, SHORT = 2000, 300
#: the families' configs say 512 positions; their RoPE has no learned table, so a long run only needs the number
MAX_POSITIONS = 4096


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids OpenMP stalls when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- memory bound ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """What one SlidingLayer held right after one `update` or `keep_positions`."""

    layer: int  # id() of the layer
    event: str  # "update" or "keep"
    held: int  # entries held afterwards
    count: int  # tokens fed (update) or positions kept after the start (keep)


@dataclass
class HeldLog:
    """Every SlidingLayer's entries after each update and keep, and the caches the target made."""

    events: list[Held] = field(default_factory=list)
    caches: list[Cache] = field(default_factory=list)

    def clear(self) -> None:
        self.events.clear()
        self.caches.clear()

    def of(self, layers: list[SlidingLayer]) -> list[Held]:
        ids = {id(layer) for layer in layers}
        return [e for e in self.events if e.layer in ids]


@pytest.fixture
def held_log(monkeypatch: pytest.MonkeyPatch) -> HeldLog:
    log = HeldLog()
    update, keep, new_cache = SlidingLayer.update, SlidingLayer.keep_positions, TargetModel.new_cache

    def recorded_update(
        self: SlidingLayer, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = update(self, key_states, value_states, *args, **kwargs)
        log.events.append(Held(id(self), "update", self.held(), int(key_states.shape[-2])))
        return out

    def recorded_keep(self: SlidingLayer, start: int, kept: list[int]) -> None:
        keep(self, start, kept)
        log.events.append(Held(id(self), "keep", self.held(), len(kept)))

    def recorded_cache(self: TargetModel, capacity: int = 0) -> Cache:
        cache = new_cache(self, capacity=capacity)
        log.caches.append(cache)
        return cache

    monkeypatch.setattr(SlidingLayer, "update", recorded_update)
    monkeypatch.setattr(SlidingLayer, "keep_positions", recorded_keep)
    monkeypatch.setattr(TargetModel, "new_cache", recorded_cache)
    return log


def without_eos(model: PreTrainedModel) -> PreTrainedModel:
    """The model with no EOS anywhere: `families` clears only the generation config's, and specvlm also stops at the
    model config's (greedy Gemma3-text writes EOS 2 as its 586th token; sampled Mistral draws it now and then)."""
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.eos_token_id = None
    return model


def roomy(name: str) -> tuple[PreTrainedModel, Inputs]:
    """The family's model, without EOS and with room for a long answer, and its prompt."""
    model, inputs = build(name)
    # no parameter depends on it (RoPE, no learned table): the weights are the families' own
    model.config.get_text_config().max_position_embeddings = MAX_POSITIONS
    return without_eos(model), inputs


def scored(target: TargetModel, tree_size: int) -> int:
    """Tokens a target forward feeds for a tree of `tree_size` nodes (CPU float32 pads 2-3 nodes to 4)."""
    return target.pad_to if 1 < tree_size < target.pad_to else tree_size


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def generate_logged(
    name: str, new_tokens: int, log: HeldLog, model: PreTrainedModel, inputs: Inputs
) -> tuple[specvlm.Generation, specvlm.Decoder, Cache]:
    """Greedy decoding with an exact copy as the draft; the log holds this generation's events only."""
    decoder = specvlm.load(model, draft=ModelDrafter(copy.deepcopy(model), name="copy"))
    log.clear()  # the load's self-check makes caches of its own
    got = decoder.generate(inputs=inputs, max_new_tokens=new_tokens, tree=CHAIN)
    assert len(log.caches) == 1, f"{name}: the target made {len(log.caches)} caches for one generation"
    return got, decoder, log.caches[0]


MEMORY_CASES = [
    pytest.param("mistral", LONG, id=f"mistral-{LONG}"),
    pytest.param("gemma3_text", SHORT, id=f"gemma3_text-{SHORT}"),
    pytest.param("gemma3_text", LONG, id=f"gemma3_text-{LONG}", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "new_tokens"), MEMORY_CASES)
def test_sliding_layers_hold_a_window_plus_one_tree(
    name: str, new_tokens: int, held_log: HeldLog, one_thread: None
) -> None:
    """A long greedy run equals the model's own generate; once the first step is kept, a sliding layer holds at most
    window - 1 + the largest tree scored (exactly window - 1 between steps), while full layers hold every position."""
    model, inputs = roomy(name)
    prompt_len = int(inputs["input_ids"].shape[1])
    assert FAMILIES[name].window == WINDOW
    want = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)[0, prompt_len:].tolist()
    assert len(want) == new_tokens

    got, decoder, cache = generate_logged(name, new_tokens, held_log, model, inputs)
    assert got.tokens == want, f"{name}: differs from generate from token {first_difference(got.tokens, want)} on"
    assert got.stats.mean_accepted >= 4.5, f"{name}: the copy accepts {got.stats.mean_accepted:.2f} per call"

    text = model.config.get_text_config()
    kinds = list(getattr(text, "layer_types", None) or ["sliding_attention"] * text.num_hidden_layers)
    sliding = [layer for layer in cache.layers if isinstance(layer, SlidingLayer)]
    full = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    assert len(sliding) == kinds.count("sliding_attention") and len(full) == kinds.count("full_attention")

    fed = max(scored(decoder.target, step.tree_size) for step in got.stats.steps)
    bound = WINDOW - 1 + fed
    # each layer from its first keep on (the prefill's own forward sees the whole prompt)
    steady: list[Held] = []
    kept: set[int] = set()
    for e in held_log.of(sliding):
        if e.event == "keep":
            kept.add(e.layer)
        if e.layer in kept:
            steady.append(e)
    sizes = {scored(decoder.target, step.tree_size) for step in got.stats.steps}
    assert {e.count for e in steady if e.event == "update"} <= sizes, "a sliding layer was fed other than a tree"
    peak = max(e.held for e in steady)
    print(f"{name}: {new_tokens} tokens, sliding layers held at most {peak} entries, bound {bound}")
    assert peak <= bound, f"{name}: a sliding layer held {peak} entries, bound {bound} (window {WINDOW}, tree {fed})"
    assert all(e.held == WINDOW - 1 for e in steady if e.event == "keep"), "between steps: exactly window - 1"

    committed = prompt_len + new_tokens - 1  # the last token was emitted, never fed
    assert all(layer.held() == WINDOW - 1 and layer.cumulative_length == committed for layer in sliding)
    assert all(layer.get_seq_length() == committed and layer.keys.shape[-2] == committed for layer in full)


def test_sliding_layers_hold_a_window_from_the_prefill_on(held_log: HeldLog, one_thread: None) -> None:
    """Right after the prompt's prefill (whose own forward sees the whole prompt) a sliding layer keeps only its
    window, so already the first tree forward runs on window - 1 + tree entries."""
    model, inputs = build("mistral")
    got, decoder, cache = generate_logged("mistral", 12, held_log, model, inputs)
    sliding = [layer for layer in cache.layers if isinstance(layer, SlidingLayer)]
    bound = WINDOW - 1 + max(scored(decoder.target, step.tree_size) for step in got.stats.steps)
    events = held_log.of(sliding)
    prompt = inputs["input_ids"].shape[1] - 1
    assert events[0].event == "update" and events[0].held == prompt, "the prefill feeds the prompt but its last token"
    later = [e for e in events if not (e.event == "update" and e.held == prompt and e.count == prompt)]
    peak = max(e.held for e in later)
    assert peak <= bound, f"a sliding layer held {peak} entries (prompt {prompt}), bound {bound}"


# -- sampling keeps the target's distribution -----------------------------------------------------------------------
TEMPERATURE, WRONG_TEMPERATURE = 1.0, 1.3
#: 3 new tokens: the first step's tree is BranchingTree([2, 2, 1]) cut to depth 2 by the budget (7 nodes); the
#: first two emitted tokens are counted, so acceptance and residual draws at both depths are exercised
NEW_TOKENS = 3
BRANCHING = specvlm.BranchingTree([2, 2, 1])
#: generations per family: each test well under 60 s on one busy core
DRAWS = {"mistral": 2000, "qwen2_vl": 1200}
NOISE = 0.1  # the draft's weight noise, relative to each tensor's std: q close to p but not equal
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class Sampled:
    """Counts of the first two sampled tokens, and the target's own logits to compute their exact law."""

    name: str
    draws: int
    pairs: Counter[tuple[int, int]]
    first_accepted: Counter[int]  # tokens emitted by the first target call, per generation
    first: torch.Tensor  # [V] logits after the prompt
    second: dict[int, torch.Tensor]  # first token -> [V] logits after the prompt and it (the likely first tokens)
    seconds: float  # wall time of the sampled generations
    #: the family's special ids: never cells of their own (an image placeholder has no image feature for a plain
    #: forward after it, yet sampling may draw one: its lm_head row is zero, not -inf)
    special: frozenset[int] = frozenset()


@torch.inference_mode()
def next_logits(model: PreTrainedModel, inputs: Inputs) -> torch.Tensor:
    """The model's own forward over the whole sequence: float64 logits [V] of the next token."""
    return model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].double()


def likely_first(first: torch.Tensor, temperature: float, draws: int, special: frozenset[int]) -> list[int]:
    """First tokens but `special` expected at least MIN_EXPECTED times in `draws` at `temperature` (logits [V])."""
    expected = torch.softmax(first / temperature, dim=-1) * draws
    return [t for t in torch.nonzero(expected >= MIN_EXPECTED).flatten().tolist() if t not in special]


def exact_pairs(sampled: Sampled, temperature: float) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The exact law of the first two tokens at `temperature`: first-token probabilities [V], and for the first
    tokens with second logits, their joint row P(first, second) [V]."""
    p1 = torch.softmax(sampled.first / temperature, dim=-1)
    rows = {t: p1[t] * torch.softmax(logits / temperature, dim=-1) for t, logits in sampled.second.items()}
    return p1, rows


def chi_square(sampled: Sampled, temperature: float) -> tuple[float, int]:
    """Chi-square p-value and cell count of the counted pairs against the exact law at `temperature`, over cells
    fixed in advance from the law alone: for each likely first token, its second tokens from most to least probable
    in runs of at least MIN_EXPECTED expected draws (a likely pair is a cell of its own); all other pairs in one."""
    draws = sampled.draws
    p1, rows = exact_pairs(sampled, temperature)
    likely = likely_first(sampled.first, temperature, draws, sampled.special)
    assert set(likely) <= set(rows), "second-token logits are missing for a likely first token"
    expected: list[float] = []
    cell_of: dict[int, torch.Tensor] = {}  # first token -> cell of each second token [V]
    for t in likely:
        probs, opened = rows[t].tolist(), len(expected)
        cells = torch.empty(len(probs), dtype=torch.long)
        run = 0.0
        for s in torch.argsort(rows[t], descending=True).tolist():
            cells[s] = len(expected)
            run += probs[s] * draws
            if run >= MIN_EXPECTED:
                expected.append(run)
                run = 0.0
        if run > 0 and len(expected) > opened:  # the least likely tail joins this first token's last run
            cells[cells == len(expected)] = len(expected) - 1
            expected[-1] += run
        elif run > 0:  # rounding: the whole row came just under MIN_EXPECTED
            expected.append(run)
        cell_of[t] = cells
    rest = len(expected)
    expected.append(draws * (1.0 - float(p1[likely].sum())))
    observed = [0.0] * len(expected)
    for (t, s), n in sampled.pairs.items():
        observed[int(cell_of[t][s]) if t in cell_of else rest] += n
    assert expected[rest] >= MIN_EXPECTED and len(expected) > 10, f"{len(expected)} cells, rest {expected[rest]:.1f}"
    want = torch.tensor(expected, dtype=torch.float64)
    want *= draws / want.sum()  # float64 rounding: the sums must agree
    return float(chisquare(torch.tensor(observed).numpy(), want.numpy()).pvalue), len(expected)


def sample(name: str, draft: Callable[[PreTrainedModel], Any] | None = None, draws: int | None = None) -> Sampled:
    """`draws` sampled generations of family `name` with `draft(model)` (default: a noisy copy of the target)."""
    draws = draws or DRAWS[name]
    family = FAMILIES[name]
    model, inputs = build(name)
    without_eos(model)
    # (the self-check's text-only reference gives its own positions, so a Qwen2-VL that already saw an image passes)
    if draft is None:
        draft = lambda m: ModelDrafter(perturbed_copy(m, scale=NOISE, seed=1), name="noisy")  # noqa: E731
    decoder = specvlm.load(model, draft=draft(model))
    pairs: Counter[tuple[int, int]] = Counter()
    first_accepted: Counter[int] = Counter()
    started = time.perf_counter()
    for seed in range(draws):
        got = decoder.generate(
            inputs=inputs, max_new_tokens=NEW_TOKENS, tree=BRANCHING, temperature=TEMPERATURE, seed=seed
        )
        pairs[got.tokens[0], got.tokens[1]] += 1
        first_accepted[got.stats.steps[0].accepted] += 1
    seconds = time.perf_counter() - started
    first = next_logits(model, inputs)
    # second logits for the first tokens likely at either temperature
    special = family.special_ids
    likely = {t for temp in (TEMPERATURE, WRONG_TEMPERATURE) for t in likely_first(first, temp, draws, special)}
    second = {t: next_logits(model, extended_inputs(family, inputs, torch.tensor([[t]]))) for t in sorted(likely)}
    return Sampled(name, draws, pairs, first_accepted, first, second, seconds, special)


def sample_on_one_thread(name: str, draft: Callable[[PreTrainedModel], Any], draws: int) -> Sampled:
    """`sample` with torch on one thread (the sampled runs are many small forwards), the thread count restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sample(name, draft=draft, draws=draws)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(DRAWS))
def sampled(request: pytest.FixtureRequest) -> Iterator[Sampled]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield sample(request.param)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # ~45 s per family: in CI's slow tier, so the default run keeps its margin under 20 minutes
def test_sampling_keeps_the_targets_two_token_law(sampled: Sampled) -> None:
    """A noisy copy drafts a branching tree: the first two sampled tokens follow the target's own joint law."""
    draws = sampled.draws
    # the draft is close but not equal: the first call ends at the root, at depth 1 and past depth 2, each often
    assert set(sampled.first_accepted) == {1, 2, 3}, sampled.first_accepted
    assert min(sampled.first_accepted.values()) >= draws // 10, sampled.first_accepted
    pvalue, cells = chi_square(sampled, TEMPERATURE)
    print(f"{sampled.name}: {draws} draws in {sampled.seconds:.1f} s, {cells} cells, chi-square p={pvalue:.3g}")
    assert pvalue > 1e-3, f"{sampled.name}: chi-square p={pvalue:.2e}: sampled pairs differ from the target's law"


@pytest.mark.slow
def test_chi_square_rejects_a_slightly_wrong_law(sampled: Sampled) -> None:
    """The test has teeth: the same counts against the target's law at temperature 1.3 instead of 1.0 fail it."""
    pvalue, cells = chi_square(sampled, WRONG_TEMPERATURE)
    print(f"{sampled.name}: against temperature {WRONG_TEMPERATURE}: {cells} cells, p={pvalue:.3g}")
    assert pvalue < 1e-3, f"{sampled.name}: the wrong law passes with p={pvalue:.2e}"
