"""Draft checkpoints the field publishes, read as their publishers write them: which layout a folder holds, its
config and its weights.

- `eagle3`: `architectures` `["LlamaForCausalLMEagle3"]`, or `draft_vocab_size` in a plain Llama config, or
  `midlayer.*` tensors (EAGLE-3's own repository); `model.safetensors` or `pytorch_model.bin`.
- `eagle3-speculators`: `speculators_model_type: "eagle3"` (vLLM's `speculators` format); `model.safetensors`.
- `eagle`: `fc.weight` and `layers.0.*` tensors and no `midlayer.*` (EAGLE-1/2); either file.
- `medusa`: `medusa_num_heads` in the config, or a `medusa_lm_head.*` file (Medusa-1); `medusa_lm_head.pt`.

Pickled files are read with `weights_only=True` (`specvlm.safe_load`): one holding code is refused, never run.
A hub id is fetched with `huggingface_hub` (config and weights only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from specvlm.errors import ModelLoadError
from specvlm.safe_load import load_torch_file

Layout = Literal["eagle3", "eagle3-speculators", "eagle", "medusa"]
#: what `eagle3:PATH`, `eagle:PATH` and `medusa:PATH` force (the speculators layout is told apart by its config)
FORCED: dict[str, tuple[Layout, ...]] = {
    "eagle3": ("eagle3", "eagle3-speculators"),
    "eagle": ("eagle",),
    "medusa": ("medusa",),
}
#: weight files in the order they are looked for
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "medusa_lm_head.safetensors",
    "medusa_lm_head.pt",
)
#: a pickled file larger than this is a whole model, not a draft head: its names are not read to detect a layout
HEAD_BYTES = 4 << 30
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt"]


@dataclass(frozen=True)
class Checkpoint:
    """A published draft as read from disk: its layout, `config.json` (a dict; {} when absent) and its tensors."""

    layout: Layout
    folder: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor `key`; a missing one is a ModelLoadError naming the layout and the key."""
        if key not in self.weights:
            raise ModelLoadError(f"{self.folder} is not a complete {self.layout} checkpoint: it has no {key!r}")
        return self.weights[key]


def checkpoint_folder(path: str | Path) -> Path:
    """A local folder as it is, or a hub id fetched (config and weights only) into the hub cache."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelLoadError(f"{path} is a file: a draft checkpoint is a folder with config.json and its weights")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown id, gated repository: one line that says what to do
        raise ModelLoadError(
            f"cannot fetch the draft {str(path)!r} from the hub ({type(err).__name__}); give a local folder that "
            "holds its config.json and weights"
        ) from err


def read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        value = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{cfg} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ModelLoadError(f"{cfg} holds a {type(value).__name__}, not a config object")
    return value


def _weight_keys(folder: Path) -> set[str] | None:
    """The tensor names of a safetensors checkpoint without reading the tensors (None: not safetensors)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys |= set(f.keys())
    return keys


def detect_layout(folder: Path, config: dict[str, Any] | None = None, keys: set[str] | None = None) -> Layout | None:
    """The published layout `folder` holds, from its config and file or tensor names; None when it is none of them."""
    config = read_config(folder) if config is None else config
    kind = config.get("speculators_model_type")
    if kind is not None:
        if kind != "eagle3":
            raise ModelLoadError(
                f"{folder}: speculators model type {kind!r} is not supported; specvlm reads 'eagle3' speculators "
                "checkpoints (and EAGLE-1/2 checkpoints in EAGLE's own layout)"
            )
        return "eagle3-speculators"
    if "medusa_num_heads" in config or any((folder / n).is_file() for n in WEIGHT_FILES[2:]):
        return "medusa"
    if "LlamaForCausalLMEagle3" in (config.get("architectures") or []) or "draft_vocab_size" in config:
        return "eagle3"
    keys = _weight_keys(folder) if keys is None else keys
    pickled = folder / "pytorch_model.bin"
    if keys is None and pickled.is_file() and pickled.stat().st_size < HEAD_BYTES:  # a whole model is not read here
        keys = set(_read_file(pickled))
    if keys is None:
        return None
    if any(k.startswith("midlayer.") for k in keys):
        return "eagle3"
    if "fc.weight" in keys and any(k.startswith("layers.0.") for k in keys):
        return "eagle"
    return None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_torch_file(path, "draft checkpoints", ModelLoadError)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict (names to tensors)")
    return {str(k): v for k, v in state.items()}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint: the first weight file found (safetensors before pickles), or the shards a
    `*.safetensors.index.json` lists."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text()).get("weight_map", {}).values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(_read_file(folder / shard))
        return weights
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return _read_file(folder / name)
    raise ModelLoadError(f"{folder} holds no draft weights: expected one of {', '.join(WEIGHT_FILES)}")


def read_checkpoint(path: str | Path, force: str | None = None) -> Checkpoint:
    """The checkpoint at `path` (folder or hub id). `force` ("eagle3", "eagle", "medusa") reads it as that layout;
    an unknown layout, or a folder that is not the forced one, is a ModelLoadError."""
    folder = checkpoint_folder(path)
    config = read_config(folder)
    weights = read_weights(folder)
    layout = detect_layout(folder, config, set(weights))
    if layout is None:
        raise ModelLoadError(
            f"{path}: unknown draft layout (config keys {sorted(config)[:8]}, tensors e.g. {sorted(weights)[:4]}); "
            "specvlm reads EAGLE-3 (official or speculators), EAGLE-1/2 and Medusa-1 checkpoints"
        )
    if force is not None and layout not in FORCED[force]:
        name = "eagle3" if layout.startswith("eagle3") else layout
        raise ModelLoadError(f"{force}:{path}: it holds a {layout} checkpoint; write {name}:PATH, or PATH alone")
    return Checkpoint(layout, folder, config, weights)


def is_published(path: str) -> bool:
    """True for a local folder holding an EAGLE-3, EAGLE-1/2 or Medusa checkpoint (safetensors: no tensor is read;
    a pickled file is read safely, and only when it is small enough to be a draft head)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return False
    config = read_config(folder)
    return config.get("specvlm_draft") is None and detect_layout(folder, config) is not None


def hub_head(path: str) -> bool:
    """True for a hub id (not a local path) whose config.json, fetched alone, names an EAGLE-3 or Medusa layout
    (EAGLE-1/2 configs look like whole Llama models: write `eagle:ID` for those). Offline: False."""
    if Path(path).expanduser().exists() or path.count("/") != 1:
        return False
    try:
        from huggingface_hub import hf_hub_download

        config = read_config(Path(hf_hub_download(path, "config.json")).parent)
    except Exception:  # offline, no such repository: it is not a head we can tell; the model loader says why
        return False
    return (
        config.get("speculators_model_type") == "eagle3"
        or "medusa_num_heads" in config
        or "LlamaForCausalLMEagle3" in (config.get("architectures") or [])
        or "draft_vocab_size" in config
    )
