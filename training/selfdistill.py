"""Self-distillation data: the target answers prompts it (mostly) wrote itself, so no external dataset is needed.

Six prompt sources, all generated here:
  1. user turns sampled from the target's own chat distribution (T=1, top-p 0.95, after a bare user header),
  2. user turns that open with a question or request word ("How does", "Why do", "Write a", "Suggest" ...) and are
     sampled on from there (`--opened N`): the everyday questions and instructions users actually send,
  3. instruction templates x topics (explain / list / story / email / compare / advise ...),
  4. "summarise this article" over articles the target wrote in round 1 (summaries copy from their source, as the
     news evaluation does),
  5. the same over long texts (400-760 tokens) joined from answers in earlier files (`--long-summaries N --from
     FILES`), as long as the news evaluation's prompts (round-2 summaries are shorter; docs/performance.md).
  6. every kind a Spec-Bench-style benchmark covers (`--kinds N`, training/prompt_kinds.py): N prompts of each
     round-1 kind, then summaries, RAG, extraction and second turns over their answers; `source` names the kind.
Responses are the target's greedy continuations, which is what a greedy speculative decoder must predict.
The output is JSONL, one record per response: {"source", "prompt", "ids"} where `ids` = chat-formatted prompt +
response token ids.  Records are appended batch by batch, so a run can be stopped and resumed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from training.prompt_kinds import (
    OPENERS,
    SUMMARY_TEMPLATES,
    Prompt,
    record_key,
    round1_prompts,
    round2_prompts,
    template_prompts,
)


def stop_ids(tokenizer: Any) -> list[int]:
    names = ["<|im_end|>", "<|endoftext|>"]
    ids = [tokenizer.eos_token_id, *(i for i in tokenizer.convert_tokens_to_ids(names) if i is not None)]
    return sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})


def chat_ids(tokenizer: Any, text: str, history: tuple[str, ...] = ()) -> list[int]:
    """The chat template over `history` (user and assistant turns alternating) and then the user turn `text`."""
    roles = ("user", "assistant")
    msgs = [{"role": roles[i % 2], "content": t} for i, t in enumerate(history)] + [{"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel, batch: list[list[int]], max_new_tokens: int, pad_id: int, stop: list[int], **sampling: Any
) -> list[list[int]]:
    """Left-padded batched HF generation; returns each row's new tokens up to and including its first stop token."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(batch):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=stop,
        **sampling,
    )
    result = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in stop), len(row))
        result.append(row[:cut])
    return result


def user_header_ids(tokenizer: Any) -> list[int]:
    """The chat template's tokens up to where a user turn's text begins."""
    header = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False)
    return tokenizer(header.split("\x00")[0], add_special_tokens=False)["input_ids"]


def padding_id(tokenizer: Any, stop: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]


def sampled_user_prompts(
    model: PreTrainedModel, tokenizer: Any, n: int, batch_size: int, seed: int, stop: list[int]
) -> list[Prompt]:
    """User turns drawn from the target itself: a bare user header, sampled at T=1."""
    torch.manual_seed(seed)
    head_ids = user_header_ids(tokenizer)
    pad = padding_id(tokenizer, stop)
    out: list[Prompt] = []
    for _ in tqdm(range(0, n, batch_size), desc="sampling prompts", unit="batch", dynamic_ncols=True):
        rows = generate_batch(
            model, [head_ids] * batch_size, 48, pad, stop, do_sample=True, temperature=1.0, top_p=0.95
        )
        for row in rows:
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            if len(text) >= 12:
                out.append(Prompt("sampled", text))
    return out[:n]


