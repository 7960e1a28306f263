"""The embedded target's default draft, chosen by measured tokens/s on this machine (never slower than the simplest).

Candidates: the shipped trained draft mixed with prompt n-grams, n-grams alone (each with a sized dynamic tree), and
the autoregressive loop. Each decodes the same three calibration prompts written for this module (a summary, a
question, an instruction: no benchmark's questions); the fastest total tokens/s wins, a tie within 3 % goes to the
simpler one. The choice is cached per model, device, dtype, threads and packing in `$SPECVLM_CACHE/defaults`, like
the cost table: delete the file to measure again (after a run on a busy machine, say).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from specvlm.costs import cost_key
from specvlm.options import cache_root

if TYPE_CHECKING:
    from specvlm.drafting import Drafter
    from specvlm.models import TargetModel

log = logging.getLogger("specvlm.defaults")  # the `specvlm` command shows it on a terminal only

#: bump when the candidates, the prompts or the shipped draft change, so older choices are measured again
VERSION = 2
#: (draft spec, tree name), simplest first: ties go to the earlier one
CANDIDATES: tuple[tuple[str, str], ...] = (("ngram", "ar"), ("ngram", "dynamic"), ("trained+ngram", "dynamic"))
#: a tie within this share of the best tokens/s goes to the simpler candidate
TIE = 0.03
NEW_TOKENS = 48
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
    """The measured default: a draft spec and the tree it runs with, and what each candidate reached."""

    draft: str
    tree: str
    rates: dict[str, float]  # "draft/tree" -> tokens/s over the calibration prompts


def measure(target: TargetModel, make: Callable[[str], Drafter]) -> Choice:
    """Decode the calibration prompts with every candidate on `target` (`make(spec)` builds a candidate's draft);
    the fastest (ties: the simplest)."""
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

    rates: dict[str, float] = {}
    outputs: dict[str, list[list[int]]] = {}
    for draft, tree in CANDIDATES:
        drafter = make(draft)
        run(drafter, tree, CALIBRATION[1], 8)  # warm-up
        tokens, seconds, outs = 0, 0.0, []
        for prompt in CALIBRATION:
            out, spent = run(drafter, tree, prompt, NEW_TOKENS)
            tokens, seconds = tokens + len(out), seconds + spent
            outs.append(out)
        rates[f"{draft}/{tree}"] = round(tokens / max(seconds, 1e-9), 3)
        outputs[f"{draft}/{tree}"] = outs
    first = next(iter(outputs.values()))
    if any(outs != first for outs in outputs.values()):  # greedy: every candidate must give the same tokens
        raise RuntimeError("the default-draft candidates decoded different tokens: report this as a bug")
    draft, tree = pick(rates)
    return Choice(draft, tree, rates)


def pick(rates: dict[str, float]) -> tuple[str, str]:
    """The simplest candidate within TIE of the best tokens/s: (draft spec, tree name)."""
    best = max(rates.values())
    return next((d, t) for d, t in CANDIDATES if rates.get(f"{d}/{t}", 0.0) >= (1 - TIE) * best)


def path_for(target: TargetModel) -> Path:
    return cache_root() / "defaults" / f"{cost_key(target)}-v{VERSION}.json"


def measured_default(target: TargetModel, make: Callable[[str], Drafter]) -> Choice:
    """The cached choice for this target and machine, measured on first use (each candidate decodes the
    calibration prompts once)."""
    path = path_for(target)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            return Choice(saved["draft"], saved["tree"], dict(saved["rates"]))
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            pass  # a damaged file is measured again
    log.warning("specvlm: choosing this target's default draft by measured tokens/s, once (cached in %s)", path)
    choice = measure(target, make)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"draft": choice.draft, "tree": choice.tree, "rates": choice.rates}, indent=1))
        tmp.replace(path)
    except OSError:
        log.debug("specvlm: could not cache the default draft choice in %s", path)
    return choice
