"""Image captioning benchmark (COCO format): the autoregressive baseline vs specvlm on the same images, in one run.

python -m eval.coco_caption                       # the embedded mini VLM pair on the bundled rendered-scene test split
python -m eval.coco_caption --target FOLDER --limit 2 --max-new-tokens 16 --out /tmp/coco.json --overwrite
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.args import add_io_args, add_model_args, add_tree_args, check_sampling, cli_parser, tree_from_args
from eval.common import Totals, hf_run, load_decoder, run_cli, select_range
from eval.results import (
    check_writable,
    describe_tree,
    markdown_table,
    pyplot,
    result_paths,
    save_figure,
    write_json,
    write_jsonl,
)
from eval.shard import Placed, join, merge
from training.scenes import ATTRIBUTES, Scene, attribute_hits

if TYPE_CHECKING:
    from specvlm import Decoder, Generation, TreeBuilder

CLI = "coco_caption"
BUNDLED = Path(__file__).parent / "data" / "coco_sample"
SCENES = Path(__file__).parent / "data" / "scenes_test"
PROMPT = "Describe the image in one sentence."

DESCRIPTION = """\
Caption images with a vision-language target alone (the autoregressive baseline) and with specvlm tree speculative
decoding, check that both give identical tokens, and report tokens/s, speedup, tokens per target call, the
distribution of tokens accepted per step (PNG plot) and the cost of the image prefix (prefill vs one step)."""

EPILOG = f"""\
examples:
  python -m eval.{CLI} --out results/coco-mini.json --overwrite
  python -m eval.{CLI} --target ./tiny-llava --limit 2 --max-new-tokens 16 --out /tmp/coco.json --overwrite
  python -m eval.{CLI} --target llava-hf/llava-1.5-7b-hf --draft ./llava-160m --coco-root val2017 \\
      --captions annotations/captions_val2017.json --tree dynamic --B 64 --limit 200 --out results/coco.json

With no --target the embedded mini VLM runs (a llava around SmolLM2-135M-Instruct trained on rendered scenes,
'embedded-vlm') on the bundled test split of those scenes (eval/data/scenes_test, 100 images), with two drafts
in the same run: its llava draft ('embedded-vlm-draft': it sees the image) and the shipped text draft ('trained':
text positions only). Captions are scored by the attributes they name (count, size, colour, shape, place) against
the drawn scene. With --target and no --coco-root / --captions the bundled six-image sample (eval/data/coco_sample)
is used. Repeat --draft to compare several drafts on one baseline: a llava (it sees the image: its own vision tower
and projector, the image prefix in its own cache), a text LM with the target's tokenizer (text only), 'trained',
'ngram' or 'embedded'; the default is the target's own default draft (n-grams for other targets). Tokens/s include
prefill; the second table splits the prefill (target with the image, draft) from the per-step time.
"""

HF_METHODS = ("hf_generate", "hf_assisted")
EMBEDDED_TARGET = "embedded-vlm"
#: the drafts compared by default on the embedded mini VLM: its llava draft and the shipped text draft
EMBEDDED_DRAFTS = ("embedded-vlm-draft", "trained")


@dataclass(frozen=True)
class Sample:
    id: int
    path: Path
    captions: tuple[str, ...]
    scene: Scene | None = None  # the drawn scene, for rendered-scene sets


@dataclass
class Run:
    """Sums for the baseline and one draft (the sharded merge adds them up field by field)."""

    images: int = 0
    skipped: int = 0
    identical: int = 0
    baseline: Totals = field(default_factory=Totals)
    spec: Totals = field(default_factory=Totals)


@dataclass
class HFSums:
    """One HF `generate` baseline (--hf) over the images: new tokens, seconds, outputs equal to specvlm-ar's."""

    images: int = 0
    identical: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Runs:
    """One Run per draft (same images, same baseline) and the attribute hits of the baseline captions."""

    runs: dict[str, Run] = field(default_factory=dict)
    hf: dict[str, HFSums] = field(default_factory=dict)
    attributes: Counter[str] = field(default_factory=Counter)
    scored: int = 0


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
    add_model_args(parser, several_drafts=True)
    add_tree_args(parser)
    add_io_args(parser)
    run = parser.add_argument_group("run")
    run.add_argument(
        "--plot", metavar="FILE", help="PNG of tokens accepted per step (default: next to --out or the JSONL)"
    )
    run.add_argument("--save-text", action="store_true", help="also store the baseline text and the reference captions")
    run.add_argument(
        "--hf",
        type=hf_methods,
        default=[],
        metavar="LIST",
        help=f"also time HF generate on the same images: comma-separated from {', '.join(HF_METHODS)} "
        "(hf_assisted: assistant_model= the first --draft, which must be a model)",
    )
    return parser