def opened_user_prompts(
    model: PreTrainedModel,
    tokenizer: Any,
    n: int,
    batch_size: int,
    seed: int,
    stop: list[int],
    exclude: AbstractSet[str] = frozenset(),
) -> list[Prompt]:
    """User turns that begin with an opener word and are sampled on by the target (T=0.9, top-p 0.95) to the end of
    the line; prompts in `exclude` (e.g. the evaluation's, compared case- and space-insensitively) are dropped."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    head_ids = user_header_ids(tokenizer)
    newline = [t for nl in ("\n", "\n\n") for t in tokenizer(nl, add_special_tokens=False)["input_ids"]]
    pad = padding_id(tokenizer, stop)
    banned = {" ".join(e.lower().split()) for e in exclude}
    out: list[Prompt] = []
    seen: set[str] = set()
    bar = tqdm(total=n, desc="opened prompts", unit="prompt", dynamic_ncols=True)
    while len(out) < n:
        openers = [rng.choice(OPENERS) for _ in range(batch_size)]
        rows = [head_ids + tokenizer(o, add_special_tokens=False)["input_ids"] for o in openers]
        continued = generate_batch(model, rows, 40, pad, stop + newline, do_sample=True, temperature=0.9, top_p=0.95)
        for opener, new in zip(openers, continued, strict=True):
            text = (opener + tokenizer.decode(new, skip_special_tokens=True)).strip().split("\n")[0].strip()
            key = " ".join(text.lower().split())
            if len(out) < n and len(text) >= len(opener) + 8 and key not in banned and key not in seen:
                seen.add(key)
                out.append(Prompt("opened", text))
                bar.update(1)
    bar.close()
    return out


def by_length(prompts: list[tuple[Prompt, list[int]]], batch_size: int) -> Iterator[list[tuple[Prompt, list[int]]]]:
    """Batches of similar prompt length (less padding)."""
    ordered = sorted(prompts, key=lambda p: len(p[1]))
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(0).shuffle(batches)
    yield from batches


def answer(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: list[Prompt],
    out_path: Path,
    batch_size: int,
    max_new_tokens: int,
    stop: list[int],
    max_prompt_tokens: int = 768,
) -> list[dict[str, Any]]:
    """Greedy responses, appended to `out_path` batch by batch."""
    pad = padding_id(tokenizer, stop)
    encoded = [(p, chat_ids(tokenizer, p.text, p.history)) for p in prompts]
    encoded = [(p, ids) for p, ids in encoded if len(ids) <= max_prompt_tokens]
    records = []
    bar = tqdm(total=len(encoded), desc="answering", unit="prompt", dynamic_ncols=True)
    with out_path.open("a") as f:
        for batch in by_length(encoded, batch_size):
            t0 = time.perf_counter()
            rows = generate_batch(model, [ids for _, ids in batch], max_new_tokens, pad, stop, do_sample=False)
            for (p, ids), new in zip(batch, rows, strict=True):
                rec = {"source": p.source, "prompt": p.text, "ids": ids + new, "prompt_len": len(ids)}
                if p.history:
                    rec["history"] = list(p.history)
                f.write(json.dumps(rec) + "\n")
                records.append(rec)
            f.flush()
            made = sum(len(r) for r in rows)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{made / (time.perf_counter() - t0):.0f}")
    bar.close()
    return records


def response_text(tokenizer: Any, record: dict[str, Any]) -> str:
    """The target's answer in a record, as text."""
    return str(tokenizer.decode(record["ids"][record["prompt_len"] :], skip_special_tokens=True)).strip()


def is_long(record: dict[str, Any], tokens: int = 120) -> bool:
    """An answer long enough to be summarised."""
    return len(record["ids"]) - record["prompt_len"] >= tokens


