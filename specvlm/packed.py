"""oneDNN-packed linear layers for CPU tree forwards.

`torch.nn.functional.linear` computes x @ W^T with the weight in PyTorch's [out, in] layout, and on CPU the GEMM
re-packs W on every call.  A one-token step takes a fast matrix-vector path, but a forward of 2-32 tokens (a tree)
pays the packing for every weight it streams, so it costs well above a one-token step (docs/performance.md).
oneDNN can pack a weight once into its own blocked layout (`mkldnn._reorder_linear_weight`) and then multiply any
number of rows by it (`mkldnn._linear_pointwise`), so a tree of 8-16 tokens costs about what a single token does.

The packed copies live beside the model (the model's own parameters are untouched, so saving, tied embeddings and
other users of the model see nothing).  `PackedLinears.active()` swaps each `nn.Linear`'s class for
`PackedLinear` for the duration of one forward and back afterwards, so HF's own `generate` on the same model object
stays the plain model.  The results are the same matmuls in another summation order: float32 logits differ by
~1e-4 (relative ~1e-6), the same order as between a 1-row and an 8-row plain GEMM, which every tree forward
already does.  Packed weights are a snapshot: call `PackedLinears.pack()` again after changing weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn as nn

from .errors import ConfigError

#: rows the packed layout is tuned for (oneDNN's batch-size hint): trees are 1-32 tokens; 8 was fastest on 1-32
ROWS_HINT = 8
#: forwards with more rows than this (prefills) keep the plain path: trees and batched decode steps are what pay
MAX_PACKED_ROWS = 64
#: don't pack a model whose linear weights exceed this many bytes (the packed copy doubles their memory)
DEFAULT_MAX_BYTES = 4 << 30


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN packing applies to float32 models on CPU builds with mkldnn."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


def takes_packed(x: torch.Tensor) -> bool:
    """Whether an input goes through a packed weight: float32, no grad, at most MAX_PACKED_ROWS rows."""
    rows = x.numel() // max(x.shape[-1], 1)
    return rows <= MAX_PACKED_ROWS and x.dtype == torch.float32 and not x.requires_grad


class PackedLinear(nn.Linear):
    """An `nn.Linear` whose forward multiplies by a oneDNN-packed copy of its weight (lent as `_packed`)."""

    _packed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        if not takes_packed(x):
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


class PackedWeight:
    """A linear map for plain-tensor forwards (the drafts' lean paths): `w(x)` = x @ weight^T + bias, through a
    oneDNN-packed copy when the weight is float32 on CPU.  Copies (deepcopy, pickle) drop the packed copy and
    rebuild it on first use."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight.detach()  # [out, in]
        self.bias = None if bias is None else bias.detach()  # [out]
        self._packed: torch.Tensor | None = None
        self._supported = packing_supported(self.weight.device, self.weight.dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_packed": None}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if not self._supported or not takes_packed(x):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, ROWS_HINT)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


class PackedLinears:
    """Packed copies of every `nn.Linear` weight of `model`, switched on per forward with `active()`.

    The copies are held here, not on the modules, so the model deep-copies, pickles and saves as before (oneDNN's
    opaque tensors can do none of that); `active()` lends each module its copy for the duration of the block.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.linears: list[nn.Linear] = [m for m in model.modules() if type(m) is nn.Linear]
        self.weights: list[torch.Tensor] = []
        self.pack()

    @staticmethod
    def weight_bytes(model: nn.Module) -> int:
        return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if type(m) is nn.Linear)

    @torch.no_grad()
    def pack(self) -> None:
        """(Re)build the packed copies from the current weights."""
        self.weights = [torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), ROWS_HINT) for m in self.linears]

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, the model's linears multiply by their packed weights."""
        # object.__setattr__ skips nn.Module.__setattr__'s bookkeeping, which would cost more than the swap it does
        for lin, packed in zip(self.linears, self.weights, strict=True):
            object.__setattr__(lin, "__class__", PackedLinear)
            lin.__dict__["_packed"] = packed
        try:
            yield
        finally:
            for lin in self.linears:
                object.__setattr__(lin, "__class__", nn.Linear)
                lin.__dict__.pop("_packed", None)


def packed_if(packed: PackedLinears | None) -> AbstractContextManager[None]:
    """`packed.active()`, or a no-op when the model is not packed."""
    return packed.active() if packed is not None else nullcontext()


def maybe_pack(model: nn.Module, enabled: bool | None, max_bytes: int = DEFAULT_MAX_BYTES) -> PackedLinears | None:
    """Pack `model`'s linears when `enabled`, or, when None ("auto"), on a CPU float32 model of <= `max_bytes`
    of linear weights.  `enabled=True` on an unsupported device or dtype is an error that says why."""
    weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
    if not weights:
        return None
    odd = next((w for w in weights if not packing_supported(w.device, w.dtype)), None)  # all on CPU in float32?
    if enabled is None:
        enabled = odd is None and PackedLinears.weight_bytes(model) <= max_bytes
    elif enabled and odd is not None:
        raise ConfigError(
            f"packed linears need a float32 model on a CPU with mkldnn (got {odd.dtype} weights on {odd.device}): "
            "pass pack_linears=False or None"
        )
    return PackedLinears(model) if enabled else None
