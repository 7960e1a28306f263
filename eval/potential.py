"""`python -m eval.potential`: rank drafts by their KL draft potential and check the ranking against reality.

For each draft: the potential (`specvlm.potential`: KL(P_target || Q_draft), 1 - TV, greedy agreement; teacher-forced
on the target's greedy continuations of news-summary prompts, and on the prompts themselves), and the real tokens per
target call of the specvlm decoder with that draft on the same prompts. The Spearman rank correlation of each score
with tokens per call says how well the score predicts the draft's use (a good KL has a rho near -1, the others +1).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.args import TREE_CHOICES, add_io_args, add_model_args, cli_parser, non_negative_float, positive_int
from eval.cnn_text import add_data_args, load_articles, prompt_text
from eval.common import Totals, load_decoder, run_cli
from eval.results import markdown_table, pyplot, result_paths, save_figure, write_json, write_jsonl

if TYPE_CHECKING:
    from specvlm import Decoder
    from specvlm.drafting import Drafter
    from specvlm.potential import PotentialScores

CLI = "potential"
#: the default drafts are layer-skip drafts of these depths of the embedded 30-layer target (scaled for others)
EMBEDDED_LAYERS = 30
LAYER_SKIPS = (8, 16, 24, 28, 29)
#: new tokens per article of the full study (--full)
FULL_NEW_TOKENS = 64
#: the quick default (a plain run, no --full): this many articles, this many new tokens each, and these depths (a
#: weak, a middle and the strongest layer-skip draft, so the ranking still spans the range) with the trained draft;
#: every draft decodes every article, so the run grows with articles x new tokens x drafts
QUICK_ARTICLES = 4
QUICK_NEW_TOKENS = 32
QUICK_SKIPS = (8, 24, 29)
#: the shipped trained draft's spec; ranked when this specvlm version knows it
TRAINED = "trained"
#: scores in the output (name -> where it comes from); Spearman rho of each with tokens per call
SCORES = ("kl", "kl_prompt", "acceptance", "acceptance_prompt", "agreement", "agreement_prompt")

DESCRIPTION = """\
Rank drafts by their KL draft potential (KL(P_target || Q_draft), 1 - TV, greedy agreement, teacher-forced), and
measure each draft's real tokens per target call on the same prompts, so the ranking can be checked (Spearman)."""

EPILOG = f"""\
examples:
  python -m eval.{CLI}                                      # quick: a few articles and drafts
  python -m eval.{CLI} --full --out results/potential.json  # the full study: all articles x all drafts
  python -m eval.{CLI} --limit 1 --max-new-tokens 8 --out results/potential-smoke.json
  python -m eval.{CLI} --draft layerskip:24 --draft ngram --draft ./my-draft --limit 20 --out results/potential.json

A plain run is quick: the first {QUICK_ARTICLES} articles (unless --limit or --end is given), {QUICK_NEW_TOKENS} new
tokens each, and with no --draft {", ".join(f"layerskip:{k}" for k in QUICK_SKIPS)} and '{TRAINED}'. --full runs
the full study: every article of the range (all 40 bundled ones unless --limit/--end say otherwise),
{FULL_NEW_TOKENS} new tokens each, and with no --draft the whole default set:
{", ".join(f"layerskip:{k}" for k in LAYER_SKIPS)} and '{TRAINED}'. Depths are scaled to
the target's; '{TRAINED}' is ranked when specvlm ships it. Each draft decodes the same prompts greedily
(tokens per call, lossless, so every draft yields the target's own greedy continuation); those continuations are
the teacher-forced sequences of the potential. `kl` / `acceptance` / `agreement` are means over the continuation
positions, the `_prompt` columns over the prompt positions (the seed study's score).
"""


@dataclass
class Measured:
    """One draft's decoding run over the prompts: totals and the generated tokens."""

    totals: Totals = field(default_factory=Totals)
    outputs: list[list[int]] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(CLI, DESCRIPTION, EPILOG)
    add_data_args(parser)
    add_model_args(parser, several_drafts=True)
    add_io_args(parser)
    parser.set_defaults(max_new_tokens=None)  # set by apply_quick_default
    for action in parser._actions:  # the shared flags' help names their own defaults
        if action.dest == "max_new_tokens":
            action.help = f"default: {QUICK_NEW_TOKENS}, or {FULL_NEW_TOKENS} with --full"
        elif action.dest == "limit":
            action.help = f"run at most N articles (default: {QUICK_ARTICLES}, or all of them with --full or --end)"
    group = parser.add_argument_group("potential")
    group.add_argument(
        "--score-temperature",
        type=non_negative_float,
        default=1.0,
        metavar="T",
        help="temperature of both distributions in the KL and 1 - TV (default: 1.0; must be > 0)",
    )
    group.add_argument(
        "--continuations",
        choices=("target", "prompt"),
        default="target",
        help="'target': score the target's greedy continuations and the prompts (default); 'prompt': prompts only",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=4, metavar="N", help="sequences per target forward (default: 4)"
    )
    group.add_argument("--tree", choices=TREE_CHOICES, help="tree for measuring tokens per call (default: default)")
    group.add_argument(
        "--full",
        action="store_true",
        help=f"the full study: every article (all 40 bundled ones; --limit/--end still apply), {FULL_NEW_TOKENS} new "
        f"tokens each, all {len(LAYER_SKIPS) + 1} default drafts (default: the quick run, {QUICK_ARTICLES} articles "
        f"x {QUICK_NEW_TOKENS} tokens x {len(QUICK_SKIPS) + 1} drafts; much slower, as every draft decodes every "
        "article)",
    )
    group.add_argument("--no-measure", action="store_true", help="scores only: skip the decoding runs")
    group.add_argument("--plot", metavar="PNG", help="score vs tokens per call scatter (default: next to --out)")
    return parser


