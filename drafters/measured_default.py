"""The embedded target's default draft, chosen by measured tokens/s on this machine (never slower than the simplest).

Candidates: n-grams alone, the suffix automaton alone and mixed with the shipped datastore, the shipped trained draft
mixed with prompt n-grams (each with a sized dynamic tree), and the autoregressive loop.
Each decodes the same three calibration prompts written for this module (a summary, a
question, an instruction: no benchmark's questions), the candidates taking turns prompt by prompt so that a burst of
other work slows them all alike; the fastest total tokens/s wins, a tie within 3 % goes to the simpler one.  The
choice is cached per model, device, dtype, threads and packing in `$SPECVLM_CACHE/defaults`, like the cost table.

A choice does not stay wrong because the machine was busy the first time:
- the measurement samples the machine's load (`specvlm.machine_load`); one taken under load is provisional, and the
  next load of the target on an idle machine measures again;
- the first OBSERVED generations that use the default record their decode tokens/s; when their median is more than
  RECHECK times the chosen candidate's recorded rate (the measurement ran slow: the machine was busier then) or
  below an alternative's recorded rate by that factor, the choice is marked stale and measured again, idle, next
  time.
A file is measured at most MEASUREMENTS times this way (`specvlm --calibrate` measures again whenever asked).
`DefaultWatch` is what the Decoder keeps to do the observing.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specvlm.cost_timing import cost_key
from specvlm.machine_load import BUSY_SHARE, LoadMeter, LoadSample, current_load
from specvlm.notices import first_use
from specvlm.options import cache_root, write_cache_json

if TYPE_CHECKING:
    from specvlm.drafting import Drafter
    from specvlm.models import TargetModel
    from specvlm.stats import GenerationStats

log = logging.getLogger("specvlm.defaults")

#: bump when the candidates, the prompts or the shipped draft change, so older choices are measured again
VERSION = 4
#: (draft spec, tree name), simplest first: ties go to the earlier one. The weight-free drafts first (prompt
#: n-grams; the suffix automaton; it mixed with the shipped datastore of the target's own answers), then the trained
#: draft mixed with n-grams
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("ngram", "ar"),
    ("ngram", "dynamic"),
    ("sam", "dynamic"),
    ("sam+rest", "dynamic"),
    ("trained+ngram", "dynamic"),
)
#: a tie within this share of the best tokens/s goes to the simpler candidate
TIE = 0.03
NEW_TOKENS = 48
#: generations whose decode tokens/s are recorded, the fewest that are compared, and the factor that marks stale
OBSERVED, COMPARED, RECHECK = 5, 3, 1.5
#: measurements of one file at most (the first one included), unless asked for
MEASUREMENTS = 3
CALIBRATION = (
    "Summarize this note in two sentences: The community garden on Alder Street will open its new tool shed on "
    "Saturday. Volunteers built the shed from reclaimed timber over four weekends, and the local hardware store "
    "donated hinges, locks and paint. Members can borrow spades, rakes and a wheelbarrow by signing the book at the "
    "door, and tools must be back by sunset.",
    "What is the difference between weather and climate? Answer briefly.",
    "Write three tips for keeping a houseplant healthy in winter.",
)


@dataclass(frozen=True)
class Choice:
    """The measured default: a draft spec and the tree it runs with, what each candidate reached, and how far the
    measurement can be trusted."""

    draft: str
    tree: str
    rates: dict[str, float]  # "draft/tree" -> tokens/s over the calibration prompts
    others_cpu: float = 0.0  # other processes' share of the CPU while it was measured
    measurements: int = 1  # how many times this file has been measured
    observed: tuple[float, ...] = ()  # decode tokens/s of the first generations that used it
    stale: bool = False  # the observed rates disagree with the recorded ones: measure again when idle

    @property
    def key(self) -> str:
        return f"{self.draft}/{self.tree}"

    @property
    def under_load(self) -> bool:
        return self.others_cpu > BUSY_SHARE

    def with_observed(self, rate: float) -> Choice:
        """This choice with one more observed generation, marked stale when the observations disagree."""
        observed = (*self.observed, round(rate, 3))
        stale = self.stale
        if len(observed) >= COMPARED:
            typical = statistics.median(observed)
            others = [r for k, r in self.rates.items() if k != self.key]
            slow_then = typical > RECHECK * self.rates.get(self.key, typical)
            beaten = bool(others) and typical * RECHECK < max(others)
            stale = stale or slow_then or beaten
        return replace(self, observed=observed, stale=stale)


def measure(target: TargetModel, make: Callable[[str], Drafter]) -> Choice:
    """Decode the calibration prompts with every candidate on `target` (`make(spec)` builds a candidate's draft),
    taking turns prompt by prompt; the fastest (ties: the simplest), with the load the measurement ran under."""
    from specvlm.engine import Request, decode
    from specvlm.prompts import prompt_ids
    from specvlm.sampling import Sampling
    from specvlm.stats import GenerationStats
    from specvlm.trees import make_tree

    def run(drafter: Drafter, tree: str, prompt: str, new_tokens: int) -> tuple[list[int], float]:
        request = Request(tuple(prompt_ids(target, prompt)), new_tokens, Sampling())
        stats = GenerationStats()
        tokens = [t for step in decode(target, drafter, make_tree(tree), request, stats) for t in step.tokens]
        return tokens, stats.seconds

    keys = [f"{d}/{t}" for d, t in CANDIDATES]
    drafters = {key: make(d) for key, (d, _) in zip(keys, CANDIDATES, strict=True)}
    trees = dict(zip(keys, (t for _, t in CANDIDATES), strict=True))
    for key in keys:
        run(drafters[key], trees[key], CALIBRATION[1], 8)  # warm-up
    tokens = dict.fromkeys(keys, 0)
    seconds = dict.fromkeys(keys, 0.0)
    outputs: dict[str, list[list[int]]] = {key: [] for key in keys}
    meter = LoadMeter()
    for i, prompt in enumerate(CALIBRATION):
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:  # each candidate goes first once
            out, spent = run(drafters[key], trees[key], prompt, NEW_TOKENS)
            tokens[key] += len(out)
            seconds[key] += spent
            outputs[key].append(out)
    load = meter.sample()
    first = outputs[keys[0]]
    if any(outs != first for outs in outputs.values()):  # greedy: every candidate must give the same tokens
        raise RuntimeError("the default-draft candidates decoded different tokens: report this as a bug")
    rates = {key: round(tokens[key] / max(seconds[key], 1e-9), 3) for key in keys}
    draft, tree = pick(rates)
    return Choice(draft, tree, rates, others_cpu=load.others)


def pick(rates: dict[str, float]) -> tuple[str, str]:
    """The simplest candidate within TIE of the best tokens/s: (draft spec, tree name)."""
    best = max(rates.values())
    return next((d, t) for d, t in CANDIDATES if rates.get(f"{d}/{t}", 0.0) >= (1 - TIE) * best)


def path_for(target: TargetModel) -> Path:
    return cache_root() / "defaults" / f"{cost_key(target)}-v{VERSION}.json"


def read_choice(path: Path) -> Choice | None:
    """The cached choice, or None for a missing or damaged file."""
    try:
        saved = json.loads(path.read_text())
        saved["observed"] = tuple(saved.get("observed", ()))
        known = {k: saved[k] for k in Choice.__dataclass_fields__ if k in saved}
        return Choice(**known)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, OSError):
        return None


def write_choice(path: Path, choice: Choice) -> None:
    body: dict[str, Any] = asdict(choice)
    body["observed"] = list(choice.observed)
    if not write_cache_json(path, body):
        log.debug("specvlm: could not cache the default draft choice in %s", path)


def due_again(choice: Choice, load_now: Callable[[], LoadSample] = current_load) -> bool:
    """Whether a cached choice should be measured again now: it was measured under load or marked stale, it has
    measurements left, and the machine is idle now (`load_now`: a short look at its load)."""
    if not (choice.under_load or choice.stale) or choice.measurements >= MEASUREMENTS:
        return False
    return not load_now().busy


def measured_default(target: TargetModel, make: Callable[[str], Drafter], *, again: bool = False) -> Choice:
    """The cached choice for this target and machine, measured on first use (each candidate decodes the
    calibration prompts once), again when the cached one is due (`due_again`) or when `again` is asked."""
    path = path_for(target)
    cached = read_choice(path) if path.is_file() else None
    if cached is not None and not again and not due_again(cached):
        return cached
    if cached is None:
        first_use("choosing this model's default draft by measured tokens/s", path)
    else:
        why = "asked" if again else ("measured under load" if cached.under_load else "observed rates disagreed")
        log.info("specvlm: measuring this model's default draft again (%s); cached in %s", why, path)
    choice = measure(target, make)
    if cached is not None:
        choice = replace(choice, measurements=cached.measurements + 1)
    write_choice(path, choice)
    return choice


class DefaultWatch:
    """The measured default's check on its own choice, kept by the Decoder that uses it: `observe` records the
    decode tokens/s of the first OBSERVED generations of at least NEW_TOKENS tokens in the cached choice (which may
    mark it stale); `measure_again` measures now (`specvlm --calibrate`)."""

    def __init__(self, target: TargetModel, make: Callable[[str], Drafter]):
        self.target, self.make = target, make
        self.path = path_for(target)

    def observe(self, stats: GenerationStats) -> None:
        choice = read_choice(self.path)
        if choice is None or len(choice.observed) >= OBSERVED or stats.new_tokens < NEW_TOKENS:
            return
        write_choice(self.path, choice.with_observed(stats.decode_tokens_per_second))

    def measure_again(self) -> Choice:
        return measured_default(self.target, self.make, again=True)
