"""Tiny random models of many HF families with the inputs their processors would make, built offline from configs."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf
from transformers import PreTrainedConfig, PreTrainedModel

Inputs = dict[str, torch.Tensor]
Built = tuple[PreTrainedModel, Inputs]

#: text tokens in a default prompt (a VLM prompt has its image tokens on top)
PROMPT_LEN = 40
#: the sliding window of every family that has one: shorter than any default prompt
WINDOW = 8
#: the weight init of the text models: wider than the default 0.02, so argmax near-ties are rare (Gemma2, Gemma3
#: untie their lm_head: tied at this init they answer one token over and over; PaliGemma's Gemma stays tied)
TEXT_INIT = 0.25
SEED = 0
#: the special ids of the families that define their own: padding, begin and end of sequence
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Family:
    """One model family: how to build it, and what a caller needs to know about its inputs.

    `make(prompt_len)` builds with `prompt_len` text tokens (VLMs: text before and after the image together, not
    counting image, image start/end/break tokens); `build()` is `make(PROMPT_LEN)`.
    """

    name: str
    vlm: bool
    window: int | None  # the sliding window of the text model, if any
    build: Callable[[], Built]  # (model in eval() float32, inputs)
    make: Callable[[int], Built]
    vocab_size: int  # the text model's vocabulary, the lm_head's size
    special_ids: frozenset[int]  # ids that prompt text never uses: image (start/end/break/global), video, bos/eos/pad
    image_token_id: int | None = None  # the placeholder that the image features replace
    image_start_id: int | None = None  # e.g. Qwen2-VL's <|vision_start|>, Gemma3's <start_of_image>
    image_end_id: int | None = None  # e.g. Qwen2-VL's <|vision_end|>, Pixtral's [IMG_END]
    image_break_id: int | None = None  # Pixtral's [IMG_BREAK], after each row of image tokens but the last
    type_key: str | None = None  # the per-token modality input: "token_type_ids" or "mm_token_type_ids"
    generated_type: int = 0  # its value at generated tokens (PaliGemma: 1, the causal suffix)
    mrope: bool = False  # 3D (multimodal) rotary positions computed from the image grid
    bidirectional_image: bool = False  # the image (PaliGemma: image and prompt prefix) attends bidirectionally
    one_indexed_positions: bool = False  # PaliGemma counts positions from 1


def per_token_keys(family: Family) -> tuple[str, ...]:
    """The inputs besides input_ids that hold one value per token and grow with the sequence."""
    return ("attention_mask", family.type_key) if family.type_key else ("attention_mask",)


def extended_inputs(family: Family, inputs: Inputs, new_tokens: torch.Tensor) -> Inputs:
    """The inputs of one plain forward over the prompt plus `new_tokens` [1, n]: per-token inputs grow the way
    `generate` grows them (attention ones, type ids `generated_type`), the rest is the same."""
    n = new_tokens.shape[-1]
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], new_tokens.to(inputs["input_ids"])], dim=-1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(1, n)], dim=-1)
    if family.type_key:
        types = inputs[family.type_key]
        out[family.type_key] = torch.cat([types, types.new_full((1, n), family.generated_type)], dim=-1)
    return out


# -- helpers -------------------------------------------------------------------------------------------------------
def _finish(
    cls: type[PreTrainedModel], config: PreTrainedConfig, pad: int, never: tuple[int, ...] = ()
) -> PreTrainedModel:
    """The model with sdpa attention where the family supports it (Gemma2 does not), float32, eval, and no eos:
    generate always runs the full max_new_tokens. The lm_head rows of the `never` ids are zero: their logit 0 is
    never the argmax, so greedy decoding does not write an image placeholder (which has no image feature to take)."""
    impl = "sdpa" if cls._supports_sdpa else "eager"
    model = cls._from_config(config, attn_implementation=impl, dtype=torch.float32).to(torch.float32).eval()
    if never:
        with torch.no_grad():
            model.get_output_embeddings().weight[list(never)] = 0  # tied: the input rows, which features replace
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad
    return model


def _text(g: torch.Generator, n: int, vocab: int, specials: frozenset[int]) -> list[int]:
    """n random ids that avoid every special id."""
    allowed = torch.tensor([i for i in range(vocab) if i not in specials])
    return allowed[torch.randint(0, len(allowed), (n,), generator=g)].tolist()


def _inputs(ids: list[int], **extra: torch.Tensor) -> Inputs:
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **extra}


def _split(prompt_len: int, before: int) -> tuple[int, int]:
    """Text tokens before and after the image."""
    if prompt_len <= before:
        raise ValueError(f"a VLM prompt needs more than {before} text tokens, got {prompt_len}")
    return before, prompt_len - before


def _count_features(features: object) -> int:
    """Image features (one image token each) in a get_image_features answer."""
    pooled = getattr(features, "pooler_output", features)
    if isinstance(pooled, (list, tuple)):
        return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in pooled)
    return pooled.reshape(-1, pooled.shape[-1]).shape[0]


def _llama_text(vocab: int, **kw: object) -> tf.LlamaConfig:
    base: dict[str, object] = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": TEXT_INIT,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "tie_word_embeddings": False,
    }
    return tf.LlamaConfig(**{**base, **kw})


def _clip_vision(image_size: int = 32, patch_size: int = 8) -> tf.CLIPVisionConfig:
    return tf.CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )


def _siglip_vision(image_size: int = 32, patch_size: int = 8) -> tf.SiglipVisionConfig:
    return tf.SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vision_use_head=False,
    )


# -- text families -------------------------------------------------------------------------------------------------
TEXT_VOCAB = 512
TEXT_SPECIALS = frozenset({PAD, BOS, EOS})


def _text_family(
    cls: type[PreTrainedModel], config: PreTrainedConfig, prompt_len: int, bos: bool, g: torch.Generator
) -> Built:
    model = _finish(cls, config, PAD)
    ids = ([BOS] if bos else []) + _text(g, prompt_len - int(bos), TEXT_VOCAB, TEXT_SPECIALS)
    return model, _inputs(ids)


def _seeded(fn: Callable[[int, torch.Generator], Built]) -> Callable[[int], Built]:
    """Seeds torch (model weights) and a generator (inputs) before each build, from SEED and the family's name: two
    families of one architecture (Idefics3, SmolVLM) still get different weights and prompts."""
    seed = SEED + zlib.crc32(fn.__name__.encode())

    @functools.wraps(fn)
    def wrapper(prompt_len: int) -> Built:
        torch.manual_seed(seed)
        return fn(prompt_len, torch.Generator().manual_seed(seed))

    return wrapper


@_seeded
def _llama(prompt_len: int, g: torch.Generator) -> Built:
    return _text_family(tf.LlamaForCausalLM, _llama_text(TEXT_VOCAB), prompt_len, True, g)


@_seeded
def _qwen2(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.Qwen2Config(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=2,  # layers 2 and 3 slide
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return _text_family(tf.Qwen2ForCausalLM, config, prompt_len, False, g)


@_seeded
def _qwen3(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.Qwen3Config(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )
    return _text_family(tf.Qwen3ForCausalLM, config, prompt_len, False, g)


@_seeded
def _mistral(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.MistralConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        sliding_window=WINDOW,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return _text_family(tf.MistralForCausalLM, config, prompt_len, True, g)


@_seeded
def _gemma2(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.Gemma2Config(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,  # sliding, full, sliding, full
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        sliding_window=WINDOW,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=False,
    )
    return _text_family(tf.Gemma2ForCausalLM, config, prompt_len, True, g)


def _gemma3_text_config(vocab: int, layer_types: list[str], tied: bool) -> tf.Gemma3TextConfig:
    return tf.Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        sliding_window=WINDOW,
        layer_types=layer_types,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=tied,
    )


@_seeded
def _gemma3_text(prompt_len: int, g: torch.Generator) -> Built:
    config = _gemma3_text_config(
        TEXT_VOCAB, ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"], tied=False
    )
    return _text_family(tf.Gemma3ForCausalLM, config, prompt_len, True, g)


@_seeded
def _phi3(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.Phi3Config(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        sliding_window=WINDOW,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return _text_family(tf.Phi3ForCausalLM, config, prompt_len, False, g)


@_seeded
def _gpt2(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.GPT2Config(
        vocab_size=TEXT_VOCAB,
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=TEXT_INIT,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return _text_family(tf.GPT2LMHeadModel, config, prompt_len, False, g)


@_seeded
def _opt(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.OPTConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        word_embed_proj_dim=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        init_std=TEXT_INIT,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return _text_family(tf.OPTForCausalLM, config, prompt_len, True, g)


@_seeded
def _gpt_neox(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.GPTNeoXConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return _text_family(tf.GPTNeoXForCausalLM, config, prompt_len, False, g)


# -- VLM families --------------------------------------------------------------------------------------------------
VLM_VOCAB = 512
#: the image placeholder, image start/end/break ids, Qwen's video placeholder and Idefics3's <global-img> (the top of
#: the vocabulary)
IMAGE, IMAGE_START, IMAGE_END, IMAGE_BREAK, VIDEO, IMAGE_GLOBAL = 511, 510, 509, 508, 507, 506
VLM_SPECIALS = frozenset({PAD, BOS, EOS, IMAGE, IMAGE_START, IMAGE_END, IMAGE_BREAK, VIDEO, IMAGE_GLOBAL})
#: text tokens before the image (bos included where the family starts with one)
BEFORE = 4
#: the placeholders greedy decoding must not write
PLACEHOLDERS = (IMAGE, VIDEO)


def _vlm_text(g: torch.Generator, n: int) -> list[int]:
    return _text(g, n, VLM_VOCAB, VLM_SPECIALS)


def _llava_like(prompt_len: int, g: torch.Generator, model: PreTrainedModel, pixels: Inputs) -> Built:
    """bos, text, one image token per image feature, text (the llava processors' layout)."""
    with torch.no_grad():
        features = _count_features(model.get_image_features(**pixels))
    before, after = _split(prompt_len, BEFORE)
    ids = [BOS, *_vlm_text(g, before - 1), *[IMAGE] * features, *_vlm_text(g, after)]
    return model, _inputs(ids, **pixels)


@_seeded
def _llava(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.LlavaConfig(vision_config=_clip_vision(), text_config=_llama_text(VLM_VOCAB), image_token_id=IMAGE)
    model = _finish(tf.LlavaForConditionalGeneration, config, PAD, PLACEHOLDERS)
    return _llava_like(prompt_len, g, model, {"pixel_values": torch.randn(1, 3, 32, 32, generator=g)})


#: anyres grids of the 32 px tiles; the image's size picks [32, 64]: a base tile and two crops
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
ANYRES_SIZE = (40, 72)


def _anyres_pixels(g: torch.Generator) -> Inputs:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    tiles = image_size_to_num_patches(ANYRES_SIZE, PINPOINTS, 32)
    return {"pixel_values": torch.randn(1, tiles, 3, 32, 32, generator=g), "image_sizes": torch.tensor([ANYRES_SIZE])}


@_seeded
def _llava_next(prompt_len: int, g: torch.Generator) -> Built:
    config = tf.LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(VLM_VOCAB),
        image_token_index=IMAGE,
        image_grid_pinpoints=PINPOINTS,
        image_seq_length=16,
    )
    model = _finish(tf.LlavaNextForConditionalGeneration, config, PAD, PLACEHOLDERS)
    return _llava_like(prompt_len, g, model, _anyres_pixels(g))


@_seeded
def _llava_onevision(prompt_len: int, g: torch.Generator) -> Built:
    text = tf.Qwen2Config(
        vocab_size=VLM_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    config = tf.LlavaOnevisionConfig(
        vision_config=_siglip_vision(),
        text_config=text,
        image_token_index=IMAGE,
        video_token_index=VIDEO,
        image_grid_pinpoints=PINPOINTS,
    )
    model = _finish(tf.LlavaOnevisionForConditionalGeneration, config, PAD, PLACEHOLDERS)
    return _llava_like(prompt_len, g, model, _anyres_pixels(g))


#: the Qwen-VL image: 32 x 24 px in 4 px patches, 2 x 2 patches merge into one token: a 4 x 3 grid of 12 tokens
QWEN_GRID = (1, 8, 6)
QWEN_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # head_dim 16


def _qwen_vl_inputs(prompt_len: int, g: torch.Generator, model: PreTrainedModel) -> Built:
    """text, <|vision_start|>, <|image_pad|> per merged patch, <|vision_end|>, text; mm_token_type_ids 1 at the
    image tokens."""
    vision = model.config.vision_config
    t, h, w = QWEN_GRID
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    features = t * h * w // vision.spatial_merge_size**2
    before, after = _split(prompt_len, BEFORE)
    ids = [*_vlm_text(g, before), IMAGE_START, *[IMAGE] * features, IMAGE_END, *_vlm_text(g, after)]
    types = torch.tensor([[int(i == IMAGE) for i in ids]], dtype=torch.long)
    pixels = torch.randn(t * h * w, patch, generator=g)
    return model, _inputs(ids, pixel_values=pixels, image_grid_thw=torch.tensor([QWEN_GRID]), mm_token_type_ids=types)


def _qwen_vl_text(cls: type[PreTrainedConfig]) -> PreTrainedConfig:
    return cls(
        vocab_size=VLM_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        rope_parameters=dict(QWEN_MROPE),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )


@_seeded
def _qwen2_vl(prompt_len: int, g: torch.Generator) -> Built:
    vision = tf.Qwen2VLVisionConfig(
        depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=4, spatial_merge_size=2
    )
    config = tf.Qwen2VLConfig(
        text_config=_qwen_vl_text(tf.Qwen2VLTextConfig),
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=IMAGE_START,
        vision_end_token_id=IMAGE_END,
    )
    return _qwen_vl_inputs(prompt_len, g, _finish(tf.Qwen2VLForConditionalGeneration, config, PAD, PLACEHOLDERS))


@_seeded
def _qwen2_5_vl(prompt_len: int, g: torch.Generator) -> Built:
    vision = tf.Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=4,
        spatial_merge_size=2,
        window_size=16,  # 2 x 2 merged tokens per window
        fullatt_block_indexes=[1],
    )
    config = tf.Qwen2_5_VLConfig(
        text_config=_qwen_vl_text(tf.Qwen2_5_VLTextConfig),
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=IMAGE_START,
        vision_end_token_id=IMAGE_END,
    )
    return _qwen_vl_inputs(prompt_len, g, _finish(tf.Qwen2_5_VLForConditionalGeneration, config, PAD, PLACEHOLDERS))


@_seeded
def _gemma3(prompt_len: int, g: torch.Generator) -> Built:
    """bos, text, <start_of_image>, 16 image tokens (8 x 8 patches pooled 2 x 2), <end_of_image>, text;
    token_type_ids 1 at the image tokens (they attend to each other bidirectionally)."""
    config = tf.Gemma3Config(
        text_config=_gemma3_text_config(VLM_VOCAB, ["sliding_attention", "full_attention"], tied=False),
        vision_config=_siglip_vision(patch_size=4),
        mm_tokens_per_image=16,
        boi_token_index=IMAGE_START,
        eoi_token_index=IMAGE_END,
        image_token_index=IMAGE,
        tie_word_embeddings=False,  # the outer config decides
    )
    model = _finish(tf.Gemma3ForConditionalGeneration, config, PAD, PLACEHOLDERS)
    with torch.no_grad():  # initialized to zero: the image would not reach the text
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.25)
    before, after = _split(prompt_len, BEFORE)
    image = [IMAGE_START, *[IMAGE] * config.mm_tokens_per_image, IMAGE_END]
    ids = [BOS, *_vlm_text(g, before - 1), *image, *_vlm_text(g, after)]
    types = torch.tensor([[int(i == IMAGE) for i in ids]], dtype=torch.long)
    return model, _inputs(ids, pixel_values=torch.randn(1, 3, 32, 32, generator=g), token_type_ids=types)