# -- drafts --------------------------------------------------------------------------------------------------------
def default_drafts(layers: int, full: bool = True) -> list[str]:
    """The default layer-skip depths (of 30 layers; the quick ones unless `full`) scaled to `layers`, and the trained
    draft."""
    skips = LAYER_SKIPS if full else QUICK_SKIPS
    ks = sorted({max(1, min(layers - 1, round(k * layers / EMBEDDED_LAYERS))) for k in skips})
    return [*(f"layerskip:{k}" for k in ks), TRAINED]


def apply_quick_default(args: argparse.Namespace) -> bool:
    """Without --full: the first QUICK_ARTICLES articles unless --limit or --end is given (sets `args.limit`), and
    QUICK_NEW_TOKENS unless --max-new-tokens is (FULL_NEW_TOKENS with --full). True when the run is cut in any way
    (those articles, those tokens, or with no --draft the quick draft set)."""
    if args.max_new_tokens is None:
        args.max_new_tokens = FULL_NEW_TOKENS if args.full else QUICK_NEW_TOKENS
        cut = not args.full
    else:
        cut = False
    if args.full:
        return False
    if args.limit is None and args.end is None:
        args.limit = QUICK_ARTICLES
        cut = True
    return cut or not args.draft


def load_drafts(specs: list[str], dec: Decoder, explicit: bool) -> tuple[dict[str, Drafter], dict[str, str]]:
    """({name: drafter}, {name: why skipped}); a default draft that cannot be made (e.g. no trained draft) is skipped,
    an explicit one is an error."""
    import specvlm
    from drafters.build import build
    from specvlm.drafting import Drafter, for_target
    from specvlm.options import LoadOptions

    opts = LoadOptions(dtype=dec.target.dtype, device=dec.target.device)
    drafts: dict[str, Drafter] = {}
    skipped: dict[str, str] = {}
    for spec in dict.fromkeys(specs):
        try:
            drafter = for_target(build(spec, dec.target, opts), dec.target.image_token_id)
        except specvlm.SpecVLMError as err:
            if explicit:
                raise
            skipped[spec] = " ".join(str(err).split())
            continue
        if type(drafter).sequence_logits is Drafter.sequence_logits:
            raise specvlm.ConfigError(f"draft {spec!r} cannot score whole sequences, so it has no KL potential")
        drafts[spec] = drafter
    return drafts, skipped


# -- statistics ----------------------------------------------------------------------------------------------------
def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson correlation of the ranks); None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


# -- the run -------------------------------------------------------------------------------------------------------
def measure(
    dec: Decoder, name: str, prompts: list[tuple[str, list[int]]], args: argparse.Namespace, jsonl: Path, bar: tqdm
) -> Measured:
    """Greedy decoding with the draft over the prompts: tokens per target call (and the outputs); `bar` counts the
    prompts decoded."""
    run = Measured()
    bar.set_postfix_str(name)
    for sid, ids in prompts:
        gen = dec.generate(prompt=ids, max_new_tokens=args.max_new_tokens, tree=args.tree)
        run.totals.add(gen)
        run.outputs.append(gen.tokens)
        record = {
            "draft": name,
            "id": sid,
            "new_tokens": gen.stats.new_tokens,
            "target_calls": gen.stats.target_calls,
            "seconds": round(gen.stats.seconds, 4),
        }
        write_jsonl(jsonl, [record], append=True)
        bar.update()
    return run


