"""News summarization benchmark: the autoregressive baseline vs specvlm on the same prompts, in one process.

python -m eval.cnn_text --limit 2 --max-new-tokens 16 --out /tmp/cnn.json --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.args import (
    add_io_args,
    add_model_args,
    add_tree_args,
    check_sampling,
    cli_parser,
    positive_int,
    tree_from_args,
)
from eval.common import Totals, load_decoder, run_cli, select_range
from eval.results import describe_tree, markdown_table, result_paths, write_json, write_jsonl
from eval.shard import Placed, join, merge

if TYPE_CHECKING:
    from specvlm import Decoder, Generation, TreeBuilder

CLI = "cnn_text"
BUNDLED = Path(__file__).parent / "data" / "news_sample.jsonl"
PROMPT = "Summarize the following news article in three sentences.\n\n{article}"
DATA_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}

DESCRIPTION = """\
Summarize news articles with the target alone (the autoregressive baseline) and with specvlm tree speculative
decoding, check that both give identical tokens, and report tokens/s, speedup and tokens per target call."""

EPILOG = f"""\
examples:
  python -m eval.{CLI} --limit 2 --max-new-tokens 16 --out /tmp/cnn.json --overwrite
  python -m eval.{CLI} --target HuggingFaceTB/SmolLM2-1.7B-Instruct --draft HuggingFaceTB/SmolLM2-135M-Instruct \\
      --dataset cnn_dailymail --tree opt --nodes 60 --max-new-tokens 128 --limit 200 --out results/cnn.json
  python -m eval.{CLI} --data-files test-00000-of-00001.parquet --tree dynamic --B 32 --out results/cnn.json

With no --dataset or --data-files the bundled 40-article sample (eval/data/news_sample.jsonl) is used, so the
benchmark runs offline. Each article is cut to --max-article-tokens before the chat template is applied; the
baseline and specvlm then decode the same prompt ids, and `identical` counts samples with equal tokens (expected
for all of them at --T 0 in float32). Tokens/s include prefill; the JSON summary also gives decode-only rates.
"""


@dataclass(frozen=True)
class Article:
    id: str
    text: str
    reference: str | None


@dataclass
class Run:
    samples: int = 0
    skipped: int = 0
    identical: int = 0
    baseline: Totals = field(default_factory=Totals)
    spec: Totals = field(default_factory=Totals)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """--dataset, --dataset-config, --split, --data-files, --text-field, --ref-field, --max-article-tokens."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="bundled",
        metavar="NAME",
        help="'bundled' (eval/data/news_sample.jsonl, default), 'cnn_dailymail', or another hub dataset id",
    )
    data.add_argument(
        "--dataset-config", metavar="NAME", help="hub dataset config (default: 3.0.0 for cnn_dailymail, else none)"
    )
    data.add_argument("--split", default="test", help="hub dataset split (default: test)")
    data.add_argument(
        "--data-files", nargs="+", metavar="FILE", help="local .parquet/.json/.jsonl/.csv files instead of --dataset"
    )
    data.add_argument("--text-field", default="article", metavar="COL", help="article column (default: article)")
    data.add_argument("--ref-field", default="highlights", metavar="COL", help="summary column (default: highlights)")
    data.add_argument(
        "--max-article-tokens",
        type=positive_int,
        default=768,
        metavar="N",
        help="cut articles to N tokens before the chat template (default: 768)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(CLI, DESCRIPTION, EPILOG)
    add_data_args(parser)
    add_model_args(parser)
    add_tree_args(parser)
    add_io_args(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--no-baseline", action="store_true", help="skip the autoregressive baseline run")
    run.add_argument("--save-text", action="store_true", help="also store the baseline text and the reference")
    return parser


# -- data ----------------------------------------------------------------------------------------------------------
def load_articles(args: argparse.Namespace) -> list[Article]:
    """The selected range of articles from the bundled sample, local files, or a hub dataset."""
    if args.data_files:
        rows: Any = _load_files(args.data_files)
        source = " ".join(args.data_files)
    elif args.dataset == "bundled":
        with BUNDLED.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        source = str(BUNDLED)
    else:
        rows = _load_hub(args.dataset, args.dataset_config, args.split)
        source = args.dataset
    if len(rows) == 0:
        raise _config_error(f"{source} holds no rows")
    first = rows[0]
    if args.text_field not in first:
        raise _config_error(
            f"{source} has no column {args.text_field!r} (columns: {', '.join(first)}): set --text-field"
        )
    picked = select_range(rows, args.start, args.end, args.limit)
    if not picked:
        raise _config_error(f"--start {args.start} / --end {args.end} select no rows: {source} has {len(rows)}")
    out = []
    for offset, row in enumerate(picked):
        ref = row.get(args.ref_field)  # optional: only stored with --save-text
        text = row[args.text_field]
        out.append(Article(str(row.get("id", args.start + offset)), "" if text is None else str(text), ref))
    return out


def _config_error(message: str) -> Exception:
    import specvlm

    return specvlm.ConfigError(message)


def _load_files(files: list[str]) -> Any:
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"data file not found: {name}")
    kinds = {DATA_BUILDERS.get("".join(Path(name).suffixes[-1:]).lower()) for name in files}
    if None in kinds or len(kinds) != 1:
        raise _config_error(
            f"--data-files must all be one kind of {', '.join(sorted(DATA_BUILDERS))} file, got: {' '.join(files)}"
        )
    import datasets

    try:
        return datasets.load_dataset(kinds.pop(), data_files=files, split="train")
    except Exception as err:  # datasets raises many unrelated types for a bad file
        raise _config_error(f"cannot read --data-files: {str(err).splitlines()[0] if str(err) else err!r}") from err


def _load_hub(name: str, config: str | None, split: str) -> Any:
    import datasets

    if config is None and name.rstrip("/").split("/")[-1] == "cnn_dailymail":
        config = "3.0.0"
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # network, auth, unknown name or split: all mean "use local data"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _config_error(
            f"cannot load dataset {name!r} (split {split!r}) from the hub: {first}. Without network, pass "
            "--data-files with local parquet/json files, or leave --dataset out to use the bundled sample"
        ) from err


