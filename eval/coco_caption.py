"""Image captioning benchmark (COCO format): the autoregressive baseline vs specvlm on the same images, in one run.

python -m eval.coco_caption --target FOLDER --limit 2 --max-new-tokens 16 --out /tmp/coco.json --overwrite
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.common import (
    Totals,
    add_io_args,
    add_model_args,
    add_tree_args,
    check_sampling,
    check_writable,
    cli_parser,
    describe_tree,
    load_decoder,
    markdown_table,
    result_paths,
    run_cli,
    select_range,
    tree_from_args,
    write_json,
    write_jsonl,
)

if TYPE_CHECKING:
    from specvlm import Decoder, Generation, TreeBuilder

CLI = "coco_caption"
BUNDLED = Path(__file__).parent / "data" / "coco_sample"
PROMPT = "Describe the image in one sentence."

DESCRIPTION = """\
Caption images with a vision-language target alone (the autoregressive baseline) and with specvlm tree speculative
decoding, check that both give identical tokens, and report tokens/s, speedup, tokens per target call, the
distribution of tokens accepted per step (PNG plot) and the cost of the image prefix (prefill vs one step)."""

EPILOG = f"""\
examples:
  python -m eval.{CLI} --target ./tiny-llava --limit 2 --max-new-tokens 16 --out /tmp/coco.json --overwrite
  python -m eval.{CLI} --target llava-hf/llava-1.5-7b-hf --draft ./llava-160m --coco-root val2017 \\
      --captions annotations/captions_val2017.json --tree dynamic --B 64 --limit 200 --out results/coco.json

