"""Trained exits for layer-skip drafts: the identity at start, training raises agreement, lossless, spec errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import hf_greedy, random_prompts, tiny_llama

import specvlm
from drafters.build import build
from drafters.exits import ExitAdapter, ExitNorm, load_exit, save_exits
from drafters.layerskip import LayerSkipDrafter, layer_skip_model
from specvlm.options import LoadOptions
from training import exits as exit_training
from training.common import TrainConfig, split
from training.exits import exit_agreement, parse_exits

LAYERS = 4
VOCAB = 96


@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    return tiny_llama(seed=5, layers=LAYERS, vocab=VOCAB).requires_grad_(False)


def test_untrained_exit_is_the_plain_layer_skip_draft(target: torch.nn.Module) -> None:
    ids = torch.tensor([random_prompts(1, seed=1, vocab=VOCAB)[0]])
    with torch.no_grad():
        plain = layer_skip_model(target, 2)(ids).logits
        exited = layer_skip_model(target, 2, ExitAdapter(64))(ids).logits
        adapter = ExitAdapter(64)
        torch.nn.init.normal_(adapter.proj.weight, std=0.2)
        moved = layer_skip_model(target, 2, adapter)(ids).logits
    torch.testing.assert_close(exited, plain)
    assert not torch.allclose(moved, plain)  # the exit is really in the path
    assert layer_skip_model(target, 2).model.norm is target.model.norm  # a plain shell keeps the target's norm


def self_distilled(target: torch.nn.Module, count: int, seed: int, new: int = 32) -> list[dict]:
    out = []
    for ids in random_prompts(count, seed=seed, vocab=VOCAB, low=4, high=10):
        out.append(
            {"source": "test", "prompt": str(ids), "ids": ids + hf_greedy(target, ids, new), "prompt_len": len(ids)}
        )
    return out


def test_training_raises_agreement_and_the_exits_load_as_lossless_drafts(
    target: torch.nn.Module, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    records = self_distilled(target, 24, seed=7)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "exits"
    cfg = TrainConfig(data=[str(data)], out=str(out), head_size=VOCAB, lr=1e-2, batch_tokens=512, epochs=30,
                      val_share=0.2, eval_every=10_000, exits="1,3")  # fmt: skip
    report = exit_training.train(target, cfg, io.StringIO(), stops=[0])
    assert report["before"]["step"] == 0 and report["steps"] > 0
    assert set(report["final"]) >= {"agree_1", "agree_3"}
    # it learnt its training text (held-out text of a random tiny model is too unlike it to judge by)
    train_recs = split(records, cfg.val_share, cfg.seed)[0]
    norm = target.model.norm
    trained = {k: ExitNorm(load_exit(out, k, 64, torch.float32, torch.device("cpu")), norm) for k in (1, 3)}
    identity = {k: ExitNorm(ExitAdapter(64), norm) for k in (1, 3)}
    before, after = (exit_agreement(target, exits, train_recs, 512) for exits in (identity, trained))
    for k in (1, 3):
        assert after[f"agree_{k}"] > before[f"agree_{k}"] + 0.1, (before, after)
    assert sorted(json.loads((out / "config.json").read_text())["layers"]) == [1, 3]
    assert not (out / "checkpoint.pt").exists()
    dec = specvlm.load(target, draft=f"layerskip:3:{out}")
    assert isinstance(dec.drafter, LayerSkipDrafter) and dec.drafter.name == f"layerskip:3:{out}"
    for ids in random_prompts(3, seed=8, vocab=VOCAB):
        assert dec.generate(prompt=ids, max_new_tokens=16, tree="dynamic").tokens == hf_greedy(target, ids, 16)


def test_exit_specs_and_folders_are_checked(target: torch.nn.Module, tmp_path: Path) -> None:
    save_exits(tmp_path / "ex", {1: ExitAdapter(64)}, hidden=64)
    with pytest.raises(specvlm.ConfigError, match=r"exits for \[1\] layers, not 2"):
        specvlm.load(target, draft=f"layerskip:2:{tmp_path / 'ex'}")
    with pytest.raises(specvlm.ModelLoadError, match=r"training\.train --exits"):
        specvlm.load(target, draft=f"layerskip:2:{tmp_path}")
    with pytest.raises(specvlm.ConfigError, match="hidden size 64"):
        load_exit(tmp_path / "ex", 1, hidden=32, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(specvlm.ConfigError, match="shipped for SmolLM2"):
        specvlm.load(target, draft="layerskip:2:trained")
    assert parse_exits("24, 16,28", 30) == [16, 24, 28]
    for bad in ("0,2", "30", "a", ""):
        with pytest.raises(ValueError, match="--exits"):
            parse_exits(bad, 30)


def test_shipped_exits_load_on_the_embedded_target_and_stay_lossless(embedded: specvlm.Decoder) -> None:
    model = embedded.target.model
    ids = embedded.prompt_ids("Name three primary colors.")
    for k in (16, 24, 28):
        drafter = build(f"layerskip:{k}:trained", embedded.target, LoadOptions())
        norm = drafter.model.model.norm
        assert isinstance(norm, ExitNorm) and norm.norm is model.model.norm
        assert float(norm.adapter.proj.weight.abs().sum()) > 0  # trained, not the identity
    decoder = specvlm.Decoder(embedded.target, drafter)
    assert decoder.generate(prompt=ids, max_new_tokens=16, tree="dynamic").tokens == hf_greedy(model, ids, 16)
