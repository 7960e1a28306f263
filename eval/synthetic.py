"""`python -m eval.synthetic`: verification cost by tree size and engine overhead per step, on a random llava.

The target is a llava-shaped model with random weights built from a config: no download, no tokenizer, no image file.

python -m eval.synthetic --shape 7b-llava --out results/synthetic-7b.json      # a GPU: Llama-2-7B + CLIP ViT-L/14-336
python -m eval.synthetic --shape tiny-llava --out /tmp/synthetic.json          # CPU, seconds: the same code path

The model is built directly on the device in the requested dtype (`torch.device` context + `from_config(dtype=)`),
so a 7B model never passes through CPU memory. The prompt is one image (random pixel values; the image-token count
comes from the vision config: 576 for CLIP-L/14 at 336 px) and a short random text prompt. Then:

1. verification cost: `TargetModel.score` (one forward with the tree's 4D mask and position ids) over random trees
   of each size on top of the image prefix, the cache cut back after each, the device synchronised around each
   timed forward (median of --reps);
2. engine overhead: `specvlm.engine.decode` with n-gram drafting (no draft forwards) for each tree in --trees.
   Overhead per step = measured step time - the synchronised forward cost of a tree of that size (interpolated from
   1.), which holds on a GPU too, where the engine's own split books asynchronous kernel time under whatever next
   waits for the device. The engine's split (draft / target / verify / cache / other) is reported as well.

Random weights make random text: a random model's greedy output soon cycles, so n-grams do get accepted, but
tokens per call say nothing about a trained model. What transfers is the cost side: ms per forward by tree size
and the engine's ms per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.args import cli_parser, positive_int, size_list
from eval.common import hardware, run_cli
from eval.results import check_writable, markdown_table, pyplot, save_figure, write_json

if TYPE_CHECKING:
    import torch
    from transformers import LlavaConfig

    from specvlm.models import TargetModel
    from specvlm.stats import GenerationStats

CLI = "synthetic"


@dataclass(frozen=True)
class Shape:
    """A llava-style model's dimensions: Llama text model, CLIP vision tower."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    image_token_id: int
    max_positions: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    projection_dim: int


SHAPES: dict[str, Shape] = {
    # llava-1.5-7b: Llama-2-7B text model (32000 words + <image> + padding to 32064), CLIP ViT-L/14 at 336 px
    "7b-llava": Shape(4096, 11008, 32, 32, 32, 32064, 32000, 4096, 1024, 4096, 24, 16, 336, 14, 768),
    # the same layout, tiny: runs on a CPU in seconds, with the same 576-token image prefix
    "tiny-llava": Shape(64, 128, 2, 4, 2, 32064, 32000, 4096, 32, 64, 2, 2, 336, 14, 32),
}

DESCRIPTION = """\
Build a llava-shaped model with random weights on the device (no download) and measure the target's tree
verification cost by tree size with an image prefix, and the engine's own overhead per decoding step."""

EPILOG = """\
examples:
  python -m eval.synthetic --shape 7b-llava --out results/synthetic-7b.json
  python -m eval.synthetic --shape 7b-llava --dtype float16 --sizes 1,8,32,128 --reps 20 --out results/s.json
  python -m eval.synthetic --shape tiny-llava --out /tmp/synthetic.json --overwrite

Writes the JSON (--out), a markdown table next to it (.md) and a plot of ms per forward by tree size (.png,
when matplotlib is installed)."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(CLI, DESCRIPTION, EPILOG)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b-llava", help="model dimensions (7b-llava)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument(
        "--sizes",
        type=size_list,
        default=[1, 2, 4, 8, 16, 32, 64, 128],
        metavar="LIST",
        help="tree sizes (nodes, root included) to time (default 1,2,4,8,16,32,64,128)",
    )
    parser.add_argument("--reps", type=positive_int, default=10, metavar="N", help="timed forwards per size (10)")
    parser.add_argument("--prompt-tokens", type=positive_int, default=32, metavar="N", help="text after the image (32)")
    parser.add_argument(
        "--trees", default="ar,static,opt", metavar="A,B", help="trees for the engine-overhead runs (ar,static,opt)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=128, metavar="N", help="per engine run (default 128)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weights, pixels and prompt (default 0)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSON result (.md and .png beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


# -- the model ------------------------------------------------------------------------------------------------------
def llava_config(shape: Shape) -> LlavaConfig:
    """A llava-1.5 style config; no BOS/EOS/pad ids, so a run never stops early on a random EOS."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.projection_dim,
    )
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=shape.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def image_tokens(config: LlavaConfig) -> int:
    """Image features per image: one per patch, plus CLIP's CLS token with the 'full' feature strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """LlavaForConditionalGeneration with random weights, allocated and initialised on `device` in `dtype`."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(llava_config(shape), dtype=dtype)
    return model.eval()


