"""Layer-skip self-drafts: the target's first K decoder layers, its final norm and its lm_head, as a draft model.

Nothing is copied: the draft is a causal-LM shell of the target's own class family (built on the meta device from a
copy of the text config with `num_hidden_layers=K`) whose embeddings, first K layers, final norm, rotary embedding
and lm_head are the target's modules themselves. It runs as any other draft model (`ModelDrafter`: its own KV cache
of K layers, tree attention while drafting). With a VLM target the draft is the language model's first K layers and
sees the prompt's text only (the decoder wraps it in `TextOnlyDrafter`).

Untrained, such a draft agrees with the target's top-1 rarely unless K is close to the number of layers (see
../shared/DESIGN.md). A trained exit (drafters/exits.py: a residual linear map in front of the final norm, trained
by `python -m training.train --exits ...` with the target frozen) raises that agreement; `draft="layerskip:K:FOLDER"`
uses one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from specvlm.errors import ConfigError

from .exits import ExitAdapter, ExitNorm
from .model import ModelDrafter


def decoder_layers(target: PreTrainedModel) -> int:
    """How many decoder layers the target's language model has."""
    return int(target.config.get_text_config().num_hidden_layers)


def layer_skip_model(target: PreTrainedModel, layers: int, exit: ExitAdapter | None = None) -> PreTrainedModel:
    """A causal LM made of the target's first `layers` decoder layers + final norm + lm_head, sharing its weights
    (with `exit`, the final norm reads `exit(hidden)` instead of the hidden state)."""
    total = decoder_layers(target)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < total:
        raise ConfigError(
            f"a layer-skip draft keeps 1 to {total - 1} of the target's {total} decoder layers, got {layers!r}: "
            f"use draft='layerskip:K' with 1 <= K <= {total - 1}"
        )
    source = target.get_decoder()  # the language model's decoder stack (LlamaModel, or a llava's language_model)
    head = target.get_output_embeddings()
    stack = getattr(source, "layers", None)
    if not isinstance(stack, nn.ModuleList) or head is None:
        raise ConfigError(
            f"{type(target).__name__} has no `layers` list in its decoder or no lm_head: layer-skip drafts need a "
            "Llama-style causal LM (embed_tokens, layers, norm, lm_head)"
        )
    config = copy.deepcopy(target.config.get_text_config())  # a copy: the target's config is never changed
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    param = next(target.parameters())
    with torch.device("meta"):  # no memory for the shell's own (discarded) weights
        shell = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    decoder = shell.get_decoder()
    for name, _ in list(decoder.named_children()):
        if name == "layers":
            decoder.layers = nn.ModuleList(list(stack)[:layers])
        elif hasattr(source, name):
            setattr(decoder, name, getattr(source, name))
    if exit is not None:
        if not isinstance(getattr(source, "norm", None), nn.Module):
            raise ConfigError(f"{type(target).__name__} has no final `norm` in its decoder: a trained exit needs one")
        decoder.norm = ExitNorm(exit, source.norm)
    shell.set_output_embeddings(head)
    left = [name for name, t in (*shell.named_parameters(), *shell.named_buffers()) if t.is_meta]
    if left:
        raise ConfigError(
            f"cannot build a layer-skip draft of {type(target).__name__}: {left[0]} has no counterpart in the target"
        )
    return shell.eval()


class LayerSkipDrafter(ModelDrafter):
    """`ModelDrafter` over `layer_skip_model(target, layers, exit)`: the target's own weights, K of its layers."""

    def __init__(self, target: PreTrainedModel, layers: int, exit: ExitAdapter | None = None, exit_name: str = ""):
        name = f"layerskip:{layers}" + (f":{exit_name}" if exit is not None else "")
        super().__init__(layer_skip_model(target, layers, exit), name=name)
        self.layers = layers
