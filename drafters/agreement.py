"""`python -m drafters.agreement`: top-1 agreement (and acceptance, KL) of drafts with the embedded target on the
held-out split of the self-distillation data (the same split `drafters.train` never trains on).

  python -m drafters.agreement --data runs/distill/data.jsonl runs/distill/data-sampled.jsonl --limit 40 \\
      --drafts trained,layerskip:16,layerskip:24,layerskip:28
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from drafters.selfdistill import read_dataset
from drafters.train import split

CLI = "python -m drafters.agreement"


def main(argv: list[str] | None = None) -> None:
    import specvlm
    from eval.common import markdown_table
    from specvlm.potential import potentials

    ap = argparse.ArgumentParser(prog=CLI, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["runs/distill/data.jsonl"], help="the training run's JSONL files")
    ap.add_argument("--val-share", type=float, default=0.05, help="as given to drafters.train")
    ap.add_argument("--seed", type=int, default=0, help="as given to drafters.train")
    ap.add_argument("--limit", type=int, default=40, help="held-out sequences scored")
    ap.add_argument("--drafts", default="trained,layerskip:16,layerskip:24,layerskip:28", help="comma-separated")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = [r for p in args.data for r in read_dataset(Path(p))]
    _, val = split(records, args.val_share, args.seed)
    val = val[: args.limit]
    dec = specvlm.load(draft="ngram")
    from specvlm.api import make_drafter
    from specvlm.models import LoadOptions

    opts = LoadOptions(dtype=dec.target.dtype, device=dec.target.device)
    names = [d.strip() for d in args.drafts.split(",") if d.strip()]
    drafts = {n: make_drafter(n, dec.target, opts) for n in names}
    scores = potentials(
        dec.target,
        drafts,
        [r["ids"][: r["prompt_len"]] for r in val],
        continuations=[r["ids"][r["prompt_len"] :] for r in val],
        batch_size=4,
    )
    rows = [
        {"draft": n, "agreement": round(m.agreement, 4), "acceptance": round(m.acceptance, 4), "kl": round(m.kl, 3)}
        for n, m in ((n, s.main) for n, s in zip(names, scores, strict=True))
    ]
    print(f"{len(val)} held-out sequences, {sum(len(r['ids']) - r['prompt_len'] for r in val)} response tokens")
    print(markdown_table(rows, ["draft", "agreement", "acceptance", "kl"]))


if __name__ == "__main__":
    main(sys.argv[1:])
