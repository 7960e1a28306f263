"""`python -m eval.memory`: peak resident memory of a long generation, specvlm vs the autoregressive baseline.

python -m eval.memory --max-new-tokens 2000 --every 100 --out results/memory.json

Each method runs in its own fresh Python process (this module with --child), so each peak is clean: the
process's `ru_maxrss` after loading and a 4-token warm-up of the same method (the weights are memory-mapped, so
only a forward makes them resident), and at the end of the generation. During the generation the resident set
is sampled every --every new tokens (after the target call that crossed the mark): with no leak it grows by the
KV cache alone, whose expected size (layers x 2 x KV heads x head dim x bytes x tokens) is printed beside it.
The baseline is specvlm's own loop with a root-only tree (tree 'ar'), and the tokens of both runs are compared.

specvlm has no "ignore EOS" switch, so the default prompt asks for a long list (numbers separated by commas), which
the embedded SmolLM2 keeps writing past 2,000 tokens; a run that does stop at EOS says so (new_tokens, stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eval.args import add_model_args, cli_parser, positive_int
from eval.common import load_decoder, run_cli
from eval.results import check_writable, markdown_table, pyplot, save_figure, write_json

CLI = "memory"
PROMPT = "Write the numbers from 1 to 2000 separated by commas."
MIB = 2**20

DESCRIPTION = """\
Peak resident memory (ru_maxrss) of one long greedy generation with specvlm and with the autoregressive baseline,
each in its own fresh process, plus the resident set sampled during the generation (growth = KV cache, no leak)."""

EPILOG = """\
examples:
  python -m eval.memory --max-new-tokens 2000 --every 100 --out results/memory.json
  python -m eval.memory --tree opt --draft ngram --max-new-tokens 500 --out /tmp/memory.json --overwrite"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(CLI, DESCRIPTION, EPILOG)
    add_model_args(parser)
    parser.add_argument("--prompt", default=PROMPT, help=f"what to ask (default: {PROMPT!r})")
    parser.add_argument("--tree", default=None, help="specvlm's tree (default: the decoder's default)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=2000, metavar="N", help="default 2000")
    parser.add_argument("--every", type=positive_int, default=100, metavar="N", help="sample RSS every N tokens (100)")
    parser.add_argument("--out", metavar="FILE", help="JSON result (and a PNG of RSS by tokens beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--child", metavar="TREE", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    return parser


# -- measuring inside one process ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """The resident set of this process now (Linux /proc; elsewhere psutil)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def peak_bytes() -> int:
    """ru_maxrss of this process: KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def kv_bytes_per_token(model: Any) -> int:
    """Bytes the target's KV cache holds per token: layers x (keys + values) x KV heads x head dim x element size."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    element = next(model.parameters()).element_size()
    return int(cfg.num_hidden_layers) * 2 * heads * head_dim * element


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Load, generate once with tree `args.child`, sampling RSS; the numbers of this one process."""
    from specvlm.engine import decode
    from specvlm.stats import GenerationStats
    from specvlm.trees import make_tree

    dec = load_decoder(args)
    request = dec.request(None, args.prompt, max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    builder = make_tree(None if args.child == "default" else args.child, dec.default_tree)
    warm = dec.request(None, args.prompt, max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0)
    for _ in decode(dec.target, dec.drafter, builder, warm, GenerationStats()):
        pass  # every weight page touched (safetensors are memory-mapped), first-call buffers allocated
    loaded_rss, loaded_peak = rss_bytes(), peak_bytes()
    stats = GenerationStats()
    tokens: list[int] = []
    samples = [{"tokens": 0, "rss_mib": round(loaded_rss / MIB, 2)}]
    for step in decode(dec.target, dec.drafter, builder, request, stats):
        before = len(tokens)
        tokens += step.tokens
        if len(tokens) // args.every > before // args.every or step.done:
            samples.append({"tokens": len(tokens), "rss_mib": round(rss_bytes() / MIB, 2)})
    eos = bool(tokens) and tokens[-1] in dec.target.eos
    return {
        "tree": getattr(builder, "name", type(builder).__name__),
        "draft": getattr(dec.drafter, "name", type(dec.drafter).__name__),
        "prompt_tokens": len(request.prompt_ids),
        "new_tokens": len(tokens),
        "stopped": "eos" if eos else "max_new_tokens",
        "target_calls": stats.target_calls,
        "tokens_per_call": round(stats.mean_accepted, 3),
        "seconds": round(stats.seconds, 2),
        "tokens_per_second": round(stats.tokens_per_second, 2),
        "rss_after_warmup_mib": round(loaded_rss / MIB, 2),
        "peak_after_warmup_mib": round(loaded_peak / MIB, 2),
        "peak_end_mib": round(peak_bytes() / MIB, 2),
        "rss_end_mib": round(rss_bytes() / MIB, 2),
        "kv_mib_per_1k_tokens": round(1000 * kv_bytes_per_token(dec.target.model) / MIB, 2),
        "samples": samples,
        "tokens": tokens,
    }


# -- the parent: one fresh process per method ------------------------------------------------------------------------
def child_argv(argv: list[str], tree: str) -> list[str]:
    """This command line for one method: --out/--overwrite dropped, --child TREE added."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--out", "--tree"):
            skip = True
            continue
        if arg.startswith(("--out=", "--tree=")) or arg == "--overwrite":
            continue
        out.append(arg)
    return [sys.executable, "-m", f"eval.{CLI}", *out, "--child", tree]


def run_method(argv: list[str], tree: str) -> dict[str, Any]:
    done = subprocess.run(child_argv(argv, tree), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {tree} run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(samples: list[dict[str, Any]]) -> float | None:
    """RSS growth in MiB per 1,000 tokens over the second half of the run (least squares)."""
    half = [s for s in samples if s["tokens"] >= samples[-1]["tokens"] / 2]
    if len(half) < 2:
        return None
    xs, ys = [s["tokens"] for s in half], [s["rss_mib"] for s in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var, 2) if var else None


COLUMNS = [
    "method",
    "new_tokens",
    "stopped",
    "tokens_per_call",
    "tokens_per_second",
    "rss_after_warmup_mib",
    "peak_after_warmup_mib",
    "peak_end_mib",
    "peak_growth_mib",
    "rss_growth_mib_per_1k",
    "kv_mib_per_1k_tokens",
]


def rows_of(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method, run in runs.items():
        rows.append(
            {
                "method": method,
                **{k: run[k] for k in COLUMNS if k in run},
                "peak_growth_mib": round(run["peak_end_mib"] - run["peak_after_warmup_mib"], 2),
                "rss_growth_mib_per_1k": growth(run["samples"]),
            }
        )
    return rows


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, run in runs.items():
        ax.plot([s["tokens"] for s in run["samples"]], [s["rss_mib"] for s in run["samples"]], marker=".", label=method)
    ax.set_xlabel("new tokens")
    ax.set_ylabel("resident set (MiB)")
    ax.set_title("RSS during one generation (each method in a fresh process)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(args)))
        return 0
    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable(out, args.overwrite)
    runs: dict[str, dict[str, Any]] = {}
    for method, tree in (("ar (baseline)", "ar"), ("specvlm", args.tree or "default")):
        print(f"{method}: a fresh process, {args.max_new_tokens} new tokens at most ...", file=sys.stderr)
        start = time.perf_counter()
        runs[method] = run_method(argv, tree)
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    (base, spec) = runs.values()
    identical = base["tokens"] == spec["tokens"]
    rows = rows_of(runs)
    print(markdown_table(rows, ["method", *[c for c in COLUMNS if c != "method"]]))
    print(f"identical tokens: {identical} ({spec['new_tokens']} and {base['new_tokens']} new tokens)")
    print(f"specvlm tree: {spec['tree']}, draft: {spec['draft']}; peak difference specvlm - ar: "
          f"{spec['peak_end_mib'] - base['peak_end_mib']:+.1f} MiB")  # fmt: skip
    if out is not None:
        result = {
            "identical": identical,
            "rows": rows,
            "runs": {m: {k: v for k, v in r.items() if k != "tokens"} for m, r in runs.items()},
            "command": " ".join(["python", "-m", f"eval.{CLI}", *argv]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(out, result, overwrite=args.overwrite)
        plot(runs, out.with_suffix(".png"))
    return 0 if identical else 1


if __name__ == "__main__":
    run_cli(main)
