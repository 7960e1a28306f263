"""`python -m eval.sweep`: which tree size is fastest for this target, draft and machine (tokens/s, one run).

Dynamic trees (EAGLE-2 style) over a grid of budget x depth (topk = --topk), plus chains of each depth, or only the
budget x depth pairs given with --shapes, on the same prompts as `eval.bench --dataset mixed`; prints a table sorted
by tokens/s (with how many outputs equal the autoregressive loop's) and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from eval.args import add_io_args, add_model_args, positive_int_list
from eval.bench import load_prompts
from eval.common import load_decoder, run_cli
from eval.results import markdown_table, result_paths, write_json
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
        "--shapes",
        type=shape_list,
        default=None,
        metavar="BxD,...",
        help="only these dynamic trees, budget x depth (e.g. 32x8,64x10), instead of the grid and its chains",
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="draft every tree at its full budget and depth (without it, greedy trees are sized for tokens/s from the "
        "measured forward costs, so budget and depth are ceilings)",
    )
    add_model_args(parser)
    add_io_args(parser)
    return parser


def shape_list(text: str) -> list[tuple[int, int]]:
    """'32x8,64x10' -> [(32, 8), (64, 10)] (budget, depth)."""
    shapes = []
    for part in text.split(","):
        budget, _, depth = part.strip().partition("x")
        if not (budget.isdigit() and depth.isdigit() and int(budget) >= 1 and int(depth) >= 1):
            raise argparse.ArgumentTypeError(f"expected budget x depth pairs like 32x8,64x10, got {text!r}")
        shapes.append((int(budget), int(depth)))
    return shapes


def sweep_trees(args: argparse.Namespace) -> dict[str, TreeBuilder]:
    """The swept trees by row name: autoregressive, then per depth a chain and a dynamic tree of each budget (or
    the --shapes pairs only)."""
    trees: dict[str, TreeBuilder] = {"ar": Autoregressive()}
    for budget, depth in args.shapes or []:
        trees[f"dynamic B={budget} d={depth}"] = DynamicTree(budget=budget, topk=args.topk, depth=depth)
    for depth in [] if args.shapes else args.depths:
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
    totals = {name: [0, 0.0, 0, 0] for name in trees}  # tokens, seconds, target calls, outputs equal to ar's
    for _, ids in tqdm(prompts, desc=CLI, unit="prompt", file=sys.stderr, dynamic_ncols=True):
        reference: list[int] | None = None
        for name, tree in trees.items():  # "ar" first
            gen = dec.generate(prompt=ids, max_new_tokens=args.max_new_tokens, tree=tree)
            reference = gen.tokens if reference is None else reference
            t = totals[name]
            t[0] += len(gen.tokens)
            t[1] += gen.stats.seconds
            t[2] += gen.stats.target_calls
            t[3] += gen.tokens == reference
    ar_rate = totals["ar"][0] / totals["ar"][1]
    rows: list[dict[str, Any]] = [
        {
            "tree": name,
            "tokens_per_second": round(t[0] / t[1], 2),
            "speedup_vs_ar": round(t[0] / t[1] / ar_rate, 3),
            "tokens_per_call": round(t[0] / t[2], 3),
            "identical": f"{t[3]}/{len(prompts)}",
        }
        for name, t in totals.items()
    ]
    rows.sort(key=lambda r: -r["tokens_per_second"])
    print(markdown_table(rows, ["tree", "tokens_per_second", "speedup_vs_ar", "tokens_per_call", "identical"]))
    if out is not None:
        write_json(out, {"trees": rows, "prompts": len(prompts), "config": vars(args)}, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    run_cli(main)
