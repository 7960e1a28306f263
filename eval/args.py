"""The eval CLIs' argument types and groups (models, trees and sampling, input/output), and trees from arguments.

Torch-free: `--help` and argument mistakes answer at once; specvlm's heavy parts load only in the functions that
build objects.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from specvlm.draft_spec import SPEC_HELP, spec_arg
from specvlm.tree_kinds import FLAG_TREES, SHAPE_FLAGS, TREE_NAMES, named_kind

if TYPE_CHECKING:
    from specvlm import TreeBuilder


#: the --tree names, from the registry in specvlm.tree_kinds (torch-free, so building a parser imports no torch)
TREE_CHOICES = TREE_NAMES


#: which trees each tree-shape flag applies to (argparse dest -> tree names)
TREE_FLAGS: dict[str, tuple[str, ...]] = FLAG_TREES


# -- argument types ------------------------------------------------------------------------------------------------
def positive_int_list(text: str) -> list[int]:
    """'3,1,1' -> [3, 1, 1], in the given order (e.g. a static tree's children per node at each level)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, e.g. 3,1,1: {text!r}")
    return values


def _int_at_least(low: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(1, text)


def non_negative_int(text: str) -> int:
    return _int_at_least(0, text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def size_list(text: str) -> list[int]:
    """'4,8,16' -> [4, 8, 16]: tree sizes, sorted and without repeats."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 4,8,16,32,64, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 1, got {text!r}")
    return sizes


def cli_parser(cli: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of `python -m eval.<cli>`: description and examples kept as written, no abbreviated flags."""
    return argparse.ArgumentParser(
        prog=f"python -m eval.{cli}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


# -- argument groups -----------------------------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser, *, several_drafts: bool = False) -> None:
    """--target, --draft, --dtype, --device, --device-map, --threads, --trust-remote-code (None = embedded defaults).
    With `several_drafts`, --draft may be repeated (a list, None when not given)."""
    group = parser.add_argument_group("models")
    group.add_argument(
        "--target",
        metavar="MODEL",
        help="target model: hub id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    group.add_argument(
        "--draft",
        metavar="DRAFT",
        action="append" if several_drafts else "store",
        type=spec_arg,
        help=f"draft: {SPEC_HELP}"
        + (" (repeat for several drafts)" if several_drafts else " (default: the decoder's default draft)"),
    )
    group.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    group.add_argument("--device-map", metavar="MAP", help="accelerate device map for large targets, e.g. 'auto'")
    group.add_argument("--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's choice)")
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (only for models you trust)"
    )
    group.add_argument(
        "--pack-linears",
        choices=("auto", "on", "off"),
        default="auto",
        help="CPU float32: tree forwards multiply by oneDNN-packed weights, so a tree of 8-16 tokens costs about "
        "one token's forward (auto: on for CPU float32 targets with <= 4 GiB of linear weights; default auto)",
    )


#: the seeds' --mode values and the tree each one names (auto: the decoder's default tree)
SEED_MODES = {"stree": "static", "dtree": "dynamic", "auto": None}


def seed_mode(text: str) -> str | None:
    """--mode sTree|dTree|auto (Dynasurge's flag) as a tree name."""
    key = text.strip().lower()
    if key not in SEED_MODES:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}: use sTree (static), dTree (dynamic) or auto")
    return SEED_MODES[key]


#: the argument type of each kind of shape-flag value (specvlm.tree_kinds.ShapeFlag.value)
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "positive_int": positive_int,
    "positive_int_list": positive_int_list,
    "non_negative_float": non_negative_float,
}


def add_tree_args(parser: argparse.ArgumentParser) -> None:
    """--tree and its shape flags, and the sampling flags --T/--temperature, --P/--top-p, --seed."""
    group = parser.add_argument_group("tree and sampling")
    group.add_argument(
        "--tree",
        choices=TREE_CHOICES,
        help="draft tree shape (default: the decoder's default; a shape flag alone picks its tree)",
    )
    group.add_argument(
        "--growmap",
        metavar="PATH",
        help="static tree from a growmap file (JSON, Sequoia .pt, or Medusa/EAGLE tree choices as FILE.py:NAME)",
    )
    for flag in SHAPE_FLAGS:  # the registry's shape flags: --depth, --B, --nodes, --threshold, --max-depth, ...
        group.add_argument(
            *flag.options, dest=flag.dest, type=_FLAG_TYPES[flag.value], metavar=flag.metavar, help=flag.help
        )
    group.add_argument(
        "--mode",
        dest="tree",
        type=seed_mode,
        metavar="sTree|dTree|auto",
        help="Dynasurge/Sequoia spelling of --tree: sTree = static, dTree = dynamic, auto = the decoder's default",
    )
    group.add_argument(
        "--fixed-size",
        action="store_true",
        help="chain, dynamic and opt trees: always draft --depth / --B / --nodes instead of sizing each greedy tree "
        "for tokens/s from the target's measured forward cost (cached under $SPECVLM_CACHE/costs)",
    )
    group.add_argument(
        "--T",
        "--temperature",
        dest="temperature",
        type=non_negative_float,
        default=0.0,
        metavar="FLOAT",
        help="sampling temperature; 0 = greedy (default: 0)",
    )
    group.add_argument(
        "--P",
        "--top-p",
        dest="top_p",
        type=float,
        default=1.0,
        metavar="FLOAT",
        help="nucleus sampling mass in (0, 1] (default: 1.0)",
    )
    group.add_argument("--seed", type=int, help="random seed for sampling (default: fresh randomness)")
    group.add_argument(
        "--followers",
        action="store_true",
        help="add the target's remembered follower tokens to the draft (lossless: they enter before scoring)",
    )
    group.add_argument(
        "--use-bfs",
        "--use_bfs",
        action="store_true",
        help="accepted for Dynasurge compatibility: verification always tries every sibling of a node losslessly "
        "(greedy: the target's argmax among all children; sampling: recursive rejection over siblings); ETV's lossy "
        "multi-sibling acceptance is not offered",
    )


def add_io_args(parser: argparse.ArgumentParser) -> None:
    """--limit/--start/--end, --max-new-tokens, --out/--jsonl/--overwrite and --debug."""
    group = parser.add_argument_group("samples and output")
    group.add_argument("--limit", type=positive_int, metavar="N", help="run at most N samples")
    group.add_argument("--start", type=non_negative_int, default=0, metavar="I", help="first sample index (default 0)")
    group.add_argument("--end", type=non_negative_int, metavar="I", help="stop before this sample index")
    group.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N", help="default: 128")
    group.add_argument("--out", metavar="FILE", help="write the JSON summary here")
    group.add_argument(
        "--jsonl",
        metavar="FILE",
        help="per-sample records (default: next to --out with .jsonl, else results/<cli>-<timestamp>.jsonl)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace existing result files")
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


# -- specvlm objects from arguments --------------------------------------------------------------------------------
def tree_from_args(args: argparse.Namespace) -> TreeBuilder | str | None:
    """A builder when shape flags (or --fixed-size) are given, else the tree name (None = the decoder's default)."""
    import specvlm
    from specvlm.trees import at_fixed_size, make_tree

    tree = _shaped_tree(args)
    if not getattr(args, "fixed_size", False):
        return tree
    builder = None if tree is None else make_tree(tree)
    if builder is None or not builder.hardware_aware:
        raise specvlm.ConfigError("--fixed-size is for --tree chain, dynamic or opt: name one of them with --tree")
    return at_fixed_size(builder)


def _shaped_tree(args: argparse.Namespace) -> TreeBuilder | str | None:
    import specvlm

    name: str | None = args.tree
    given = [key for key in TREE_FLAGS if getattr(args, key, None) is not None]
    if args.growmap is not None:
        if name not in (None, "static") or given:
            raise specvlm.ConfigError("--growmap makes a static tree: drop --tree and the other tree shape flags")
        static = getattr(specvlm, "StaticTree", None)
        if static is None:
            raise specvlm.ConfigError("--growmap needs the growmaps feature, which this specvlm version lacks")
        return static(growmap=args.growmap)
    if not given:
        return name
    if name is None:
        owners = set(TREE_CHOICES).intersection(*(TREE_FLAGS[key] for key in given))
        if len(owners) != 1:
            flags = ", ".join(_flag(key) for key in given)
            raise specvlm.ConfigError(f"{flags}: say which tree they shape with --tree {'/'.join(sorted(owners))}")
        name = owners.pop()
    for key in given:
        if name not in TREE_FLAGS[key]:
            raise specvlm.ConfigError(
                f"{_flag(key)} does not shape --tree {name}: it is for --tree {TREE_FLAGS[key][0]}"
            )
    kind = named_kind(name)
    assert kind is not None, name  # --tree's choices are the registry's names
    return kind.from_flags({key: getattr(args, key) for key in given})


def check_sampling(args: argparse.Namespace) -> None:
    """Validate --T / --P / --seed before any weights load (specvlm.Sampling owns the rules)."""
    import specvlm

    specvlm.Sampling(args.temperature, args.top_p, args.seed)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")
