"""Pickled torch files read safely: `torch.load(weights_only=True)`, which refuses pickled code instead of running it.

Every `.pt` / `.pth` / `.bin` file specvlm reads (Sequoia growmaps, EAGLE `pytorch_model.bin`, Medusa
`medusa_lm_head.pt`) goes through `load_torch_file`, so a file holding code is refused in one line, never executed.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from .errors import SpecVLMError


def load_torch_file(path: Path, what: str, error: type[SpecVLMError]) -> object:
    """The objects in `path` (tensors, dicts, lists, numbers), read with weights_only=True. `what` names the kind of
    file for the message ("growmaps", "draft checkpoints"); a file holding code or unreadable raises `error`."""
    import torch

    try:
        with warnings.catch_warnings():  # old pickle protocols: torch warns, the weights-only reader still decides
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(
            f"refused to load {path}: it holds pickled code or objects, and loading it could run code. specvlm "
            f"reads {what} with weights_only=True and never executes a file ({first[:160]})"
        ) from err
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError... for a file it cannot parse
        raise error(f"{path} is not a readable torch file ({type(err).__name__}: {err}"[:300] + ")") from err
