"""Vision-language targets and drafts (the llava family): images in, image tokens in the ids, pixels at prefill.

Rules, stated once:
- A model is a VLM when its config has a `vision_config` and an image token id (`image_token_id` or
  `image_token_index`). Nothing else about the architecture is assumed, and no count is a constant.
- transformers v5 llava never expands `<image>`: the ids must hold one image token per image feature. The count per
  image comes from the processor (images given as PIL / path / array) or from the model's own vision tower (images
  given as a pixel_values tensor), so llava-next's variable counts work the same way.
- Images reach the models at prefill only (target and draft); every tree step passes ids alone.
- Image modes: every 8-bit mode is converted to RGB (L, 1, P, CMYK, YCbCr, ...); transparent pixels (RGBA, LA, P
  with transparency) are composited onto white. 16-bit and floating-point images (I;16, I, F) and numpy arrays
  other than uint8 are refused: scaling them to 8 bits is a choice (window, gamma) the caller should make.
- A draft that cannot see images (a text LM, n-grams) gets the ids with the image tokens removed; its positions
  are its own. A llava draft gets its own pixel values and its own image-token count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ImageError, PromptError

ImageLike = Image.Image | str | os.PathLike | np.ndarray | torch.Tensor

#: the prompt format used when neither the processor nor the tokenizer has a chat template (llava-1.5's own)
FALLBACK_TEMPLATE = "USER: {images}{prompt} ASSISTANT:"

#: PIL modes refused rather than guessed: more than 8 bits per channel
HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "I;32B")


# -- what kind of model --------------------------------------------------------------------------------------------
def image_token_id(config: Any) -> int | None:
    """The image token of a VLM config (llava: `image_token_id`, older files `image_token_index`); None for LMs."""
    if getattr(config, "vision_config", None) is None:
        return None
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# -- reading images ------------------------------------------------------------------------------------------------
def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB by the module's rule: convert 8-bit modes, composite transparency onto white, refuse >8 bits."""
    if img.mode in HIGH_DEPTH_MODES or img.mode.startswith(("I;", "F;")):
        raise ImageError(
            f"{name} has mode {img.mode!r} (16-bit or floating point): specvlm does not guess how to scale it to "
            "8 bits; convert it yourself (e.g. `Image.fromarray((a / a.max() * 255).astype('uint8'))`) or pass "
            "pixel_values"
        )
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{name} is empty ({img.width}x{img.height} pixels)")
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"{name} has mode {img.mode!r}, which cannot be converted to RGB: {err}") from err


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(
            f"{name} is a numpy array of dtype {arr.dtype}: give uint8 values 0-255 shaped [H, W], [H, W, 3] or "
            "[H, W, 4] (16-bit and float arrays are refused: scale them to uint8 yourself), or a pixel_values tensor"
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
        raise ImageError(f"{name} has shape {arr.shape}: expected [H, W], [H, W, 3] or [H, W, 4] (channels last)")
    return Image.fromarray(np.ascontiguousarray(arr))  # uint8 [H, W] -> L, [H, W, 3] -> RGB, [H, W, 4] -> RGBA


def load_image(item: ImageLike, name: str = "image") -> Image.Image:
    """One image as 8-bit RGB from a PIL image, a file path or a uint8 numpy array."""
    if isinstance(item, Image.Image):
        return to_rgb(item, name)
    if isinstance(item, np.ndarray):
        return to_rgb(_from_array(item, name), name)
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if isinstance(text, str) and text.startswith(("http://", "https://")):
            raise ImageError(f"{name} is a URL ({text}): download it and pass the file path or a PIL image")
        path = Path(text).expanduser()
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated or corrupt file fails here, not inside the processor
                return to_rgb(opened.copy() if opened.mode == "RGB" else opened, f"image {path}")
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ImageError(f"cannot read image {path}: {first} (is it a complete PNG, JPEG or WebP file?)") from err
    raise ImageError(
        f"{name} is a {type(item).__name__}: give a PIL image, a file path, a uint8 numpy array, a pixel_values "
        "tensor, or a list of images"
    )


def load_images(image: Any) -> list[Image.Image] | torch.Tensor:
    """A list of RGB images, or the pixel_values tensor as given ([C, H, W] becomes [1, C, H, W])."""
    if image is None:
        raise ImageError("no image given")
    if isinstance(image, torch.Tensor):
        return check_pixel_values(image)
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ImageError("the image list is empty: give at least one image")
    if any(isinstance(item, torch.Tensor) for item in items):
        raise ImageError("give several images as a list of images, or as one pixel_values tensor [N, C, H, W]")
    return [load_image(item, f"image {i}" if len(items) > 1 else "image") for i, item in enumerate(items)]


def check_pixel_values(pv: torch.Tensor) -> torch.Tensor:
    if not pv.is_floating_point():
        raise ImageError(f"pixel_values must be a float tensor (the processor's output), got dtype {pv.dtype}")
    if pv.dim() == 3:
        pv = pv[None]
    if pv.dim() not in (4, 5) or pv.numel() == 0:
        raise ImageError(f"pixel_values must be [N, C, H, W] (or [C, H, W]), got shape {tuple(pv.shape)}")
    if not torch.isfinite(pv).all():
        raise ImageError("pixel_values hold NaN or infinite values")
    return pv


# -- what the target sees ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePrompt:
    """The images of one request as the target sees them; the draft session gets it as `images=`."""

    token_id: int  # the target's image token
    counts: tuple[int, ...]  # image tokens (= features) per image, in the order they fill the ids
    pixel_values: torch.Tensor  # [N, C, H, W] (llava-next: [N, patches, C, H, W]), target dtype and device
    images: tuple[Image.Image, ...] = ()  # the RGB images; empty when the caller gave pixel_values
    extra: Mapping[str, Any] = field(default_factory=dict)  # other processor outputs the model takes (image_sizes)
    token_inputs: Mapping[str, Any] = field(default_factory=dict)  # per-token inputs of the target's ids, [1, L]

    def model_inputs(self) -> dict[str, Any]:
        return {"pixel_values": self.pixel_values, **self.extra}


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _to_model(value: Any, model: torch.nn.Module) -> Any:
    device, dtype = _device_dtype(model)
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return value


def image_token_runs(ids: Sequence[int], token_id: int) -> list[int]:
    """Lengths of the maximal runs of `token_id` in `ids`, in order."""
    runs: list[int] = []
    prev = None
    for tok in ids:
        if tok == token_id:
            if prev == token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        prev = tok
    return runs


def token_text(processor: Any | None, tokenizer: Any | None, token_id: int) -> str:
    """The placeholder string of the image token ('<image>' for llava)."""
    text = getattr(processor, "image_token", None)
    if isinstance(text, str) and text:
        return text
    tok = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
    if tok is None:
        raise PromptError("this target has no tokenizer: pass the prompt as token ids that hold the image tokens")
    return str(tok.convert_ids_to_tokens(token_id))


def process_images(
    processor: Any, images: list[Image.Image], token_id: int, model: torch.nn.Module
) -> tuple[torch.Tensor, dict[str, Any], tuple[int, ...]]:
    """(pixel_values, other model inputs, image tokens per image) from the processor, in one call.

    The processor expands a text of one placeholder per image, separated by newlines, so each run of image tokens
    it writes is one image's count (however the processor computes it: llava's fixed grid, llava-next's tiles).
    """
    placeholder = token_text(processor, None, token_id)
    try:
        out = processor(images=images, text="\n".join([placeholder] * len(images)), return_tensors="pt")
    except (ValueError, TypeError, OSError) as err:
        raise ImageError(f"the processor could not prepare the image(s): {str(err).splitlines()[0]}") from err
    counts = tuple(image_token_runs(out["input_ids"][0].tolist(), token_id))
    if len(counts) != len(images):
        raise ImageError(
            f"the processor wrote {len(counts)} image-token runs for {len(images)} image(s): it does not use "
            f"token {token_id} as this model's config says; check that processor and model belong together"
        )
    skip = ("input_ids", "attention_mask", "pixel_values", "token_type_ids", "mm_token_type_ids")
    extra = {k: _to_model(v, model) for k, v in out.items() if k not in skip}
    return _to_model(out["pixel_values"], model), extra, counts


@torch.inference_mode()
def feature_counts(model: torch.nn.Module, pixel_values: torch.Tensor, extra: Mapping[str, Any]) -> tuple[int, ...]:
    """Image features per image, from the model's own vision tower (costs one vision forward)."""
    get = getattr(model, "get_image_features", None)
    if get is None:
        raise ImageError(f"{type(model).__name__} has no get_image_features: pass the prompt as expanded ids")
    try:
        out = get(pixel_values=pixel_values, **extra)
    except (RuntimeError, ValueError, TypeError) as err:
        cfg = getattr(model.config, "vision_config", None)
        size = getattr(cfg, "image_size", "?")
        raise ImageError(
            f"pixel_values of shape {tuple(pixel_values.shape)} do not fit {type(model).__name__}'s vision tower "
            f"(image_size {size}): {str(err).splitlines()[0]}"
        ) from err
    feats = getattr(out, "pooler_output", out)  # v5: a list of [features, hidden] per image
    return tuple(int(f.shape[0]) for f in feats)


def render_prompt(
    processor: Any | None, tokenizer: Any | None, prompt: str, n: int, placeholder: str
) -> tuple[str, bool]:
    """(text with one placeholder per image, whether it came from a chat template).

    A prompt that already holds the placeholder is used as written. Otherwise the processor's chat template (with
    image entries), else the tokenizer's chat template (placeholders before the text), else FALLBACK_TEMPLATE.
    """
    if placeholder in prompt:
        return prompt, False
    template = getattr(processor, "chat_template", None)
    if template:
        content: list[dict[str, str]] = [{"type": "image"}] * n + [{"type": "text", "text": prompt}]
        try:
            text = processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        except Exception:  # a text-only template inherited by the processor fails in many ways
            text = None
        if isinstance(text, str) and text.count(placeholder) == n:
            return text, True
    images = (placeholder + "\n") * n
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": images + prompt}], add_generation_prompt=True, tokenize=False
        )
        if isinstance(text, str) and text.count(placeholder) == n:
            return text, True
    return FALLBACK_TEMPLATE.format(images=images, prompt=prompt), False


