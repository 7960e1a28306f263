"""oneDNN-packed target linears: same logits as the plain model (to float32 rounding), the same greedy tokens as
HF's own greedy, and the model object untouched outside the engine's forwards."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import random_prompts, tiny_llama

import specvlm
from specvlm.models import TargetModel
from specvlm.packed import PackedLinear, PackedLinears, maybe_pack, packing_supported

pytestmark = pytest.mark.skipif(
    not packing_supported(torch.device("cpu"), torch.float32), reason="this torch build has no mkldnn"
)


def linear_classes(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, nn.Linear)}


def test_packed_forward_matches_plain_logits_and_restores_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama(seed=3)
    packed = PackedLinears(model)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    ids = torch.tensor([random_prompts(1, seed=1)[0]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits  # [1, L, V]
        with packed.active():
            assert linear_classes(model) == {PackedLinear}
            fast = model(input_ids=ids).logits
    assert linear_classes(model) == {nn.Linear}
    assert torch.allclose(plain, fast, rtol=1e-5, atol=1e-4), (plain - fast).abs().max()
    assert len(calls) == len(packed.linears)  # every linear took the packed path once


def test_class_is_restored_after_an_error() -> None:
    model = tiny_llama(seed=3)
    packed = PackedLinears(model)
    with pytest.raises(RuntimeError), packed.active():
        raise RuntimeError("boom")
    assert linear_classes(model) == {nn.Linear}


def test_packed_weights_are_a_snapshot_until_repacked() -> None:
    model = tiny_llama(seed=4)
    packed = PackedLinears(model)
    x = torch.randn(1, 3, model.config.hidden_size)
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(1, 3, lin.in_features)
    with torch.no_grad():
        lin.weight.mul_(2.0)
        with packed.active():
            stale = lin(x)
        packed.pack()
        with packed.active():
            fresh = lin(x)
        plain = lin(x)
    assert torch.allclose(fresh, plain, atol=1e-4)
    assert not torch.allclose(stale, plain, atol=1e-2)


def test_a_packed_model_still_deep_copies_and_saves(tmp_path) -> None:
    model = tiny_llama(seed=3)
    packed = PackedLinears(model)
    twin = copy.deepcopy(model)
    model.save_pretrained(tmp_path)
    assert linear_classes(twin) == {nn.Linear}
    with packed.active():
        assert not hasattr(twin.lm_head, "_packed")


def test_auto_packs_cpu_float32_within_the_size_limit_only() -> None:
    model = tiny_llama(seed=5)
    assert maybe_pack(model, None) is not None
    assert maybe_pack(model, None, max_bytes=16) is None  # too big for auto
    assert maybe_pack(model, False) is None
    assert maybe_pack(model, True, max_bytes=16) is not None  # asked for: packed regardless of size
    with pytest.raises(specvlm.ConfigError, match="float32"):
        maybe_pack(tiny_llama(seed=5).to(torch.bfloat16), True)
    assert maybe_pack(tiny_llama(seed=5).to(torch.bfloat16), None) is None


def test_packed_engine_is_greedy_exact_and_leaves_hf_generate_plain() -> None:
    target = tiny_llama(seed=6, layers=3)
    dec = specvlm.load(target=target, draft="ngram", pack_linears=True)
    assert dec.target.packed is not None
    for prompt in random_prompts(4, seed=7):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            ref = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert linear_classes(target) == {nn.Linear}  # HF's generate saw the plain model
        got = dec.generate(prompt=prompt, max_new_tokens=24, tree="dynamic")
        assert got.tokens == ref[0, len(prompt) :].tolist()
        with dec.target.unpacked():
            assert dec.target.packed is None
            again = dec.generate(prompt=prompt, max_new_tokens=24, tree="dynamic")
        assert dec.target.packed is not None
        assert again.tokens == got.tokens


def test_target_model_packs_by_default_on_cpu_float32() -> None:
    assert TargetModel(tiny_llama(seed=8)).packed is not None
    assert TargetModel(tiny_llama(seed=8), pack_linears=False).packed is None
