"""Shared pieces of the eval CLIs: argument groups, loading, error handling, result files and tables.

specvlm (and with it torch and transformers) is imported only inside the functions that need it, so `--help` and
argument mistakes answer at once instead of after a ten-second import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from specvlm.draft_spec import SPEC_HELP, spec_arg
from specvlm.tree_kinds import FLAG_TREES, SHAPE_FLAGS, TREE_NAMES, named_kind

if TYPE_CHECKING:
    from specvlm import Decoder, Generation, TreeBuilder

T = TypeVar("T")

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


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
    group.add_argument("--growmap", metavar="PATH", help="static tree from a growmap file (JSON, or Sequoia .pt)")
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


def load_decoder(args: argparse.Namespace) -> Decoder:
    """specvlm.load with the model flags of `add_model_args` (--device-map reaches it as `device_map`; under a
    multi-process launch on GPUs each process takes its own GPU unless --device or --device-map says otherwise)."""
    import specvlm

    draft = args.draft
    if getattr(args, "followers", False):
        draft = f"{draft or ''}+followers"
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    device = args.device
    if device is None and args.device_map is None:
        from eval.shard import local_device

        device = local_device()  # one GPU per process under a multi-process launch
    return specvlm.load(
        target=args.target,
        draft=draft,
        dtype=args.dtype,
        device=device,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
        pack_linears={"auto": None, "on": True, "off": False}[getattr(args, "pack_linears", "auto")],
    )


def describe_tree(builder: object) -> str:
    """'opt(nodes=24, threshold=0.3, max_depth=8)': a builder's name and shape, for tables and configs."""
    name = str(getattr(builder, "name", type(builder).__name__))
    if not dataclasses.is_dataclass(builder):
        return name
    parts = []
    for f in dataclasses.fields(builder):
        if f.name in ("name", "samples_children"):
            continue
        value = getattr(builder, f.name)
        if f.name == "parents" and isinstance(value, tuple):
            parts.append(f"nodes={len(value)}")
        else:
            parts.append(f"{f.name}={value}")
    return f"{name}({', '.join(parts)})" if parts else name


# -- totals over samples ---------------------------------------------------------------------------------------------
@dataclass
class Totals:
    """Sums over samples: tokens, seconds (prefill split into target and draft), target calls, tree nodes."""

    tokens: int = 0
    seconds: float = 0.0
    prefill: float = 0.0
    draft_prefill: float = 0.0
    step_seconds: float = 0.0
    calls: int = 0
    nodes: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    accepted: Counter[int] = field(default_factory=Counter)

    def add(self, gen: Generation, image_token: int | None = None) -> None:
        self.tokens += gen.stats.new_tokens
        self.seconds += gen.stats.seconds
        self.prefill += gen.stats.prefill_s
        self.draft_prefill += gen.stats.draft_prefill_s
        self.step_seconds += sum(step.total_s for step in gen.stats.steps)
        self.calls += gen.stats.target_calls
        self.nodes += sum(step.tree_size for step in gen.stats.steps)
        self.prompt_tokens += len(gen.prompt_ids)
        self.image_tokens += sum(1 for t in gen.prompt_ids if t == image_token)
        self.accepted.update(step.accepted for step in gen.stats.steps)

    @property
    def tok_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    @property
    def decode_tok_s(self) -> float | None:
        return self.tokens / (self.seconds - self.prefill) if self.seconds > self.prefill else None

    @property
    def tokens_per_call(self) -> float | None:
        return self.tokens / self.calls if self.calls else None

    @property
    def tree_size(self) -> float | None:
        return self.nodes / self.calls if self.calls else None

    @property
    def step_ms(self) -> float | None:
        return 1000 * self.step_seconds / self.calls if self.calls else None


# -- running a CLI -------------------------------------------------------------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'fix your input': shown as one line, not a traceback."""
    errors = sys.modules.get("specvlm.errors")  # no specvlm import, no specvlm error
    found: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError)
    return (*found, errors.SpecVLMError) if errors is not None else found


def run_cli(main_fn: Callable[[], int | None]) -> NoReturn:
    """Run a CLI main: user errors print `error: <message>` on stderr and exit 2 (tracebacks with --debug)."""
    debug = "--debug" in sys.argv[1:]
    try:
        code = main_fn()
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit(130)
    except Exception as err:
        if debug or not isinstance(err, _user_errors()):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# -- selecting samples ---------------------------------------------------------------------------------------------
