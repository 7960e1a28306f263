"""Measure a draft's acceptance vector and the target's cost by tokens scored, for `growmaps.plan`.

python -m growmaps.measure --draft ngram --limit 6 --max-new-tokens 96 --threads 1 --out acc.json

Acceptance: the target decodes the bundled news prompts greedily (tree="ar", which equals its own greedy output);
at every position the draft session, holding exactly the committed sequence, ranks its proposals for the next
token, the way the tree builders rank a node's children (top-k of the warped draft probabilities). With rank =
where the target's token sits in that ranking (none when the draft does not propose it, or past --ranks),

    acc[k] = #(rank == k) / #(rank >= k or none)        k = 0 .. ranks-1

the probability that the rank-k proposal is right given that ranks 0..k-1 were not (0 when nothing reaches k).

Costs: the median ms of `TargetModel.score` over random trees of each size after a --cost-prefix token prefill
(the cache is cut back after every forward), and the median ms of one draft call (one tree level).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.args import add_model_args, non_negative_int, positive_int, size_list
from eval.cnn_text import BUNDLED, prompt_text
from eval.common import hardware, load_decoder, run_cli, select_range
from eval.results import check_writable, markdown_table
from specvlm.drafting import DraftContext

if TYPE_CHECKING:
    from specvlm import Decoder
    from specvlm.models import TargetModel

CLI = "growmaps.measure"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {CLI}",
        description="Measure the acceptance vector acc[k] of a draft for a target on news prompts, and the "
        "target's forward cost by tokens scored; write both as JSON for `python -m growmaps.plan`.",
        epilog="example:\n"
        "  python -m growmaps.measure --draft ngram --limit 6 --max-new-tokens 96 --threads 1 --out acc.json\n"
        "  python -m growmaps.plan --acceptance acc.json --costs acc.json --sizes 4,8,16,32,64 --out tree.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_model_args(parser)
    parser.set_defaults(draft="ngram")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=str(BUNDLED), metavar="FILE", help="JSONL with an 'article' field per line")
    data.add_argument("--limit", type=positive_int, default=6, metavar="N", help="articles to use (default 6)")
    data.add_argument("--start", type=non_negative_int, default=0, metavar="I", help="first article (default 0)")
    data.add_argument("--max-new-tokens", type=positive_int, default=96, metavar="N", help="per article (default 96)")
    data.add_argument(
        "--max-article-tokens", type=positive_int, default=768, metavar="N", help="cut articles (default 768)"
    )
    data.add_argument("--ranks", type=positive_int, default=16, metavar="K", help="length of acc (default 16)")
    cost = parser.add_argument_group("costs")
    cost.add_argument(
        "--cost-sizes", type=size_list, default=[1, 4, 8, 16, 32, 64], metavar="LIST", help="default 1,4,8,16,32,64"
    )
    cost.add_argument("--cost-prefix", type=positive_int, default=300, metavar="N", help="prefill tokens (300)")
    cost.add_argument("--cost-reps", type=positive_int, default=5, metavar="N", help="timed forwards per size (5)")
    cost.add_argument("--no-costs", action="store_true", help="skip the target timing")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="FILE", help="JSON with acceptance, costs and provenance")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    out.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


# -- acceptance -----------------------------------------------------------------------------------------------------
def acceptance_vector(ranks: list[int | None], length: int) -> list[float]:
    """acc[k] = P(rank == k | rank >= k), a missing rank (None) counting as past every k."""
    counts = Counter(r for r in ranks if r is not None)
    left = len(ranks)
    out = []
    for k in range(length):
        out.append(counts[k] / left if left else 0.0)
        left -= counts[k]
    return out


def draft_ranks(dec: Decoder, ids: list[int], tokens: list[int], ranks: int) -> tuple[list[int | None], list[float]]:
    """Where each target token sits in the draft's ranking at its position, and the ms of each draft call."""
    from specvlm.sampling import Sampling, warp

    session = dec.drafter.session(DraftContext(tuple(ids), dec.target.vocab_size))
    greedy = Sampling()
    found: list[int | None] = []
    times: list[float] = []
    root = ids[-1]
    for tok in tokens:
        t0 = time.perf_counter()
        logits = session.logits([0], [root], [-1])  # [1, V]
        times.append(1000 * (time.perf_counter() - t0))
        probs = warp(logits, greedy).cpu()[0]  # [V]  what the builders rank children by
        top = probs.topk(min(ranks, probs.shape[0]))
        proposed = [int(i) for i, p in zip(top.indices, top.values, strict=True) if p > 0]
        found.append(proposed.index(tok) if tok in proposed else None)
        session.commit([0], [tok])
        root = tok
    return found, times