def synthetic_prompt(config: LlavaConfig, prompt_tokens: int, device: torch.device, dtype: torch.dtype, seed: int):
    """(ids, pixel_values): [text token, image tokens..., prompt_tokens random text tokens]; pixels [1, 3, S, S]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    token = int(config.image_token_id)
    text = torch.randint(3, token, (1 + prompt_tokens,), generator=gen).tolist()  # ids below <image>: "words"
    ids = [text[0], *([token] * image_tokens(config)), *text[1:]]
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen).to(device=device, dtype=dtype)  # [1, 3, S, S]
    return ids, pixels


# -- measurements ---------------------------------------------------------------------------------------------------
def verification_costs(
    target: TargetModel, ids: list[int], pixels: torch.Tensor, sizes: list[int], reps: int, seed: int
) -> dict[str, float]:
    """Median ms of one tree forward by tree size, on top of the prefilled image prompt."""
    import torch

    from specvlm.cache import GrowingCache
    from specvlm.cost_timing import tree_costs

    cache = GrowingCache(target.model.config)  # the engine's cache, so the costs are the engine's
    target.prefill(ids, cache, pixel_values=pixels)
    words = torch.arange(3, int(target.image_token_id or target.vocab_size))  # [K] no image tokens in the trees
    return tree_costs(target, cache, sizes, reps, torch.Generator().manual_seed(seed), token_ids=words)


def forward_ms(costs: dict[str, float], size: int) -> float:
    """Forward cost of a tree of `size` nodes, linear between measured sizes (extrapolated beyond the last)."""
    from specvlm.costs import CostTable

    return CostTable.from_dict(costs).ms(size)


def engine_runs(
    target: TargetModel,
    ids: list[int],
    pixels: torch.Tensor,
    trees: list[str],
    max_new_tokens: int,
    costs: dict[str, float],
) -> list[dict[str, Any]]:
    """One decode per tree with n-gram drafting: tokens per call, ms per step, engine overhead per step."""
    from drafters.ngram import NGramDrafter
    from specvlm import Decoder
    from specvlm.engine import Request, decode
    from specvlm.sampling import Sampling
    from specvlm.stats import GenerationStats
    from specvlm.trees import make_tree

    dec = Decoder(target, NGramDrafter())
    request = Request(tuple(ids), max_new_tokens, Sampling(), {"pixel_values": pixels})
    rows = []
    for name in ["warm-up", *trees]:
        stats = GenerationStats()
        builder = make_tree("ar" if name == "warm-up" else name, dec.default_tree)
        for _ in decode(dec.target, dec.drafter, builder, request, stats):
            pass
        if name != "warm-up":
            rows.append(engine_row(name, stats, costs))
    return rows


def engine_row(name: str, stats: GenerationStats, costs: dict[str, float]) -> dict[str, Any]:
    """ms per target call: the step, the forward a tree of its size costs (`costs` were timed through the same
    `TargetModel.score`, padding included), and the rest: the engine's overhead."""
    calls = max(1, stats.target_calls)
    step_ms = 1000 * sum(s.total_s for s in stats.steps) / calls
    fwd_ms = sum(forward_ms(costs, s.tree_size) for s in stats.steps) / calls
    split = {k: round(1000 * v / calls, 3) for k, v in stats.split().items() if k != "prefill"}
    return {
        "tree": name,
        "new_tokens": stats.new_tokens,
        "target_calls": stats.target_calls,
        "tokens_per_call": round(stats.mean_accepted, 3),
        "mean_tree_size": round(stats.mean_tree_size, 2),
        "step_ms": round(step_ms, 3),
        "forward_ms": round(fwd_ms, 3),
        "overhead_ms": round(step_ms - fwd_ms, 3),
        "overhead_share": round((step_ms - fwd_ms) / step_ms, 4) if step_ms > 0 else None,
        "decode_tok_s": round(stats.decode_tokens_per_second, 2),
        "prefill_ms": round(1000 * stats.prefill_s, 2),
        "split_ms": split,
    }


