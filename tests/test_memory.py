"""eval.memory: one fresh process per method, RSS samples, KV size per token, identical tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_llama

from eval import memory


def test_child_command_line_drops_outputs_and_names_the_tree() -> None:
    argv = ["--max-new-tokens", "9", "--out", "x.json", "--overwrite", "--tree=opt", "--every", "3"]
    got = memory.child_argv(argv, "opt")
    assert got[:3] == [sys.executable, "-m", "eval.memory"]
    assert got[3:] == ["--max-new-tokens", "9", "--every", "3", "--child", "opt"]


def test_growth_is_the_slope_over_the_second_half() -> None:
    flat = [{"tokens": t, "rss_mib": 500.0} for t in range(0, 1001, 100)]
    assert memory.growth(flat) == 0.0
    leaking = [{"tokens": t, "rss_mib": 500.0 + 0.05 * t} for t in range(0, 1001, 100)]
    assert memory.growth(leaking) == pytest.approx(50.0)  # MiB per 1,000 tokens
    assert memory.growth([{"tokens": 0, "rss_mib": 1.0}]) is None


def test_kv_bytes_per_token_from_the_config() -> None:
    model = tiny_llama(seed=0, layers=3)  # 2 KV heads of 64 / 4 = 16 dims, float32
    assert memory.kv_bytes_per_token(model) == 3 * 2 * 2 * 16 * 4


def test_rss_and_peak_are_plausible() -> None:
    assert 10 * memory.MIB < memory.rss_bytes() <= memory.peak_bytes() + 64 * memory.MIB


@pytest.mark.slow  # ~30 s: two fresh interpreters load torch
def test_two_fresh_processes_same_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedded_folder: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_folder)
    tiny_llama(seed=0, vocab=len(tok), max_positions=1024).save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    out = tmp_path / "m.json"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--target", str(tmp_path / "t"), "--draft", "ngram", "--max-new-tokens", "40", "--every", "10"]
    assert memory.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["identical"] is True
    for run in result["runs"].values():
        assert [s["tokens"] for s in run["samples"]] == [0, 10, 20, 30, 40]
        assert run["new_tokens"] == 40 and run["peak_end_mib"] >= run["peak_after_warmup_mib"] > 0
    assert [r["method"] for r in result["rows"]] == ["ar (baseline)", "specvlm"]