def expand_placeholders(text: str, placeholder: str, counts: Sequence[int]) -> str:
    """Replace the i-th placeholder by counts[i] copies (what the processor does before tokenizing)."""
    parts = text.split(placeholder)
    if len(parts) - 1 != len(counts):
        raise PromptError(
            f"the prompt holds {len(parts) - 1} {placeholder!r} placeholder(s) but {len(counts)} image(s) were "
            "given: write one placeholder per image, or none to let specvlm place them"
        )
    out = parts[0]
    for count, part in zip(counts, parts[1:], strict=True):
        out += placeholder * count + part
    return out


def prepare(target: Any, image: Any, prompt: str | list[int]) -> tuple[list[int], ImagePrompt]:
    """Target ids (one image token per feature) and the ImagePrompt for a VLM target."""
    token_id = target.image_token_id
    if image is None:
        raise ImageError(
            f"this target ({type(target.model).__name__}) is a vision-language model: pass image=... (a PIL image, "
            "a file path, a numpy array, a pixel_values tensor, or a list of images)"
        )
    loaded = load_images(image)
    if isinstance(loaded, torch.Tensor):
        pixel_values, extra = _to_model(loaded, target.model), {}
        counts = feature_counts(target.model, pixel_values, extra)
        images: tuple[Image.Image, ...] = ()
    else:
        if target.processor is None:
            raise ImageError(
                "this target was loaded without a processor, so images cannot be prepared: pass processor=... to "
                "specvlm.load, or give a pixel_values tensor"
            )
        pixel_values, extra, counts = process_images(target.processor, loaded, token_id, target.model)
        images = tuple(loaded)
    if isinstance(prompt, str):
        tok = target.tokenizer if target.tokenizer is not None else getattr(target.processor, "tokenizer", None)
        if tok is None:
            raise PromptError("this target has no tokenizer: pass the prompt as token ids that hold the image tokens")
        placeholder = token_text(target.processor, tok, token_id)
        text, templated = render_prompt(target.processor, tok, prompt, len(counts), placeholder)
        expanded = expand_placeholders(text, placeholder, counts)
        ids = [int(i) for i in tok(expanded, add_special_tokens=not templated)["input_ids"]]
    else:
        ids = list(prompt)
    found = sum(1 for t in ids if t == token_id)
    if found != sum(counts):
        raise PromptError(
            f"the prompt ids hold {found} image tokens (id {token_id}) but the {len(counts)} image(s) give "
            f"{sum(counts)} features ({', '.join(map(str, counts))} per image): put one image token per feature "
            "in the ids (the processor does this), or pass the prompt as text"
        )
    if ids and ids[-1] == token_id:
        raise PromptError("the prompt ends with an image token: add the text of the request after the image")
    return ids, ImagePrompt(token_id, counts, pixel_values, images, extra)