# -- output ---------------------------------------------------------------------------------------------------------
def cost_rows(costs: dict[str, float]) -> list[dict[str, Any]]:
    one = costs.get("1")
    return [
        {
            "tree nodes": int(n),
            "forward ms": ms,
            "ms per node": round(ms / int(n), 3),
            "x 1-node forward": round(ms / one, 2) if one else None,
        }
        for n, ms in costs.items()
    ]


COST_COLUMNS = ["tree nodes", "forward ms", "ms per node", "x 1-node forward"]
ENGINE_COLUMNS = [
    "tree",
    "tokens_per_call",
    "mean_tree_size",
    "step_ms",
    "forward_ms",
    "overhead_ms",
    "overhead_share",
    "decode_tok_s",
]


def report(result: dict[str, Any]) -> str:
    head = (
        f"synthetic {result['shape']} ({result['parameters'] / 1e6:,.1f} M parameters, random weights), "
        f"{result['device']}; prefix {result['prefix_tokens']} tokens "
        f"({result['image_tokens']} image tokens)"
    )
    return "\n\n".join(
        [
            head,
            "target verification cost by tree size (one forward, 4D tree mask, median):",
            markdown_table(cost_rows(result["verify_ms"]), COST_COLUMNS),
            "engine per step (n-gram draft; overhead = step - synchronised forward of the same tree size):",
            markdown_table(result["engine"], ENGINE_COLUMNS),
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    sizes = [int(n) for n in result["verify_ms"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, list(result["verify_ms"].values()), marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tree nodes scored in one forward")
    ax.set_ylabel("ms per forward")
    ax.set_title(f"{result['shape']} (random weights), {result['device']}", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    for path in (out, out.with_suffix(".md"), out.with_suffix(".png")):
        check_writable(path, args.overwrite)
    trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    import torch

    from specvlm.models import TargetModel
    from specvlm.options import resolve_device, resolve_dtype
    from specvlm.trees import make_tree

    for name in trees:
        make_tree(name)  # unknown names fail before the model is built
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    shape = SHAPES[args.shape]
    t0 = time.perf_counter()
    model = build_model(shape, device, dtype, args.seed)
    built_s = time.perf_counter() - t0
    target = TargetModel(model)
    ids, pixels = synthetic_prompt(model.config, args.prompt_tokens, device, dtype, args.seed)
    print(f"built {args.shape} on {device} in {built_s:.1f} s; timing tree forwards ...", file=sys.stderr)
    costs = verification_costs(target, ids[:-1], pixels, args.sizes, args.reps, args.seed)
    print("running the engine ...", file=sys.stderr)
    engine = engine_runs(target, ids, pixels, trees, args.max_new_tokens, costs)
    result: dict[str, Any] = {
        "shape": args.shape,
        "dims": dataclasses.asdict(shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": hardware(target),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "image_tokens": image_tokens(model.config),
        "prefix_tokens": len(ids) - 1,
        "verify_ms": costs,
        "engine": engine,
        "build_s": round(built_s, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "-m", f"eval.{CLI}", *(sys.argv[1:] if argv is None else argv)]),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    text = report(result)
    print(text)
    write_json(out, result, overwrite=args.overwrite)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
