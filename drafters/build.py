"""Drafters from parsed draft specs: `build(spec, target, opts)`, the one place each kind of draft is made."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from specvlm.draft_spec import HEAD_KINDS, DraftSpec, parse_spec
from specvlm.drafting import Drafter
from specvlm.embedded import load_embedded
from specvlm.errors import ConfigError
from specvlm.loading import ModelSpec, load_model
from specvlm.mini_vlm import DRAFT_ALIAS, is_embedded_target
from specvlm.models import TargetModel
from specvlm.options import LoadOptions
from specvlm.trees import make_tree

from .datastore import Datastore, tokenizer_fingerprint
from .eagle import EagleDrafter
from .exits import SHIPPED_EXITS, load_exit
from .feature_draft import is_feature_draft, load_feature_draft
from .followers import FollowerDrafter
from .layerskip import LayerSkipDrafter, decoder_layers
from .medusa import MedusaDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .ngram import NGramDrafter
from .published import Checkpoint, hub_head, is_published, read_checkpoint
from .retrieval import RetrievalDrafter
from .shipped import TARGET_NAME, fits, load_shipped, shipped_datastore
from .suffix import SuffixDrafter

if TYPE_CHECKING:
    from .measured_default import DefaultWatch


def build(
    draft: DraftSpec | ModelSpec | Drafter | str,
    target: TargetModel,
    opts: LoadOptions,
    draft_tokenizer: Any | None = None,
) -> Drafter:
    """A drafter for `target` from a spec (`specvlm.draft_spec`), a loaded model, or a Drafter (returned as it is).

    The default (None): the embedded VLM pair's own llava draft; for the embedded text target the fastest of
    n-grams, trained+ngram and the autoregressive loop measured on this machine (drafters/measured_default.py);
    else n-grams. A model draft's tokenizer must give the target's ids (checked; `draft_tokenizer` overrides the
    one found)."""
    if isinstance(draft, Drafter):
        return draft
    if draft is not None and not isinstance(draft, (str, os.PathLike, DraftSpec)):  # an in-memory model
        drafter = ModelDrafter(draft, name=type(draft).__name__)
        drafter.check_vocab(target.vocab_size, target.tokenizer, draft_tokenizer)
        return drafter
    spec = draft if isinstance(draft, DraftSpec) else parse_spec(draft)
    if spec.kind == "followers":
        return FollowerDrafter(build(spec.parts[0], target, opts, draft_tokenizer))
    if spec.kind == "mixture":
        parts = [build(part, target, opts, draft_tokenizer) for part in spec.parts]
        return MixtureDrafter(parts) if spec.n is None else MixtureDrafter(parts, copy_gate=spec.n)
    if spec.kind == "default":
        return default_drafter(target, opts, draft_tokenizer)
    if spec.kind == "trained":
        return load_shipped(target.model)
    if spec.kind == "ngram":
        return NGramDrafter(max_n=spec.n or 3)
    if spec.kind == "sam":
        return SuffixDrafter(min_match=spec.n or 2)
    if spec.kind == "rest":
        return retrieval_drafter(spec, target)
    if spec.kind == "layerskip":
        return layer_skip_drafter(spec, target)
    if spec.kind in HEAD_KINDS:
        return published_drafter(read_checkpoint(str(spec.path), force=spec.kind), target)
    if spec.kind == "embedded":
        model, tok = load_embedded(opts)
        drafter = ModelDrafter(model, name="embedded")
    elif spec.path is not None and is_feature_draft(spec.path):
        return load_feature_draft(spec.path, target.model)
    elif spec.path is not None and (is_published(spec.path) or hub_head(spec.path)):
        return published_drafter(read_checkpoint(spec.path), target)
    else:
        loaded = load_model(spec.path, opts)
        model, tok = loaded.model, loaded.tokenizer
        drafter = ModelDrafter(model, name=spec.text, processor=loaded.processor)
    drafter.check_vocab(target.vocab_size, target.tokenizer, draft_tokenizer if draft_tokenizer is not None else tok)
    return drafter


def published_drafter(ck: Checkpoint, target: TargetModel) -> Drafter:
    """An EAGLE-3 / EAGLE-1/2 or Medusa checkpoint attached to `target` (shapes checked before any decoding)."""
    if ck.layout == "medusa":
        return MedusaDrafter(ck, target)
    return EagleDrafter(ck, target)


def retrieval_drafter(spec: DraftSpec, target: TargetModel) -> Drafter:
    """`rest:FOLDER`: a datastore built with this target's tokenizer (checked); bare `rest`: the embedded target's."""
    store = Datastore(spec.path) if spec.path else shipped_datastore(target.model)
    store.check_tokenizer(tokenizer_fingerprint(target.tokenizer), target.vocab_size)
    return RetrievalDrafter(store)


def default_drafter(target: TargetModel, opts: LoadOptions, draft_tokenizer: Any | None = None) -> Drafter:
    """The draft used when none is named (see `build`)."""
    if is_embedded_target(target.model):  # the embedded VLM pair's own llava draft
        return build(DRAFT_ALIAS, target, opts, draft_tokenizer)
    if not fits(target.model):
        return NGramDrafter(max_n=3)
    from .measured_default import measured_default  # decodes a few prompts the first time: only when asked

    choice = measured_default(target, lambda spec: build(spec, target, opts))
    chosen = build(choice.draft, target, opts)
    chosen.default_tree = make_tree(choice.tree)  # the tree it was measured with
    return chosen


def default_watch(target: TargetModel, opts: LoadOptions) -> DefaultWatch | None:
    """For a target whose default draft is measured (the embedded text target): the watch that checks the measured
    choice against observed rates and can measure it again; None for any other target."""
    if is_embedded_target(target.model) or not fits(target.model):
        return None
    from .measured_default import DefaultWatch

    return DefaultWatch(target, lambda spec: build(spec, target, opts))


def layer_skip_drafter(spec: DraftSpec, target: TargetModel) -> Drafter:
    """`layerskip:K`: a self-draft of the target's first K decoder layers (K in 1 .. layers - 1);
    `layerskip:K:FOLDER` with the trained exit for K from FOLDER (`layerskip:K:trained`: the shipped exits)."""
    total = decoder_layers(target.model)
    k, folder = int(spec.n or 0), spec.path
    if not 1 <= k < total:
        raise ConfigError(
            f"bad layer-skip draft {spec.text!r}: write 'layerskip:K' with K the number of the target's {total} "
            f"decoder layers to keep, 1 <= K <= {total - 1} (e.g. 'layerskip:{max(1, total * 3 // 4)}')"
        )
    if not folder:
        return LayerSkipDrafter(target.model, k)
    if folder == "trained" and not fits(target.model):
        raise ConfigError(f"'layerskip:{k}:trained' uses the exits shipped for {TARGET_NAME}; give a FOLDER")
    path = SHIPPED_EXITS if folder == "trained" else folder
    hidden = int(target.model.config.get_text_config().hidden_size)
    exit = load_exit(path, k, hidden, target.dtype, target.device)
    return LayerSkipDrafter(target.model, k, exit, exit_name=folder)
