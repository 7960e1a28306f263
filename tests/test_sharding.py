"""Eval CLIs under a multi-process launch: shards merged on the main process equal a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import perturbed_copy, tiny_llama

import specvlm
from eval.shard import Shard, add_up, in_order, join, merge

ROOT = Path(__file__).resolve().parents[1]
#: record fields that do not depend on timing
STABLE = ("id", "prompt_tokens", "truncated", "new_tokens", "identical", "mean_accepted", "target_calls", "text")


@dataclass
class Sums:
    n: int = 0
    secs: float = 0.0
    hist: Counter[int] = field(default_factory=Counter)


def test_stride_and_merge_order() -> None:
    items = list("abcdefg")
    shards = [Shard(i, 3) for i in range(3)]
    taken = [s.take(items) for s in shards]
    assert [[x for _, x in t] for t in taken] == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    parts = [[(pos, {"x": x}) for pos, x in t] for t in reversed(taken)]  # arrival order does not matter
    assert [r["x"] for r in in_order(parts)] == items
    assert Shard().take(items) == list(enumerate(items))


def test_add_up_sums_every_field() -> None:
    total = add_up([Sums(1, 0.5, Counter({1: 2})), Sums(2, 0.25, Counter({1: 1, 3: 4})), Sums()])
    assert total == Sums(3, 0.75, Counter({1: 3, 3: 4}))
    with pytest.raises(TypeError):
        add_up([{"a": "x"}, {"a": "y"}])


def test_single_process_writes_straight_to_the_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    jsonl = tmp_path / "r.jsonl"
    shard = join("cpu")
    assert (shard.index, shard.count, shard.state) == (0, 1, None)
    assert shard.part(jsonl) == jsonl
    assert merge(shard, jsonl, [(0, {"a": 1})], Sums(1)) == Sums(1)
    assert not jsonl.exists()  # one process: the CLI appended its records already, merge writes nothing
    assert Shard(1, 2).part(jsonl).name == "r.jsonl.part1of2"


def test_device_map_reaches_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.cnn_text import build_parser
    from eval.common import load_decoder

    seen: dict[str, Any] = {}
    monkeypatch.setattr(specvlm, "load", lambda **kw: seen.update(kw))
    load_decoder(build_parser().parse_args(["--target", "x", "--device-map", "auto", "--draft", "ngram"]))
    assert seen["device_map"] == "auto" and seen["device"] is None and seen["target"] == "x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _single_and_sharded(tmp_path: Path, cli: str, extra: list[str], embedded_folder: Path) -> tuple[Path, Path]:
    """Run `python -m eval.<cli>` once alone and once under a two-process `accelerate launch` (on CPU, gloo) with
    a tiny random target and a perturbed copy as draft; returns the two --out paths. Both run in `tmp_path`, so a
    stray file written to the working folder would show there."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_folder)
    target = tiny_llama(seed=0, vocab=len(tok), max_positions=1024)
    models = tmp_path / "models"
    for name, model in (("target", target), ("draft", perturbed_copy(target, scale=0.05, seed=1))):
        model.save_pretrained(models / name)
        tok.save_pretrained(models / name)
    common = [
        "-m", f"eval.{cli}", "--target", str(models / "target"), "--draft", str(models / "draft"),
        "--device", "cpu", "--max-new-tokens", "12", "--max-article-tokens", "48", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launch = [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    outs = (work / "single.json", work / "sharded.json")
    for out, argv in zip(outs, ([sys.executable, *common], [sys.executable, *launch, *common]), strict=True):
        done = subprocess.run(
            [*argv, "--out", str(out)], cwd=work, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
    expected = {f"{o.stem}{suffix}" for o in outs for suffix in (".json", ".jsonl", ".png")}
    assert {p.name for p in work.iterdir()} <= expected  # no part files left, nothing written elsewhere
    return outs


@pytest.mark.slow  # ~40 s: three interpreters import torch
def test_cnn_text_two_processes_merge_to_the_single_process_result(tmp_path: Path, embedded_folder: Path) -> None:
    # fixed tree sizes: the two runs' steps are compared, and trees sized for tokens/s follow each process's timing
    one, two = _single_and_sharded(
        tmp_path, "cnn_text", ["--limit", "5", "--tree", "dynamic", "--fixed-size"], embedded_folder
    )
    single, sharded_run = _records(one.with_suffix(".jsonl")), _records(two.with_suffix(".jsonl"))
    assert len(single) == len(sharded_run) == 5
    assert [{k: r[k] for k in STABLE} for r in sharded_run] == [{k: r[k] for k in STABLE} for r in single]
    assert any(r["mean_accepted"] > 1 for r in single)  # the draft is accepted: multi-token steps are compared
    a, b = (json.loads(o.read_text())["summary"] for o in (one, two))
    for key in ("samples", "skipped", "identical", "baseline_tokens", "specvlm_tokens", "tokens_per_call"):
        assert a[key] == b[key], key
    assert b["samples"] == 5 and b["identical"] == 5


@pytest.mark.slow  # ~40 s
def test_bench_two_processes_merge_to_the_single_process_result(tmp_path: Path, embedded_folder: Path) -> None:
    extra = ["--limit", "3", "--trees", "ar,chain", "--fixed-size", "--hf", "hf_generate,hf_assisted"]
    one, two = _single_and_sharded(tmp_path, "bench", extra, embedded_folder)
    stable = ("id", "method", "new_tokens", "target_calls", "identical")
    single, sharded_run = _records(one.with_suffix(".jsonl")), _records(two.with_suffix(".jsonl"))
    assert len(single) == 3 * 4
    assert [{k: r[k] for k in stable} for r in sharded_run] == [{k: r[k] for k in stable} for r in single]
    a, b = (json.loads(o.read_text())["methods"] for o in (one, two))
    keep = ("method", "tokens_per_call", "identical", "new_tokens")
    assert [{k: m[k] for k in keep} for m in a] == [{k: m[k] for k in keep} for m in b]
    assert all(m["identical"] == "3/3" for m in b)