@_seeded
def _paligemma(prompt_len: int, g: torch.Generator) -> Built:
    """16 image tokens, bos, text (its last token stands for the "\\n" the processor appends); token_type_ids 0: the
    whole prompt is the bidirectional prefix, generated tokens are the causal suffix (1)."""
    text = tf.GemmaConfig(
        vocab_size=VLM_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    config = tf.PaliGemmaConfig(
        vision_config=_siglip_vision(),
        text_config=text,
        image_token_index=IMAGE,
        vocab_size=VLM_VOCAB,
        projection_dim=64,
        hidden_size=64,
    )
    model = _finish(tf.PaliGemmaForConditionalGeneration, config, PAD, PLACEHOLDERS)
    ids = [*[IMAGE] * config.text_config.num_image_tokens, BOS, *_vlm_text(g, prompt_len - 1)]
    pixels = torch.randn(1, 3, 32, 32, generator=g)
    return model, _inputs(ids, pixel_values=pixels, token_type_ids=torch.zeros(1, len(ids), dtype=torch.long))


def _idefics_like(prompt_len: int, g: torch.Generator, cls: type[PreTrainedModel], config: PreTrainedConfig) -> Built:
    """bos, text, <fake_token_around_image> <global-img>, 16 image tokens (8 x 8 patches, pixel shuffle 2),
    <fake_token_around_image>, text: one unsplit image with its pixel_attention_mask."""
    model = _finish(cls, config, PAD, PLACEHOLDERS)
    vision = config.vision_config
    features = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    before, after = _split(prompt_len, BEFORE)
    image = [IMAGE_START, IMAGE_GLOBAL, *[IMAGE] * features, IMAGE_START]
    ids = [BOS, *_vlm_text(g, before - 1), *image, *_vlm_text(g, after)]
    size = vision.image_size
    pixels = torch.randn(1, 1, 3, size, size, generator=g)
    return model, _inputs(ids, pixel_values=pixels, pixel_attention_mask=torch.ones(1, 1, size, size, dtype=torch.long))


@_seeded
def _idefics3(prompt_len: int, g: torch.Generator) -> Built:
    vision = tf.Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    config = tf.Idefics3Config(
        vision_config=vision, text_config=_llama_text(VLM_VOCAB), image_token_id=IMAGE, scale_factor=2, pad_token_id=PAD
    )
    return _idefics_like(prompt_len, g, tf.Idefics3ForConditionalGeneration, config)


@_seeded
def _smolvlm(prompt_len: int, g: torch.Generator) -> Built:
    vision = tf.SmolVLMVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    config = tf.SmolVLMConfig(
        vision_config=vision, text_config=_llama_text(VLM_VOCAB), image_token_id=IMAGE, scale_factor=2, pad_token_id=PAD
    )
    return _idefics_like(prompt_len, g, tf.SmolVLMForConditionalGeneration, config)


#: the Pixtral image: 32 x 24 px in 4 px patches, 2 x 2 patches merge into one token: 4 rows of 3 tokens
PIXTRAL_SIZE = (32, 24)


@_seeded
def _mistral3(prompt_len: int, g: torch.Generator) -> Built:
    """bos, text, per row of merged patches [IMG] per column then [IMG_BREAK] ([IMG_END] after the last), text.
    No sliding window (as Mistral Small 3.1): Mistral slides in every layer, so text past 2 windows would not see
    the image at all."""
    vision = tf.PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    text = tf.MistralConfig(
        vocab_size=VLM_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=TEXT_INIT,
        sliding_window=None,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    config = tf.Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,  # the outer config decides, and ties by default
    )
    model = _finish(tf.Mistral3ForConditionalGeneration, config, PAD, PLACEHOLDERS)
    step = vision.patch_size * config.spatial_merge_size
    rows, cols = PIXTRAL_SIZE[0] // step, PIXTRAL_SIZE[1] // step
    image = [t for _ in range(rows) for t in [*[IMAGE] * cols, IMAGE_BREAK]]
    image[-1] = IMAGE_END
    before, after = _split(prompt_len, BEFORE)
    ids = [BOS, *_vlm_text(g, before - 1), *image, *_vlm_text(g, after)]
    pixels = torch.randn(1, 3, *PIXTRAL_SIZE, generator=g)
    return model, _inputs(ids, pixel_values=pixels, image_sizes=torch.tensor([PIXTRAL_SIZE]))


# -- the registry --------------------------------------------------------------------------------------------------
def _family(name: str, make: Callable[[int], Built], vlm: bool, window: int | None, **kw: Any) -> Family:
    specials = VLM_SPECIALS if vlm else TEXT_SPECIALS
    vocab = VLM_VOCAB if vlm else TEXT_VOCAB
    return Family(
        name=name,
        vlm=vlm,
        window=window,
        build=functools.partial(make, PROMPT_LEN),
        make=make,
        vocab_size=vocab,
        special_ids=specials,
        **kw,
    )


_QWEN_VL = {
    "image_token_id": IMAGE,
    "image_start_id": IMAGE_START,
    "image_end_id": IMAGE_END,
    "type_key": "mm_token_type_ids",
    "mrope": True,
}
#: <fake_token_around_image> on both sides of the image, <global-img> (IMAGE_GLOBAL) after the first
_IDEFICS = {"image_token_id": IMAGE, "image_start_id": IMAGE_START, "image_end_id": IMAGE_START}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        _family("llama", _llama, False, None),
        _family("qwen2", _qwen2, False, WINDOW),
        _family("qwen3", _qwen3, False, None),
        _family("mistral", _mistral, False, WINDOW),
        _family("gemma2", _gemma2, False, WINDOW),
        _family("gemma3_text", _gemma3_text, False, WINDOW),
        _family("phi3", _phi3, False, WINDOW),
        _family("gpt2", _gpt2, False, None),
        _family("opt", _opt, False, None),
        _family("gpt_neox", _gpt_neox, False, None),
        _family("llava", _llava, True, None, image_token_id=IMAGE),
        _family("llava_next", _llava_next, True, None, image_token_id=IMAGE),
        _family("llava_onevision", _llava_onevision, True, None, image_token_id=IMAGE),
        _family("qwen2_vl", _qwen2_vl, True, None, **_QWEN_VL),
        _family("qwen2_5_vl", _qwen2_5_vl, True, None, **_QWEN_VL),
        _family(
            "gemma3",
            _gemma3,
            True,
            WINDOW,
            image_token_id=IMAGE,
            image_start_id=IMAGE_START,
            image_end_id=IMAGE_END,
            type_key="token_type_ids",
            bidirectional_image=True,
        ),
        _family(
            "paligemma",
            _paligemma,
            True,
            None,
            image_token_id=IMAGE,
            type_key="token_type_ids",
            generated_type=1,
            bidirectional_image=True,
            one_indexed_positions=True,
        ),
        _family("idefics3", _idefics3, True, None, **_IDEFICS),
        _family("smolvlm", _smolvlm, True, None, **_IDEFICS),
        _family(
            "mistral3", _mistral3, True, None, image_token_id=IMAGE, image_end_id=IMAGE_END, image_break_id=IMAGE_BREAK
        ),
    ]
}
TEXT_FAMILIES = tuple(name for name, f in FAMILIES.items() if not f.vlm)
VLM_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.vlm)


def build(name: str, prompt_len: int = PROMPT_LEN) -> Built:
    """The family's model (eval, float32, seeded) and the inputs of one prompt with `prompt_len` text tokens."""
    return FAMILIES[name].make(prompt_len)