def build_dataset(
    model: PreTrainedModel,
    tokenizer: Any,
    out_path: Path,
    n_sampled: int = 512,
    summary_share: float = 0.3,
    batch_size: int = 64,
    max_new_tokens: int = 256,
    seed: int = 0,
    chunk: int = 256,
    templates: bool = True,
    n_opened: int = 0,
    exclude: AbstractSet[str] = frozenset(),
) -> Path:
    """Round 1 (sampled, opened and template prompts) in chunks; after each chunk, summaries of its long answers
    (round 2), so that a run stopped at any point holds every kind of prompt.  Prompts already in `out_path` are
    skipped."""
    stop = stop_ids(tokenizer)
    rng = random.Random(seed)
    done = answered_prompts(out_path)
    round1 = (template_prompts(rng) if templates else []) + sampled_user_prompts(
        model, tokenizer, n_sampled, batch_size, seed, stop
    )
    if n_opened:
        round1 += opened_user_prompts(model, tokenizer, n_opened, batch_size, seed, stop, exclude)
    random.Random(seed + 1).shuffle(round1)
    for i in range(0, len(round1), chunk):
        todo = [p for p in round1[i : i + chunk] if p.key not in done]
        records = answer(model, tokenizer, todo, out_path, batch_size, max_new_tokens, stop)
        long_texts = [response_text(tokenizer, r) for r in records if is_long(r)]
        rng.shuffle(long_texts)
        n = round(len(records) * summary_share)
        summaries = [Prompt("summary", rng.choice(SUMMARY_TEMPLATES).format(a=a)) for a in long_texts[:n]]
        answer(model, tokenizer, summaries, out_path, batch_size, max_new_tokens, stop)
    return out_path


def build_kinds_dataset(
    model: PreTrainedModel,
    tokenizer: Any,
    out_path: Path,
    per_kind: int,
    share: float = 0.3,
    batch_size: int = 64,
    max_new_tokens: int = 256,
    seed: int = 0,
    chunk: int = 256,
    exclude: AbstractSet[str] = frozenset(),
) -> Path:
    """Every benchmark kind (training/prompt_kinds.py): `per_kind` round-1 prompts of each kind, in shuffled chunks;
    after each chunk, round-2 prompts (summaries, RAG, extraction, second turns) over its long answers, so a run
    stopped at any point holds every kind.  Prompts already in `out_path` are skipped: a stopped run resumes where
    it was (round 2 of a chunk is built from the chunk's answers, stored or new, with the chunk's own seed).
    Round-2 prompts are long (an answer or two inside them), so each costs several round-1 prompts' time: `share`
    sets how many."""
    stop = stop_ids(tokenizer)
    round1 = round1_prompts(per_kind, random.Random(seed), frozenset(exclude))
    stored = {record_key(r): r for r in read_dataset(out_path)} if out_path.exists() else {}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(round1), chunk):
        part = round1[i : i + chunk]
        todo = [p for p in part if p.key not in stored]
        new = {record_key(r): r for r in answer(model, tokenizer, todo, out_path, batch_size, max_new_tokens, stop)}
        records = [stored.get(p.key) or new.get(p.key) for p in part]
        pairs = [(r["prompt"], response_text(tokenizer, r)) for r in records if r is not None and is_long(r)]
        if pairs:  # the same round 2 again when a stopped run resumes (its own seed per chunk)
            second = round2_prompts(pairs, share, random.Random(f"{seed}-{i}"))
            second = [p for p in second if p.key not in stored]
            answer(model, tokenizer, second, out_path, batch_size, max_new_tokens, stop, max_prompt_tokens=700)
    return out_path


def long_summary_prompts(
    tokenizer: Any, records: list[dict[str, Any]], count: int, seed: int, min_tokens: int = 400, max_tokens: int = 760
) -> list[Prompt]:
    """Summary requests over texts of `min_tokens`..`max_tokens` tokens, each joined from whole answers (of 120+
    tokens) in `records`: the long contexts a summary of a news article drafts in."""
    answers = [(response_text(tokenizer, r), len(r["ids"]) - r["prompt_len"]) for r in records if is_long(r)]
    if not answers:
        raise ValueError("no answer of 120+ tokens to build long texts from: pass earlier selfdistill files")
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        goal, parts, total = rng.randint(min_tokens, max_tokens), [], 0
        while total < goal:
            fitting = [a for a in answers if total + a[1] <= max_tokens] or ([] if parts else answers)
            if not fitting:
                break
            text, n = rng.choice(fitting)
            parts.append(text)
            total += n
        prompts.append(Prompt("long-summary", rng.choice(SUMMARY_TEMPLATES).format(a="\n\n".join(parts))))
    return prompts


