"""`specvlm "prompt"`: one-off generation from the terminal, streamed as tokens are accepted."""

from __future__ import annotations

import argparse
import logging
import sys

from .draft_spec import SPEC_HELP, spec_arg
from .tree_kinds import TREE_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specvlm",
        description="Generate text with lossless tree speculative decoding (same output as the target alone).",
        epilog='example: specvlm "Summarize the plot of Hamlet." --tree opt --max-new-tokens 96 --stats',
    )
    parser.add_argument("prompt", help="the user message (the chat template is applied when the model has one)")
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
    parser.add_argument("--stats", action="store_true", help="print tokens per target call and timings at the end")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.verbose or args.debug):
        quiet_transformers()
        if not sys.stderr.isatty():  # the first-use note on the default draft's measurement: a terminal's only
            logging.getLogger("specvlm.defaults").setLevel(logging.ERROR)
    import specvlm  # heavy: after argument parsing so --help is instant
    from specvlm.mini_vlm import TARGET_ALIAS

    target = args.target if args.target is not None or args.image is None else TARGET_ALIAS
    try:
        dec = specvlm.load(target, args.draft, dtype=args.dtype, device=args.device)
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
