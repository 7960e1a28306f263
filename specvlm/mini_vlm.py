"""The embedded miniature VLM: a llava whose language model is the embedded SmolLM2-135M-Instruct.

Only the parts trained by this project live in the repository (`drafters/weights/mini-llava/`: a small CLIP vision
tower and the projector; `drafters/weights/mini-llava-draft/`: the llava draft's own layers). The language model
comes from the embedded wheel at load time: `materialise` joins the two into an ordinary HF llava folder (config,
safetensors, processor) in the cache, so `LlavaForConditionalGeneration.from_pretrained(folder)` and
`AutoProcessor.from_pretrained(folder)` load it like any hub llava.

The image token is SmolLM2's reserved `<empty_output>` (id 16), so target and text drafts keep SmolLM2's exact
vocabulary (49,152). Images are 64x64, patches 16x16: 16 image tokens per image (the CLS feature is dropped).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)

from .errors import ModelLoadError
from .options import cache_root

WEIGHTS = Path(__file__).resolve().parent.parent / "drafters" / "weights"
TARGET_WEIGHTS = WEIGHTS / "mini-llava"
DRAFT_WEIGHTS = WEIGHTS / "mini-llava-draft"
IMAGE_TOKEN = "<empty_output>"  # reserved in SmolLM2's vocabulary, never produced by its chat use
IMAGE_SIZE = 64
PATCH = 16
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
TRAINED_FILE = "trained.safetensors"
#: model names `specvlm.load` understands for the pair (target, draft)
TARGET_ALIAS, DRAFT_ALIAS = "embedded-vlm", "embedded-vlm-draft"
ALIASES = {TARGET_ALIAS: TARGET_WEIGHTS, DRAFT_ALIAS: DRAFT_WEIGHTS}
#: SmolLM2's chat format without the default system prompt; image entries become the image token
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vision_config() -> CLIPVisionConfig:
    """A small CLIP vision tower: 64 px, 16 px patches, 3 layers of width 192."""
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=192,
        intermediate_size=768,
        num_hidden_layers=3,
        num_attention_heads=4,
    )


def llava_config(text_config: Any) -> LlavaConfig:
    """A llava config around a text config (the target's SmolLM2, or the draft's small Llama)."""
    return LlavaConfig(
        vision_config=vision_config(),
        text_config=text_config,
        image_token_id=16,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=IMAGE_TOKENS,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def build_processor(tokenizer: Any) -> LlavaProcessor:
    """CLIP image processing at 64 px and the SmolLM2 tokenizer, with our chat template."""
    from transformers import CLIPImageProcessor  # here: without torchvision, transformers notes its fallback

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def text_config_of(lm: PreTrainedModel) -> LlamaConfig:
    cfg = LlamaConfig.from_dict(lm.config.to_dict())
    cfg.tie_word_embeddings = True
    return cfg


def new_vlm(lm: PreTrainedModel, text_config: Any | None = None) -> LlavaForConditionalGeneration:
    """A llava with `lm`'s weights as its language model and a freshly initialised vision tower and projector.

    With `text_config` (a smaller Llama of the same hidden size, e.g. a draft) the language model is new too, but
    its embedding table and head are `lm`'s (copied)."""
    config = llava_config(text_config if text_config is not None else text_config_of(lm))
    vlm = LlavaForConditionalGeneration(config)
    language = vlm.model.language_model
    if text_config is None:
        language.load_state_dict(lm.model.state_dict())
    else:
        language.embed_tokens.weight.data.copy_(lm.get_input_embeddings().weight.data)
        language.norm.weight.data.copy_(lm.model.norm.weight.data)
    vlm.lm_head.weight = language.embed_tokens.weight  # SmolLM2 ties its head to the embeddings
    return vlm.to(lm.dtype).eval()


