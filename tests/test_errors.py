"""Every user mistake raises a SpecVLMError that says what to do, and the decoder keeps working after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

import specvlm
from drafters import NGramDrafter


@pytest.fixture(scope="module")
def tiny_decoder() -> specvlm.Decoder:
    return specvlm.load(tiny_llama(seed=0, max_positions=64), NGramDrafter())


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"prompt": ""}, specvlm.PromptError, "empty"),
        ({"prompt": "   \n\t"}, specvlm.PromptError, "empty"),
        ({"prompt": []}, specvlm.PromptError, "no tokens"),
        ({"prompt": [1, 2, 96]}, specvlm.PromptError, "outside the target's vocabulary"),
        ({"prompt": [1, -1]}, specvlm.PromptError, "outside the target's vocabulary"),
        ({"prompt": list(range(64))}, specvlm.PromptError, "context window"),
        ({"prompt": [1, 2], "max_new_tokens": 0}, specvlm.ConfigError, "max_new_tokens"),
        ({"prompt": [1, 2], "max_new_tokens": -3}, specvlm.ConfigError, "max_new_tokens"),
        ({"prompt": [1, 2], "temperature": -0.5}, specvlm.ConfigError, "temperature"),
        ({"prompt": [1, 2], "temperature": float("nan")}, specvlm.ConfigError, "temperature"),
        ({"prompt": [1, 2], "top_p": 0.0}, specvlm.ConfigError, "top_p"),
        ({"prompt": [1, 2], "top_p": 1.5}, specvlm.ConfigError, "top_p"),
        ({"prompt": [1, 2], "tree": "bushy"}, specvlm.ConfigError, "unknown tree"),
        ({"prompt": "hello"}, specvlm.PromptError, "token ids"),  # no tokenizer: ids only
        ({"prompt": [1, 2], "image": "cat.jpg"}, specvlm.ImageError, "text-only"),
        ({"prompt": [1, 2], "stop": ""}, specvlm.ConfigError, "must not be empty"),
        ({"prompt": [1, 2], "stop": ["ok", 3]}, specvlm.ConfigError, "list of strings"),
        ({"prompt": [1, 2], "stop": "x"}, specvlm.ConfigError, "tokenizer"),  # no tokenizer: no text to search
    ],
)
def test_bad_input_raises_and_decoder_survives(
    tiny_decoder: specvlm.Decoder, kwargs: dict, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        tiny_decoder.generate(**{"max_new_tokens": 4, **kwargs})
    assert issubclass(error, specvlm.SpecVLMError)
    assert len(tiny_decoder.generate(prompt=[5, 6, 7], max_new_tokens=4).tokens) == 4


def test_prompt_one_token_short_of_the_window(tiny_decoder: specvlm.Decoder) -> None:
    got = tiny_decoder.generate(prompt=list(range(1, 64)), max_new_tokens=8, tree="chain")
    assert len(got.tokens) == 1  # exactly one position was left


@pytest.mark.parametrize(
    "builder",
    [
        lambda: specvlm.ChainTree(depth=0),
        lambda: specvlm.DynamicTree(budget=0),
        lambda: specvlm.OptTree(nodes=0),
        lambda: specvlm.BranchingTree([2, 0]),
    ],
)
def test_bad_tree_settings(builder: object) -> None:
    with pytest.raises(specvlm.ConfigError):
        builder()  # type: ignore[operator]


def test_bad_model_specs() -> None:
    with pytest.raises(specvlm.ModelLoadError, match="not found"):
        specvlm.load("/no/such/model/folder")
    with pytest.raises(specvlm.ModelLoadError, match="not found"):
        specvlm.load("./missing.gguf")
    with pytest.raises(specvlm.ConfigError, match="ngram"):
        specvlm.load(tiny_llama(seed=0), "ngram:x")
    with pytest.raises(specvlm.ConfigError, match="dtype"):
        specvlm.load("/no/such", dtype="int8")


def test_custom_model_code_never_runs_without_trust_remote_code(tmp_path: Path) -> None:
    """A folder whose config asks for its own Python code: refused, and the code is not imported."""
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "custom", "auto_map": {"AutoConfig": "custom.Config"}})
    )
    (tmp_path / "custom.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'RAN')!r}).touch()\n")
    with pytest.raises(specvlm.ModelLoadError, match="custom code"):
        specvlm.load(str(tmp_path))
    assert not (tmp_path / "RAN").exists()


def test_vocabulary_mismatch_is_refused(embedded: specvlm.Decoder) -> None:
    from drafters.model import ModelDrafter

    small = tiny_llama(seed=0, vocab=60000)
    with pytest.raises(specvlm.ModelLoadError, match="vocabulary"):
        ModelDrafter(small).check_vocab(embedded.target.vocab_size, None, None)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-m", "specvlm", "   "], "empty"),
        (["-m", "specvlm", "hi", "--target", "/no/such/dir"], "not found"),
        (["-m", "specvlm", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["-m", "eval.cnn_text", "--target", "/no/such/dir", "--limit", "1"], "not found"),
    ],
)
def test_cli_prints_one_line_and_exits_nonzero(argv: list[str], words: str) -> None:
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    lines = [ln for ln in run.stderr.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert lines and lines[-1].startswith("error:") and words in lines[-1], run.stderr
    assert "Traceback" not in run.stderr


def test_tensor_prompt_is_accepted(tiny_decoder: specvlm.Decoder) -> None:
    a = tiny_decoder.generate(prompt=torch.tensor([[5, 6, 7]]), max_new_tokens=3)
    b = tiny_decoder.generate(prompt=[5, 6, 7], max_new_tokens=3)
    assert a.tokens == b.tokens