def draft_row(score: PotentialScores, run: Measured | None, identical: int | None) -> dict[str, Any]:
    main, prompt = score.main, score.prompt
    return {
        "name": score.name,
        "kl": round(main.kl, 4),
        "kl_prompt": round(prompt.kl, 4),
        "acceptance": round(main.acceptance, 4),
        "acceptance_prompt": round(prompt.acceptance, 4),
        "agreement": round(main.agreement, 4),
        "agreement_prompt": round(prompt.agreement, 4),
        "positions": main.positions,
        "positions_prompt": prompt.positions,
        "tokens_per_call": _round(run.totals.tokens_per_call if run is not None else None, 3),
        "tok_s": _round(run.totals.tok_s if run is not None else None, 2),
        "new_tokens": None if run is None else run.totals.tokens,
        "identical": identical,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import specvlm
    from specvlm.api import Decoder as DecoderClass
    from specvlm.potential import potentials

    if args.score_temperature <= 0:
        raise specvlm.ConfigError("--score-temperature must be > 0 (at 0 the score is the greedy agreement column)")
    out, jsonl = result_paths(args, CLI)
    quick = apply_quick_default(args)
    articles = load_articles(args)
    dec = load_decoder(argparse.Namespace(**{**vars(args), "draft": None}))  # the target (drafts come below)
    if dec.target.image_token_id is not None:
        raise specvlm.ConfigError(
            "eval.potential scores text prompts (news articles); for a llava target call "
            "specvlm.potential.potentials(target, drafts, prompts, model_inputs=[image inputs per prompt])"
        )
    from drafters.layerskip import decoder_layers

    specs = args.draft or default_drafts(decoder_layers(dec.target.model), full=args.full)
    drafts, skipped = load_drafts(specs, dec, explicit=bool(args.draft))
    for name, why in skipped.items():
        print(f"note: skipped draft {name!r}: {why}", file=sys.stderr)
    if not drafts:
        raise specvlm.ConfigError("no draft to score")
    prompts = [(a.id, dec.prompt_ids(prompt_text(dec, a.text, args.max_article_tokens)[0])) for a in articles]
    write_jsonl(jsonl, [])

    runs: dict[str, Measured] = {}
    if not args.no_measure:
        total = len(drafts) * len(prompts)
        with tqdm(total=total, desc="decode", unit="prompt", file=sys.stderr, dynamic_ncols=True) as bar:
            for name, drafter in drafts.items():
                decoder = DecoderClass(dec.target, drafter, dec.default_tree)
                runs[name] = measure(decoder, name, prompts, args, jsonl, bar)
    first = next(iter(runs.values()), None)
    continuations: Any = args.continuations
    if first is not None and args.continuations == "target":
        continuations = first.outputs  # greedy decoding is lossless: the target's own greedy continuations
    scores = potentials(
        dec.target,
        drafts,
        [ids for _, ids in prompts],
        continuations=continuations,
        temperature=args.score_temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    rows = []
    for score in scores:
        run = runs.get(score.name)
        same = (
            None
            if run is None or first is None
            else sum(a == b for a, b in zip(run.outputs, first.outputs, strict=True))
        )
        rows.append(draft_row(score, run, same))
    write_jsonl(jsonl, [{"potential": row} for row in rows], append=True)
    measured = [r for r in rows if r["tokens_per_call"] is not None]
    rho = {key: spearman([r[key] for r in measured], [r["tokens_per_call"] for r in measured]) for key in SCORES}
    columns = ["name", *SCORES, "tokens_per_call", "tok_s"]
    print(markdown_table(rows, columns))
    print("spearman rho with tokens/call: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rho.items()))
    config = {k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")}
    config.update(
        drafts_resolved=list(drafts),
        skipped=skipped,
        tree_resolved=str(getattr(dec.default_tree, "name", "default")) if args.tree is None else args.tree,
        device_resolved=str(dec.target.device),
        dtype_resolved=str(dec.target.dtype).replace("torch.", ""),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if out is not None:
        result = {"drafts": rows, "spearman": rho, "prompts": len(prompts), "config": config}
        write_json(out, result, overwrite=args.overwrite)
        if measured:
            _plot(measured, rho, Path(args.plot) if args.plot else out.with_suffix(".png"))
    print(f"records: {jsonl}" + (f"  summary: {out}" if out is not None else ""), file=sys.stderr)
    if quick:
        print(
            f"quick run ({len(prompts)} articles x {args.max_new_tokens} tokens x {len(drafts)} drafts); the full "
            f"study (every article, {FULL_NEW_TOKENS} tokens, all {len(LAYER_SKIPS) + 1} default drafts): "
            f"python -m eval.{CLI} --full",
            file=sys.stderr,
        )
    return 0


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _plot(rows: list[dict[str, Any]], rho: dict[str, float | None], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    keys = ("kl", "kl_prompt", "acceptance", "agreement")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), sharey=True)
    for ax, key in zip(axes, keys, strict=True):
        xs, ys = [r[key] for r in rows], [r["tokens_per_call"] for r in rows]
        ax.scatter(xs, ys, color="#2a6")
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(key)
        ax.set_title(f"rho = {_fmt(rho.get(key))}", fontsize=9)
    axes[0].set_ylabel("tokens per target call")
    fig.suptitle("draft potential vs measured tokens per call", fontsize=10)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
