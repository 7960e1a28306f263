"""`specvlm "prompt"`: one-off generation from the terminal, streamed as tokens are accepted."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .draft_spec import SPEC_HELP, spec_arg
from .tree_kinds import TREE_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specvlm",
        description="Generate text with lossless tree speculative decoding (same output as the target alone).",
        epilog='example: specvlm "Summarize the plot of Hamlet." --tree opt --max-new-tokens 96 --stats',
    )
    parser.add_argument(
        "prompt", nargs="?", help="the user message (the chat template is applied when the model has one)"
    )
    parser.add_argument(
        "--image", help="image file for a vision-language target (without --target: the embedded mini VLM pair)"
    )
    parser.add_argument(
        "--target",
        help="target: hub id, folder or .gguf file (default: embedded SmolLM2-135M; with --image, 'embedded-vlm')",
    )
    parser.add_argument("--draft", type=spec_arg, help=f"draft: {SPEC_HELP}")
    parser.add_argument(
        "--tree", default=None, help=f"{', '.join(TREE_NAMES[:-1])} or {TREE_NAMES[-1]} (default: the decoder's)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", "--T", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", "--P", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the output right after TEXT appears (repeatable; a newline in bash: --stop $'\\n')",
    )
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), float16 or bfloat16")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print tokens per target call and timings at the end, and the forward-cost table the trees were sized by",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the target's forward costs (and the embedded target's default draft) again now, print them "
        "and cache them (a prompt is then optional); use it after a first run on a busy machine, or any time",
    )
    parser.add_argument("--verbose", action="store_true", help="show transformers' notices and loading bars")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def quiet_transformers() -> None:
    """A one-off command shows the answer: no loading bars, no notices from transformers (errors still show)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def show_notes(verbose: bool) -> None:
    """specvlm's own notes on stderr: every one with --verbose; else on a terminal only the first one-time set-up
    line of the run (`specvlm.notices`); a captured stderr (a pipe, a test, CI) gets none."""
    from .notices import FirstOnly

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if verbose:
        logger = logging.getLogger("specvlm")
    elif sys.stderr.isatty():
        logger = logging.getLogger("specvlm.firstuse")
        handler.addFilter(FirstOnly())
    else:
        return
    logger.setLevel(logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "name", None) == "specvlm-cli"]:
        logger.removeHandler(old)  # main() called again in one process (tests, notebooks): one handler, not two
    handler.set_name("specvlm-cli")
    logger.addHandler(handler)


def calibrate(dec: Any) -> None:
    """Measure the target's forward costs (and the embedded target's default draft) again and print them."""
    from .cost_timing import calibrate as measure_costs

    book = measure_costs(dec.target)
    measured = book.record["measured"]
    print(f"forward cost by tokens scored ({book.path}):")
    for n, ms in book.table().points:
        print(f"  {n:>4}  {ms:9.2f} ms")
    print(
        f"  1-token cross-check {measured['single_ms']} ms, other processes' CPU share {measured['others_cpu']}, "
        f"attempts {measured['attempts']}, trusted {measured['trusted']}"
    )
    if dec.watch is not None:  # a measured default draft (the embedded target's)
        choice = dec.watch.measure_again()
        rates = ", ".join(f"{k} {v} tok/s" for k, v in choice.rates.items())
        print(f"default draft: {choice.draft} with the {choice.tree} tree ({rates}; other CPU {choice.others_cpu})")


def print_costs(target: Any, stats: Any) -> None:
    """For --stats: the cost table this run sized its trees by, how it was measured and how the run corrected it."""
    book = target.cost_book_in_use()
    if book is None:
        print("[no tree was sized by forward costs in this run]", file=sys.stderr)
        return
    info = book.describe()
    measured = info["measured"] or {}
    sizes = sorted({int(k) for k in info["now_ms"]} & {int(k) for k in info["observed"]} or {1})
    moved = ", ".join(f"{n}: {info['prior_ms'].get(str(n), '-')} -> {info['now_ms'][str(n)]} ms" for n in sizes)
    print(
        f"[cost table {info['file'] or '(given)'}; measured {measured.get('at', '?')}, other CPU "
        f"{measured.get('others_cpu', '?')}, trusted {measured.get('trusted', '?')}; forwards observed by size "
        f"{info['observed'] or '{}'}; corrected {moved}]",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompt is None and not args.calibrate:
        parser.error("a prompt is needed (or --calibrate)")
    if not (args.verbose or args.debug):
        quiet_transformers()
    show_notes(args.verbose or args.debug)
    import specvlm  # heavy: after argument parsing so --help is instant
    from specvlm.mini_vlm import TARGET_ALIAS

    target = args.target if args.target is not None or args.image is None else TARGET_ALIAS
    try:
        dec = specvlm.load(target, args.draft, dtype=args.dtype, device=args.device)
        if args.calibrate:
            calibrate(dec)
            if args.prompt is None:
                return 0
        stats = specvlm.GenerationStats()
        for piece in dec.stream(
            args.image,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            tree=args.tree,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop,
            stats=stats,
        ):
            print(piece, end="", flush=True)
        print()
        if args.stats:
            s = stats.as_dict()
            print(
                f"[{s['new_tokens']} tokens, {s['target_calls']} target calls, {s['mean_accepted']} tokens/call, "
                f"{s['tokens_per_second']} tok/s, prefill {s['prefill_s']} s]",
                file=sys.stderr,
            )
            print_costs(dec.target, stats)
    except specvlm.SpecVLMError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