def trained_state(vlm: PreTrainedModel, shared: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The weights this project trains: everything but the parts named in `shared` (taken from SmolLM2)."""
    skip = (*shared, "lm_head.")  # the head is tied to the embeddings
    return {k: v.detach().contiguous() for k, v in vlm.state_dict().items() if not k.startswith(skip)}


#: what the target takes from SmolLM2 (all of its language model) and what the draft takes (embeddings)
TARGET_SHARED = ("model.language_model.",)
DRAFT_SHARED = ("model.language_model.embed_tokens.",)


def save_trained(vlm: PreTrainedModel, folder: Path, shared: tuple[str, ...], extra: dict[str, Any]) -> None:
    """Write only the trained weights (bf16) and the text config the model was built with."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.bfloat16) for k, v in trained_state(vlm, shared).items()}
    save_file(state, str(folder / TRAINED_FILE))
    meta = {"text_config": vlm.config.text_config.to_dict(), "shared_from_smollm2": list(shared), **extra}
    (folder / "specvlm_mini_vlm.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / "specvlm_mini_vlm.json"
    if not path.is_file() or not (folder / TRAINED_FILE).is_file():
        raise ModelLoadError(
            f"the mini VLM weights are missing from {folder}: reinstall specvlm from a full clone, or train them "
            "(python -m training.mini_vlm --help)"
        )
    return json.loads(path.read_text())


def is_target_meta(meta: dict[str, Any]) -> bool:
    """The target keeps all of SmolLM2's language model; a draft only its embeddings (whatever its folder is called)."""
    return tuple(meta["shared_from_smollm2"]) == TARGET_SHARED


def assemble(folder: Path, lm: PreTrainedModel) -> LlavaForConditionalGeneration:
    """The llava in memory: trained weights from `folder`, the rest from `lm` (the embedded SmolLM2)."""
    meta = read_meta(folder)
    shared = tuple(meta["shared_from_smollm2"])
    text_config = None if is_target_meta(meta) else LlamaConfig.from_dict(meta["text_config"])
    vlm = new_vlm(lm, text_config)
    state = load_file(str(folder / TRAINED_FILE))
    missing = [k for k in trained_state(vlm, shared) if k not in state]
    if missing:
        raise ModelLoadError(f"{folder / TRAINED_FILE} lacks {len(missing)} weights (e.g. {missing[0]})")
    vlm.load_state_dict({k: v.to(lm.dtype) for k, v in state.items()}, strict=False)
    return vlm.eval()


def is_embedded_target(model: PreTrainedModel) -> bool:
    """The embedded mini VLM target (materialised by this module)."""
    return getattr(model.config, "specvlm_embedded", None) == "target"


def shipped() -> bool:
    """Both trained parts are present (a full clone or an installed wheel)."""
    return all((f / TRAINED_FILE).is_file() for f in (TARGET_WEIGHTS, DRAFT_WEIGHTS))


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256((folder / TRAINED_FILE).read_bytes())
    digest.update((folder / "specvlm_mini_vlm.json").read_bytes())
    return digest.hexdigest()[:12]


def materialise(folder: Path = TARGET_WEIGHTS) -> Path:
    """A complete HF llava folder (model + processor) for the trained weights in `folder`, built once in the cache."""
    from .embedded import load_embedded  # the embedded LM is the VLM's language model
    from .options import LoadOptions

    out = cache_root() / f"{folder.name}-{fingerprint(folder)}"
    if (out / "config.json").is_file() and (out / "processor_config.json").is_file():
        return out
    lm, tok = load_embedded(LoadOptions(dtype=torch.float32, device=torch.device("cpu")))
    vlm = assemble(folder, lm)
    meta = read_meta(folder)
    vlm.config.specvlm_embedded = "target" if is_target_meta(meta) else "draft"
    if meta.get("head_ids"):  # read by drafters.model.ModelDrafter: the draft proposes only these tokens
        vlm.config.specvlm_head_ids = meta["head_ids"]
    if meta.get("default_tree"):  # ... and drafts with this tree unless told otherwise
        vlm.config.specvlm_default_tree = meta["default_tree"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vlm.save_pretrained(tmp)
    build_processor(tok).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
