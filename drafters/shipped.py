"""The trained draft shipped in this repository for the embedded target (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel

from specvlm.errors import ModelLoadError

from .datastore import META, Datastore
from .feature_draft import FeatureDrafter, is_feature_draft, load_feature_draft

SHIPPED = Path(__file__).parent / "weights" / "smollm2-135m-feature"
#: the embedded target's datastore: its own answers to the self-distillation prompts (weights/.../README.md)
SHIPPED_DATASTORE = Path(__file__).parent / "weights" / "smollm2-135m-datastore"
TARGET_NAME = "SmolLM2-135M-Instruct"


def fits(target: PreTrainedModel) -> bool:
    """The shipped draft was trained on this target: same model family name, hidden size and vocabulary."""
    cfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    name = str(getattr(target, "name_or_path", "") or getattr(cfg, "_name_or_path", ""))
    embedded_vlm = getattr(target.config, "specvlm_embedded", None) == "target"  # its language model is SmolLM2
    return (TARGET_NAME in name or embedded_vlm) and cfg.hidden_size == 576 and cfg.vocab_size == 49152


def load_shipped(target: PreTrainedModel) -> FeatureDrafter:
    if not fits(target):
        raise ModelLoadError(f"draft='trained' is the shipped draft of {TARGET_NAME}; this target is another model")
    if not is_feature_draft(SHIPPED):
        raise ModelLoadError(f"the shipped draft is missing from {SHIPPED}: reinstall specvlm from a full clone")
    return load_feature_draft(SHIPPED, target)


def shipped_datastore(target: PreTrainedModel) -> Datastore:
    if not fits(target):
        raise ModelLoadError(
            f"draft='rest' is the datastore shipped for {TARGET_NAME}; for this target build one "
            "(`python -m training.datastore --target T --data FILES --out FOLDER`) and write 'rest:FOLDER'"
        )
    if not (SHIPPED_DATASTORE / META).is_file():
        raise ModelLoadError(f"the shipped datastore is missing from {SHIPPED_DATASTORE}: reinstall from a full clone")
    return Datastore(SHIPPED_DATASTORE)
