"""Top-1 agreement (and acceptance, KL) of drafts with the embedded target: `python -m eval.agreement`.

Scored, by kind of prompt, on one of:
  heldout    the held-out split of the self-distillation data (the split `training.train` never trains on), each
             record's stored response, grouped by the record's source (its prompt kind);
  bench      the target's greedy answers to `eval.bench --dataset mixed`'s prompts (bundled news articles to
             summarise, the held-out questions and instructions);
  specbench  the target's greedy answers to the first turns of a Spec-Bench question file, by subtask.

  python -m eval.agreement --data runs/kinds/data-31.jsonl runs/kinds/data-32.jsonl --limit 16 \\
      --drafts trained,runs/draft5
  python -m eval.agreement --on bench --limit 32 --drafts trained,runs/draft
  python -m eval.agreement --on specbench --question-file eval/data/specbench_check.jsonl --drafts trained
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from specvlm.draft_spec import spec_list_arg
from specvlm.potential import RegionScores
from training.common import split
from training.selfdistill import read_dataset

CLI = "python -m eval.agreement"


def main(argv: list[str] | None = None) -> None:
    import specvlm
    from eval.results import markdown_table
    from specvlm.potential import potentials

    ap = argparse.ArgumentParser(prog=CLI, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--on", choices=["heldout", "bench", "specbench"], default="heldout", help="which prompts (see above)"
    )
    ap.add_argument(
        "--question-file",
        type=Path,
        default=Path("eval/data/specbench_check.jsonl"),
        help="--on specbench: a Spec-Bench question.jsonl",
    )
    ap.add_argument("--max-new-tokens", type=int, default=96, help="--on bench / specbench: greedy answer length")
    ap.add_argument("--data", nargs="+", default=["runs/distill/data.jsonl"], help="the training run's JSONL files")
    ap.add_argument("--val-share", type=float, default=0.05, help="as given to training.train")
    ap.add_argument("--seed", type=int, default=0, help="as given to training.train")
    ap.add_argument(
        "--limit", type=int, default=40, help="held-out sequences per kind (bench: prompts; specbench: questions)"
    )
    ap.add_argument(
        "--drafts",
        type=spec_list_arg,
        default="trained,layerskip:16,layerskip:24,layerskip:28",
        help="comma-separated draft specs",
    )
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dec = specvlm.load(draft="ngram")
    from drafters.build import build
    from specvlm.options import LoadOptions

    opts = LoadOptions(dtype=dec.target.dtype, device=dec.target.device)
    drafts = {n: build(n, dec.target, opts) for n in args.drafts}
    groups = {"bench": bench_groups, "specbench": specbench_groups}.get(args.on, heldout_groups)(dec, args)
    rows = []
    pooled: dict[str, list[RegionScores]] = {n: [] for n in args.drafts}
    for group, (prompts, continuations) in groups.items():
        scores = potentials(dec.target, drafts, prompts, continuations=continuations,
                            max_new_tokens=args.max_new_tokens, batch_size=4)  # fmt: skip
        for n, s in zip(args.drafts, scores, strict=True):
            rows.append(score_row(f"{group} ({len(prompts)})", n, s.main))
            pooled[n].append(s.main)
    if len(groups) > 1:  # every group's positions together
        n_prompts = sum(len(prompts) for prompts, _ in groups.values())
        rows += [score_row(f"all ({n_prompts})", n, pool(parts)) for n, parts in pooled.items()]
    print(markdown_table(rows, ["prompts", "draft", "agreement", "acceptance", "kl"]))


def pool(parts: list[RegionScores]) -> RegionScores:
    """Scores over the positions of all `parts` together (each part's means weighted by its positions)."""
    total = sum(p.positions for p in parts)

    def mean(field: str) -> float:
        return sum(getattr(p, field) * p.positions for p in parts) / max(1, total)

    return RegionScores(kl=mean("kl"), acceptance=mean("acceptance"), agreement=mean("agreement"), positions=total)


def score_row(prompts: str, draft: str, m: RegionScores) -> dict[str, Any]:
    return {"prompts": prompts, "draft": draft, "agreement": round(m.agreement, 4),
            "acceptance": round(m.acceptance, 4), "kl": round(m.kl, 3)}  # fmt: skip


Group = tuple[list[list[int]], list[list[int]] | str]  # prompts, continuations (or "target")


def heldout_groups(dec: Any, args: argparse.Namespace) -> dict[str, Group]:
    """The held-out split's first `--limit` records of each source (prompt kind), teacher-forced on their stored
    responses."""
    records = [r for p in args.data for r in read_dataset(Path(p))]
    _, val = split(records, args.val_share, args.seed)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in val:
        kept = by_kind.setdefault(r.get("source", "held-out"), [])
        if len(kept) < args.limit:
            kept.append(r)
    by_kind = dict(sorted(by_kind.items()))
    return {
        kind: ([r["ids"][: r["prompt_len"]] for r in kept], [r["ids"][r["prompt_len"] :] for r in kept])
        for kind, kept in by_kind.items()
    }


def specbench_groups(dec: Any, args: argparse.Namespace) -> dict[str, Group]:
    """The first turn of each of `--question-file`'s first `--limit` questions, by subtask, answered greedily."""
    from eval.specbench import conversation_ids, load_questions

    groups: dict[str, Group] = {}
    for q in load_questions(args.question_file)[: args.limit]:
        ids = conversation_ids(dec, [{"role": "user", "content": q.turns[0]}])
        groups.setdefault(q.subtask, ([], "target"))[0].append(ids)
    return groups


def bench_groups(dec: Any, args: argparse.Namespace) -> dict[str, Group]:
    """`eval.bench --dataset mixed --limit N`'s prompts by kind (news / question / instruction), answered greedily."""
    from eval.bench import build_parser, load_prompts

    prompts = load_prompts(build_parser().parse_args(["--dataset", "mixed", "--limit", str(args.limit)]), dec)
    kinds = {"n": "news", "q": "question", "i": "instruction"}
    groups: dict[str, Group] = {}
    for pid, ids in prompts:
        groups.setdefault(kinds.get(pid[0], "other"), ([], "target"))[0].append(ids)
    return groups


if __name__ == "__main__":
    main(sys.argv[1:])