With no --coco-root / --captions the bundled six-image sample (eval/data/coco_sample) is used, so the benchmark
runs offline. --target is required: specvlm ships no miniature vision-language model yet. The default draft is
n-gram prompt lookup over the prompt's text; --draft takes a llava (it sees the image: its own vision tower and
projector, the image prefix in its own cache) or a text LM with the target's tokenizer (it sees the text only),
or 'embedded' (SmolLM2-135M, text only, when the target uses its tokenizer). Tokens/s include prefill; the
second table splits the prefill (target with the image, draft) from the per-step time.
"""


@dataclass(frozen=True)
class Sample:
    id: int
    path: Path
    captions: tuple[str, ...]


@dataclass
class Run:
    images: int = 0
    skipped: int = 0
    identical: int = 0
    baseline: Totals = field(default_factory=Totals)
    spec: Totals = field(default_factory=Totals)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(CLI, DESCRIPTION, EPILOG)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--coco-root",
        metavar="DIR",
        help="folder holding the images named in --captions (default: the bundled eval/data/coco_sample/images)",
    )
    data.add_argument(
        "--captions",
        metavar="FILE",
        help="COCO captions JSON, e.g. captions_val2017.json (default: the bundled eval/data/coco_sample)",
    )
    data.add_argument("--prompt", default=PROMPT, help=f"the request sent with each image (default: {PROMPT!r})")
    add_model_args(parser)
    add_tree_args(parser)
    add_io_args(parser)
    run = parser.add_argument_group("run")
    run.add_argument(
        "--plot", metavar="FILE", help="PNG of tokens accepted per step (default: next to --out or the JSONL)"
    )
    run.add_argument("--save-text", action="store_true", help="also store the baseline text and the reference captions")
    return parser


# -- data ----------------------------------------------------------------------------------------------------------
def load_samples(args: argparse.Namespace) -> list[Sample]:
    """The selected range of images (sorted by id) with their reference captions, read with pycocotools."""
    from pycocotools.coco import COCO

    import specvlm

    captions = Path(args.captions) if args.captions else BUNDLED / "captions.json"
    root = Path(args.coco_root) if args.coco_root else BUNDLED / "images"
    if not captions.is_file():
        raise FileNotFoundError(f"captions file not found: {captions}")
    if not root.is_dir():
        raise FileNotFoundError(f"--coco-root is not a folder: {root}")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints progress on stdout
            coco = COCO(str(captions))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as err:
        raise specvlm.ConfigError(
            f"{captions} is not a COCO captions file ({type(err).__name__}: {err}): it needs 'images' with id and "
            "file_name, and 'annotations' with image_id and caption"
        ) from err
    ids = sorted(coco.getImgIds())
    if not ids:
        raise specvlm.ConfigError(f"{captions} lists no images")
    picked = select_range(ids, args.start, args.end, args.limit)
    if not picked:
        raise specvlm.ConfigError(
            f"--start {args.start} / --end {args.end} select no images: {captions} has {len(ids)}"
        )
    out = []
    for img_id in picked:
        info = coco.imgs[img_id]
        refs = tuple(str(a.get("caption", "")).strip() for a in coco.imgToAnns.get(img_id, []))
        out.append(Sample(int(img_id), root / str(info["file_name"]), refs))
    return out


# -- the run -------------------------------------------------------------------------------------------------------
def generate(dec: Decoder, image: Any, tree: TreeBuilder | str, args: argparse.Namespace, n: int) -> Generation:
    return dec.generate(
        image,
        args.prompt,
        tree=tree,
        max_new_tokens=n,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def sample_record(sample: Sample, spec: Generation, base: Generation, save_text: bool) -> dict[str, Any]:
    spec_rate, base_rate = spec.stats.tokens_per_second, base.stats.tokens_per_second
    record: dict[str, Any] = {
        "id": sample.id,
        "file": sample.path.name,
        "prompt_tokens": len(spec.prompt_ids),
        "new_tokens": spec.stats.new_tokens,
        "identical": spec.tokens == base.tokens,
        "baseline_tok_s": round(base_rate, 3),
        "specvlm_tok_s": round(spec_rate, 3),
        "speedup": round(spec_rate / base_rate, 3) if spec_rate and base_rate else None,
        "mean_accepted": round(spec.stats.mean_accepted, 3),
        "accepted_per_step": [step.accepted for step in spec.stats.steps],
        "target_calls": spec.stats.target_calls,
        "mean_tree_size": round(spec.stats.mean_tree_size, 2),
        "baseline_prefill_s": round(base.stats.prefill_s, 4),
        "specvlm_prefill_s": round(spec.stats.prefill_s, 4),
        "specvlm_draft_prefill_s": round(spec.stats.draft_prefill_s, 4),
        "specvlm_split_s": {k: round(v, 4) for k, v in spec.stats.split().items()},
        "text": spec.text,
    }
    if save_text:
        record["baseline_text"] = base.text
        record["references"] = list(sample.captions)
    return record


def summary(run: Run) -> dict[str, Any]:
    return {
        "images": run.images,
        "skipped": run.skipped,
        "identical": run.identical,
        "tokens_per_call": _round(run.spec.tokens_per_call),
        "speedup": _ratio(run.spec.tok_s, run.baseline.tok_s),
        "decode_speedup": _ratio(run.spec.decode_tok_s, run.baseline.decode_tok_s),
        "baseline_tok_s": _round(run.baseline.tok_s),
        "specvlm_tok_s": _round(run.spec.tok_s),
        "baseline_tokens": run.baseline.tokens,
        "specvlm_tokens": run.spec.tokens,
        "mean_tree_size": _round(run.spec.tree_size, 2),
        "accepted_histogram": {str(k): v for k, v in sorted(run.spec.accepted.items())},
    }


def prefix_cost(run: Run) -> dict[str, Any]:
    """Mean per image: prompt and image tokens, target and draft prefill, and one decoding step, in ms."""
    n = max(run.images, 1)
    base, spec = run.baseline, run.spec
    target_prefill = 1000 * (spec.prefill - spec.draft_prefill) / n
    draft_prefill = 1000 * spec.draft_prefill / n
    return {
        "prompt_tokens": round(spec.prompt_tokens / n, 1),
        "image_tokens": round(spec.image_tokens / n, 1),
        "baseline_prefill_ms": round(1000 * base.prefill / n, 3),
        "baseline_step_ms": _round(base.step_ms),
        "target_prefill_ms": round(target_prefill, 3),
        "draft_prefill_ms": round(draft_prefill, 3),
        "specvlm_step_ms": _round(spec.step_ms),
        "prefill_in_baseline_steps": _ratio(1000 * base.prefill / n, base.step_ms),
        "prefill_in_specvlm_steps": _ratio(target_prefill + draft_prefill, spec.step_ms),
    }


def table(run: Run, tree_name: str) -> str:
    rows = [
        {
            "method": "ar (baseline)",
            "images": run.images,
            "identical": "-",
            "new tokens": run.baseline.tokens,
            "tok/s": run.baseline.tok_s,
            "speedup": 1.0,
            "tokens/call": run.baseline.tokens_per_call,
            "tree size": run.baseline.tree_size,
        },
        {
            "method": tree_name,
            "images": run.images,
            "identical": f"{run.identical}/{run.images}",
            "new tokens": run.spec.tokens,
            "tok/s": run.spec.tok_s,
            "speedup": _ratio(run.spec.tok_s, run.baseline.tok_s),
            "tokens/call": run.spec.tokens_per_call,
            "tree size": run.spec.tree_size,
        },
    ]
    columns = ["method", "images", "identical", "new tokens", "tok/s", "speedup", "tokens/call", "tree size"]
    return markdown_table(rows, columns)


def cost_table(cost: dict[str, Any], tree_name: str) -> str:
    """The image prefix's cost: prefill (target with the image; draft) against one decoding step."""
    rows = [
        {
            "method": "ar (baseline)",
            "prompt tokens": cost["prompt_tokens"],
            "image tokens": cost["image_tokens"],
            "target prefill ms": cost["baseline_prefill_ms"],
            "draft prefill ms": 0.0,
            "step ms": cost["baseline_step_ms"],
            "prefill / step": cost["prefill_in_baseline_steps"],
        },
        {
            "method": tree_name,
            "prompt tokens": cost["prompt_tokens"],
            "image tokens": cost["image_tokens"],
            "target prefill ms": cost["target_prefill_ms"],
            "draft prefill ms": cost["draft_prefill_ms"],
            "step ms": cost["specvlm_step_ms"],
            "prefill / step": cost["prefill_in_specvlm_steps"],
        },
    ]
    return markdown_table(rows, list(rows[0]))


