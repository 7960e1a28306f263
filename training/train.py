"""Train a draft for a target from the target's own text: `python -m training.train`.

By default it distils a feature draft (drafters/feature_draft.py; the trainer is training/feature_draft.py) from
self-distillation data (training/selfdistill.py; generated first when `--data` does not exist) and writes an
HF-format folder that `specvlm.load(draft=PATH)` loads. With `--exits 16,24,28` it trains the exits of layer-skip
drafts instead (training/exits.py), used as `draft="layerskip:K:OUT"`. Both resume from OUT's checkpoint.

  python -m training.train --data runs/distill/data.jsonl --out runs/draft --epochs 3
  python -m training.train --exits 16,24,28 --data runs/distill/data.jsonl --out runs/exits
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from training import exits, feature_draft
from training.common import CLI, TrainConfig
from training.selfdistill import stop_ids


def parse_args(argv: list[str] | None) -> TrainConfig:
    d = TrainConfig(data=[], out="")
    ap = argparse.ArgumentParser(prog=CLI, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        nargs="+",
        default=["runs/distill/data.jsonl"],
        help="self-distillation JSONL file(s) (the first is made with training.selfdistill if missing)",
    )
    ap.add_argument("--out", default="runs/draft", help="output folder (HF format); resumes from its checkpoint")
    ap.add_argument("--head-size", type=int, default=d.head_size, help="reduced output vocabulary of the draft")
    ap.add_argument("--layers", type=int, default=d.layers, help="decoder layers of the draft")
    ap.add_argument("--levels", type=int, default=d.levels, help="unrolled drafting steps trained")
    ap.add_argument("--level-decay", type=float, default=d.level_decay, help="loss weight ratio of level j+1 to j")
    ap.add_argument("--reg-weight", type=float, default=d.reg_weight, help="weight of the feature regression")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="padded tokens per batch")
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget (0 = none)")
    ap.add_argument("--val-share", type=float, default=d.val_share)
    ap.add_argument("--init", choices=["last-layer", "random"], default=d.init)
    ap.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue from a saved feature draft (e.g. drafters/weights/smollm2-135m-feature): its weights and "
        "its reduced head (--head-size is then ignored, unless --head-from-data)",
    )
    ap.add_argument(
        "--head-from-data",
        action="store_true",
        help="with --init-from: pick a new reduced head of --head-size tokens instead of keeping the saved one: "
        "the stop tokens, every response token of this run's data seen twice or more, then the saved head's "
        "tokens (the head only chooses which of the target's output rows the draft scores: the weights carry over)",
    )
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = default)")
    ap.add_argument("--target", default=None, help="target (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument(
        "--exits",
        default="",
        metavar="K1,K2",
        help="train the exits of layer-skip drafts with these layer counts (e.g. 16,24,28; SD2-style, all "
        "at once, the target frozen) instead of a feature draft; use them as draft='layerskip:K:OUT'",
    )
    ap.add_argument("--val-records", type=int, default=0, help="score agreement on this many held-out records (0: all)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    ap.add_argument("--autocast", choices=["off", "bf16"], default=d.autocast,
                    help="bf16: train under bfloat16 autocast, faster on GPUs and on CPUs with AVX512-BF16/AMX "
                    "(the weights, the optimizer and the saved draft are unchanged; docs/performance.md has the "
                    "speed-up)")  # fmt: skip
    return TrainConfig(**vars(ap.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from specvlm.embedded import load_embedded
    from specvlm.loading import load_model
    from specvlm.options import LoadOptions, resolve_device

    opts = LoadOptions(dtype=torch.float32, device=resolve_device(cfg.device))
    if cfg.target is None:
        target, tokenizer = load_embedded(opts)
    else:
        loaded = load_model(cfg.target, opts)
        target, tokenizer = loaded.model, loaded.tokenizer
    target.eval().requires_grad_(False)
    if cfg.exits:
        try:  # a bad --exits: one line, not a traceback
            exits.parse_exits(cfg.exits, int(target.config.get_text_config().num_hidden_layers))
        except ValueError as err:
            raise SystemExit(f"{CLI}: error: {err}") from None
        report = exits.train(target, cfg, sys.stdout, stop_ids(tokenizer))
        print(json.dumps({"before": report["before"], "final": report["final"], "steps": report["steps"]}))
        return
    report = feature_draft.train(target, cfg, sys.stdout, stop_ids(tokenizer), tokenizer)
    print(json.dumps({"final": report["final"], "data": report["data"], "steps": report["steps"]}))


if __name__ == "__main__":
    main()