def hf_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in HF_METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown HF baseline(s) {bad}: choose from {', '.join(HF_METHODS)}")
    return methods


# -- data ----------------------------------------------------------------------------------------------------------
def load_samples(args: argparse.Namespace) -> list[Sample]:
    """The selected range of images (sorted by id) with their reference captions, read with pycocotools."""
    from pycocotools.coco import COCO

    import specvlm

    bundled = SCENES if args.target in (None, EMBEDDED_TARGET) else BUNDLED
    captions = Path(args.captions) if args.captions else bundled / "captions.json"
    root = Path(args.coco_root) if args.coco_root else bundled / "images"
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
        scene = Scene(**info["scene"]) if isinstance(info.get("scene"), dict) else None  # training.scenes files
        out.append(Sample(int(img_id), root / str(info["file_name"]), refs, scene))
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


def hf_caption(dec: Decoder, image: Any, method: str, args: argparse.Namespace, n: int) -> tuple[list[int], float]:
    """HF `generate` (alone or assisted by the decoder's draft model) on the same prompt ids and pixel values."""
    import specvlm

    request = dec.request(
        image, args.prompt, max_new_tokens=n, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    got = hf_run(
        dec,
        method,
        list(request.prompt_ids),
        max_new_tokens=n,
        temperature=args.temperature,
        top_p=args.top_p,
        model_inputs=request.model_inputs,
    )
    if got is None:
        raise specvlm.ConfigError(f"--hf {method} needs a model draft (a llava or a text LM) as the first --draft")
    return got


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def sample_record(
    sample: Sample, spec: Generation, base: Generation, save_text: bool, draft: str = ""
) -> dict[str, Any]:
    spec_rate, base_rate = spec.stats.tokens_per_second, base.stats.tokens_per_second
    record: dict[str, Any] = {
        "id": sample.id,
        "file": sample.path.name,
        "draft": draft,
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
    if sample.scene is not None:
        record["attributes_right"] = attribute_hits(base.text, sample.scene)
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


def table(runs: Runs, trees: dict[str, str]) -> str:
    """The baseline and every draft: images, identical outputs, tokens/s, speedup, tokens per call, tree size."""
    first = next(iter(runs.runs.values()))
    rows = [
        {
            "method": "ar (baseline)",
            "draft": "-",
            "images": first.images,
            "identical": "-",
            "new tokens": first.baseline.tokens,
            "tok/s": first.baseline.tok_s,
            "speedup": 1.0,
            "tokens/call": first.baseline.tokens_per_call,
            "tree size": first.baseline.tree_size,
        }
    ]
    for method, hf in runs.hf.items():
        rows.append(
            {
                "method": method,
                "draft": next(iter(runs.runs)) if method == "hf_assisted" else "-",
                "images": hf.images,
                "identical": f"{hf.identical}/{hf.images}",
                "new tokens": hf.tokens,
                "tok/s": round(hf.tokens / hf.seconds, 3) if hf.seconds else None,
                "speedup": _ratio(hf.tokens / hf.seconds if hf.seconds else None, first.baseline.tok_s),
                "tokens/call": "-",
                "tree size": "-",
            }
        )
    for name, run in runs.runs.items():
        rows.append(
            {
                "method": trees[name],
                "draft": name,
                "images": run.images,
                "identical": f"{run.identical}/{run.images}",
                "new tokens": run.spec.tokens,
                "tok/s": run.spec.tok_s,
                "speedup": _ratio(run.spec.tok_s, run.baseline.tok_s),
                "tokens/call": run.spec.tokens_per_call,
                "tree size": run.spec.tree_size,
            }
        )
    return markdown_table(rows, list(rows[0]))


def attribute_accuracy(runs: Runs) -> dict[str, float] | None:
    """Share of scored captions that name each attribute of the drawn scene correctly (None: no scenes)."""
    if not runs.scored:
        return None
    return {a: round(runs.attributes[a] / runs.scored, 4) for a in (*ATTRIBUTES, "all five")}


def caption_sheet(path: Path, items: list[tuple[Path, str]], title: str) -> bool:
    """The first images with their captions underneath (PNG); False when matplotlib is missing."""
    plt = pyplot()
    if plt is None or not items:
        return False
    from PIL import Image

    cols = min(4, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, text) in zip(axes.flat, items, strict=False):
        with Image.open(image) as img:
            ax.imshow(img.convert("RGB"), interpolation="nearest")
        ax.set_title(textwrap.fill(text, 34), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def decoders(args: argparse.Namespace) -> list[tuple[str, Decoder]]:
    """One decoder per draft (--draft repeated), all sharing the one loaded target."""
    from drafters.build import build
    from specvlm.api import Decoder
    from specvlm.options import LoadOptions

    embedded = args.target == EMBEDDED_TARGET
    specs: list[str | None] = list(args.draft) if args.draft else (list(EMBEDDED_DRAFTS) if embedded else [None])
    first = load_decoder(argparse.Namespace(**{**vars(args), "draft": specs[0]}))
    opts = LoadOptions(dtype=first.target.dtype, device=first.target.device)
    decs = [first] + [Decoder(first.target, build(spec, first.target, opts)) for spec in specs[1:]]
    named: list[tuple[str, Decoder]] = []
    for dec in decs:
        name = str(getattr(dec.drafter, "name", type(dec.drafter).__name__))
        while name in dict(named):
            name += "'"
        named.append((name, dec))
    return named


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
        args.target = EMBEDDED_TARGET
    out, jsonl = result_paths(args, CLI)
    plot = Path(args.plot) if args.plot else (out if out is not None else jsonl).with_suffix(".png")
    sheet = plot.with_name(plot.stem + "-captions.png")
    check_writable(plot, args.overwrite)
    samples = load_samples(args)
    shard = join(args.device)  # under `accelerate launch`: this process's share of the images
    decs = decoders(args)
    dec = decs[0][1]
    image_token = check_vlm_target(dec, args.target)
    from specvlm.trees import make_tree
    from specvlm.vlm import load_image

    builders = {name: make_tree(tree, d.default_tree) for name, d in decs}
    trees = {name: describe_tree(b) for name, b in builders.items()}
    part = shard.part(jsonl)  # the JSONL itself for one process
    write_jsonl(part, [])  # create / truncate now; records are appended as images finish

    runs = Runs({name: Run() for name, _ in decs}, {method: HFSums() for method in args.hf})
    placed: list[Placed] = []
    warmed = False
    bar = tqdm(shard.take(samples), desc=shard.label(CLI), unit="image", file=sys.stderr, dynamic_ncols=True)
    for pos, sample in bar:
        try:
            image = load_image(sample.path, f"image {sample.path}")  # read once, outside the timings
            if not warmed:  # first-call costs (allocations, kernel selection) stay out of the timings
                for name, d in decs:
                    generate(d, image, builders[name], args, 4)
                generate(dec, image, "ar", args, 4)
                for method in args.hf:
                    hf_caption(dec, image, method, args, 4)
                warmed = True
            base = generate(dec, image, "ar", args, args.max_new_tokens)
        except (specvlm.ImageError, specvlm.PromptError) as err:
            for run in runs.runs.values():
                run.skipped += 1
            tqdm.write(f"warning: skipped image {sample.id}: {err}", file=sys.stderr)
            placed.append((pos, {"id": sample.id, "file": sample.path.name, "skipped": str(err)}))
            write_jsonl(part, [placed[-1][1]], append=True)
            continue
        if sample.scene is not None:
            hits = attribute_hits(base.text, sample.scene)
            runs.scored += 1
            runs.attributes.update([a for a, ok in hits.items() if ok] + (["all five"] if all(hits.values()) else []))
        for name, d in decs:
            spec = generate(d, image, builders[name], args, args.max_new_tokens)
            run = runs.runs[name]
            run.images += 1
            run.baseline.add(base, image_token)
            run.spec.add(spec, image_token)
            run.identical += spec.tokens == base.tokens
            placed.append((pos, sample_record(sample, spec, base, args.save_text, name)))
            write_jsonl(part, [placed[-1][1]], append=True)
        for method, hf in runs.hf.items():
            tokens, seconds = hf_caption(dec, image, method, args, args.max_new_tokens)
            same = tokens == base.tokens
            hf.images += 1
            hf.identical += same
            hf.tokens += len(tokens)
            hf.seconds += seconds
            record = {"id": sample.id, "file": sample.path.name, "method": method, "identical": same}
            placed.append((pos, {**record, "new_tokens": len(tokens), "seconds": round(seconds, 4)}))
            write_jsonl(part, [placed[-1][1]], append=True)
        first = runs.runs[decs[0][0]]
        speed = _ratio(first.spec.tok_s, first.baseline.tok_s)
        bar.set_postfix(speedup="-" if speed is None else f"{speed:.2f}x", tok_call=f"{first.spec.tokens_per_call:.2f}")
    bar.close()
    merged = merge(shard, jsonl, placed, runs)  # the main process gets every shard's records and sums
    if merged is None:
        return 0  # another process reports
    return report(merged, decs, trees, args, samples, (jsonl, out, plot, sheet))


def report(
    runs: Runs,
    decs: list[tuple[str, Any]],
    trees: dict[str, str],
    args: argparse.Namespace,
    samples: list[Sample],
    paths: tuple[Path, Path | None, Path, Path],
) -> int:
    """On the main process: the tables, plots, caption sheet and summary file of the merged runs; 1 when no image
    could be captioned."""
    jsonl, out, plot, sheet = paths
    dec = decs[0][1]
    first_name = decs[0][0]
    run = runs.runs[first_name]

    result = summary(run)
    result["drafts"] = {name: summary(r) for name, r in runs.runs.items()}
    result["attribute_accuracy"] = attribute_accuracy(runs)
    result["hf"] = {
        method: {
            "images": hf.images,
            "identical": hf.identical,
            "tok_s": _round(hf.tokens / hf.seconds if hf.seconds else None),
            "speedup": _ratio(hf.tokens / hf.seconds if hf.seconds else None, run.baseline.tok_s),
        }
        for method, hf in runs.hf.items()
    }
    cost = prefix_cost(run)
    plotted = plot_accepted(
        plot, run.spec.accepted, f"{CLI}: {trees[first_name]}, draft {first_name}, {run.images} images"
    )
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    shown = [(root_file(samples, r["id"]), r["text"]) for r in records if r.get("draft") == first_name][:8]
    sheeted = caption_sheet(sheet, shown, f"{args.target}: greedy captions (identical with every draft)")
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")},
        "tree_resolved": trees,
        "draft_resolved": list(runs.runs),
        "device_resolved": str(dec.target.device),
        "dtype_resolved": str(dec.target.dtype).replace("torch.", ""),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(table(runs, trees))
    print()
    print("image prefix cost (mean per image; prefill / step = how many decoding steps one prefill costs):")
    print(cost_table(cost, trees[first_name]))
    accuracy = result["attribute_accuracy"]
    if accuracy is not None:
        print()
        print(f"attribute accuracy of the captions ({runs.scored} images with a drawn scene):")
        print(markdown_table([accuracy], list(accuracy)))
    if shown:
        print()
        for path, text in shown[:5]:
            print(f"{path.name}: {text}")
    if out is not None:
        write_json(out, {"summary": result, "prefix_cost": cost, "config": config}, overwrite=args.overwrite)
    files = f"records: {jsonl}" + (f"  summary: {out}" if out is not None else "")
    files += f"  plot: {plot}" if plotted else "  (no plot: matplotlib is not installed)"
    print(files + (f"  captions: {sheet}" if sheeted else ""), file=sys.stderr)
    if run.images == 0:
        print("warning: no image could be captioned", file=sys.stderr)
        return 1
    return 0


def check_vlm_target(dec: Any, target: str) -> int:
    """The target's image token; ConfigError for a text-only target or one without a processor."""
    import specvlm

    image_token = dec.target.image_token_id
    if image_token is None:
        raise specvlm.ConfigError(
            f"--target {target} is a text-only model: {CLI} needs a vision-language (llava) target"
        )
    if dec.target.processor is None:
        raise specvlm.ConfigError(
            f"--target {target} has no processor (preprocessor_config.json / processor_config.json): save the "
            "model's processor into the folder with processor.save_pretrained"
        )
    return int(image_token)


def root_file(samples: list[Sample], image_id: int) -> Path:
    return next(s.path for s in samples if s.id == image_id)


if __name__ == "__main__":
    run_cli(main)
