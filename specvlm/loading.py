"""Loading a model from what users give: a hub id, a folder, a .gguf file, an in-memory model, or None (embedded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
)

from . import mini_vlm
from .embedded import load_embedded
from .errors import ModelLoadError
from .options import LoadOptions
from .targets.scheme import refuse_config
from .vlm import image_token_id

ModelSpec = str | os.PathLike | PreTrainedModel | None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model with its tokenizer and, for a vision-language model, its processor (either may be None)."""

    model: PreTrainedModel
    tokenizer: Any | None = None
    processor: Any | None = None


def load_causal_lm(spec: ModelSpec, opts: LoadOptions) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer or None) from a hub id, a folder, a .gguf file, an in-memory model, or None (embedded)."""
    loaded = load_model(spec, opts)
    return loaded.model, loaded.tokenizer


def load_model(spec: ModelSpec, opts: LoadOptions) -> LoadedModel:
    """A text causal LM, or a VLM (llava family: a config with a vision_config and an image token) with its processor,
    from a hub id, a folder, a .gguf file, an in-memory model, or None (embedded)."""
    if spec is None:
        return LoadedModel(*load_embedded(opts))
    if isinstance(spec, str) and spec in mini_vlm.ALIASES:  # the embedded mini VLM pair, built once in the cache
        spec = mini_vlm.materialise(mini_vlm.ALIASES[spec])
    if isinstance(spec, PreTrainedModel):
        return LoadedModel(spec.eval())
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelLoadError(f"cannot load a model from {type(spec).__name__}: pass a hub id, a path or a model")
    path = Path(spec)
    extra = {"trust_remote_code": opts.trust_remote_code}
    try:
        if path.suffix == ".gguf":  # dequantised once into $SPECVLM_CACHE/gguf, then loaded from that copy
            from .gguf_cache import load_gguf

            return LoadedModel(*load_gguf(path, opts))
        looks_local = path.exists() or str(spec).startswith((".", "/", "~")) or str(spec).count("/") > 1
        if looks_local and not path.exists():
            raise ModelLoadError(f"model path not found: {spec} (give an existing folder, a .gguf file or a hub id)")
        config = AutoConfig.from_pretrained(str(spec), **extra)
        refuse_config(config)  # a family no adapter serves: one ConfigError before any weights load
        if image_token_id(config) is not None:  # llava and kin: the image-text-to-text class and a processor
            model = AutoModelForImageTextToText.from_pretrained(str(spec), **opts.kwargs())
            try:
                processor = AutoProcessor.from_pretrained(str(spec), **extra)
            except (OSError, ValueError, TypeError):
                processor = None
            tok = getattr(processor, "tokenizer", None)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(spec), **opts.kwargs())
            processor, tok = None, None
        if tok is None:
            try:
                tok = AutoTokenizer.from_pretrained(str(spec), **extra)
            except (OSError, ValueError):
                tok = None
        return LoadedModel(opts.place(model), tok, processor)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model {str(spec)!r}: {str(err).splitlines()[0]} "
            "(check the path or hub id; without network only local folders and .gguf files work)"
        ) from err
