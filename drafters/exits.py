"""Trained exits for layer-skip self-drafts (SD2's sorted idea, with the target frozen).

A layer-skip draft of K layers reads the target's head off layer K's hidden state, which the target's final norm and
head were never trained on. An exit is a residual linear map in front of the final norm, x -> norm(x + W x), one per
K. W starts at zero (the exit is then the untrained layer-skip draft exactly) and is trained by
`python -m training.train --exits 16,24,28` with the KL to the target's own distribution; every exit learns from
the same frozen target pass ("sorted": all depths at once). The target's weights are never changed, so the output
stays the target's own; only the draft's proposals improve.

Saved as a folder: config.json (`specvlm_draft: "layerskip-exits"`, the layer counts, the hidden size) and
model.safetensors (`exit_K.proj.weight` per K). Used as `draft="layerskip:K:FOLDER"`, or `"layerskip:K:trained"`
for the exits shipped for the embedded target.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specvlm.errors import ConfigError, ModelLoadError

EXITS_KIND = "layerskip-exits"
SHIPPED_EXITS = Path(__file__).parent / "weights" / "smollm2-135m-exits"


class ExitAdapter(nn.Module):
    """x -> x + W x on a layer's hidden state [..., H]; W = 0 is the identity (the untrained exit)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class ExitNorm(nn.Module):
    """The adapter, then the target's own final norm (shared, frozen): what a layer-skip shell runs as its norm."""

    def __init__(self, adapter: ExitAdapter, norm: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.adapter(x))


def is_exits_folder(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("specvlm_draft") == EXITS_KIND
    except json.JSONDecodeError:
        return False


def save_exits(folder: Path, exits: dict[int, ExitAdapter], hidden: int, extra: dict | None = None) -> None:
    """config.json + model.safetensors (bfloat16: the exits are loaded in the target's dtype)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"specvlm_draft": EXITS_KIND, "layers": sorted(exits), "hidden_size": hidden, **(extra or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    tensors = {f"exit_{k}.proj.weight": a.proj.weight.detach().to("cpu", torch.bfloat16).contiguous()
               for k, a in exits.items()}  # fmt: skip
    save_file(tensors, str(folder / "model.safetensors"))


def load_exit(folder: str | Path, layers: int, hidden: int, dtype: torch.dtype, device: torch.device) -> ExitAdapter:
    """The trained exit for `layers` from a saved folder, in the target's dtype and device."""
    folder = Path(folder)
    if not is_exits_folder(folder):
        raise ModelLoadError(
            f"{folder} is not a folder of trained layer-skip exits (config.json with specvlm_draft "
            f"'{EXITS_KIND}'): make one with `python -m training.train --exits K1,K2 --out FOLDER`"
        )
    config = json.loads((folder / "config.json").read_text())
    if int(config["hidden_size"]) != hidden:
        raise ConfigError(f"the exits in {folder} are for hidden size {config['hidden_size']}, the target has {hidden}")
    if layers not in config["layers"]:
        raise ConfigError(
            f"{folder} has trained exits for {config['layers']} layers, not {layers}: use one of those, or "
            f"train it with `python -m training.train --exits {layers}`"
        )
    weight = load_file(str(folder / "model.safetensors"))[f"exit_{layers}.proj.weight"]
    adapter = ExitAdapter(hidden)
    adapter.proj.weight.data = weight.to(device=device, dtype=dtype)
    return adapter.requires_grad_(False).eval()