# -- costs ----------------------------------------------------------------------------------------------------------
def target_costs(target: TargetModel, sizes: list[int], prefix: int, reps: int, seed: int = 0) -> dict[str, float]:
    """Median ms of one tree forward by tokens scored, after a `prefix`-token prefill (cut back after each)."""
    import torch

    from specvlm.cache import GrowingCache
    from specvlm.cost_timing import tree_costs

    gen = torch.Generator().manual_seed(seed)
    cache = GrowingCache(target.model.config)  # the engine's cache, so the costs are the engine's
    target.prefill(torch.randint(0, target.vocab_size, (prefix,), generator=gen).tolist(), cache)
    return tree_costs(target, cache, sizes, reps, gen)


def load_articles(path: str, start: int, limit: int) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with file.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    picked = select_range(rows, start, None, limit)
    if not picked or any("article" not in row for row in picked):
        raise ValueError(f"{path}: need JSON lines with an 'article' field from --start {start}")
    return picked


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_writable(out, args.overwrite)
    articles = load_articles(args.data, args.start, args.limit)
    dec = load_decoder(args)

    ranks: list[int | None] = []
    draft_ms: list[float] = []
    bar = tqdm(articles, desc=CLI, unit="article", file=sys.stderr, dynamic_ncols=True)
    for row in bar:
        text, _ = prompt_text(dec, str(row["article"]), args.max_article_tokens)
        ids = dec.prompt_ids(text)
        gen = dec.generate(prompt=ids, max_new_tokens=args.max_new_tokens, tree="ar")  # the target's greedy tokens
        found, times = draft_ranks(dec, ids, gen.tokens, args.ranks)
        ranks += found
        draft_ms += times
        bar.set_postfix(positions=len(ranks), acc0=f"{acceptance_vector(ranks, 1)[0]:.2f}")
    bar.close()
    acc = acceptance_vector(ranks, args.ranks)

    costs: dict[str, Any] | None = None
    if not args.no_costs:
        print("timing target forwards by tokens scored ...", file=sys.stderr)
        costs = {
            "target_ms": target_costs(dec.target, args.cost_sizes, args.cost_prefix, args.cost_reps),
            "draft_ms_per_level": round(statistics.median(draft_ms), 3) if draft_ms else 0.0,
        }

    from specvlm.embedded import EMBEDDED_NAME
    from specvlm.growmap import compact_json

    by_rank = Counter(r for r in ranks if r is not None)
    data = Path(args.data)
    dataset = data.relative_to(Path.cwd()) if data.resolve().is_relative_to(Path.cwd()) else data
    result: dict[str, Any] = {
        "acceptance": [round(a, 6) for a in acc],
        **({"costs": costs} if costs is not None else {}),
        "counts": {
            "positions": len(ranks),
            "by_rank": [by_rank[k] for k in range(args.ranks)],
            "not_in_top_ranks": sum(r is None for r in ranks),
        },
        "provenance": {
            "draft": f"{args.draft} ({getattr(dec.drafter, 'name', type(dec.drafter).__name__)})",
            "target": args.target or f"{EMBEDDED_NAME} (embedded GGUF)",
            "dataset": f"{dataset} articles {args.start}..{args.start + len(articles) - 1}, "
            f"{args.max_new_tokens} greedy tokens each, summarization prompt",
            "hardware": hardware(dec.target),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shlex.join(["python", "-m", CLI, *argv]),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compact_json(result) + "\n", encoding="utf-8")

    r_rows = []
    miss = 1.0
    for k, a in enumerate(acc):
        r_rows.append({"rank": k, "acc[k]": round(a, 4), "P(rank k)": round(miss * a, 4), "count": by_rank[k]})
        miss *= 1 - a
    print(markdown_table(r_rows, ["rank", "acc[k]", "P(rank k)", "count"]))
    if costs is not None:
        rows = [{"tokens scored": int(n), "target ms": ms} for n, ms in costs["target_ms"].items()]
        print(markdown_table(rows, ["tokens scored", "target ms"]))
        print(f"draft ms per level: {costs['draft_ms_per_level']}")
    print(f"wrote {out} ({len(ranks)} positions)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
