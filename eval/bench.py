"""`python -m eval.bench`: specvlm against what users would pick instead, same prompts, same process, one run.

Methods: HF greedy `generate`, HF prompt lookup (`prompt_lookup_num_tokens`), HF assisted generation with the same
draft (`assistant_model=`, when the draft is a model), and specvlm with each tree. Tokens/s count the whole call
(prefill included) for every method alike; `identical` compares with HF greedy `generate` (greedy runs only).
Under `accelerate launch` the prompts are shared out over the processes (eval/shard.py); every method still runs
on the same prompts in the same process, and rates are per process (tokens over summed call times).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.args import TREE_CHOICES, add_io_args, add_model_args, check_sampling
from eval.cnn_text import load_articles, prompt_text
from eval.common import hf_run, load_decoder, run_cli, select_range
from eval.methods import SPECVLM, Method
from eval.results import markdown_table, pyplot, result_paths, save_figure, write_json, write_jsonl
from eval.shard import Placed, join, merge
from specvlm.draft_spec import spec_list_arg

CLI = "bench"
HF_METHODS = ("hf_generate", "hf_prompt_lookup", "hf_assisted", "hf_early_exit")
HELDOUT = Path(__file__).parent / "data" / "heldout_prompts.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m eval.bench --limit 8 --max-new-tokens 128 --trees ar,chain,static,dynamic,opt",
    )
    parser.add_argument(
        "--dataset",
        default="bundled",
        help="'bundled' news sample (default), 'mixed' (news articles interleaved with the bundled held-out "
        "questions and instructions, eval/data/heldout_prompts.jsonl), or a hub dataset id",
    )
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-files", nargs="+", metavar="FILE", help="local parquet/json/jsonl files")
    parser.add_argument("--text-field", default="article")
    parser.add_argument("--ref-field", default="highlights")
    parser.add_argument("--max-article-tokens", type=int, default=768)
    parser.add_argument(
        "--trees",
        default="ar,chain,static,dynamic,opt",
        help=f"comma-separated specvlm trees from {', '.join(TREE_CHOICES)} (default: all)",
    )
    parser.add_argument(
        "--hf", default=",".join(HF_METHODS), help=f"comma-separated HF baselines from {', '.join(HF_METHODS)}"
    )
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10, help="HF prompt_lookup_num_tokens")
    parser.add_argument("--early-exit", type=int, default=4, help="HF assistant_early_exit layer (hf_early_exit)")
    parser.add_argument(
        "--drafts",
        metavar="A,B",
        type=spec_list_arg,
        help="compare several drafts on the same target in this run, e.g. 'trained,ngram,trained+ngram' "
        "(methods become specvlm-<tree>[<draft>]; --draft is the first one's default)",
    )
    parser.add_argument("--T", "--temperature", dest="temperature", type=float, default=0.0)
    parser.add_argument("--P", "--top-p", dest="top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--followers", action="store_true", help="add the target's follower tokens to the draft")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of tokens/s (default: next to --out)")
    parser.add_argument(
        "--compare-unpacked",
        action="store_true",
        help="also run every specvlm method with plain (unpacked) target weights: rows <method>-unpacked",
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="chain, dynamic and opt trees draft their full --depth / budget / nodes instead of sizing each greedy "
        "tree for tokens/s from the measured forward costs (tree shapes then repeat exactly from run to run)",
    )
    parser.add_argument(
        "--compare-fixed",
        action="store_true",
        help="also run the chain, dynamic and opt trees at their fixed sizes (not sized for tokens/s from the "
        "measured forward costs): rows <method>-fixed",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where each specvlm method's step time goes (ms per target call)"
    )
    add_model_args(parser)
    add_io_args(parser)
    return parser


def load_prompts(args: argparse.Namespace, dec: Any) -> list[tuple[str, list[int]]]:
    """(id, prompt ids) for the selected samples; 'mixed' alternates articles with held-out questions/instructions."""
    if args.dataset != "mixed":
        articles = load_articles(args)
        return [(a.id, dec.prompt_ids(prompt_text(dec, a.text, args.max_article_tokens)[0])) for a in articles]
    news = load_articles(argparse.Namespace(**{**vars(args), "dataset": "bundled", "start": 0, "end": None,
                                               "limit": None}))  # fmt: skip
    with HELDOUT.open(encoding="utf-8") as fh:
        asks = [json.loads(line) for line in fh if line.strip()]
    mixed: list[tuple[str, list[int]]] = []
    for i in range(max(len(news), len(asks))):
        if i < len(news):
            mixed.append((news[i].id, dec.prompt_ids(prompt_text(dec, news[i].text, args.max_article_tokens)[0])))
        if i < len(asks):
            mixed.append((asks[i]["id"], dec.prompt_ids(asks[i]["prompt"])))
    return select_range(mixed, args.start, args.end, args.limit)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_sampling(args)
    trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    bad = [t for t in trees if t not in TREE_CHOICES]
    hf = [m.strip() for m in args.hf.split(",") if m.strip()]
    bad += [m for m in hf if m not in HF_METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}: trees are {TREE_CHOICES}, HF baselines {HF_METHODS}")
    out, jsonl = result_paths(args, CLI)
    shard = join(args.device)  # under `accelerate launch`: this process's share of the prompts
    dec = load_decoder(args)
    prompts = load_prompts(args, dec)
    records = shard.part(jsonl)  # the JSONL itself for one process
    write_jsonl(records, [])
    decoders: dict[str | None, Any] = {None: dec}  # draft spec (None: the decoder's default) -> decoder
    if args.drafts:
        from drafters.build import build
        from specvlm import Decoder
        from specvlm.options import LoadOptions

        opts = LoadOptions(dtype=dec.target.dtype, device=dec.target.device)
        decoders = {n: Decoder(dec.target, build(n, dec.target, opts)) for n in args.drafts}
    methods = select_methods(args, dec, hf, trees, list(decoders))
    # sums, profiles and skips by label (the rows' and records' method name; what the shards merge)
    totals: dict[str, dict[str, float]] = {
        m.label: {"tokens": 0, "seconds": 0.0, "calls": 0, "identical": 0} for m in methods
    }
    skipped: set[str] = set()
    profile: dict[str, dict[str, float]] = {}  # method -> seconds per part of the step
    placed: list[Placed] = []
    mine = shard.take(prompts)
    for d in decoders.values():  # warm-up
        d.generate(prompt=mine[0][1][1] if mine else prompts[0][1], max_new_tokens=8)
    if args.temperature == 0 and not args.fixed_size:  # greedy trees sized for tokens/s read the cost table
        dec.target.forward_costs()  # measured once, outside the timings
        if args.compare_unpacked:  # plain weights have their own table
            with dec.target.unpacked():
                dec.target.forward_costs()
    for pos, (sid, ids) in tqdm(mine, desc=shard.label(CLI), unit="prompt", file=sys.stderr, dynamic_ncols=True):
        reference: list[int] | None = None
        for method in methods:
            label = method.label
            run = run_method(method, args, dec, decoders, ids)
            if run is None:
                skipped.add(label)
                continue
            tokens, seconds, calls, parts = run
            for part, secs in parts.items():
                profile.setdefault(label, {}).setdefault(part, 0.0)
                profile[label][part] += secs
            if method.hf == "hf_generate":
                reference = tokens
            same = reference is not None and tokens == reference
            t = totals[label]
            t["tokens"] += len(tokens)
            t["seconds"] += seconds
            t["calls"] += calls
            t["identical"] += same
            record = {
                "id": sid,
                "method": label,
                "new_tokens": len(tokens),
                "seconds": round(seconds, 4),
                "target_calls": calls or None,
                "identical": same if args.temperature == 0 else None,
            }
            placed.append((pos, record))
            write_jsonl(records, [record], append=True)
    merged = merge(shard, jsonl, placed, (totals, profile, skipped))  # the main process gets every shard's sums
    if merged is None:
        return 0  # another process reports
    totals, profile, skipped = merged
    rows = summary_rows([m.label for m in methods if m.label not in skipped], totals, len(prompts), args.temperature)
    print(
        markdown_table(rows, ["method", "tokens_per_second", "speedup", "tokens_per_call", "identical", "new_tokens"])
    )
    if args.profile:
        print(markdown_table(profile_rows(profile, totals), PROFILE_COLUMNS))
    if skipped:
        print(f"skipped: {', '.join(sorted(skipped))} (needs a draft model)", file=sys.stderr)
    config = {k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")}
    config["device_resolved"] = str(dec.target.device)
    config["draft_resolved"] = [getattr(d.drafter, "name", type(d.drafter).__name__) for d in decoders.values()]
    if out is not None:
        summary = {"methods": rows, "config": config, "prompts": len(prompts)}
        if args.profile:
            summary["profile"] = profile_rows(profile, totals)
        write_json(out, summary, overwrite=args.overwrite)
        _plot(rows, Path(args.plot) if args.plot else out.with_suffix(".png"))
    return 0


def select_methods(
    args: argparse.Namespace, dec: Any, hf: list[str], trees: list[str], drafts: list[str | None]
) -> list[Method]:
    """The HF baselines, then every tree with every draft; with --compare-unpacked / --compare-fixed each specvlm
    method again with plain weights / at its fixed size."""
    from specvlm.trees import make_tree

    methods = [*(Method(m) for m in hf), *(Method(SPECVLM, t, d) for d in drafts for t in trees)]
    if args.compare_unpacked:
        if dec.target.packed is None:
            raise ValueError("--compare-unpacked: this target is not packed (see --pack-linears)")
        methods += [dataclasses.replace(m, packed=False) for m in methods if m.hf is None]
    if args.compare_fixed and args.fixed_size:
        raise ValueError("--compare-fixed adds fixed-size rows to sized ones: drop --fixed-size")
    if args.compare_fixed:
        sized = [m for m in methods if m.tree is not None and make_tree(m.tree).hardware_aware]
        methods += [dataclasses.replace(m, fixed=True) for m in sized]
    return methods


def run_method(
    method: Method, args: argparse.Namespace, dec: Any, decoders: dict[str | None, Any], ids: list[int]
) -> tuple[list[int], float, int, dict[str, float]] | None:
    """One prompt with one method (`dec`: the loaded decoder, for the HF baselines; `decoders`: by draft spec):
    (new tokens, seconds, target calls, seconds by part of the step), or None when an HF baseline cannot run with
    this draft."""
    from specvlm.trees import at_fixed_size, make_tree

    if method.hf is not None:
        got = hf_run(
            dec,
            method.hf,
            ids,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            prompt_lookup_tokens=args.prompt_lookup_tokens,
            early_exit=args.early_exit,
        )
        if got is None:
            return None
        tokens, seconds = got
        return tokens, seconds, (len(tokens) if method.hf == "hf_generate" else 0), {}
    assert method.tree is not None  # a specvlm method
    tree = at_fixed_size(make_tree(method.tree)) if args.fixed_size or method.fixed else method.tree
    with contextlib.nullcontext() if method.packed else dec.target.unpacked():
        gen = decoders[method.draft].generate(
            prompt=ids,
            max_new_tokens=args.max_new_tokens,
            tree=tree,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    return gen.tokens, gen.stats.seconds, gen.stats.target_calls, gen.stats.split()


def summary_rows(
    labels: list[str], totals: dict[str, dict[str, float]], prompts: int, temperature: float
) -> list[dict[str, Any]]:
    """One table row per method: tokens/s, speedup over HF generate, tokens per call, identical outputs."""
    base = totals.get("hf_generate")
    base_rate = base["tokens"] / base["seconds"] if base and base["seconds"] else None
    rows = []
    for label in labels:
        t = totals[label]
        rate = t["tokens"] / t["seconds"] if t["seconds"] else 0.0
        rows.append(
            {
                "method": label,
                "tokens_per_second": round(rate, 3),
                "speedup": round(rate / base_rate, 3) if base_rate else None,
                "tokens_per_call": round(t["tokens"] / t["calls"], 3) if t["calls"] else None,
                "identical": (f"{int(t['identical'])}/{prompts}" if temperature == 0 and base else None),
                "new_tokens": int(t["tokens"]),
            }
        )
    return rows


PROFILE_COLUMNS = ["method", "draft_ms", "target_ms", "verify_ms", "cache_ms", "other_ms", "step_ms", "overhead"]


def profile_rows(profile: dict[str, dict[str, float]], totals: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """ms per target call for each part; overhead = verify + cache + other (no model forward) as a share of a step."""
    rows = []
    for method, parts in profile.items():
        calls = max(1, int(totals[method]["calls"]))
        step = sum(v for k, v in parts.items() if k != "prefill")
        row: dict[str, Any] = {"method": method}
        for k in ("draft", "target", "verify", "cache", "other"):
            row[f"{k}_ms"] = round(1000 * parts[k] / calls, 2)
        row["step_ms"] = round(1000 * step / calls, 2)
        row["overhead"] = f"{(parts['verify'] + parts['cache'] + parts['other']) / max(step, 1e-9):.1%}"
        rows.append(row)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["method"] for r in rows]
    ax.bar(
        names, [r["tokens_per_second"] for r in rows], color=["#999" if n.startswith("hf") else "#2a6" for n in names]
    )
    ax.set_ylabel("tokens / s")
    ax.set_title("specvlm vs HF baselines (same prompts, one run)")
    ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
