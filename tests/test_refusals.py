"""Unsupported families are refused at load with ConfigError; the self-check refuses broken tree forwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from conftest import hf_greedy, random_prompts, tiny_llama
from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache

import specvlm
from specvlm.models import TargetModel
from specvlm.targets.selfcheck import CheckResult, self_check

ROOT = Path(__file__).resolve().parents[1]
#: ids inside the tiny vocabularies (the families' defaults point far outside them)
TINY_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _t5() -> PreTrainedModel:
    config = tf.T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0, **TINY_IDS
    )
    return tf.T5ForConditionalGeneration(config)


def _bart() -> PreTrainedModel:
    config = tf.BartConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        **TINY_IDS,
    )
    return tf.BartForConditionalGeneration(config)


def _mamba() -> PreTrainedModel:
    config = tf.MambaConfig(
        vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=2, time_step_rank=4
    )
    return tf.MambaForCausalLM(config)


def _jamba() -> PreTrainedModel:
    """Layer 0 Mamba, layer 1 attention (with a 2-expert MoE): a hybrid."""
    config = tf.JambaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        mamba_d_state=4,
        mamba_d_conv=2,
        mamba_expand=2,
        mamba_dt_rank=4,
        **TINY_IDS,
    )
    return tf.JambaForCausalLM(config)


def _bamba() -> PreTrainedModel:
    """Layer 0 Mamba-2, layer 1 attention: another hybrid."""
    config = tf.BambaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        attn_layer_indices=[1],
        mamba_n_heads=2,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=4,
        mamba_d_conv=2,
        mamba_expand=2,
        mamba_chunk_size=8,
        **TINY_IDS,
    )
    return tf.BambaForCausalLM(config)


def _llama4_text() -> PreTrainedModel:
    """attention_chunk_size set: transformers reads every layer as chunked_attention."""
    config = tf.Llama4TextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        intermediate_size_mlp=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=2,
        attention_chunk_size=8,
        **TINY_IDS,
    )
    return tf.Llama4ForCausalLM(config)


def _mllama() -> PreTrainedModel:
    vision = tf.MllamaVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=16,
        patch_size=8,
        vision_output_dim=32,
        intermediate_layers_indices=[0],
        max_num_tiles=1,
        supported_aspect_ratios=[[1, 1]],
    )
    text = tf.MllamaTextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        cross_attention_layers=[1],
        **TINY_IDS,
    )
    config = tf.MllamaConfig(vision_config=vision, text_config=text, image_token_index=63)
    return tf.MllamaForConditionalGeneration(config)


def _qwen3_vl() -> PreTrainedModel:
    """An image-text-to-text family that is not in SERVED_VLMS (interleaved M-RoPE, deepstack features)."""
    vision = tf.Qwen3VLVisionConfig(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        out_hidden_size=32,
        num_position_embeddings=16,
        deepstack_visual_indexes=[1],
    )
    text = tf.Qwen3VLTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=0,
    )
    config = tf.Qwen3VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    return tf.Qwen3VLForConditionalGeneration(config)


#: (builder, what the message must say is missing)
UNSUPPORTED: dict[str, tuple[Callable[[], PreTrainedModel], str]] = {
    "t5": (_t5, "encoder-decoder"),
    "bart": (_bart, "encoder-decoder"),
    "mamba": (_mamba, "linear_attention"),
    "jamba": (_jamba, "linear_attention"),
    "bamba": (_bamba, "linear_attention"),
    "llama4_text": (_llama4_text, "chunked_attention"),
    "mllama": (_mllama, "cross-attention"),
    "qwen3_vl": (_qwen3_vl, "not covered by an adapter"),
}


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_unsupported_family_is_refused_at_load(
    model_type: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    build, missing = UNSUPPORTED[model_type]
    torch.manual_seed(0)
    model = build().eval()
    assert model.config.model_type == model_type
    with pytest.raises(specvlm.ConfigError) as err:
        specvlm.load(model, draft="ngram")
    message = str(err.value)
    assert f"model type {model_type!r}" in message
    assert missing in message
    assert "\n" not in message


def test_cli_reports_a_refused_folder_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "mamba"
    torch.manual_seed(0)
    _mamba().save_pretrained(folder)  # no tokenizer: the refusal comes at load, before the prompt is tokenized
    env = {
        **os.environ,
        "SPECVLM_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # transformers' own noise (a torchvision notice, the weight-loading bar) is not the CLI's report
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "specvlm", "--target", str(folder), "hello"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "model type 'mamba'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""


class MasklessLlama(LlamaForCausalLM):
    """A deliberately broken tree forward: a 4D attention_mask is dropped, so the model falls back to its causal
    mask and tree siblings see each other. Plain decoding (no mask, or a 2D padding mask) is unchanged."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> Any:
        if torch.is_tensor(attention_mask) and attention_mask.dim() == 4:
            attention_mask = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)


@pytest.fixture(scope="module")
def clean() -> LlamaForCausalLM:
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def broken(clean: LlamaForCausalLM) -> MasklessLlama:
    model = MasklessLlama(clean.config).eval()
    model.load_state_dict(clean.state_dict())
    return model


def test_self_check_refuses_a_broken_tree_forward(
    broken: MasklessLlama, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    with pytest.raises(specvlm.ConfigError) as err:
        specvlm.load(broken, draft="ngram")
    message = str(err.value)
    assert "model type 'llama'" in message
    assert "differs from the same tokens decoded one by one" in message
    assert not (tmp_path / "selfcheck").exists() or not any((tmp_path / "selfcheck").iterdir())  # no verdict kept


def test_unchecked_broken_model_loses_the_contract(
    broken: MasklessLlama, clean: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the check the broken model decodes, and its output differs from its own greedy generate: the check
    is what keeps the lossless promise. The draft is the clean weights, so every tree is full and branches."""
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    dec = specvlm.load(broken, draft=clean, check=False)
    tree = specvlm.BranchingTree([3, 2, 1])
    differ = 0
    for ids in random_prompts(3, seed=3):
        ours = dec.generate(prompt=ids, max_new_tokens=12, tree=tree).tokens
        differ += ours != hf_greedy(broken, ids, 12)
    assert differ >= 1


def test_self_check_passes_and_is_cached(
    clean: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    target = TargetModel(clean)
    result = self_check(target)
    assert isinstance(result, CheckResult)
    assert result.ok, result
    assert self_check(target) is None  # the verdict is read from $SPECVLM_CACHE/selfcheck
    assert isinstance(self_check(target, use_cache=False), CheckResult)
