"""`python -m eval.sweep`: which tree size is fastest for this target, draft and machine (tokens/s, one run).

Dynamic trees (EAGLE-2 style) over a grid of budget x depth (topk = --topk), plus chains of each depth, on the same
prompts as `eval.bench --dataset mixed`; prints a table sorted by tokens/s and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from eval.bench import load_prompts
from eval.common import (
    add_io_args,
    add_model_args,
    load_decoder,
    markdown_table,
    positive_int_list,
    result_paths,
    run_cli,
    write_json,
)
from specvlm.builders import Autoregressive, ChainTree, DynamicTree, TreeBuilder
from specvlm.trees import at_fixed_size

CLI = "sweep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mixed", help="as eval.bench: 'mixed' (default) or 'bundled'")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-files", nargs="+", metavar="FILE")
    parser.add_argument("--text-field", default="article")
    parser.add_argument("--ref-field", default="highlights")
    parser.add_argument("--max-article-tokens", type=int, default=768)
    parser.add_argument("--budgets", type=positive_int_list, default=[8, 12, 16, 24], help="dynamic tree budgets B")
    parser.add_argument("--depths", type=positive_int_list, default=[4, 6, 8], help="tree depths (also chain depths)")
    parser.add_argument("--topk", type=int, default=4, help="dynamic tree: children per expanded node")
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="draft every tree at its full budget and depth (without it, greedy trees are sized for tokens/s from the "
        "measured forward costs, so budget and depth are ceilings)",
    )
    add_model_args(parser)
    add_io_args(parser)
    return parser


def sweep_trees(args: argparse.Namespace) -> dict[str, TreeBuilder]:
    """The swept trees by row name: autoregressive, then per depth a chain and a dynamic tree of each budget."""
    trees: dict[str, TreeBuilder] = {"ar": Autoregressive()}
    for depth in args.depths:
        trees[f"chain d={depth}"] = ChainTree(depth=depth)
        for budget in args.budgets:
            trees[f"dynamic B={budget} d={depth}"] = DynamicTree(budget=budget, topk=args.topk, depth=depth)
    return {name: at_fixed_size(tree) for name, tree in trees.items()} if args.fixed_size else trees


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, _ = result_paths(args, CLI)
    dec = load_decoder(args)
    prompts = load_prompts(args, dec)
    trees = sweep_trees(args)
    dec.generate(prompt=prompts[0][1], max_new_tokens=8)  # warm-up
    totals = {name: [0, 0.0, 0] for name in trees}  # tokens, seconds, target calls
    for _, ids in tqdm(prompts, desc=CLI, unit="prompt", file=sys.stderr, dynamic_ncols=True):
        for name, tree in trees.items():
            gen = dec.generate(prompt=ids, max_new_tokens=args.max_new_tokens, tree=tree)
            t = totals[name]
            t[0] += len(gen.tokens)
            t[1] += gen.stats.seconds
            t[2] += gen.stats.target_calls
    ar_rate = totals["ar"][0] / totals["ar"][1]
    rows: list[dict[str, Any]] = [
        {
            "tree": name,
            "tokens_per_second": round(t[0] / t[1], 2),
            "speedup_vs_ar": round(t[0] / t[1] / ar_rate, 3),
            "tokens_per_call": round(t[0] / t[2], 3),
        }
        for name, t in totals.items()
    ]
    rows.sort(key=lambda r: -r["tokens_per_second"])
    print(markdown_table(rows, ["tree", "tokens_per_second", "speedup_vs_ar", "tokens_per_call"]))
    if out is not None:
        write_json(out, {"trees": rows, "prompts": len(prompts), "config": vars(args)}, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    run_cli(main)