def plot_accepted(path: Path, accepted: Counter[int], title: str) -> bool:
    """Bar chart of the share of target calls that added k tokens; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    total = sum(accepted.values())
    ks = list(range(1, max(accepted, default=1) + 1))
    share = [accepted.get(k, 0) / total if total else 0.0 for k in ks]
    mean = sum(k * v for k, v in accepted.items()) / total if total else 0.0
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(ks, share, color="#4c72b0")
    ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.2f} tokens/call")
    ax.set_xlabel("tokens added per target call (accepted drafts + bonus)")
    ax.set_ylabel("share of target calls")
    ax.set_xticks(ks)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tree = tree_from_args(args)  # flag mistakes fail before anything loads
    check_sampling(args)
    import specvlm

    if args.target is None:
        raise specvlm.ConfigError(
            "--target is required: specvlm ships no miniature vision-language model yet, so give a llava model "
            "(a hub id such as llava-hf/llava-1.5-7b-hf, or a folder saved with save_pretrained plus its processor)"
        )
    out, jsonl = result_paths(args, CLI)
    plot = Path(args.plot) if args.plot else (out if out is not None else jsonl).with_suffix(".png")
    check_writable(plot, args.overwrite)
    samples = load_samples(args)
    dec = load_decoder(args)
    image_token = dec.target.image_token_id
    if image_token is None:
        raise specvlm.ConfigError(
            f"--target {args.target} is a text-only model: {CLI} needs a vision-language (llava) target"
        )
    if dec.target.processor is None:
        raise specvlm.ConfigError(
            f"--target {args.target} has no processor (preprocessor_config.json / processor_config.json): save the "
            "model's processor into the folder with processor.save_pretrained"
        )
    from specvlm.trees import make_tree
    from specvlm.vlm import load_image

    builder = make_tree(tree, dec.default_tree)
    tree_name = describe_tree(builder)
    write_jsonl(jsonl, [])  # create / truncate now; records are appended as images finish

    run = Run()
    warmed = False
    bar = tqdm(samples, desc=CLI, unit="image", file=sys.stderr, dynamic_ncols=True)
    for sample in bar:
        try:
            image = load_image(sample.path, f"image {sample.path}")  # read once, outside the timings
            if not warmed:  # first-call costs (allocations, kernel selection) stay out of the timings
                generate(dec, image, builder, args, 4)
                generate(dec, image, "ar", args, 4)
                warmed = True
            base = generate(dec, image, "ar", args, args.max_new_tokens)
        except (specvlm.ImageError, specvlm.PromptError) as err:
            run.skipped += 1
            tqdm.write(f"warning: skipped image {sample.id}: {err}", file=sys.stderr)
            write_jsonl(jsonl, [{"id": sample.id, "file": sample.path.name, "skipped": str(err)}], append=True)
            continue
        spec = generate(dec, image, builder, args, args.max_new_tokens)
        run.images += 1
        run.baseline.add(base, image_token)
        run.spec.add(spec, image_token)
        run.identical += spec.tokens == base.tokens
        write_jsonl(jsonl, [sample_record(sample, spec, base, args.save_text)], append=True)
        speed = _ratio(run.spec.tok_s, run.baseline.tok_s)
        bar.set_postfix(speedup="-" if speed is None else f"{speed:.2f}x", tok_call=f"{run.spec.tokens_per_call:.2f}")
    bar.close()

    result = summary(run)
    cost = prefix_cost(run)
    draft_name = getattr(dec.drafter, "name", type(dec.drafter).__name__)
    plotted = plot_accepted(plot, run.spec.accepted, f"{CLI}: {tree_name}, draft {draft_name}, {run.images} images")
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")},
        "tree_resolved": tree_name,
        "draft_resolved": draft_name,
        "device_resolved": str(dec.target.device),
        "dtype_resolved": str(dec.target.dtype).replace("torch.", ""),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(table(run, tree_name))
    print()
    print("image prefix cost (mean per image; prefill / step = how many decoding steps one prefill costs):")
    print(cost_table(cost, tree_name))
    if out is not None:
        write_json(out, {"summary": result, "prefix_cost": cost, "config": config}, overwrite=args.overwrite)
    files = f"records: {jsonl}" + (f"  summary: {out}" if out is not None else "")
    print(files + (f"  plot: {plot}" if plotted else "  (no plot: matplotlib is not installed)"), file=sys.stderr)
    if run.images == 0:
        print("warning: no image could be captioned", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
