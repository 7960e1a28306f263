"""How a model loads (dtype, device, device_map) and where converted weights are kept on disk."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def cache_root() -> Path:
    """Where converted weights live: $SPECVLM_CACHE, else ~/.cache/specvlm."""
    return Path(os.environ.get("SPECVLM_CACHE", Path.home() / ".cache" / "specvlm"))


def write_cache_json(path: Path, body: Any) -> bool:
    """Write a small cache file atomically (a temporary file of this process, then a rename, so a concurrent reader
    never sees half a file). False where the cache cannot be written (read-only home): the caller then keeps the
    value for this process only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(path)
    except OSError:
        return False
    return True


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32 on CPU, bfloat16 on an accelerator; strings like "float16" or "bf16" are accepted."""
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: dtype, device (or an accelerate device_map), and explicit opt-ins."""

    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    device_map: str | dict | None = None
    trust_remote_code: bool = False

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.device_map is not None:
            out["device_map"] = self.device_map
        out["trust_remote_code"] = self.trust_remote_code  # explicit: never an interactive "run this code?" prompt
        return out

    def place(self, model: PreTrainedModel) -> PreTrainedModel:
        """The loaded model on its device (unless a device_map placed it), in eval mode."""
        if self.device_map is None:
            model = model.to(self.device)
        return model.eval()