def split_inputs(inputs: Mapping[str, Any], target: Any) -> tuple[list[int], dict[str, Any]]:
    """(prompt ids, the other model inputs) from one sample as a processor returns it: `input_ids` [1, L] or [L];
    an all-ones `attention_mask` is dropped (the engine writes its own masks), a padded one is refused."""
    if "input_ids" not in inputs:
        raise PromptError("inputs=... needs 'input_ids' (what the processor or tokenizer returned)")
    ids = inputs["input_ids"]
    ids = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)
    if (ids.dim() == 2 and ids.shape[0] != 1) or ids.dim() > 2:
        raise PromptError(f"inputs hold a batch of {ids.shape[0]}: specvlm decodes one sample at a time")
    rest: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == "input_ids" or value is None:
            continue
        if key == "attention_mask":
            if not bool(torch.as_tensor(value).bool().all()):
                raise PromptError("inputs hold a padded attention_mask: pass one unpadded sample")
            continue
        rest[key] = _to_model(value, target.model) if isinstance(value, torch.Tensor) else value
    return [int(i) for i in ids.reshape(-1).tolist()], rest


# -- what a draft sees ---------------------------------------------------------------------------------------------
def strip_image_tokens(ids: Sequence[int], token_id: int) -> list[int]:
    """The text part of the ids, for a draft that cannot see images (the last token, the root, always stays)."""
    return [t for t in ids[:-1] if t != token_id] + list(ids[-1:])


