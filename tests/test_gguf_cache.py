"""A damaged GGUF target is one ModelLoadError saying so (never a raw struct/index error); the plain copy's folder
depends on the file's content."""

from __future__ import annotations

from pathlib import Path

import pytest

import specvlm
from specvlm.embedded import embedded_gguf
from specvlm.gguf_cache import check_gguf, plain_copy_folder


@pytest.mark.parametrize("size", [0, 4, 1000, 2_000_000, -4096])
def test_a_truncated_gguf_is_one_error_line(tmp_path: Path, size: int) -> None:
    data = embedded_gguf().read_bytes()
    cut = tmp_path / "model.gguf"
    cut.write_bytes(data[:size])
    with pytest.raises(specvlm.ModelLoadError, match=r"damaged or not a GGUF file") as err:
        check_gguf(cut)
    assert "\n" not in str(err.value)


def test_random_bytes_are_not_a_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "noise.gguf"
    bad.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(specvlm.ModelLoadError, match="does not start with the GGUF magic"):
        specvlm.load(str(bad), draft="ngram")


def test_the_plain_copy_folder_follows_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "m.gguf", tmp_path / "y" / "m.gguf"
    a.write_bytes(b"GGUF" + bytes(2000))
    b.write_bytes(b"GGUF" + bytes(1999) + b"x")
    assert plain_copy_folder(a).parent == tmp_path / "cache" / "gguf"
    assert plain_copy_folder(a) == plain_copy_folder(a), "the same file, the same copy"
    assert plain_copy_folder(a) != plain_copy_folder(b), "another file of the same name gets its own copy"