def evaluation_prompts() -> set[str]:
    """The bundled held-out questions and instructions and every turn of the bundled Spec-Bench-format question
    files (eval/data), never to be trained on."""
    data = Path(__file__).resolve().parent.parent / "eval" / "data"
    out = {r["prompt"] for path in data.glob("heldout_prompts.jsonl") for r in read_dataset(path)}
    for path in sorted(data.glob("specbench_*.jsonl")):
        out |= {t for r in read_dataset(path) for t in r["turns"]}
    return out


def answered_prompts(out_path: Path) -> set[str]:
    """Prompts already answered in `out_path` (a resumed run skips them); creates its folder."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return {record_key(r) for r in read_dataset(out_path)} if out_path.exists() else set()


def read_dataset(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from specvlm.embedded import load_embedded
    from specvlm.options import LoadOptions
    from specvlm.packed import maybe_pack, packed_if

    ap = argparse.ArgumentParser(
        prog="python -m training.selfdistill", description="Generate self-distillation data from the embedded target."
    )
    ap.add_argument("--out", type=Path, default=Path("runs/distill/data.jsonl"), help="JSONL to append to")
    ap.add_argument("--sampled", type=int, default=512, help="user prompts sampled from the target")
    ap.add_argument(
        "--summary-share",
        type=float,
        default=0.3,
        help="round-2 summary prompts per round-1 answer (--kinds: prompts of each round-2 kind per long answer)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-templates", action="store_true", help="sampled prompts only (e.g. a second worker)")
    ap.add_argument(
        "--opened", type=int, default=0, help="user turns opened with a question/request word and sampled on"
    )
    ap.add_argument(
        "--long-summaries",
        type=int,
        default=0,
        help="only this: N summary requests over 400-760-token texts joined from the answers in --from files",
    )
    ap.add_argument(
        "--kinds",
        type=int,
        default=0,
        help="only this: N prompts of each benchmark kind (training/prompt_kinds.py) and round 2 over their answers",
    )
    ap.add_argument("--from", dest="sources", type=Path, nargs="+", default=[], help="earlier selfdistill JSONL files")
    args = ap.parse_args(argv)
    if args.long_summaries and not args.sources:
        ap.error("--long-summaries needs --from FILE ... (earlier selfdistill output to join answers from)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_embedded(LoadOptions(dtype="float32"))
    packed = maybe_pack(model, None)  # batched decode steps are 64-row matmuls: packed weights ~1.5x faster on CPU
    with packed_if(packed):
        if args.kinds:
            build_kinds_dataset(model, tokenizer, args.out, args.kinds, args.summary_share, args.batch_size,
                                args.max_new_tokens, args.seed, exclude=evaluation_prompts())  # fmt: skip
            return
        if args.long_summaries:
            records = [r for path in args.sources for r in read_dataset(path)]
            prompts = long_summary_prompts(tokenizer, records, args.long_summaries, args.seed)
            done = answered_prompts(args.out)
            todo = [p for p in prompts if p.key not in done]
            stop = stop_ids(tokenizer)
            answer(model, tokenizer, todo, args.out, args.batch_size, args.max_new_tokens, stop, max_prompt_tokens=900)
            return
        build_dataset(
            model,
            tokenizer,
            args.out,
            args.sampled,
            args.summary_share,
            args.batch_size,
            args.max_new_tokens,
            args.seed,
            templates=not args.no_templates,
            n_opened=args.opened,
            exclude=evaluation_prompts(),
        )


if __name__ == "__main__":
    main()
