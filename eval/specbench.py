"""`python -m eval.specbench`: Spec-Bench-format evaluation, HF greedy `generate` vs specvlm, same prompts, one run.

Reads Spec-Bench's `question.jsonl` (`question_id`, `category`, `turns`); multi-turn questions run as a conversation
(turn 2's prompt holds that method's own turn-1 answer in the chat history, as Spec-Bench does). Writes one answer
file per method in Spec-Bench's `model_answer` format (`--answer-dir DIR`: `hf_generate.jsonl` and one
`<method>.jsonl` per specvlm method), and a table by subtask computed from those files the way Spec-Bench's
`evaluation/speed.py` reads them: per question sum(new_tokens) / sum(wall_time), the mean over questions, method over
baseline. Without `--question-file` it runs the bundled sample written for this project (eval/data/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.args import TREE_CHOICES, add_io_args, add_model_args
from eval.common import hf_run, load_decoder, run_cli, select_range
from eval.methods import SPECVLM, Method
from eval.results import markdown_table, pyplot, result_paths, save_figure, write_json, write_jsonl
from specvlm.draft_spec import spec_list_arg

CLI = "specbench"
SAMPLE = Path(__file__).parent / "data" / "specbench_sample.jsonl"
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SUBTASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
BASELINE = "hf_generate"


@dataclass(frozen=True)
class Question:
    """One Spec-Bench question: its id, category and user turns."""

    question_id: int | str
    category: str
    turns: tuple[str, ...]

    @property
    def subtask(self) -> str:
        return subtask_of(self.category)


def subtask_of(category: str) -> str:
    return "mt_bench" if category in MT_BENCH else category


def load_questions(path: Path) -> list[Question]:
    """Questions from a Spec-Bench question.jsonl; a line without question_id / category / turns is an error."""
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path} (give Spec-Bench's data/spec_bench/question.jsonl)")
    out: list[Question] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            turns = tuple(str(t) for t in item["turns"])
            question = Question(item["question_id"], str(item["category"]), turns)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}:{number}: not a Spec-Bench question ({err}): need question_id, category, turns"
            ) from err
        if not turns:
            raise ValueError(f"{path}:{number}: question {question.question_id} has no turns")
        out.append(question)
    if not out:
        raise ValueError(f"{path} holds no questions")
    return out


def conversation_ids(dec: Any, history: Sequence[dict[str, str]]) -> list[int]:
    """The target's prompt ids for a chat history ending with a user turn (chat template, else plain turns)."""
    tok = dec.tokenizer
    if tok is not None and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(list(history), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return dec.prompt_ids([int(i) for i in ids])
    text = "".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n" for m in history)
    return dec.prompt_ids(text + "Assistant:", chat=False)


@dataclass(frozen=True)
class Turn:
    tokens: list[int]
    seconds: float
    accept_lengths: list[int]


def run_turn(decoders: dict[str | None, Any], method: Method, ids: list[int], max_new_tokens: int) -> Turn:
    dec = decoders[None]
    if method.hf is not None:
        got = hf_run(dec, method.hf, ids, max_new_tokens=max_new_tokens)
        if got is None:
            raise ValueError(f"{method.hf} needs a draft model (--draft a folder or hub id of a small LM)")
        tokens, seconds = got
        return Turn(tokens, seconds, [1] * len(tokens))
    gen = decoders[method.draft].generate(prompt=ids, max_new_tokens=max_new_tokens, tree=method.tree)
    return Turn(gen.tokens, gen.stats.seconds, [s.accepted for s in gen.stats.steps])


def answer_record(question: Question, method: str, texts: list[str], turns: list[Turn]) -> dict[str, Any]:
    """One line of a Spec-Bench model_answer file."""
    return {
        "question_id": question.question_id,
        "category": question.category,
        "model_id": method,
        "choices": [
            {
                "index": 0,
                "turns": texts,
                "new_tokens": [len(t.tokens) for t in turns],
                "wall_time": [round(t.seconds, 6) for t in turns],
                "accept_lengths": [a for t in turns for a in t.accept_lengths],
                "decoding_steps": [len(t.accept_lengths) for t in turns],
            }
        ],
        "tstamp": time.time(),
    }


def read_answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answer_path(answer_dir: Path, method: str) -> Path:
    """A method's answer file: its label, with a draft folder's path separators as '_' (one file, not a subfolder)."""
    return answer_dir / (method.replace("/", "_").replace("\\", "_") + ".jsonl")


def speed_table(answer_dir: Path, methods: Sequence[str], subtasks: Sequence[str]) -> list[dict[str, Any]]:
    """Speedups per subtask read back from the answer files, the way Spec-Bench's speed.py computes them: per
    question sum(new_tokens) / sum(wall_time), the mean over the subtask's questions, method over hf_generate; mean
    accepted tokens = mean of accept_lengths."""
    answers = {m: {a["question_id"]: a for a in read_answers(answer_path(answer_dir, m))} for m in methods}
    base = answers[BASELINE]
    rows: list[dict[str, Any]] = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for task in [*subtasks, "overall"]:
            picked = [a for a in answers[method].values() if task == "overall" or subtask_of(a["category"]) == task]
            if not picked:
                continue

            def rate(a: dict[str, Any]) -> float:
                choice = a["choices"][0]
                return sum(choice["new_tokens"]) / max(sum(choice["wall_time"]), 1e-9)

            speed = sum(rate(a) for a in picked) / len(picked)
            base_picked = [base[a["question_id"]] for a in picked]
            base_speed = sum(rate(a) for a in base_picked) / len(base_picked)
            accepts = [x for a in picked for x in a["choices"][0]["accept_lengths"]]
            same = sum(a["choices"][0]["turns"] == base[a["question_id"]]["choices"][0]["turns"] for a in picked)
            row[task] = {
                "speedup": round(speed / base_speed, 3),
                "tokens_per_second": round(speed, 3),
                "mean_accepted": round(sum(accepts) / max(len(accepts), 1), 3),
                "identical": f"{same}/{len(picked)}",
            }
        rows.append(row)
    return rows


def table_lines(rows: list[dict[str, Any]], subtasks: Sequence[str]) -> str:
    """Markdown: one row per method, `speedup (mean accepted)` per subtask, and identical answers overall."""
    cols = [t for t in [*subtasks, "overall"] if any(t in r for r in rows)]
    flat = []
    for r in rows:
        cells: dict[str, Any] = {"method": r["method"]}
        for t in cols:
            if t in r:
                cells[t] = f"{r[t]['speedup']:.2f}x ({r[t]['mean_accepted']:.2f})"
        cells["identical"] = r["overall"]["identical"]
        flat.append(cells)
    return markdown_table(flat, ["method", *cols, "identical"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.specbench",
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m eval.specbench --drafts ngram,trained+ngram --trees dynamic --answer-dir "
        "results/specbench --out results/specbench.json",
    )
    parser.add_argument(
        "--question-file", type=Path, default=SAMPLE, help=f"Spec-Bench question.jsonl (default: {SAMPLE.name})"
    )
    parser.add_argument("--answer-dir", type=Path, help="write Spec-Bench model_answer files here (default: next to "
                        "--out, else results/specbench-answers)")  # fmt: skip
    parser.add_argument("--categories", help="comma-separated categories or subtasks to keep (default: all)")
    parser.add_argument("--trees", default="dynamic", help=f"comma-separated trees from {', '.join(TREE_CHOICES)}")
    parser.add_argument(
        "--drafts",
        metavar="A,B",
        type=spec_list_arg,
        help="comma-separated drafts to compare (default: the decoder's default draft)",
    )
    parser.add_argument(
        "--hf", default=BASELINE, help="comma-separated HF baselines (hf_generate always runs first, as the baseline)"
    )
    parser.add_argument("--plot", metavar="PNG", help="bar chart of speedups by subtask (default: next to --out)")
    add_model_args(parser)
    add_io_args(parser)
    return parser


def pick(questions: list[Question], categories: str | None) -> list[Question]:
    if not categories:
        return questions
    keep = {c.strip() for c in categories.split(",") if c.strip()}
    known = set(MT_BENCH) | set(SUBTASKS) | {q.category for q in questions}
    bad = sorted(keep - known)
    if bad:
        raise ValueError(f"unknown categories {bad}: use {', '.join(sorted(known))}")
    return [q for q in questions if q.category in keep or q.subtask in keep]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    bad = [t for t in trees if t not in TREE_CHOICES]
    if bad:
        raise ValueError(f"unknown tree(s) {bad}: use {', '.join(TREE_CHOICES)}")
    questions = select_range(pick(load_questions(args.question_file), args.categories), args.start, args.end,
                             args.limit)  # fmt: skip
    out, jsonl = result_paths(args, CLI)
    answer_dir = args.answer_dir or (out.with_name(out.stem + "-answers") if out else Path("results") / "specbench")
    dec = load_decoder(args)
    decoders: dict[str | None, Any] = {None: dec}
    drafts: list[str | None] = [None]
    if args.drafts:
        from drafters.build import build
        from specvlm import Decoder
        from specvlm.options import LoadOptions

        opts = LoadOptions(dtype=dec.target.dtype, device=dec.target.device)
        drafts = list(args.drafts)
        for d in drafts:
            decoders[d] = Decoder(dec.target, build(d, dec.target, opts))
    hf = [BASELINE, *(m.strip() for m in args.hf.split(",") if m.strip() and m.strip() != BASELINE)]
    methods = [Method(m) for m in hf]
    for d in drafts:
        for t in trees:
            if t == "ar" and d != drafts[0]:
                continue  # the autoregressive loop drafts nothing: one run of it serves every draft
            methods.append(Method(SPECVLM, tree=t, draft=d))
    answer_dir.mkdir(parents=True, exist_ok=True)
    for m in methods:
        path = answer_path(answer_dir, m.label)
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite, or choose another --answer-dir")
        path.write_text("")
    write_jsonl(jsonl, [])
    dec.generate(prompt="Hello.", max_new_tokens=8)  # warm-up (and the cost table, measured outside the timings)
    dec.target.forward_costs()
    for q in tqdm(questions, desc=CLI, unit="question", file=sys.stderr, dynamic_ncols=True):
        for m in methods:
            history: list[dict[str, str]] = []
            texts: list[str] = []
            turns: list[Turn] = []
            for user in q.turns:
                history.append({"role": "user", "content": user})
                turn = run_turn(decoders, m, conversation_ids(dec, history), args.max_new_tokens)
                text = dec.decode_text(turn.tokens)
                history.append({"role": "assistant", "content": text})
                texts.append(text)
                turns.append(turn)
            record = answer_record(q, m.label, texts, turns)
            write_jsonl(answer_path(answer_dir, m.label), [record], append=True)
            write_jsonl(jsonl, [{"method": m.label, **record}], append=True)
    subtasks = [t for t in SUBTASKS if any(q.subtask == t for q in questions)]
    rows = speed_table(answer_dir, [m.label for m in methods], subtasks)
    print(table_lines(rows, subtasks))
    if out is not None:
        config = {k: v for k, v in vars(args).items() if k not in ("debug", "overwrite")}
        config["draft_resolved"] = {str(k): getattr(v.drafter, "name", "") for k, v in decoders.items()}
        write_json(out, {"rows": rows, "questions": len(questions), "config": config}, overwrite=args.overwrite)
        _plot(rows, subtasks, Path(args.plot) if args.plot else out.with_suffix(".png"))
    return 0


def _plot(rows: list[dict[str, Any]], subtasks: Sequence[str], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    tasks = [*subtasks, "overall"]
    shown = [r for r in rows if r["method"] != BASELINE]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(shown), 1)
    for i, r in enumerate(shown):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [r.get(t, {}).get("speedup", 0.0) for t in tasks], width=width, label=r["method"])
    ax.axhline(1.0, color="#999", lw=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=20)
    ax.set_ylabel("speedup over HF greedy generate")
    ax.set_title("Spec-Bench-format subtasks (same prompts, one run)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
