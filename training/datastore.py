"""Build a retrieval datastore (`draft="rest:FOLDER"`) from any text, in the target's tokens.

    python -m training.datastore --data runs/kinds/data-*.jsonl --out runs/datastore        # the embedded target
    python -m training.datastore --target Qwen/Qwen2.5-0.5B-Instruct --data corpus/*.txt --out ds-qwen

Inputs, by file:
- `.jsonl`: selfdistill records (`ids` + `prompt_len`: the target's answer tokens, as generated), or one text per
  line under `text`, `response`, `answer`, `output` or `completion`, or chat records (`messages` /
  `conversations`: the assistant turns). `--with-prompts` keeps the prompts of selfdistill records too.
- anything else: a plain text file, one document.
Build time, size on disk and tokens held are printed and stored in the folder's `datastore.json` with the command.
Never build a datastore from a benchmark's questions or answers: it would be measured on what it holds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from drafters.datastore import tokenizer_fingerprint, write_datastore

TEXT_KEYS = ("text", "response", "answer", "output", "completion")
ASSISTANT = ("assistant", "gpt", "model")


def record_documents(record: dict[str, Any], tokenizer: Any, with_prompts: bool) -> Iterator[list[int]]:
    """The token documents one JSONL record holds (see the module doc)."""
    if "ids" in record and "prompt_len" in record:
        ids = [int(t) for t in record["ids"]]
        yield ids if with_prompts else ids[int(record["prompt_len"]) :]
        return
    if "turns" in record and "question_id" in record:
        raise SystemExit("this looks like a benchmark's question file (question_id, turns): never build from one")
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            yield tokenizer.encode(record[key], add_special_tokens=False)
            return
    for key in ("messages", "conversations"):
        turns = record.get(key)
        if isinstance(turns, list):
            for turn in turns:
                role = turn.get("role", turn.get("from"))
                text = turn.get("content", turn.get("value"))
                if role in ASSISTANT and isinstance(text, str):
                    yield tokenizer.encode(text, add_special_tokens=False)
            return


def documents(paths: list[Path], tokenizer: Any, with_prompts: bool) -> Iterator[list[int]]:
    for path in tqdm(paths, desc="reading", unit="file", disable=len(paths) < 2):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield from record_documents(json.loads(line), tokenizer, with_prompts)
        else:
            yield tokenizer.encode(path.read_text(encoding="utf-8"), add_special_tokens=False)


def target_tokenizer(target: str) -> Any:
    """The tokenizer of the embedded target, a hub id, a folder or a .gguf file."""
    if target == "embedded":
        from specvlm.embedded import load_embedded
        from specvlm.options import LoadOptions

        return load_embedded(LoadOptions(dtype="float32"))[1]
    from transformers import AutoTokenizer

    path = Path(target).expanduser()
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(target)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m training.datastore",
        description="Build a retrieval datastore (suffix array of the target's tokens) for draft='rest:FOLDER'.",
    )
    ap.add_argument("--target", default="embedded", help="whose tokenizer: 'embedded', a hub id, a folder or .gguf")
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL (answers, texts, chats) or text files")
    ap.add_argument("--out", type=Path, required=True, help="the datastore folder to write")
    ap.add_argument("--with-prompts", action="store_true", help="keep selfdistill records' prompts, not only answers")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing datastore in --out")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    if (args.out / "datastore.json").exists() and not args.overwrite:
        ap.error(f"{args.out} already holds a datastore: pass --overwrite to replace it")
    tokenizer = target_tokenizer(args.target)
    command = "python -m training.datastore " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    record = write_datastore(
        args.out,
        documents(list(args.data), tokenizer, args.with_prompts),
        vocab_size=len(tokenizer),
        tokenizer=str(tokenizer_fingerprint(tokenizer)),
        command=command,
        sources=[p.name for p in args.data],
    )
    mb = record["bytes"] / 2**20
    print(
        f"{args.out}: {record['tokens']:,} tokens in {record['documents']:,} documents, {mb:.1f} MiB on disk, "
        f"built in {record['build_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
