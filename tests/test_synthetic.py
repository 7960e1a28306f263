"""eval.synthetic: a llava-shaped random model built on the device, tree verification cost and engine overhead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import specvlm
from eval import synthetic


def test_forward_ms_interpolates_between_measured_sizes() -> None:
    costs = {"1": 10.0, "4": 16.0, "8": 32.0}
    assert synthetic.forward_ms(costs, 1) == 10.0
    assert synthetic.forward_ms(costs, 2) == pytest.approx(12.0)
    assert synthetic.forward_ms(costs, 6) == pytest.approx(24.0)
    assert synthetic.forward_ms(costs, 100) == pytest.approx(32.0 + 4.0 * 92)  # the last segment's slope beyond


def test_shapes_give_llava_15_image_prefix() -> None:
    big = synthetic.llava_config(synthetic.SHAPES["7b-llava"])
    assert synthetic.image_tokens(big) == 576  # CLIP ViT-L/14 at 336 px, CLS dropped ('default' strategy)
    assert (big.text_config.hidden_size, big.text_config.num_hidden_layers, big.vision_config.num_hidden_layers) == (
        4096,
        32,
        24,
    )
    assert big.text_config.eos_token_id is None  # a random EOS never ends a timing run early


def test_build_model_in_dtype_without_touching_the_default_dtype() -> None:
    model = synthetic.build_model(synthetic.SHAPES["tiny-llava"], torch.device("cpu"), torch.bfloat16, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32


def test_tiny_llava_run_writes_costs_and_engine_rows(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["--shape", "tiny-llava", "--device", "cpu", "--sizes", "1,4,16,64", "--reps", "2"]
    code = synthetic.main([*argv, "--trees", "ar,static", "--max-new-tokens", "24", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert list(result["verify_ms"]) == ["1", "4", "16", "64"]
    costs = [float(v) for v in result["verify_ms"].values()]
    assert all(c > 0 for c in costs)
    assert costs[-1] > costs[0]  # 64 tokens in one forward cost more than 1 (monotone-ish, timing noise aside)
    assert result["image_tokens"] == 576 and result["prefix_tokens"] == 1 + 576 + 32 - 1
    assert result["dtype"] == "float32" and result["parameters"] > 0
    rows = {r["tree"]: r for r in result["engine"]}
    assert list(rows) == ["ar", "static"]
    for row in rows.values():
        assert row["new_tokens"] == 24  # no EOS in the config: every run spends its budget
        assert row["step_ms"] > 0 and row["forward_ms"] > 0
        assert row["overhead_ms"] == pytest.approx(row["step_ms"] - row["forward_ms"], abs=1e-2)
        assert set(row["split_ms"]) == {"draft", "target", "verify", "cache", "other"}
    assert rows["ar"]["tokens_per_call"] == 1.0 and rows["ar"]["mean_tree_size"] == 1.0
    assert "| tree nodes |" in out.with_suffix(".md").read_text()
    with pytest.raises(specvlm.SpecVLMError, match="already exists"):  # no silent replacing without --overwrite
        synthetic.main([*argv, "--out", str(out)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_7b_llava_on_gpu(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["--shape", "7b-llava", "--sizes", "1,16,64", "--reps", "3", "--trees", "ar", "--max-new-tokens", "16"]
    assert synthetic.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["parameters"] > 6e9 and result["image_tokens"] == 576