def remap_image_tokens(
    ids: Sequence[int], token_id: int, counts: Sequence[int], new_token: int, new_counts: Sequence[int]
) -> list[int]:
    """The ids with image i's `counts[i]` tokens replaced by `new_counts[i]` copies of `new_token` (a draft VLM's)."""
    if token_id == new_token and tuple(counts) == tuple(new_counts):
        return list(ids)
    if len(counts) != len(new_counts):
        raise ImageError(f"the draft sees {len(new_counts)} image(s), the target {len(counts)}")
    out: list[int] = []
    image, left = 0, 0
    for tok in ids:
        if tok != token_id:
            if left:
                raise PromptError(f"image {image - 1}'s tokens are not contiguous: the draft cannot re-expand them")
            out.append(tok)
            continue
        if left == 0:
            out.extend([new_token] * new_counts[image])
            left, image = counts[image], image + 1
        left -= 1
    return out


def draft_image_inputs(
    model: torch.nn.Module, processor: Any | None, images: ImagePrompt, ids: Sequence[int]
) -> tuple[list[int], dict[str, Any]]:
    """(draft ids, draft model inputs) for a VLM draft: its own pixel values, image token and counts."""
    token_id = image_token_id(model.config)
    if token_id is None:
        return strip_image_tokens(ids, images.token_id), {}
    if token_id == images.token_id and not images.images:  # the target's own inputs fit a draft of its family
        return list(ids), {"pixel_values": _to_model(images.pixel_values, model), **images.extra, **images.token_inputs}
    if processor is not None and images.images:
        pixel_values, extra, counts = process_images(processor, list(images.images), token_id, model)
    else:  # no processor of its own: the target's pixel values, counted by the draft's vision tower
        pixel_values = _to_model(images.pixel_values, model)
        extra = {k: _to_model(v, model) for k, v in images.extra.items()}
        counts = feature_counts(model, pixel_values, extra)
    return remap_image_tokens(ids, images.token_id, images.counts, token_id, counts), {
        "pixel_values": pixel_values,
        **extra,
    }