def select_range(items: Sequence[T], start: int = 0, end: int | None = None, limit: int | None = None) -> list[T]:
    """items[start:end], then at most `limit` of them."""
    if start < 0 or (end is not None and end < start) or (limit is not None and limit < 1):
        raise ValueError(
            f"bad sample range: start={start}, end={end}, limit={limit} (need 0 <= start <= end, limit >= 1)"
        )
    stop = len(items) if end is None else min(end, len(items))
    if limit is not None:
        stop = min(stop, start + limit)
    return [items[i] for i in range(start, stop)]


# -- result files --------------------------------------------------------------------------------------------------
def result_paths(args: argparse.Namespace, cli: str) -> tuple[Path | None, Path]:
    """(JSON summary or None, JSONL records); refuses existing files unless --overwrite."""
    out = Path(args.out) if args.out else None
    if args.jsonl:
        jsonl = Path(args.jsonl)
    elif out is not None:
        jsonl = out.with_suffix(".jsonl")
    else:
        jsonl = Path("results") / f"{cli}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if out is not None and out.resolve() == jsonl.resolve():
        raise ValueError(f"--out and --jsonl are the same file ({out}): give them different names")
    for path in (out, jsonl):
        if path is not None:
            check_writable(path, args.overwrite)
    return out, jsonl


def check_writable(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder: give a file name")
    if path.exists() and not overwrite:
        import specvlm

        raise specvlm.SpecVLMError(f"{path} already exists: pass --overwrite to replace it, or choose another name")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return describe_tree(value)
    return repr(value)


def write_json(path: str | Path, obj: Any, overwrite: bool) -> None:
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], *, append: bool = False) -> None:
    """One JSON object per line; `append=True` adds to the file (records survive an interrupted run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


# -- plots ---------------------------------------------------------------------------------------------------------
def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed, no plot (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG, close, and say where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)


# -- tables --------------------------------------------------------------------------------------------------------
def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table; floats get 2 decimals, missing values '-'. Numbers align right."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    width = [max([len(col), 3, *(len(r[i]) for r in cells)]) for i, col in enumerate(columns)]
    numeric = [all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows) for col in columns]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, width, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(width, numeric, strict=True)
    )
    return "\n".join([line(columns), rule + "|", *(line(r) for r in cells)])


# -- HF baselines --------------------------------------------------------------------------------------------------
def hf_run(
    dec: Decoder,
    method: str,
    ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    prompt_lookup_tokens: int = 10,
    early_exit: int = 4,
    model_inputs: dict[str, Any] | None = None,
) -> tuple[list[int], float] | None:
    """One HF `generate` call on the decoder's target: `hf_generate` (alone), `hf_prompt_lookup`, `hf_assisted`
    (`assistant_model=` the decoder's draft model) or `hf_early_exit`. Returns the new tokens up to and including
    the first EOS and the seconds it took, or None when the method cannot run with this draft. `model_inputs`
    (e.g. pixel_values) go to the call as they are."""
    import torch

    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if method == "hf_prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup_tokens
    elif method == "hf_assisted":
        from drafters.model import ModelDrafter

        if not isinstance(dec.drafter, ModelDrafter):
            return None  # assisted generation needs a standalone causal LM draft (not n-grams, not a feature draft)
        kwargs["assistant_model"] = dec.drafter.model
    elif method == "hf_early_exit":  # HF's layer-skip self-draft (LayerSkip), on the target's own first layers
        kwargs["assistant_early_exit"] = early_exit
    elif method != "hf_generate":
        raise ValueError(f"unknown HF method {method!r}")
    input_ids = torch.tensor([ids], device=dec.target.device)
    eos = sorted(dec.target.eos)
    start = time.perf_counter()
    with torch.inference_mode():
        out = dec.target.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            pad_token_id=eos[0] if eos else 0,
            eos_token_id=eos or None,
            **kwargs,
            **(model_inputs or {}),
        )
    seconds = time.perf_counter() - start
    new = out[0, len(ids) :].tolist()
    end = next((i for i, t in enumerate(new) if t in dec.target.eos), None)
    return (new if end is None else new[: end + 1]), seconds