# -- prompts -------------------------------------------------------------------------------------------------------
def prompt_text(dec: Decoder, article: str, max_tokens: int) -> tuple[str, bool]:
    """The summarization request with the article cut to `max_tokens` tokens; (text, was it cut)."""
    tok = dec.tokenizer
    if tok is None:
        raise _config_error("the target has no tokenizer: this benchmark needs one to build text prompts")
    ids = tok(article, add_special_tokens=False)["input_ids"]
    cut = len(ids) > max_tokens
    if cut:
        article = tok.decode(ids[:max_tokens], skip_special_tokens=True)
    return PROMPT.format(article=article.strip()), cut


# -- the run -------------------------------------------------------------------------------------------------------
def generate(dec: Decoder, ids: list[int], tree: TreeBuilder | str | None, args: argparse.Namespace, n: int) -> Any:
    return dec.generate(
        prompt=ids, tree=tree, max_new_tokens=n, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


def rate(gen: Generation | None) -> float | None:
    return round(gen.stats.tokens_per_second, 3) if gen is not None and gen.stats.seconds > 0 else None


def sample_record(
    art: Article, ids: list[int], cut: bool, spec: Generation, base: Generation | None, save_text: bool
) -> dict[str, Any]:
    spec_rate, base_rate = rate(spec), rate(base)
    record: dict[str, Any] = {
        "id": art.id,
        "prompt_tokens": len(ids),
        "truncated": cut,
        "new_tokens": spec.stats.new_tokens,
        "identical": None if base is None else spec.tokens == base.tokens,
        "baseline_tok_s": base_rate,
        "specvlm_tok_s": spec_rate,
        "speedup": round(spec_rate / base_rate, 3) if spec_rate and base_rate else None,
        "mean_accepted": round(spec.stats.mean_accepted, 3),
        "target_calls": spec.stats.target_calls,
        "mean_tree_size": round(spec.stats.mean_tree_size, 2),
        "baseline_new_tokens": None if base is None else base.stats.new_tokens,
        "baseline_seconds": None if base is None else round(base.stats.seconds, 4),
        "specvlm_seconds": round(spec.stats.seconds, 4),
        "baseline_prefill_s": None if base is None else round(base.stats.prefill_s, 4),
        "specvlm_prefill_s": round(spec.stats.prefill_s, 4),
        "specvlm_split_s": {k: round(v, 4) for k, v in spec.stats.split().items()},
        "text": spec.text,
    }
    if save_text:
        record["baseline_text"] = None if base is None else base.text
        record["reference"] = art.reference
    return record


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summary(run: Run, baseline: bool) -> dict[str, Any]:
    return {
        "samples": run.samples,
        "skipped": run.skipped,
        "identical": run.identical if baseline else None,
        "baseline_tokens": run.baseline.tokens if baseline else None,
        "baseline_seconds": round(run.baseline.seconds, 3) if baseline else None,
        "baseline_tok_s": _round(run.baseline.tok_s) if baseline else None,
        "baseline_decode_tok_s": _round(run.baseline.decode_tok_s) if baseline else None,
        "specvlm_tokens": run.spec.tokens,
        "specvlm_seconds": round(run.spec.seconds, 3),
        "specvlm_tok_s": _round(run.spec.tok_s),
        "specvlm_decode_tok_s": _round(run.spec.decode_tok_s),
        "speedup": _ratio(run.spec.tok_s, run.baseline.tok_s) if baseline else None,
        "decode_speedup": _ratio(run.spec.decode_tok_s, run.baseline.decode_tok_s) if baseline else None,
        "tokens_per_call": _round(run.spec.tokens_per_call),
        "mean_tree_size": _round(run.spec.tree_size, 2),
    }


def table(run: Run, tree_name: str, baseline: bool) -> str:
    rows = []
    if baseline:
        rows.append(
            {
                "method": "ar (baseline)",
                "samples": run.samples,
                "identical": "-",
                "new tokens": run.baseline.tokens,
                "tok/s": run.baseline.tok_s,
                "speedup": 1.0,
                "tokens/call": run.baseline.tokens_per_call,
                "tree size": run.baseline.tree_size,
            }
        )
    rows.append(
        {
            "method": tree_name,
            "samples": run.samples,
            "identical": f"{run.identical}/{run.samples}" if baseline else "-",
            "new tokens": run.spec.tokens,
            "tok/s": run.spec.tok_s,
            "speedup": _ratio(run.spec.tok_s, run.baseline.tok_s) if baseline else None,
            "tokens/call": run.spec.tokens_per_call,
            "tree size": run.spec.tree_size,
        }
    )
    columns = ["method", "samples", "identical", "new tokens", "tok/s", "speedup", "tokens/call", "tree size"]
    return markdown_table(rows, columns)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tree = tree_from_args(args)  # flag mistakes fail before anything loads
    check_sampling(args)
    out, jsonl = result_paths(args, CLI)
    articles = load_articles(args)
    shard = join(args.device)  # under `accelerate launch`: this process's share of the articles
    dec = load_decoder(args)
    from specvlm import PromptError
    from specvlm.trees import make_tree

    builder = make_tree(tree, dec.default_tree)
    tree_name = describe_tree(builder)
    baseline = not args.no_baseline
    part = shard.part(jsonl)  # the JSONL itself for one process
    write_jsonl(part, [])  # create / truncate now; records are appended as samples finish

    run = Run()
    placed: list[Placed] = []
    warmed = False
    bar = tqdm(shard.take(articles), desc=shard.label(CLI), unit="article", file=sys.stderr, dynamic_ncols=True)
    for pos, art in bar:
        try:
            if not art.text.strip():
                raise PromptError("the article is empty")
            text, cut = prompt_text(dec, art.text, args.max_article_tokens)
            ids = dec.prompt_ids(text)
        except PromptError as err:
            run.skipped += 1
            tqdm.write(f"warning: skipped {art.id}: {err}", file=sys.stderr)
            placed.append((pos, {"id": art.id, "skipped": str(err)}))
            write_jsonl(part, [placed[-1][1]], append=True)
            continue
        if not warmed:  # first-call costs (allocations, kernel selection) stay out of the timings
            generate(dec, ids, builder, args, 8)
            if baseline:
                generate(dec, ids, "ar", args, 8)
            warmed = True
        base = generate(dec, ids, "ar", args, args.max_new_tokens) if baseline else None
        spec = generate(dec, ids, builder, args, args.max_new_tokens)
        run.samples += 1
        run.spec.add(spec)
        if base is not None:
            run.baseline.add(base)
            run.identical += spec.tokens == base.tokens
        placed.append((pos, sample_record(art, ids, cut, spec, base, args.save_text)))
        write_jsonl(part, [placed[-1][1]], append=True)
        speed = _ratio(run.spec.tok_s, run.baseline.tok_s)
        bar.set_postfix(speedup="-" if speed is None else f"{speed:.2f}x", tok_call=f"{run.spec.tokens_per_call:.2f}")
    bar.close()
    merged = merge(shard, jsonl, placed, run)  # the main process gets every shard's records and sums
    if merged is None:
        return 0  # another process reports
    run = merged

    result = summary(run, baseline)
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")},
        "tree_resolved": tree_name,
        "draft_resolved": getattr(dec.drafter, "name", type(dec.drafter).__name__),
        "device_resolved": str(dec.target.device),
        "dtype_resolved": str(dec.target.dtype).replace("torch.", ""),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(table(run, tree_name, baseline))
    if out is not None:
        write_json(out, {"summary": result, "config": config, "samples": run.samples}, overwrite=args.overwrite)
    print(f"records: {jsonl}" + (f"  summary: {out}" if out is not None else ""), file=sys.stderr)
    if run.samples == 0:
        print("warning: no sample fitted the target's context window", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
